"""Fault points for tests: ``QA_TEST_FAULT`` (read once at the entrypoint) makes a run fail at a named step.

A kill between the two renames of an output pair, or a full disk, cannot be timed from outside a process
without a race; these points make both reproducible. Unset (the only production value), nothing changes.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TextIO

from qa_answer.contract import ENCODING
from qa_answer.errors import FaultError

FAULT_ENV = "QA_TEST_FAULT"
#: SIGKILL the process after the rejected/ file of an input is renamed into place, before its answers/ file.
KILL_BETWEEN_RENAMES = "kill-between-renames"
#: Every output file's bytes go to /dev/full: writing fails with ENOSPC exactly as on a full disk.
DISK_FULL = "disk-full"
POINTS = (KILL_BETWEEN_RENAMES, DISK_FULL)


@dataclass(frozen=True)
class Faults:
    point: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> Faults:
        value = (value or "").strip()
        if value and value not in POINTS:
            raise FaultError(f"{FAULT_ENV} must be one of {', '.join(POINTS)} (tests only), got {value!r}")
        return cls(value or None)

    def between_renames(self) -> None:
        if self.point == KILL_BETWEEN_RENAMES:
            os.kill(os.getpid(), signal.SIGKILL)

    def output_stream(self, stream: TextIO) -> TextIO:
        """Where an output file's text goes: ``stream`` itself, or /dev/full under ``DISK_FULL``."""
        if self.point == DISK_FULL:
            return open("/dev/full", "w", encoding=ENCODING, newline="")  # closed by the caller
        return stream


NO_FAULTS = Faults()
