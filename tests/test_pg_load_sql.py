"""pg_load.sql: the COPY/upsert statements it builds, rendered through a real connection."""

from __future__ import annotations

import pytest
from pg_load import sql


@pytest.fixture
def render(pg_database):
    """psycopg2.sql quotes through a connection: statements are rendered with a real one."""
    conn = pg_database.connect()
    yield lambda statement: statement.as_string(conn)
    conn.close()


def test_copy_keeps_empty_text_as_empty_and_empty_extra_as_null(render):
    copy = render(sql.copy_csv("qa_answers", "a.csv"))
    assert copy.startswith(
        'COPY "qa_answers" ("source_file", "row_number", "id", "question", "context", "answer", "score",'
    )
    assert "FORMAT csv, HEADER true" in copy
    assert 'FORCE_NOT_NULL ("source_file", "id", "question", "context", "answer", "model")' in copy
    assert "FORCE_NULL (extra)" in copy
    assert "FORCE_NULL" not in render(sql.copy_csv("qa_rejected", "a.csv"))
    assert render(sql.copy_csv("qa_rejected", "a.csv", stage=True)).startswith(
        'COPY "pg_load_stage_qa_rejected"'
    )


def test_copy_refuses_rows_of_another_source_and_quotes_the_path_safely(render):
    copy = render(sql.copy_csv("qa_answers", "it's \\ x.csv"))
    assert " WHERE CASE WHEN source_file = 'it''s \\ x.csv' THEN true ELSE " in copy
    assert copy.endswith(")::integer IS NULL END")  # the ELSE branch fails the COPY, never skips the row
    with pytest.raises(ValueError, match="NUL"):
        render(sql.copy_csv("qa_answers", "a\x00b"))


def test_upsert_rewrites_only_rows_that_differ(render):
    upsert = render(sql.upsert_from_stage("qa_answers"))
    assert 'ON CONFLICT ("source_file", "row_number") DO UPDATE' in upsert
    assert "IS DISTINCT FROM" in upsert and "loaded_at = now()" in upsert
    assert 'FROM "pg_load_stage_qa_answers"' in upsert
    assert '"t"."source_file"' not in upsert.split("WHERE", 1)[1]  # the key is not compared, it matched


def test_lock_key_is_a_stable_bigint():
    assert sql.LOCK.endswith(f"pg_advisory_xact_lock({sql.LOCK_KEY})")
    assert -(2**63) <= sql.LOCK_KEY < 2**63
