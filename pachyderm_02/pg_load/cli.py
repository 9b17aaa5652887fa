"""``pg-load IN_DIR``: make Postgres an exact mirror of the answering step's output (the composition root).

Settings are read once here (flags win over environment); everything below receives them as arguments.
Exit 0 with a one-line summary on stdout, or exit 1 with one JSON line on stderr that never holds a secret.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .certs import connect_params, secret_values
from .plan import InputError, scan
from .settings import LoadSettings, SettingsError, redact
from .store import LoadError, LoadResult, PostgresAnswerStore, Provenance, RetryPolicy, StepHook
from .validate import RowError

log = logging.getLogger("pg_load")


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
    sources = scan(settings.in_dir)
    with connect_params(settings.connection) as params:
        store = PostgresAnswerStore(
            lambda: psycopg2.connect(**params),
            target=settings.connection.describe(),
            retry=RetryPolicy(max_attempts=settings.max_attempts, sleep=sleep),
            on_step=on_step,
            read_ahead_bytes=settings.read_ahead_mb << 20,
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
        "--max-attempts", type=int, help="tries on transient connection errors (env PG_LOAD_MAX_ATTEMPTS, 5)"
    )
    parser.add_argument(
        "--read-ahead-mb",
        type=int,
        help="MiB of input read and hashed while connecting; 0 streams every file "
        "(env PG_LOAD_READ_AHEAD_MB, 64)",
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
    secrets: tuple[str, ...] = tuple(v for v in (env.get("PG_PASSWORD"),) if v)
    try:
        settings = LoadSettings.from_args(
            args.in_dir,
            env,
            max_attempts=args.max_attempts,
            read_ahead_mb=args.read_ahead_mb,
            pach_job_id=args.job_id,
            input_commit=args.input_commit,
        )
        secrets += secret_values(settings.connection)
        log.info("loading %s into %s", settings.in_dir, settings.connection.describe())
        summary = run(settings)
    except (SettingsError, InputError, RowError, LoadError, OSError) as exc:
        return _fail(str(exc), type(exc).__name__, secrets)
    except Exception as exc:  # one clean line, still redacted, for anything unexpected
        return _fail(f"unexpected error: {exc}", type(exc).__name__, secrets)
    print(summary.line(), flush=True)
    return 0


def _fail(message: str, kind: str, secrets: tuple[str, ...]) -> int:
    record = {"severity": "ERROR", "error": kind, "message": redact(message, secrets)}
    print(json.dumps(record, ensure_ascii=False), file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
