"""Stand-in ``pachctl`` for datum batching: ``pachctl next datum [--error MSG]`` talks to the runner's worker.

Copied as ``pachctl`` into a job's tmp ``bin`` folder, first on the command's PATH. It connects to the
worker's unix socket (``PACHYDERM_LOCAL_BATCHING_SOCKET``), says ``next`` (the previous datum succeeded)
or ``error MSG`` (it failed: the worker ends this process group and restarts the user code, as Pachyderm
does), and waits for ``go`` (the next datum is laid out). When no datum is left the runner kills the
command's process group, so waiting here is what Pachyderm's own ``pachctl next datum`` does too.
Standard library only: it runs under the venv's Python but imports nothing from the project.
"""

import os
import socket
import sys

SOCKET_ENV = "PACHYDERM_LOCAL_BATCHING_SOCKET"


def _request(argv: list[str]) -> str | None:
    if argv == ["next", "datum"]:
        return "next"
    if len(argv) == 4 and argv[:3] == ["next", "datum", "--error"]:
        return "error " + " ".join(argv[3].split())
    if len(argv) == 3 and argv[:2] == ["next", "datum"] and argv[2].startswith("--error="):
        return "error " + " ".join(argv[2].split("=", 1)[1].split())
    return None


def main(argv: list[str]) -> int:
    request = _request(argv)
    if request is None:
        print(
            f"pachctl (pachyderm-local stand-in): only 'next datum [--error MSG]' works, got {argv}",
            file=sys.stderr,
        )
        return 2
    path = os.environ.get(SOCKET_ENV)
    if not path:
        print(f"pachctl (pachyderm-local stand-in): {SOCKET_ENV} is not set", file=sys.stderr)
        return 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(request.encode() + b"\n")
        reply = conn.makefile("r").readline().strip()
    if reply == "go":
        return 0
    print(f"pachctl (pachyderm-local stand-in): worker answered {reply!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
