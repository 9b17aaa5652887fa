"""The secret scripts fill the templates with file CONTENT and hand them to pachctl without leaking anything.

A stand-in `pachctl` on PATH records its argv and stdin: the tests see exactly what a real pachctl would get.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
GCS_SCRIPT = SCRIPTS / "create_secret.sh"
DB_SCRIPT = SCRIPTS / "create_secret_db.sh"
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"

PASSWORD = "pa$$ w0rd&'\"\\/é;`x`"  # shell metacharacters, quotes, `&` (bash 5.2 patsub) and unicode
FAKE_PACHCTL = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD_DIR/argv"
# like pachctl 2.x's create secret: -f names a file, read as a file ('-' is not stdin there)
if [ "$4" = "-" ]; then echo "open -: no such file or directory" >&2; exit 1; fi
cat "$4" > "$RECORD_DIR/stdin"
exit "${PACHCTL_EXIT:-0}"
"""


def _pem(label: str, body: str) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    """A work dir, an empty TMPDIR, a bin dir with the stand-in pachctl, and the record dir."""
    work, tmpdir, bindir, record = (tmp_path / n for n in ("work", "tmp", "bin", "record"))
    for d in (work, tmpdir, bindir, record):
        d.mkdir()
    pachctl = bindir / "pachctl"
    pachctl.write_text(FAKE_PACHCTL)
    pachctl.chmod(pachctl.stat().st_mode | stat.S_IEXEC)
    files = {
        "key": work / "sa key.json",
        "ca": work / "server-ca.pem",
        "cert": work / "client-cert.pem",
        "clientkey": work / "client-key.pem",
    }
    files["key"].write_text(
        json.dumps(
            {"type": "service_account", "private_key": _pem("PRIVATE KEY", "c2VjcmV0LWtleQ=="), "n": "é"}
        )
    )
    files["ca"].write_text(_pem("CERTIFICATE", "Q0EtY2VydA=="))
    files["cert"].write_text(_pem("CERTIFICATE", "Y2xpZW50LWNlcnQ="))
    files["clientkey"].write_text(_pem("RSA PRIVATE KEY", "Y2xpZW50LWtleS1zZWNyZXQ="))
    base_env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "TMPDIR": str(tmpdir),
        "RECORD_DIR": str(record),
        "LANG": "C.UTF-8",
    }
    return {
        "work": work,
        "tmpdir": tmpdir,
        "bindir": bindir,
        "record": record,
        "files": files,
        "env": base_env,
    }


def _db_env(sb: dict) -> dict:
    f = sb["files"]
    return {
        **sb["env"],
        "PG_HOST": "10.1.2.3",
        "PG_DBNAME": "qa",
        "PG_USER": "loader",
        "PG_PASSWORD": PASSWORD,
        "PG_SSLROOTCERT": str(f["ca"]),
        "PG_SSLCERT": str(f["cert"]),
        "PG_SSLKEY": str(f["clientkey"]),
    }


def _run(script: Path, env: dict, sb: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/bash", str(script), *args], env=env, cwd=sb["work"], capture_output=True, text=True, timeout=30
    )


def _decoded(secret: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v, validate=True) for k, v in secret["data"].items()}


def _assert_valid_secret(secret: dict, name: str) -> None:
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == name
    assert secret["type"] == "Opaque"


def _assert_nothing_left(sb: dict, work_files: set[str]) -> None:
    assert sorted(p.name for p in sb["work"].iterdir()) == sorted(work_files)
    assert list(sb["tmpdir"].iterdir()) == []


def test_gcs_secret_is_piped_to_pachctl_with_the_key_file_content(sandbox):
    sb = sandbox
    env = {**sb["env"], "GOOGLE_APPLICATION_CREDENTIALS": str(sb["files"]["key"])}
    result = _run(GCS_SCRIPT, env, sb)
    assert result.returncode == 0, result.stderr
    assert (sb["record"] / "argv").read_text().splitlines() == ["create", "secret", "-f", "/dev/stdin"]
    secret = json.loads((sb["record"] / "stdin").read_text())
    _assert_valid_secret(secret, "gcs-credentials")
    assert _decoded(secret) == {"key.json": sb["files"]["key"].read_bytes()}
    encoded = secret["data"]["key.json"]
    for stream in (result.stdout, result.stderr):
        assert encoded not in stream
        assert "c2VjcmV0LWtleQ" not in stream
    assert "gcs-credentials created" in result.stderr
    _assert_nothing_left(sb, {p.name for p in sb["files"].values()})


