"""Typed settings of the extractive-QA core, validated before any tokenizer sees them.

The fast tokenizer panics (a ``BaseException``) on some stride / length combinations, so every limit is
checked here first and reported as a plain ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MODEL = "distilbert/distilbert-base-cased-distilled-squad"
#: fp32: equal to the transformers pipeline. bf16, int8: faster on CPUs that have the instructions for them
#: (measure: scripts/matmul_ceiling.py); fp16: CUDA only. fast: the fastest of these, timed at start-up.
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "fast")
#: Smallest window that leaves room for [CLS] q [SEP] c [SEP] plus a few tokens of question and context.
MIN_SEQ_LEN = 16
#: ASCII digits, no leading zero, at most 4 digits: what torch.device itself parses (it refuses 'cuda:01').
_DEVICE = re.compile(r"^(auto|cpu|cuda(:(0|[1-9][0-9]{0,3}))?)$", re.ASCII)


@dataclass(frozen=True)
class QAConfig:
    """How to load the model and cut questions + contexts into model windows; checked when built."""

    model: str = DEFAULT_MODEL  # hub id or local folder
    batch_size: int | None = None  # windows per forward pass; None: sized for the device
    max_seq_len: int = 384  # tokens per window, question and special tokens included
    doc_stride: int = 128  # tokens of overlap between consecutive windows of a long context
    max_answer_len: int = 15  # tokens
    device: str = "auto"  # auto -> cuda when available, else cpu; or cpu, cuda, cuda:N
    precision: str = "fp32"  # one of PRECISIONS

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the setting, its value and the allowed range."""
        if not self.model or not self.model.strip():
            raise ValueError("model must name a Hugging Face hub id or a local folder (QA_MODEL / --model)")
        if self.batch_size is not None:
            _positive("batch_size", self.batch_size)
        _positive("max_answer_len", self.max_answer_len)
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < MIN_SEQ_LEN:
            raise ValueError(f"max_seq_len must be an integer >= {MIN_SEQ_LEN}, got {self.max_seq_len!r}")
        # Each window holds [CLS] question [SEP] context-part [SEP]; the overlap must be smaller than the
        # context part or the tokenizer panics. Half the window keeps room for questions of ordinary length.
        limit = self.max_seq_len // 2
        if not isinstance(self.doc_stride, int) or not 0 <= self.doc_stride < limit:
            raise ValueError(
                f"doc_stride must be an integer >= 0 and < max_seq_len/2 = {limit} "
                f"(max_seq_len={self.max_seq_len}), got {self.doc_stride!r}"
            )
        if not _DEVICE.match(self.device or ""):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
