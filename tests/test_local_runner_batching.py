"""pachyderm-local's datum batching on toy ``sh`` specs: one process per worker, skips, retries, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pachyderm_local.cli import main
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


def batched_spec(folder: Path, starts: Path, parallelism: int = 1, tries: int = 3) -> str:
    spec = {
        "pipeline": {"name": "upper"},
        "input": {"pfs": {"repo": "raw", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", LOOP], "datum_batching": True, "env": {"STARTS": str(starts)}},
        "parallelism_spec": {"constant": parallelism},
        "datum_tries": tries,
    }
    path = folder / "upper.json"
    path.write_text(json.dumps(spec))
    return str(path)


def put(run, root: Path, folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    assert run(root, "put-file", "raw", str(folder))[0] == 0


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
    logs = [(root / "logs" / job["id"] / f"{d['id']}.log").read_text() for d in job["datums"]]
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
    crash = next(d for d in Store(root).list_jobs()[-1]["datums"] if "crash" in json.dumps(d["inputs"]))
    assert crash["tries"] == 2 and crash["state"] == "success"
    assert run(root, "get-file", "upper:crash")[1] == "BOOM\n"

    put(run, root, tmp_path / "src", {"poison": "x\n"})
    code, out = run(root, "run", batched_spec(tmp_path, counter, tries=2))
    assert (code, out) == (1, "upper: processed=0 skipped=3 failed=1\n")
    assert starts(counter) == 4  # two tries, each in a fresh process
    poison = Store(root).list_jobs()[-1]["datums"][0]
    assert (poison["state"], poison["tries"], poison["error"]) == ("failed", 2, "exit code 7")
