"""Datum batching (``transform.datum_batching: true``): one long-lived command per worker slot.

As in Pachyderm, the command is started once per worker and loops on ``pachctl next datum``. A stand-in
``pachctl`` (``batching_pachctl.py``, first on PATH) connects to the worker's unix socket; on ``next`` the
worker records the datum in flight as succeeded, lays out the next one in the worker's fixed sandbox
(``/pfs`` always maps to the same folder) and answers ``go``. With no datum left it kills the process
group. A process that exits or times out while a datum is in flight fails that datum's try; the retry
runs in a fresh process.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datums import Datum
from .names import InvalidNameError
from .procs import DatumCommand, GroupReaper, end_process, start_datum_process
from .spec import PipelineSpec
from .store import now

SOCKET_ENV = "PACHYDERM_LOCAL_BATCHING_SOCKET"
_POLL_S = 0.2


def write_pachctl(bin_dir: Path) -> Path:
    """Install the stand-in ``pachctl`` (run by this interpreter) into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).parent / "batching_pachctl.py").read_text(encoding="utf-8")
    target = bin_dir / "pachctl"
    target.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    target.chmod(0o755)
    return target


class DatumQueue:
    """Datums shared by the workers of one job, taken in order."""

    def __init__(self, datums: list[Datum]) -> None:
        self._items = deque(datums)
        self._lock = threading.Lock()

    def take(self) -> Datum | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def empty(self) -> bool:
        with self._lock:
            return not self._items


class _Flight:
    """A datum handed to the command and the try it is on."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.started = 0.0


def serve_worker(
    *,
    spec: PipelineSpec,
    worker_dir: Path,
    queue: DatumQueue,
    make_outcome: Callable[[Datum], Any],
    layout: Callable[[Datum, Path], None],
    collect: Callable[[Any, Path], None],
    finish: Callable[[Any], None],
    command: Callable[[Path], DatumCommand],
    log_path: Callable[[Datum], Path],
    reaper: GroupReaper,
    stop: threading.Event,
) -> None:
    """Run one worker slot until the queue is drained; ``finish`` is called once per datum taken."""
    pfs = worker_dir / "pfs"
    worker_dir.mkdir(parents=True, exist_ok=True)
    worker_log = worker_dir / "worker.log"
    sock_dir = Path(tempfile.mkdtemp(prefix="pl-batch-"))  # unix socket paths must stay short
    sock_path = sock_dir / "s"
    retry: Any = None
    state = {"offset": 0}

    def flush_log(outcome: Any, note: str = "") -> None:
        """Move the command's output since the last flush into the datum's log."""
        with open(worker_log, "rb") as src, open(log_path(outcome.datum), "ab") as dst:
            src.seek(state["offset"])
            dst.write(src.read())
            state["offset"] = src.tell()
            if note:
                dst.write(f"[pachyderm-local] {note}\n".encode())

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(sock_path))
            server.listen(4)
            server.settimeout(_POLL_S)
            while (retry is not None or not queue.empty()) and not stop.is_set():
                shutil.rmtree(pfs, ignore_errors=True)
                (pfs / "out").mkdir(parents=True)
                base = command(pfs)
                process = DatumCommand(base.argv, {**base.env, SOCKET_ENV: str(sock_path)}, base.stdin)
                with open(worker_log, "ab") as out:
                    offset = out.tell()
                    try:
                        proc = start_datum_process(process, out, reaper)
                    except OSError as exc:
                        error = f"cannot start {process.argv[0]!r}: {exc}"
                        retry = _fail_without_process(
                            spec, retry, queue, make_outcome, finish, log_path, error
                        )
                        continue
                state["offset"] = offset
                flight: _Flight | None = None
                while True:
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        conn = None
                    if conn is None:
                        timed_out = (
                            flight is not None
                            and spec.datum_timeout_s is not None
                            and time.monotonic() - flight.started > spec.datum_timeout_s
                        )
                        code = proc.poll()
                        if code is None and not timed_out and not stop.is_set():
                            continue
                        end_process(proc, reaper)
                        if stop.is_set():
                            break
                        if timed_out:
                            error = f"timed out after {spec.datum_timeout_s:g}s"
                        else:
                            error = f"exit code {code}"
                        if flight is None:
                            pending = retry or queue.take()
                            retry = None
                            if pending is None:
                                break
                            if isinstance(pending, Datum):
                                pending = make_outcome(pending)
                            flight = _start_try(pending, spec, log_path, proc.pid)
                            error = f"command exited ({error}) before asking for a datum"
                        outcome = flight.outcome
                        outcome.seconds += time.monotonic() - flight.started
                        outcome.error = error
                        flush_log(outcome, f"try {outcome.tries}: {error}")
                        if outcome.tries < spec.datum_tries:
                            retry = outcome
                        else:
                            finish(outcome)
                        break
                    with conn:
                        conn.settimeout(None)
                        request = conn.makefile("r").readline().rstrip("\n")
                        verb, _, user_error = request.partition(" ")
                        if verb not in ("next", "error"):
                            conn.sendall(b"error: expected 'next' or 'error MSG'\n")
                            continue
                        if verb == "error" and flight is not None:
                            # `pachctl next datum --error MSG`: the try fails and the user code restarts.
                            end_process(proc, reaper)
                            outcome = flight.outcome
                            outcome.seconds += time.monotonic() - flight.started
                            outcome.error = f"user code reported: {user_error}"
                            flush_log(outcome, f"try {outcome.tries}: {outcome.error}")
                            if outcome.tries < spec.datum_tries:
                                retry = outcome
                            else:
                                finish(outcome)
                            break
                        if flight is not None:
                            outcome = flight.outcome
                            outcome.seconds += time.monotonic() - flight.started
                            try:
                                collect(outcome, pfs)
                                flush_log(outcome, f"try {outcome.tries}: success")
                            except InvalidNameError as exc:
                                outcome.ok = False
                                outcome.error = f"cannot upload an output file: {exc}"
                                flush_log(outcome, f"try {outcome.tries}: {outcome.error}")
                            finish(outcome)
                            flight = None
                        pending = retry or queue.take()
                        retry = None
                        if pending is None or stop.is_set():
                            end_process(proc, reaper)
                            break
                        outcome = pending if not isinstance(pending, Datum) else make_outcome(pending)
                        flight = _start_try(outcome, spec, log_path, proc.pid)
                        layout(outcome.datum, pfs)
                        flight.started = time.monotonic()
                        conn.sendall(b"go\n")
                end_process(proc, reaper)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _start_try(pending: Any, spec: PipelineSpec, log_path: Callable[[Datum], Path], pid: int) -> _Flight:
    outcome = pending
    outcome.tries += 1
    path = log_path(outcome.datum)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(
            f"--- {now()} try {outcome.tries}/{spec.datum_tries} datum {outcome.datum.describe()} "
            f"(datum batching, process {pid})\n"
        )
    flight = _Flight(outcome)
    flight.started = time.monotonic()
    return flight


def _fail_without_process(spec, retry, queue, make_outcome, finish, log_path, error: str) -> Any:
    pending = retry or queue.take()
    if pending is None:
        return None
    outcome = pending if not isinstance(pending, Datum) else make_outcome(pending)
    _start_try(outcome, spec, log_path, 0)
    outcome.error = error
    with open(log_path(outcome.datum), "a", encoding="utf-8") as log:
        log.write(f"[pachyderm-local] try {outcome.tries}: {error}\n")
    if outcome.tries < spec.datum_tries:
        return outcome
    finish(outcome)
    return None
