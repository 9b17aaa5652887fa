"""The three specs end to end through pachyderm-local, with real services and the tiny model.

fake-gcs-server holds the questions, embedded PostgreSQL receives the answers, and the specs run
unchanged (only explicit ``--env`` overrides). One scenario, step by step, because each step builds on
the state the previous one left, as a user's pipeline does: first load, unchanged rerun, edit, delete,
malformed file. Then ``make demo`` (scripts/demo.py), the same DAG over examples/ with the services it
starts itself: a first run loads the examples, a second answers and writes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from pachyderm_local.embedded_services import start_postgres
from pachyderm_local.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
SPECS = sorted(str(p) for p in (ROOT / "specs").glob("*.json"))
PREFIX = "questions"

A_CSV = (
    "id,question,context\n"
    "a1,What is the capital of France?,Paris is the capital of France.\n"
    "a2,Which river flows through Vienna?,Vienna lies on the Danube river.\n"
)
B_CSV = "question,context,topic\nWho discovered radium?,Marie Curie discovered radium.,science\n"
C_CSV = (
    "question,context\n"
    "When was the wall opened?,The Berlin Wall was opened in 1989.\n"
    "Where were the first Olympics?,The first modern Olympics were held in Athens.\n"
)
C_CSV_EDITED = (
    "question,context\n"
    "When was the wall opened?,The Berlin Wall was opened on 9 November 1989.\n"
    "Where were the first Olympics?,The first modern Olympics were held in Athens.\n"
    "Who was crowned in 1804?,Napoleon was crowned Emperor in 1804.\n"
)


def run_dag(root: Path, bucket, gcs_url: str, db, model_dir: Path) -> tuple[list[str], str]:
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_url, **db.env}
    argv = [sys.executable, "-m", "pachyderm_local.cli", "--root", str(root), "run", *SPECS]
    for override in (
        f"GCS_BUCKET={bucket.name}",
        f"GCS_PREFIX={PREFIX}",
        f"QA_MODEL={model_dir}",
        "PG_SSLMODE=disable",
    ):
        argv += ["--env", override]
    proc = subprocess.run(
        [*argv, "--max-parallelism", "2"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def snapshot(dsn: str) -> dict[str, list[tuple]]:
    """Every row of the three tables, loaded_at included, so a rerun that rewrites a row shows."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT source_file, row_number, id, question, answer, answer_start, answer_end, loaded_at "
                "FROM qa_answers ORDER BY 1, 2"
            )
            answers = cur.fetchall()
            cur.execute("SELECT source_file, row_number, error, loaded_at FROM qa_rejected ORDER BY 1, 2")
            rejected = cur.fetchall()
            cur.execute(
                "SELECT source_file, sha256, answer_rows, rejected_rows, loaded_at FROM qa_sources ORDER BY 1"
            )
            sources = cur.fetchall()
    finally:
        conn.close()
    return {"answers": answers, "rejected": rejected, "sources": sources}


def rows_of(snap: dict[str, list[tuple]], table: str, source: str) -> list[tuple]:
    return [row for row in snap[table] if row[0] == source]


def lines(ingest: int, answer: tuple[int, int], load: tuple[int, int]) -> list[str]:
    return [
        f"gcs-ingest: processed={ingest} skipped=0 failed=0",
        f"qa-answer: processed={answer[0]} skipped={answer[1]} failed=0",
        f"pg-load: processed={load[0]} skipped={load[1]} failed=0",
    ]


