"""pg_load.sql: checked identifiers and the COPY/upsert statements it builds."""

from __future__ import annotations

import pytest
from pg_load import sql
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS


def test_sql_identifiers_are_checked():
    assert sql.ident("qa_answers") == "qa_answers"
    for bad in ('qa"; DROP TABLE x; --', "Upper", "1abc", ""):
        with pytest.raises(ValueError):
            sql.ident(bad)


def test_copy_keeps_empty_text_as_empty_and_empty_extra_as_null():
    copy = sql.copy_csv("qa_answers", ANSWER_COLUMNS)
    assert copy.startswith("COPY qa_answers (source_file, row_number, id, question, context, answer, score,")
    assert "FORMAT csv, HEADER true" in copy
    assert "FORCE_NOT_NULL (source_file, id, question, context, answer, model)" in copy
    assert "FORCE_NULL (extra)" in copy
    assert "FORCE_NULL" not in sql.copy_csv("qa_rejected", REJECTED_COLUMNS)


def test_copy_refuses_rows_of_another_source_and_quotes_the_path_safely():
    copy = sql.copy_csv("qa_answers", ANSWER_COLUMNS, "it's \\ x.csv")
    assert " WHERE CASE WHEN source_file = E'it''s \\\\ x.csv' THEN true ELSE " in copy
    assert copy.endswith(")::integer IS NULL END")  # the ELSE branch fails the COPY, never skips the row
    with pytest.raises(ValueError):
        sql.literal("a\x00b")


def test_upsert_rewrites_only_rows_that_differ():
    upsert = sql.upsert_from_stage("qa_answers")
    assert "ON CONFLICT (source_file, row_number) DO UPDATE" in upsert
    assert "IS DISTINCT FROM" in upsert and "loaded_at = now()" in upsert
    assert "FROM pg_load_stage_qa_answers" in upsert
    assert "t.source_file" not in upsert.split("WHERE", 1)[1]  # the key is not compared, it matched


def test_lock_key_is_a_stable_bigint():
    assert sql.LOCK.endswith(f"pg_advisory_xact_lock({sql.LOCK_KEY})")
    assert -(2**63) <= sql.LOCK_KEY < 2**63
