"""pg-load over verified TLS with client certificates, and secrets kept out of every message.

Runs the real ``pg-load`` console script in a subprocess so that all it prints (summary, logs, errors) is
checked, against a server started with ssl=on and ``hostssl ... cert`` (fixture ``pg_ssl_server``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qa_answer.contract import ANSWER_COLUMNS, REJECTED_COLUMNS, AnswerRow, dumps

PG_LOAD = str(Path(sys.executable).with_name("pg-load"))


@pytest.fixture
def answers_dir(tmp_path) -> Path:
    root = tmp_path / "qa-answer"
    (root / "answers").mkdir(parents=True)
    (root / "rejected").mkdir()
    rows = [AnswerRow("x.csv", 1, "1", "Where?", "In Paris.", "Paris", 0.9, 3, 8, "m").to_record()]
    (root / "answers/x.csv").write_text(dumps(ANSWER_COLUMNS, rows))
    (root / "rejected/x.csv").write_text(dumps(REJECTED_COLUMNS, []))
    return root


def pg_load(in_dir: Path, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    tmpdir = tmp_path / "proc-tmp"
    tmpdir.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    return subprocess.run(
        [PG_LOAD, str(in_dir)],
        env={**clean, "TMPDIR": str(tmpdir), "PG_LOAD_MAX_ATTEMPTS": "2", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def cert_env(server, dbname: str, **overrides: str) -> dict[str, str]:
    env = {
        "PG_HOST": "localhost",
        "PG_PORT": str(server.port),
        "PG_DBNAME": dbname,
        "PG_USER": server.cert_user,
        "PG_SSLROOTCERT": str(server.ca_cert),
        "PG_SSLCERT": str(server.client_cert),
        "PG_SSLKEY": str(server.client_key),
    }  # PG_SSLMODE left unset: the default must be verify-full
    env.update(overrides)
    return env


def loaded_rows(server, dbname: str) -> int:
    import psycopg2

    conn = psycopg2.connect(server.admin_dsn.replace("/postgres?", f"/{dbname}?"))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM qa_answers")
        (count,) = cur.fetchone()
    conn.close()
    return count


def test_verify_full_with_client_certificate_files(pg_ssl_server, answers_dir, tmp_path):
    db = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    proc = pg_load(answers_dir, cert_env(pg_ssl_server, db), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(sslmode=verify-full)" in proc.stderr
    assert proc.stdout.startswith("pg-load: files unchanged=0 added=1 replaced=0 deleted=0; rows read=1")
    assert loaded_rows(pg_ssl_server, db) == 1


def test_certificates_as_env_content_and_a_world_readable_key(pg_ssl_server, answers_dir, tmp_path):
    # Kubernetes secrets arrive as variables holding PEM; base64 of PEM works too. Key content is secret.
    db = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    key_pem = pg_ssl_server.client_key.read_text()
    env = cert_env(
        pg_ssl_server,
        db,
        PG_SSLROOTCERT=pg_ssl_server.ca_cert.read_text(),
        PG_SSLCERT=base64.b64encode(pg_ssl_server.client_cert.read_bytes()).decode(),
        PG_SSLKEY=key_pem,
    )
    proc = pg_load(answers_dir, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert loaded_rows(pg_ssl_server, db) == 1
    assert list((tmp_path / "proc-tmp").iterdir()) == []  # the 0600 files are gone
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr

    # A key file others can read (as secret volumes mount it) is copied to a private file, not refused.
    loose = tmp_path / "loose.key"
    shutil.copy(pg_ssl_server.client_key, loose)
    loose.chmod(0o644)
    db2 = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    proc = pg_load(answers_dir, cert_env(pg_ssl_server, db2, PG_SSLKEY=str(loose)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert loaded_rows(pg_ssl_server, db2) == 1


def test_wrong_ca_fails_fast_with_a_clear_error(pg_ssl_server, answers_dir, tmp_path):
    db = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    proc = pg_load(
        answers_dir, cert_env(pg_ssl_server, db, PG_SSLROOTCERT=str(pg_ssl_server.wrong_ca_cert)), tmp_path
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('{"severity": "ERROR", "error": "LoadError", "message": "certuser@localhost:')
    assert "certificate verify failed" in last
    assert "retrying" not in proc.stderr  # not a transient error: no retry


def test_client_certificate_is_required(pg_ssl_server, answers_dir, tmp_path):
    db = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    env = cert_env(pg_ssl_server, db)
    del env["PG_SSLCERT"], env["PG_SSLKEY"]
    proc = pg_load(answers_dir, {**env, "HOME": str(tmp_path)}, tmp_path)
    assert proc.returncode == 1
    assert "certificate" in proc.stderr.strip().splitlines()[-1]


def test_password_never_appears_in_output(pg_ssl_server, answers_dir, tmp_path):
    server = pg_ssl_server
    db = server.create_database(owner=server.password_user)
    base = {
        "PG_HOST": "127.0.0.1",
        "PG_PORT": str(server.port),
        "PG_DBNAME": db,
        "PG_USER": server.password_user,
        "PG_SSLROOTCERT": str(server.ca_cert),
    }
    ok = pg_load(answers_dir, {**base, "PG_PASSWORD": server.password}, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert server.password not in ok.stdout + ok.stderr

    wrong = "Wr0ng-" + server.password
    bad = pg_load(answers_dir, {**base, "PG_PASSWORD": wrong}, tmp_path)
    assert bad.returncode == 1
    assert "password authentication failed" in bad.stderr
    assert wrong not in bad.stdout + bad.stderr and server.password not in bad.stderr

    url = f"postgresql://{server.password_user}:{server.password}@127.0.0.1:1/{db}?sslmode=disable"
    unreachable = pg_load(answers_dir, {"DATABASE_URL": url}, tmp_path)
    assert unreachable.returncode == 1
    assert "giving up after 2 attempts" in unreachable.stderr
    assert server.password not in unreachable.stdout + unreachable.stderr


def test_a_key_libpq_refuses_is_not_printed_and_not_left_on_disk(pg_ssl_server, answers_dir, tmp_path):
    # Well-formed PEM, but not the key of the client certificate: libpq refuses it during the handshake.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    db = pg_ssl_server.create_database(owner=pg_ssl_server.cert_user)
    proc = pg_load(answers_dir, cert_env(pg_ssl_server, db, PG_SSLKEY=other.decode()), tmp_path)
    assert proc.returncode == 1
    assert "key" in proc.stderr.strip().splitlines()[-1]
    body = [line for line in other.decode().splitlines() if not line.startswith("-----")]
    assert [line for line in body if line[:12] in proc.stdout + proc.stderr] == []
    assert list((tmp_path / "proc-tmp").iterdir()) == []
