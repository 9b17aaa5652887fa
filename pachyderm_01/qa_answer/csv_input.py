"""Read a question CSV as a stream of row chunks, turning every bad row into a rejection with a reason.

Pure: works on any binary stream, never touches the file system. Memory stays bounded by one chunk
(plus one record of at most ``max_record_bytes``), whatever the file size or the length of one line.

Policy (documented in docs/answering.md):

* UTF-8 text, comma-separated, RFC 4180 quoting (quoted newlines allowed); a leading BOM is dropped;
  CRLF, LF and CR line ends all work.
* Header names are trimmed and matched case-insensitively; ``question`` and ``context`` are required,
  ``id`` is optional, every other column goes to ``extra`` under its trimmed name.
* A file whose header cannot be used (empty, binary, not UTF-8, wrong delimiter, missing or duplicate
  columns) yields ONE rejection with ``row_number`` 0 and nothing else.
* ``row_number`` counts the records after the header, 1-based; blank lines (empty or whitespace only) are
  not records, and the first non-blank line is the header.
* A record is rejected when it is malformed CSV, has a different number of fields than the header,
  holds bytes that are not UTF-8, holds a NUL character, or has an empty (blank) question or context.
* A record over ``max_record_bytes`` is rejected unparsed, and reading goes on with the next record: its
  end is found by a scan that follows the quoting, as the CSV reader would, holding one piece at a time.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from qa_answer.contract import FILE_LEVEL_ROW, escape_raw

REQUIRED_COLUMNS = ("question", "context")
ID_COLUMN = "id"
#: Rows read and answered at a time by default (``QA_CHUNK_ROWS``): memory stays flat whatever the file size.
DEFAULT_CHUNK_ROWS = 256
#: Largest record accepted by default (bytes of UTF-8, line ends included). The QA core holds ~200 MB of
#: windows per MiB of context (measured), so 1 MiB keeps a run with distilbert-base under 1 GB.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
#: Characters read at a time while skipping an oversized record.
_SKIP_PIECE_CHARS = 1024 * 1024
_DELIMITER_HINTS = {";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class QuestionRow:
    """One well-formed input row, ready for the model."""

    row_number: int
    id: str
    question: str
    context: str
    extra: dict[str, str] = field(default_factory=dict)
    #: the record's original text, for the rejected file should the model fail on it
    raw: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class RowRejection:
    """A row (or, with ``row_number == 0``, the whole file) that cannot be answered, and why."""

    row_number: int
    error: str
    raw: str


@dataclass
class Chunk:
    rows: list[QuestionRow] = field(default_factory=list)
    rejected: list[RowRejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected)


class _RecordTooLarge(Exception):
    pass


class _RecordingLines:
    """Line iterator for ``csv.reader`` that remembers the raw text of the record being parsed.

    It never hands over more than ``max_bytes`` of one record: reads are capped at what is left of the budget,
    and a record that would exceed it raises ``_RecordTooLarge`` out of the reader (which is then dropped).
    """

    def __init__(self, text: io.TextIOBase, max_bytes: int) -> None:
        self._text = text
        self._max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        #: UTF-8 bytes of the record last taken
        self.taken_bytes = 0

    def __iter__(self) -> _RecordingLines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._max_bytes - self._size + 1)
        if not line:
            raise StopIteration
        self._lines.append(line)
        self._size += len(line) if line.isascii() else len(line.encode("utf-8", errors="surrogateescape"))
        if self._size > self._max_bytes:
            raise _RecordTooLarge
        return line

    def take(self) -> str:
        raw = "".join(self._lines)
        self._lines.clear()
        self.taken_bytes, self._size = self._size, 0
        return raw.rstrip("\r\n")

    def skip_record(self) -> str:
        """Read past the end of the record being parsed, without holding it; returns its first characters."""
        head = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        scan = _RecordEnd()
        if scan.feed(head):
            return head[:_RAW_HEAD].rstrip("\r\n")
        while True:
            piece = self._text.readline(_SKIP_PIECE_CHARS)
            if not piece or scan.feed(piece):
                return head[:_RAW_HEAD].rstrip("\r\n")


_RAW_HEAD = 2000
_UNQUOTED_EVENT = re.compile(r',"|[\r\n]')


class _RecordEnd:
    """Finds where a CSV record ends (an unquoted line end), fed its text a piece at a time.

    Follows the reader's lenient quoting rules: a quote opens a quoted field only at the start of a field, a
    doubled quote inside one is a literal quote, and anything after a closing quote joins the field.
    """

    def __init__(self) -> None:
        self._state = "field_start"

    def feed(self, text: str) -> bool:
        """True when the record ends in ``text`` (line pieces end at a line end, so nothing is left over)."""
        pos, end = 0, len(text)
        while pos < end:
            state = self._state
            if state == "quoted":
                close = text.find('"', pos)
                if close < 0:
                    return False
                self._state, pos = "after_quote", close + 1
            elif state in ("field_start", "after_quote"):
                if text[pos] == '"':
                    self._state, pos = "quoted", pos + 1
                else:
                    self._state = "unquoted"
            else:
                event = _UNQUOTED_EVENT.search(text, pos)
                if event is None:
                    if text.endswith(","):
                        self._state = "field_start"  # a quote at the start of the next piece opens a field
                    return False
                if event.group() == ',"':
                    self._state, pos = "quoted", event.end()
                else:
                    return True
        return False


class _HeaderError(Exception):
    pass


@dataclass(frozen=True)
class _Header:
    size: int
    question: int
    context: int
    id: int | None
    extras: tuple[tuple[str, int], ...]


def read_question_chunks(
    stream: BinaryIO, chunk_rows: int = DEFAULT_CHUNK_ROWS, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[Chunk]:
    """Yield chunks of at most ``chunk_rows`` rows (answerable and rejected together) from a CSV stream.

    A chunk also holds at most ``max_record_bytes`` of records (always at least one record).
    """
    _check_limits(chunk_rows, max_record_bytes)
    # surrogateescape keeps undecodable bytes as lone surrogates so one bad row cannot stop the file.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _RecordingLines(text, max_record_bytes)
    # Record boundaries come from a lenient reader (as spreadsheet tools see them); a record with a quoting
    # error is then re-read strictly and rejected. A strict reader alone would drop the rest of the line at
    # the error and resynchronise on the next physical line: inside a quoted multi-line field that invents
    # records and shifts every later row_number.
    reader = csv.reader(lines)
    try:
        header = _read_header(reader, lines)
    except _HeaderError as exc:
        error, raw = exc.args
        yield Chunk(rejected=[RowRejection(FILE_LEVEL_ROW, error, _raw_text(raw))])
        return

    chunk = Chunk()
    chunk_bytes = 0
    row_number = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except _RecordTooLarge:
            row_number += 1
            chunk.rejected.append(_too_large_rejection(row_number, lines, max_record_bytes))
            reader = csv.reader(lines)  # the dropped reader was left inside that record
        except csv.Error as exc:
            # Unreachable while fields are bounded by the record limit; kept so a reader error never passes
            # silently. Where the next record starts is unknown, so nothing after it is trusted.
            row_number += 1
            reason = f"malformed CSV: {exc}; the rest of the file was not read"
            chunk.rejected.append(RowRejection(row_number, reason, _raw_text(lines.take())))
            break
        else:
            raw = lines.take()
            if not raw.strip():
                continue  # a blank line is not a record
            row_number += 1
            if len(chunk) and chunk_bytes + lines.taken_bytes > max_record_bytes:
                # The model's memory follows the bytes of a chunk: never more than one maximal record's.
                yield chunk
                chunk, chunk_bytes = Chunk(), 0
            chunk_bytes += lines.taken_bytes
            _add_record(chunk, record, header, row_number, raw)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk, chunk_bytes = Chunk(), 0
    if len(chunk):
        yield chunk


def _check_limits(chunk_rows: int, max_record_bytes: int) -> None:
    """Refuse limits that would make no progress, and lift the csv module's field limit above the record
    bound, so that a long field is judged by the record bound alone."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if max_record_bytes < 1:
        raise ValueError("max_record_bytes must be at least 1")
    if csv.field_size_limit() <= max_record_bytes:
        csv.field_size_limit(max_record_bytes + 1)  # the record bound is the one that applies


