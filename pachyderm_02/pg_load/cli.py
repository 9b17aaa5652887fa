"""``pg-load IN_DIR``: make Postgres an exact mirror of the answering step's output (the composition root).

Settings are read once here (flags win over environment); everything below receives them as arguments.
Exit 0 with a one-line summary on stdout, or exit 1 with one JSON line on stderr that never holds a secret.
SIGTERM (how Kubernetes stops a pod), SIGINT and SIGHUP end it the same way, with exit status 128 + the signal
number, after every ``finally`` has run: an unfinished transaction is rolled back by the server, and no
certificate file is left behind.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pg_load.certs import check_certificates, connect_params, env_secret_values, secret_values
from pg_load.diagnose import RowError
from pg_load.plan import InputError, scan
from pg_load.settings import ConnectionSettings, LoadSettings, SettingsError, redact
from pg_load.store import LoadError, LoadResult, PostgresAnswerStore, Provenance, RetryPolicy, StepHook

log = logging.getLogger("pg_load")

#: signals that stop a load cleanly (exit status 128 + the number, as a shell reports a process they killed)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, so no ``except Exception`` on the way up can swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class Summary:
    result: LoadResult
    seconds: float

    def line(self) -> str:
        p = self.result.plan
        rate = self.result.rows_read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"pg-load: files unchanged={len(p.unchanged)} added={len(p.added)} replaced={len(p.replaced)} "
            f"deleted={len(p.deleted)}; rows read={self.result.rows_read} (answers={self.result.answer_rows} "
            f"rejected={self.result.rejected_rows}) written={self.result.rows_written}; "
            f"seconds={self.seconds:.3f}; rows/s={rate:.0f}"
        )


def run(settings: LoadSettings, *, on_step: StepHook | None = None, sleep=time.sleep) -> Summary:
    """Scan ``settings.in_dir`` and mirror it into the configured database."""
    import psycopg2

    start = time.perf_counter()
    check_certificates(settings.connection)
    sources = scan(settings.in_dir)

    def connect(connection: ConnectionSettings = settings.connection):
        # Certificate files exist only while libpq opens the connection: it reads them in the handshake.
        with connect_params(connection) as params:
            return psycopg2.connect(**params)

    store = PostgresAnswerStore(
        connect,
        target=settings.connection.describe(),
        retry=RetryPolicy(
            max_seconds=settings.retry_seconds, max_attempts=settings.max_attempts, sleep=sleep
        ),
        on_step=on_step,
    )
    result = store.sync(sources, Provenance(settings.pach_job_id, settings.input_commit))
    return Summary(result, time.perf_counter() - start)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pg-load",
        description="Mirror the answering step's output (answers/ and rejected/ CSVs) into Postgres, "
        "in one transaction. Connection settings come from PG_* variables or DATABASE_URL.",
    )
    parser.add_argument("in_dir", metavar="IN_DIR", help="the answering output, e.g. /pfs/qa-answer")
    parser.add_argument(
        "--retry-seconds",
        type=int,
        help="seconds to keep retrying a lost or unreachable database; 0 tries once "
        "(env PG_LOAD_RETRY_SECONDS, 120)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        help="also cap the tries at this number (env PG_LOAD_MAX_ATTEMPTS; no cap by default)",
    )
    parser.add_argument("--job-id", help="provenance job id (env PACH_JOB_ID)")
    parser.add_argument("--input-commit", help="provenance input commit (env <input>_COMMIT)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only the summary and errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    secrets = env_secret_values(env)
    redacting = _Redacting(secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(redacting)
    try:
        with _stop_signals_raise():
            settings = LoadSettings.from_args(
                args.in_dir,
                env,
                max_attempts=args.max_attempts,
                retry_seconds=args.retry_seconds,
                pach_job_id=args.job_id,
                input_commit=args.input_commit,
            )
            secrets += secret_values(settings.connection)
            redacting.secrets = secrets
            log.info("loading %s into %s", settings.in_dir, settings.connection.describe())
            summary = run(settings)
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        _fail(f"stopped by {name}; an unfinished load changes nothing", "Stopped", secrets)
        return 128 + stop.signum
    except OSError as exc:
        return _fail(describe_os_error(exc), type(exc).__name__, secrets)
    except (SettingsError, InputError, RowError, LoadError) as exc:
        return _fail(str(exc), type(exc).__name__, secrets)
    except Exception as exc:  # one clean line, still redacted, for anything unexpected
        return _fail(f"unexpected error: {exc}", type(exc).__name__, secrets)
    finally:
        for handler in root.handlers:
            handler.removeFilter(redacting)
    print(summary.line(), flush=True)
    return 0


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error; a full disk says so first."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device: {exc}; nothing was changed: free space and run pg-load again"
    return str(exc)


def _fail(message: str, kind: str, secrets: tuple[str, ...]) -> int:
    record = {"severity": "ERROR", "error": kind, "message": redact(message, secrets)}
    print(json.dumps(record, ensure_ascii=False), file=sys.stderr, flush=True)
    return 1


class _Redacting(logging.Filter):
    """Scrubs secrets from every log record, whatever a library puts in it."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.secrets), None
        return True


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGINT/SIGHUP into :class:`Stopped` (once; later ones are ignored while cleaning up).

    Python runs the handler between bytecodes of the main thread; during a libpq call (connecting, running a
    statement) it runs when the call returns. connect_timeout bounds that while connecting, the only time key
    files exist.
    """

    def stop(signum: int, frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)

    try:
        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread (an embedding program): it keeps its own signal handling
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
