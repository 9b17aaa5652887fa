"""Reduced precisions on the tiny random BERT: valid spans, measured agreement with fp32, the ``fast`` probe,
the overlapping stages, and the summary line of ``qa-answer answer``."""

from __future__ import annotations

import logging
import math
import re
import warnings

import pytest
import torch
from qa_answer.cli import main
from qa_answer.errors import ModelLoadError
from qa_answer.model_loading import load_model
from qa_answer.precision import (
    CPU_CANDIDATES,
    Engine,
    build_engine,
    candidates,
    check_precision_device,
    pick_fastest,
)
from qa_answer.qa_config import QAConfig
from qa_answer.qa_core import (
    AGREEMENT_EVERY_ROWS,
    AGREEMENT_MAX_ROWS,
    Agreement,
    QAModel,
    cuda_batch_windows,
    load_qa_model,
)
from qa_answer.results import RowFailure, Span
from test_qa_oracle import LONG, MIXED, SMALL_WINDOWS, make_corpus

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script_method, used by this module
    from torch.utils.mkldnn import MkldnnLinear

MANY = make_corpus(7, 3 * AGREEMENT_EVERY_ROWS + 5, (5, 80))  # 197 rows: rows 0, 64, 128, 192 are sampled
AGREEMENT_LINE = re.compile(r" agreement_with_fp32=(\d\.\d{4}) \((\d+) rows\)$")


def assert_valid_spans(results: list, contexts: list[str]) -> None:
    assert len(results) == len(contexts)
    for span, context in zip(results, contexts, strict=True):
        assert isinstance(span, Span), span
        assert context[span.start : span.end] == span.answer != ""
        assert 0.0 < span.score <= 1.0 + 1e-6


@pytest.fixture(scope="module")
def fp32_many(tiny_qa_model):
    return tiny_qa_model.answer(*MANY)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_gives_valid_spans_and_measures_agreement(precision, tiny_qa_model_dir, fp32_many):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision=precision))
    assert model.name == f"{tiny_qa_model_dir.name}+{precision}"
    questions, contexts = MANY
    results = model.answer(questions, contexts)
    assert_valid_spans(results, contexts)
    sampled = list(range(0, len(contexts), AGREEMENT_EVERY_ROWS))
    expected_same = sum(
        (results[i].start, results[i].end) == (fp32_many[i].start, fp32_many[i].end) for i in sampled
    )
    agreement = model.take_agreement()
    assert (agreement.rows, agreement.same) == (len(sampled), expected_same)
    assert 0.0 <= agreement.share <= 1.0
    assert agreement.line() == f"agreement_with_fp32={expected_same / len(sampled):.4f} ({len(sampled)} rows)"
    # over all rows, the reduced precision mostly picks fp32's span (random weights understate this)
    same = sum((a.start, a.end) == (b.start, b.end) for a, b in zip(results, fp32_many, strict=True))
    assert same >= 0.6 * len(results)
    assert model.take_agreement().rows == 0  # a new run starts counting afresh


def test_int8_quantizes_the_linear_layers_and_keeps_fp32_for_the_sample(tiny_qa_model_dir):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision="int8"))
    quantized = [
        m for m in model._engine.module.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    ]
    assert len(quantized) == 2 * 6 + 1  # per layer q, k, v, attention out, intermediate, output; qa_outputs
    assert not any(isinstance(m, torch.nn.Linear) for m in model._engine.module.modules())
    assert sum(isinstance(m, MkldnnLinear) for m in model._reference.module.modules()) == 2 * 6 + 1


def test_cpu_fp32_runs_onednn_linear_layers_with_the_same_logits(tiny_qa_model_dir):
    loaded = load_model(QAConfig(model=str(tiny_qa_model_dir)))
    engine = build_engine(loaded.model, "fp32", torch.device("cpu"))
    assert sum(isinstance(m, MkldnnLinear) for m in engine.module.modules()) == 2 * 6 + 1
    assert any(isinstance(m, torch.nn.Linear) for m in loaded.model.modules())  # a copy was converted
    inputs = {
        "input_ids": torch.randint(5, 300, (3, 40)),
        "attention_mask": torch.ones(3, 40, dtype=torch.long),
        "token_type_ids": torch.zeros(3, 40, dtype=torch.long),
    }
    inputs["attention_mask"][1, 25:] = 0
    with torch.inference_mode():
        start, end = engine.forward(inputs)
        expected = loaded.model(**inputs)
    assert torch.allclose(start, expected.start_logits, atol=1e-5)
    assert torch.allclose(end, expected.end_logits, atol=1e-5)
    with pytest.raises(ValueError, match="engines must be built from the model as loaded"):
        build_engine(engine.module, "int8", torch.device("cpu"))


