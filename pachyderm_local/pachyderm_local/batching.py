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

import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .datums import Datum
from .names import InvalidNameError
from .procs import DatumCommand, GroupReaper, end_process, start_datum_process
from .spec import PipelineSpec
from .store import now

SOCKET_ENV = "PACHYDERM_LOCAL_BATCHING_SOCKET"
DATUM_SETS_PER_WORKER = 4  # transform/registry.go defaultDatumSetsPerWorker
_POLL_S = 0.2


class UserCodeExited(Exception):
    """Batched user code ended before asking for its first datum: the job fails (Pachyderm: datum set)."""


def write_pachctl(bin_dir: Path) -> Path:
    """Install the stand-in ``pachctl`` (run by this interpreter) into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).parent / "batching_pachctl.py").read_text(encoding="utf-8")
    target = bin_dir / "pachctl"
    target.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
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


class _Flight:
    """A datum handed to the user code and when its try started."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.started = time.monotonic()


def serve_worker(
    *,
    spec: PipelineSpec,
    worker_dir: Path,
    sets: DatumQueue,
    make_outcome: Callable[[Datum], Any],
    layout: Callable[[Datum, Path], None],
    collect: Callable[[Any, Path], None],
    finish: Callable[[Any], None],
    command: Callable[[Path], DatumCommand],
    log_path: Callable[[Datum], Path],
    reaper: GroupReaper,
    stop: threading.Event,
) -> None:
    """Run one worker slot until no datum set is left; ``finish`` is called once per datum it ends.

    Raises UserCodeExited when the user code exits before its first ``pachctl next datum``.
    """
    worker_dir.mkdir(parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="pl-batch-"))  # unix socket paths must stay short
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(sock_dir / "s"))
            server.listen(4)
            server.settimeout(_POLL_S)
            worker = _Worker(spec, worker_dir, server, str(sock_dir / "s"), command, log_path, reaper, stop)
            while not stop.is_set():
                datum_set = sets.take()
                if datum_set is None:
                    return
                worker.serve_set([make_outcome(d) for d in datum_set], layout, collect, finish)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


class _Worker:
    def __init__(
        self,
        spec: PipelineSpec,
        worker_dir: Path,
        server: socket.socket,
        sock_path: str,
        command: Callable[[Path], DatumCommand],
        log_path: Callable[[Datum], Path],
        reaper: GroupReaper,
        stop: threading.Event,
    ) -> None:
        self.spec = spec
        self.pfs = worker_dir / "pfs"
        self.worker_log = worker_dir / "worker.log"
        self.server = server
        self.sock_path = sock_path
        self.command = command
        self.log_path = log_path
        self.reaper = reaper
        self.stop = stop
        self.offset = 0

    def flush_log(self, outcome: Any, note: str = "") -> None:
        """Move the user code's output since the last flush into the datum's log."""
        path = self.log_path(outcome.datum)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.worker_log, "rb") as src, open(path, "ab") as dst:
            src.seek(self.offset)
            dst.write(src.read())
            self.offset = src.tell()
            if note:
                dst.write(f"[pachyderm-local] {note}\n".encode())

    def start_try(self, outcome: Any, pid: int) -> _Flight:
        outcome.tries += 1
        path = self.log_path(outcome.datum)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(
                f"--- {now()} try {outcome.tries}/{self.spec.datum_tries} datum {outcome.datum.describe()} "
                f"(datum batching, process {pid})\n"
            )
        return _Flight(outcome)

    def fail_try(self, flight: _Flight, error: str, pending: deque, finish: Callable[[Any], None]) -> None:
        outcome = flight.outcome
        outcome.seconds += time.monotonic() - flight.started
        outcome.error = error
        self.flush_log(outcome, f"try {outcome.tries}: {error}")
        if outcome.tries < self.spec.datum_tries:
            pending.appendleft(outcome)  # retried first, by a fresh process
        else:
            finish(outcome)

    def serve_set(
        self,
        outcomes: list[Any],
        layout: Callable[[Datum, Path], None],
        collect: Callable[[Any, Path], None],
        finish: Callable[[Any], None],
    ) -> None:
        """Start the user code for a datum set and feed it the set's datums, restarting it after a
        failed try, until every datum of the set has ended."""
        pending: deque = deque(outcomes)
        while pending and not self.stop.is_set():
            shutil.rmtree(self.pfs, ignore_errors=True)
            (self.pfs / "out").mkdir(parents=True)
            base = self.command(self.pfs)
            process = DatumCommand(base.argv, {**base.env, SOCKET_ENV: self.sock_path}, base.stdin)
            with open(self.worker_log, "ab") as out:
                self.offset = out.tell()
                try:
                    proc = start_datum_process(process, out, self.reaper)
                except OSError as exc:
                    raise UserCodeExited(f"cannot start {process.argv[0]!r}: {exc}") from exc
            ended = self._serve_process(proc, pending, layout, collect, finish)
            if ended == "premature":
                code = proc.returncode
                what = f"the user code exited (exit code {code}) before its first `pachctl next datum`"
                self.flush_log(pending[0], what)
                log = f"the log of datum {pending[0].datum.id[:12]}"
                raise UserCodeExited(f"{what} (its output is in {log})")

    def _serve_process(
        self,
        proc: Any,
        pending: deque,
        layout: Callable[[Datum, Path], None],
        collect: Callable[[Any, Path], None],
        finish: Callable[[Any], None],
    ) -> str:
        """Serve one user code process; returns why it ended: set done, restart, premature or stopped."""
        spec = self.spec
        flight: _Flight | None = None
        while True:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                timed_out = (
                    flight is not None
                    and spec.datum_timeout_s is not None
                    and time.monotonic() - flight.started > spec.datum_timeout_s
                )
                if proc.poll() is None and not timed_out and not self.stop.is_set():
                    continue
                code = end_process(proc, self.reaper)
                if self.stop.is_set():
                    return "stopped"
                if flight is None:
                    return "premature"
                error = f"timed out after {spec.datum_timeout_s:g}s" if timed_out else f"exit code {code}"
                self.fail_try(flight, error, pending, finish)
                return "restart"
            with conn:
                conn.settimeout(None)
                verb, _, user_error = conn.makefile("r").readline().rstrip("\n").partition(" ")
                if verb not in ("next", "error"):
                    conn.sendall(b"error: expected 'next' or 'error MSG'\n")
                    continue
                if verb == "error" and flight is not None:
                    # `pachctl next datum --error MSG`: the try fails and the user code restarts.
                    end_process(proc, self.reaper)
                    self.fail_try(flight, f"user code reported: {user_error}", pending, finish)
                    return "restart"
                if flight is not None:
                    outcome = flight.outcome
                    outcome.seconds += time.monotonic() - flight.started
                    try:
                        collect(outcome, self.pfs)
                        self.flush_log(outcome, f"try {outcome.tries}: success")
                        finish(outcome)
                    except InvalidNameError as exc:
                        outcome.ok = False
                        self.fail_try(flight, f"cannot upload an output file: {exc}", pending, finish)
                    flight = None
                if not pending or self.stop.is_set():
                    end_process(proc, self.reaper)
                    return "done"
                outcome = pending.popleft()
                flight = self.start_try(outcome, proc.pid)
                layout(outcome.datum, self.pfs)
                flight.started = time.monotonic()
                conn.sendall(b"go\n")
