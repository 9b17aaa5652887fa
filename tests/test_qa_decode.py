"""The numpy span decoder: masking, [CLS], answer length, windows, word alignment (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from qa_answer.decode import (
    CANDIDATES_PER_WINDOW,
    ContextWords,
    Window,
    align_to_words,
    best_span,
    top_spans,
    word_to_chars,
)
from qa_answer.features import NONE

CONTEXT = "Marie Curie was born in Warsaw in 1867."
# (text piece, sequence id, word id) of "[CLS] who ? [SEP] <context tokens> [SEP]"; "Cur ##ie" is one word.
TOKENS = [
    ("[CLS]", NONE, NONE),
    ("who", 0, 0),
    ("?", 0, 1),
    ("[SEP]", NONE, NONE),
    ("Marie", 1, 0),
    ("Cur", 1, 1),
    ("##ie", 1, 1),
    ("was", 1, 2),
    ("born", 1, 3),
    ("in", 1, 4),
    ("Warsaw", 1, 5),
    ("in", 1, 6),
    ("1867", 1, 7),
    (".", 1, 8),
    ("[SEP]", NONE, NONE),
]
CHAR_SPANS = {
    4: (0, 5), 5: (6, 9), 6: (9, 11), 7: (12, 15), 8: (16, 20), 9: (21, 23), 10: (24, 30), 11: (31, 33),
    12: (34, 38), 13: (38, 39),
}  # fmt: skip


def make_window(start: dict[int, float], end: dict[int, float], tokens=TOKENS, spans=CHAR_SPANS) -> Window:
    """A window whose logits are 0 except the given positions."""
    n = len(tokens)
    start_logits = np.zeros(n, dtype=np.float32)
    end_logits = np.zeros(n, dtype=np.float32)
    for i, v in start.items():
        start_logits[i] = v
    for i, v in end.items():
        end_logits[i] = v
    sequence_ids = np.array([s for _, s, _ in tokens])
    word_ids = np.array([w for _, _, w in tokens])
    offsets = np.array([spans.get(i, (0, 0)) for i in range(n)])
    allowed = (sequence_ids == 1) | (np.arange(n) == 0)
    return Window(start_logits, end_logits, allowed, offsets, word_ids, sequence_ids)


def softmax_allowed(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    x = np.where(allowed, logits.astype(np.float64), -np.inf)
    p = np.exp(x - x.max())
    return p / p.sum()


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ({10: 8.0}, {10: 8.0}, "Warsaw"),
        ({1: 50.0, 10: 8.0}, {2: 50.0, 10: 8.0}, "Warsaw"),  # question tokens never win
        ({14: 50.0, 12: 5.0}, {14: 50.0, 12: 5.0}, "1867"),  # nor the final [SEP]
        ({0: 50.0, 4: 3.0}, {0: 50.0, 5: 3.0}, "Marie Curie"),  # nor [CLS]; "Cur" widens to "Curie"
    ],
)
def test_only_context_tokens_are_answers(start, end, expected):
    span = best_span([make_window(start, end)], CONTEXT, max_answer_len=15)
    assert span is not None
    assert CONTEXT[span.start : span.end] == expected


def test_cls_takes_part_in_the_softmax_but_never_answers():
    """The score is p_start * p_end over context+[CLS], with [CLS]'s own probability dropped afterwards."""
    with_cls = make_window({0: 4.0, 10: 2.0}, {0: 4.0, 10: 2.0})
    without_cls = make_window({10: 2.0}, {10: 2.0})
    a = best_span([with_cls], CONTEXT, 15)
    b = best_span([without_cls], CONTEXT, 15)
    assert CONTEXT[a.start : a.end] == CONTEXT[b.start : b.end] == "Warsaw"
    p = softmax_allowed(with_cls.start_logits, with_cls.allowed)
    assert a.score == pytest.approx(p[10] * p[10], rel=1e-5)
    assert a.score < b.score


@pytest.mark.parametrize(
    ("max_answer_len", "expected"),
    [
        (15, "Warsaw in 1867"),
        (3, "Warsaw in 1867"),
        (2, "Warsaw in"),
        (1, "Warsaw"),
        (10**20, "Warsaw in 1867"),
    ],
)
def test_max_answer_len_limits_span_tokens(max_answer_len, expected):
    window = make_window({10: 6.0}, {12: 6.0, 11: 3.0, 10: 2.0})
    span = best_span([window], CONTEXT, max_answer_len)
    assert CONTEXT[span.start : span.end] == expected


def test_end_before_start_is_never_chosen():
    window = make_window({12: 9.0, 4: 1.0}, {4: 9.0, 12: 1.0})
    starts, ends, _ = top_spans(
        window.start_logits, window.end_logits, window.allowed, 15, CANDIDATES_PER_WINDOW
    )
    assert len(starts) > 0 and np.all(ends >= starts)


def test_best_span_across_windows_and_scores_of_equal_text_add_up():
    weak = make_window({10: 1.0}, {10: 1.0})
    strong = make_window({12: 6.0}, {12: 6.0})
    span = best_span([weak, strong], CONTEXT, 15)
    assert CONTEXT[span.start : span.end] == "1867"
    # The same span seen by two overlapping windows adds both windows' probabilities (like the pipeline).
    once = best_span([strong], CONTEXT, 15)
    twice = best_span([strong, strong], CONTEXT, 15)
    assert twice.score == pytest.approx(2 * once.score, rel=1e-6)
    assert (twice.start, twice.end) == (once.start, once.end)


