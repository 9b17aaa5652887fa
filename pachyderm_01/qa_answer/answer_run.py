"""Answer every row of every CSV under IN_DIR and write the contract's answers/ and rejected/ files.

Each input streams through in chunks (bounded memory); both output files of an input are written to
temporary names in their target folders and swapped into place as a pair only when the input is done
(``contract.replace_pair``), so a killed run never leaves half a file nor a pair mixed from two runs, and
a re-run simply replaces them. An input that cannot be read at all (an unusable name, a symlink out of
IN_DIR, a file that vanished or cannot be opened) becomes one file-level rejection; the run goes on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from qa_answer.contract import (
    ANSWER_COLUMNS,
    CSV_SUFFIX,
    ENCODING,
    FILE_LEVEL_ROW,
    LINK_OUTSIDE,
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    PATH_TOO_LONG,
    REJECTED_COLUMNS,
    REJECTED_DIR,
    AnswerRow,
    FoundFile,
    PendingFile,
    RejectedRow,
    clipped_name,
    csv_writer,
    escape_raw,
    is_temp_name,
    links_outside,
    output_folders,
    output_paths,
    replace_pair,
    walk_csv,
)
from qa_answer.csv_input import DEFAULT_MAX_RECORD_BYTES, read_question_chunks
from qa_answer.errors import OutputError
from qa_answer.faults import NO_FAULTS, Faults
from qa_answer.results import RowFailure, Span

log = logging.getLogger(__name__)

TEMP_PREFIX = ".qa-answer-"


class Answerer(Protocol):
    """What the run needs from the QA core (``qa_core.QAModel``)."""

    name: str

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Span | RowFailure]:
        """One result per row, in order."""
        ...


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


@dataclass(frozen=True)
class InputFile:
    """One ``*.csv`` under IN_DIR, or the stand-in for one that cannot be read (then ``problem`` says why)."""

    #: the outputs' path under answers/ and rejected/ and their ``source_file``: the input's own relative
    #: path, or for a name no output can carry (not UTF-8, too long) an escaped stand-in
    source_file: str
    path: bytes
    problem: str | None = None
    #: the input's relative name as text (undecodable bytes as ``\xNN``): the raw column of its rejection
    shown: str = ""


def find_inputs(in_dir: Path, out_dir: Path | None = None) -> list[InputFile]:
    """Every ``*.csv`` under ``in_dir`` (any case, sorted), skipping ``out_dir`` when it lies inside.

    IN_DIR's own symlink is followed (Pachyderm's ``/pfs/<input>`` is a link into its scratch space); below it
    symlinked folders are not entered, and a file symlink is read only if it points inside IN_DIR. Walking by
    folder descriptors reaches paths longer than PATH_MAX, so they too are reported instead of vanishing.
    """
    top = os.path.realpath(os.fsencode(in_dir))
    found: list[tuple[bytes, bytes, str | None]] = []
    for file in walk_csv(top, skip=out_dir):
        problem = _unreadable_because(top, file)
        if problem != _NOT_A_FILE:
            found.append((file.rel, file.path, problem))
    found.sort()
    taken = {rel.decode(ENCODING) for rel, _, _ in found if _output_name_ok(rel, out_dir)}
    inputs = []
    for rel, path, problem in found:
        shown = rel.decode(ENCODING, errors="backslashreplace")
        if _output_name_ok(rel, out_dir):
            inputs.append(InputFile(shown, path, problem, shown))
            continue
        problem = problem or f"its output path would be longer than PATH_MAX ({MAX_PATH_BYTES} bytes)"
        inputs.append(InputFile(_stand_in(rel, shown, out_dir, taken), path, problem, shown))
    return sorted(inputs, key=lambda item: item.source_file)


_NOT_A_FILE = "not a file"


def _unreadable_because(top: bytes, file: FoundFile) -> str | None:
    """Why ``file``, found below the real path ``top``, cannot be answered."""
    try:
        file.rel.decode(ENCODING)
    except UnicodeDecodeError:
        return "the file name is not valid UTF-8: rename the file"
    if len(file.path) >= MAX_PATH_BYTES:
        return PATH_TOO_LONG
    try:
        st, linked = file.stat_and_link()
    except OSError as exc:
        return f"cannot open the file: {exc.strerror}"  # e.g. a symlink to nothing
    if stat.S_ISDIR(st.st_mode):
        return _NOT_A_FILE
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if linked and links_outside(top, file.path):
        return LINK_OUTSIDE.format(folder="IN_DIR")
    return None


def _output_name_ok(rel: bytes, out_dir: Path | None) -> bool:
    """Whether ``rel`` is valid UTF-8 and ``OUT_DIR/rejected/<rel>`` fits the file system's limits."""
    try:
        rel.decode(ENCODING)
    except UnicodeDecodeError:
        return False
    base = len(os.fsencode(out_dir)) if out_dir is not None else 0
    return base + len(REJECTED_DIR) + len(rel) + 2 < MAX_PATH_BYTES


