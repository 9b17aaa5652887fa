"""The answers-file contract between image 1 (producer) and image 2 (loader).

The producer owns it; the loader imports only this module (standard library only, never torch).
Layout under the answering pipeline's output (Pachyderm SQL egress style: folder = table)::

    answers/<rel>.csv   one row per answered input row   (ANSWER_COLUMNS)
    rejected/<rel>.csv  one row per row that could not be answered (REJECTED_COLUMNS)

``<rel>`` is the input CSV's path relative to the answering input folder; both files exist for every
input file (possibly header-only) so a loader can tell "no rows" from "not processed". The two files of a
``<rel>`` always come from one run: :func:`replace_pair` removes the old answers file before it renames the
new pair into place, so a run stopped at any instant leaves the old pair, the new pair, or a lone
``rejected/<rel>.csv``, which a loader must refuse (:data:`LONE_FILE_HINT`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

CONTRACT_VERSION = 1
ANSWERS_DIR = "answers"
REJECTED_DIR = "rejected"
ENCODING = "utf-8"
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


def replace_pair(
    new_answers: Path,
    new_rejected: Path,
    answers: Path,
    rejected: Path,
    between: Callable[[], None] = lambda: None,
) -> None:
    """Move a finished pair of files into place so that no mix of two runs is ever visible.

    Two renames cannot be one atomic step, so the old answers file goes first: an interruption after that
    leaves ``rejected`` without ``answers`` (refused by the loader, repaired by the next run), never the old
    answers beside the new rejections, which would put a row in both tables. ``between`` runs between the
    two renames (a fault point for tests).
    """
    answers.unlink(missing_ok=True)
    os.replace(new_rejected, rejected)
    between()
    os.replace(new_answers, answers)


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

    @classmethod
    def from_record(cls, record: dict[str, str]) -> AnswerRow:
        return cls(
            source_file=record["source_file"],
            row_number=int(record["row_number"]),
            id=record["id"],
            question=record["question"],
            context=record["context"],
            answer=record["answer"],
            score=float(record["score"]),
            answer_start=int(record["answer_start"]),
            answer_end=int(record["answer_end"]),
            model=record["model"],
            extra=json.loads(record["extra"]) if record["extra"] else {},
        )


@dataclass(frozen=True)
class RejectedRow:
    """One input row (or, with ``row_number == FILE_LEVEL_ROW``, a whole file) that was not answered."""

    source_file: str
    row_number: int
    error: str
    raw: str

    def to_record(self) -> list[str]:
        return [self.source_file, str(self.row_number), self.error, self.raw]

    @classmethod
    def from_record(cls, record: dict[str, str]) -> RejectedRow:
        return cls(record["source_file"], int(record["row_number"]), record["error"], record["raw"])


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


def write_csv(stream: TextIO, columns: Iterable[str], records: Iterable[list[str]]) -> int:
    """Write a header and records in the contract's dialect; returns the number of records."""
    writer = csv_writer(stream, columns)
    count = 0
    for record in records:
        writer.writerow(record)
        count += 1
    return count


def read_answers(stream: TextIO) -> Iterator[AnswerRow]:
    for record in _read(stream, ANSWER_COLUMNS):
        yield AnswerRow.from_record(record)


def read_rejected(stream: TextIO) -> Iterator[RejectedRow]:
    for record in _read(stream, REJECTED_COLUMNS):
        yield RejectedRow.from_record(record)


def _read(stream: TextIO, columns: tuple[str, ...]) -> Iterator[dict[str, str]]:
    reader = csv.DictReader(stream)
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"unexpected header {reader.fieldnames!r}, expected {list(columns)!r}")
    yield from reader


def dumps(columns: Iterable[str], records: Iterable[list[str]]) -> str:
    """The CSV text for ``records`` (handy for tests and small files)."""
    buf = io.StringIO()
    write_csv(buf, columns, records)
    return buf.getvalue()
