"""Turn the certificate settings into files libpq can read, for as long as one connection attempt needs them.

Kubernetes secrets arrive as environment variables holding PEM (or base64 of PEM) content, while libpq wants
file paths and refuses a client key that others can read. Content, and key files with loose permissions, are
written to 0600 files in a private temporary folder that exists only while a connection is being opened: libpq
reads them during the handshake, so a load killed later (even by SIGKILL) leaves no key behind.

No message quotes the value of these variables, whatever it holds: a key pasted wrongly is still a key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pg_load.settings import ConnectionSettings, SettingsError

_CERT_FIELDS = (("sslrootcert", "PG_SSLROOTCERT"), ("sslcert", "PG_SSLCERT"), ("sslkey", "PG_SSLKEY"))
#: longest value tried as a path (Linux PATH_MAX); longer ones can only be content
_PATH_MAX = 4096
#: parts of a secret value shorter than this are not masked on their own (they would mask ordinary words)
_MIN_FRAGMENT = 12


def _unescape(text: str) -> str:
    """A secret pasted with escaped newlines (literal ``\\n``) as the PEM it was."""
    if "\\n" in text and "\n" not in text:
        return text.replace("\\r\\n", "\n").replace("\\n", "\n").strip()
    return text


def pem_content(value: str) -> bytes | None:
    """The PEM bytes if ``value`` is PEM or base64-encoded PEM content, else None (a path, or neither)."""
    text = _unescape(value.strip())
    if "-----BEGIN" in text and "-----END" in text:
        return (text + "\n").encode()
    decoded = _base64(text)
    return decoded if decoded is not None and b"-----BEGIN" in decoded and b"-----END" in decoded else None


def _base64(text: str) -> bytes | None:
    compact = "".join(text.split())
    if not compact or len(compact) % 4:
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _existing_file(value: str) -> Path | None:
    """The path ``value`` names if it is an existing regular file; None for anything else, never an error."""
    text = value.strip()
    if not text or len(text) > _PATH_MAX or "\n" in text or "\0" in text:
        return None
    try:
        path = Path(text).expanduser()
        return path if path.is_file() else None
    except (OSError, ValueError, RuntimeError):  # name too long, a component over NAME_MAX, no home for "~"
        return None


def problem(var: str, value: str) -> str:
    """What is wrong with a certificate variable that is neither an existing file nor PEM content.

    Describes the value without quoting any of it: the variable may hold a private key.
    """
    text = _unescape(value.strip())
    size = f"(a {len(value)}-character value, not shown)"
    if "-----BEGIN" in text:
        return f"{var} holds PEM content without its '-----END ...-----' line (cut off?) {size}"
    if "-----END" in text:
        return f"{var} holds PEM content whose '-----BEGIN ...-----' line is missing {size}"
    decoded = _base64(text)
    if decoded is not None and decoded[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        return (
            f"{var} holds base64 of DER, not of PEM: libpq reads PEM only (convert it with "
            f"`openssl pkey -inform DER -outform PEM` or `openssl x509 -inform DER`) {size}"
        )
    one_line = len(text) <= _PATH_MAX and "\n" not in text and "\0" not in text
    if one_line:
        try:
            if Path(text).expanduser().exists():
                return f"{var} names something that is not a regular file {size}"
        except (OSError, ValueError, RuntimeError):
            pass
    if one_line and text[:1] in ("/", "~", "."):
        return f"{var} names a file that does not exist {size}"
    if decoded is not None:
        return f"{var} holds base64 that does not decode to PEM content {size}"
    return f"{var} is neither the path of an existing file nor PEM or base64 PEM content {size}"


def secret_values(settings: ConnectionSettings) -> tuple[str, ...]:
    """Values never to print: the password and certificate settings that are not paths of existing files."""
    values = [settings.password or ""]
    for value in (settings.sslcert, settings.sslkey, settings.sslrootcert):
        if value and value != "system" and _existing_file(value) is None:
            values += _forms(value)
    return tuple(dict.fromkeys(v for v in values if v))


def env_secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    """The secret values in ``env``: the password, DATABASE_URL and its password, certificate content.

    Read before anything is parsed, so that even a message about a setting that cannot be parsed is scrubbed.
    """
    values = [env.get("PG_PASSWORD", "")]
    url = env.get("DATABASE_URL", "").strip()
    if url:
        values.append(url)
        values += re.findall(r"://[^:/@\s]*:([^@\s]+)@", url)
        values += [m[1] or m[2] for m in re.findall(r"password\s*=\s*('((?:[^'\\]|\\.)*)'|(\S+))", url, re.I)]
    for _, var in _CERT_FIELDS:
        value = env.get(var, "")
        if value.strip() and value.strip() != "system" and _existing_file(value) is None:
            values += _forms(value)
    return tuple(dict.fromkeys(v for v in values if v))


def _forms(value: str) -> list[str]:
    """``value`` as given, stripped, unescaped, and each long line of it (so no fragment of a key shows)."""
    text = value.strip()
    forms = [value, text, _unescape(text), text.replace("\n", "\\n")]
    for line in re.split(r"\\n|\n", text):
        if len(line.strip()) >= _MIN_FRAGMENT and not line.startswith("-----"):  # not the BEGIN/END labels
            forms.append(line.strip())
    return forms


def check_certificates(settings: ConnectionSettings) -> None:
    """Fail early, naming the variable, if a certificate setting is neither a file nor PEM content."""
    for key, var in _CERT_FIELDS:
        value = getattr(settings, key)
        if not value or (key == "sslrootcert" and value == "system"):
            continue
        if pem_content(value) is None and _existing_file(value) is None:
            raise SettingsError(problem(var, value))


@contextmanager
def connect_params(settings: ConnectionSettings) -> Iterator[dict[str, str]]:
    """libpq keyword arguments for ``settings``, with certificate content materialised as private files.

    The files and their folder are removed when the block ends, however it ends: open one connection a block.
    """
    params = _plain_params(settings)
    tmpdir: Path | None = None
    try:
        for key, var in _CERT_FIELDS:
            value = getattr(settings, key)
            if not value:
                continue
            given = _certificate(key, var, value)
            if isinstance(given, str):
                params[key] = given
                continue
            if tmpdir is None:
                tmpdir = _private_folder(var)
            params[key] = str(_write_private(tmpdir / key, var, given))
        yield params
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _plain_params(settings: ConnectionSettings) -> dict[str, str]:
    """The libpq keyword arguments that need no file: every setting given, and the extra options."""
    params: dict[str, str] = {"sslmode": settings.sslmode, "client_encoding": "UTF8"}
    for key in ("host", "dbname", "user", "password"):
        value = getattr(settings, key)
        if value:
            params[key] = value
    if settings.port:
        params["port"] = str(settings.port)
    params.update(dict(settings.options))
    return params


def _certificate(key: str, var: str, value: str) -> str | bytes:
    """What libpq gets for a certificate setting: a value to pass on (str), or content to write (bytes)."""
    if key == "sslrootcert" and value == "system":  # libpq >= 16: the OS trust store
        return value
    content = pem_content(value)
    if content is not None:
        return content
    path = _existing_file(value)
    if path is None:
        raise SettingsError(problem(var, value))
    if key == "sslkey" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return path.read_bytes()  # libpq refuses a key that others can read: it gets a private copy
    return str(path)


def _private_folder(var: str) -> Path:
    """A new folder only this user can enter (mode 0700) for the certificate files, ``var`` first."""
    try:
        return Path(tempfile.mkdtemp(prefix="pg-load-ssl-"))
    except OSError as exc:
        raise _cannot_write(var, exc) from None


def _write_private(target: Path, var: str, data: bytes) -> Path:
    """``data`` in the new file ``target``, readable by this user only (mode 0600)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _cannot_write(var, exc) from None
    return target


def _cannot_write(var: str, exc: OSError) -> OSError:
    """The error for content of ``var`` that cannot be written: names TMPDIR, never quotes the content."""
    return OSError(
        exc.errno,
        f"cannot write {var}'s content to a private temporary file under "
        f"{tempfile.gettempdir()} (TMPDIR): {exc.strerror}",
    )
