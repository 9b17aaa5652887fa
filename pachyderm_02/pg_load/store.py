"""The Postgres side of a load: one transaction that makes the tables equal the sources on disk.

Inside a single transaction: take a transaction-level advisory lock (so concurrent loaders queue up), apply
migrations, read qa_sources, plan, COPY new sources straight into the tables and changed ones into temporary
tables, then delete/upsert. A crash or a dropped connection at any point leaves the previous state; transient
failures (a restart, a failover, a lost connection) retry the whole transaction with backoff, for a bounded
time. Anything else fails fast, naming the file, record and column, or the server's problem (a full disk).
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2.extras import execute_values
from qa_answer.contract import ANSWERS_DIR

from . import sql
from .migrate import creates_tables, migrate
from .plan import Plan, Source, diff, digest, frame
from .validate import RowError, check_answers, check_rejected

log = logging.getLogger("pg_load")

TABLES = (sql.ANSWERS, sql.REJECTED)
#: bytes per read handed to COPY (and to sha256)
CHUNK = 1 << 20
#: input read and hashed ahead, in a worker, while the load connects, locks and migrates (see _read_ahead)
READ_AHEAD_BYTES = 64 << 20
#: below this many bytes of new answers, the primary key is built without parallel workers (see sql.add_key)
PARALLEL_KEY_BYTES = 256 << 20

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


def describe_db_error(exc: psycopg2.Error) -> str:
    primary = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
    primary = " ".join(primary.split())  # libpq's messages span lines (a hint after a tab): one line each
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
        read_ahead_bytes: int = READ_AHEAD_BYTES,
    ):
        self._connect = connect
        self._target = target
        self._retry = retry or RetryPolicy()
        self._on_step = on_step
        self._read_ahead_bytes = read_ahead_bytes

    def sync(self, sources: Mapping[str, Source], provenance: Provenance) -> LoadResult:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-load-read")
        try:
            ahead = _read_ahead(pool, sources, self._read_ahead_bytes)
            return self._sync_retrying(sources, provenance, ahead)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _sync_retrying(
        self, sources: Mapping[str, Source], provenance: Provenance, ahead: dict[str, Future[_Ahead]]
    ) -> LoadResult:
        policy = self._retry
        start = policy.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._sync_once(sources, provenance, attempt, ahead)
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

    def _sync_once(
        self,
        sources: Mapping[str, Source],
        provenance: Provenance,
        attempt: int,
        ahead: dict[str, Future[_Ahead]],
    ) -> LoadResult:
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
            # Only sources qa_sources knows need a digest now; new ones are hashed ahead or as they stream.
            digests = {
                name: ahead[name].result().digest if name in ahead else s.read_digest()
                for name, s in sources.items()
                if name in loaded
            }
            plan = diff({name: digests.get(name) for name in sources}, loaded)
            for name in plan.unchanged:
                ahead.pop(name, None)  # frees the bytes read ahead
            if plan.is_noop and not applied:
                conn.rollback()  # nothing written: the transaction only read
                return LoadResult(plan=plan, attempts=attempt)
            written, counts = self._write(cur, plan, sources, digests, ahead, creates_tables(applied))
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
        ahead: dict[str, Future[_Ahead]],
        new_tables: bool = False,
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """COPY added sources straight into the tables and replaced ones into temporary stages.

        New sources have no rows to keep, so a direct COPY (after clearing rows no qa_sources entry owns) is
        the cheapest correct write; replaced sources go through a stage so unchanged rows are left alone.
        When this transaction created the tables (``new_tables``: nobody else can see them yet), the answers'
        primary key is built once after the COPY instead of row by row during it. Fills ``digests`` for the
        added sources. A source read ahead is sent from memory, and its bytes are freed once sent.
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
        total = len(plan.to_write)
        for i, name in enumerate(plan.to_write, 1):
            direct = name in plan.added
            read = ahead.pop(name, None)
            counts[name], sha = self._copy_source(cur, sources[name], direct, read.result() if read else None)
            if digests.setdefault(name, sha) != sha:
                raise LoadError(f"{name}: changed while loading; run pg-load again")
            if direct:
                written += sum(counts[name])
            log.info("copied %d/%d %s (%d answers, %d rejected)", i, total, name, *counts[name])
        if bulk_key:
            self._add_key(cur, plan, sources)
        return written, counts

    def _add_key(self, cur: Any, plan: Plan, sources: Mapping[str, Source]) -> None:
        """Build the answers' primary key after a bulk load; a duplicate row_number is named by file, row."""
        size = sum(sources[name].stamp[0][0] for name in plan.added if sources[name].stamp[0])
        try:
            cur.execute(sql.add_key(sql.ANSWERS, parallel=size >= PARALLEL_KEY_BYTES))
        except psycopg2.Error as exc:
            if is_server_fault(exc):
                raise
            for name in plan.added:
                path = sources[name].answers
                if path is not None:
                    _diagnose(ANSWERS_DIR, f"{ANSWERS_DIR}/{name}", name, path.read_bytes())
            raise LoadError(f"{self._target}: {describe_db_error(exc)}") from None

    def _copy_source(
        self, cur: Any, source: Source, direct: bool, read: _Ahead | None = None
    ) -> tuple[tuple[int, int], str]:
        """COPY one source's two files; returns (answer, rejected) rows and the source's digest.

        A source read ahead is sent from memory, so its digest is that of the very bytes sent; any other
        streams from disk in 1 MiB chunks (memory stays flat), each hashed on its way.
        """
        h = None if read else hashlib.sha256()
        counts = []
        for i, ((kind, path), table, stamp) in enumerate(
            zip(source.files(), TABLES, source.stamp, strict=True)
        ):
            if h is not None:
                h.update(frame(kind, stamp[0] if stamp else None))
            if path is None or stamp is None:
                counts.append(0)
                continue
            data = read.data[i] if read else None
            with io.BytesIO(data) if data is not None else path.open("rb") as fh:
                # Bytes in memory go to COPY in one piece (BytesIO hands them over without a copy).
                chunk = CHUNK if data is None else max(CHUNK, len(data))
                rows, size = self._copy_file(cur, fh, h, chunk, kind, table, source, direct)
            if size != stamp[0]:
                raise LoadError(f"{source.source_file}: changed while loading; run pg-load again")
            counts.append(rows)
        if not source.unchanged_since_scan():
            # Pachyderm inputs are immutable; a local folder may not be. Never record a digest of other bytes.
            raise LoadError(f"{source.source_file}: changed while loading; run pg-load again")
        return (counts[0], counts[1]), read.digest if read else h.hexdigest()

    def _copy_file(
        self, cur: Any, fh: Any, h: Any, chunk: int, kind: str, table: str, source: Source, direct: bool
    ) -> tuple[int, int]:
        """COPY one file from ``fh``, ``chunk`` bytes a read, updating ``h`` if given; returns (rows, bytes).

        PostgreSQL's type input checks every row, and the COPY refuses a row whose source_file is not this
        file's path.
        """
        shown = f"{kind}/{source.source_file}"
        header = ",".join(sql.COLUMNS[table]).encode()
        head = fh.read(len(header) + 2)
        if not (head.startswith((header + b"\n", header + b"\r\n")) or head == header):
            _diagnose(kind, shown, source.source_file, head + fh.read())  # names the bad header
        if head.strip() == header and not fh.read(1):
            if h is not None:
                h.update(head)  # header only (most rejected/ files): no rows, no COPY round trip
            return 0, len(head)
        fh.seek(0)
        copy = sql.copy_csv(table if direct else sql.stage_of(table), sql.COLUMNS[table], source.source_file)
        reader = _HashingReader(fh, h, chunk)
        try:
            cur.copy_expert(copy, reader, size=chunk)
        except psycopg2.Error as exc:
            if is_server_fault(exc):
                raise  # a full disk or a lost server is not this file's fault: reported by _sync_retrying
            fh.seek(0)
            _diagnose(kind, shown, source.source_file, fh.read())
            raise _copy_error(shown, exc) from None
        return cur.rowcount, reader.size

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