def _stand_in(rel: bytes, shown: str, out_dir: Path | None, taken: set[str]) -> str:
    """A name the outputs of an unusable input name can carry: its escaped form, or clipped plus a digest."""
    encoded = shown.encode(ENCODING)
    parts_fit = all(len(part) <= MAX_COMPONENT_BYTES for part in encoded.split(b"/"))
    if parts_fit and shown not in taken and _output_name_ok(encoded, out_dir):
        taken.add(shown)
        return shown
    name = f"{clipped_name(rel)}{CSV_SUFFIX}"
    taken.add(name)
    return name


def answer_folder(
    in_dir: Path,
    out_dir: Path,
    model: Answerer,
    chunk_rows: int,
    progress: bool = False,
    prune: bool = False,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    faults: Faults = NO_FAULTS,
) -> RunSummary:
    """Answer all CSVs under ``in_dir`` into ``out_dir``; returns the counts for the summary line.

    Temporary files that killed runs left in ``out_dir`` are removed first. With ``prune``, outputs in
    ``out_dir`` whose input is gone are removed too, so re-running into the same folder mirrors ``in_dir``
    (a deleted or renamed input must not stay loadable under its old name).
    """
    started = time.perf_counter()
    summary = RunSummary()
    inputs = find_inputs(in_dir, out_dir)
    remove_stale_temp_files(out_dir)
    if prune:
        remove_stale_outputs(out_dir, {item.source_file for item in inputs})
    bar = _progress_bar(progress)
    try:
        for index, item in enumerate(inputs, start=1):
            if bar is not None:
                bar.set_description(f"[{index}/{len(inputs)}] {item.source_file}")
            answer_file(item, out_dir, model, chunk_rows, summary, bar, max_record_bytes, faults)
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def remove_stale_outputs(out_dir: Path, inputs: set[str]) -> None:
    """Delete the ``answers/`` and ``rejected/`` CSVs of ``out_dir`` whose input is not in ``inputs``."""
    for folder in output_folders(out_dir):
        if not folder.is_dir():
            continue
        for item in find_inputs(folder):
            if item.source_file not in inputs:
                os.unlink(item.path)
                log.info("removed %s/%s: its input is gone", folder.name, item.source_file)


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete the ``.qa-answer-*.part`` files killed runs left under ``out_dir``'s answers/ and rejected/.

    A running writer holds a lock on its temporary files, so a concurrent run's files are left alone.
    """
    removed = 0
    for folder in output_folders(out_dir):
        for parent, _dirs, files in os.walk(folder):
            for name in files:
                if not is_temp_name(name, TEMP_PREFIX):
                    continue
                path = os.path.join(parent, name)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
                    removed += 1
                except OSError:
                    continue  # locked: a live run is writing it
                finally:
                    os.close(fd)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)


def answer_file(
    item: InputFile,
    out_dir: Path,
    model: Answerer,
    chunk_rows: int,
    summary: RunSummary,
    bar=None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    faults: Faults = NO_FAULTS,
) -> None:
    """Answer one input file; updates ``summary`` in place."""
    problem = item.problem
    stream = None
    if problem is None:
        try:
            stream = open(item.path, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:  # vanished since listed, permission denied, ...
            problem = f"cannot open the file: {exc.strerror}"
    if stream is None:
        _write_unreadable(item, out_dir, problem or "cannot open the file", summary, faults)
        return
    try:
        with stream:
            counts = _answer_stream(item, stream, out_dir, model, chunk_rows, bar, max_record_bytes, faults)
    except _InputReadError as exc:
        _write_unreadable(item, out_dir, f"cannot read the file: {exc}", summary, faults)
        return
    answered, rejected, file_error = counts
    summary.files += 1
    summary.rows += answered + rejected
    summary.answered += answered
    summary.rejected += rejected
    if file_error is not None:
        summary.unreadable_files += 1
        log.warning("%s: file rejected: %s", item.source_file, file_error)
    else:
        log.info(
            "%s: %d rows, %d answered, %d rejected", item.source_file, answered + rejected, answered, rejected
        )


class _InputReadError(Exception):
    """Reading an input failed after it was opened (an I/O error); the message is the system's reason."""


