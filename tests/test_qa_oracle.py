"""Our batched core answers exactly like transformers 5.2's QuestionAnsweringPipeline (the test oracle).

Same tiny random model, loaded by path: answer text, start, end equal and score within 1e-4, for long contexts
cut into many windows, unicode, and several batch sizes. The pipeline is used here only, never in production.
"""

from __future__ import annotations

import random

import pytest
from fixtures_model import _UNICODE, _WORDS
from qa_answer.features import Windowing, build_features
from qa_answer.qa_config import QAConfig
from qa_answer.qa_core import load_qa_model
from qa_answer.results import RowFailure, Span

ODD_TEXT = [
    "café au lait", "Zürich–München", "São Paulo", "naïvely", "東京タワー", "emoji 😀 here",
    "e\u0301te\u0301", "tab\there", "new\nline", "non\u00a0breaking", "x-ray",
    "(Paris)", "U.S.A.", "1,867.5", "«quoted»",
]  # fmt: skip


def make_corpus(seed: int, rows: int, words: tuple[int, int]) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = _WORDS + _UNICODE
    questions, contexts = [], []
    for _ in range(rows):
        n = rng.randint(*words)
        context = [rng.choice(vocab) if rng.random() > 0.1 else rng.choice(ODD_TEXT) for _ in range(n)]
        questions.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9))) + "?")
        contexts.append(" ".join(context) + rng.choice([".", "", " !", "  "]))
    return questions, contexts


# The oracle (transformers 5.2 on numpy 2) warns about ``__array__`` copy semantics on every window.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHORT = make_corpus(1, 14, (1, 60))
LONG = make_corpus(2, 6, (300, 700))  # 384-token windows: two to five windows each
MIXED = (SHORT[0] + LONG[0], SHORT[1] + LONG[1])
SMALL_WINDOWS = make_corpus(3, 12, (20, 140))


@pytest.fixture(scope="module")
def oracle(tiny_qa_model_dir):
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return pipeline("question-answering", model=str(tiny_qa_model_dir), tokenizer=str(tiny_qa_model_dir))


def oracle_answers(oracle, questions, contexts, config: QAConfig) -> list[dict]:
    out = oracle(
        question=questions,
        context=contexts,
        max_seq_len=config.max_seq_len,
        doc_stride=config.doc_stride,
        max_answer_len=config.max_answer_len,
    )
    return out if isinstance(out, list) else [out]


def assert_same_as_oracle(ours: list, expected: list[dict], contexts: list[str]) -> None:
    assert len(ours) == len(expected) == len(contexts)
    for i, (got, want) in enumerate(zip(ours, expected, strict=True)):
        assert isinstance(got, Span), f"row {i}: {got}"
        assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"]), f"row {i}"
        assert got.score == pytest.approx(want["score"], abs=1e-4), f"row {i}"
        assert contexts[i][got.start : got.end] == got.answer


CASES = [
    pytest.param(MIXED, dict(batch_size=32), id="default-windows-bs32"),
    pytest.param(MIXED, dict(batch_size=5), id="default-windows-bs5"),
    pytest.param(SMALL_WINDOWS, dict(max_seq_len=48, doc_stride=12, batch_size=7), id="48/12-bs7"),
    pytest.param(SMALL_WINDOWS, dict(max_seq_len=64, doc_stride=24, batch_size=1), id="64/24-bs1"),
    pytest.param(
        SMALL_WINDOWS, dict(max_seq_len=40, doc_stride=0, max_answer_len=4, batch_size=64), id="40/0-len4"
    ),
]


@pytest.mark.parametrize(("corpus", "settings"), CASES)
def test_answers_equal_pipeline(tiny_qa_model_dir, oracle, corpus, settings):
    questions, contexts = corpus
    config = QAConfig(model=str(tiny_qa_model_dir), **settings)
    model = load_qa_model(config)
    expected = oracle_answers(oracle, questions, contexts, config)
    assert_same_as_oracle(model.answer(questions, contexts), expected, contexts)


