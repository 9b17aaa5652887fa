"""The CSV reader against a corpus of awkward and broken inputs, generated here byte by byte."""

from __future__ import annotations

import io

import pytest
from qa_answer.csv_input import DEFAULT_MAX_RECORD_BYTES, QuestionRow, RowRejection, read_question_chunks


def read_all(data: bytes, chunk_rows: int = 4) -> tuple[list[QuestionRow], list[RowRejection]]:
    rows: list[QuestionRow] = []
    rejected: list[RowRejection] = []
    for chunk in read_question_chunks(io.BytesIO(data), chunk_rows):
        assert 0 < len(chunk) <= chunk_rows
        rows.extend(chunk.rows)
        rejected.extend(chunk.rejected)
    return rows, rejected


def row_numbers(rows, rejected) -> list[int]:
    return sorted([r.row_number for r in rows] + [r.row_number for r in rejected])


def test_plain_file_with_id_and_extra_columns():
    rows, rejected = read_all(b"id,question,context,lang\n7,Who?,Ada wrote.,en\n8,Where?,In Paris.,fr\n")
    assert rejected == []
    assert rows == [
        QuestionRow(1, "7", "Who?", "Ada wrote.", {"lang": "en"}),
        QuestionRow(2, "8", "Where?", "In Paris.", {"lang": "fr"}),
    ]


def test_bom_crlf_quoted_newlines_and_header_variants():
    data = (
        b'\xef\xbb\xbf  QUESTION ,Context,"Source URL"\r\n'
        b'"Who, exactly?","line one\r\nline two",http://x\r\n'
        b'q2,"say ""hi""",\r\n'
    )
    rows, rejected = read_all(data)
    assert rejected == []
    assert rows == [
        QuestionRow(1, "", "Who, exactly?", "line one\r\nline two", {"Source URL": "http://x"}),
        QuestionRow(2, "", "q2", 'say "hi"', {"Source URL": ""}),
    ]


def test_blank_lines_are_not_records_and_unnamed_columns_get_a_name():
    rows, rejected = read_all(b"question,context,\n\nq1,c1,x\n\n\nq2,c2,y\n")
    assert rejected == []
    assert [(r.row_number, r.question, r.extra) for r in rows] == [
        (1, "q1", {"column_3": "x"}),
        (2, "q2", {"column_3": "y"}),
    ]


GZIP_BYTES = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\xcb\x48\xcd\xc9\xc9\x07\x00\n\x86\xa6"
SEMICOLON_ERROR = (
    "missing required column(s) 'question', 'context'; the header is 'question;context' "
    "(it looks semicolon-separated; only comma-separated files are supported)"
)
TAB_ERROR = (
    "missing required column(s) 'question', 'context'; the header is 'question\\tcontext' "
    "(it looks tab-separated; only comma-separated files are supported)"
)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"", "empty file: no header row", id="empty"),
        pytest.param(b"\xef\xbb\xbf\n\n", "empty file: no header row", id="bom-and-blank-lines"),
        pytest.param(b"question;context\nWho?;Ada.\n", SEMICOLON_ERROR, id="semicolons"),
        pytest.param(b"question\tcontext\nWho?\tAda.\n", TAB_ERROR, id="tabs"),
        pytest.param(
            b"question,text\nWho?,Ada.\n",
            "missing required column(s) 'context'; the header is 'question,text'",
            id="missing-context",
        ),
        pytest.param(
            b"a,b\n1,2\n",
            "missing required column(s) 'question', 'context'; the header is 'a,b'",
            id="missing-both",
        ),
        pytest.param(
            b"Question,context,question \nq,c,q\n",
            "duplicate column 'question' in the header",
            id="duplicate",
        ),
        # a gzip file renamed to .csv: its first "line" holds NUL bytes
        pytest.param(GZIP_BYTES, "binary file: the header row contains NUL bytes", id="gzip"),
        pytest.param(
            bytes(range(0x80, 0x100)) + b"\n",
            "not a UTF-8 text file: undecodable byte 0x80 in the header row",
            id="high-bytes",
        ),
        pytest.param(
            "question,context\nq,c\n".encode("utf-16"),
            "the file is UTF-16 encoded; save it as UTF-8",
            id="utf16",
        ),
        pytest.param(
            b'"question,context\nq,c\n',
            "cannot parse the header row: unexpected end of data",
            id="unterminated-header",
        ),
    ],
)
def test_unreadable_file_gives_one_file_level_rejection(data, error):
    rows, rejected = read_all(data)
    assert rows == []
    assert len(rejected) == 1
    assert rejected[0].row_number == 0
    assert rejected[0].error == error
    assert "\x00" not in rejected[0].raw


