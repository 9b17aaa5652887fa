"""Pure parts of pg-load: planning, SQL building, the contract checker, settings and certificate handling."""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from pathlib import Path

import pytest
from pg_load import sql
from pg_load.certs import connect_params, pem_content, secret_values
from pg_load.plan import InputError, Plan, diff, digest, scan
from pg_load.settings import ConnectionSettings, LoadSettings, SettingsError, redact
from pg_load.validate import RowError, check_answers, check_rejected
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS, AnswerRow, RejectedRow, dumps

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


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


# --- planning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "loaded", "expected"),
    [
        ({}, {}, Plan((), (), (), ())),
        ({"a": "1", "b": "2"}, {}, Plan((), ("a", "b"), (), ())),
        ({"a": "1"}, {"a": "1"}, Plan(("a",), (), (), ())),
        ({"a": "1", "b": "9"}, {"a": "1", "b": "2", "c": "3"}, Plan(("a",), (), ("b",), ("c",))),
        ({}, {"a": "1"}, Plan((), (), (), ("a",))),
        ({"new": None, "a": "1"}, {"a": "1"}, Plan(("a",), ("new",), (), ())),  # new sources need no digest
    ],
)
def test_diff_sorts_sources_into_unchanged_added_replaced_deleted(current, loaded, expected):
    assert diff(current, loaded) == expected


def test_plan_noop_and_to_write():
    assert Plan(("a",), (), (), ()).is_noop
    plan = Plan((), ("n",), ("r",), ("d",))
    assert not plan.is_noop and plan.to_write == ("n", "r")


def test_digest_covers_both_files_and_tells_absent_from_empty():
    assert digest(b"x", b"") != digest(b"x", None)
    assert digest(b"ab", b"c") != digest(b"a", b"bc")  # framing: no shifting bytes between files
    assert digest(b"a", b"b") == digest(b"a", b"b")
    assert len(digest(None, None)) == 64


def test_scan_pairs_answers_and_rejected_by_relative_path(tmp_path, caplog):
    for rel in (
        "answers/x.csv",
        "rejected/x.csv",
        "answers/sub/y.csv",
        "rejected/sub/y.csv",
        "answers/notes.txt",
        "answers/UP.CSV",  # `qa-answer answer` run by hand keeps the input's extension
        "rejected/UP.CSV",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    sources = scan(tmp_path)
    assert list(sources) == ["UP.CSV", "sub/y.csv", "x.csv"]
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring {tmp_path}/answers/notes.txt: not a .csv file"
    ]
    assert sources["x.csv"].answers == tmp_path / "answers/x.csv"
    assert sources["sub/y.csv"].rejected == tmp_path / "rejected/sub/y.csv"
    assert sources["x.csv"].read_digest() == digest(b"answers/x.csv", b"rejected/x.csv")
    assert sources["x.csv"].stamp == (
        (13, (tmp_path / "answers/x.csv").stat().st_mtime_ns),
        (14, sources["x.csv"].stamp[1][1]),
    )
    assert sources["x.csv"].unchanged_since_scan()
    (tmp_path / "answers/x.csv").write_bytes(b"rewritten")
    assert not sources["x.csv"].unchanged_since_scan()


def test_scan_refuses_a_folder_that_is_not_answering_output(tmp_path):
    # Mirroring an unrelated folder would delete every row: refuse instead.
    with pytest.raises(InputError, match=r"has neither answers/ nor rejected/"):
        scan(tmp_path)
    with pytest.raises(InputError, match="no such directory"):
        scan(tmp_path / "missing")
    (tmp_path / "answers").mkdir()
    with pytest.raises(InputError, match=r"has answers/ but no rejected/ \(qa-answer writes both\)"):
        scan(tmp_path)
    (tmp_path / "rejected").mkdir()
    assert scan(tmp_path) == {}  # an output of no inputs: the mirror empties, as it should


