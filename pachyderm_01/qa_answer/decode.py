"""Pick the answer span of one row from the start/end logits of its windows (numpy only, no torch).

A faithful port of transformers 5.2 ``QuestionAnsweringPipeline.postprocess`` with ``top_k=1``,
``handle_impossible_answer=False`` and ``align_to_words=True``: per window, a softmax over context tokens and
[CLS]; the [CLS] probability then zeroed; the 12 best spans no longer than ``max_answer_len``; each span
widened to whole words; spans with the same text (case-insensitive) add their scores across all windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from qa_answer.features import CONTEXT, NONE

#: The pipeline decodes ``top_k * 2 + 10`` spans per window when aligning to words (some merge or vanish).
CANDIDATES_PER_WINDOW = 12
#: Logit given to tokens that must not carry probability (question, special and padding tokens).
MASKED_LOGIT = -10000.0


@dataclass(frozen=True)
class Window:
    """One feature's model output and the token metadata decoding needs (all arrays of the same length)."""

    start_logits: np.ndarray  # float [L]
    end_logits: np.ndarray  # float [L]
    allowed: np.ndarray  # bool [L]
    offsets: np.ndarray  # int [L, 2]
    word_ids: np.ndarray  # int [L], NONE for special tokens
    sequence_ids: np.ndarray  # int [L], NONE for special tokens


@dataclass(frozen=True)
class DecodedSpan:
    start: int  # character offsets into the context
    end: int
    score: float


def top_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray, max_answer_len: int, top_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token spans (start, end, probability) of one window, best first; like ``select_starts_ends``."""
    masked = ~allowed[None, :]
    start = np.where(masked, MASKED_LOGIT, np.asarray(start_logits, dtype=np.float32)[None, :])
    end = np.where(masked, MASKED_LOGIT, np.asarray(end_logits, dtype=np.float32)[None, :])
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    # [CLS] takes part in the softmax (its logit lowers the others) but is never an answer itself.
    start[0, 0] = end[0, 0] = 0.0

    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    # end >= start, at most max_answer_len tokens; a limit past the window changes nothing (and a huge one
    # would overflow numpy's C long), so it is capped at the window's length.
    candidates = np.tril(np.triu(outer), min(max_answer_len, outer.shape[-1]) - 1)
    scores_flat = candidates.flatten()
    if top_k == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) < top_k:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, top_k)[0:top_k]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # The pipeline tests membership against ``mask.nonzero()`` of a [1, L] mask, whose row indices (all 0)
    # make position 0 count as allowed too; keep that quirk so the spans match.
    ok = allowed.copy()
    ok[0] = ok[0] or bool(allowed.any())
    keep = ok[starts] & ok[ends]
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def word_to_chars(
    word: int, offsets: np.ndarray, word_ids: np.ndarray, sequence_ids: np.ndarray
) -> tuple[int, int]:
    """Character span of context ``word`` within this window, like ``tokenizers.Encoding.word_to_chars``."""
    positions = np.flatnonzero(sequence_ids == CONTEXT)
    words = word_ids[positions]
    # tokenizers scans the sequence while word ids are <= word (no-word counts as smaller) and keeps matches.
    beyond = np.flatnonzero(words > word)
    if beyond.size:
        positions, words = positions[: beyond[0]], words[: beyond[0]]
    matches = positions[words == word]
    if not matches.size:
        raise LookupError(f"word {word} is not in the context part of this window")
    return int(offsets[matches[0], 0]), int(offsets[matches[-1], 1])


class ContextWords:
    """``word_to_chars`` for one window, with the context tokens found once instead of once per call.

    Decoding asks for two words per candidate span, 24 per window: finding them fast keeps the CPU side of a
    GPU run short. Word ids of context tokens normally never decrease, and then a binary search finds exactly
    the tokens ``word_to_chars`` finds; otherwise it falls back to ``word_to_chars`` itself.
    """

    def __init__(self, window: Window) -> None:
        self._window = window
        self._positions = np.flatnonzero(window.sequence_ids == CONTEXT)
        self._words = window.word_ids[self._positions]
        self._sorted = bool(np.all(self._words[1:] >= self._words[:-1]))

    def chars(self, word: int) -> tuple[int, int]:
        window = self._window
        if not self._sorted:
            return word_to_chars(word, window.offsets, window.word_ids, window.sequence_ids)
        first = int(np.searchsorted(self._words, word, side="left"))
        stop = int(np.searchsorted(self._words, word, side="right"))
        if first == stop:
            raise LookupError(f"word {word} is not in the context part of this window")
        return int(window.offsets[self._positions[first], 0]), int(
            window.offsets[self._positions[stop - 1], 1]
        )


def align_to_words(s: int, e: int, window: Window, words: ContextWords | None = None) -> tuple[int, int]:
    """Widen token span [s, e] to whole words; fall back to raw token offsets where a token has no word."""
    start_word, end_word = int(window.word_ids[s]), int(window.word_ids[e])
    if start_word != NONE and end_word != NONE:
        words = words or ContextWords(window)
        try:
            return words.chars(start_word)[0], words.chars(end_word)[1]
        except LookupError:
            pass
    return int(window.offsets[s, 0]), int(window.offsets[e, 1])


@dataclass(slots=True)
class _Candidate:
    """One answer text of a row: where it first appeared and the scores of every span with that text."""

    start: int
    end: int
    score: float


def best_span(windows: Iterable[Window], context: str, max_answer_len: int) -> DecodedSpan | None:
    """The best answer over all windows of one row; ``None`` when no window yields a span."""
    answers: list[_Candidate] = []  # in order of first occurrence: that occurrence gives the position
    by_text: dict[str, _Candidate] = {}
    for window in windows:
        starts, ends, scores = top_spans(
            window.start_logits, window.end_logits, window.allowed, max_answer_len, CANDIDATES_PER_WINDOW
        )
        words = ContextWords(window)
        for s, e, score in zip(starts, ends, scores, strict=True):
            start, end = align_to_words(int(s), int(e), window, words)
            key = context[start:end].lower()
            if key in by_text:
                by_text[key].score += score.item()
            else:
                answer = _Candidate(start, end, score.item())
                by_text[key] = answer
                answers.append(answer)
    if not answers:
        return None
    best = max(answers, key=lambda a: a.score)  # first of equal scores, like a stable sort
    return DecodedSpan(start=best.start, end=best.end, score=best.score)
