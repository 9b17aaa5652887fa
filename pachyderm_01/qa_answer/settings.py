"""Typed settings for the two commands, built once from flags and the environment (a flag wins).

Pure: takes the parsed flags and an environment mapping, returns frozen dataclasses or raises
``SettingsError`` with a one-line message naming the flag, the variable and the bad value.
An empty environment variable counts as unset (specs often declare them with empty defaults).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qa_answer.csv_input import DEFAULT_CHUNK_ROWS, DEFAULT_MAX_RECORD_BYTES
from qa_answer.errors import SettingsError
from qa_answer.qa_config import QAConfig

#: (QAConfig field, flag, environment variable, type)
QA_OPTIONS = (
    ("model", "--model", "QA_MODEL", str),
    ("batch_size", "--batch-size", "QA_BATCH_SIZE", int),
    ("max_seq_len", "--max-seq-len", "QA_MAX_SEQ_LEN", int),
    ("doc_stride", "--doc-stride", "QA_DOC_STRIDE", int),
    ("max_answer_len", "--max-answer-len", "QA_MAX_ANSWER_LEN", int),
    ("device", "--device", "QA_DEVICE", str),
    ("precision", "--precision", "QA_PRECISION", str),
)
CHUNK_ROWS_ENV = "QA_CHUNK_ROWS"
MAX_RECORD_BYTES_ENV = "QA_MAX_RECORD_BYTES"
FAIL_ON_REJECT_ENV = "QA_FAIL_ON_REJECT"
DATUM_BATCHING_ENV = "QA_DATUM_BATCHING"
PACHCTL_ENV = "QA_PACHCTL"
DEFAULT_PACHCTL = "pachctl"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
#: Project name given to the anonymous client when talking to an emulator (it needs one, any will do).
EMULATOR_PROJECT = "emulator"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class AnswerSettings:
    in_dir: Path
    out_dir: Path
    qa: QAConfig
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    #: bytes of one CSV record; a longer record is rejected unread
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    fail_on_reject: bool = False
    #: Pachyderm datum batching: load the model once, then loop on ``pachctl next datum``.
    datum_batching: bool = False
    pachctl: str = DEFAULT_PACHCTL


@dataclass(frozen=True)
class GCSLocation:
    bucket: str
    prefix: str  # "" (whole bucket) or ending in "/"

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class IngestSettings:
    source: GCSLocation | Path
    out_dir: Path
    emulator_host: str | None = None
    credentials_file: Path | None = None
    project: str | None = None


def answer_settings(flags: Mapping[str, object], env: Mapping[str, str]) -> AnswerSettings:
    """Flags (``None`` = not given) win over ``QA_*`` variables, which win over QAConfig's defaults."""
    values: dict[str, object] = {}
    for name, flag, variable, kind in QA_OPTIONS:
        value = _pick(flags.get(name), flag, env, variable, kind)
        if value is not None:
            values[name] = value
    try:
        qa = QAConfig(**values)
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    chunk_rows = _pick(flags.get("chunk_rows"), "--chunk-rows", env, CHUNK_ROWS_ENV, int)
    if chunk_rows is None:
        chunk_rows = DEFAULT_CHUNK_ROWS
    if chunk_rows < 1:
        raise SettingsError(f"invalid settings: chunk_rows must be an integer >= 1, got {chunk_rows}")
    max_record_bytes = _pick(
        flags.get("max_record_bytes"), "--max-record-bytes", env, MAX_RECORD_BYTES_ENV, int
    )
    if max_record_bytes is None:
        max_record_bytes = DEFAULT_MAX_RECORD_BYTES
    if max_record_bytes < 1:
        raise SettingsError(
            f"invalid settings: max_record_bytes must be an integer >= 1, got {max_record_bytes}"
        )
    fail_on_reject = flags.get("fail_on_reject") or _env_bool(env, FAIL_ON_REJECT_ENV)
    datum_batching = bool(flags.get("datum_batching") or _env_bool(env, DATUM_BATCHING_ENV))
    pachctl = (env.get(PACHCTL_ENV) or "").strip() or DEFAULT_PACHCTL
    # With datum batching IN_DIR appears only once the worker lays out the first datum: checked per datum.
    in_dir = Path(str(flags["in_dir"])) if datum_batching else existing_dir(flags["in_dir"], "IN_DIR")
    out_dir = Path(str(flags["out_dir"]))
    if out_dir.resolve() == in_dir.resolve():
        raise SettingsError(
            f"invalid settings: OUT_DIR is IN_DIR ({in_dir}): the next run would read its own answers/ and "
            "rejected/ files as questions; use another folder"
        )
    return AnswerSettings(
        in_dir=in_dir,
        out_dir=out_dir,
        qa=qa,
        chunk_rows=chunk_rows,
        max_record_bytes=max_record_bytes,
        fail_on_reject=bool(fail_on_reject),
        datum_batching=datum_batching,
        pachctl=pachctl,
    )


def ingest_settings(flags: Mapping[str, object], env: Mapping[str, str]) -> IngestSettings:
    source_text = str(flags["source"])
    emulator = env.get(EMULATOR_ENV) or None
    credentials = env.get(CREDENTIALS_ENV) or None
    source: GCSLocation | Path
    if source_text.startswith("gs://"):
        source = parse_gcs_url(source_text)
        if credentials and not emulator and not Path(credentials).is_file():
            raise SettingsError(f"{CREDENTIALS_ENV} points to {credentials!r}, which is not a file")
    else:
        scheme = _SCHEME.match(source_text)
        if scheme:
            raise SettingsError(
                f"unsupported source scheme '{scheme.group(1)}://': "
                "use gs://BUCKET[/PREFIX] or a local folder"
            )
        source = existing_dir(source_text, "SOURCE")
    project = env.get(PROJECT_ENV) or (EMULATOR_PROJECT if emulator else None)
    return IngestSettings(
        source=source,
        out_dir=Path(str(flags["out_dir"])),
        emulator_host=emulator,
        credentials_file=Path(credentials) if credentials else None,
        project=project,
    )


def parse_gcs_url(url: str) -> GCSLocation:
    """``gs://bucket``, ``gs://bucket/``, ``gs://bucket/a/b`` and ``gs://bucket/a/b/`` (a folder prefix)."""
    rest = url[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise SettingsError(f"no bucket in {url!r}: expected gs://BUCKET[/PREFIX] (is GCS_BUCKET set?)")
    if not _BUCKET.match(bucket):
        raise SettingsError(f"invalid bucket name {bucket!r} in {url!r}")
    prefix = "/".join(part for part in prefix.split("/") if part)
    return GCSLocation(bucket=bucket, prefix=prefix + "/" if prefix else "")


def _pick(flag_value: object, flag: str, env: Mapping[str, str], variable: str, kind: type) -> object:
    if flag_value is not None:
        return _convert(flag_value, kind, flag)
    raw = env.get(variable)
    if raw is None or not raw.strip():
        return None
    return _convert(raw, kind, variable)


def _convert(value: object, kind: type, source: str) -> object:
    if kind is int:
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"invalid settings: {source} must be an integer, got {value!r}") from None
    return str(value).strip()


def _env_bool(env: Mapping[str, str], variable: str) -> bool:
    raw = (env.get(variable) or "").strip().lower()
    if not raw:
        return False
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"invalid settings: {variable} must be true or false, got {raw!r}")


def existing_dir(value: object, what: str) -> Path:
    path = Path(str(value))
    if not path.is_dir():
        raise SettingsError(f"{what} {str(path)!r} is not a folder")
    return path