@pytest.mark.slow
def test_incremental_pipeline_through_the_local_runner(
    tmp_path, gcs_server, gcs_bucket, pg_database, tiny_qa_model_dir
):
    root = tmp_path / "pachyderm"
    for name, text in (("a.csv", A_CSV), ("b.csv", B_CSV), ("team/c.csv", C_CSV), ("notes.txt", "not a csv")):
        gcs_bucket.blob(f"{PREFIX}/{name}").upload_from_string(text)

    def run() -> list[str]:
        return run_dag(root, gcs_bucket, gcs_server.url, pg_database, tiny_qa_model_dir)[0]

    # 1. First run: every CSV is its own datum (nested too); everything lands in Postgres.
    assert run() == lines(1, (3, 0), (1, 0))
    first = snapshot(pg_database.dsn)
    assert [(r[0], r[1]) for r in first["answers"]] == [
        ("a.csv", 1),
        ("a.csv", 2),
        ("b.csv", 1),
        ("team/c.csv", 1),
        ("team/c.csv", 2),
    ]
    assert first["rejected"] == []
    # Datum batching: qa-answer starts once per datum set, as on Pachyderm: datums / (workers x per_worker)
    # per set, at least 1, so 3 datums and the spec's 4 workers make 3 sets, 3 model loads (docs/pipeline.md).
    job = next(j for j in Store(root).list_jobs() if j.pipeline == "qa-answer")
    logs = "".join((root / "logs" / job.id / f"{d.id}.log").read_text() for d in job.datums)
    assert logs.count("loaded model") == 3, logs
    assert [(s[0], s[2], s[3]) for s in first["sources"]] == [
        ("a.csv", 2, 0),
        ("b.csv", 1, 0),
        ("team/c.csv", 2, 0),
    ]
    for _, _, _, _, answer, start, end, _ in first["answers"]:
        assert answer and 0 <= start < end

    # 2. Unchanged bucket: the new tick re-mirrors it, but no datum is answered and nothing is written.
    assert run() == lines(1, (0, 3), (0, 1))
    assert snapshot(pg_database.dsn) == first

    # 3. Editing one CSV re-answers exactly that file and replaces exactly its rows.
    gcs_bucket.blob(f"{PREFIX}/team/c.csv").upload_from_string(C_CSV_EDITED)
    assert run() == lines(1, (1, 2), (1, 0))
    edited = snapshot(pg_database.dsn)
    for source in ("a.csv", "b.csv"):
        assert rows_of(edited, "answers", source) == rows_of(first, "answers", source)
        assert rows_of(edited, "sources", source) == rows_of(first, "sources", source)
    new_c = rows_of(edited, "answers", "team/c.csv")
    assert [r[3] for r in new_c] == [
        "When was the wall opened?",
        "Where were the first Olympics?",
        "Who was crowned in 1804?",
    ]
    old_c = rows_of(first, "answers", "team/c.csv")
    assert new_c[1] == old_c[1]  # an unchanged row inside the edited file is left as it was
    assert new_c[0][4:7] != old_c[0][4:7] or new_c[0][7] > old_c[0][7]
    assert new_c[0][7] > old_c[0][7] and new_c[2][7] > old_c[0][7]

    # 4. Deleting one CSV removes its rows and nothing else.
    gcs_bucket.blob(f"{PREFIX}/b.csv").delete()
    assert run() == lines(1, (0, 2), (1, 0))
    deleted = snapshot(pg_database.dsn)
    assert rows_of(deleted, "answers", "b.csv") == [] and rows_of(deleted, "sources", "b.csv") == []
    assert [r for r in deleted["answers"] if r[0] != "b.csv"] == [
        r for r in edited["answers"] if r[0] != "b.csv"
    ]

    # 5. A malformed file lands its reasons in qa_rejected while the rest still loads.
    gcs_bucket.blob(f"{PREFIX}/broken.csv").upload_from_string(b"\x00\x01\xffPK\x03\x04 binary garbage\n")
    gcs_bucket.blob(f"{PREFIX}/partial.csv").upload_from_string(
        "question,context\nWho wrote it?,\n,Empty question here.\nWhat is kept?,The good row is kept.\n"
    )
    assert run() == lines(1, (2, 2), (1, 0))
    final = snapshot(pg_database.dsn)
    broken = rows_of(final, "rejected", "broken.csv")
    assert [r[1] for r in broken] == [0] and broken[0][2]
    partial = rows_of(final, "rejected", "partial.csv")
    assert [r[1] for r in partial] == [1, 2] and all(r[2] for r in partial)
    assert [r[1] for r in rows_of(final, "answers", "partial.csv")] == [3]
    assert [r for r in final["answers"] if r[0] != "partial.csv"] == deleted["answers"]


