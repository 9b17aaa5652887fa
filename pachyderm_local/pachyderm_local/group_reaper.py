"""Kills the datum process groups a ``pachyderm-local run`` leaves behind when the runner itself dies.

Started once per run with a pipe on stdin. Each datum process writes ``+<pgid>`` into the pipe before it
execs the user code (it is the leader of a new session); the runner writes ``-<pgid>`` once it has ended
that group. When the pipe closes (the runner exited, however it exited) every group still listed gets
SIGKILL, so a SIGKILL of the runner leaves no user code behind. Standard library only.
"""

import contextlib
import os
import signal
import sys


def main() -> int:
    # A Ctrl-C reaches the runner's whole process group; this process must outlive the runner to clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip().decode("ascii", "replace")
        if text[:1] in "+-" and text[1:].isdigit():
            pgid = int(text[1:])
            if text[0] == "+":
                live.add(pgid)
            else:
                live.discard(pgid)
    for pgid in live:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
