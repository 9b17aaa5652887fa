"""The Postgres side of a load: one transaction that makes the tables equal the sources on disk.

Inside a single transaction: take a transaction-level advisory lock (so concurrent loaders queue up), apply
migrations, read qa_sources, plan, COPY new sources straight into the tables and changed ones into temporary
tables, then delete/upsert. A crash or a dropped connection at any point leaves the previous state; transient
failures (a restart, a failover, a lost connection) retry the whole transaction with backoff, for a bounded
time. Anything else fails fast, naming the file, record and column, or the server's problem (a full disk).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg2
from psycopg2.extras import execute_values

from pg_load import sql
from pg_load.diagnose import check_header, copy_error, describe_db_error
from pg_load.migrate import CREATES_TABLES, migrate
from pg_load.plan import CHUNK, Plan, Source, diff, frame

log = logging.getLogger("pg_load")

TABLES = (sql.ANSWERS, sql.REJECTED)

#: SQLSTATE of a duplicate key
UNIQUE_VIOLATION = "23505"
#: SQLSTATEs worth retrying besides class 08 (connection exception): shutdowns, crash recovery, serialization.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "53300"})
#: SQLSTATE classes that are the server's trouble, never a row's: insufficient resources (53100 disk full),
#: operator intervention, system error (58030 I/O error), internal error, connection exception.
SERVER_SQLSTATE_CLASSES = ("53", "57", "58", "XX", "08")
#: libpq messages (no SQLSTATE) that retrying cannot fix.
PERMANENT_MESSAGES = (
    "authentication failed",
    "certificate",
    "ssl error",
    "pg_hba.conf",
    "does not exist",
    "permission denied",
    "no password supplied",
    "invalid",
    "sslmode",
    "private key",
    "server does not support ssl",
)

#: on_step(step, attempt, backend_pid): a seam for tests ("connected", "locked", "staged", "applied").
StepHook = Callable[[str, int, int], None]


class LoadError(RuntimeError):
    """A load failed for a reason that retrying will not fix (or retries ran out); nothing was changed."""


@dataclass(frozen=True)
class Provenance:
    pach_job_id: str | None = None
    input_commit: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures for ``max_seconds`` (and at most ``max_attempts`` tries, if set)."""

    max_seconds: float = 120.0
    max_attempts: int | None = None
    first_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class LoadResult:
    plan: Plan
    rows_written: int = 0  # rows inserted, updated or deleted in qa_answers + qa_rejected
    answer_rows: int = 0
    rejected_rows: int = 0
    attempts: int = 1
    migrations: tuple[str, ...] = field(default=())

    @property
    def rows_read(self) -> int:
        """Data rows of the added/replaced sources (answers + rejected)."""
        return self.answer_rows + self.rejected_rows


def is_transient(exc: BaseException) -> bool:
    """True for errors a new connection may cure: connection loss, server restart, serialization failures."""
    if not isinstance(exc, psycopg2.Error):
        return False
    code = exc.pgcode
    if code:
        return code.startswith("08") or code in TRANSIENT_SQLSTATES
    if not isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return False
    message = str(exc).lower()
    return not any(marker in message for marker in PERMANENT_MESSAGES)


def is_disk_full(exc: BaseException) -> bool:
    """The server could not write: SQLSTATE 53100, or libpq's text for it when no SQLSTATE came."""
    if not isinstance(exc, psycopg2.Error):
        return False
    if exc.pgcode:
        return exc.pgcode == "53100"
    message = str(exc).lower()
    return "no space left on device" in message or "could not extend file" in message


def is_server_fault(exc: psycopg2.Error) -> bool:
    """True when an error is the server's (or the connection's) trouble, never a row's."""
    return is_transient(exc) or is_disk_full(exc) or (exc.pgcode or "")[:2] in SERVER_SQLSTATE_CLASSES


