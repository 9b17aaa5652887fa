"""The Postgres side of a load: one transaction that makes the tables equal the sources on disk.

Inside a single transaction: take a transaction-level advisory lock (so concurrent loaders queue up), apply
migrations, read qa_sources, plan, COPY new sources straight into the tables and changed ones into temporary
tables, then delete/upsert. A crash or a dropped connection at any point leaves the previous state; transient
connection failures retry the whole transaction with backoff, a bounded number of times. Anything else fails
fast, naming the file, record and column.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2.extras import execute_values
from qa_answer.contract import ANSWERS_DIR

from . import sql
from .migrate import creates_tables, migrate
from .plan import Plan, Source, diff, frame
from .validate import RowError, check_answers, check_rejected

log = logging.getLogger("pg_load")

TABLES = (sql.ANSWERS, sql.REJECTED)
#: bytes per read handed to COPY; each chunk is hashed in a worker while it is sent and parsed
CHUNK = 1 << 20
#: below this many bytes of new answers, the primary key is built without parallel workers (see sql.add_key)
PARALLEL_KEY_BYTES = 256 << 20

#: SQLSTATEs worth retrying besides class 08 (connection exception): shutdowns, crash recovery, serialization.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "53300"})
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
    max_attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class LoadResult:
    plan: Plan
    rows_read: int = 0  # data rows of the added/replaced sources (answers + rejected)
    rows_written: int = 0  # rows inserted, updated or deleted in qa_answers + qa_rejected
    answer_rows: int = 0
    rejected_rows: int = 0
    attempts: int = 1
    migrations: tuple[str, ...] = field(default=())


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


def describe_db_error(exc: psycopg2.Error) -> str:
    primary = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc).strip()
    return f"{primary} (SQLSTATE {exc.pgcode})" if exc.pgcode else primary


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
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._sync_once(sources, provenance, attempt)
            except psycopg2.Error as exc:
                if not is_transient(exc):
                    raise LoadError(f"{self._target}: {describe_db_error(exc)}") from None
                if attempt == attempts:
                    raise LoadError(
                        f"{self._target}: giving up after {attempts} attempts: {describe_db_error(exc)}"
                    ) from None
                wait = self._retry.delay(attempt)
                log.warning(
                    "transient database error (attempt %d/%d), retrying in %.1fs: %s",
                    attempt,
                    attempts,
                    wait,
                    describe_db_error(exc),
                )
                self._retry.sleep(wait)
        raise AssertionError("unreachable")

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
            # Only sources qa_sources knows need hashing up front; new ones are hashed while they stream.
            digests = {name: s.read_digest() for name, s in sources.items() if name in loaded}
            plan = diff({name: digests.get(name) for name in sources}, loaded)
            if plan.is_noop and not applied:
                conn.rollback()  # nothing written: the transaction only read
                return LoadResult(plan=plan, attempts=attempt)
            written, counts = self._write(cur, plan, sources, digests, creates_tables(applied))
            self._step("staged", attempt, conn)
            written += self._apply(cur, plan, digests, counts, provenance)
            self._step("applied", attempt, conn)
            conn.commit()
        finally:
            conn.close()
        answers = sum(a for a, _ in counts.values())
        rejected = sum(r for _, r in counts.values())
        return LoadResult(plan, answers + rejected, written, answers, rejected, attempt, applied)

    def _write(
        self,
        cur: Any,
        plan: Plan,
        sources: Mapping[str, Source],
        digests: dict[str, str],
        new_tables: bool = False,
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """COPY added sources straight into the tables and replaced ones into temporary stages.

        New sources have no rows to keep, so a direct COPY (after clearing rows no qa_sources entry owns) is
        the cheapest correct write; replaced sources go through a stage so unchanged rows are left alone.
        When this transaction created the tables (``new_tables``: nobody else can see them yet), the answers'
        primary key is built once after the COPY instead of row by row during it. Fills ``digests`` for the
        added sources.
        """
        written = 0
        bulk_key = new_tables and bool(plan.added)
        if bulk_key:
            cur.execute(sql.drop_key(sql.ANSWERS))
        if plan.added and not new_tables:  # tables created just now hold no rows yet
            for table in TABLES:
                cur.execute(sql.delete_sources(table), (list(plan.added),))
                written += cur.rowcount
        if plan.replaced:
            for table in TABLES:
                cur.execute(sql.create_stage(table))
        counts: dict[str, tuple[int, int]] = {}
        hashed: dict[str, Future[str]] = {}
        total = len(plan.to_write)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-load-hash") as pool:
            worker = _HashWorker(pool)
            for i, name in enumerate(plan.to_write, 1):
                direct = name in plan.added
                counts[name], hashed[name] = self._copy_source(cur, sources[name], direct, worker)
                if direct:
                    written += sum(counts[name])
                log.info("copied %d/%d %s (%d answers, %d rejected)", i, total, name, *counts[name])
            # Digests are collected only now, so the hashing may trail the COPYs without ever stalling them.
            for name, sha in hashed.items():
                if digests.setdefault(name, sha.result()) != sha.result():
                    raise LoadError(f"{name}: changed while loading; run pg-load again")
        if bulk_key:
            self._add_key(cur, plan, sources)
        return written, counts

    def _add_key(self, cur: Any, plan: Plan, sources: Mapping[str, Source]) -> None:
        """Build the answers' primary key after a bulk load; a duplicate row_number is named by file, row."""
        size = sum(sources[name].stamp[0][0] for name in plan.added if sources[name].stamp[0])
        try:
            cur.execute(sql.add_key(sql.ANSWERS, parallel=size >= PARALLEL_KEY_BYTES))
        except psycopg2.Error as exc:
            if is_transient(exc):
                raise
            for name in plan.added:
                path = sources[name].answers
                if path is not None:
                    _diagnose(ANSWERS_DIR, f"{ANSWERS_DIR}/{name}", name, path.read_bytes())
            raise LoadError(f"{self._target}: {describe_db_error(exc)}") from None

    def _copy_source(
        self, cur: Any, source: Source, direct: bool, worker: _HashWorker
    ) -> tuple[tuple[int, int], Future[str]]:
        """COPY one source's two files, hashing them on the way; returns (answer, rejected) rows and digest.

        PostgreSQL's type input checks every row, and the COPY refuses a row whose source_file is not this
        file's path. The file streams in 1 MiB chunks (memory stays flat); each chunk's hash overlaps sending
        it and the server's parsing.
        """
        h = _BackgroundSha256(worker)
        counts = []
        for (kind, path), table, stamp in zip(source.files(), TABLES, source.stamp, strict=True):
            h.update(frame(kind, stamp[0] if stamp else None))
            if path is None or stamp is None:
                counts.append(0)
                continue
            shown = f"{kind}/{source.source_file}"
            header = ",".join(sql.COLUMNS[table]).encode()
            with path.open("rb") as fh:
                head = fh.read(len(header) + 2)
                if not (head.startswith((header + b"\n", header + b"\r\n")) or head == header):
                    _diagnose(kind, shown, source.source_file, path.read_bytes())  # names the bad header
                if len(head) == stamp[0] and head.strip() == header:
                    h.update(head)  # header only (most rejected/ files): no rows, no COPY round trip
                    counts.append(0)
                    continue
                fh.seek(0)
                target = table if direct else sql.stage_of(table)
                copy = sql.copy_csv(target, sql.COLUMNS[table], source.source_file)
                reader = _HashingReader(fh, h)
                try:
                    cur.copy_expert(copy, reader, size=CHUNK)
                except psycopg2.Error as exc:
                    if is_transient(exc):
                        raise
                    _diagnose(kind, shown, source.source_file, path.read_bytes())
                    raise _copy_error(shown, exc) from None
                if reader.size != stamp[0]:
                    raise LoadError(f"{source.source_file}: changed while loading; run pg-load again")
            counts.append(cur.rowcount)
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
            cur.execute(sql.DELETE_SOURCES, (list(plan.deleted),))
        if plan.to_write:
            rows = [
                (name, digests[name], *counts[name], provenance.pach_job_id, provenance.input_commit)
                for name in plan.to_write
            ]
            execute_values(cur, sql.UPSERT_SOURCES, rows, page_size=1000)
        return written


