"""pg_load.certs: certificate contents become private temporary files, removed afterwards."""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from pathlib import Path

import pytest
from pg_load.certs import connect_params, pem_content, secret_values
from pg_load.settings import ConnectionSettings, SettingsError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


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