class PostgresAnswerStore:
    """Mirror sources into qa_answers / qa_rejected / qa_sources through ``connect()`` (a DB-API factory)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        target: str = "the database",
        retry: RetryPolicy | None = None,
        on_step: StepHook | None = None,
    ):
        self._connect = connect
        self._target = target
        self._retry = retry or RetryPolicy()
        self._on_step = on_step

    def sync(self, sources: Mapping[str, Source], provenance: Provenance) -> LoadResult:
        policy = self._retry
        start = policy.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._sync_once(sources, provenance, attempt)
            except psycopg2.Error as exc:
                if is_disk_full(exc):
                    raise LoadError(
                        f"{self._target}: the database server is out of disk space "
                        f"({describe_db_error(exc)}); nothing was changed: free space and run pg-load again"
                    ) from None
                if not is_transient(exc):
                    raise LoadError(f"{self._target}: {describe_db_error(exc)}") from None
                elapsed = policy.clock() - start
                left = policy.max_seconds - elapsed
                if left <= 0 or (policy.max_attempts is not None and attempt >= policy.max_attempts):
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    raise LoadError(
                        f"{self._target}: giving up after {tries} in {elapsed:.0f}s: "
                        f"{describe_db_error(exc)}; the database keeps its previous state"
                    ) from None
                wait = min(policy.delay(attempt), left)
                log.warning(
                    "database unavailable (attempt %d, %.0fs of %.0fs), retrying in %.1fs: %s",
                    attempt,
                    elapsed,
                    policy.max_seconds,
                    wait,
                    describe_db_error(exc),
                )
                policy.sleep(wait)

    def _step(self, name: str, attempt: int, conn: Any) -> None:
        if self._on_step is not None:
            self._on_step(name, attempt, conn.get_backend_pid())

    def _sync_once(self, sources: Mapping[str, Source], provenance: Provenance, attempt: int) -> LoadResult:
        conn = self._connect()
        try:
            conn.autocommit = False
            cur = conn.cursor()
            self._step("connected", attempt, conn)
            cur.execute(sql.LOCK)
            self._step("locked", attempt, conn)
            applied = tuple(migrate(cur))
            cur.execute(sql.SELECT_SOURCES)
            loaded = dict(cur.fetchall())
            # Only sources qa_sources knows need a digest now; new ones are hashed as they stream into COPY.
            digests = {name: s.read_digest() for name, s in sources.items() if name in loaded}
            plan = diff({name: digests.get(name) for name in sources}, loaded)
            if plan.is_noop and not applied:
                conn.rollback()  # nothing written: the transaction only read
                return LoadResult(plan=plan, attempts=attempt)
            written, counts = self._write(cur, plan, sources, digests, CREATES_TABLES in applied)
            self._step("staged", attempt, conn)
            written += self._apply(cur, plan, digests, counts, provenance)
            self._step("applied", attempt, conn)
            conn.commit()
        finally:
            conn.close()
        answers = sum(a for a, _ in counts.values())
        rejected = sum(r for _, r in counts.values())
        return LoadResult(plan, written, answers, rejected, attempt, applied)

    def _write(
        self,
        cur: Any,
        plan: Plan,
        sources: Mapping[str, Source],
        digests: dict[str, str],
        new_tables: bool,
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """Write the plan's sources; on a first load, build the answers' key once after the COPY.

        When this transaction created the tables (``new_tables``: nobody else can see them yet), the key is
        dropped and built afterwards, sorted: measured cheaper than inserting every row into it (see
        docs/loading.md). A duplicate row_number then fails the build, which names no line, so the COPY is
        redone with the key in place, where it fails at the duplicate's line.
        """
        if not (new_tables and plan.added):
            return self._copy_sources(cur, plan, sources, digests)
        cur.execute(sql.SAVEPOINT)
        cur.execute(sql.drop_key(sql.ANSWERS))
        result = self._copy_sources(cur, plan, sources, digests)
        try:
            cur.execute(sql.add_key(sql.ANSWERS))
            return result
        except psycopg2.Error as exc:
            if exc.pgcode != UNIQUE_VIOLATION:
                raise
        cur.execute(sql.ROLLBACK_TO_SAVEPOINT)
        return self._copy_sources(cur, plan, sources, digests)

    def _copy_sources(
        self, cur: Any, plan: Plan, sources: Mapping[str, Source], digests: dict[str, str]
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """COPY added sources straight into the tables and replaced ones into temporary stages.

        New sources have no rows to keep, so a direct COPY (after clearing rows no qa_sources entry owns) is
        the cheapest correct write; replaced sources go through a stage so unchanged rows are left alone.
        Fills ``digests`` for the added sources.
        """
        written = 0
        if plan.added:
            for table in TABLES:
                cur.execute(sql.delete_sources(table), (list(plan.added),))
                written += cur.rowcount
        if plan.replaced:
            for table in TABLES:
                cur.execute(sql.create_stage(table))
        counts: dict[str, tuple[int, int]] = {}
        total = len(plan.to_write)
        for i, name in enumerate(plan.to_write, 1):
            direct = name in plan.added
            counts[name], sha = self._copy_source(cur, sources[name], direct)
            if digests.setdefault(name, sha) != sha:
                raise LoadError(f"{name}: changed while loading; run pg-load again")
            if direct:
                written += sum(counts[name])
            log.info("copied %d/%d %s (%d answers, %d rejected)", i, total, name, *counts[name])
        return written, counts

    def _copy_source(self, cur: Any, source: Source, direct: bool) -> tuple[tuple[int, int], str]:
        """COPY one source's two files, streamed in CHUNK reads and hashed on their way (the digest of the
        very bytes sent); returns (answer, rejected) rows and the source's digest."""
        h = hashlib.sha256()
        counts = []
        for (kind, path), table, stamp in zip(source.files(), TABLES, source.stamp, strict=True):
            h.update(frame(kind, stamp[0] if stamp else None))
            if path is None or stamp is None:
                counts.append(0)
                continue
            with path.open("rb") as fh:
                rows, size = _copy_file(cur, fh, h, kind, table, source.source_file, stage=not direct)
            if size != stamp[0]:
                raise LoadError(f"{source.source_file}: changed while loading; run pg-load again")
            counts.append(rows)
        if not source.unchanged_since_scan():
            # Pachyderm inputs are immutable; a local folder may not be. Never record a digest of other bytes.
            raise LoadError(f"{source.source_file}: changed while loading; run pg-load again")
        return (counts[0], counts[1]), h.hexdigest()

    def _apply(
        self,
        cur: Any,
        plan: Plan,
        digests: Mapping[str, str],
        counts: Mapping[str, tuple[int, int]],
        provenance: Provenance,
    ) -> int:
        written = 0
        for table in TABLES:
            if plan.deleted:
                cur.execute(sql.delete_sources(table), (list(plan.deleted),))
                written += cur.rowcount
            if plan.replaced:
                cur.execute(sql.delete_stale(table), (list(plan.replaced),))
                written += cur.rowcount
                cur.execute(sql.upsert_from_stage(table))
                written += cur.rowcount
        if plan.deleted:
            cur.execute(sql.delete_sources(sql.SOURCES), (list(plan.deleted),))
        if plan.to_write:
            rows = [
                (name, digests[name], *counts[name], provenance.pach_job_id, provenance.input_commit)
                for name in plan.to_write
            ]
            execute_values(cur, sql.UPSERT_SOURCES, rows, page_size=1000)
        return written


