"""The SQL pg-load runs, built from the contract's columns (pure: strings only, no connection).

Identifiers are fixed names checked by :func:`ident`; values always travel as query parameters or COPY data.
"""

from __future__ import annotations

import functools
import re

from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS

ANSWERS = "qa_answers"
REJECTED = "qa_rejected"
SOURCES = "qa_sources"
MIGRATIONS = "schema_migrations"
KEY = ("source_file", "row_number")
COLUMNS = {ANSWERS: ANSWER_COLUMNS, REJECTED: REJECTED_COLUMNS}
#: pg_advisory_xact_lock key shared by every pg-load (the bytes of "pg_load!" as a signed bigint).
LOCK_KEY = int.from_bytes(b"pg_load!", "big", signed=True)
#: non-text columns: COPY reads their empty fields as NULL, which the table then refuses by name.
_NOT_TEXT = frozenset({"row_number", "score", "answer_start", "answer_end", "extra"})


def ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def _cols(columns: tuple[str, ...] | list[str]) -> str:
    return ", ".join(ident(c) for c in columns)


def stage_of(table: str) -> str:
    return f"pg_load_stage_{ident(table)}"


LOCK = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
CREATE_MIGRATIONS = (
    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS} "
    "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
SELECT_MIGRATIONS = f"SELECT version FROM {MIGRATIONS}"
INSERT_MIGRATION = f"INSERT INTO {MIGRATIONS} (version) VALUES (%s)"
SELECT_SOURCES = f"SELECT source_file, sha256 FROM {SOURCES}"
DELETE_SOURCES = f"DELETE FROM {SOURCES} WHERE source_file = ANY(%s)"
UPSERT_SOURCES = (
    f"INSERT INTO {SOURCES} (source_file, sha256, answer_rows, rejected_rows, pach_job_id, input_commit) "
    "VALUES %s ON CONFLICT (source_file) DO UPDATE SET sha256 = EXCLUDED.sha256, "
    "answer_rows = EXCLUDED.answer_rows, rejected_rows = EXCLUDED.rejected_rows, "
    "pach_job_id = EXCLUDED.pach_job_id, input_commit = EXCLUDED.input_commit, loaded_at = now()"
)


def create_stage(table: str) -> str:
    """A temporary copy of ``table``'s shape and checks: no WAL, no index, dropped at commit."""
    return (
        f"CREATE TEMPORARY TABLE {stage_of(table)} "
        f"(LIKE {ident(table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) ON COMMIT DROP"
    )


def literal(value: str) -> str:
    """A string constant for statements without parameters (COPY), whatever standard_conforming_strings is."""
    if "\x00" in value:
        raise ValueError("a PostgreSQL string cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def copy_csv(target: str, columns: tuple[str, ...], source_file: str | None = None) -> str:
    """COPY a contract CSV (header line included) into ``target``.

    Writers leave empty strings unquoted, which COPY reads as NULL: text columns are forced to '' instead,
    while an empty ``extra`` becomes NULL (no other columns). With ``source_file``, a row that carries another
    path fails the COPY at that line (deleting by source would otherwise miss it): the check costs one
    comparison per row instead of a count query over the loaded rows afterwards.
    """
    copy = _copy_statement(target, columns)
    if source_file is None:
        return copy
    # CASE fixes the evaluation order; the ELSE branch always fails (the text is never an integer), so a
    # mismatching row aborts the COPY (and the load) instead of being skipped.
    expected = literal(source_file)
    return (
        f"{copy} WHERE CASE WHEN source_file = {expected} THEN true ELSE "
        f"('source_file ' || source_file || ' is not the file''s path ' || {expected})::integer IS NULL END"
    )


@functools.cache
def _copy_statement(target: str, columns: tuple[str, ...]) -> str:
    """The COPY without its WHERE clause: the same for every file of a table, so it is built once."""
    text = tuple(c for c in columns if c not in _NOT_TEXT)
    options = f"FORMAT csv, HEADER true, ENCODING 'UTF8', FORCE_NOT_NULL ({_cols(text)})"
    if "extra" in columns:
        options += ", FORCE_NULL (extra)"
    return f"COPY {ident(target)} ({_cols(columns)}) FROM STDIN WITH ({options})"


def key_name(table: str) -> str:
    """The primary key's name as PostgreSQL chooses it for ``PRIMARY KEY (...)`` in the migration."""
    return f"{ident(table)}_pkey"


def drop_key(table: str) -> str:
    """Drop ``table``'s primary key before bulk-loading a table this transaction created (see add_key)."""
    return f"ALTER TABLE {ident(table)} DROP CONSTRAINT {key_name(table)}"


def add_key(table: str, parallel: bool = True) -> str:
    """Build the primary key once, sorted, after the COPY: cheaper than inserting every row into it.

    ``parallel=False`` keeps the build in this backend for this transaction: starting a parallel worker costs
    more than it saves on a small table (measured: ~13 ms with the default workers, ~8 ms without).
    """
    add = f"ALTER TABLE {ident(table)} ADD CONSTRAINT {key_name(table)} PRIMARY KEY ({_cols(KEY)})"
    return add if parallel else f"SET LOCAL max_parallel_maintenance_workers = 0; {add}"


def delete_sources(table: str) -> str:
    """Every row of the given sources (parameter: a source_file array)."""
    return f"DELETE FROM {ident(table)} WHERE source_file = ANY(%s)"


def delete_stale(table: str) -> str:
    """Rows of the given sources that their staged new version no longer has."""
    return (
        f"DELETE FROM {ident(table)} t WHERE t.source_file = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
        f"{stage_of(table)} s WHERE s.source_file = t.source_file AND s.row_number = t.row_number)"
    )


def upsert_from_stage(table: str) -> str:
    """Insert staged rows; rewrite an existing row only when a value differs (so it keeps its loaded_at)."""
    columns = COLUMNS[table]
    values = [c for c in columns if c not in KEY]
    return (
        f"INSERT INTO {ident(table)} AS t ({_cols(columns)}) SELECT {_cols(columns)} FROM {stage_of(table)} "
        f"ON CONFLICT ({_cols(KEY)}) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
        + ", loaded_at = now() WHERE ("
        + ", ".join(f"t.{c}" for c in values)
        + ") IS DISTINCT FROM ("
        + ", ".join(f"EXCLUDED.{c}" for c in values)
        + ")"
    )
