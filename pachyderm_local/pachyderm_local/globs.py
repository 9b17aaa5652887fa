"""Pachyderm 2.x glob matching (pure): which paths of a commit are datums for a glob.

Pachyderm compiles a pfs glob with ohmyglob (a gobwas/glob fork) using ``/`` as the separator and
matches it against every file *and* directory of the input commit (directories without a trailing
slash). So ``*`` stays within one path segment, ``**`` crosses segments (``/**.csv`` is every CSV at
any depth), ``?`` is one non-separator character, ``[a-z]``/``[!a-z]`` are classes and ``{a,b}`` is
alternation. The glob ``/`` alone matches only the root: the whole repository is one datum.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from functools import lru_cache


class GlobError(ValueError):
    """A glob that cannot be compiled (unbalanced ``[`` or ``{``)."""


def clean_glob(glob: str) -> str:
    """Canonical form Pachyderm uses before matching: absolute, no trailing or doubled slashes."""
    cleaned = posixpath.normpath("/" + glob.strip())
    # normpath keeps a leading '//' (POSIX allows it); Pachyderm does not.
    return "/" + cleaned.lstrip("/")


def _translate(pattern: str, pos: int, stop: str) -> tuple[str, int]:
    """Translate ``pattern[pos:]`` to a regex until an unnested char in ``stop``; returns (regex, pos)."""
    out: list[str] = []
    n = len(pattern)
    while pos < n:
        ch = pattern[pos]
        if ch in stop:
            return "".join(out), pos
        if ch == "\\" and pos + 1 < n:
            out.append(re.escape(pattern[pos + 1]))
            pos += 2
        elif ch == "*":
            if pattern.startswith("**", pos):
                out.append(".*")
                pos += 2
            else:
                out.append("[^/]*")
                pos += 1
        elif ch == "?":
            out.append("[^/]")
            pos += 1
        elif ch == "[":
            end = pattern.find("]", pos + 2)
            if end < 0:
                raise GlobError(f"unterminated '[' in glob {pattern!r}")
            body = pattern[pos + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            pos = end + 1
        elif ch == "{":
            alternatives: list[str] = []
            pos += 1
            while True:
                alt, pos = _translate(pattern, pos, ",}")
                alternatives.append(alt)
                if pos >= n:
                    raise GlobError(f"unterminated '{{' in glob {pattern!r}")
                if pattern[pos] == "}":
                    pos += 1
                    break
                pos += 1  # a ','
            out.append("(?:" + "|".join(alternatives) + ")")
        else:
            out.append(re.escape(ch))
            pos += 1
    return "".join(out), pos


@lru_cache(maxsize=256)
def compile_glob(glob: str) -> re.Pattern[str]:
    regex, pos = _translate(clean_glob(glob), 0, "")
    assert pos == len(clean_glob(glob))
    return re.compile(regex, re.DOTALL)


def glob_matches(glob: str, path: str) -> bool:
    """Whether ``path`` (absolute, e.g. ``/sub/a.csv``; ``/`` is the root) is a datum of ``glob``.

    Mirrors Pachyderm's ``globMatchFunction``: the root matches only the glob ``/``; other paths are
    matched with trailing slashes removed.
    """
    glob = clean_glob(glob)
    if path == "/":
        return glob == "/"
    return compile_glob(glob).fullmatch(path.rstrip("/")) is not None


def candidate_paths(files: Iterable[str]) -> list[str]:
    """Every path a glob is matched against: the root, each directory and each file (sorted).

    ``files`` are relative file paths (``sub/a.csv``); directories are implied by them.
    """
    paths = {"/"}
    for rel in files:
        parts = rel.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            paths.add("/" + "/".join(parts[:i]))
    return sorted(paths)


def expand_glob(glob: str, files: Iterable[str]) -> list[str]:
    """The matched paths (datum roots) of ``glob`` over a commit holding ``files``, sorted."""
    return [p for p in candidate_paths(files) if glob_matches(glob, p)]


def files_under(datum_path: str, files: Iterable[str]) -> list[str]:
    """The files (relative paths) a datum rooted at ``datum_path`` contains: itself or everything below."""
    if datum_path == "/":
        return sorted(files)
    rel = datum_path.strip("/")
    return sorted(f for f in files if f == rel or f.startswith(rel + "/"))