def test_agreement_sample_is_bounded_per_run(tiny_qa_model_dir):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision="bf16"))
    questions, contexts = make_corpus(8, 70, (3, 12))
    for _ in range(AGREEMENT_MAX_ROWS + 4):  # calls of 70 rows: rows 0 and 64 of the first, then on
        model.answer(questions, contexts)
    assert model.take_agreement().rows == AGREEMENT_MAX_ROWS


def test_fp32_reports_no_agreement(tiny_qa_model):
    tiny_qa_model.answer(*SMALL_WINDOWS)
    assert tiny_qa_model.take_agreement() is None


def test_fast_times_every_candidate_logs_it_and_keeps_the_fastest(tiny_qa_model_dir, caplog):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision="fast"))
    assert model.name == f"{tiny_qa_model_dir.name}+fast" and model.probe is None
    questions, contexts = MIXED
    with caplog.at_level(logging.INFO, logger="qa_answer"):
        results = model.answer(questions, contexts)
    assert_valid_spans(results, contexts)
    probe = model.probe
    assert set(probe.seconds) == set(CPU_CANDIDATES)
    assert all(0 < s < math.inf for s in probe.seconds.values())
    assert probe.chosen.precision == min(probe.seconds, key=probe.seconds.get)
    assert model.precision == probe.chosen.precision
    suffix = "" if model.precision == "fp32" else f"+{model.precision}"
    assert model.name == f"{tiny_qa_model_dir.name}{suffix}"
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision fast:")]
    assert line.endswith(f"; using {model.precision}")
    for name in CPU_CANDIDATES:
        assert re.search(rf"\b{name} \d+\.\d{{3}}s", line)
    assert model.take_agreement().rows == 1  # row 0 of the 20


def test_fast_that_keeps_fp32_reuses_its_answers_for_the_sample(tiny_qa_model_dir, fp32_many):
    model = load_qa_model(QAConfig(model=str(tiny_qa_model_dir), precision="fast"))
    model._engine = model._reference  # what the probe leaves when fp32 is the fastest
    results = model.answer(*MANY)
    assert [(r.start, r.end) for r in results] == [(r.start, r.end) for r in fp32_many]
    assert model.name == tiny_qa_model_dir.name
    assert model.take_agreement() == Agreement(same=4, rows=4)


class ChargedEngines:
    """Engines on real tensors with a clock that charges each pass a known time (the selection logic only)."""

    def __init__(self, charges: dict[str, list[float]]) -> None:
        self.charges = {name: iter(times) for name, times in charges.items()}
        self.calls = dict.fromkeys(charges, 0)
        self.now = 0.0

    def engine(self, name: str) -> Engine:
        def forward(batch):
            self.calls[name] += 1
            self.now += next(self.charges[name])
            logits = batch["input_ids"].float()
            return logits, logits

        return Engine(name, forward, None)

    def pick(self, **kwargs):
        inputs = {"input_ids": torch.ones(4, 16, dtype=torch.long)}
        engines = [self.engine(name) for name in self.calls]
        return pick_fastest(engines, inputs, clock=lambda: self.now, **kwargs)


def test_pick_fastest_stops_when_one_candidate_is_clearly_ahead():
    timed = ChargedEngines({"fp32": [9.0, 3.0], "bf16": [9.0, 1.0], "int8": [9.0, 2.0]})
    result = timed.pick(budget_s=100.0, max_passes=4)
    assert result.chosen.precision == "bf16"
    assert result.seconds == {"fp32": 3.0, "bf16": 1.0, "int8": 2.0}  # warm-up passes are not timed
    assert result.shape == (4, 16)
    assert (result.passes, timed.calls) == (1, {"fp32": 2, "bf16": 2, "int8": 2})
    assert "(1 round(s)) on a batch of 4x16 tokens: fp32 3.000s, bf16 1.000s, int8 2.000s; using bf16" in (
        result.line()
    )


def test_pick_fastest_times_close_candidates_again_until_the_budget():
    timed = ChargedEngines(
        {"fp32": [9.0, 3.0], "bf16": [9.0, 1.4, 1.0, 1.1], "int8": [9.0, 1.2, 1.3, 1.25, 1.0]}
    )
    # round 1: fp32 (3.0 s > 1.5 x 1.2 s) is out; then the 4 s budget: round 2 (2.3 s) leaves time,
    # round 3 ends past it (4.65 s)
    result = timed.pick(budget_s=4.0, max_passes=4)
    assert (result.chosen.precision, result.passes) == ("bf16", 3)
    assert result.seconds == pytest.approx({"fp32": 3.0, "bf16": 1.0, "int8": 1.2})
    assert timed.calls == {"fp32": 2, "bf16": 4, "int8": 4}


def test_pick_fastest_stops_at_max_passes():
    timed = ChargedEngines({"bf16": [0.0] + [1.0] * 9, "int8": [0.0] + [1.0] * 9})
    result = timed.pick(budget_s=100.0, max_passes=2)
    assert result.passes == 2 and timed.calls == {"bf16": 3, "int8": 3}


