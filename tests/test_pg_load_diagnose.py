"""pg_load.diagnose: the header check done before any byte is sent."""

from __future__ import annotations

import io

import pytest
from pg_load.diagnose import RowError, check_header
from qa_answer.contract import ANSWER_COLUMNS, AnswerRow, dumps


def answers_csv(source: str, n: int = 2, **overrides: str) -> bytes:
    records = []
    for i in range(1, n + 1):
        record = AnswerRow(
            source, i, f"id{i}", "Who?", "Ann was here.", "Ann", 0.5, 0, 3, "m", {"k": i}
        ).to_record()
        records.append(record)
    for column, value in overrides.items():
        records[0][ANSWER_COLUMNS.index(column)] = value
    return dumps(ANSWER_COLUMNS, records).encode()


@pytest.mark.parametrize(
    ("data", "rest"),
    [
        (answers_csv("a.csv", 1), b"a.csv,1,"),
        (answers_csv("a.csv", 0), b""),
        (answers_csv("a.csv", 1).replace(b"\n", b"\r\n"), b"a.csv,1,"),
        (",".join(ANSWER_COLUMNS).encode(), b""),  # no line end at all
    ],
)
def test_header_check_reads_only_the_header_line(data, rest):
    fh = io.BytesIO(data)
    assert (
        check_header("answers/a.csv", fh, ANSWER_COLUMNS).rstrip(b"\r\n") == ",".join(ANSWER_COLUMNS).encode()
    )
    assert fh.read(len(rest)) == rest


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "answers/a.csv: empty file: expected the header source_file,row_number,id,"),
        (
            b"question,context\nq,c\n",
            "answers/a.csv: unexpected header 'question,context', expected 'source_file,",
        ),
        (
            answers_csv("a.csv", 1).replace(b",extra", b",extra,more"),
            "answers/a.csv: unexpected header 'source_",
        ),
        (b"\xef\xbb\xbf" + answers_csv("a.csv", 1), "answers/a.csv: unexpected header '\\ufeffsource_file,"),
    ],
)
def test_header_check_names_the_file_and_what_it_found(data, message):
    with pytest.raises(RowError) as err:
        check_header("answers/a.csv", io.BytesIO(data), ANSWER_COLUMNS)
    assert str(err.value).startswith(message), str(err.value)
