"""pg_load.validate: the answers-file checker names file, record and column."""

from __future__ import annotations

import pytest
from pg_load.validate import RowError, check_answers, check_rejected
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS, AnswerRow, RejectedRow, dumps


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


def test_checker_counts_valid_rows():
    assert check_answers("answers/a.csv", "a.csv", answers_csv("a.csv", 3)) == 3
    rejected = dumps(REJECTED_COLUMNS, [RejectedRow("a.csv", 0, "not CSV", "\\x00garbage").to_record()])
    assert check_rejected("rejected/a.csv", "a.csv", rejected.encode()) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"score": "abc"}, "answers/a.csv: record 1: column 'score': not a number: 'abc'"),
        ({"row_number": "1.5"}, "answers/a.csv: record 1: column 'row_number': not an integer: '1.5'"),
        ({"answer_end": "99999999999"}, "answers/a.csv: record 1: column 'answer_end': integer out of range"),
        ({"answer_start": ""}, "answers/a.csv: record 1: column 'answer_start': not an integer: ''"),
        ({"extra": "{bad"}, "answers/a.csv: record 1: column 'extra': not valid JSON"),
        ({"extra": "[1]"}, "answers/a.csv: record 1: column 'extra': not a JSON object: '[1]'"),
        (
            {"extra": '{"x": NaN}'},
            "answers/a.csv: record 1: column 'extra': not valid JSON: NaN is not valid JSON",
        ),
        ({"extra": '{"x": "a\\u0000b"}'}, "answers/a.csv: record 1: column 'extra': contains \\u0000"),
        ({"extra": '{"x": "\\ud800"}'}, "answers/a.csv: record 1: column 'extra': contains a lone UTF-16"),
        ({"question": "a\x00b"}, "answers/a.csv: record 1: column 'question': contains a NUL character"),
        (
            {"source_file": "other.csv"},
            "answers/a.csv: record 1: column 'source_file': is 'other.csv', expected",
        ),
        ({"row_number": "2"}, "answers/a.csv: record 2: column 'row_number': duplicate row_number 2"),
    ],
)
def test_checker_names_file_record_and_column(overrides, message):
    with pytest.raises(RowError) as err:
        check_answers("answers/a.csv", "a.csv", answers_csv("a.csv", 2, **overrides))
    assert str(err.value).startswith(message)


def test_checker_rejects_bad_files_by_name():
    cases = [
        (b"", "answers/a.csv: empty file: expected the header source_file,row_number,"),
        (b"question,context\nq,c\n", "answers/a.csv: unexpected header ['question', 'context']"),
        (
            answers_csv("a.csv", 1).replace(b"Ann was", b"Ann \xff was"),
            "answers/a.csv: not valid UTF-8 at byte",
        ),
        (answers_csv("a.csv", 1) + b"a.csv,2,x\n", "answers/a.csv: record 2: has 3 fields, expected 11"),
        (answers_csv("a.csv", 1) + b'a.csv,2,"x"y\n', "answers/a.csv: record 2: not valid CSV"),
    ]
    for data, message in cases:
        with pytest.raises(RowError) as err:
            check_answers("answers/a.csv", "a.csv", data)
        assert str(err.value).startswith(message), str(err.value)


def test_checker_accepts_contexts_beyond_csv_default_field_limit():
    big = "word " * 300_000  # 1.5 MB, over csv's 128 KiB default
    data = dumps(ANSWER_COLUMNS, [AnswerRow("a.csv", 1, "", "q", big, "word", 1.0, 0, 4, "m").to_record()])
    assert check_answers("answers/a.csv", "a.csv", data.encode()) == 1
