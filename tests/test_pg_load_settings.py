"""pg_load.settings: PG_* variables and flags into typed settings; errors and logs hold no secret."""

from __future__ import annotations

import pytest
from pg_load.settings import ConnectionSettings, LoadSettings, SettingsError, redact


def fields(s: ConnectionSettings) -> tuple[object, ...]:
    """The settings both sources of configuration fill, in one tuple to compare."""
    return s.host, s.port, s.dbname, s.user, s.password, s.sslmode


def test_settings_from_pg_variables_default_to_verify_full():
    env = {
        "PG_HOST": "db.example",
        "PG_PORT": "6543",
        "PG_DBNAME": "qa",
        "PG_USER": "loader",
        "PG_PASSWORD": "pw1",
    }
    s = ConnectionSettings.from_env(env)
    assert fields(s) == ("db.example", 6543, "qa", "loader", "pw1", "verify-full")
    assert "pw1" not in repr(s) and "pw1" not in s.describe()
    assert s.describe() == "loader@db.example:6543/qa (sslmode=verify-full)"


def test_settings_database_url_with_pg_variables_overriding():
    env = {
        "DATABASE_URL": "postgresql://u:p%40ss@h1:5433/d1?sslmode=require&connect_timeout=7",
        "PG_HOST": "h2",
    }
    s = ConnectionSettings.from_env(env)
    assert fields(s) == ("h2", 5433, "d1", "u", "p@ss", "require")
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


def test_redact_removes_passwords_from_text():
    text = "failed: postgresql://bob:hunter22@db/x and password=hunter22 and password='a b' and key XYZ"
    out = redact(text, ("XYZ",))
    assert "hunter22" not in out and "a b" not in out and "XYZ" not in out
    assert "postgresql://bob:***@db/x" in out