class _HashingReader:
    """The file object COPY reads from: each chunk is hashed as COPY takes it, so the file is read once.

    Hashing here, in the sending thread, measured cheaper than a worker thread: on a 2-core machine the
    thread's hand-offs cost more CPU than they hid (the server's parsing, not the client, sets the pace).
    """

    def __init__(self, fh: Any, h: Any | None, chunk: int = CHUNK):
        self._fh, self._h, self._chunk, self.size = fh, h, chunk, 0

    def read(self, size: int = -1) -> bytes:
        """The next chunk of up to ``chunk`` bytes (psycopg2 asks for that size); b"" at the end."""
        chunk = self._fh.read(self._chunk)
        if self._h is not None:
            self._h.update(chunk)
        self.size += len(chunk)
        return chunk


@dataclass(frozen=True)
class _Ahead:
    """A source's two files (None where absent), read before its COPY, and the digest of those bytes."""

    data: tuple[bytes | None, bytes | None]
    digest: str


def _read_source(source: Source) -> _Ahead:
    data = source.read_files()
    return _Ahead(data, digest(*data))


def _read_ahead(
    pool: ThreadPoolExecutor, sources: Mapping[str, Source], budget: int
) -> dict[str, Future[_Ahead]]:
    """Start reading and hashing the first sources (sorted, up to ``budget`` bytes) in ``pool``'s worker.

    The worker runs while the load connects, takes the lock, migrates and plans: time in which the server, not
    this client, is busy, so the hashing that would otherwise compete with the server's COPY parsing for the
    CPU is mostly done before the first COPY starts. Sources beyond the budget stream and hash as before.
    """
    ahead: dict[str, Future[_Ahead]] = {}
    for name in sorted(sources):
        size = sum(stamp[0] for stamp in sources[name].stamp if stamp)
        if size > budget:
            break
        budget -= size
        ahead[name] = pool.submit(_read_source, sources[name])
    return ahead


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
