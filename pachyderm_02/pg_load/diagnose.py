"""Explain a file PostgreSQL refused, by file, record and column, from the server's own diagnostics.

PostgreSQL checks every value while COPY parses it (types, jsonb, UTF-8 and NUL, the tables' constraints) and
reports the line and, for a value it could not read, the column. COPY counts physical lines (a quoted newline
starts a new one), so the line is mapped back to its CSV record by reading the file up to it, one record at a
time: memory stays at one record however large the file. The header is the one thing COPY does not check
(``HEADER true`` skips it), so :func:`check_header` does, before any byte is sent.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import IO

import psycopg2
from qa_answer.contract import ENCODING

#: a server's detail line longer than this (a "Failing row contains (...)" with a long context) is left out
MAX_DETAIL = 200
#: where COPY failed: "COPY <table>, line N[, column C]" (a JSON error adds its own "line 1" before it)
_COPY_LINE = re.compile(r"COPY [^,\n]+, line (\d+)(?:, column (\w+))?")
#: the text of pg_load.sql.copy_csv's per-row source_file check, inside PostgreSQL's cast error
_WRONG_SOURCE = re.compile(r'"source_file (is .*)"\Z', re.S)
#: constraint name suffix -> the column it guards (the key's source_file is checked per row, so a duplicate
#: key is a duplicate row_number)
_CONSTRAINT_COLUMNS = {"_pkey": "row_number", "_extra_check": "extra"}
#: SQLSTATE of "invalid byte sequence" (NUL or bad UTF-8): the server names the line, not the column
_BAD_BYTES = "22021"


class RowError(ValueError):
    """A bad value, named by file (relative to IN_DIR), record (1-based data row in that file) and column."""

    def __init__(
        self,
        path: str,
        reason: str,
        record: int | None = None,
        column: str | None = None,
        line: int | None = None,
    ):
        where = path
        if record is not None:
            where += f": record {record}"
        elif line is not None:
            where += f": line {line}"
        if column is not None:
            where += f": column {column!r}"
        super().__init__(f"{where}: {reason}")
        self.path, self.record, self.column = path, record, column


def describe_db_error(exc: psycopg2.Error, *, detail: bool = False) -> str:
    """The server's message on one line (libpq's span lines), its SQLSTATE and, if asked, a short detail."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    if detail and diag.message_detail and len(diag.message_detail) <= MAX_DETAIL:
        text += f": {diag.message_detail}"
    text = " ".join(text.split())
    return f"{text} (SQLSTATE {exc.pgcode})" if exc.pgcode else text


def check_header(path: str, fh: IO[bytes], columns: tuple[str, ...]) -> bytes:
    """Read the header line from ``fh`` (at most its expected length); RowError unless it is ``columns``."""
    expected = ",".join(columns).encode()
    line = fh.readline(len(expected) + 2)
    if line in (expected, expected + b"\n", expected + b"\r\n"):
        return line
    if not line:
        raise RowError(path, f"empty file: expected the header {expected.decode()}")
    shown = (line + fh.readline(MAX_DETAIL)).splitlines()[0].decode(ENCODING, "replace")
    raise RowError(path, f"unexpected header {shown!r}, expected {expected.decode()!r}")


def copy_error(path: str, exc: psycopg2.Error, file: str | Path, columns: tuple[str, ...]) -> RowError:
    """Name the file, record and column of the row PostgreSQL refused while COPYing ``file``."""
    diag = exc.diag
    reason = describe_db_error(exc, detail=True)
    where = _COPY_LINE.search(diag.context or "")
    if where is None:
        return RowError(path, reason)
    line = int(where.group(1))
    column = where.group(2) or diag.column_name or _constraint_column(diag.constraint_name)
    wrong_source = _WRONG_SOURCE.search(diag.message_primary or "")
    if wrong_source:
        column, reason = "source_file", wrong_source.group(1)
    record, fields = _record_at(file, line)
    if column is None and fields is not None and exc.pgcode == _BAD_BYTES:
        column = next((c for c, v in zip(columns, fields, strict=False) if _bad_text(v)), None)
    return RowError(path, reason, record, column, line)


def _constraint_column(constraint: str | None) -> str | None:
    return next((c for suffix, c in _CONSTRAINT_COLUMNS.items() if (constraint or "").endswith(suffix)), None)


def _record_at(file: str | Path, line: int) -> tuple[int | None, list[str] | None]:
    """The 1-based data record of ``file`` holding physical ``line`` (the header is line 1), and its fields.

    Lines are split at ``\\n`` only, as PostgreSQL counts them; bytes that are not UTF-8 are kept (escaped),
    so the record the server refused for them is still found. (None, None) if the file has no such line.
    """
    if csv.field_size_limit() < 2**31 - 1:  # contexts can be far longer than csv's 128 KiB default
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(file, "rb") as fh:
            reader = csv.reader(raw.decode(ENCODING, "surrogateescape") for raw in fh)
            next(reader, None)  # the header
            found: tuple[int | None, list[str] | None] = (None, None)
            for record, fields in enumerate(reader, 1):
                found = record, fields
                if reader.line_num >= line:
                    return found
            # A quoted field left open runs to the end: the server counts one line past the last.
            return found if reader.line_num == line - 1 else (None, None)
    except (OSError, csv.Error):  # gone or unreadable since: the line number still names the place
        return None, None


def _bad_text(value: str) -> bool:
    """True for a field PostgreSQL text cannot hold: a NUL, or bytes that were not UTF-8."""
    try:
        value.encode(ENCODING)
    except UnicodeEncodeError:
        return True
    return "\x00" in value