def test_header_only_gives_no_rows_and_no_error():
    assert read_all(b"question,context\r\n") == ([], [])
    assert read_all(b"question,context") == ([], [])


def test_bad_rows_are_rejected_one_by_one_with_exact_reasons():
    data = (
        b"question,context,id\n"
        b"Who?,Ada wrote it.,a\n"  # 1 ok
        b"caf\xe9?,latin-1 bytes,b\n"  # 2 latin-1
        b"Who?,too,many,fields\n"  # 3 shape
        b"too few\n"  # 4 shape
        b",no question,c\n"  # 5 empty question
        b"Who?,   ,d\n"  # 6 blank context
        b" , ,e\n"  # 7 both
        b"Who?,nul\x00here,f\n"  # 8 NUL
        b'"bad"quote,c,g\n'  # 9 malformed
        b'Last?,"multi\nline ok",h\n'  # 10 ok
    )
    rows, rejected = read_all(data)
    assert [(r.row_number, r.id, r.context) for r in rows] == [
        (1, "a", "Ada wrote it."),
        (10, "h", "multi\nline ok"),
    ]
    assert [(r.row_number, r.error, r.raw) for r in rejected] == [
        (2, "not UTF-8: undecodable byte 0xe9 in column 'question'", "caf\\xe9?,latin-1 bytes,b"),
        (3, "row has 4 fields, the header has 3", "Who?,too,many,fields"),
        (4, "row has 1 field, the header has 3", "too few"),
        (5, "empty question", ",no question,c"),
        (6, "empty context", "Who?,   ,d"),
        (7, "empty question and context", " , ,e"),
        (8, "NUL character in column 'context'", "Who?,nul\\x00here,f"),
        (9, "malformed CSV: ',' expected after '\"'", '"bad"quote,c,g'),
    ]
    assert row_numbers(rows, rejected) == list(range(1, 11))


def test_whole_latin1_file_rejects_each_row_and_keeps_reconciliation():
    text = "question,context\n" + "".join(f"Où {i}?,à côté {i}\n" for i in range(9))
    rows, rejected = read_all(text.encode("latin-1"), chunk_rows=4)
    assert rows == []
    assert [r.row_number for r in rejected] == list(range(1, 10))
    assert {r.error for r in rejected} == {"not UTF-8: undecodable byte 0xf9 in column 'question'"}
    assert rejected[0].raw == "O\\xf9 0?,\\xe0 c\\xf4t\\xe9 0"


def test_unterminated_quote_swallows_the_rest_into_one_rejected_record():
    rows, rejected = read_all(b'question,context\nq1,c1\nq2,"open\nq3,c3\n')
    assert [r.row_number for r in rows] == [1]
    assert [(r.row_number, r.error) for r in rejected] == [(2, "malformed CSV: unexpected end of data")]
    assert rejected[0].raw == 'q2,"open\nq3,c3'


