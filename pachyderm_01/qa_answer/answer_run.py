"""Answer every row of every CSV under IN_DIR and write the contract's answers/ and rejected/ files.

Each input streams through in chunks (bounded memory); both output files of an input are written to
temporary names in their target folders and renamed into place only when the input is done, so a
killed run never leaves half a file and a re-run simply replaces them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from qa_answer.contract import (
    ANSWER_COLUMNS,
    ANSWERS_DIR,
    ENCODING,
    FILE_LEVEL_ROW,
    REJECTED_COLUMNS,
    REJECTED_DIR,
    AnswerRow,
    RejectedRow,
    csv_writer,
    escape_raw,
)
from qa_answer.csv_input import read_question_chunks
from qa_answer.qa_core import RowFailure
from qa_answer.sources import is_csv_name

log = logging.getLogger(__name__)


class Answerer(Protocol):
    """What the run needs from the QA core (``qa_core.QAModel``)."""

    name: str

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list: ...


@dataclass
class RunSummary:
    files: int = 0
    unreadable_files: int = 0
    rows: int = 0
    answered: int = 0
    rejected: int = 0  # data rows rejected; unreadable files are counted apart
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def anything_rejected(self) -> bool:
        return self.rejected > 0 or self.unreadable_files > 0

    def line(self) -> str:
        return (
            f"summary: files={self.files} unreadable_files={self.unreadable_files} rows={self.rows} "
            f"answered={self.answered} rejected={self.rejected} seconds={self.seconds:.2f} "
            f"rows_per_s={self.rows_per_second:.1f}"
        )


def find_csv_files(in_dir: Path, exclude: Path | None = None) -> list[Path]:
    """``*.csv`` files under ``in_dir`` (sorted, relative), skipping ``exclude`` when it lies inside."""
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for folder, dirs, files in os.walk(in_dir):
        dirs[:] = sorted(d for d in dirs if skip is None or (Path(folder) / d).resolve() != skip)
        for file_name in files:
            path = Path(folder) / file_name
            if is_csv_name(file_name) and path.is_file():
                relative = path.relative_to(in_dir)
                try:
                    relative.as_posix().encode("utf-8")
                except UnicodeEncodeError:  # no answers/ path or source_file can hold non-UTF-8 bytes
                    log.warning("skipping %s: its name is not valid UTF-8; rename the file", ascii(str(path)))
                    continue
                found.append(relative)
    return sorted(found, key=lambda p: p.as_posix())


def answer_folder(
    in_dir: Path,
    out_dir: Path,
    model: Answerer,
    chunk_rows: int,
    progress: bool = False,
    prune: bool = False,
) -> RunSummary:
    """Answer all CSVs under ``in_dir`` into ``out_dir``; returns the counts for the summary line.

    With ``prune``, outputs in ``out_dir`` whose input is gone are removed first, so re-running into the same
    folder mirrors ``in_dir`` (a deleted or renamed input must not stay loadable under its old name).
    """
    started = time.perf_counter()
    summary = RunSummary()
    inputs = find_csv_files(in_dir, exclude=out_dir)
    if prune:
        remove_stale_outputs(out_dir, {p.as_posix() for p in inputs})
    bar = _progress_bar(progress)
    try:
        for index, relative in enumerate(inputs, start=1):
            if bar is not None:
                bar.set_description(f"[{index}/{len(inputs)}] {relative.as_posix()}")
            answer_file(in_dir, relative, out_dir, model, chunk_rows, summary, bar)
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def remove_stale_outputs(out_dir: Path, inputs: set[str]) -> None:
    """Delete the ``answers/`` and ``rejected/`` CSVs of ``out_dir`` whose input is not in ``inputs``."""
    for folder in (out_dir / ANSWERS_DIR, out_dir / REJECTED_DIR):
        if not folder.is_dir():
            continue
        for relative in find_csv_files(folder):
            if relative.as_posix() not in inputs:
                (folder / relative).unlink()
                log.info("removed %s/%s: its input is gone", folder.name, relative.as_posix())


def answer_file(
    in_dir: Path,
    relative: Path,
    out_dir: Path,
    model: Answerer,
    chunk_rows: int,
    summary: RunSummary,
    bar=None,
) -> None:
    """Answer one input file; updates ``summary`` in place."""
    source_file = relative.as_posix()
    answered = rejected = 0
    file_error = None
    with (
        _AtomicCsv(out_dir / ANSWERS_DIR / relative, ANSWER_COLUMNS) as answers,
        _AtomicCsv(out_dir / REJECTED_DIR / relative, REJECTED_COLUMNS) as rejects,
        (in_dir / relative).open("rb") as stream,
    ):
        for chunk in read_question_chunks(stream, chunk_rows):
            # A chunk's rejections (CSV-level, then the model's) are written together, in input order.
            chunk_rejects = []
            for rejection in chunk.rejected:
                if rejection.row_number == FILE_LEVEL_ROW:
                    file_error = rejection.error
                else:
                    rejected += 1
                chunk_rejects.append(
                    RejectedRow(source_file, rejection.row_number, rejection.error, rejection.raw)
                )
            if chunk.rows:
                results = model.answer([r.question for r in chunk.rows], [r.context for r in chunk.rows])
                if len(results) != len(chunk.rows):
                    raise RuntimeError(
                        f"the QA model returned {len(results)} results for {len(chunk.rows)} rows"
                    )
                for row, result in zip(chunk.rows, results, strict=True):
                    if isinstance(result, RowFailure):
                        raw = escape_raw(row.raw)
                        chunk_rejects.append(RejectedRow(source_file, row.row_number, result.reason, raw))
                        rejected += 1
                        continue
                    answers.write(
                        AnswerRow(
                            source_file=source_file,
                            row_number=row.row_number,
                            id=row.id,
                            question=row.question,
                            context=row.context,
                            answer=result.answer,
                            score=result.score,
                            answer_start=result.start,
                            answer_end=result.end,
                            model=model.name,
                            extra=row.extra,
                        )
                    )
                    answered += 1
            for rejected_row in sorted(chunk_rejects, key=lambda r: r.row_number):
                rejects.write(rejected_row)
            if bar is not None:
                bar.update(len(chunk))
    summary.files += 1
    summary.rows += answered + rejected
    summary.answered += answered
    summary.rejected += rejected
    if file_error is not None:
        summary.unreadable_files += 1
        log.warning("%s: file rejected: %s", source_file, file_error)
    else:
        log.info(
            "%s: %d rows, %d answered, %d rejected", source_file, answered + rejected, answered, rejected
        )


class _AtomicCsv:
    """A contract CSV written to a temporary sibling and renamed over ``path`` on success only."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = columns
        self._temp = path.parent / f".qa-answer-{uuid.uuid4().hex[:16]}.part"
        self._stream: IO[str] | None = None
        self._writer = None

    def __enter__(self) -> _AtomicCsv:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self._temp.open("w", encoding=ENCODING, newline="")
        self._writer = csv_writer(self._stream, self.columns)
        return self

    def write(self, row: AnswerRow | RejectedRow) -> None:
        self._writer.writerow(row.to_record())

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._stream is not None
        try:
            if exc_type is None:
                self._stream.flush()
                os.fsync(self._stream.fileno())
            self._stream.close()
            if exc_type is None:
                os.replace(self._temp, self.path)
        finally:
            self._temp.unlink(missing_ok=True)


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=None, unit="row", file=sys.stderr, dynamic_ncols=True)
