"""Start a datum's user code in its own process group and end the whole group on every path.

As Pachyderm's worker does (``driver_unix.go``: ``Setpgid`` and a SIGKILL of the group when the user
code returns, fails or times out), each datum process leads a new session; when it ends, times out or
the runner is interrupted, the whole group gets SIGKILL, background children included. Two guards cover
a runner that dies without cleaning up (SIGKILL, OOM): the group leader has a parent-death signal
(``PR_SET_PDEATHSIG``), and a ``GroupReaper`` process kills every group still registered when the
runner's pipe to it closes. User code that leaves its process group on purpose (``setsid``) escapes
both, as it would escape Pachyderm's group kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class DatumCommand:
    """What one datum process runs: the command line, its whole environment and its stdin (if any)."""

    argv: list[str]
    env: dict[str, str]
    stdin: str | None = None


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl


class GroupReaper:
    """One ``group_reaper.py`` process per run; see that module. Also the runner's list of live groups."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("group_reaper.py")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(script)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        self._prctl = _load_prctl()
        self._parent = os.getpid()
        self._lock = threading.Lock()
        self._live: set[int] = set()

    def child_setup(self) -> None:
        """Runs in the forked child before exec (so: no allocation-heavy Python, no locks)."""
        if self._prctl is not None:
            self._prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._parent:  # the runner died before the signal was armed
                os.kill(os.getpid(), signal.SIGKILL)
        os.write(self._fd, b"+%d\n" % os.getpid())

    def started(self, pgid: int) -> None:
        with self._lock:
            self._live.add(pgid)

    def ended(self, pgid: int) -> None:
        with self._lock:
            self._live.discard(pgid)
            with contextlib.suppress(OSError):
                os.write(self._fd, b"-%d\n" % pgid)

    def kill_all(self) -> None:
        """SIGKILL every live group (the runner is being interrupted)."""
        with self._lock:
            groups = list(self._live)
        for pgid in groups:
            kill_group(pgid)

    def close(self) -> None:
        self.kill_all()
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        self._proc.wait()

    def __enter__(self) -> GroupReaper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def start_datum_process(
    command: DatumCommand, stdout: IO, reaper: GroupReaper, cwd: str | None = None
) -> subprocess.Popen:
    """Start ``command`` as the leader of a new session, registered with ``reaper``; raises OSError."""
    proc = subprocess.Popen(
        command.argv,
        stdin=subprocess.PIPE if command.stdin is not None else subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=command.env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=reaper.child_setup,  # only a syscall and a pipe write: safe with threads
    )
    reaper.started(proc.pid)
    if command.stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(command.stdin.encode())
            proc.stdin.close()
        except OSError:  # the command exited without reading its stdin
            pass
    return proc


def end_process(proc: subprocess.Popen, reaper: GroupReaper) -> int:
    """SIGKILL the process's whole group (leftover background children too), reap it; its exit code."""
    kill_group(proc.pid)
    code = proc.wait()
    reaper.ended(proc.pid)
    return code


def wait_with_timeout(proc: subprocess.Popen, reaper: GroupReaper, timeout_s: float | None) -> int | None:
    """Wait for the command; on timeout None. Either way the group is gone when this returns."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end_process(proc, reaper)
        return None
    finally:
        if proc.returncode is None:  # interrupted while waiting
            end_process(proc, reaper)
    return end_process(proc, reaper)