def test_corpus_covers_many_windows_and_window_edges(tiny_qa_model_dir, tiny_qa_model):
    """Guard the corpus itself: long contexts span several windows; answers sit in overlaps, near edges."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qa_model_dir)
    questions, contexts = SMALL_WINDOWS
    windowing = Windowing(max_seq_len=48, doc_stride=12)
    features, failures = build_features(tokenizer, questions, contexts, windowing)
    assert not failures
    windows_per_row = [sum(f.row == r for f in features) for r in range(len(questions))]
    assert max(windows_per_row) >= 8
    long_features, _ = build_features(tokenizer, *LONG, Windowing(384, 128))
    assert min(sum(f.row == r for f in long_features) for r in range(len(LONG[0]))) >= 2

    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), max_seq_len=48, doc_stride=12))
    answers = model.answer(questions, contexts)
    in_two_windows = near_edge = 0
    for row, span in enumerate(answers):
        holders = []
        for f in (f for f in features if f.row == row):
            context_tokens = (f.sequence_ids == 1).nonzero()[0]
            first, last = f.offsets[context_tokens[0], 0], f.offsets[context_tokens[-1], 1]
            if first <= span.start and span.end <= last:
                holders.append(f)
                near_edge += span.start - first <= 3 or last - span.end <= 3
        in_two_windows += len(holders) >= 2
    assert in_two_windows >= 2
    assert near_edge >= 2


def test_every_row_gets_one_result_and_failures_do_not_stop_the_chunk(tiny_qa_model_dir, oracle):
    config = QAConfig(model=str(tiny_qa_model_dir), max_seq_len=32, doc_stride=8)
    model = load_qa_model(config)
    long_question = " ".join(["What"] * 23) + "?"  # 24 tokens
    questions = ["Who was born?", "", long_question, "Where?", "   ", "When?", long_question, "Who?"]
    contexts = ["Curie was born in Warsaw. " * 6, "text", "Paris " * 40, "", "text", "In 1867.", "Paris."]
    contexts.append("\u200b")  # a zero-width space: not blank, yet no token survives
    results = model.answer(questions, contexts)
    assert len(results) == len(questions)
    assert isinstance(results[0], Span) and isinstance(results[5], Span)
    assert results[1] == RowFailure("empty question")
    assert results[3] == RowFailure("empty context")
    assert results[4] == RowFailure("empty question")
    assert results[7] == RowFailure("no answer span found in the context")
    assert results[2] == RowFailure(
        "question too long: 24 tokens; with max_seq_len=32 and doc_stride=8 a question may have at most "
        "20 tokens when its context needs more than one window"
    )
    # A long question whose context still fits in one window is answered, as the pipeline does.
    assert isinstance(results[6], Span)
    good = [0, 5, 6]
    expected = oracle_answers(oracle, [questions[i] for i in good], [contexts[i] for i in good], config)
    assert_same_as_oracle([results[i] for i in good], expected, [contexts[i] for i in good])


def test_batch_size_does_not_change_answers(tiny_qa_model_dir, tiny_qa_model):
    questions, contexts = MIXED
    one = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), batch_size=1)).answer(questions, contexts)
    many = tiny_qa_model.answer(questions, contexts)
    assert [(s.start, s.end) for s in one] == [(s.start, s.end) for s in many]
    assert [s.score for s in one] == pytest.approx([s.score for s in many], abs=1e-5)


def test_bf16_returns_valid_spans_and_says_so_in_the_name(tiny_qa_model_dir, tiny_qa_model):
    questions, contexts = MIXED
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision="bf16"))
    assert model.name == f"{tiny_qa_model_dir.name}+bf16"
    assert tiny_qa_model.name == tiny_qa_model_dir.name  # a local folder has no revision
    results = model.answer(questions, contexts)
    assert all(isinstance(r, Span) for r in results)
    for span, context in zip(results, contexts, strict=True):
        assert context[span.start : span.end] == span.answer != ""
        assert 0.0 < span.score <= 1.0 + 1e-6
    fp32 = tiny_qa_model.answer(questions, contexts)
    same = sum((a.start, a.end) == (b.start, b.end) for a, b in zip(fp32, results, strict=True))
    assert same >= len(results) // 2  # bf16 may differ slightly, not wildly
