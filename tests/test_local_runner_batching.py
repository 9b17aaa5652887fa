"""pachyderm-local's datum batching on toy ``sh`` specs: one process per worker, skips, retries, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_runner import make_files
from pachyderm_local.batching import datum_sets
from pachyderm_local.cli import main
from pachyderm_local.datums import Datum, DatumInput
from pachyderm_local.store import Store

# Counts its own starts, then upper-cases each datum into /pfs/out after every `pachctl next datum`.
# A datum holding `crash` kills the process once (first time only, marker file), `poison` always does.
LOOP = (
    'echo started >> "$STARTS"; echo "process up"; '
    "while pachctl next datum; do "
    "  for f in /pfs/raw/*; do "
    '    n=$(basename "$f"); '
    '    if [ "$n" = poison ]; then exit 7; fi; '
    '    if [ "$n" = crash ] && [ ! -e "$STARTS.crashed" ]; then touch "$STARTS.crashed"; exit 5; fi; '
    '    tr a-z A-Z < "$f" > "/pfs/out/$n"; echo "did $n"; '
    "  done; "
    "done; exit 1"
)


@pytest.fixture
def run(capsys):
    """The CLI in-process; returns (exit code, stdout)."""

    def call(root: Path, *argv: str) -> tuple[int, str]:
        code = main(["--root", str(root), *argv])
        return code, capsys.readouterr().out

    return call


def batched_spec(
    folder: Path, starts: Path, parallelism: int = 1, tries: int = 3, set_size: int | None = 100
) -> str:
    """A batched spec; ``set_size`` datums per datum set (None: Pachyderm's default sizing)."""
    spec = {
        "pipeline": {"name": "upper"},
        "input": {"pfs": {"repo": "raw", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", LOOP], "datum_batching": True, "env": {"STARTS": str(starts)}},
        "parallelism_spec": {"constant": parallelism},
        "datum_tries": tries,
        **({"datum_set_spec": {"number": set_size}} if set_size else {}),
    }
    path = folder / "upper.json"
    path.write_text(json.dumps(spec))
    return str(path)


def put(run, root: Path, folder: Path, files: dict[str, str]) -> None:
    assert run(root, "put-file", "raw", str(make_files(folder, files)))[0] == 0


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def starts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_one_process_serves_every_datum_and_reruns_skip(tmp_path, run):
    root, counter = tmp_path / "root", tmp_path / "starts"
    put(run, root, tmp_path / "src", {"a": "apple\n", "b": "banana\n", "c": "cherry\n"})
    spec = batched_spec(tmp_path, counter)
    assert run(root, "run", spec) == (0, "upper: processed=3 skipped=0 failed=0\n")
    assert starts(counter) == 1
    assert run(root, "get-file", "upper:b")[1] == "BANANA\n"
    job = Store(root).list_jobs()[-1]
    logs = [(root / "logs" / job.id / f"{d.id}.log").read_text() for d in job.datums]
    assert sum("process up" in text for text in logs) == 1  # start-up output lands in the first datum's log
    assert sorted(next(line for line in t.splitlines() if line.startswith("did")) for t in logs) == [
        "did a",
        "did b",
        "did c",
    ]

    assert run(root, "run", spec) == (0, "upper: processed=0 skipped=3 failed=0\n")
    assert starts(counter) == 1  # nothing to do: no process
    put(run, root, tmp_path / "src", {"d": "date\n"})
    assert run(root, "run", spec) == (0, "upper: processed=1 skipped=3 failed=0\n")
    assert starts(counter) == 2
    assert [ln.split("\t")[0] for ln in run(root, "list-files", "upper")[1].splitlines()] == [
        "/a",
        "/b",
        "/c",
        "/d",
    ]


def test_parallel_workers_each_start_once(tmp_path, run):
    root, counter = tmp_path / "root", tmp_path / "starts"
    put(run, root, tmp_path / "src", {f"f{i}": f"x{i}\n" for i in range(6)})
    assert run(root, "run", batched_spec(tmp_path, counter, parallelism=2)) == (
        0,
        "upper: processed=6 skipped=0 failed=0\n",
    )
    assert 1 <= starts(counter) <= 2
    assert run(root, "get-file", "upper:f5")[1] == "X5\n"


def test_a_crash_fails_the_datum_in_flight_and_a_fresh_process_retries_it(tmp_path, run):
    root, counter = tmp_path / "root", tmp_path / "starts"
    put(run, root, tmp_path / "src", {"a": "apple\n", "crash": "boom\n", "z": "zebra\n"})
    assert run(root, "run", batched_spec(tmp_path, counter)) == (0, "upper: processed=3 skipped=0 failed=0\n")
    assert starts(counter) == 2
    crash = next(d for d in Store(root).list_jobs()[-1].datums if "crash" in d.inputs)
    assert crash.tries == 2 and crash.state == "success"
    assert run(root, "get-file", "upper:crash")[1] == "BOOM\n"

    put(run, root, tmp_path / "src", {"poison": "x\n"})
    code, out = run(root, "run", batched_spec(tmp_path, counter, tries=2))
    assert (code, out) == (1, "upper: processed=0 skipped=3 failed=1\n")
    assert starts(counter) == 4  # two tries, each in a fresh process
    poison = Store(root).list_jobs()[-1].datums[0]
    assert (poison.state, poison.tries, poison.error) == ("failed", 2, "exit code 7")


# -- Pachyderm's TestDatumBatching (src/server/pachyderm_test.go), carried over ------------------------
# 15 files /file-00../file-14, glob /*, `bash` reading the script on stdin, datum_set_spec number 5; a
# marker file stands for the test's /tmp/exec.

NUM_FILES = 15


def datum_batching_job(tmp_path: Path, run, script: str, **extra) -> tuple[int, str, dict]:
    root = tmp_path / "root"
    put(run, root, tmp_path / "src", {f"file-{i:02d}": "" for i in range(NUM_FILES)})
    spec = {
        "pipeline": {"name": "batching"},
        "input": {"pfs": {"repo": "raw", "glob": "/*"}},
        "transform": {
            "cmd": ["bash"],
            "stdin": [script],
            "datum_batching": True,
            "env": {"EXEC": str(tmp_path / "exec")},
        },
        "datum_set_spec": {"number": 5},
        **extra,
    }
    path = tmp_path / "batching.json"
    path.write_text(json.dumps(spec))
    code, out = run(root, "run", str(path))
    return code, out, Store(root).list_jobs()[-1]


def output_files(run, root: Path) -> list[str]:
    return [line.split("\t")[0] for line in run(root, "list-files", "batching")[1].splitlines()]


LOOP_BODY = 'if [ ! -f "$EXEC" ]; then touch "$EXEC"; {first_time}; fi; cp /pfs/raw/* /pfs/out/'


@pytest.mark.parametrize(
    ("case", "first_time", "extra"),
    [
        ("Basic", "true", {}),
        ("Error", "pachctl next datum --error oops", {}),
        ("Exit", "exit 1", {}),
        ("DatumTimeout", "sleep 5", {"datum_timeout": "1s"}),
    ],
)
def test_datum_batching_succeeds(tmp_path, run, case, first_time, extra):
    script = "while true\ndo\n  pachctl next datum\n  " + LOOP_BODY.format(first_time=first_time) + "\ndone\n"
    code, out, job = datum_batching_job(tmp_path, run, script, **extra)
    assert (code, job.state) == (0, "success"), out
    assert output_files(run, tmp_path / "root") == [f"/file-{i:02d}" for i in range(NUM_FILES)]
    retried = [d for d in job.datums if d.tries > 1]
    assert len(retried) == (0 if case == "Basic" else 1)


@pytest.mark.parametrize(
    ("case", "script", "state"),
    [
        ("JobFailure", "pachctl next datum\nexit 1\n", "failure"),
        ("PrematureExit", "pachctl next datum\nexit 0\n", "failure"),
    ],
)
def test_datum_batching_fails_the_job(tmp_path, run, case, script, state):
    code, _, job = datum_batching_job(tmp_path, run, script, datum_tries=1)
    assert (code, job.state) == (1, state)
    assert job.failed == NUM_FILES


def test_datum_batching_job_timeout_kills_the_job_and_its_processes(tmp_path, run):
    pids = tmp_path / "pids"
    code, _, job = datum_batching_job(
        tmp_path, run, f"sleep 3600 & echo $! >> {pids}; echo $$ >> {pids}; wait", job_timeout="2s"
    )
    assert (code, job.state) == (1, "killed")
    assert job.reason == "job timed out after 2s (job_timeout)"
    assert [p for p in pids.read_text().split() if alive(int(p))] == []


def test_datum_batching_env_file_gives_each_datum_its_id(tmp_path, run):
    script = (
        "set -a\nwhile true\ndo\n  pachctl next datum\n  source /pfs/.env\n"
        '  if [ -z "$PACH_DATUM_ID" ]; then exit 1; fi\n  touch /pfs/out/$PACH_DATUM_ID\ndone\n'
    )
    code, _, job = datum_batching_job(tmp_path, run, script)
    assert (code, job.state) == (0, "success")
    assert sorted(p.lstrip("/") for p in output_files(run, tmp_path / "root")) == sorted(
        d.datum_id for d in job.datums
    )


def test_user_code_that_exits_before_its_first_datum_fails_the_job(tmp_path, run):
    code, out, job = datum_batching_job(tmp_path, run, "echo loading; exit 3\n")
    assert (code, out) == (1, "batching: processed=0 skipped=0 failed=0\n")
    assert job.state == "failure"
    assert job.reason.startswith("the user code exited (exit code 3) before its first `pachctl next datum`")


def test_the_user_code_starts_once_per_datum_set(tmp_path, run):
    """15 datums, 1 worker, Pachyderm's default sizing: 15 // (1 x 4) = 3 datums a set, 5 sets."""
    root, counter = tmp_path / "root", tmp_path / "starts"
    put(run, root, tmp_path / "src", {f"f{i:02d}": "x\n" for i in range(15)})
    assert run(root, "run", batched_spec(tmp_path, counter, set_size=None))[0] == 0
    assert starts(counter) == 5


@pytest.mark.parametrize(
    ("count", "workers", "spec", "sizes"),
    [
        (15, 1, {}, [3, 3, 3, 3, 3]),  # 15 // (1 x 4)
        (3, 4, {}, [1, 1, 1]),  # 3 // 16 is 0: at least 1
        (40, 4, {}, [2] * 20),
        (15, 1, {"number": 5}, [5, 5, 5]),
        (7, 1, {"number": 5}, [5, 2]),
        (12, 2, {"per_worker": 1}, [6, 6]),
        # the project's qa-answer spec: per_worker 1 on 4 workers (docs/pipeline.md)
        (100, 4, {"per_worker": 1}, [25] * 4),
        (101, 4, {"per_worker": 1}, [25] * 4 + [1]),
        (11, 4, {"per_worker": 1}, [2] * 5 + [1]),
        (7, 4, {"per_worker": 1}, [1] * 7),
        (6, 1, {"size_bytes": 25}, [3, 3]),  # 10 bytes each: a set closes once it reached 25
    ],
)
def test_datum_sets_are_cut_as_pachyderm_cuts_them(count, workers, spec, sizes):
    datums = [Datum((DatumInput("in", "raw", "c", f"/f{i}", ((f"f{i}", "h"),)),)) for i in range(count)]
    sets = datum_sets(datums, workers, size_of=lambda d: 10, **spec)
    assert [len(s) for s in sets] == sizes
    assert [d for s in sets for d in s] == datums  # order kept
