"""The batched extractive-QA core: rows in, one best span (or a reason for failing) per row out.

Pipeline per group of rows: tokenize all rows into windows (features.py) -> sort windows by length and run the
model on batches under ``torch.inference_mode()`` -> decode each row from its windows (decode.py). On CUDA the
three steps overlap (stages.py): the next group is tokenized and the previous one decoded while the GPU runs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qa_answer.decode import Window, best_span
from qa_answer.features import Feature, Windowing, build_features, length_sorted_batches, pad_batch
from qa_answer.model_loading import LoadedModel, load_model
from qa_answer.precision import Engine, ProbeResult, build_engine, candidates, pick_fastest
from qa_answer.qa_config import QAConfig
from qa_answer.results import RowFailure, Span
from qa_answer.stages import prefetch

log = logging.getLogger(__name__)

#: Rows tokenized and sorted together on a CPU; bounds memory whatever the caller passes.
ROWS_PER_GROUP = 1024
#: Rows per pipeline stage on CUDA: small enough that tokenizing and decoding overlap the GPU's work.
CUDA_ROWS_PER_STAGE = 256
#: Groups a pipeline stage may hold ready ahead of the next stage.
STAGE_DEPTH = 2
#: Padded tokens per forward pass on a CPU: beyond this the activations leave the cache and batching stops
#: paying (measured on distilbert-base, see docs/answering-core.md). GPUs take ``batch_size`` windows as is.
CPU_MAX_BATCH_TOKENS = 2048
#: Windows per forward pass on a CPU when ``batch_size`` is not set (the token cap usually binds first).
CPU_BATCH_WINDOWS = 32
#: Most windows per forward pass on a GPU when ``batch_size`` is not set; more gains nothing measurable.
CUDA_MAX_BATCH_WINDOWS = 512
#: Share of free GPU memory a batch's activations may use when the batch is sized for the device.
CUDA_MEMORY_SHARE = 0.25
#: With a precision other than fp32, one row in this many is answered in fp32 too, to measure agreement...
AGREEMENT_EVERY_ROWS = 64
#: ...up to this many rows per run (``take_agreement`` starts a new run).
AGREEMENT_MAX_ROWS = 64


@dataclass(frozen=True)
class Agreement:
    """How many sampled rows got the same answer span (or the same failure) as fp32."""

    same: int
    rows: int

    @property
    def share(self) -> float | None:
        return self.same / self.rows if self.rows else None

    def line(self) -> str:
        share = "n/a" if self.share is None else f"{self.share:.4f}"
        return f"agreement_with_fp32={share} ({self.rows} rows)"


def cuda_batch_windows(free_bytes: int, max_seq_len: int, hidden_size: int, heads: int) -> int:
    """Windows per GPU batch: a share of free memory over an upper estimate of a window's activations.

    Per token a transformer layer holds about 16 hidden-size vectors at once (q, k, v, the 4x feed-forward,
    the residuals) plus one attention row per head; at most ``CUDA_MAX_BATCH_WINDOWS``.
    """
    per_token = 4 * (16 * hidden_size + heads * max_seq_len)
    fits = int(free_bytes * CUDA_MEMORY_SHARE) // (per_token * max_seq_len)
    return max(1, min(CUDA_MAX_BATCH_WINDOWS, fits))


@dataclass
class _Group:
    """One group of rows on its way through the stages."""

    contexts: Sequence[str]
    features: list[Feature]
    failures: dict[int, str]
    batches: list[tuple[list[int], dict[str, torch.Tensor]]]
    sampled: list[int]  # rows of the group also answered in fp32
    reference_batches: list[tuple[list[int], dict[str, torch.Tensor]]] = field(default_factory=list)
    logits: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    reference_logits: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class QAModel:
    """A loaded model plus its settings; answers chunks of rows.

    ``overlap`` (default: on CUDA only) runs tokenizing, forward passes and decoding as overlapping stages of
    ``rows_per_stage`` rows; on a CPU the forward pass already uses every core.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: QAConfig,
        *,
        overlap: bool | None = None,
        rows_per_stage: int | None = None,
    ) -> None:
        self._config = config
        self._model_config = loaded.model.config
        self._tokenizer = loaded.tokenizer
        self._base_name = loaded.name
        self._windowing = Windowing(max_seq_len=config.max_seq_len, doc_stride=config.doc_stride)
        self._input_names = tuple(loaded.tokenizer.model_input_names)
        self._pad_id = loaded.tokenizer.pad_token_id or 0
        self.device = loaded.device
        on_cuda = self.device.type == "cuda"
        self._overlap = on_cuda if overlap is None else overlap
        self._rows_per_group = rows_per_stage or (CUDA_ROWS_PER_STAGE if on_cuda else ROWS_PER_GROUP)
        self._pin = on_cuda
        self._batch_windows, self._max_tokens = self._batch_limits()
        # Engines hold their own copies (CPU) or wrap the model (CUDA); only they reference it from here on.
        self._reference = build_engine(loaded.model, "fp32", self.device)
        self._candidates = [
            self._reference if p == "fp32" else build_engine(loaded.model, p, self.device)
            for p in candidates(config.precision, self.device)
        ]
        self._engine: Engine | None = self._candidates[0] if len(self._candidates) == 1 else None
        self.probe: ProbeResult | None = None
        self._rows_seen = 0
        self._sampled_rows = 0
        self._same = 0
        self._compared = 0

    @property
    def precision(self) -> str:
        """The precision that runs: the configured one, or what ``fast`` chose (``fast`` until then)."""
        return self._engine.precision if self._engine is not None else self._config.precision

    @property
    def name(self) -> str:
        """``<hub id or folder name>[@<revision>][+<precision that runs>]`` for the ``model`` column."""
        precision = self.precision
        return self._base_name if precision == "fp32" else f"{self._base_name}+{precision}"

    def take_agreement(self) -> Agreement | None:
        """Agreement with fp32 of the rows sampled since the last call (``None`` when running fp32)."""
        if self._config.precision == "fp32":
            return None
        agreement = Agreement(same=self._same, rows=self._compared)
        self._rows_seen = self._sampled_rows = self._same = self._compared = 0
        return agreement

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Span | RowFailure]:
        """One result per row, in order. Raises only for caller errors (lengths differ)."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        size = self._rows_per_group
        slices = ((questions[i : i + size], contexts[i : i + size]) for i in range(0, len(questions), size))
        prepared: Iterator[_Group] = (self._prepare(qs, cs) for qs, cs in slices)
        if self._overlap:
            computed = prefetch((self._compute(g) for g in prefetch(prepared, STAGE_DEPTH)), STAGE_DEPTH)
        else:
            computed = (self._compute(g) for g in prepared)
        results: list[Span | RowFailure] = []
        for group in computed:
            results.extend(self._decode(group))
        return results

    def _batch_limits(self) -> tuple[int, int | None]:
        if self.device.type != "cuda":
            return self._config.batch_size or CPU_BATCH_WINDOWS, CPU_MAX_BATCH_TOKENS
        if self._config.batch_size:
            return self._config.batch_size, None
        free, _total = torch.cuda.mem_get_info(self.device)
        model_config = self._model_config
        hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "dim", 768)
        heads = getattr(model_config, "num_attention_heads", None) or getattr(model_config, "n_heads", 12)
        windows = cuda_batch_windows(free, self._config.max_seq_len, hidden, heads)
        log.info("batches of up to %d windows (%.1f GiB free on %s)", windows, free / 2**30, self.device)
        return windows, None

    # Stage 1: tokenize, sample, pad into (pinned) host tensors.
    def _prepare(self, questions: Sequence[str], contexts: Sequence[str]) -> _Group:
        features, failures = build_features(self._tokenizer, questions, contexts, self._windowing)
        sampled = self._sample(len(contexts), failures)
        group = _Group(contexts, features, failures, self._batches(features, range(len(features))), sampled)
        if sampled:
            wanted = set(sampled)
            group.reference_batches = self._batches(
                features, [i for i, f in enumerate(features) if f.row in wanted]
            )
        return group

    def _sample(self, rows: int, failures: dict[int, str]) -> list[int]:
        """Every ``AGREEMENT_EVERY_ROWS``-th row of the run that tokenized, up to the run's limit."""
        if self._config.precision == "fp32":
            return []
        sampled = []
        for row in range(rows):
            due = (self._rows_seen + row) % AGREEMENT_EVERY_ROWS == 0
            if due and row not in failures and self._sampled_rows < AGREEMENT_MAX_ROWS:
                sampled.append(row)
                self._sampled_rows += 1
        self._rows_seen += rows
        return sampled

    def _batches(
        self, features: list[Feature], indices: Sequence[int]
    ) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        chosen = [features[i] for i in indices]
        batches = []
        for batch in length_sorted_batches(chosen, self._batch_windows, self._max_tokens):
            arrays = pad_batch([chosen[j] for j in batch], self._pad_id)
            tensors = {name: torch.from_numpy(arrays[name]) for name in self._input_names if name in arrays}
            if self._pin:
                tensors = {name: t.pin_memory() for name, t in tensors.items()}
            batches.append(([indices[j] for j in batch], tensors))
        return batches

    # Stage 2: forward passes.
    def _compute(self, group: _Group) -> _Group:
        if self._engine is None and group.batches:
            self._choose_engine(group.batches)
        engine = self._engine or self._reference
        features = group.features
        group.logits = [(np.empty(0), np.empty(0))] * len(features)
        with torch.inference_mode():
            for indices, starts, ends in self._run(engine, group.batches):
                for j, i in enumerate(indices):
                    n = len(features[i])
                    group.logits[i] = (starts[j, :n], ends[j, :n])
            if engine is self._reference:  # ``fast`` chose fp32: the sample's answers are fp32 already
                group.reference_logits = {
                    i: group.logits[i] for indices, _ in group.reference_batches for i in indices
                }
                return group
            for indices, starts, ends in self._run(self._reference, group.reference_batches):
                for j, i in enumerate(indices):
                    n = len(features[i])
                    group.reference_logits[i] = (starts[j, :n], ends[j, :n])
        return group

    def _run(
        self, engine: Engine, batches: list[tuple[list[int], dict[str, torch.Tensor]]]
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        for indices, tensors in batches:
            inputs = {name: t.to(self.device, non_blocking=self._pin) for name, t in tensors.items()}
            start_logits, end_logits = engine.forward(inputs)
            yield indices, start_logits.float().cpu().numpy(), end_logits.float().cpu().numpy()

    def _choose_engine(self, batches: list[tuple[list[int], dict[str, torch.Tensor]]]) -> None:
        """``fast``: time the candidates on the group's batch of most padded tokens, keep the fastest."""
        _indices, tensors = max(batches, key=lambda b: b[1]["input_ids"].numel())
        inputs = {name: t.to(self.device) for name, t in tensors.items()}
        self.probe = pick_fastest(self._candidates, inputs)
        self._engine = self.probe.chosen
        self._candidates = [self._engine]  # the others' weights are freed
        log.info(self.probe.line())

    # Stage 3: decode.
    def _decode(self, group: _Group) -> list[Span | RowFailure]:
        windows_of_row: dict[int, list[Window]] = defaultdict(list)
        reference_windows: dict[int, list[Window]] = defaultdict(list)
        for index, feature in enumerate(group.features):  # in row order, windows in context order
            windows_of_row[feature.row].append(_window(feature, *group.logits[index]))
            if index in group.reference_logits:
                reference_windows[feature.row].append(_window(feature, *group.reference_logits[index]))
        results: list[Span | RowFailure] = []
        for row, context in enumerate(group.contexts):
            if row in group.failures:
                results.append(RowFailure(group.failures[row]))
                continue
            results.append(self._decode_row(windows_of_row.get(row, []), context))
        for row in group.sampled:
            reference = self._decode_row(reference_windows.get(row, []), group.contexts[row])
            self._compared += 1
            self._same += _same_answer(results[row], reference)
        return results

    def _decode_row(self, windows: list[Window], context: str) -> Span | RowFailure:
        try:
            span = best_span(windows, context, self._config.max_answer_len)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # one odd row must not stop the file
            return RowFailure(f"decoding failed: {type(exc).__name__}: {exc}")
        if span is None or span.end <= span.start:  # e.g. a context of characters the tokenizer drops
            return RowFailure("no answer span found in the context")
        return Span(answer=context[span.start : span.end], score=span.score, start=span.start, end=span.end)


def _window(feature: Feature, start: np.ndarray, end: np.ndarray) -> Window:
    return Window(start, end, feature.allowed, feature.offsets, feature.word_ids, feature.sequence_ids)


def _same_answer(ours: Span | RowFailure, reference: Span | RowFailure) -> bool:
    if isinstance(ours, Span) and isinstance(reference, Span):
        return (ours.start, ours.end) == (reference.start, reference.end)
    return ours == reference


def load_qa_model(config: QAConfig) -> QAModel:
    """Load ``config``'s model once; raises ``ModelLoadError``."""
    return QAModel(load_model(config), config)