def _copy_file(
    cur: Any, fh: IO[bytes], h: Any, kind: str, table: str, source_file: str, *, stage: bool
) -> tuple[int, int]:
    """COPY one file from ``fh`` into ``table`` (or its stage), updating ``h``; returns (rows, bytes).

    The header is checked here; PostgreSQL's type input checks every row, and the COPY refuses a row whose
    source_file is not this file's path. A refused row is named by pg_load.diagnose.
    """
    shown, columns = f"{kind}/{source_file}", sql.COLUMNS[table]
    head = check_header(shown, fh, columns)
    if not fh.read(1):
        h.update(head)  # header only (most rejected/ files): no rows, no COPY round trip
        return 0, len(head)
    fh.seek(0)
    reader = _HashingReader(fh, h)
    try:
        cur.copy_expert(sql.copy_csv(table, source_file, stage=stage), reader, size=CHUNK)
    except psycopg2.Error as exc:
        if is_server_fault(exc):
            raise  # a full disk or a lost server is not this file's fault: reported by sync
        raise copy_error(shown, exc, fh.name, columns) from None
    return cur.rowcount, reader.size


class _HashingReader:
    """The file object COPY reads from: each chunk is hashed as COPY takes it, so the file is read once."""

    def __init__(self, fh: IO[bytes], h: Any):
        self._fh, self._h, self.size = fh, h, 0

    def read(self, size: int = -1) -> bytes:
        """The next chunk of up to CHUNK bytes (psycopg2 asks for that size); b"" at the end."""
        chunk = self._fh.read(CHUNK)
        self._h.update(chunk)
        self.size += len(chunk)
        return chunk