def test_gcs_dry_run_prints_the_secret_and_never_calls_pachctl(sandbox):
    sb = sandbox
    env = {**sb["env"], "GOOGLE_APPLICATION_CREDENTIALS": str(sb["files"]["key"])}
    result = _run(GCS_SCRIPT, env, sb, "--dry-run")
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)
    _assert_valid_secret(secret, "gcs-credentials")
    assert _decoded(secret)["key.json"] == sb["files"]["key"].read_bytes()
    assert not (sb["record"] / "stdin").exists()
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "environment variable GOOGLE_APPLICATION_CREDENTIALS is not set"),
        ("missing.json", "GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist (the value is not"),
        (".", "GOOGLE_APPLICATION_CREDENTIALS names something that is not a readable file (the value is not"),
    ],
)
def test_gcs_secret_refuses_a_missing_variable_or_file(sandbox, value, message):
    sb = sandbox
    env = dict(sb["env"])
    if value is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = value
    result = _run(GCS_SCRIPT, env, sb)
    assert result.returncode == 1
    assert f"create_secret.sh: error: {message}" in result.stderr
    assert list(sb["record"].iterdir()) == []
    _assert_nothing_left(sb, {p.name for p in sb["files"].values()})


def test_db_secret_holds_values_and_certificate_contents(sandbox):
    sb = sandbox
    result = _run(DB_SCRIPT, _db_env(sb), sb)
    assert result.returncode == 0, result.stderr
    assert (sb["record"] / "argv").read_text().splitlines() == ["create", "secret", "-f", "/dev/stdin"]
    secret = json.loads((sb["record"] / "stdin").read_text())
    _assert_valid_secret(secret, "pg-credentials")
    f = sb["files"]
    assert _decoded(secret) == {
        "PG_HOST": b"10.1.2.3",
        "PG_PORT": b"5432",
        "PG_DBNAME": b"qa",
        "PG_USER": b"loader",
        "PG_PASSWORD": PASSWORD.encode(),
        "PG_SSLROOTCERT": f["ca"].read_bytes(),
        "PG_SSLCERT": f["cert"].read_bytes(),
        "PG_SSLKEY": f["clientkey"].read_bytes(),
    }
    argv = (sb["record"] / "argv").read_text()
    for stream in (result.stdout, result.stderr, argv):
        assert PASSWORD not in stream
        assert secret["data"]["PG_PASSWORD"] not in stream
        assert "Y2xpZW50LWtleS1zZWNyZXQ" not in stream
    _assert_nothing_left(sb, {p.name for p in f.values()})


def test_db_secret_accepts_the_seed_spellings_and_a_custom_port(sandbox):
    sb = sandbox
    env = _db_env(sb)
    env["PG_SSLCLIENT_CERT"] = env.pop("PG_SSLCERT")
    env["PG_SSL_CLIENT_KEY"] = env.pop("PG_SSLKEY")
    env["PG_PORT"] = "6543"
    result = _run(DB_SCRIPT, env, sb, "--dry-run")
    assert result.returncode == 0, result.stderr
    decoded = _decoded(json.loads(result.stdout))
    assert decoded["PG_PORT"] == b"6543"
    assert decoded["PG_SSLCERT"] == sb["files"]["cert"].read_bytes()
    assert decoded["PG_SSLKEY"] == sb["files"]["clientkey"].read_bytes()
    assert not (sb["record"] / "stdin").exists()


@pytest.mark.parametrize(
    "missing", ["PG_HOST", "PG_DBNAME", "PG_USER", "PG_PASSWORD", "PG_SSLROOTCERT", "PG_SSLKEY"]
)
def test_db_secret_names_the_missing_variable(sandbox, missing):
    sb = sandbox
    env = _db_env(sb)
    del env[missing]
    result = _run(DB_SCRIPT, env, sb)
    assert result.returncode == 1
    assert f"create_secret_db.sh: error: environment variable {missing} is not set" in result.stderr
    assert PASSWORD not in result.stderr
    assert list(sb["record"].iterdir()) == []
    _assert_nothing_left(sb, {p.name for p in sb["files"].values()})


def test_db_secret_refuses_a_missing_or_non_pem_certificate(sandbox):
    sb = sandbox
    env = _db_env(sb)
    env["PG_SSLROOTCERT"] = str(sb["work"] / "nope.pem")
    result = _run(DB_SCRIPT, env, sb)
    assert result.returncode == 1
    assert "PG_SSLROOTCERT names a file that does not exist (the value is not shown)" in result.stderr
    assert "nope.pem" not in result.stderr

    not_pem = sb["work"] / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    env = {**_db_env(sb), "PG_SSLCERT": str(not_pem)}
    result = _run(DB_SCRIPT, env, sb)
    assert result.returncode == 1
    assert "PG_SSLCERT names a file that is not PEM" in result.stderr
    assert list(sb["record"].iterdir()) == []


KEY_BODY = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg" + "S3cr3tK3yB0dy" * 4