def _write_unreadable(
    item: InputFile, out_dir: Path, problem: str, summary: RunSummary, faults: Faults
) -> None:
    with _OutputPair(out_dir, item.source_file, faults) as outputs:
        outputs.reject(RejectedRow(item.source_file, FILE_LEVEL_ROW, problem, escape_raw(item.shown)))
    summary.files += 1
    summary.unreadable_files += 1
    log.warning("%s: file rejected: %s", item.shown, problem)


def _answer_stream(
    item: InputFile,
    stream: IO[bytes],
    out_dir: Path,
    model: Answerer,
    chunk_rows: int,
    bar,
    max_record_bytes: int,
    faults: Faults,
) -> tuple[int, int, str | None]:
    """Answer one open input into its output pair; returns (answered, rejected, file-level error)."""
    source_file = item.source_file
    answered = rejected = 0
    file_error = None
    with _OutputPair(out_dir, source_file, faults) as outputs:
        chunks = read_question_chunks(_ReadErrors(stream), chunk_rows, max_record_bytes)
        for chunk in chunks:
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
                    outputs.answer(
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
                outputs.reject(rejected_row)
            if bar is not None:
                bar.update(len(chunk))
    return answered, rejected, file_error


class _ReadErrors:
    """A binary input whose I/O errors surface as ``_InputReadError``, never mistaken for output errors."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def close(self) -> None:
        pass  # the caller closes the file

    def flush(self) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except OSError as exc:
            raise _InputReadError(exc.strerror or str(exc)) from None

    def read1(self, size: int = -1) -> bytes:
        try:
            return self._stream.read1(size)
        except OSError as exc:
            raise _InputReadError(exc.strerror or str(exc)) from None

    def readinto(self, buffer) -> int:
        try:
            return self._stream.readinto(buffer)
        except OSError as exc:
            raise _InputReadError(exc.strerror or str(exc)) from None


class _OutputPair:
    """The answers/ and rejected/ files of one input: written to locked temporaries, swapped in as a pair.

    On success both files replace the old pair through ``contract.replace_pair`` (never a visible mix of two
    runs); on any failure both temporary files are removed and the old pair is left as it was. Every output
    failure (a full disk, above all) becomes one ``OutputError`` naming the file.
    """

    def __init__(self, out_dir: Path, source_file: str, faults: Faults) -> None:
        self.targets = output_paths(out_dir, source_file)
        self._faults = faults
        self._pending: list[PendingFile] = []
        self._files: list[IO[str]] = []
        self._sinks: list[IO[str]] = []
        self._writers: list = []

    def __enter__(self) -> _OutputPair:
        target = self.targets[0]
        try:
            for target, columns in zip(self.targets, (ANSWER_COLUMNS, REJECTED_COLUMNS), strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                pending = PendingFile(target, TEMP_PREFIX)
                file = pending.path.open("x", encoding=ENCODING, newline="")
                self._pending.append(pending)
                self._files.append(file)
                # The lock tells remove_stale_temp_files of another run that this file is live.
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._sinks.append(self._faults.output_stream(file))
                self._writers.append(csv_writer(self._sinks[-1], columns))
        except OSError as exc:
            self._discard()
            raise _output_error(target, exc) from None
        return self

    def answer(self, row: AnswerRow) -> None:
        self._write(0, row.to_record())

    def reject(self, row: RejectedRow) -> None:
        self._write(1, row.to_record())

    def _write(self, index: int, record: list[str]) -> None:
        try:
            self._writers[index].writerow(record)
        except OSError as exc:
            self._discard()
            raise _output_error(self.targets[index], exc) from None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        target = self.targets[0]
        try:
            for target, sink, file in zip(self.targets, self._sinks, self._files, strict=True):  # noqa: B007
                sink.flush()
                if sink is not file:
                    file.flush()
                os.fsync(file.fileno())
            for stream in {id(s): s for s in (*self._sinks, *self._files)}.values():
                stream.close()
            target = self.targets[1]
            replace_pair(*self._pending, between=self._faults.between_renames)
        except OSError as exc:
            self._discard()
            raise _output_error(target, exc) from None

    def _discard(self) -> None:
        for stream in (*self._sinks, *self._files):
            with contextlib.suppress(OSError):
                stream.close()  # flushing what a full disk refused fails again: nothing to keep
        for pending in self._pending:
            pending.discard()


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    advice = " (free some space and run again)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return OutputError(f"cannot write {path}: {reason}{advice}; its previous outputs were left as they were")


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=None, unit="row", file=sys.stderr, dynamic_ncols=True)
