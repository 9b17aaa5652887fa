"""The SQL pg-load runs, built from the contract's columns (pure: no connection until a statement is run).

Names are composed with :mod:`psycopg2.sql` (quoted as identifiers); values travel as query parameters, or, in
the COPY's per-row check, as a :class:`psycopg2.sql.Literal`.
"""

from __future__ import annotations

from psycopg2.sql import SQL, Composed, Identifier, Literal
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

LOCK = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
CREATE_MIGRATIONS = (
    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS} "
    "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
SELECT_MIGRATIONS = f"SELECT version FROM {MIGRATIONS}"
INSERT_MIGRATION = f"INSERT INTO {MIGRATIONS} (version) VALUES (%s)"
SELECT_SOURCES = f"SELECT source_file, sha256 FROM {SOURCES}"
UPSERT_SOURCES = (
    f"INSERT INTO {SOURCES} (source_file, sha256, answer_rows, rejected_rows, pach_job_id, input_commit) "
    "VALUES %s ON CONFLICT (source_file) DO UPDATE SET sha256 = EXCLUDED.sha256, "
    "answer_rows = EXCLUDED.answer_rows, rejected_rows = EXCLUDED.rejected_rows, "
    "pach_job_id = EXCLUDED.pach_job_id, input_commit = EXCLUDED.input_commit, loaded_at = now()"
)


def _cols(columns: tuple[str, ...] | list[str], prefix: str | None = None) -> Composed:
    return SQL(", ").join(Identifier(prefix, c) if prefix else Identifier(c) for c in columns)


def stage_of(table: str) -> Identifier:
    return Identifier(f"pg_load_stage_{table}")


def create_stage(table: str) -> Composed:
    """A temporary copy of ``table``'s shape, checks and key (a duplicate row fails at its line): no WAL,
    dropped at commit."""
    return SQL(
        "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES) "
        "ON COMMIT DROP"
    ).format(stage_of(table), Identifier(table))


def copy_csv(table: str, source_file: str, *, stage: bool = False) -> Composed:
    """COPY a contract CSV (header line included) into ``table`` (or its stage), refusing other sources' rows.

    Writers leave empty strings unquoted, which COPY reads as NULL: text columns are forced to '' instead,
    while an empty ``extra`` becomes NULL (no other columns). A row that carries another path than
    ``source_file`` fails the COPY at its line (deleting by source would otherwise miss it): one comparison
    per row. CASE fixes the evaluation order; the ELSE branch always fails (its text is never an integer), and
    its text is what pg_load.diagnose reports: ``source_file is '<found>', expected '<path>'``.
    """
    columns = COLUMNS[table]
    options = SQL("FORMAT csv, HEADER true, ENCODING 'UTF8', FORCE_NOT_NULL ({})").format(
        _cols([c for c in columns if c not in _NOT_TEXT])
    )
    if "extra" in columns:
        options += SQL(", FORCE_NULL (extra)")
    return SQL(
        "COPY {target} ({columns}) FROM STDIN WITH ({options}) WHERE CASE WHEN source_file = {path} "
        "THEN true ELSE ('source_file is ' || quote_literal(source_file) || ', expected ' "
        "|| quote_literal({path}))::integer IS NULL END"
    ).format(
        target=stage_of(table) if stage else Identifier(table),
        columns=_cols(columns),
        options=options,
        path=Literal(source_file),
    )


#: set before a first load drops the answers' key, rolled back to if building the key finds a duplicate
SAVEPOINT = "SAVEPOINT pg_load_first_load"
ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT pg_load_first_load"


def drop_key(table: str) -> Composed:
    """Drop ``table``'s primary key (the name PostgreSQL gave the migration's), before a first load."""
    return SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(Identifier(table), Identifier(f"{table}_pkey"))


def add_key(table: str) -> Composed:
    """Build the primary key once, sorted, after a first load's COPY, as the migration defines it.

    Serial: on the tables a load writes, starting a parallel worker costs more than it saves (measured).
    """
    return SQL(
        "SET LOCAL max_parallel_maintenance_workers = 0; ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})"
    ).format(Identifier(table), Identifier(f"{table}_pkey"), _cols(KEY))


def delete_sources(table: str) -> Composed:
    """Every row of the given sources (parameter: a source_file array)."""
    return SQL("DELETE FROM {} WHERE source_file = ANY(%s)").format(Identifier(table))


def delete_stale(table: str) -> Composed:
    """Rows of the given sources that their staged new version no longer has."""
    return SQL(
        "DELETE FROM {} t WHERE t.source_file = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
        "{} s WHERE s.source_file = t.source_file AND s.row_number = t.row_number)"
    ).format(Identifier(table), stage_of(table))


def upsert_from_stage(table: str) -> Composed:
    """Insert staged rows; rewrite an existing row only when a value differs (so it keeps its loaded_at)."""
    columns = COLUMNS[table]
    values = [c for c in columns if c not in KEY]
    return SQL(
        "INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM {stage} "
        "ON CONFLICT ({key}) DO UPDATE SET {assign}, loaded_at = now() WHERE ({old}) IS DISTINCT FROM ({new})"
    ).format(
        table=Identifier(table),
        columns=_cols(columns),
        stage=stage_of(table),
        key=_cols(KEY),
        assign=SQL(", ").join(SQL("{0} = excluded.{0}").format(Identifier(c)) for c in values),
        old=_cols(values, "t"),
        new=_cols(values, "excluded"),
    )