@pytest.mark.slow
def test_questions_repo_instead_of_gcs(tmp_path, tiny_qa_model_dir):
    """docs/pipeline.md's one-line change: qa-answer reads a `questions` repo filled with put-file."""
    spec_text = (ROOT / "specs" / "qa-answer.json").read_text()
    changed = spec_text.replace('"repo": "gcs-ingest"', '"repo": "questions"')
    diff = [(a, b) for a, b in zip(spec_text.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert len(diff) == 1
    spec = tmp_path / "qa-answer.json"
    spec.write_text(changed)
    (tmp_path / "in" / "team").mkdir(parents=True)
    (tmp_path / "in" / "team" / "c.csv").write_text(C_CSV)
    root = str(tmp_path / "pachyderm")
    cli = [sys.executable, "-m", "pachyderm_local.cli", "--root", root]
    subprocess.run([*cli, "put-file", "questions", str(tmp_path / "in")], check=True, capture_output=True)
    proc = subprocess.run(
        [*cli, "run", str(spec), "--env", f"QA_MODEL={tiny_qa_model_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["qa-answer: processed=1 skipped=0 failed=0"]
    listing = subprocess.run(
        [*cli, "list-files", "qa-answer"], capture_output=True, text=True, check=True
    ).stdout
    assert [line.split("\t")[0] for line in listing.splitlines()] == [
        "/answers/team/c.csv",
        "/rejected/team/c.csv",
    ]


# --- make demo ---------------------------------------------------------------------------------------------


def run_demo(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )


def demo_snapshot(state_dir: Path) -> dict[str, list[tuple]]:
    """:func:`snapshot` of the demo's own Postgres data folder, started the way the demo starts it."""
    server = start_postgres(state_dir / "postgres", keep=True)
    try:
        return snapshot(server.get_uri(database="qa_demo"))
    finally:
        server.cleanup()


@pytest.mark.slow
def test_demo_twice_second_run_answers_and_writes_nothing(tmp_path, tiny_qa_model_dir):
    state = tmp_path / "demo"
    first = run_demo("--state-dir", str(state), QA_MODEL=str(tiny_qa_model_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "  qa-answer: processed=3 skipped=0 failed=0" in first.stdout
    assert "  pg-load: processed=1 skipped=0 failed=0" in first.stdout
    assert "demo: files=3 answers=10 rejected=0" in first.stdout
    assert "A few answers from Postgres" in first.stdout and "list-jobs" in first.stdout
    before = demo_snapshot(state)
    assert [len(before[table]) for table in ("answers", "rejected", "sources")] == [10, 0, 3]

    second = run_demo("--state-dir", str(state), QA_MODEL=str(tiny_qa_model_dir))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "  qa-answer: processed=0 skipped=3 failed=0" in second.stdout
    assert "  pg-load: processed=0 skipped=1 failed=0" in second.stdout
    assert "nothing answered, nothing written" in second.stdout
    assert demo_snapshot(state) == before


def test_demo_without_a_loadable_model_explains_how_to_make_one(tmp_path):
    result = run_demo("--state-dir", str(tmp_path / "demo"), "--model", str(tmp_path))
    assert result.returncode == 2
    assert f"QA_MODEL folder {tmp_path} holds no config.json" in result.stderr
    assert (
        "scripts/make_tiny_model.py" in result.stderr
        and "QA_MODEL=.demo/tiny-model make demo" in result.stderr
    )
    assert not (tmp_path / "demo").exists()  # no service was started

    missing = run_demo("--state-dir", str(tmp_path / "demo"), "--model", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert f"QA_MODEL folder {tmp_path / 'nope'} does not exist" in missing.stderr  # not a hub-id complaint
    assert "QA_MODEL=.demo/tiny-model make demo" in missing.stderr