def test_a_record_of_the_default_limit_is_read_whole_and_one_byte_more_is_rejected():
    record = (
        b"Where?," + ("The river Seine flows through Paris. " * 30000).encode()[: 1024 * 1024 - 8] + b"\n"
    )
    assert len(record) == DEFAULT_MAX_RECORD_BYTES == 1024 * 1024
    rows, rejected = read_all(b"question,context\n" + record + b"W" + record)
    assert len(rows) == 1 and rows[0].context == record[7:-1].decode()
    assert [(r.row_number, r.error) for r in rejected] == [
        (2, "record too large: over 1048576 bytes (the limit is QA_MAX_RECORD_BYTES)")
    ]


def test_a_chunk_never_holds_more_bytes_than_one_record_may():
    data = b"question,context\n" + b"".join(b"q%d,%s\n" % (i, b"c" * 40) for i in range(10))
    chunks = list(read_question_chunks(io.BytesIO(data), chunk_rows=100, max_record_bytes=100))
    assert [len(c.rows) for c in chunks] == [2, 2, 2, 2, 2]  # 45-byte records, 100 bytes a chunk


def test_chunks_are_bounded_and_reconcile_on_a_larger_file():
    lines = [b"question,context"]
    for i in range(1, 1001):
        lines.append(b"q,\n" if i % 10 == 0 else f"q{i},c{i}".encode())
    chunks = list(read_question_chunks(io.BytesIO(b"\n".join(lines) + b"\n"), 64))
    assert max(len(c) for c in chunks) == 64
    answered = sum(len(c.rows) for c in chunks)
    rejected = sum(len(c.rejected) for c in chunks)
    assert (answered, rejected) == (900, 100)
    numbers = [r.row_number for c in chunks for r in c.rows + c.rejected]
    assert sorted(numbers) == list(range(1, 1001))


def test_rejects_a_nonpositive_chunk_size():
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        list(read_question_chunks(io.BytesIO(b"question,context\n"), 0))


def _peak_bytes_reading(rows: int, chunk_rows: int) -> int:
    import tracemalloc

    data = b"question,context\n" + b"".join(
        b"Where is row %d?,Row %d is in the middle of the file.\n" % (i, i) for i in range(rows)
    )
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in read_question_chunks(stream, chunk_rows))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    return peak


def test_memory_does_not_grow_with_file_size():
    small = _peak_bytes_reading(5_000, chunk_rows=100)
    large = _peak_bytes_reading(50_000, chunk_rows=100)
    assert large < 1.5 * small, (small, large)


@pytest.mark.parametrize(
    "text", ["a lone carriage\rreturn", "crlf\r\ninside", "new\nline", "\r", 'quote " and, comma', ""]
)
def test_contract_writer_output_reads_back_field_for_field(text):
    """A question or context read from a quoted field must survive into answers/: a bare CR included."""
    from contract_readers import read_answers
    from qa_answer.contract import ANSWER_COLUMNS, AnswerRow, dumps

    row = AnswerRow("f.csv", 1, "id", text, f"{text} Paris", "Paris", 0.5, 0, 5, "m", {"k": text})
    data = dumps(ANSWER_COLUMNS, [row.to_record()])
    assert list(read_answers(io.StringIO(data, newline=""))) == [row]
    assert data.count("\n") == 2 + 2 * text.count("\n")  # header + one record; no split at the CR


def test_a_quoting_error_in_a_multiline_record_rejects_that_record_only():
    """A strict reader would restart at the next physical line, inside the quoted context, inventing rows."""
    data = (
        b"id,question,context\n"
        b'A1,"Who won?" ,"Report:\nBob, the winner, smiled.\nEnd."\n'  # a space after the closing quote
        b"A2,Who lost?,Carl lost.\n"
    )
    rows, rejected = read_all(data)
    assert [(r.row_number, r.id) for r in rows] == [(2, "A2")]
    assert [(r.row_number, r.error, r.raw) for r in rejected] == [
        (
            1,
            "malformed CSV: ',' expected after '\"'",
            'A1,"Who won?" ,"Report:\nBob, the winner, smiled.\nEnd."',
        )
    ]