def test_precision_device_pairs():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert candidates("fast", cpu) == ("fp32", "bf16", "int8")
    assert candidates("int8", cpu) == ("int8",)
    with pytest.raises(ValueError, match="precision fp16 runs on CUDA devices only"):
        check_precision_device("fp16", cpu)
    with pytest.raises(
        ValueError, match=r"precision int8 .* runs on a CPU only; on a GPU use fp16, bf16 or fast"
    ):
        check_precision_device("int8", cuda)
    check_precision_device("bf16", cuda)


def test_fp16_on_a_cpu_is_a_load_error(tiny_qa_model_dir):
    with pytest.raises(ModelLoadError, match=r"^precision fp16 runs on CUDA devices only; on a CPU use bf16"):
        load_qa_model(QAConfig(model=str(tiny_qa_model_dir), device="cpu", precision="fp16"))


def test_overlapping_stages_give_the_same_answers(tiny_qa_model_dir):
    """The GPU's three-stage pipeline, run on the CPU in stages of 3 rows: same results as one group."""
    questions, contexts = LONG[0] + MANY[0][:70], LONG[1] + MANY[1][:70]
    config = QAConfig(model=str(tiny_qa_model_dir), batch_size=4)
    loaded = load_model(config)
    staged = QAModel(loaded, config, overlap=True, rows_per_stage=3)
    got, want = staged.answer(questions, contexts), QAModel(loaded, config).answer(questions, contexts)
    assert [(s.start, s.end, s.answer) for s in got] == [(s.start, s.end, s.answer) for s in want]
    assert [s.score for s in got] == pytest.approx([s.score for s in want], abs=1e-6)


def test_overlapping_stages_sample_the_same_rows(tiny_qa_model_dir):
    """int8 quantizes activations per batch, so its answers depend on the batches; the sample does not."""
    questions, contexts = MANY[0][:140], MANY[1][:140]
    config = QAConfig(model=str(tiny_qa_model_dir), precision="int8")
    loaded = load_model(config)
    staged = QAModel(loaded, config, overlap=True, rows_per_stage=5)
    assert_valid_spans(staged.answer(questions, contexts), contexts)
    assert staged.take_agreement().rows == 3  # rows 0, 64 and 128, in stages 1, 13 and 26


def test_a_failing_row_still_fails_alone_in_stages(tiny_qa_model_dir):
    config = QAConfig(model=str(tiny_qa_model_dir), precision="int8")
    staged = QAModel(load_model(config), config, overlap=True, rows_per_stage=2)
    results = staged.answer(["Who?", "", "Where?", "When?", "   "], ["Curie.", "x", "Paris.", "", "y"])
    assert [type(r) for r in results] == [Span, RowFailure, Span, RowFailure, RowFailure]


def test_engines_leave_the_fp32_model_unchanged(tiny_qa_model_dir):
    loaded = load_model(QAConfig(model=str(tiny_qa_model_dir)))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for precision in ("bf16", "int8"):
        build_engine(loaded.model, precision, torch.device("cpu"))
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [(140, 512), (8, 8 * 2**30 // 4 // (4 * (16 * 768 + 12 * 384) * 384)), (0, 1)],
)
def test_gpu_batches_are_sized_from_free_memory(free_gib, expected):
    assert cuda_batch_windows(free_gib * 2**30, 384, 768, 12) == expected
    assert 1 <= expected <= 512


@pytest.mark.parametrize("precision", ["int8", "fast"])
def test_cli_summary_gives_the_agreement_and_answers_name_the_precision(
    precision, tmp_path, tiny_qa_model_dir, capsys
):
    questions, contexts = MANY
    rows = "".join(f'q{i},"{q}","{c}"\n' for i, (q, c) in enumerate(zip(questions, contexts, strict=True)))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.csv").write_text("id,question,context\n" + rows, encoding="utf-8")
    argv = ["answer", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_qa_model_dir)]
    assert main([*argv, "--chunk-rows", "50"], env={"QA_PRECISION": precision}) == 0
    captured = capsys.readouterr()
    [summary] = [line for line in captured.out.splitlines() if line.startswith("summary:")]
    match = AGREEMENT_LINE.search(summary)
    assert match, summary
    assert 0.0 <= float(match.group(1)) <= 1.0
    assert int(match.group(2)) == 4  # rows 0, 64, 128, 192 over four chunks of 50 rows
    from contract_readers import read_answers

    with (tmp_path / "out" / "answers" / "q.csv").open(encoding="utf-8", newline="") as stream:
        models = {a.model for a in read_answers(stream)}
    if precision == "fast":
        chosen = re.search(r"precision fast: .*; using (\w+)", captured.err).group(1)
        assert chosen in CPU_CANDIDATES
        assert models == {tiny_qa_model_dir.name + ("" if chosen == "fp32" else f"+{chosen}")}
    else:
        assert models == {f"{tiny_qa_model_dir.name}+int8"}
