"""Build a file whose path is longer than PATH_MAX: made folder by folder through descriptors, as no single
path name can reach it."""

from __future__ import annotations

import os
from pathlib import Path

GOOD = "question,context\nWhere is Paris?,Paris is in France.\n"


def deep_file(root: Path, levels: int, name: bytes = b"deep.csv", text: str = GOOD) -> bytes:
    """``name`` below ``levels`` folders of 250 characters (a path over PATH_MAX once levels > 16); returns
    its path relative to ``root``."""
    part = b"d" * 250
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        handle = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(handle, text.encode())
        os.close(handle)
    finally:
        os.close(fd)
    return b"/".join([part] * levels + [name])
