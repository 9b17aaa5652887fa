"""``qa-answer answer`` end to end on the tiny random BERT (real model code, loaded by path)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from contract_readers import read_outputs
from qa_answer.answer_run import answer_folder
from qa_answer.cli import main
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS
from qa_answer.model_loading import HOW_TO_FIX

LONG_CONTEXT = " ".join(
    f"In the year {1800 + i} the city of Paris built a new bridge over the river." for i in range(60)
)
GOOD = (
    "id,Question , CONTEXT,lang\n"
    "a1,Where is Paris?,Paris is the capital of France.,en\n"
    'a2,Who wrote it?,"Curie, Einstein and Newton wrote it in München and Zürich.",de\n'
    "a3,,no question here,en\n"
    f"a4,When was the bridge built?,{LONG_CONTEXT},en\n"
    f"a5,{'the ' * 300}?,{LONG_CONTEXT},en\n"
    "a6,What is 東京?,東京 is the capital of Japan.,ja\n"
    "a7,too,many,fields,here\n"
)
INPUTS: dict[str, bytes] = {
    "sub/deep/good.csv": GOOD.encode(),
    "semicolon.csv": b"question;context\nWhere?;Here.\n",
    "header_only.csv": b"question,context\r\n",
    "latin1.csv": "question,context\nOù est Paris?,Paris est en France.\nWhere?,In Paris.\n".encode(
        "latin-1"
    ),
    "binary.csv": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\xcb\x48\n\x00\x01",
    "notes.txt": b"ignored",
}
DATA_ROWS = {
    "sub/deep/good.csv": 7,
    "semicolon.csv": 0,
    "header_only.csv": 0,
    "latin1.csv": 2,
    "binary.csv": 0,
}
SUMMARY = re.compile(
    r"^summary: files=5 unreadable_files=2 rows=9 answered=5 rejected=4 seconds=\d+\.\d\d rows_per_s=\d+\.\d$"
)


@pytest.fixture
def in_dir(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for name, data in INPUTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_answers_every_file_into_the_contract_layout(in_dir, tmp_path, tiny_qa_model_dir, capsys):
    out = tmp_path / "out"
    assert (
        main(["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir), "--chunk-rows", "2"]) == 0
    )

    csvs = sorted(DATA_ROWS)
    assert all_files(out) == [f"answers/{c}" for c in csvs] + [f"rejected/{c}" for c in csvs]
    for relative, rows in DATA_ROWS.items():
        answers, rejected = read_outputs(out, relative)
        numbers = [a.row_number for a in answers] + [r.row_number for r in rejected if r.row_number]
        assert sorted(numbers) == list(range(1, rows + 1)), relative  # every row exactly once
        for answer in answers:
            assert answer.source_file == relative
            assert answer.context[answer.answer_start : answer.answer_end] == answer.answer
            assert answer.answer.strip() and 0.0 <= answer.score <= 1.0
            assert answer.model == tiny_qa_model_dir.name

    answers, rejected = read_outputs(out, "sub/deep/good.csv")
    assert [(a.row_number, a.id, a.extra) for a in answers] == [
        (1, "a1", {"lang": "en"}),
        (2, "a2", {"lang": "de"}),
        (4, "a4", {"lang": "en"}),
        (6, "a6", {"lang": "ja"}),
    ]
    assert answers[1].context == "Curie, Einstein and Newton wrote it in München and Zürich."
    assert [(r.row_number, r.error.split(":")[0]) for r in rejected] == [
        (3, "empty question"),
        (5, "question too long"),
        (7, "row has 5 fields, the header has 4"),
    ]
    assert rejected[2].raw == "a7,too,many,fields,here"
    original = f"a5,{'the ' * 300}?,{LONG_CONTEXT},en"  # the model's failures keep the original text too
    assert rejected[1].raw == original[:2000] + f"...[{len(original) - 2000} more chars]"

    assert read_outputs(out, "header_only.csv") == ([], [])
    answers, rejected = read_outputs(out, "latin1.csv")
    assert [a.row_number for a in answers] == [2]
    assert [(r.row_number, r.error, r.raw) for r in rejected] == [
        (1, "not UTF-8: undecodable byte 0xf9 in column 'question'", "O\\xf9 est Paris?,Paris est en France.")
    ]
    _, rejected = read_outputs(out, "semicolon.csv")
    assert [(r.source_file, r.row_number) for r in rejected] == [("semicolon.csv", 0)]
    assert rejected[0].error.startswith("missing required column(s) 'question', 'context'")
    _, rejected = read_outputs(out, "binary.csv")
    assert [(r.row_number, r.error) for r in rejected] == [
        (0, "binary file: the header row contains NUL bytes")
    ]

    header = (out / "answers" / "header_only.csv").read_text(encoding="utf-8")
    assert header == ",".join(ANSWER_COLUMNS) + "\n"
    assert (out / "rejected" / "header_only.csv").read_text(encoding="utf-8") == ",".join(
        REJECTED_COLUMNS
    ) + "\n"

    captured = capsys.readouterr()
    assert SUMMARY.match(captured.out.strip()), captured.out
    assert (
        "qa-answer: WARNING: binary.csv: file rejected: binary file: the header row contains NUL bytes"
        in (captured.err)
    )
    assert "qa-answer: INFO: sub/deep/good.csv: 7 rows, 4 answered, 3 rejected" in captured.err
    assert "Traceback" not in captured.err


def test_rerun_replaces_outputs_without_duplicates(in_dir, tmp_path, tiny_qa_model_dir, capsys):
    out = tmp_path / "out"
    argv = ["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir)]
    assert main(argv) == 0
    first = {name: (out / name).read_bytes() for name in all_files(out)}
    assert main(argv) == 0
    assert {name: (out / name).read_bytes() for name in all_files(out)} == first


def test_fail_on_reject_flag_and_env_set_the_exit_code(in_dir, tmp_path, tiny_qa_model_dir, capsys):
    argv = ["answer", str(in_dir), str(tmp_path / "out"), "--model", str(tiny_qa_model_dir)]
    assert main([*argv, "--fail-on-reject"]) == 3
    err = capsys.readouterr().err
    assert err.endswith(
        f"qa-answer: 4 rows and 2 files rejected (see {tmp_path / 'out' / 'rejected'}); "
        "exiting 3 (--fail-on-reject)\n"
    )
    assert main(argv, env={"QA_FAIL_ON_REJECT": "true"}) == 3
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.csv").write_text("question,context\nWhere is Paris?,Paris is in France.\n")
    assert (
        main(
            [
                "answer",
                str(clean),
                str(tmp_path / "out2"),
                "--model",
                str(tiny_qa_model_dir),
                "--fail-on-reject",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("extra_argv", "env", "error"),
    [
        (
            ["--doc-stride", "300"],
            {},
            "invalid settings: doc_stride must be an integer >= 0 and < max_seq_len/2 = 192 "
            "(max_seq_len=384), got 300",
        ),
        (
            [],
            {"QA_MAX_SEQ_LEN": "64"},
            "invalid settings: doc_stride must be an integer >= 0 and < max_seq_len/2 = 32 "
            "(max_seq_len=64), got 128",
        ),
        ([], {"QA_BATCH_SIZE": "lots"}, "invalid settings: QA_BATCH_SIZE must be an integer, got 'lots'"),
        (
            ["--batch-size", "0"],
            {"QA_BATCH_SIZE": "8"},
            "invalid settings: batch_size must be an integer >= 1, got 0",
        ),
        (
            ["--precision", "fp8"],
            {},
            "invalid settings: precision must be one of fp32, bf16, fp16, int8, fast, got 'fp8'",
        ),
        (["--device", "tpu"], {}, "invalid settings: device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--chunk-rows", "0"], {}, "invalid settings: chunk_rows must be an integer >= 1, got 0"),
        (
            [],
            {"QA_FAIL_ON_REJECT": "maybe"},
            "invalid settings: QA_FAIL_ON_REJECT must be true or false, got 'maybe'",
        ),
    ],
)
def test_settings_errors_are_one_clear_line(
    extra_argv, env, error, in_dir, tmp_path, tiny_qa_model_dir, capsys
):
    argv = ["answer", str(in_dir), str(tmp_path / "out"), "--model", str(tiny_qa_model_dir), *extra_argv]
    assert main(argv, env=env) == 1
    assert capsys.readouterr().err == f"qa-answer: error: {error}\n"
    assert not (tmp_path / "out").exists()


def test_flags_win_over_environment(in_dir, tmp_path, tiny_qa_model_dir):
    env = {"QA_MODEL": "/no/such/model", "QA_DOC_STRIDE": "999", "QA_PRECISION": "fp8"}
    argv = ["answer", str(in_dir), str(tmp_path / "out"), "--model", str(tiny_qa_model_dir)]
    assert main([*argv, "--doc-stride", "64", "--precision", "bf16"], env=env) == 0
    answers, _ = read_outputs(tmp_path / "out", "sub/deep/good.csv")
    assert {a.model for a in answers} == {f"{tiny_qa_model_dir.name}+bf16"}


def test_bad_model_gives_the_model_load_error(in_dir, tmp_path, capsys):
    missing = tmp_path / "no-model"
    assert main(["answer", str(in_dir), str(tmp_path / "out")], env={"QA_MODEL": str(missing)}) == 1
    assert capsys.readouterr().err == (
        f"qa-answer: error: could not load QA model {str(missing)!r}: local folder {missing} does not exist. "
        f"{HOW_TO_FIX}\n"
    )


def test_rerun_into_the_same_folder_drops_the_outputs_of_deleted_or_renamed_inputs(
    in_dir, tmp_path, tiny_qa_model_dir
):
    out = tmp_path / "out"
    (out / "answers").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")  # only answers/ and rejected/ CSVs are ours to remove
    argv = ["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir)]
    assert main(argv) == 0
    before = set(all_files(out))
    victim = sorted(p for p in in_dir.rglob("*.csv"))[0]
    rel = victim.relative_to(in_dir).as_posix()
    victim.rename(victim.with_name("renamed.csv"))
    renamed = (victim.parent / "renamed.csv").relative_to(in_dir).as_posix()
    assert main(argv) == 0
    after = set(all_files(out))
    assert after == (before - {f"answers/{rel}", f"rejected/{rel}"}) | {
        f"answers/{renamed}",
        f"rejected/{renamed}",
    }
    assert "notes.txt" in after


def test_output_folder_equal_to_the_input_folder_is_refused(in_dir, capsys):
    assert main(["answer", str(in_dir), str(in_dir) + "/"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"qa-answer: error: invalid settings: OUT_DIR is IN_DIR ({in_dir})")


def test_missing_input_folder(tmp_path, capsys):
    assert main(["answer", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"qa-answer: error: IN_DIR '{tmp_path / 'nope'}' is not a folder\n"


class _Killed(Exception):
    pass


class _DiesOnSecondChunk:
    """The real tiny model, interrupted after its first chunk, as a kill mid-file would."""

    def __init__(self, model) -> None:
        self.model = model
        self.name = model.name
        self.calls = 0

    def answer(self, questions, contexts):
        self.calls += 1
        if self.calls == 2:
            raise _Killed
        return self.model.answer(questions, contexts)


def test_a_run_that_dies_mid_file_leaves_no_partial_or_temp_files(tmp_path, tiny_qa_model):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    rows = "".join(f"Where is Paris {i}?,Paris {i} is in France.\n" for i in range(10))
    (in_dir / "x.csv").write_text("question,context\n" + rows)
    out = tmp_path / "out"
    (out / "answers").mkdir(parents=True)
    (out / "answers" / "x.csv").write_text("previous complete file\n")

    with pytest.raises(_Killed):
        answer_folder(in_dir, out, _DiesOnSecondChunk(tiny_qa_model), chunk_rows=4)

    assert all_files(out) == ["answers/x.csv"]  # no temp files, no half-written rejected file
    assert (out / "answers" / "x.csv").read_text() == "previous complete file\n"


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, tiny_qa_model):
    root = tmp_path / "data"
    root.mkdir()
    (root / "q.csv").write_text("question,context\nWhere is Paris?,Paris is in France.\n")
    for _ in range(2):
        summary = answer_folder(root, root / "out", tiny_qa_model, chunk_rows=8)
        assert (summary.files, summary.answered) == (1, 1)


def _venv_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_subprocess_run_without_a_terminal_has_no_progress_bar(in_dir, tmp_path, tiny_qa_model_dir):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env["QA_MODEL"] = str(tiny_qa_model_dir)
    result = subprocess.run(
        [_venv_script("qa-answer"), "answer", str(in_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert SUMMARY.match(result.stdout.strip()), result.stdout
    assert (
        "\r" not in result.stderr and "row/s" not in result.stderr and "Loading weights" not in result.stderr
    )
    assert all(line.startswith("qa-answer: ") for line in result.stderr.splitlines()), result.stderr
    assert len(all_files(out)) == 10


def test_subprocess_run_on_a_terminal_shows_a_progress_bar(in_dir, tmp_path, tiny_qa_model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a fresh pty is 0x0
    try:
        process = subprocess.Popen(
            [
                _venv_script("qa-answer"),
                "answer",
                str(in_dir),
                str(tmp_path / "out"),
                "--model",
                str(tiny_qa_model_dir),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout = process.stdout.read().decode()
        assert process.wait(timeout=300) == 0
    finally:
        os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert "row" in terminal and "[5/5]" in terminal, terminal
    assert SUMMARY.match(stdout.strip()), stdout


def test_extra_columns_round_trip_as_json(tmp_path, tiny_qa_model):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "x.csv").write_text(
        'question,context,"meta, data",n\nWhere is Paris?,Paris is in France.,"a ""b""",1\n'
    )
    answer_folder(in_dir, tmp_path / "out", tiny_qa_model, chunk_rows=8)
    [answer], _ = read_outputs(tmp_path / "out", "x.csv")
    assert answer.extra == {"meta, data": 'a "b"', "n": "1"}


def test_rejected_rows_are_written_in_input_order(tmp_path, tiny_qa_model):
    """Row 1 is refused by the model (question longer than the window), row 2 by the CSV reader."""
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    long_question = "What " * 600 + "?"
    (in_dir / "r.csv").write_text(f"question,context\n{long_question},Paris.\nWho?,\nWho?,Paris\n")
    summary = answer_folder(in_dir, tmp_path / "out", tiny_qa_model, chunk_rows=8)
    answers, rejected = read_outputs(tmp_path / "out", "r.csv")
    assert [r.row_number for r in rejected] == [1, 2]
    assert rejected[0].error.startswith("question too long") and rejected[1].error == "empty context"
    assert [a.row_number for a in answers] == [3] and (summary.answered, summary.rejected) == (1, 2)
