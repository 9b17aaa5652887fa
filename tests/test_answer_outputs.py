"""How `qa-answer answer` writes its outputs when things go wrong: a kill between the two renames of a pair, a
full disk, temporary files left by killed runs. Faults come from the QA_TEST_FAULT hook, never from timing."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from contract_readers import read_outputs, read_rejected
from pg_load.cli import main as pg_load_main
from qa_answer.answer_run import answer_folder

OLD = "question,context\nWhere is Paris?,Paris is in France.\nWho?,\n"  # row 1 answered, row 2 rejected
NEW = "question,context\nWhere is Paris?,\nWho is Ann?,Ann is a baker in Paris.\n"  # the other way round


def qa_answer(in_dir: Path, out: Path, model: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env["QA_MODEL"] = str(model)
    if fault:
        env["QA_TEST_FAULT"] = fault
    script = str(Path(sys.executable).parent / "qa-answer")
    return subprocess.run(
        [script, "answer", str(in_dir), str(out)], env=env, capture_output=True, text=True, timeout=300
    )


def rows_of(out: Path, relative: str) -> tuple[list[int], list[int]]:
    answers, rejected = read_outputs(out, relative)
    return [a.row_number for a in answers], [r.row_number for r in rejected]


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def loaded_rows(db) -> tuple[set, set]:
    with db.cursor() as cur:
        cur.execute("SELECT source_file, row_number FROM qa_answers")
        answers = set(cur.fetchall())
        cur.execute("SELECT source_file, row_number FROM qa_rejected")
        rejected = set(cur.fetchall())
    return answers, rejected


def test_a_kill_between_the_two_renames_never_leaves_a_pair_of_two_runs(
    tmp_path, tiny_qa_model_dir, pg_database, monkeypatch, capsys
):
    for key, value in pg_database.env.items():
        monkeypatch.setenv(key, value)
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "x.csv").write_text(OLD)
    assert qa_answer(in_dir, out, tiny_qa_model_dir).returncode == 0
    assert rows_of(out, "x.csv") == ([1], [2])
    assert pg_load_main([str(out), "-q"]) == 0
    db = pg_database.connect()
    before = loaded_rows(db)
    assert before == ({("x.csv", 1)}, {("x.csv", 2)})

    (in_dir / "x.csv").write_text(NEW)
    killed = qa_answer(in_dir, out, tiny_qa_model_dir, fault="kill-between-renames")
    assert killed.returncode == -signal.SIGKILL
    # The new rejected/ file is in place; the old answers/ file went first, so no row is in both files.
    assert not (out / "answers" / "x.csv").exists()
    with (out / "rejected" / "x.csv").open(encoding="utf-8", newline="") as stream:
        assert [r.row_number for r in read_rejected(stream)] == [1]

    capsys.readouterr()
    assert pg_load_main([str(out), "-q"]) == 1
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["error"] == "InputError"
    assert error["message"] == (
        f"{out}: rejected/x.csv without the matching answers/ or rejected/ file: qa-answer writes both files "
        "of an input and replaces them as a pair, so a lone file is what a run stopped while replacing them "
        "leaves behind: run qa-answer again"
    )
    assert loaded_rows(db) == before  # the old mirror, intact

    assert qa_answer(in_dir, out, tiny_qa_model_dir).returncode == 0
    assert rows_of(out, "x.csv") == ([2], [1])
    assert all_files(out) == ["answers/x.csv", "rejected/x.csv"]  # the killed run's temp file is gone too
    assert pg_load_main([str(out), "-q"]) == 0
    assert loaded_rows(db) == ({("x.csv", 2)}, {("x.csv", 1)})
    db.close()


def test_a_full_disk_is_one_clear_error_with_no_temp_files_and_a_rerun_completes(tmp_path, tiny_qa_model_dir):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "x.csv").write_text(OLD)
    assert qa_answer(in_dir, out, tiny_qa_model_dir).returncode == 0
    previous = {name: (out / name).read_bytes() for name in all_files(out)}

    (in_dir / "x.csv").write_text(NEW)
    full = qa_answer(in_dir, out, tiny_qa_model_dir, fault="disk-full")
    assert full.returncode == 1
    assert "Traceback" not in full.stderr and full.stdout == ""
    errors = [line for line in full.stderr.splitlines() if not line.startswith("qa-answer: INFO:")]
    assert errors == [
        f"qa-answer: error: cannot write {out / 'answers' / 'x.csv'}: No space left on device "
        "(free some space and run again); its previous outputs were left as they were"
    ]
    assert {name: (out / name).read_bytes() for name in all_files(out)} == previous  # no temp file, old pair

    rerun = qa_answer(in_dir, out, tiny_qa_model_dir)
    assert rerun.returncode == 0, rerun.stderr
    assert rows_of(out, "x.csv") == ([2], [1])


def test_an_unknown_fault_name_is_a_settings_error(tmp_path, tiny_qa_model_dir):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    result = qa_answer(in_dir, tmp_path / "out", tiny_qa_model_dir, fault="explode")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "qa-answer: error: QA_TEST_FAULT must be one of kill-between-renames, disk-full (tests only), "
        "got 'explode'"
    )


def test_temp_files_of_killed_runs_are_removed_at_start_but_not_those_of_a_live_run(
    tmp_path, tiny_qa_model, caplog
):
    caplog.set_level(logging.INFO, logger="qa_answer")
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "x.csv").write_text(OLD)
    stale = [
        out / "answers" / "sub" / ".qa-answer-0123456789abcdef.part",
        out / "rejected" / ".qa-answer-1.part",
    ]
    live = out / "answers" / ".qa-answer-live.part"
    untouched = [out / "answers" / "notes.part", out / "other" / ".qa-answer-2.part"]
    for path in (*stale, live, *untouched):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half a file")
    with live.open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as a concurrent run holds the files it writes
        answer_folder(in_dir, out, tiny_qa_model, chunk_rows=8)
    assert not any(path.exists() for path in stale)
    assert live.exists() and all(path.exists() for path in untouched)
    assert "removed 2 temporary file(s) left by an interrupted run" in caplog.text
