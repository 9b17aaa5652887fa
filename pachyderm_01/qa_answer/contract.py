"""The on-disk layout the steps share, and the answers-file contract between image 1 and image 2.

The producer owns it; the loader imports only this module (standard library only, never torch).
Layout under the answering pipeline's output (Pachyderm SQL egress style: folder = table)::

    answers/<rel>.csv   one row per answered input row   (ANSWER_COLUMNS)
    rejected/<rel>.csv  one row per row that could not be answered (REJECTED_COLUMNS)

``<rel>`` is the input CSV's path relative to the answering input folder; both files exist for every
input file (possibly header-only) so a loader can tell "no rows" from "not processed". The two files of a
``<rel>`` always come from one run: :func:`replace_pair` removes the old answers file before it renames the
new pair into place, so a run stopped at any instant leaves the old pair, the new pair, or a lone
``rejected/<rel>.csv``, which a loader must refuse (:data:`LONE_FILE_HINT`).

Both images find CSVs with :func:`walk_csv`; qa-answer writes every file through :class:`PendingFile`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ANSWERS_DIR = "answers"
REJECTED_DIR = "rejected"
ENCODING = "utf-8"
CSV_SUFFIX = ".csv"
#: Linux's limits on one path component and on a whole path (PATH_MAX, the terminating NUL included).
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
#: row_number of a rejected row that stands for a whole file that could not be read as CSV.
FILE_LEVEL_ROW = 0

ANSWER_COLUMNS = (
    "source_file",
    "row_number",
    "id",
    "question",
    "context",
    "answer",
    "score",
    "answer_start",
    "answer_end",
    "model",
    "extra",
)
REJECTED_COLUMNS = ("source_file", "row_number", "error", "raw")
#: What a loader says about a lone answers/ or rejected/ file (see :func:`replace_pair`).
LONE_FILE_HINT = (
    "qa-answer writes both files of an input and replaces them as a pair, so a lone file is what a run "
    "stopped while replacing them leaves behind: run qa-answer again"
)
#: Why a file whose path is too long for the file system is not read (by `qa-answer answer`, nor copied by
#: `qa-answer ingest` from a folder).
PATH_TOO_LONG = f"the path is longer than PATH_MAX ({MAX_PATH_BYTES} bytes): move the file"
#: Why a symlinked CSV is not read (`qa-answer ingest` from a folder and `qa-answer answer` share the rule).
LINK_OUTSIDE = "a symlink to a file outside {folder}: not read (see docs/answering.md)"
#: What a temporary name ends with (see :class:`PendingFile`).
TEMP_SUFFIX = ".part"
#: Characters of a name kept by :func:`clipped_name`.
CLIPPED_HEAD = 50


def output_folders(out_dir: Path) -> tuple[Path, Path]:
    """``out_dir``'s answers/ and rejected/ folders."""
    return out_dir / ANSWERS_DIR, out_dir / REJECTED_DIR


def output_paths(out_dir: Path, source_file: str) -> tuple[Path, Path]:
    """The answers/ and rejected/ files of the input ``source_file`` under ``out_dir``."""
    return out_dir / ANSWERS_DIR / source_file, out_dir / REJECTED_DIR / source_file


def is_csv_name(name: str | bytes) -> bool:
    """Whether a file or object name ends in ``.csv``, in any case (every step reads ``x.CSV`` too)."""
    return name.lower().endswith(CSV_SUFFIX if isinstance(name, str) else CSV_SUFFIX.encode())


@dataclass(frozen=True)
class FoundFile:
    """A file named ``*.csv`` found by :func:`walk_csv`; names are bytes, so any name is representable."""

    #: the path relative to the walked folder
    rel: bytes
    #: the path below the walked folder's real path (its own symlink resolved)
    path: bytes
    #: the folder holding the file: open only until the walk moves on, so a path of any length can be stat'ed
    folder_fd: int
    name: bytes

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.folder_fd, follow_symlinks=follow_symlinks)

    def stat_and_link(self) -> tuple[os.stat_result, bool]:
        """The file's status through a symlink, and whether the name is one: a plain file costs one call."""
        st = self.stat(follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            return st, False
        return self.stat(), True


def walk_csv(
    top: Path | bytes, skip: Path | None = None, other: Callable[[bytes], None] | None = None
) -> Iterator[FoundFile]:
    """Every file named ``*.csv`` (any case) below ``top``, folders in name order.

    ``top``'s own symlink is followed (Pachyderm's ``/pfs/<input>`` is a link into its scratch space);
    below it symlinked folders are not entered, while file links are yielded (each caller has its rule for
    them, see :func:`links_outside`). Walking by folder descriptors reaches paths longer than PATH_MAX. The
    folder ``skip`` is not entered (OUT_DIR inside IN_DIR); ``other`` gets the relative path of every other
    file.
    """
    real_top = os.path.realpath(os.fsencode(top))
    skip_id = _folder_id(skip)
    for folder, dirs, files, folder_fd in os.fwalk(real_top):
        dirs[:] = sorted(d for d in dirs if skip_id is None or _folder_id(d, folder_fd) != skip_id)
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, real_top)
            if is_csv_name(name):
                yield FoundFile(rel, path, folder_fd, name)
            elif other is not None:
                other(rel)


