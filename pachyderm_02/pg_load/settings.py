"""Typed settings for pg-load, read once at the entrypoint from flags and environment (flags win).

Secrets (the password, certificate material given as content) are kept out of ``repr`` and every message:
use :meth:`ConnectionSettings.describe` to name a server, and :func:`redact` on text that leaves the process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_SSLMODE = "verify-full"
#: seconds a load keeps retrying transient failures (a Cloud SQL failover or restart takes up to a minute)
DEFAULT_RETRY_SECONDS = 120
#: seconds libpq waits for one connection attempt unless DATABASE_URL sets connect_timeout; without it, a host
#: that drops packets during a failover would hold one attempt for the system's TCP timeout (minutes)
DEFAULT_CONNECT_TIMEOUT = 10

#: environment variable -> libpq keyword
PG_ENV = {
    "PG_HOST": "host",
    "PG_PORT": "port",
    "PG_DBNAME": "dbname",
    "PG_USER": "user",
    "PG_PASSWORD": "password",
    "PG_SSLMODE": "sslmode",
    "PG_SSLROOTCERT": "sslrootcert",
    "PG_SSLCERT": "sslcert",
    "PG_SSLKEY": "sslkey",
}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message never contains a secret."""


@dataclass(frozen=True)
class ConnectionSettings:
    """Where Postgres is and how to authenticate. Certificate fields hold a path or PEM/base64 content."""

    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str = DEFAULT_SSLMODE
    sslrootcert: str | None = field(default=None, repr=False)
    sslcert: str | None = field(default=None, repr=False)
    sslkey: str | None = field(default=None, repr=False)
    #: other libpq keywords from DATABASE_URL (connect_timeout, application_name, ...)
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConnectionSettings:
        """``DATABASE_URL`` (URI or key=value) first, then each non-empty ``PG_*`` variable overrides it."""
        params: dict[str, str] = {}
        origin: dict[str, str] = {}  # libpq keyword -> the variable it came from, for messages
        url = env.get("DATABASE_URL", "").strip()
        if url:
            params.update(_parse_dsn(url))
            origin.update(dict.fromkeys(params, "DATABASE_URL"))
        for var, key in PG_ENV.items():
            value = env.get(var)
            if value is not None and value.strip() != "":
                params[key] = value if key == "password" else value.strip()
                origin[key] = var
        if "host" not in params and "hostaddr" not in params:
            raise SettingsError(
                "no database configured: set PG_HOST (with PG_DBNAME, PG_USER, ...) or DATABASE_URL"
            )
        sslmode = params.pop("sslmode", DEFAULT_SSLMODE)
        if sslmode not in SSL_MODES:
            if origin.get("sslmode") == "DATABASE_URL":  # never echo a part of the URL: it holds the password
                raise SettingsError(f"DATABASE_URL: sslmode is not one of {', '.join(SSL_MODES)}")
            raise SettingsError(f"PG_SSLMODE={sslmode!r} is not one of {', '.join(SSL_MODES)}")
        port = params.pop("port", None)
        params.setdefault("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))
        known = {"host", "dbname", "user", "password", "sslrootcert", "sslcert", "sslkey"}
        return cls(
            host=params.get("host"),
            port=_port(port, origin.get("port", "PG_PORT")) if port is not None else None,
            dbname=params.get("dbname"),
            user=params.get("user"),
            password=params.get("password"),
            sslmode=sslmode,
            sslrootcert=params.get("sslrootcert"),
            sslcert=params.get("sslcert"),
            sslkey=params.get("sslkey"),
            options=tuple(sorted((k, v) for k, v in params.items() if k not in known)),
        )

    def describe(self) -> str:
        """``user@host:port/dbname (sslmode=...)``: safe to log."""
        where = self.host or "local socket"
        if self.port:
            where += f":{self.port}"
        user, dbname = self.user or "(default user)", self.dbname or "(default db)"
        return f"{user}@{where}/{dbname} (sslmode={self.sslmode})"


@dataclass(frozen=True)
class LoadSettings:
    """Everything one ``pg-load`` run needs."""

    in_dir: Path
    connection: ConnectionSettings
    #: seconds to keep retrying transient failures; 0 tries once
    retry_seconds: int = DEFAULT_RETRY_SECONDS
    #: an additional cap on the number of tries (None: the retry time alone bounds them)
    max_attempts: int | None = None
    pach_job_id: str | None = None
    input_commit: str | None = None

    @classmethod
    def from_args(
        cls,
        in_dir: str | Path,
        env: Mapping[str, str],
        *,
        max_attempts: int | None = None,
        retry_seconds: int | None = None,
        pach_job_id: str | None = None,
        input_commit: str | None = None,
    ) -> LoadSettings:
        in_path = Path(in_dir)
        attempts = max_attempts if max_attempts is not None else _int_env(env, "PG_LOAD_MAX_ATTEMPTS")
        if attempts is not None and attempts < 1:
            raise SettingsError(f"max attempts must be >= 1, got {attempts}")
        retry = _int_setting(
            retry_seconds,
            env,
            "PG_LOAD_RETRY_SECONDS",
            DEFAULT_RETRY_SECONDS,
            0,
            "retry seconds must be >= 0",
        )
        return cls(
            in_dir=in_path,
            connection=ConnectionSettings.from_env(env),
            retry_seconds=retry,
            max_attempts=attempts,
            pach_job_id=pach_job_id or env.get("PACH_JOB_ID") or None,
            input_commit=input_commit or pachyderm_input_commit(in_path, env),
        )


def pachyderm_input_commit(in_dir: Path, env: Mapping[str, str]) -> str | None:
    """Pachyderm exports ``<input>_COMMIT`` for each input, which is mounted at ``/pfs/<input>``."""
    return env.get(f"{in_dir.name}_COMMIT") or env.get("PG_LOAD_INPUT_COMMIT") or None


def redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """Remove secrets and any password embedded in a URI or key=value DSN from ``text``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _parse_dsn(url: str) -> dict[str, str]:
    from psycopg2.extensions import parse_dsn

    try:
        return dict(parse_dsn(url))
    except Exception:
        # libpq's message may quote parts of the string, including the password: say only what is wrong.
        raise SettingsError(
            "DATABASE_URL is not a valid libpq connection string (postgresql://user:pass@host:port/db?...)"
        ) from None


def _port(value: str, var: str) -> int:
    """The port as a number; ``var`` names where it came from (a DATABASE_URL part is never echoed)."""
    try:
        port = int(value)
    except ValueError:
        port = None
    if var == "DATABASE_URL":
        if port is None or not 0 < port < 65536:
            raise SettingsError(
                "DATABASE_URL: the port is not a number from 1 to 65535 (one host and port are supported; "
                "the URL is not shown: it holds the password)"
            )
        return port
    if port is None:
        raise SettingsError(f"{var} must be a number, got {value!r}")
    if not 0 < port < 65536:
        raise SettingsError(f"{var} out of range: {port}")
    return port


def _int_setting(
    flag: int | None, env: Mapping[str, str], name: str, default: int, minimum: int, rule: str
) -> int:
    """The flag, else the environment variable ``name``, else ``default``; SettingsError below ``minimum``."""
    value = flag if flag is not None else _int_env(env, name)
    value = default if value is None else value
    if value < minimum:
        raise SettingsError(f"{rule}, got {value}")
    return value


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None
