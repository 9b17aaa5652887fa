"""The batched extractive-QA core: rows in, one best span (or a reason for failing) per row out.

Pipeline per call: tokenize all rows into windows (features.py) -> sort windows by length and run the model on
batches of ``batch_size`` under ``torch.inference_mode()`` -> decode each row from its windows (decode.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .decode import Window, best_span
from .features import Feature, Windowing, build_features, length_sorted_batches, pad_batch
from .model_loading import LoadedModel, load_model
from .qa_config import QAConfig

#: Rows tokenized and sorted together; bounds memory whatever the caller passes.
ROWS_PER_GROUP = 1024
#: Padded tokens per forward pass on a CPU: beyond this the activations leave the cache and batching stops
#: paying (measured on distilbert-base, see docs/answering-core.md). GPUs take ``batch_size`` windows as is.
CPU_MAX_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class Span:
    """An answer: ``context[start:end] == answer``; ``score`` is the pipeline's probability."""

    answer: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class RowFailure:
    """A row the model could not answer, with a reason fit for the ``rejected`` file."""

    reason: str


class QAModel:
    """A loaded model plus its settings; answers chunks of rows."""

    def __init__(self, loaded: LoadedModel, config: QAConfig) -> None:
        self._loaded = loaded
        self._config = config
        self._windowing = Windowing(max_seq_len=config.max_seq_len, doc_stride=config.doc_stride)
        self._input_names = tuple(loaded.tokenizer.model_input_names)
        self.name = loaded.name
        self.device = loaded.device

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Span | RowFailure]:
        """One result per row, in order. Raises only for caller errors (lengths differ)."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        results: list[Span | RowFailure] = []
        for first in range(0, len(questions), ROWS_PER_GROUP):
            last = first + ROWS_PER_GROUP
            results.extend(self._answer_group(questions[first:last], contexts[first:last]))
        return results

    def _answer_group(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Span | RowFailure]:
        features, failures = build_features(self._loaded.tokenizer, questions, contexts, self._windowing)
        windows_of_row: dict[int, list[Window]] = defaultdict(list)
        logits = self._run_model(features)
        for index, feature in enumerate(features):  # features are in row order, windows in context order
            start, end = logits[index]
            windows_of_row[feature.row].append(
                Window(start, end, feature.allowed, feature.offsets, feature.word_ids, feature.sequence_ids)
            )
        results: list[Span | RowFailure] = []
        for row, context in enumerate(contexts):
            if row in failures:
                results.append(RowFailure(failures[row]))
                continue
            results.append(self._decode_row(windows_of_row.get(row, []), context))
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

    def _run_model(self, features: list[Feature]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Start/end logits (float32, unpadded) per feature, computed in length-sorted batches."""
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(features)
        model, device = self._loaded.model, self._loaded.device
        pad_id = self._loaded.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            max_tokens = CPU_MAX_BATCH_TOKENS if device.type == "cpu" else None
            for batch in length_sorted_batches(features, self._config.batch_size, max_tokens):
                arrays = pad_batch([features[i] for i in batch], pad_id)
                inputs = {
                    name: torch.from_numpy(arrays[name]).to(device)
                    for name in self._input_names
                    if name in arrays
                }
                output = model(**inputs)
                starts = output.start_logits.float().cpu().numpy()
                ends = output.end_logits.float().cpu().numpy()
                for j, i in enumerate(batch):
                    n = len(features[i])
                    out[i] = (starts[j, :n], ends[j, :n])
        return out


def load_qa_model(config: QAConfig) -> QAModel:
    """Validate ``config`` and load its model once; raises ``ValueError`` or ``ModelLoadError``."""
    config.validate()
    return QAModel(load_model(config), config)
