"""Datum batching (``transform.datum_batching: true``): the user code runs once per *datum set*.

As in Pachyderm (``worker/pipeline/transform/worker.go`` ``handleDatumSetBatching``), a job's datums are
cut into datum sets (``datum_set_spec``, by default datums / (workers x 4) per set), each worker takes
sets in turn, and for each set it starts the user code, which loops on ``pachctl next datum``. A
stand-in ``pachctl`` (``batching_pachctl.py``, first on PATH) connects to the worker's unix socket; on
``next`` the worker records the datum in flight as succeeded, lays out the next one in the worker's fixed
sandbox (``/pfs`` always maps to the same folder, ``/pfs/.env`` holds the datum's variables) and answers
``go``. With the set done it ends the process group. ``next datum --error MSG``, an exit or a
``datum_timeout`` while a datum is in flight fails that datum's try and restarts the user code; user
code that exits before its first ``next datum`` fails the job (Pachyderm fails the datum set and
retries the whole job until it is stopped).
"""

from __future__ import annotations

import enum
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .datums import Datum
from .jobs import DatumOutcome
from .names import InvalidNameError
from .procs import DatumCommand, GroupReaper, end_process, start_datum_process
from .spec import PipelineSpec
from .store import now

DATUM_SETS_PER_WORKER = 4  # transform/registry.go defaultDatumSetsPerWorker
_POLL_S = 0.2


class UserCodeExited(Exception):
    """Batched user code ended before asking for its first datum: the job fails (Pachyderm: datum set)."""


@dataclass(frozen=True)
class BatchingLink:
    """How a batching worker's user code reaches it: the stand-in ``pachctl`` and the worker's socket."""

    bin_dir: Path
    socket: str


def write_pachctl(bin_dir: Path, name: str = "pachctl", interpreter: str = sys.executable) -> Path:
    """Install the stand-in ``pachctl`` into ``bin_dir`` as ``name``, run by ``interpreter``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).parent / "batching_pachctl.py").read_text(encoding="utf-8")
    target = bin_dir / name
    target.write_text(f"#!{interpreter}\n{source}", encoding="utf-8")
    target.chmod(0o755)
    return target


def datum_sets(
    datums: Sequence[Datum],
    workers: int,
    number: int = 0,
    size_bytes: int = 0,
    per_worker: int = 0,
    size_of: Callable[[Datum], int] = lambda d: 0,
) -> list[list[Datum]]:
    """Cut datums into datum sets as ``createSetSpec`` and ``datum.CreateSets`` do (order kept)."""
    if number == 0 and size_bytes == 0:
        number = max(1, len(datums) // (max(1, workers) * (per_worker or DATUM_SETS_PER_WORKER)))
    sets: list[list[Datum]] = [[]]
    count = size = 0
    for datum in datums:
        full = size >= size_bytes if size_bytes > 0 else count >= number
        if full:
            sets.append([])
            count = size = 0
        sets[-1].append(datum)
        count += 1
        size += size_of(datum)
    return [s for s in sets if s]


class DatumQueue:
    """Items (datum sets) shared by the workers of one job, taken in order."""

    def __init__(self, items: list[Any]) -> None:
        self._items = deque(items)
        self._lock = threading.Lock()

    def take(self) -> Any | None:
        with self._lock:
            return self._items.popleft() if self._items else None


class BatchHost(Protocol):
    """What a worker needs from the runner for one job."""

    def lay_out(self, pfs: Path, datum: Datum | None) -> None: ...

    def command(self, pfs: Path, socket_path: str) -> DatumCommand:
        """The user code's process, reaching this worker at ``socket_path``."""

    def collect(self, outcome: DatumOutcome, pfs: Path) -> None:
        """Store the datum's ``/pfs/out`` and mark it succeeded; InvalidNameError fails the try."""

    def finish(self, outcome: DatumOutcome) -> None:
        """Called once per datum the worker ends (succeeded, or failed every try)."""

    def log_path(self, datum: Datum) -> Path: ...


class ProcessEnd(enum.Enum):
    """Why a user code process was ended."""

    SET_DONE = "every datum of the set ended"
    RESTART = "a try failed: a fresh process takes the rest of the set"
    PREMATURE = "the user code exited before its first `pachctl next datum`"
    STOPPED = "the job is stopping"


class _Flight:
    """A datum handed to the user code and when its try started."""

    def __init__(self, outcome: DatumOutcome) -> None:
        self.outcome = outcome
        self.started = time.monotonic()