def _too_large_rejection(row_number: int, lines: _RecordingLines, max_record_bytes: int) -> RowRejection:
    """Skip the oversized record being read and reject it with only its head kept, so that memory stays
    bounded and the rejected file still shows which record it was."""
    head = lines.skip_record()
    reason = f"record too large: over {max_record_bytes} bytes (the limit is QA_MAX_RECORD_BYTES)"
    raw = _raw_text(head) + f"...[cut: the record is over {max_record_bytes} bytes]"
    return RowRejection(row_number, reason, raw)


def _add_record(chunk: Chunk, record: list[str], header: _Header, row_number: int, raw: str) -> None:
    """File one non-blank record as a row or a rejection: the strict re-read's quoting complaint comes
    first, so a record with a stray quote is rejected, not answered with the lenient reader's fields."""
    parsed = _quoting_error(raw) or _parse_record(record, header, row_number, raw)
    if isinstance(parsed, str):
        chunk.rejected.append(RowRejection(row_number, parsed, _raw_text(raw)))
    else:
        chunk.rows.append(parsed)


def _read_header(reader: Iterator[list[str]], lines: _RecordingLines) -> _Header:
    """The header's column positions, or ``_HeaderError`` with the one reason the file cannot be read."""
    record, raw = _first_record(reader, lines)
    _check_header_text(record, raw)
    names = [name.strip() for name in record]
    positions = _column_positions(names, raw)
    _check_required_columns(positions, names, raw)
    return _Header(
        size=len(record),
        question=positions["question"],
        context=positions["context"],
        id=positions.get(ID_COLUMN),
        extras=_extra_columns(names),
    )


