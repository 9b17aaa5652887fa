"""Pachyderm's datum batching loop: one process, one model load, many datums.

With ``transform.datum_batching: true`` Pachyderm starts the user code once per worker; the code calls
``pachctl next datum``, which reports the previous datum as done and blocks until the worker has laid
out the next one under the same ``/pfs`` paths. When no datums remain, the worker kills the process, so
this loop never returns normally.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from qa_answer.errors import NextDatumError

#: Where Pachyderm's worker init container copies pachctl into the user container (it may not be on PATH).
WORKER_PACHCTL = "/pach-bin/pachctl"


def next_datum(pachctl: str) -> None:
    """Block until the worker has laid out the next datum (and mark the previous one done)."""
    if pachctl == "pachctl" and shutil.which(pachctl) is None and os.access(WORKER_PACHCTL, os.X_OK):
        pachctl = WORKER_PACHCTL
    argv: Sequence[str] = [pachctl, "next", "datum"]
    try:
        code = subprocess.run(argv, check=False).returncode
    except OSError as exc:
        raise NextDatumError(f"cannot run '{pachctl} next datum': {exc}") from None
    if code != 0:
        raise NextDatumError(f"'{pachctl} next datum' exited with code {code}")


def serve_datums(ask: Callable[[], None], process: Callable[[], int]) -> int:
    """Ask for a datum, process it, repeat; returns only when ``process`` returns non-zero."""
    while True:
        ask()
        code = process()
        if code != 0:
            return code