class BatchWorker:
    """One worker slot: takes datum sets until none is left, one user code process per set (and per
    failed try); ``host.finish`` is called once per datum it ends."""

    def __init__(
        self,
        spec: PipelineSpec,
        worker_dir: Path,
        host: BatchHost,
        reaper: GroupReaper,
        stop: threading.Event,
    ) -> None:
        self.spec = spec
        self.worker_dir = worker_dir
        self.pfs = worker_dir / "pfs"
        self.worker_log = worker_dir / "worker.log"
        self.host = host
        self.reaper = reaper
        self.stop = stop
        self.offset = 0
        self.sock_path = ""
        self.server: socket.socket | None = None
        self.flight: _Flight | None = None

    def run(self, sets: DatumQueue) -> None:
        """Serve datum sets until none is left or the job stops.

        Raises UserCodeExited when the user code exits before its first ``pachctl next datum``.
        """
        self.worker_dir.mkdir(parents=True, exist_ok=True)
        sock_dir = Path(tempfile.mkdtemp(prefix="pl-batch-"))  # unix socket paths must stay short
        self.sock_path = str(sock_dir / "s")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(self.sock_path)
                server.listen(4)
                server.settimeout(_POLL_S)
                self.server = server
                while not self.stop.is_set():
                    datum_set = sets.take()
                    if datum_set is None:
                        return
                    self._serve_set(datum_set)
        finally:
            shutil.rmtree(sock_dir, ignore_errors=True)

    def _serve_set(self, datums: list[Datum]) -> None:
        """Start the user code for a datum set and feed it the set's datums, restarting it after a
        failed try, until every datum of the set has ended."""
        pending: deque[DatumOutcome] = deque(DatumOutcome(d) for d in datums)
        while pending and not self.stop.is_set():
            self.host.lay_out(self.pfs, None)
            proc = self._start()
            if self._serve_process(proc, pending) is ProcessEnd.PREMATURE:
                code = proc.returncode
                what = f"the user code exited (exit code {code}) before its first `pachctl next datum`"
                self._flush_log(pending[0], what)
                log = f"the log of datum {pending[0].datum.id[:12]}"
                raise UserCodeExited(f"{what} (its output is in {log})")

    def _start(self) -> subprocess.Popen:
        command = self.host.command(self.pfs, self.sock_path)
        with open(self.worker_log, "ab") as out:
            self.offset = out.tell()
            try:
                return start_datum_process(command, out, self.reaper)
            except OSError as exc:
                raise UserCodeExited(f"cannot start {command.argv[0]!r}: {exc}") from exc

    def _serve_process(self, proc: subprocess.Popen, pending: deque[DatumOutcome]) -> ProcessEnd:
        """Answer one user code process's ``pachctl next datum`` calls until it has to end."""
        assert self.server is not None
        self.flight = None
        while True:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                end = self._check_process(proc, pending)
            else:
                with conn:
                    end = self._answer(conn, proc, pending)
            if end is not None:
                return end

    def _check_process(self, proc: subprocess.Popen, pending: deque[DatumOutcome]) -> ProcessEnd | None:
        """No call for a while: end the process if it exited, passed ``datum_timeout`` or the job stops."""
        flight, timeout = self.flight, self.spec.datum_timeout_s
        timed_out = flight is not None and timeout is not None and time.monotonic() - flight.started > timeout
        if proc.poll() is None and not timed_out and not self.stop.is_set():
            return None
        code = end_process(proc, self.reaper)
        if self.stop.is_set():
            return ProcessEnd.STOPPED
        if flight is None:
            return ProcessEnd.PREMATURE
        self._fail_try(flight, f"timed out after {timeout:g}s" if timed_out else f"exit code {code}", pending)
        return ProcessEnd.RESTART

    def _answer(
        self, conn: socket.socket, proc: subprocess.Popen, pending: deque[DatumOutcome]
    ) -> ProcessEnd | None:
        """One ``next`` (the datum in flight succeeded) or ``error MSG`` (it failed) from ``pachctl``."""
        conn.settimeout(None)
        verb, _, user_error = conn.makefile("r").readline().rstrip("\n").partition(" ")
        if verb not in ("next", "error"):
            conn.sendall(b"error: expected 'next' or 'error MSG'\n")
            return None
        if verb == "error" and self.flight is not None:
            # `pachctl next datum --error MSG`: the try fails and the user code restarts.
            end_process(proc, self.reaper)
            self._fail_try(self.flight, f"user code reported: {user_error}", pending)
            return ProcessEnd.RESTART
        if self.flight is not None:
            self._succeed(self.flight, pending)
            self.flight = None
        if not pending or self.stop.is_set():
            end_process(proc, self.reaper)
            return ProcessEnd.SET_DONE
        outcome = pending.popleft()
        self.flight = self._start_try(outcome, proc.pid)
        self.host.lay_out(self.pfs, outcome.datum)
        self.flight.started = time.monotonic()
        conn.sendall(b"go\n")
        return None

    def _succeed(self, flight: _Flight, pending: deque[DatumOutcome]) -> None:
        outcome = flight.outcome
        outcome.seconds += time.monotonic() - flight.started
        try:
            self.host.collect(outcome, self.pfs)
            self._flush_log(outcome, f"try {outcome.tries}: success")
            self.host.finish(outcome)
        except InvalidNameError as exc:
            outcome.ok = False
            self._fail_try(flight, f"cannot upload an output file: {exc}", pending)

    def _flush_log(self, outcome: DatumOutcome, note: str = "") -> None:
        """Move the user code's output since the last flush into the datum's log."""
        path = self.host.log_path(outcome.datum)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.worker_log, "rb") as src, open(path, "ab") as dst:
            src.seek(self.offset)
            dst.write(src.read())
            self.offset = src.tell()
            if note:
                dst.write(f"[pachyderm-local] {note}\n".encode())

    def _start_try(self, outcome: DatumOutcome, pid: int) -> _Flight:
        outcome.tries += 1
        path = self.host.log_path(outcome.datum)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(
                f"--- {now()} try {outcome.tries}/{self.spec.datum_tries} datum {outcome.datum.describe()} "
                f"(datum batching, process {pid})\n"
            )
        return _Flight(outcome)

    def _fail_try(self, flight: _Flight, error: str, pending: deque[DatumOutcome]) -> None:
        outcome = flight.outcome
        outcome.seconds += time.monotonic() - flight.started
        outcome.error = error
        self._flush_log(outcome, f"try {outcome.tries}: {error}")
        if outcome.tries < self.spec.datum_tries:
            pending.appendleft(outcome)  # retried first, by a fresh process
        else:
            self.host.finish(outcome)
