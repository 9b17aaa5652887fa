"""What a load has to do: scan IN_DIR into sources with a content digest, and diff them against Postgres.

A *source* is one input CSV of the answering step, i.e. the pair ``answers/<rel>`` + ``rejected/<rel>``; its
sha256 covers both files, so a source is rewritten only when either of its files changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from qa_answer.contract import (
    ANSWERS_DIR,
    ENCODING,
    LONE_FILE_HINT,
    MAX_PATH_BYTES,
    REJECTED_DIR,
    clipped_name,
    walk_csv,
)

log = logging.getLogger("pg_load")

#: bytes per read when a file is hashed or handed to COPY: memory stays at one chunk whatever the file size
CHUNK = 1 << 20


class InputError(ValueError):
    """IN_DIR is not an answering step's output."""


@dataclass(frozen=True)
class Source:
    source_file: str  # the input CSV's path, e.g. "sub/x.csv"; the key of qa_sources
    answers: Path | None
    rejected: Path | None
    #: (size, mtime_ns) of each file at scan time: a file rewritten during the load is noticed cheaply
    stamp: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)

    def files(self) -> tuple[tuple[str, Path | None], tuple[str, Path | None]]:
        return (ANSWERS_DIR, self.answers), (REJECTED_DIR, self.rejected)

    def unchanged_since_scan(self) -> bool:
        return (file_stamp(self.answers), file_stamp(self.rejected)) == self.stamp

    def read_digest(self) -> str:
        """The source's sha256 (see :func:`digest`), both files streamed in CHUNK reads."""
        h = hashlib.sha256()
        for (name, path), stamp in zip(self.files(), self.stamp, strict=True):
            h.update(frame(name, stamp[0] if stamp else None))
            if path is not None:
                with path.open("rb") as fh:
                    while chunk := fh.read(CHUNK):
                        h.update(chunk)
        return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    unchanged: tuple[str, ...]
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    deleted: tuple[str, ...]

    @property
    def to_write(self) -> tuple[str, ...]:
        return self.added + self.replaced

    @property
    def is_noop(self) -> bool:
        return not (self.added or self.replaced or self.deleted)


def frame(name: str, size: int | None) -> bytes:
    """What precedes a file's bytes in a digest: its folder and length, or that it is absent."""
    return f"{name}:absent;".encode() if size is None else f"{name}:{size};".encode()


def digest(answers: bytes | None, rejected: bytes | None) -> str:
    """sha256 of a source: both files, each framed by folder and length so no two layouts collide."""
    h = hashlib.sha256()
    for name, data in ((ANSWERS_DIR, answers), (REJECTED_DIR, rejected)):
        h.update(frame(name, None if data is None else len(data)))
        if data is not None:
            h.update(data)
    return h.hexdigest()


def scan(in_dir: Path) -> dict[str, Source]:
    """Every source under ``in_dir`` by source_file (sorted); digests come later, only where needed."""
    folders = {name: in_dir / name for name in (ANSWERS_DIR, REJECTED_DIR)}
    _check_is_output(in_dir, folders)
    found: dict[str, dict[str, tuple[Path, tuple[int, int]]]] = {}
    for name, folder in folders.items():
        for path, rel, stamp in _csv_files(folder):
            found.setdefault(rel, {})[name] = (path, stamp)
    _refuse_unpaired(in_dir, found)
    return {rel: _source(rel, found[rel]) for rel in sorted(found)}


def _check_is_output(in_dir: Path, folders: dict[str, Path]) -> None:
    """Refuse a folder that is not a whole answering output: mirroring it would delete rows from Postgres."""
    if not in_dir.is_dir():
        raise InputError(f"{in_dir}: no such directory")
    present = [name for name, folder in folders.items() if folder.is_dir()]
    if not present:
        # Refuse rather than mirror "nothing": a wrong path must not empty the tables.
        raise InputError(
            f"{in_dir}: has neither {ANSWERS_DIR}/ nor {REJECTED_DIR}/ (is it the answering step's output?)"
        )
    if len(present) == 1:
        # Loading half an output would delete the other half's rows from Postgres.
        missing = REJECTED_DIR if present == [ANSWERS_DIR] else ANSWERS_DIR
        raise InputError(
            f"{in_dir}: has {present[0]}/ but no {missing}/ (qa-answer writes both): incomplete output?"
        )