def _folder_id(folder: Path | bytes | None, folder_fd: int | None = None) -> tuple[int, int] | None:
    if folder is None:
        return None
    try:
        st = os.stat(folder, dir_fd=folder_fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def clipped_name(rel: bytes) -> str:
    """A short stand-in for a name too long to use or show whole: its start, ``...`` and a digest of it all.

    The start is escaped (undecodable bytes as ``\\xNN``) with ``/`` as ``_``, so the result is one file name:
    qa-answer files an input it cannot name under it (plus ``.csv``), and messages show such a path by it.
    """
    shown = rel.decode(ENCODING, errors="backslashreplace")
    return f"{shown.replace('/', '_')[:CLIPPED_HEAD]}...{hashlib.sha256(rel).hexdigest()[:16]}"


def links_outside(real_root: bytes, path: bytes) -> bool:
    """Whether ``path``, a symlink below the folder whose real path is ``real_root``, resolves outside it.

    The folder itself may be a link (Pachyderm's ``/pfs/<input>`` points into its scratch space): callers pass
    its resolved path, so only links below it are judged.
    """
    return not os.path.realpath(path).startswith(real_root.rstrip(b"/") + b"/")


class PendingFile:
    """A file written under a temporary name beside ``target``, renamed over it only once complete.

    No reader ever sees half a file. The temporary name is short (the target's own may be at the 255-byte
    limit) and not ``*.csv``, so no walker or glob takes it for an input; unless committed, it is removed
    when the ``with`` block ends.
    """

    def __init__(self, target: Path, prefix: str) -> None:
        self.target = target
        self.path = target.parent / f"{prefix}{uuid.uuid4().hex[:16]}{TEMP_SUFFIX}"

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def commit(self) -> None:
        os.replace(self.path, self.target)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def is_temp_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is a :class:`PendingFile` name made with ``prefix``."""
    return name.startswith(prefix) and name.endswith(TEMP_SUFFIX)


def replace_pair(
    answers: PendingFile, rejected: PendingFile, between: Callable[[], None] = lambda: None
) -> None:
    """Move a finished pair of files into place so that no mix of two runs is ever visible.

    Two renames cannot be one atomic step, so the old answers file goes first: an interruption after that
    leaves ``rejected`` without ``answers`` (refused by the loader, repaired by the next run), never the old
    answers beside the new rejections, which would put a row in both tables. ``between`` runs between the
    two renames (a fault point for tests).
    """
    answers.target.unlink(missing_ok=True)
    rejected.commit()
    between()
    answers.commit()


@dataclass(frozen=True)
class AnswerRow:
    """One answered input row; ``context[answer_start:answer_end] == answer``."""

    source_file: str
    row_number: int
    id: str
    question: str
    context: str
    answer: str
    score: float
    answer_start: int
    answer_end: int
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> list[str]:
        return [
            self.source_file,
            str(self.row_number),
            self.id,
            self.question,
            self.context,
            self.answer,
            repr(float(self.score)),
            str(self.answer_start),
            str(self.answer_end),
            self.model,
            json.dumps(self.extra, ensure_ascii=False, sort_keys=True),
        ]


@dataclass(frozen=True)
class RejectedRow:
    """One input row (or, with ``row_number == FILE_LEVEL_ROW``, a whole file) that was not answered."""

    source_file: str
    row_number: int
    error: str
    raw: str

    def to_record(self) -> list[str]:
        return [self.source_file, str(self.row_number), self.error, self.raw]


def escape_raw(data: bytes | str, limit: int = 2000) -> str:
    """Printable, NUL-free text for the ``raw`` column (Postgres text cannot hold NUL).

    Undecodable bytes and control characters other than tab/newline become ``\\xNN``; long input is cut.
    """
    text = data.decode(ENCODING, errors="backslashreplace") if isinstance(data, bytes) else data
    out = []
    for ch in text[:limit]:
        if ch in "\t\n\r" or (ch >= " " and ch != "\x7f"):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    if len(text) > limit:
        out.append(f"...[{len(text) - limit} more chars]")
    return "".join(out)


class _ContractWriter:
    """``csv.writer`` in the contract's dialect (minimal quoting, "\n" line ends) that also quotes a lone CR.

    Before Python 3.13 the writer quotes only the line terminator's characters, so a field holding "\r" but no
    "\n" went out bare and every CSV reader (Python's, PostgreSQL's COPY) split the record there. Such rows
    are written with every field quoted; readers see the same values (an empty quoted field still reads as
    empty, and pg-load's COPY turns an empty ``extra`` into NULL either way).
    """

    def __init__(self, stream: TextIO):
        self._minimal = csv.writer(stream, lineterminator="\n")
        self._quoted = csv.writer(stream, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, record: Iterable[Any]) -> Any:
        record = list(record)
        bare_cr = any(isinstance(field, str) and "\r" in field and "\n" not in field for field in record)
        return (self._quoted if bare_cr else self._minimal).writerow(record)


def csv_writer(stream: TextIO, columns: Iterable[str]) -> _ContractWriter:
    """A writer in the contract's dialect with the header already written (rows can stream in)."""
    writer = _ContractWriter(stream)
    writer.writerow(list(columns))
    return writer


def dumps(columns: Iterable[str], records: Iterable[list[str]]) -> str:
    """The CSV text of a header and ``records`` in the contract's dialect (for small files)."""
    buf = io.StringIO()
    writer = csv_writer(buf, columns)
    for record in records:
        writer.writerow(record)
    return buf.getvalue()
