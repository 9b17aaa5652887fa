"""Inputs `qa-answer answer` cannot read as they are: each becomes a counted, reported rejection and the run
goes on: unusable names, paths over PATH_MAX, files that vanish or cannot be opened, symlinks, big records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from contract_readers import read_outputs
from deep_paths import deep_file
from qa_answer.answer_run import answer_folder
from qa_answer.cli import EXIT_REJECTED, main
from qa_answer.ingest import mirror_source
from qa_answer.sources import LocalFolderSource

GOOD = "question,context\nWhere is Paris?,Paris is in France.\n"


def file_rejection(out: Path, relative: str) -> tuple[str, str, int, str, str]:
    answers, rejected = read_outputs(out, relative)
    assert answers == []
    [row] = rejected
    return relative, row.source_file, row.row_number, row.error, row.raw


def write_raw(folder: Path, name: bytes, text: str = GOOD) -> None:
    with open(os.path.join(os.fsencode(folder), name), "w", encoding="utf-8") as stream:
        stream.write(text)


def test_a_file_name_that_is_not_utf8_is_an_unreadable_file_filed_under_its_escaped_name(
    tmp_path, tiny_qa_model_dir, capsys
):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "ok.csv").write_text(GOOD)
    write_raw(in_dir, b"lat\xe9.csv")
    assert main(["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir), "--fail-on-reject"]) == (
        EXIT_REJECTED
    )
    captured = capsys.readouterr()
    assert captured.out.startswith("summary: files=2 unreadable_files=1 rows=1 answered=1 rejected=0 ")
    assert "0 rows and 1 files rejected" in captured.err
    assert file_rejection(out, "lat\\xe9.csv") == (
        "lat\\xe9.csv",
        "lat\\xe9.csv",
        0,
        "the file name is not valid UTF-8: rename the file",
        "lat\\xe9.csv",
    )
    assert len(read_outputs(out, "ok.csv")[0]) == 1


def test_an_escaped_name_taken_by_a_real_input_gets_a_distinct_stand_in(tmp_path, tiny_qa_model):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "lat\\xe9.csv").write_text(GOOD)  # a real file whose name is the escape of the other's
    write_raw(in_dir, b"lat\xe9.csv")
    summary = answer_folder(in_dir, out, tiny_qa_model, chunk_rows=8)
    assert (summary.files, summary.unreadable_files, summary.answered) == (2, 1, 1)
    assert len(read_outputs(out, "lat\\xe9.csv")[0]) == 1
    [stand_in] = [p.name for p in (out / "rejected").iterdir() if p.name != "lat\\xe9.csv"]
    assert stand_in.startswith("lat\\xe9.csv...") and stand_in.endswith(".csv")
    assert file_rejection(out, stand_in)[3] == "the file name is not valid UTF-8: rename the file"


def test_a_path_longer_than_path_max_is_an_unreadable_file(tmp_path, tiny_qa_model_dir, capsys):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "ok.csv").write_text(GOOD)
    relative = deep_file(in_dir, 17)
    assert len(os.fsencode(in_dir)) + len(relative) > 4096
    assert main(["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir), "--fail-on-reject"]) == (
        EXIT_REJECTED
    )
    assert capsys.readouterr().out.startswith("summary: files=2 unreadable_files=1 rows=1 answered=1 ")
    [stand_in] = [p.name for p in (out / "rejected").iterdir() if p.name != "ok.csv"]
    assert stand_in.startswith("d" * 50 + "...") and len(stand_in) < 100
    _, source_file, row_number, error, raw = file_rejection(out, stand_in)
    assert (source_file, row_number) == (stand_in, 0)
    assert error == "the path is longer than PATH_MAX (4096 bytes): move the file"
    assert raw.startswith("d" * 250 + "/" + "d" * 250) and raw.endswith("more chars]")


class _DeletesOnFirstCall:
    """The real tiny model; answering the first file deletes a later one, as a concurrent cleanup would."""

    def __init__(self, model, victim: Path) -> None:
        self.model, self.name, self.victim = model, model.name, victim

    def answer(self, questions, contexts):
        self.victim.unlink(missing_ok=True)
        return self.model.answer(questions, contexts)


def test_a_file_that_vanishes_mid_run_is_one_rejection_and_later_files_are_answered(tmp_path, tiny_qa_model):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for name in ("a.csv", "b.csv", "c.csv"):
        (in_dir / name).write_text(GOOD)
    summary = answer_folder(in_dir, out, _DeletesOnFirstCall(tiny_qa_model, in_dir / "b.csv"), chunk_rows=8)
    assert (summary.files, summary.unreadable_files, summary.answered) == (3, 1, 2)
    assert file_rejection(out, "b.csv") == (
        "b.csv",
        "b.csv",
        0,
        "cannot open the file: No such file or directory",
        "b.csv",
    )
    assert len(read_outputs(out, "c.csv")[0]) == 1


def test_a_file_that_cannot_be_opened_is_one_rejection_and_the_run_goes_on(tmp_path, tiny_qa_model_dir):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for name in ("a.csv", "b.csv", "c.csv"):
        (in_dir / name).write_text(GOOD)
    (in_dir / "b.csv").chmod(0)
    command = [str(Path(sys.executable).parent / "qa-answer"), "answer", str(in_dir), str(out)]
    if os.geteuid() == 0:  # root reads mode-000 files: drop the capabilities that let it
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env.update(QA_MODEL=str(tiny_qa_model_dir), QA_FAIL_ON_REJECT="true")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_REJECTED, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "qa-answer: WARNING: b.csv: file rejected: cannot open the file: Permission denied" in result.stderr
    )
    assert result.stdout.startswith("summary: files=3 unreadable_files=1 rows=2 answered=2 rejected=0 ")
    assert file_rejection(out, "b.csv")[3] == "cannot open the file: Permission denied"


def _linked_tree(tmp_path: Path) -> tuple[Path, Path]:
    """``link/`` points at ``real/`` (as Pachyderm's /pfs/<input> points into its scratch space); inside it
    one CSV links to a sibling, one to a file outside; ``outside/`` holds the file nobody should read."""
    real, outside = tmp_path / "real", tmp_path / "outside"
    (real / "sub").mkdir(parents=True)
    outside.mkdir()
    (real / "sub" / "a.csv").write_text(GOOD)
    (outside / "secret.csv").write_text("question,context\nWhat is the key?,The key is hunter2.\n")
    (real / "inside.csv").symlink_to("sub/a.csv")
    (real / "escape.csv").symlink_to(outside / "secret.csv")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    return tmp_path / "link", outside


def test_answer_follows_in_dir_s_own_link_and_links_inside_but_refuses_links_leading_out(
    tmp_path, tiny_qa_model
):
    in_dir, _ = _linked_tree(tmp_path)
    out = tmp_path / "out"
    summary = answer_folder(in_dir, out, tiny_qa_model, chunk_rows=8)
    assert (summary.files, summary.unreadable_files, summary.answered) == (3, 1, 2)
    assert len(read_outputs(out, "inside.csv")[0]) == 1 and len(read_outputs(out, "sub/a.csv")[0]) == 1
    assert file_rejection(out, "escape.csv") == (
        "escape.csv",
        "escape.csv",
        0,
        "a symlink to a file outside IN_DIR: not read (see docs/answering.md)",
        "escape.csv",
    )
    assert "hunter2" not in "".join(p.read_text() for p in out.rglob("*.csv"))


def test_ingest_applies_the_same_rule_to_a_local_folder(tmp_path, caplog):
    source, _ = _linked_tree(tmp_path)
    out = tmp_path / "copy"
    summary = mirror_source(LocalFolderSource(source), out)
    assert (summary.files, summary.skipped) == (2, 1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == ["inside.csv", "sub/a.csv"]
    assert "skipping 'escape.csv' from" in caplog.text
    assert "a symlink to a file outside SOURCE: not read" in caplog.text


def test_an_oversized_record_is_rejected_by_the_configured_limit_and_the_run_goes_on(
    tmp_path, tiny_qa_model_dir, capsys
):
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    big = "x" * 5000
    (in_dir / "x.csv").write_text(f"question,context\nWhere?,{big}\nWhere is Paris?,Paris is in France.\n")
    argv = ["answer", str(in_dir), str(out), "--model", str(tiny_qa_model_dir)]
    assert main(argv, env={"QA_MAX_RECORD_BYTES": "1000"}) == 0
    answers, rejected = read_outputs(out, "x.csv")
    assert [a.row_number for a in answers] == [2]
    assert [(r.row_number, r.error) for r in rejected] == [
        (1, "record too large: over 1000 bytes (the limit is QA_MAX_RECORD_BYTES)")
    ]
    assert main([*argv, "--max-record-bytes", "10000"], env={"QA_MAX_RECORD_BYTES": "1000"}) == 0  # flag wins
    assert [a.row_number for a in read_outputs(out, "x.csv")[0]] == [1, 2]
    capsys.readouterr()
    assert main([*argv, "--max-record-bytes", "0"]) == 1
    assert capsys.readouterr().err == (
        "qa-answer: error: invalid settings: max_record_bytes must be an integer >= 1, got 0\n"
    )


def test_an_in_dir_whose_own_path_is_not_utf8_is_read_as_usual(tmp_path, tiny_qa_model):
    in_dir = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    in_dir.mkdir()
    (in_dir / "ok.csv").write_text(GOOD)
    summary = answer_folder(in_dir, tmp_path / "out", tiny_qa_model, chunk_rows=8)
    assert (summary.files, summary.unreadable_files, summary.answered) == (1, 0, 1)


def test_pg_load_loads_the_rejections_of_unusable_names(tmp_path, tiny_qa_model, pg_database, monkeypatch):
    from pg_load.cli import main as pg_load_main

    for key, value in pg_database.env.items():
        monkeypatch.setenv(key, value)
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "ok.csv").write_text(GOOD)
    write_raw(in_dir, b"lat\xe9.csv")
    deep_file(in_dir, 17)
    answer_folder(in_dir, out, tiny_qa_model, chunk_rows=8)
    assert pg_load_main([str(out), "-q"]) == 0
    db = pg_database.connect()
    with db.cursor() as cur:
        cur.execute("SELECT source_file, row_number, error FROM qa_rejected ORDER BY source_file")
        rows = cur.fetchall()
    db.close()
    assert [(row[1], row[2]) for row in rows] == [
        (0, "the path is longer than PATH_MAX (4096 bytes): move the file"),
        (0, "the file name is not valid UTF-8: rename the file"),
    ]
    assert rows[1][0] == "lat\\xe9.csv"