def _first_record(reader: Iterator[list[str]], lines: _RecordingLines) -> tuple[list[str], str]:
    """The first non-blank record and its raw text: blank lines before the header are not the header."""
    while True:
        try:
            record = next(reader)
        except StopIteration:
            raise _HeaderError("empty file: no header row", lines.take()) from None
        except _RecordTooLarge:
            head = lines.skip_record()
            raise _HeaderError("the header row is too large (over QA_MAX_RECORD_BYTES)", head) from None
        except csv.Error as exc:
            raise _HeaderError(f"cannot parse the header row: {exc}", lines.take()) from None
        raw = lines.take()
        if raw.strip():
            return record, raw


def _check_header_text(record: list[str], raw: str) -> None:
    """Reject a header that is not UTF-8 CSV text (bad quoting, UTF-16, binary, undecodable bytes), so the
    file gets that reason rather than a misleading complaint about missing columns."""
    bad_quoting = _quoting_error(raw)
    if bad_quoting:
        raise _HeaderError(f"cannot parse the header row: {bad_quoting.removeprefix('malformed CSV: ')}", raw)
    joined = ",".join(record)
    if joined.startswith(("\udcff\udcfe", "\udcfe\udcff")):
        raise _HeaderError("the file is UTF-16 encoded; save it as UTF-8", raw)
    if "\x00" in joined:
        raise _HeaderError("binary file: the header row contains NUL bytes", raw)
    bad = _first_undecodable_byte(joined)
    if bad is not None:
        raise _HeaderError(f"not a UTF-8 text file: undecodable byte 0x{bad:02x} in the header row", raw)


