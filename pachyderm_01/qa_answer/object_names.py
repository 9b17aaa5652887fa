"""Map untrusted bucket object names to safe relative paths, so a download can never escape OUT_DIR.

Pure. Policy: harmless oddities are normalised (empty and ``.`` components from ``//``, a leading or
trailing ``/``; a backslash becomes ``_`` so a Windows-style ``..\\x`` is just a file name; an upper- or
mixed-case ``.CSV`` extension becomes ``.csv``, which the case-sensitive pipeline glob matches, and a folder
named ``*.csv`` becomes ``*_csv``, which it does not); anything
that could mean something else on disk or break logs is rejected with a reason: ``..`` components,
control characters (NUL, newline, ...), text that is not valid UTF-8, a component over 255 bytes or a
path over 4096 bytes (Linux limits).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from qa_answer.contract import CSV_SUFFIX, MAX_COMPONENT_BYTES, MAX_PATH_BYTES, is_csv_name


@dataclass(frozen=True)
class MappedName:
    """``path`` is a safe POSIX relative path, or None when the name is rejected (then ``reason`` says why).

    ``reason`` is also set, with a path, when the name had to be changed.
    """

    name: str
    path: str | None
    reason: str | None = None


def map_object_name(name: str) -> MappedName:
    """The relative path a downloaded object named ``name`` (already relative to the prefix) is saved to."""
    problem = _text_problem(name)
    if problem is not None:
        return MappedName(name, None, problem)
    kept, changes = _components(name)
    problem = _components_problem(kept)
    if problem is not None:
        return MappedName(name, None, problem)
    _rename_csv_folders(kept, changes)
    _lower_case_extension(kept, changes)
    path = "/".join(kept)
    problem = _path_problem(path)
    if problem is not None:
        return MappedName(name, None, problem)
    return MappedName(name, path, "; ".join(changes) or None)


def _text_problem(name: str) -> str | None:
    """Why ``name`` cannot be written or logged as it is: not UTF-8, or a control character."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "object name is not valid UTF-8"
    for ch in name:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            return f"object name contains control character U+{ord(ch):04X}"
    return None


def _components(name: str) -> tuple[list[str], list[str]]:
    """The path components of ``name`` with harmless oddities normalised, and the changes that made."""
    changes = []
    cleaned = name
    if "\\" in cleaned:
        cleaned = cleaned.replace("\\", "_")
        changes.append("backslashes replaced by '_'")
    parts = cleaned.split("/")
    kept = [part for part in parts if part not in ("", ".")]
    if len(kept) != len(parts):
        changes.append("empty or '.' path components dropped")
    return kept, changes


def _components_problem(kept: list[str]) -> str | None:
    """Why components that could mean something else on disk, or not fit it, are refused."""
    if ".." in kept:
        return "object name has a '..' path component"
    if not kept:
        return "object name has no file name"
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in kept):
        return f"object name has a path component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def _rename_csv_folders(kept: list[str], changes: list[str]) -> None:
    """Rename folders named ``*.csv`` to ``*_csv``, in place.

    Pachyderm's globs match folders too: /**.csv would make "x.csv/" a datum of its own, holding files that
    are datums already, and the answering job would fail on the clash of their outputs.
    """
    folders = [part for part in kept[:-1] if is_csv_name(part)]
    if folders:
        kept[:-1] = [part[:-4] + "_csv" if part in folders else part for part in kept[:-1]]
        changes.append(f"folder name(s) ending in .csv renamed to *_csv: {', '.join(map(repr, folders))}")


def _lower_case_extension(kept: list[str], changes: list[str]) -> None:
    """Write the file's ``.CSV`` extension (any case) as ``.csv``, in place.

    The answering pipeline's glob (/**.csv) is case-sensitive, as Pachyderm's globs are: "x.CSV" must be saved
    as "x.csv" or it would never become a datum.
    """
    if is_csv_name(kept[-1]) and not kept[-1].endswith(CSV_SUFFIX):
        changes.append(f"extension {kept[-1][-4:]!r} written as '.csv'")
        kept[-1] = kept[-1][:-4] + CSV_SUFFIX


def _path_problem(path: str) -> str | None:
    """Why the joined ``path`` is refused: too long for Linux, or (belt and braces) not plain and relative."""
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return f"object name is longer than {MAX_PATH_BYTES} bytes"
    if posixpath.isabs(path) or posixpath.normpath(path) != path:
        return "object name does not map to a plain relative path"
    return None


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``; ValueError for anything resolving outside ``root`` (e.g. via symlinks)."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"{relative!r} resolves outside {str(root)!r}")
    return target
