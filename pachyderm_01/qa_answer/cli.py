"""``qa-answer``: the composition root of image 1.

Parses flags and environment once into typed settings, builds the source or the model, and calls the
plain run functions. ``ingest`` never imports torch or transformers (they load only for ``answer``).
Expected failures print one ``qa-answer: error: ...`` line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from qa_answer.csv_input import DEFAULT_CHUNK_ROWS, DEFAULT_MAX_RECORD_BYTES
from qa_answer.errors import USER_ERRORS
from qa_answer.faults import FAULT_ENV, Faults
from qa_answer.qa_config import DEFAULT_MODEL
from qa_answer.settings import (
    CHUNK_ROWS_ENV,
    DATUM_BATCHING_ENV,
    FAIL_ON_REJECT_ENV,
    MAX_RECORD_BYTES_ENV,
    PACHCTL_ENV,
    QA_OPTIONS,
    AnswerSettings,
    answer_settings,
    existing_dir,
    ingest_settings,
)

if TYPE_CHECKING:
    from qa_answer.answer_run import RunSummary

PROG = "qa-answer"
EXIT_OK = 0
EXIT_ERROR = 1
#: --fail-on-reject: the run finished, but some rows or files were rejected.
EXIT_REJECTED = 3

_QA_HELP = {
    "model": f"hub id or local model folder (default {DEFAULT_MODEL})",
    "batch_size": "windows per forward pass (default: sized for the device; 32 on a CPU)",
    "max_seq_len": "tokens per window, question included (default 384)",
    "doc_stride": "tokens of overlap between windows of a long context (default 128)",
    "max_answer_len": "longest answer in tokens (default 15)",
    "device": "auto (cuda when available), cpu, cuda or cuda:N (default auto)",
    "precision": "fp32 (default, exact), bf16, fp16 (CUDA), int8 (CPU) or fast (the fastest, timed at "
    "start-up); other than fp32 the summary gives the agreement with fp32 of a sample of rows",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Batch extractive question answering over CSVs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="copy every *.csv under gs://BUCKET[/PREFIX] or a local folder into OUT_DIR",
        description="Copy every *.csv under SOURCE into OUT_DIR, keeping relative paths. Read-only.",
    )
    ingest.add_argument("source", metavar="SOURCE", help="gs://BUCKET[/PREFIX] or a local folder")
    ingest.add_argument("out_dir", metavar="OUT_DIR")

    answer = commands.add_parser(
        "answer",
        help="answer every row of every *.csv under IN_DIR into OUT_DIR/answers and OUT_DIR/rejected",
        description="Answer every row of every *.csv under IN_DIR. Flags win over the environment variables.",
    )
    answer.add_argument("in_dir", metavar="IN_DIR")
    answer.add_argument("out_dir", metavar="OUT_DIR")
    for name, flag, variable, _kind in QA_OPTIONS:
        answer.add_argument(
            flag, dest=name, metavar=variable.removeprefix("QA_"), help=f"{_QA_HELP[name]}; env {variable}"
        )
    answer.add_argument(
        "--chunk-rows",
        dest="chunk_rows",
        metavar="N",
        help=f"rows sent to the model at a time (default {DEFAULT_CHUNK_ROWS}); env {CHUNK_ROWS_ENV}",
    )
    answer.add_argument(
        "--max-record-bytes",
        dest="max_record_bytes",
        metavar="N",
        help="largest CSV record read, in bytes; a longer one is rejected "
        f"(default {DEFAULT_MAX_RECORD_BYTES}); env {MAX_RECORD_BYTES_ENV}",
    )
    answer.add_argument(
        "--fail-on-reject",
        action="store_true",
        default=None,
        help=f"exit {EXIT_REJECTED} if any row or file was rejected (default 0); env {FAIL_ON_REJECT_ENV}",
    )
    answer.add_argument(
        "--datum-batching",
        action="store_true",
        default=None,
        help="Pachyderm datum batching: load the model once, then answer IN_DIR after each "
        f"'pachctl next datum' until the worker stops the process; env {DATUM_BATCHING_ENV} "
        f"(pachctl command: env {PACHCTL_ENV}, default pachctl)",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environment = os.environ if env is None else env
    with _logging_to_stderr():
        try:
            if args.command == "ingest":
                return run_ingest(vars(args), environment)
            return run_answer(vars(args), environment)
        except USER_ERRORS as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR


def run_ingest(flags: Mapping[str, object], env: Mapping[str, str]) -> int:
    from qa_answer.ingest import mirror_source
    from qa_answer.settings import GCSLocation
    from qa_answer.sources import GCSSource, LocalFolderSource, gcs_client

    settings = ingest_settings(flags, env)
    if isinstance(settings.source, GCSLocation):
        _quiet_google_warnings()
        client = gcs_client(settings.emulator_host, settings.project, settings.credentials_file)
        source = GCSSource(client, settings.source.bucket, settings.source.prefix)
    else:
        source = LocalFolderSource(settings.source)
    summary = mirror_source(source, settings.out_dir)
    print(summary.line(source.url), file=sys.stdout, flush=True)
    return EXIT_OK


def run_answer(flags: Mapping[str, object], env: Mapping[str, str]) -> int:
    settings = answer_settings(flags, env)
    faults = Faults.parse(env.get(FAULT_ENV))
    from qa_answer.answer_run import answer_folder
    from qa_answer.qa_core import load_qa_model

    progress = sys.stderr.isatty()
    if not progress:
        # transformers draws its own bars (weight loading) even into log files; keep logs to events.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    model = load_qa_model(settings.qa)
    logging.getLogger("qa_answer").info(
        "loaded model %s in %.1fs", settings.qa.model, time.perf_counter() - started
    )

    def answer_datum() -> int:
        if settings.datum_batching:
            existing_dir(settings.in_dir, "IN_DIR")
        with _tqdm_safe_logging(progress):
            summary = answer_folder(
                settings.in_dir,
                settings.out_dir,
                model,
                settings.chunk_rows,
                progress,
                # Each batched datum sees only its own files in IN_DIR: nothing else in OUT_DIR is stale.
                prune=not settings.datum_batching,
                max_record_bytes=settings.max_record_bytes,
                faults=faults,
            )
        agreement = model.take_agreement()  # per datum: each summary covers its own rows
        line = summary.line() if agreement is None else f"{summary.line()} {agreement.line()}"
        print(line, file=sys.stdout, flush=True)
        return _exit_code(settings, summary)

    if not settings.datum_batching:
        return answer_datum()
    from qa_answer.datum_batching import next_datum, serve_datums

    return serve_datums(lambda: next_datum(settings.pachctl), answer_datum)


def _exit_code(settings: AnswerSettings, summary: RunSummary) -> int:
    if settings.fail_on_reject and summary.anything_rejected:
        print(
            f"{PROG}: {summary.rejected} rows and {summary.unreadable_files} files rejected "
            f"(see {settings.out_dir / 'rejected'}); exiting {EXIT_REJECTED} (--fail-on-reject)",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    return EXIT_OK


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """INFO and above from our modules on the current stderr, for the duration of one command."""
    logger = logging.getLogger("qa_answer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


@contextmanager
def _tqdm_safe_logging(progress: bool) -> Iterator[None]:
    if not progress:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("qa_answer")]):
        yield


def _quiet_google_warnings() -> None:
    # google.api_core warns about the Python version on import; not actionable for a job's user.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")


if __name__ == "__main__":
    sys.exit(main())