def test_scan_refuses_a_source_missing_one_of_its_two_files(tmp_path):
    """A lone answers/ file would be loaded as "no rejected rows", deleting the ones loaded before."""
    for rel in ("answers/a.csv", "rejected/a.csv", "answers/b.csv", "rejected/sub/c.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(InputError) as err:
        scan(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: answers/b.csv, rejected/sub/c.csv without the matching answers/ or rejected/ file: "
        "qa-answer writes both files of an input and replaces them as a pair, so a lone file is what a run "
        "stopped while replacing them leaves behind: run qa-answer again"
    )


def test_scan_refuses_a_file_name_that_is_not_utf8_naming_it_escaped(tmp_path):
    """Postgres could not store the name as source_file: one clear error instead of a UnicodeEncodeError."""
    for rel in ("answers/a.csv", "rejected/a.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for folder in ("answers", "rejected"):
        (tmp_path / folder / "sub").mkdir()
        with open(os.path.join(os.fsencode(tmp_path / folder / "sub"), b"caf\xe9.csv"), "wb") as fh:
            fh.write(b"x")
    with pytest.raises(InputError) as err:
        scan(tmp_path)
    assert str(err.value) == (
        "answers/sub/caf\\xe9.csv: the file name is not valid UTF-8, so it cannot be a source_file; "
        "rename or remove the file (qa-answer never writes such names)"
    )


# --- SQL -----------------------------------------------------------------------------------------------


def test_sql_identifiers_are_checked():
    assert sql.ident("qa_answers") == "qa_answers"
    for bad in ('qa"; DROP TABLE x; --', "Upper", "1abc", ""):
        with pytest.raises(ValueError):
            sql.ident(bad)


def test_copy_keeps_empty_text_as_empty_and_empty_extra_as_null():
    copy = sql.copy_csv("qa_answers", ANSWER_COLUMNS)
    assert copy.startswith("COPY qa_answers (source_file, row_number, id, question, context, answer, score,")
    assert "FORMAT csv, HEADER true" in copy
    assert "FORCE_NOT_NULL (source_file, id, question, context, answer, model)" in copy
    assert "FORCE_NULL (extra)" in copy
    assert "FORCE_NULL" not in sql.copy_csv("qa_rejected", REJECTED_COLUMNS)


def test_copy_refuses_rows_of_another_source_and_quotes_the_path_safely():
    copy = sql.copy_csv("qa_answers", ANSWER_COLUMNS, "it's \\ x.csv")
    assert " WHERE CASE WHEN source_file = E'it''s \\\\ x.csv' THEN true ELSE " in copy
    assert copy.endswith(")::integer IS NULL END")  # the ELSE branch fails the COPY, never skips the row
    with pytest.raises(ValueError):
        sql.literal("a\x00b")


def test_upsert_rewrites_only_rows_that_differ():
    upsert = sql.upsert_from_stage("qa_answers")
    assert "ON CONFLICT (source_file, row_number) DO UPDATE" in upsert
    assert "IS DISTINCT FROM" in upsert and "loaded_at = now()" in upsert
    assert "FROM pg_load_stage_qa_answers" in upsert
    assert "t.source_file" not in upsert.split("WHERE", 1)[1]  # the key is not compared, it matched


def test_lock_key_is_a_stable_bigint():
    assert sql.LOCK.endswith(f"pg_advisory_xact_lock({sql.LOCK_KEY})")
    assert -(2**63) <= sql.LOCK_KEY < 2**63


# --- contract checker -------------------------------------------------------------------------------------


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


# --- settings ------------------------------------------------------------------------------------------


def test_settings_from_pg_variables_default_to_verify_full():
    env = {
        "PG_HOST": "db.example",
        "PG_PORT": "6543",
        "PG_DBNAME": "qa",
        "PG_USER": "loader",
        "PG_PASSWORD": "pw1",
    }
    s = ConnectionSettings.from_env(env)
    assert (s.host, s.port, s.dbname, s.user, s.password, s.sslmode) == (
        "db.example",
        6543,
        "qa",
        "loader",
        "pw1",
        "verify-full",
    )
    assert "pw1" not in repr(s) and "pw1" not in s.describe()
    assert s.describe() == "loader@db.example:6543/qa (sslmode=verify-full)"


def test_settings_database_url_with_pg_variables_overriding():
    env = {
        "DATABASE_URL": "postgresql://u:p%40ss@h1:5433/d1?sslmode=require&connect_timeout=7",
        "PG_HOST": "h2",
    }
    s = ConnectionSettings.from_env(env)
    assert (s.host, s.port, s.dbname, s.user, s.password, s.sslmode) == (
        "h2",
        5433,
        "d1",
        "u",
        "p@ss",
        "require",
    )
    assert s.options == (("connect_timeout", "7"),)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no database configured: set PG_HOST"),
        ({"PG_HOST": "h", "PG_SSLMODE": "sometimes"}, "PG_SSLMODE='sometimes' is not one of disable, allow"),
        ({"PG_HOST": "h", "PG_PORT": "54x"}, "PG_PORT must be a number, got '54x'"),
        ({"PG_HOST": "h", "PG_PORT": "70000"}, "PG_PORT out of range: 70000"),
        ({"DATABASE_URL": "postgresql://u:Sup3rSecret@h:54x/d"}, "DATABASE_URL: the port is not a number"),
        ({"DATABASE_URL": "postgresql://u:Sup3rSecret@h:0/d"}, "DATABASE_URL: the port is not a number"),
        ({"DATABASE_URL": "host=h port=x password=Sup3rSecret"}, "DATABASE_URL: the port is not a number"),
        ({"DATABASE_URL": "postgres://u:Sup3rSecret@h/d?sslmode=on"}, "DATABASE_URL: sslmode is not one of"),
        (
            {"DATABASE_URL": "host=h password=Sup3rSecret junk"},
            "DATABASE_URL is not a valid libpq connection",
        ),
    ],
)
def test_settings_errors_are_clear_and_hold_no_secret(env, message):
    with pytest.raises(SettingsError) as err:
        ConnectionSettings.from_env(env)
    assert str(err.value).startswith(message)
    assert "Sup3rSecret" not in str(err.value)


