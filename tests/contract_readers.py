"""Read the contract's answers/ and rejected/ files back into rows: what tests check outputs with.

The pipeline itself never reads these files as rows (pg-load hands them to PostgreSQL's COPY).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from qa_answer.contract import (
    ANSWER_COLUMNS,
    ANSWERS_DIR,
    REJECTED_COLUMNS,
    REJECTED_DIR,
    AnswerRow,
    RejectedRow,
)


def read_outputs(out: Path, relative: str) -> tuple[list[AnswerRow], list[RejectedRow]]:
    """The rows of the answers/ and rejected/ files of the input ``relative`` under ``out``."""
    with (out / ANSWERS_DIR / relative).open(encoding="utf-8", newline="") as stream:
        answers = list(read_answers(stream))
    with (out / REJECTED_DIR / relative).open(encoding="utf-8", newline="") as stream:
        rejected = list(read_rejected(stream))
    return answers, rejected


def read_answers(stream: TextIO) -> Iterator[AnswerRow]:
    for record in _read(stream, ANSWER_COLUMNS):
        yield AnswerRow(
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


def read_rejected(stream: TextIO) -> Iterator[RejectedRow]:
    for record in _read(stream, REJECTED_COLUMNS):
        yield RejectedRow(record["source_file"], int(record["row_number"]), record["error"], record["raw"])


def _read(stream: TextIO, columns: tuple[str, ...]) -> Iterator[dict[str, str]]:
    reader = csv.DictReader(stream)
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"unexpected header {reader.fieldnames!r}, expected {list(columns)!r}")
    yield from reader
