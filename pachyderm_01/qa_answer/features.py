"""Turn a chunk of (question, context) rows into model windows ("features") and padded batches.

All rows of a chunk go through the fast tokenizer in one call (``only_second`` truncation with a stride, so a
long context becomes several overlapping windows). Rows the tokenizer cannot handle are reported, not raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Sequence id of context tokens in a (question, context) pair.
CONTEXT = 1
#: Stand-in for "no word / no sequence" (special and padding tokens) in the int arrays below.
NONE = -1


@dataclass(frozen=True)
class Feature:
    """One model window of one row: token ids plus what decoding needs to map tokens back to characters."""

    row: int  # index of the row in the chunk
    input_ids: np.ndarray  # int64 [L]
    token_type_ids: np.ndarray  # int64 [L]
    allowed: (
        np.ndarray
    )  # bool [L]: may carry probability mass (context tokens and [CLS], as the pipeline does)
    offsets: np.ndarray  # int64 [L, 2]: character span of each token in its own text
    word_ids: np.ndarray  # int64 [L]: word index in its sequence, NONE for special tokens
    sequence_ids: np.ndarray  # int64 [L]: 0 question, 1 context, NONE for special tokens

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class Windowing:
    """How rows are cut into windows (see QAConfig)."""

    max_seq_len: int
    doc_stride: int


def build_features(
    tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], windowing: Windowing
) -> tuple[list[Feature], dict[int, str]]:
    """Tokenize all rows at once; return the windows and, per failed row index, why it failed."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    failures: dict[int, str] = {}
    for i, (question, context) in enumerate(zip(questions, contexts, strict=True)):
        if not question.strip():
            failures[i] = "empty question"
        elif not context.strip():
            failures[i] = "empty context"
    failures.update(_check_question_room(tokenizer, questions, contexts, windowing, exclude=failures))
    rows = [i for i in range(len(questions)) if i not in failures]
    features: list[Feature] = []
    if not rows:
        return features, failures
    try:
        features = _encode(
            tokenizer, [questions[i] for i in rows], [contexts[i] for i in rows], rows, windowing
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # pyo3 PanicException is a BaseException; isolate the bad row
        for i in rows:
            try:
                features.extend(_encode(tokenizer, [questions[i]], [contexts[i]], [i], windowing))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                failures[i] = f"tokenizer failed: {type(exc).__name__}: {exc}"
    return features, failures


def _check_question_room(
    tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], windowing: Windowing, exclude: dict
) -> dict[int, str]:
    """Rows whose question leaves no room for a strided context window (the tokenizer would panic)."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    rows = [i for i in range(len(questions)) if i not in exclude]
    if not rows:
        return {}
    q_lens = [
        len(ids) for ids in tokenizer([questions[i] for i in rows], add_special_tokens=False)["input_ids"]
    ]
    # A context of n tokens fits one window when q + n + specials <= max_seq_len; otherwise each window holds
    # max_seq_len - q - specials context tokens, which must exceed the stride.
    most = windowing.max_seq_len - specials - windowing.doc_stride - 1
    failures: dict[int, str] = {}
    for i, q_len in zip(rows, q_lens, strict=True):
        if q_len <= most:
            continue
        c_len = len(tokenizer(contexts[i], add_special_tokens=False)["input_ids"])
        if q_len + c_len + specials > windowing.max_seq_len:
            failures[i] = (
                f"question too long: {q_len} tokens; with max_seq_len={windowing.max_seq_len} and "
                f"doc_stride={windowing.doc_stride} a question may have at most {most} tokens "
                "when its context needs more than one window"
            )
    return failures


def _encode(
    tokenizer: Any, questions: list[str], contexts: list[str], rows: list[int], windowing: Windowing
) -> list[Feature]:
    encoded = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=windowing.max_seq_len,
        stride=windowing.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding=False,
    )
    cls_id = tokenizer.cls_token_id
    features = []
    for window, sample in enumerate(encoded["overflow_to_sample_mapping"]):
        enc = encoded.encodings[window]
        input_ids = np.asarray(enc.ids, dtype=np.int64)
        sequence_ids = np.asarray([NONE if s is None else s for s in enc.sequence_ids], dtype=np.int64)
        allowed = sequence_ids == CONTEXT
        if cls_id is not None:
            allowed |= input_ids == cls_id  # some models answer "no answer" with [CLS]; the pipeline keeps it
        features.append(
            Feature(
                row=rows[sample],
                input_ids=input_ids,
                token_type_ids=np.asarray(enc.type_ids, dtype=np.int64),
                allowed=allowed,
                offsets=np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2),
                word_ids=np.asarray([NONE if w is None else w for w in enc.word_ids], dtype=np.int64),
                sequence_ids=sequence_ids,
            )
        )
    return features


def length_sorted_batches(
    features: Sequence[Feature], batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Feature indices in batches of similar length (little compute goes to padding).

    A batch holds at most ``batch_size`` windows and, when ``max_tokens`` is set, at most that many padded
    tokens (but always one window): on a CPU, activations beyond the cache cost more than batching saves.
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        width = len(features[index])  # ascending, so the newest window is the longest
        if batch and (len(batch) == batch_size or (max_tokens and (len(batch) + 1) * width > max_tokens)):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


def pad_batch(features: Sequence[Feature], pad_id: int, multiple: int = 8) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest window, rounded up to ``multiple`` (kinder to matmul kernels)."""
    longest = max(len(f) for f in features)
    width = -(-longest // multiple) * multiple
    input_ids = np.full((len(features), width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(features), width), dtype=np.int64)
    attention_mask = np.zeros((len(features), width), dtype=np.int64)
    for i, f in enumerate(features):
        n = len(f)
        input_ids[i, :n] = f.input_ids
        token_type_ids[i, :n] = f.token_type_ids
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