def test_load_settings_flags_win_over_environment(tmp_path):
    env = {
        "PG_HOST": "h",
        "PACH_JOB_ID": "job-env",
        "qa-answer_COMMIT": "c0ffee",
        "PG_LOAD_MAX_ATTEMPTS": "3",
    }
    s = LoadSettings.from_args(tmp_path / "qa-answer", env)
    assert (s.max_attempts, s.pach_job_id, s.input_commit) == (3, "job-env", "c0ffee")
    s = LoadSettings.from_args(tmp_path / "qa-answer", env, max_attempts=1, pach_job_id="j", input_commit="c")
    assert (s.max_attempts, s.pach_job_id, s.input_commit) == (1, "j", "c")
    with pytest.raises(SettingsError, match="max attempts must be >= 1"):
        LoadSettings.from_args(tmp_path, env, max_attempts=0)


def test_read_ahead_comes_from_flag_then_environment_then_default(tmp_path):
    assert LoadSettings.from_args(tmp_path, {"PG_HOST": "h"}).read_ahead_mb == 64
    env = {"PG_HOST": "h", "PG_LOAD_READ_AHEAD_MB": "8"}
    assert LoadSettings.from_args(tmp_path, env).read_ahead_mb == 8
    assert LoadSettings.from_args(tmp_path, env, read_ahead_mb=0).read_ahead_mb == 0
    with pytest.raises(SettingsError, match="read-ahead must be >= 0 MiB, got -1"):
        LoadSettings.from_args(tmp_path, env, read_ahead_mb=-1)
    with pytest.raises(SettingsError, match="PG_LOAD_READ_AHEAD_MB must be an integer, got 'lots'"):
        LoadSettings.from_args(tmp_path, {"PG_HOST": "h", "PG_LOAD_READ_AHEAD_MB": "lots"})


def test_redact_removes_passwords_from_text():
    text = "failed: postgresql://bob:hunter22@db/x and password=hunter22 and password='a b' and key XYZ"
    out = redact(text, ("XYZ",))
    assert "hunter22" not in out and "a b" not in out and "XYZ" not in out
    assert "postgresql://bob:***@db/x" in out


# --- certificates --------------------------------------------------------------------------------------


def test_pem_content_detects_pem_base64_and_paths(tmp_path):
    assert pem_content(PEM) == PEM.encode()
    assert pem_content(PEM.replace("\n", "\\n")) == PEM.encode()  # escaped newlines from a pasted secret
    assert pem_content(base64.b64encode(PEM.encode()).decode()) == PEM.encode()
    path = tmp_path / "ca.crt"
    path.write_text(PEM)
    assert pem_content(str(path)) is None
    assert pem_content("/does/not/exist.crt") is None


def test_certificate_content_goes_to_private_files_removed_afterwards(tmp_path):
    key_path = tmp_path / "client.key"
    key_path.write_text(PEM.replace("CERTIFICATE", "PRIVATE KEY"))
    key_path.chmod(0o644)  # as a Kubernetes secret volume would mount it: libpq would refuse it
    settings = ConnectionSettings(
        host="h", sslrootcert=PEM, sslcert=base64.b64encode(PEM.encode()).decode(), sslkey=str(key_path)
    )
    with connect_params(settings) as params:
        for key in ("sslrootcert", "sslcert", "sslkey"):
            path = params[key]
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert path.startswith(tempfile.gettempdir())
        assert Path(params["sslcert"]).read_text() == PEM
        folder = os.path.dirname(params["sslrootcert"])
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert not os.path.exists(folder)
    assert {PEM, base64.b64encode(PEM.encode()).decode()} <= set(secret_values(settings))
    assert str(key_path) not in secret_values(settings)  # the path of a key file is not the key


def test_certificate_path_is_used_as_is_and_a_missing_one_is_named(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text(PEM)
    with connect_params(ConnectionSettings(host="h", sslrootcert=str(ca))) as params:
        assert params["sslrootcert"] == str(ca)
        assert params["sslmode"] == "verify-full"
    missing = ConnectionSettings(host="h", sslcert="/nope/client.crt")
    with (
        pytest.raises(SettingsError, match=r"^PG_SSLCERT names a file that does not exist \(a 16-character"),
        connect_params(missing),
    ):
        pass