def test_equal_text_in_other_case_merges_into_first_position():
    context = "Paris or paris"
    tokens = [("[CLS]", NONE, NONE), ("q", 0, 0), ("[SEP]", NONE, NONE)]
    tokens += [("Paris", 1, 0), ("or", 1, 1), ("paris", 1, 2), ("[SEP]", NONE, NONE)]
    spans = {3: (0, 5), 4: (6, 8), 5: (9, 14)}
    window = make_window({3: 2.0, 5: 2.5}, {3: 2.0, 5: 2.5}, tokens, spans)
    span = best_span([window], context, 15)
    p = softmax_allowed(window.start_logits, window.allowed)
    # Candidates come best first: "paris" (token 5) is seen first and keeps its position; "Paris" (token 3)
    # has the same text ignoring case, so its probability is added to it.
    assert context[span.start : span.end] == "paris"
    assert span.score > p[5] * p[5]


@pytest.mark.parametrize(
    ("s", "e", "expected"),
    [
        (6, 6, "Curie"),  # "##ie" alone widens to its word
        (5, 7, "Curie was"),
        (6, 10, "Curie was born in Warsaw"),
        (0, 6, "Marie Curie"),  # [CLS] has no word: raw offsets, from (0, 0) to the end of "##ie"
    ],
)
def test_align_to_words(s, e, expected):
    window = make_window({}, {})
    start, end = align_to_words(s, e, window)
    assert CONTEXT[start:end] == expected


def test_word_to_chars_uses_only_this_windows_tokens():
    """A word cut by a window edge maps to the characters of its tokens inside this window only."""
    window = make_window({}, {})
    cut = Window(
        window.start_logits[:6], window.end_logits[:6], window.allowed[:6], window.offsets[:6],
        window.word_ids[:6], window.sequence_ids[:6],
    )  # fmt: skip
    assert word_to_chars(1, cut.offsets, cut.word_ids, cut.sequence_ids) == (6, 9)
    assert word_to_chars(1, window.offsets, window.word_ids, window.sequence_ids) == (6, 11)
    with pytest.raises(LookupError):
        word_to_chars(42, window.offsets, window.word_ids, window.sequence_ids)


def test_no_context_tokens_gives_no_span():
    tokens = [("[CLS]", NONE, NONE), ("q", 0, 0), ("[SEP]", NONE, NONE), ("[SEP]", NONE, NONE)]
    window = make_window({1: 3.0}, {1: 3.0}, tokens, {})
    window = Window(window.start_logits, window.end_logits, np.zeros(4, dtype=bool), window.offsets,
                    window.word_ids, window.sequence_ids)  # fmt: skip
    assert best_span([window], "", 15) is None
    assert best_span([], "anything", 15) is None


def test_word_to_chars_matches_tokenizers(tiny_qa_model_dir):
    """The numpy port agrees with tokenizers' Encoding.word_to_chars on real (strided) encodings."""
    from qa_answer.features import Windowing, build_features
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qa_model_dir)
    questions = ["Who was born in Warsaw?", "Wo liegt Zürich?"]
    contexts = [
        "Marie Curie, née Skłodowska, was born in Warsaw in 1867; xylophones and naïvely café " * 6,
        "Zürich liegt in der Schweiz, München in Deutschland, 東京 in Japan. " * 8,
    ]
    windowing = Windowing(max_seq_len=48, doc_stride=12)
    features, failures = build_features(tokenizer, questions, contexts, windowing)
    assert not failures
    encoded = tokenizer(questions, contexts, truncation="only_second", max_length=48, stride=12,
                        return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    assert len(encoded.encodings) == len(features) > 4
    checked = 0
    for feature, enc in zip(features, encoded.encodings, strict=True):
        for token, word in enumerate(feature.word_ids):
            if feature.sequence_ids[token] == 1:
                ours = word_to_chars(int(word), feature.offsets, feature.word_ids, feature.sequence_ids)
                assert ours == tuple(enc.word_to_chars(int(word), sequence_index=1))
                assert ContextWords(window_of(feature)).chars(int(word)) == ours  # the per-window index too
                checked += 1
    assert checked > 100


def window_of(feature) -> Window:
    logits = np.zeros(len(feature), dtype=np.float32)
    return Window(logits, logits, feature.allowed, feature.offsets, feature.word_ids, feature.sequence_ids)


def test_context_words_falls_back_when_word_ids_decrease():
    """Out-of-order word ids: the index defers to word_to_chars' scan, which stops at the first larger id."""
    window = make_window({}, {})
    words = window.word_ids.copy()
    context = np.flatnonzero(window.sequence_ids == 1)
    words[context[2]], words[context[3]] = words[context[3]], words[context[2]]
    shuffled = Window(window.start_logits, window.end_logits, window.allowed, window.offsets, words,
                      window.sequence_ids)  # fmt: skip
    index = ContextWords(shuffled)
    for word in sorted({int(w) for w in words[context]}):
        try:
            expected = word_to_chars(word, shuffled.offsets, words, shuffled.sequence_ids)
        except LookupError:
            with pytest.raises(LookupError):
                index.chars(word)
            continue
        assert index.chars(word) == expected
    with pytest.raises(LookupError):
        ContextWords(window).chars(42)
