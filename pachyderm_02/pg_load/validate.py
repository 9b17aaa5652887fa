"""Check answers/rejected files against the contract before any byte reaches Postgres.

The checked bytes are then COPYed as they are (the files are already CSV in the table's column order), so the
checks mirror what PostgreSQL would refuse — bad integers and floats, JSON it cannot store, NUL characters —
and report them by file, record and column instead of as a failed COPY.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable

from qa_answer.contract import ANSWER_COLUMNS, ENCODING, REJECTED_COLUMNS

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
_INT = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*\Z")
_FLOAT = re.compile(
    r"[ \t]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)[ \t]*\Z", re.IGNORECASE
)
_A = {name: i for i, name in enumerate(ANSWER_COLUMNS)}


class RowError(ValueError):
    """A bad value, named by file (relative to IN_DIR), record (1-based data row in that file) and column."""

    def __init__(self, path: str, reason: str, record: int | None = None, column: str | None = None):
        where = path if record is None else f"{path}: record {record}"
        if column is not None:
            where += f": column {column!r}"
        super().__init__(f"{where}: {reason}")
        self.path, self.record, self.column = path, record, column


def check_answers(path: str, source_file: str, data: bytes) -> int:
    """Validate an answers file; returns its number of data rows. ``source_file`` must match every row."""

    def check_values(count: int, rec: list[str]) -> None:
        _float8(path, count, "score", rec[_A["score"]])
        _int4(path, count, "answer_start", rec[_A["answer_start"]])
        _int4(path, count, "answer_end", rec[_A["answer_end"]])
        if rec[_A["extra"]]:
            _json_object(path, count, "extra", rec[_A["extra"]])

    return _check_rows(path, source_file, data, ANSWER_COLUMNS, check_values)


def check_rejected(path: str, source_file: str, data: bytes) -> int:
    """Validate a rejected file; returns its number of data rows."""
    return _check_rows(path, source_file, data, REJECTED_COLUMNS, lambda count, rec: None)


def _check_rows(
    path: str,
    source_file: str,
    data: bytes,
    columns: tuple[str, ...],
    check_values: Callable[[int, list[str]], None],
) -> int:
    """The checks both tables share (shape, NUL, source_file, unique row_number), then ``check_values``."""
    reader, has_nul = _open(path, data, columns)
    index = {name: i for i, name in enumerate(columns)}
    seen: set[int] = set()
    width = len(columns)
    count = 0
    for count, rec in enumerate(reader, 1):
        if len(rec) != width:
            raise RowError(path, f"has {len(rec)} fields, expected {width}", count)
        if has_nul:
            _no_nul(path, count, rec, columns)
        _same_source(path, count, rec[index["source_file"]], source_file)
        _unique(path, count, _int4(path, count, "row_number", rec[index["row_number"]]), seen)
        check_values(count, rec)
    return count


def _open(path: str, data: bytes, columns: tuple[str, ...]):
    try:
        text = data.decode(ENCODING)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RowError(path, f"not valid UTF-8 at byte {exc.start} (line {line})") from None
    if not text:
        raise RowError(path, f"empty file: expected the header {','.join(columns)}")
    _raise_field_limit()
    # strict: refuse the malformed quoting PostgreSQL's CSV parser would refuse too.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise RowError(path, f"header is not valid CSV: {exc}") from None
    if tuple(header) != columns:
        raise RowError(path, f"unexpected header {header!r}, expected {list(columns)!r}")
    return _records(path, reader), "\x00" in text


def _records(path: str, reader):
    n = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RowError(path, f"not valid CSV: {exc}", n + 1) from None
        n += 1
        yield rec


def _no_nul(path: str, record: int, rec: list[str], columns: tuple[str, ...]) -> None:
    for name, value in zip(columns, rec, strict=True):
        if "\x00" in value:
            raise RowError(path, "contains a NUL character (PostgreSQL text cannot store it)", record, name)


def _same_source(path: str, record: int, value: str, expected: str) -> None:
    if value != expected:
        raise RowError(path, f"is {value!r}, expected {expected!r} (the file's path)", record, "source_file")


def _unique(path: str, record: int, row_number: int, seen: set[int]) -> None:
    if row_number in seen:
        raise RowError(path, f"duplicate row_number {row_number}", record, "row_number")
    seen.add(row_number)


def _int4(path: str, record: int, column: str, value: str) -> int:
    if not _INT.match(value):
        raise RowError(path, f"not an integer: {value[:40]!r}", record, column)
    number = int(value)
    if not INT4_MIN <= number <= INT4_MAX:
        raise RowError(path, f"integer out of range: {value[:40]!r}", record, column)
    return number


def _float8(path: str, record: int, column: str, value: str) -> None:
    if not _FLOAT.match(value):
        raise RowError(path, f"not a number: {value[:40]!r}", record, column)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_object(path: str, record: int, column: str, value: str) -> None:
    try:
        obj = json.loads(value, parse_constant=_reject_constant)
    except ValueError as exc:
        raise RowError(path, f"not valid JSON: {exc}", record, column) from None
    if not isinstance(obj, dict):
        raise RowError(path, f"not a JSON object: {value[:40]!r}", record, column)
    if "\\u" in value:  # escapes can smuggle in what jsonb refuses: \u0000 and lone surrogates
        for text in _strings(obj):
            if "\x00" in text:
                raise RowError(path, "contains \\u0000 (PostgreSQL jsonb cannot store it)", record, column)
            try:
                text.encode(ENCODING)
            except UnicodeEncodeError:
                raise RowError(path, "contains a lone UTF-16 surrogate escape", record, column) from None


def _strings(obj):
    """Every key and string value inside a parsed JSON document."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def _raise_field_limit() -> None:
    # Contexts can be far longer than csv's 128 KiB default field limit.
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