def test_a_quoting_error_in_the_header_rejects_the_file():
    rows, rejected = read_all(b'"question" ,context\nq,c\n')
    assert rows == []
    assert [(r.row_number, r.error) for r in rejected] == [
        (0, "cannot parse the header row: ',' expected after '\"'")
    ]


def read_limited(data: bytes, max_record_bytes: int, chunk_rows: int = 4):
    rows, rejected = [], []
    for chunk in read_question_chunks(io.BytesIO(data), chunk_rows, max_record_bytes):
        rows.extend(chunk.rows)
        rejected.extend(chunk.rejected)
    return rows, rejected


TOO_LARGE = "record too large: over 100 bytes (the limit is QA_MAX_RECORD_BYTES)"


@pytest.mark.parametrize(
    ("big", "name"),
    [
        (b'q2,"' + b"x" * 150 + b'\nstill inside, ""quoted"" ,\n"\n', "quoted field spanning lines"),
        (b"q2," + b"y" * 300 + b"\n", "one long unquoted line"),
        (b'q2,"a' + b',"' * 80 + b'"\n', "quotes and commas inside quotes"),
        (b"q2,ab" + b'"' * 3 + b"c" * 200 + b"\n", "stray quotes in an unquoted field"),
        (b'q2,"x' + "é".encode() * 60 + b'"\r\n', "multi-byte characters over the limit in bytes"),
    ],
)
def test_a_record_over_the_size_limit_is_rejected_and_reading_goes_on(big, name):
    data = b"question,context\nq1,c1\n" + big + b"q3,c3\n\nq4,c4"
    rows, rejected = read_limited(data, max_record_bytes=100, chunk_rows=2)
    assert [(r.row_number, r.question) for r in rows] == [(1, "q1"), (3, "q3"), (4, "q4")], name
    assert [(r.row_number, r.error) for r in rejected] == [(2, TOO_LARGE)], name
    assert rejected[0].raw.startswith("q2,")
    assert rejected[0].raw.endswith("...[cut: the record is over 100 bytes]")


def test_a_record_at_the_size_limit_is_read():
    record = b"q1," + b"z" * 96 + b"\n"  # 100 bytes, its line end included
    rows, rejected = read_limited(b"question,context\n" + record + b"q2," + b"z" * 97 + b"\n", 100)
    assert [r.context for r in rows] == ["z" * 96]
    assert [(r.row_number, r.error) for r in rejected] == [(2, TOO_LARGE)]


def test_an_unterminated_quote_over_the_limit_ends_the_file_as_one_rejected_record():
    data = b'question,context\nq1,c1\nq2,"' + b"w" * 500 + b"\nq3,c3\n"
    rows, rejected = read_limited(data, max_record_bytes=100)
    assert [r.row_number for r in rows] == [1]
    assert [(r.row_number, r.error) for r in rejected] == [(2, TOO_LARGE)]


def test_a_header_over_the_size_limit_rejects_the_file():
    rows, rejected = read_limited(b"question,context," + b"h" * 200 + b"\nq,c,x\n", max_record_bytes=100)
    assert rows == []
    assert [(r.row_number, r.error) for r in rejected] == [
        (0, "the header row is too large (over QA_MAX_RECORD_BYTES)")
    ]


def test_whitespace_only_lines_before_the_header_and_between_records_are_blank():
    rows, rejected = read_all(b"  \t \r\n\n \nquestion,context\n   \nq1,c1\n \t\nq2,c2\n")
    assert rejected == []
    assert [(r.row_number, r.question) for r in rows] == [(1, "q1"), (2, "q2")]


def test_an_unnamed_column_never_takes_the_name_of_a_named_one():
    rows, rejected = read_all(b"question,context,,column_3\nWho?,Eve ran.,first,second\n")
    assert rejected == []
    assert rows[0].extra == {"_column_3": "first", "column_3": "second"}