def test_db_secret_stores_certificate_content_given_in_the_variables(sandbox):
    # The README accepts the PEM itself (as a Kubernetes secret holds it), its base64, or a pasted \\n form.
    sb = sandbox
    f = sb["files"]
    key = _pem("PRIVATE KEY", KEY_BODY)
    env = {
        **_db_env(sb),
        "PG_SSLKEY": key,
        "PG_SSLCERT": base64.b64encode(f["cert"].read_bytes()).decode(),
        "PG_SSLROOTCERT": f["ca"].read_text().strip().replace("\n", "\\n"),
    }
    result = _run(DB_SCRIPT, env, sb)
    assert result.returncode == 0, result.stderr
    decoded = _decoded(json.loads((sb["record"] / "stdin").read_text()))
    assert decoded["PG_SSLKEY"] == key.encode()
    assert decoded["PG_SSLCERT"] == f["cert"].read_bytes()
    assert decoded["PG_SSLROOTCERT"] == f["ca"].read_bytes()
    assert KEY_BODY[:16] not in result.stdout + result.stderr
    _assert_nothing_left(sb, {p.name for p in f.values()})


@pytest.mark.parametrize("variable", ["PG_SSLKEY", "PG_SSLCERT", "PG_SSLROOTCERT"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (_pem("PRIVATE KEY", KEY_BODY).split("\n", 1)[1], "whose '-----BEGIN ...-----' line is missing"),
        (_pem("PRIVATE KEY", KEY_BODY).rsplit("-----END", 1)[0], "without its '-----END ...-----' line"),
        (_pem("PRIVATE KEY", KEY_BODY).replace("\n", "\\n")[:90], "without its '-----END ...-----' line"),
        (KEY_BODY[:64], "neither the path of a PEM file nor PEM"),  # base64 of DER
        (KEY_BODY * 200, "neither the path of a PEM file nor PEM"),
        ("/run/secrets/" + KEY_BODY[:20] + ".pem", "names a file that does not exist"),
    ],
    ids=["no-begin-line", "no-end-line", "escaped-newlines-cut", "base64-der", "very-long", "missing-path"],
)
def test_db_secret_never_prints_a_certificate_variable_it_cannot_use(sandbox, variable, value, problem):
    sb = sandbox
    result = _run(DB_SCRIPT, {**_db_env(sb), variable: value}, sb)
    assert result.returncode == 1
    assert f"create_secret_db.sh: error: {variable} " in result.stderr
    assert problem in result.stderr and "(the value is not shown)" in result.stderr
    for fragment in (KEY_BODY[:12], KEY_BODY[-12:], value[:12], value[-12:]):
        assert fragment not in result.stdout + result.stderr
    assert list(sb["record"].iterdir()) == []


def test_db_secret_refuses_a_bad_port(sandbox):
    sb = sandbox
    result = _run(DB_SCRIPT, {**_db_env(sb), "PG_PORT": "54x"}, sb)
    assert result.returncode == 1
    assert "PG_PORT must be a port number, got '54x'" in result.stderr


def test_scripts_fail_clearly_without_pachctl_or_when_pachctl_fails(sandbox):
    sb = sandbox
    env = {**sb["env"], "GOOGLE_APPLICATION_CREDENTIALS": str(sb["files"]["key"]), "PATH": "/usr/bin:/bin"}
    result = _run(GCS_SCRIPT, env, sb)
    assert result.returncode == 1
    assert "pachctl is not on PATH" in result.stderr

    result = _run(DB_SCRIPT, {**_db_env(sb), "PACHCTL_EXIT": "3"}, sb)
    assert result.returncode == 1
    assert "pachctl create secret failed" in result.stderr
    assert PASSWORD not in result.stderr


def test_unknown_argument_is_refused(sandbox):
    result = _run(GCS_SCRIPT, sandbox["env"], sandbox, "--force")
    assert result.returncode == 1
    assert "unknown argument '--force'" in result.stderr


def test_templates_are_secrets_with_placeholders_only():
    gcs = json.loads((ROOT / "secrets" / "secret_template.json").read_text())
    db = json.loads((ROOT / "secrets" / "secret_template_db.json").read_text())
    _assert_valid_secret(gcs, "gcs-credentials")
    _assert_valid_secret(db, "pg-credentials")
    assert gcs["data"] == {"key.json": "__GCS_KEY_JSON_B64__"}
    keys = [
        "PG_HOST",
        "PG_PORT",
        "PG_DBNAME",
        "PG_USER",
        "PG_PASSWORD",
        "PG_SSLROOTCERT",
        "PG_SSLCERT",
        "PG_SSLKEY",
    ]
    assert db["data"] == {k: f"__{k}_B64__" for k in keys}


def test_scripts_are_executable_shellcheck_clean_and_never_trace():
    scripts = [GCS_SCRIPT, DB_SCRIPT, SCRIPTS / "secret_common.sh"]
    for script in (GCS_SCRIPT, DB_SCRIPT):
        assert os.access(script, os.X_OK), script
    for script in scripts:
        text = script.read_text()
        assert "set -x" not in text and "set -o xtrace" not in text, script
    result = subprocess.run(
        [str(SHELLCHECK), "-x", *map(str, scripts)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