def _refuse_unpaired(in_dir: Path, found: Mapping[str, Mapping[str, object]]) -> None:
    """Refuse a source with only one of its two files.

    qa-answer writes both files of a source (a header-only one when there are no rows) and swaps them in as a
    pair, so a lone file is a partial output: loading it would delete the missing file's rows, or (beside an
    older partner) put one input row in both tables.
    """
    unpaired = [
        f"{name}/{rel}"
        for rel in sorted(found)
        for name in (ANSWERS_DIR, REJECTED_DIR)
        if name in found[rel] and len(found[rel]) == 1
    ]
    if unpaired:
        shown = ", ".join(unpaired[:3]) + (f" and {len(unpaired) - 3} more" if len(unpaired) > 3 else "")
        raise InputError(
            f"{in_dir}: {shown} without the matching {ANSWERS_DIR}/ or {REJECTED_DIR}/ file: {LONE_FILE_HINT}"
        )


def _source(rel: str, files: Mapping[str, tuple[Path, tuple[int, int]]]) -> Source:
    """The source ``rel`` from the (path, stamp) of each of its files found, by folder."""
    answers, rejected = files.get(ANSWERS_DIR), files.get(REJECTED_DIR)
    return Source(
        rel,
        answers[0] if answers else None,
        rejected[0] if rejected else None,
        (answers[1] if answers else None, rejected[1] if rejected else None),
    )


def _csv_files(folder: Path) -> Iterator[tuple[Path, str, tuple[int, int]]]:
    """(path, posix path relative to ``folder``, stamp) of every regular ``*.csv`` file below it (any case).

    One stat per file (the walk's directory entries already tell files from folders), so scanning thousands
    of files stays cheap; symlinked folders are not entered, file links are followed. A ``*.csv`` path over
    PATH_MAX is refused (see :func:`_refuse_long_path`); any other file is ignored with a warning.
    """

    def ignore(rel: bytes) -> None:
        path = folder / os.fsdecode(rel)
        if len(os.fsencode(path)) < MAX_PATH_BYTES:
            log.warning("ignoring %s: not a .csv file", path)
        else:  # e.g. a temporary file a killed qa-answer run left beside a long output name
            shown = clipped_name(rel)
            log.warning("ignoring %r under %s (its path is over PATH_MAX): not a .csv file", shown, folder)

    for file in walk_csv(folder, other=ignore):
        rel = os.fsdecode(file.rel)
        path = folder / rel
        if len(os.fsencode(path)) >= MAX_PATH_BYTES:
            _refuse_long_path(folder, file.rel)
        try:
            st = file.stat()
        except FileNotFoundError:  # a dangling link
            continue
        if stat.S_ISREG(st.st_mode):
            _check_name(folder, rel)
            yield path, rel, (st.st_size, st.st_mtime_ns)


def _refuse_long_path(folder: Path, rel: bytes) -> None:
    """Refuse a file whose path reaches PATH_MAX, naming it by its clipped stand-in (escaped).

    The load reads files by path name, which cannot reach it, and qa-answer never writes such a path (it files
    that input under a short stand-in), so the folder is not qa-answer's output.
    """
    raise InputError(
        f"{folder.name}/ holds a file whose path is longer than PATH_MAX ({MAX_PATH_BYTES} bytes), "
        f"{clipped_name(rel)!r} for short: qa-answer never writes such paths (it files such an input under "
        "a short stand-in name); is IN_DIR the answering step's output?"
    )


def _check_name(folder: Path, rel: str) -> None:
    """Refuse a file name that is not UTF-8: Postgres could not store it as source_file (qa-answer never
    writes one; it files an input with such a name under an escaped stand-in)."""
    try:
        rel.encode(ENCODING)
    except UnicodeEncodeError:
        shown = rel.encode(ENCODING, errors="surrogateescape").decode(ENCODING, errors="backslashreplace")
        raise InputError(
            f"{folder.name}/{shown}: the file name is not valid UTF-8, so it cannot be a source_file; "
            "rename or remove the file (qa-answer never writes such names)"
        ) from None


def file_stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def diff(current: Mapping[str, str | None], loaded: Mapping[str, str]) -> Plan:
    """Compare sources on disk (``current``: name -> digest) with qa_sources (``loaded``: name -> digest).

    A source that ``loaded`` lacks is added whatever its content, so its digest may be None (not computed).
    """
    return Plan(
        unchanged=tuple(sorted(s for s in current if s in loaded and loaded[s] == current[s])),
        added=tuple(sorted(s for s in current if s not in loaded)),
        replaced=tuple(sorted(s for s in current if s in loaded and loaded[s] != current[s])),
        deleted=tuple(sorted(s for s in loaded if s not in current)),
    )
