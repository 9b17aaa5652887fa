"""Turn the certificate settings into files libpq can read.

Kubernetes secrets arrive as environment variables holding PEM (or base64 of PEM) content, while libpq wants
file paths and refuses a client key that others can read. Content, and key files with loose permissions, are
written to 0600 files in a private temporary folder that is removed when the load ends.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .settings import ConnectionSettings, SettingsError

_CERT_FIELDS = (("sslrootcert", "PG_SSLROOTCERT"), ("sslcert", "PG_SSLCERT"), ("sslkey", "PG_SSLKEY"))


def pem_content(value: str) -> bytes | None:
    """The PEM bytes if ``value`` is PEM or base64-encoded PEM content, None if it looks like a path."""
    text = value.strip()
    if "-----BEGIN" in text:
        if "\\n" in text and "\n" not in text:  # a secret pasted with escaped newlines
            text = text.replace("\\n", "\n").strip()
        return (text + "\n").encode()
    if not text or os.path.exists(os.path.expanduser(text)):
        return None
    try:
        decoded = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if b"-----BEGIN" in decoded else None


def secret_values(settings: ConnectionSettings) -> tuple[str, ...]:
    """Values never to print: the password and certificate material given as content."""
    values = [settings.password]
    values += [v for v in (settings.sslcert, settings.sslkey, settings.sslrootcert) if v and pem_content(v)]
    return tuple(v for v in values if v)


@contextmanager
def connect_params(settings: ConnectionSettings) -> Iterator[dict[str, str]]:
    """libpq keyword arguments for ``settings``, with certificate content materialised as private files."""
    params: dict[str, str] = {"sslmode": settings.sslmode, "client_encoding": "UTF8"}
    for key in ("host", "dbname", "user", "password"):
        value = getattr(settings, key)
        if value:
            params[key] = value
    if settings.port:
        params["port"] = str(settings.port)
    params.update(dict(settings.options))
    tmpdir: Path | None = None
    try:
        for key, var in _CERT_FIELDS:
            value = getattr(settings, key)
            if not value:
                continue
            if key == "sslrootcert" and value == "system":  # libpq >= 16: the OS trust store
                params[key] = value
                continue
            content = pem_content(value)
            path = Path(value).expanduser() if content is None else None
            if path is not None and not path.is_file():
                raise SettingsError(
                    f"{var}: no such file {str(path)!r}, and the value is not PEM or base64 PEM content"
                )
            needs_copy = content is not None or (
                key == "sslkey" and path is not None and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
            )
            if not needs_copy:
                params[key] = str(path)
                continue
            if tmpdir is None:
                tmpdir = Path(tempfile.mkdtemp(prefix="pg-load-ssl-"))  # mode 0700
            target = tmpdir / key
            data = content if content is not None else path.read_bytes()  # type: ignore[union-attr]
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            params[key] = str(target)
        yield params
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
