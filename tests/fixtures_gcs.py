"""Fixtures: a real fake-gcs-server on 127.0.0.1 and fresh buckets, used through the real GCS client.

``gcs_server`` (session scope) starts one emulator for the whole run (``pachyderm_local.embedded_services``,
as the demo does) and yields a :class:`GCSEmulator`: ``.url`` (``http://127.0.0.1:PORT``), ``.host``,
``.port``, ``.env`` (``{"STORAGE_EMULATOR_HOST": url}``, merge it into a subprocess's environment) and
``.client()`` (an anonymous ``storage.Client``).
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
import uuid
from collections.abc import Iterator

import pytest
from google.cloud import storage
from pachyderm_local.embedded_services import EMULATOR_ENV, GCSEmulator, start_gcs_emulator


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSEmulator]:
    previous = os.environ.get(EMULATOR_ENV)
    emulator = start_gcs_emulator()
    try:
        _restore_env(previous)
        yield emulator
    finally:
        emulator.stop()
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