def _column_positions(names: list[str], raw: str) -> dict[str, int]:
    """Lower-cased name -> position; a duplicate named column is refused, as one of the two would be lost
    (several unnamed columns are allowed)."""
    positions: dict[str, int] = {}
    for index, name in enumerate(names):
        key = name.lower()
        if key in positions and key:
            raise _HeaderError(f"duplicate column {name!r} in the header", raw)
        positions[key] = index
    return positions


def _check_required_columns(positions: dict[str, int], names: list[str], raw: str) -> None:
    """Name every missing required column, with a hint when the file looks separated by another delimiter
    (the usual reason a header reads as one column)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in positions]
    if not missing:
        return
    listed = ", ".join(repr(name) for name in missing)
    message = f"missing required column(s) {listed}; the header is {_clip(raw)!r}"
    hint = _delimiter_hint(names)
    if hint:
        message += f" (it looks {hint}-separated; only comma-separated files are supported)"
    raise _HeaderError(message, raw)


def _extra_columns(names: list[str]) -> tuple[tuple[str, int], ...]:
    """(name, position) of every column passed through to ``extra``; an unnamed one becomes
    ``column_<position>``, never the name of another column (its value would be lost)."""
    special = {*REQUIRED_COLUMNS, ID_COLUMN}
    taken = {name.lower() for name in names}
    extras = []
    for index, name in enumerate(names):
        if name.lower() in special:
            continue
        if not name:
            name = f"column_{index + 1}"
            while name.lower() in taken:
                name = "_" + name
            taken.add(name.lower())
        extras.append((name, index))
    return tuple(extras)


def _parse_record(record: list[str], header: _Header, row_number: int, raw: str) -> QuestionRow | str:
    """The row, or the reason it cannot be answered."""
    if len(record) != header.size:
        noun = "field" if len(record) == 1 else "fields"
        return f"row has {len(record)} {noun}, the header has {header.size}"
    for index, value in enumerate(record):
        bad = _first_undecodable_byte(value)
        if bad is not None:
            return f"not UTF-8: undecodable byte 0x{bad:02x} in column {_column_name(header, index)!r}"
        if "\x00" in value:
            return f"NUL character in column {_column_name(header, index)!r}"
    question = record[header.question]
    context = record[header.context]
    empty = [name for name, value in (("question", question), ("context", context)) if not value.strip()]
    if empty:
        return "empty " + " and ".join(empty)
    return QuestionRow(
        row_number=row_number,
        id=record[header.id].strip() if header.id is not None else "",
        question=question,
        context=context,
        extra={name: record[index] for name, index in header.extras},
        raw=raw,
    )


def _quoting_error(raw: str) -> str | None:
    """The strict reader's complaint about one record's text (a stray or unterminated quote), if any."""
    if '"' not in raw:
        return None  # only quotes make a strict reader disagree with a lenient one
    try:
        for _ in csv.reader(io.StringIO(raw, newline=""), strict=True):
            pass
    except csv.Error as exc:
        return f"malformed CSV: {exc}"
    return None


def _column_name(header: _Header, index: int) -> str:
    if index == header.question:
        return "question"
    if index == header.context:
        return "context"
    if index == header.id:
        return ID_COLUMN
    return next(name for name, position in header.extras if position == index)


def _first_undecodable_byte(value: str) -> int | None:
    for ch in value:
        if "\udc80" <= ch <= "\udcff":
            return ord(ch) - 0xDC00
    return None


def _delimiter_hint(names: list[str]) -> str | None:
    if len(names) != 1:
        return None
    for delimiter, word in _DELIMITER_HINTS.items():
        parts = {part.strip().lower() for part in names[0].split(delimiter)}
        if set(REQUIRED_COLUMNS) <= parts:
            return word
    return None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _raw_text(raw: str) -> str:
    """The contract's printable form of a raw record, undecodable bytes shown as ``\\xNN``."""
    return escape_raw(raw.encode("utf-8", errors="surrogateescape"))
