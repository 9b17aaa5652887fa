"""pg-load on a real PostgreSQL: exact mirror, idempotent reruns, crashes, concurrent loaders, bad input."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from pg_load.cli import main, run
from pg_load.diagnose import RowError
from pg_load.settings import LoadSettings
from pg_load.store import LoadError
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS, AnswerRow, RejectedRow, dumps


def answer(source: str, n: int, context: str = "Ann lives in Paris.", **kw) -> AnswerRow:
    fields = dict(id=f"id{n}", question="Where?", answer="Paris", score=0.5, model="tiny@rev", extra={"n": n})
    fields.update(kw)
    start = context.find(fields["answer"])
    return AnswerRow(
        source, n, context=context, answer_start=start, answer_end=start + len(fields["answer"]), **fields
    )


def write_source(root: Path, source: str, answers: list[AnswerRow], rejected: list[RejectedRow] = ()) -> None:
    for folder, columns, rows in (
        ("answers", ANSWER_COLUMNS, answers),
        ("rejected", REJECTED_COLUMNS, rejected),
    ):
        path = root / folder / source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(columns, [r.to_record() for r in rows]), encoding="utf-8")


def remove_source(root: Path, source: str) -> None:
    (root / "answers" / source).unlink()
    (root / "rejected" / source).unlink()


def expected_from_files(root: Path) -> dict:
    """What the tables must hold: the union of all answers/ and rejected/ files."""
    from contract_readers import read_answers, read_rejected

    answers, rejected = set(), set()
    for path in (root / "answers").rglob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            for r in read_answers(fh):
                answers.add(
                    (
                        r.source_file,
                        r.row_number,
                        r.id,
                        r.question,
                        r.context,
                        r.answer,
                        r.score,
                        r.answer_start,
                        r.answer_end,
                        r.model,
                        json.dumps(r.extra, sort_keys=True),
                    )
                )
    for path in (root / "rejected").rglob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            rejected.update((r.source_file, r.row_number, r.error, r.raw) for r in read_rejected(fh))
    return {"answers": answers, "rejected": rejected}


def table_state(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT source_file, row_number, id, question, context, answer, score, answer_start, answer_end, "
            "model, extra FROM qa_answers"
        )
        answers = [(*row[:10], json.dumps(row[10], sort_keys=True)) for row in cur.fetchall()]
        cur.execute("SELECT source_file, row_number, error, raw FROM qa_rejected")
        rejected = cur.fetchall()
    assert len(answers) == len(set(answers)) and len(rejected) == len(set(rejected))  # no duplicates
    return {"answers": set(answers), "rejected": set(rejected)}


def row_versions(conn) -> dict:
    """xmin and loaded_at of every row: unchanged only if nothing was rewritten."""
    out = {}
    with conn.cursor() as cur:
        for table in ("qa_answers", "qa_rejected", "qa_sources", "schema_migrations"):
            cur.execute(f"SELECT xmin::text, * FROM {table}")
            out[table] = sorted(map(str, cur.fetchall()))
    return out


def settings(db, in_dir: Path, **kw) -> LoadSettings:
    return LoadSettings.from_args(in_dir, db.env, **kw)


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "qa-answer"
    write_source(
        root,
        "a.csv",
        [answer("a.csv", 1), answer("a.csv", 2)],
        [RejectedRow("a.csv", 3, "empty question", ",ctx")],
    )
    write_source(root, "sub/b.csv", [answer("sub/b.csv", 1, id="")])
    return root


def test_load_reload_change_delete_add_keeps_an_exact_mirror(pg_database, tree):
    db = pg_database.connect()
    first = run(settings(pg_database, tree, pach_job_id="job-1", input_commit="c1"))
    p = first.result.plan
    assert (p.added, p.replaced, p.deleted, first.result.rows_written) == (("a.csv", "sub/b.csv"), (), (), 4)
    assert table_state(db) == expected_from_files(tree)

    before = row_versions(db)
    again = run(settings(pg_database, tree, pach_job_id="job-2"))
    assert again.result.plan.unchanged == ("a.csv", "sub/b.csv") and again.result.rows_written == 0
    assert row_versions(db) == before  # not one row rewritten, not even provenance

    # change one row of a.csv, delete b.csv, add c.csv
    write_source(tree, "a.csv", [answer("a.csv", 1), answer("a.csv", 2, answer="Ann")], [])
    remove_source(tree, "sub/b.csv")
    write_source(
        tree, "c.csv", [answer("c.csv", 7)], [RejectedRow("c.csv", 0, "not a CSV file", "\\x00\\x01")]
    )
    third = run(settings(pg_database, tree, pach_job_id="job-3", input_commit="c3"))
    p = third.result.plan
    assert (p.unchanged, p.added, p.replaced, p.deleted) == ((), ("c.csv",), ("a.csv",), ("sub/b.csv",))
    assert table_state(db) == expected_from_files(tree)
    with db.cursor() as cur:
        cur.execute(
            "SELECT source_file, answer_rows, rejected_rows, pach_job_id, input_commit FROM qa_sources"
        )
        assert sorted(cur.fetchall()) == [("a.csv", 2, 0, "job-3", "c3"), ("c.csv", 1, 1, "job-3", "c3")]
        # the unchanged row 1 of a.csv kept its first load time; the changed row 2 got a new one
        cur.execute("SELECT row_number, loaded_at FROM qa_answers WHERE source_file = 'a.csv' ORDER BY 1")
        (_, t1), (_, t2) = cur.fetchall()
        assert t2 > t1
        cur.execute("SELECT count(*), min(pach_job_id) FROM qa_answers_with_provenance")
        assert cur.fetchone() == (3, "job-3")
    db.close()


def test_cli_prints_summary_and_rejects_nul_by_name_leaving_the_previous_state(
    pg_database, tree, monkeypatch, capsys
):
    for key, value in pg_database.env.items():
        monkeypatch.setenv(key, value)
    assert main([str(tree), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "pg-load: files unchanged=0 added=2 replaced=0 deleted=0; rows read=4 (answers=3 rejected=1)"
    )
    assert "written=4; seconds=" in out and "rows/s=" in out

    db = pg_database.connect()
    previous = table_state(db)
    write_source(tree, "a.csv", [answer("a.csv", 1), answer("a.csv", 2, question="Wh\x00ere?")])
    assert main([str(tree), "-q"]) == 1
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["message"] == (
        "answers/a.csv: record 2: column 'question': "
        'invalid byte sequence for encoding "UTF8": 0x00 (SQLSTATE 22021)'
    )
    assert table_state(db) == previous

    write_source(tree, "a.csv", [answer("a.csv", 1)])
    (tree / "answers/a.csv").write_text((tree / "answers/a.csv").read_text().replace(",13,18,", ",13,eight,"))
    assert main([str(tree), "-q"]) == 1
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error == {
        "severity": "ERROR",
        "error": "RowError",
        "message": "answers/a.csv: record 1: column 'answer_end': "
        'invalid input syntax for type integer: "eight" (SQLSTATE 22P02)',
    }
    assert table_state(db) == previous
    db.close()


HOSTILE = [
    'it\'s "quoted", with, commas',
    "back\\slash \\N \\. \\\\ and a tab\there",
    "'); DROP TABLE qa_answers; --",
    "line one\nline two\r\nline three\rend",
    "a lone carriage\rreturn",  # quoted by Python 3.13's csv writer, not by 3.11/3.12's unless told
    "\\.",
    "unicode: café naïve 日本語 עברית 🙂 e\u0301 \u200b zero-width \ufeff bom",
    "   leading and trailing spaces   ",
    "",
]


def test_hostile_text_round_trips_byte_for_byte(pg_database, tmp_path):
    root = tmp_path / "qa-answer"
    rows = []
    for n, text in enumerate(HOSTILE, 1):
        context = f"{text} Paris"
        rows.append(
            answer(
                "weird 'name'; DROP.csv",
                n,
                context=context,
                id=text,
                question=text,
                model=text,
                extra={text or "empty": text, "nested": [text, {"k": text}]},
            )
        )
    write_source(
        root, "weird 'name'; DROP.csv", rows, [RejectedRow("weird 'name'; DROP.csv", 99, *HOSTILE[2:4])]
    )
    run(settings(pg_database, root))
    db = pg_database.connect()
    assert table_state(db) == expected_from_files(root)
    with db.cursor() as cur:
        cur.execute("SELECT question, context, extra FROM qa_answers ORDER BY row_number")
        got = cur.fetchall()
        cur.execute("SELECT to_regclass('qa_answers') IS NOT NULL")
        assert cur.fetchone() == (True,)
    assert [g[0] for g in got] == HOSTILE
    assert [g[1].encode() for g in got] == [f"{t} Paris".encode() for t in HOSTILE]
    assert got[0][2] == {HOSTILE[0]: HOSTILE[0], "nested": [HOSTILE[0], {"k": HOSTILE[0]}]}
    db.close()


@pytest.mark.parametrize("kill_at", ["locked", "staged", "applied"])
def test_connection_killed_mid_load_keeps_previous_state_and_the_retry_completes(pg_database, tree, kill_at):
    run(settings(pg_database, tree))
    observer = pg_database.connect()
    previous = table_state(observer)
    write_source(tree, "a.csv", [answer("a.csv", 1, answer="Ann")])
    write_source(tree, "new.csv", [answer("new.csv", 1)])
    steps, seen_after_kill = [], []

    def kill(step: str, attempt: int, pid: int) -> None:
        steps.append((step, attempt))
        if attempt == 1 and step == kill_at:
            with observer.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                for _ in range(100):
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                    if cur.fetchone() == (0,):
                        break
                    time.sleep(0.05)
        if attempt == 2 and step == "locked":
            seen_after_kill.append(table_state(observer))

    summary = run(settings(pg_database, tree), on_step=kill, sleep=lambda s: None)
    assert summary.result.attempts == 2
    assert seen_after_kill == [previous]  # the killed transaction left nothing behind
    assert ("applied", 1) not in steps if kill_at != "applied" else True
    assert table_state(observer) == expected_from_files(tree)
    observer.close()


def test_connection_killed_without_retries_left_fails_cleanly(pg_database, tree):
    run(settings(pg_database, tree))
    observer = pg_database.connect()
    previous = table_state(observer)
    remove_source(tree, "a.csv")

    def kill(step: str, attempt: int, pid: int) -> None:
        if step == "staged":
            with observer.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            time.sleep(0.2)

    with pytest.raises(
        LoadError, match=r"giving up after 2 attempts: terminating connection|giving up after 2"
    ):
        run(settings(pg_database, tree, max_attempts=2), on_step=kill, sleep=lambda s: None)
    assert table_state(observer) == previous
    observer.close()


def test_two_loaders_at_once_end_in_the_same_state_without_duplicates(pg_database, tree):
    for i in range(3):
        write_source(tree, f"more/{i}.csv", [answer(f"more/{i}.csv", n) for n in range(1, 30)])
    observer = pg_database.connect()
    first_locked = threading.Event()
    results, errors = {}, []

    def hold_lock_until_other_waits(step: str, attempt: int, pid: int) -> None:
        if step != "locked":
            return
        first_locked.set()
        with observer.cursor() as cur:
            for _ in range(200):  # until the second loader queues on our advisory lock
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if cur.fetchone()[0] >= 1:
                    return
                time.sleep(0.05)
        errors.append("second loader never waited on the lock")

    def load(name: str, hook) -> None:
        try:
            results[name] = run(settings(pg_database, tree), on_step=hook)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    a = threading.Thread(target=load, args=("a", hold_lock_until_other_waits))
    a.start()
    assert first_locked.wait(30)
    b = threading.Thread(target=load, args=("b", None))
    b.start()
    a.join(60)
    b.join(60)
    assert errors == []
    assert len(results["a"].result.plan.added) == 5 and results["a"].result.rows_written == 3 + 1 + 3 * 29
    assert len(results["b"].result.plan.unchanged) == 5 and results["b"].result.rows_written == 0
    assert table_state(observer) == expected_from_files(tree)
    observer.close()


def test_wrong_source_file_column_is_named_not_silently_misfiled(pg_database, tree):
    path = tree / "answers/sub/b.csv"
    path.write_text(path.read_text().replace("\nsub/b.csv,1,", "\na.csv,1,"))
    with pytest.raises(Exception) as err:
        run(settings(pg_database, tree))
    assert str(err.value).startswith(
        "answers/sub/b.csv: record 1: column 'source_file': is 'a.csv', expected 'sub/b.csv'"
    )
    db = pg_database.connect()
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('qa_answers')")
        assert cur.fetchone() == (None,)  # even the migration rolled back
    db.close()


def test_unreachable_database_is_retried_then_reported(tmp_path, tree):
    env = {
        "PG_HOST": str(tmp_path),
        "PG_PORT": "1",
        "PG_DBNAME": "x",
        "PG_USER": "u",
        "PG_SSLMODE": "disable",
    }
    sleeps = []
    with pytest.raises(LoadError) as err:
        run(LoadSettings.from_args(tree, env, max_attempts=3), sleep=sleeps.append)
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.5
    assert str(err.value).startswith(
        f"u@{tmp_path}:1/x (sslmode=disable): giving up after 3 attempts in 0s: connection"
    )
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host=str(tmp_path), port=1, dbname="x")


def test_a_file_rewritten_during_the_load_is_not_recorded(pg_database, tree):
    def rewrite(step: str, attempt: int, pid: int) -> None:
        if step == "locked":
            write_source(tree, "a.csv", [answer("a.csv", 1, answer="Ann")])

    with pytest.raises(LoadError, match=r"^a\.csv: changed while loading; run pg-load again$"):
        run(settings(pg_database, tree, max_attempts=1), on_step=rewrite)
    run(settings(pg_database, tree))  # the next run loads what is there now
    db = pg_database.connect()
    assert table_state(db) == expected_from_files(tree)
    db.close()


def test_megabyte_contexts_stream_through(pg_database, tmp_path):
    root = tmp_path / "qa-answer"
    context = "word " * 220_000 + "Paris"  # ~1.1 MB: more than one 1 MiB COPY chunk
    write_source(root, "big.csv", [answer("big.csv", 1, context=context), answer("big.csv", 2)])
    summary = run(settings(pg_database, root))
    assert summary.result.answer_rows == 2
    db = pg_database.connect()
    with db.cursor() as cur:
        cur.execute("SELECT length(context), answer_start FROM qa_answers WHERE row_number = 1")
        assert cur.fetchone() == (len(context), context.index("Paris"))
    db.close()


def test_a_duplicate_row_number_is_named_on_a_first_load_a_later_one_and_a_replace(pg_database, tree):
    """A first load builds the key after the COPY; a duplicate row_number is still named by its line."""
    duplicate = [answer("dup.csv", 1), answer("dup.csv", 1, id="again")]
    message = (
        "answers/{1}: record 2: column 'row_number': duplicate key value violates unique constraint "
        '"{0}_pkey": Key (source_file, row_number)=({1}, 1) already exists. (SQLSTATE 23505)'
    )
    write_source(tree, "dup.csv", duplicate)
    with pytest.raises(RowError) as err:
        run(settings(pg_database, tree))
    assert str(err.value) == message.format("qa_answers", "dup.csv")
    db = pg_database.connect()
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('qa_answers')")
        assert cur.fetchone() == (None,)  # nothing committed

    remove_source(tree, "dup.csv")
    run(settings(pg_database, tree))
    with db.cursor() as cur:
        cur.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'qa_answers'::regclass AND contype = 'p'"
        )
        assert cur.fetchall() == [("qa_answers_pkey", "PRIMARY KEY (source_file, row_number)")]
    previous = table_state(db)
    write_source(tree, "dup.csv", duplicate)  # a later load COPYs into the existing table
    with pytest.raises(RowError) as err:
        run(settings(pg_database, tree))
    assert str(err.value) == message.format("qa_answers", "dup.csv")
    assert table_state(db) == previous

    remove_source(tree, "dup.csv")
    write_source(tree, "a.csv", [answer("a.csv", 1), answer("a.csv", 1, id="again")])  # a replaced source
    with pytest.raises(RowError) as err:
        run(settings(pg_database, tree))
    assert str(err.value) == message.format("pg_load_stage_qa_answers", "a.csv")
    assert table_state(db) == previous
    db.close()


def test_a_replaced_file_with_another_sources_row_is_named(pg_database, tree):
    """The per-row source_file check also guards the staged (replace) path; names are quoted safely."""
    name = "back\\slash 'quote'.csv"
    write_source(tree, name, [answer(name, 1)])
    run(settings(pg_database, tree))
    db = pg_database.connect()
    previous = table_state(db)
    write_source(tree, name, [answer(name, 1, id="new"), answer("a.csv", 2)])
    with pytest.raises(RowError) as err:
        run(settings(pg_database, tree))
    assert str(err.value).startswith(f"answers/{name}: record 2: column 'source_file': is 'a.csv'")
    assert table_state(db) == previous
    db.close()


def bad_file(tmp_path: Path, edit) -> Path:
    """Two answers of x.csv, the first with a context over three lines, so record 2 starts on line 5."""
    root = tmp_path / "qa-answer"
    rows = [answer("x.csv", 1, context="line one\nline two\nline three: Paris"), answer("x.csv", 2)]
    records = [r.to_record() for r in rows]
    data = edit(records)
    write_source(root, "x.csv", [])
    (root / "answers/x.csv").write_bytes(data)
    return root


def with_value(column: str, value: str):
    def edit(records: list[list]) -> bytes:
        records[1][ANSWER_COLUMNS.index(column)] = value
        return dumps(ANSWER_COLUMNS, records).encode()

    return edit


def with_bytes(old: bytes, new: bytes):
    return lambda records: dumps(ANSWER_COLUMNS, records).encode().replace(old, new)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            with_value("score", "abc"),
            "record 2: column 'score': invalid input syntax for type double precision: \"abc\" "
            "(SQLSTATE 22P02)",
        ),
        (
            with_value("row_number", "1.5"),
            "record 2: column 'row_number': invalid input syntax for type integer: \"1.5\"",
        ),
        (
            with_value("answer_end", "99999999999"),
            "record 2: column 'answer_end': value \"99999999999\" is out of range for type integer",
        ),
        (
            with_value("answer_start", ""),
            'record 2: column \'answer_start\': null value in column "answer_start" of relation "qa_answers" '
            "violates not-null constraint",
        ),
        (with_value("extra", "{bad"), "record 2: column 'extra': invalid input syntax for type json: Token"),
        (
            with_value("extra", "[1]"),
            "record 2: column 'extra': new row for relation \"qa_answers\" violates check constraint",
        ),
        (with_value("extra", '{"x": NaN}'), "record 2: column 'extra': invalid input syntax for type json"),
        (
            with_value("extra", '{"x": "a\\u0000b"}'),
            "record 2: column 'extra': unsupported Unicode escape sequence: "
            "\\u0000 cannot be converted to text",
        ),
        (
            with_value("extra", '{"x": "\\ud800"}'),
            "record 2: column 'extra': invalid input syntax for type json: Unicode low surrogate",
        ),
        (
            with_value("model", "t\x00ny"),
            "record 2: column 'model': invalid byte sequence for encoding \"UTF8\": 0x00",
        ),
        (
            with_bytes(b"x.csv,2,id2,Where?", b"x.csv,2,id2,Wh\xffere?"),
            "record 2: column 'question': invalid byte sequence for encoding \"UTF8\": 0xff",
        ),
        (
            with_value("source_file", "y.csv"),
            "record 2: column 'source_file': is 'y.csv', expected 'x.csv'",
        ),
        (
            lambda records: dumps(ANSWER_COLUMNS, records).encode() + b"x.csv,3,id3\n",
            'record 3: missing data for column "question"',
        ),
        (
            lambda records: dumps(ANSWER_COLUMNS, records).encode() + b'x.csv,3,"id3\n',
            "record 3: unterminated CSV quoted field",
        ),
    ],
)
def test_a_refused_row_is_named_by_file_record_and_column(pg_database, tmp_path, edit, message):
    """PostgreSQL's own diagnostics name the line and column; the line is mapped to its CSV record."""
    root = bad_file(tmp_path, edit)
    with pytest.raises(RowError) as err:
        run(settings(pg_database, root))
    assert str(err.value).startswith(f"answers/x.csv: {message}"), str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "rejected/a.csv: empty file: expected the header source_file,row_number,error,raw"),
        (
            b"row,error\n1,x\n",
            "rejected/a.csv: unexpected header 'row,error', expected 'source_file,row_number,",
        ),
    ],
)
def test_a_file_with_a_bad_header_is_named_and_nothing_loads(pg_database, tree, data, message):
    (tree / "rejected/a.csv").write_bytes(data)
    with pytest.raises(RowError) as err:
        run(settings(pg_database, tree))
    assert str(err.value).startswith(message)
    db = pg_database.connect()
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('qa_answers')")
        assert cur.fetchone() == (None,)
    db.close()