class _HashWorker:
    """One thread running sha256 updates in submission order, for every file of a load.

    At most ``MAX_PENDING`` updates wait at a time, across all files, so a hash slower than the COPY holds
    memory flat (two 1 MiB chunks) instead of queueing the input.
    """

    MAX_PENDING = 2

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool
        self._pending: deque[Future[None]] = deque()

    def update(self, h: Any, data: bytes) -> None:
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(h.update, data))

    def hexdigest(self, h: Any) -> Future[str]:
        return self._pool.submit(h.hexdigest)


class _BackgroundSha256:
    """A sha256 whose updates run on a :class:`_HashWorker`."""

    def __init__(self, worker: _HashWorker):
        self._worker, self._raw = worker, hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._worker.update(self._raw, data)

    def hexdigest(self) -> Future[str]:
        """The digest once every update submitted so far has run: a future, so nobody waits for it yet."""
        return self._worker.hexdigest(self._raw)


class _HashingReader:
    """The file object COPY reads from: each chunk is handed to COPY at once and hashed behind it.

    The chunk is read here, as a plain COPY of the file would, and its sha256 update runs in the worker while
    psycopg2 sends the chunk and the server parses it (hashlib and psycopg2's send both release the GIL), so
    digesting adds nothing to the COPY's critical path. The chunk before the last is the only one waited for.
    """

    def __init__(self, fh: Any, h: _BackgroundSha256):
        self._fh, self._h, self.size = fh, h, 0

    def read(self, size: int = -1) -> bytes:
        """The next chunk of up to CHUNK bytes (psycopg2 asks for ``size=CHUNK``); b"" at the end."""
        chunk = self._fh.read(CHUNK)
        if chunk:
            self._h.update(chunk)
            self.size += len(chunk)
        return chunk


def _diagnose(kind: str, path: str, source_file: str, data: bytes) -> None:
    """Re-read a file PostgreSQL refused with the contract checker, which names record and column."""
    (check_answers if kind == ANSWERS_DIR else check_rejected)(path, source_file, data)


def _copy_error(path: str, exc: psycopg2.Error) -> RowError:
    """Name the file, record and column of a row PostgreSQL refused during COPY."""
    context = (exc.diag.context or "") if exc.diag else ""
    match = re.search(r"line (\d+)(?:, column (\w+))?", context)
    reason = describe_db_error(exc)
    if match:
        # COPY counts the header as line 1.
        return RowError(path, reason, int(match.group(1)) - 1, match.group(2))
    return RowError(path, reason)
