"""pachyderm-local under attack: paths that try to leave the store or the sandbox, runner kills, timeouts
that must take every child down, a full disk. Each test is a reproduction of an attack that once worked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_runner import make_files, write_spec
from pachyderm_local.cli import DISK_FULL_FAULT_ENV
from pachyderm_local.store import Store


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll a condition the test depends on (a process started, a file written) up to a deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def put_x_csv(pl, tmp_path: Path) -> None:
    """The one-file input most of these tests need: ``raw:x.csv``."""
    src = tmp_path / "x.csv"
    src.write_text("q\n")
    pl("put-file", "raw:x.csv", str(src))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start_runner(root: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pachyderm_local.cli", "--root", str(root), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- paths and names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "reason"),
    [
        ("raw:../../../x.csv", "relative file paths are not allowed"),
        ("raw:sub/../../x.csv", "relative file paths are not allowed"),
        ("raw:./x.csv", "relative file paths are not allowed"),
        ("raw:a*b.csv", "globbing character (*) not allowed in path"),
        ("raw:q[1].csv", "globbing character ([) not allowed in path"),
        ("raw:caf\u00e9.csv", "only printable ASCII characters allowed"),
        ("../x:a.csv", "only alphanumeric characters, underscores, and dashes are allowed"),
    ],
)
def test_put_file_refuses_paths_pachyderm_refuses(pl, tmp_path, dest, reason):
    src = tmp_path / "x.csv"
    src.write_text("q\n")
    code, _, err = pl("put-file", dest, str(src))
    assert code == 2 and reason in err
    assert not (pl.root / "repos" / "raw").exists() or Store(pl.root).head("raw") is None
    assert not (tmp_path / "x.csv.stored").exists() and sorted(p.name for p in tmp_path.iterdir()) in (
        ["root", "x.csv"],
        ["x.csv"],
    )


def test_put_file_cleans_a_path_as_pachyderm_does(pl, tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("q\n")
    assert pl("put-file", "raw://sub//x.csv", str(src))[0] == 0
    assert pl("list-files", "raw")[1].split("\t")[0] == "/sub/x.csv"


def test_put_file_of_a_folder_refuses_a_file_name_with_glob_characters(pl, tmp_path):
    code, _, err = pl("put-file", "raw", str(make_files(tmp_path / "src", {"ok.csv": "1", "what?.csv": "2"})))
    assert code == 2 and "what?.csv" in err and "globbing character (?)" in err
    assert Store(pl.root).head("raw") is None  # all or nothing


def test_reading_verbs_refuse_ids_and_paths_that_leave_the_store(pl, tmp_path):
    put_x_csv(pl, tmp_path)
    code, _, err = pl("get-file", "raw@../../etc:x.csv")
    assert code == 2 and "commit '../../etc' invalid" in err
    code, _, err = pl("get-file", "raw:../x.csv")
    assert code == 2 and "relative file paths are not allowed" in err
    code, _, err = pl("logs", "--job", "../../x")
    assert code == 2 and "job '../../x' invalid" in err


def test_an_input_name_cannot_map_pfs_outside_the_sandbox(pl, tmp_path):
    put_x_csv(pl, tmp_path)
    spec = write_spec(
        tmp_path, "esc", {"pfs": {"repo": "raw", "name": "../../x", "glob": "/*"}}, "ls /pfs > /pfs/out/ls"
    )
    code, out, err = pl("run", spec)
    assert (code, out) == (2, "")
    assert "input.pfs.name '../../x' invalid" in err
    assert not (pl.root / "tmp" / "x").exists() and not (pl.root / "x").exists()


def test_a_hand_edited_commit_cannot_write_outside_the_sandbox(pl, tmp_path):
    put_x_csv(pl, tmp_path)
    store = Store(pl.root)
    head = store.head("raw")
    manifest = store.repo_dir("raw") / "commits" / f"{head.id}.json"
    data = json.loads(manifest.read_text())
    data["files"] = {"../../../../escaped.csv": data["files"]["x.csv"]}
    manifest.write_text(json.dumps(data))
    spec = write_spec(tmp_path, "esc", {"pfs": {"repo": "raw", "glob": "/"}}, "true")
    code, _, err = pl("run", spec)
    assert code == 2 and "relative file paths are not allowed" in err
    assert not list(tmp_path.rglob("escaped.csv"))
    assert [j.state for j in Store(pl.root).list_jobs()] == ["failure"]


def test_an_output_file_name_pfs_cannot_hold_fails_the_datum(pl, tmp_path):
    put_x_csv(pl, tmp_path)
    spec = write_spec(
        tmp_path, "globby", {"pfs": {"repo": "raw", "glob": "/"}}, "echo 1 > '/pfs/out/a*b'", datum_tries=1
    )
    code, out, err = pl("run", spec)
    assert (code, out.strip()) == (1, "globby: processed=0 skipped=0 failed=1")
    assert "cannot upload an output file: path ('a*b') invalid: globbing character (*)" in err


# -- process groups ----------------------------------------------------------------------------------


def test_datum_timeout_kills_the_whole_process_group(pl, tmp_path):
    put_x_csv(pl, tmp_path)
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    spec = write_spec(
        tmp_path, "slow", {"pfs": {"repo": "raw", "glob": "/"}}, script, datum_timeout="1s", datum_tries=2
    )
    code, out, err = pl("run", spec)
    assert (code, out.strip()) == (1, "slow: processed=0 skipped=0 failed=1")
    assert "timed out after 1s" in err
    assert len(pids_in(pids)) == 6  # two tries, three processes each
    assert [p for p in pids_in(pids) if alive(p)] == []


def test_background_children_are_killed_when_the_user_code_exits(pl, tmp_path):
    """Pachyderm kills the user code's process group when it returns, even after a success."""
    put_x_csv(pl, tmp_path)
    pids = tmp_path / "pids"
    spec = write_spec(
        tmp_path, "bg", {"pfs": {"repo": "raw", "glob": "/"}}, f"sleep 300 & echo $! >> {pids}; exit 0"
    )
    assert pl("run", spec)[:2] == (0, "bg: processed=1 skipped=0 failed=0\n")
    assert len(pids_in(pids)) == 1 and not alive(pids_in(pids)[0])


BLOCK_ON_F08 = (
    'n=$(basename /pfs/raw/*); if [ "$n" = f08 ] && [ ! -e "$UNBLOCK" ]; then '
    'sleep 300 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; wait; fi; cp /pfs/raw/* /pfs/out/'
)

BATCHED_BLOCK_ON_F08 = (
    "while pachctl next datum; do "
    '  n=$(basename /pfs/raw/*); if [ "$n" = f08 ] && [ ! -e "$UNBLOCK" ]; then '
    '    sleep 300 & echo $! >> "$PIDS"; echo $$ >> "$PIDS"; wait; fi; cp /pfs/raw/* /pfs/out/; '
    "done"
)


@pytest.mark.parametrize("batched", [False, True], ids=["per-datum", "datum-batching"])
def test_sigkill_of_the_runner_leaves_no_process_and_the_next_run_keeps_finished_datums(
    pl, tmp_path, batched
):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {f"f{i:02d}": f"{i}\n" for i in range(10)})))
    pids, unblock = tmp_path / "pids", tmp_path / "unblock"
    spec = write_spec(
        tmp_path,
        "copy",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        BATCHED_BLOCK_ON_F08 if batched else BLOCK_ON_F08,
    )
    raw = json.loads(Path(spec).read_text())
    raw["transform"]["env"] = {"PIDS": str(pids), "UNBLOCK": str(unblock)}
    raw["transform"]["datum_batching"] = batched
    Path(spec).write_text(json.dumps(raw))

    runner = start_runner(pl.root, "run", spec)
    wait_for(lambda: len(pids_in(pids)) == 2, "datum f08 to start its processes")
    runner.kill()
    runner.wait()
    wait_for(lambda: not any(alive(p) for p in pids_in(pids)), "the datum's processes to be gone", 10)
    job = Store(pl.root).list_jobs()[-1]
    assert job.state == "running"  # what the killed runner left

    unblock.write_text("")
    code, out, err = pl("run", spec)
    assert (code, out.strip()) == (0, "copy: processed=2 skipped=8 failed=0")
    assert "was interrupted (the runner stopped); marked killed, its 8 finished datum(s) are reused" in err
    killed = Store(pl.root).job(job.id)
    assert (killed.state, killed.processed) == ("killed", 8)
    assert not (pl.root / "tmp" / job.id).exists()
    assert pl("get-file", "copy:f09")[1] == "9\n"


def test_sigterm_ends_every_datum_process_and_marks_the_job_killed(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {f"f{i:02d}": f"{i}\n" for i in range(10)})))
    pids = tmp_path / "pids"
    spec = write_spec(tmp_path, "copy", {"pfs": {"repo": "raw", "glob": "/*"}}, BLOCK_ON_F08)
    raw = json.loads(Path(spec).read_text())
    raw["transform"]["env"] = {"PIDS": str(pids), "UNBLOCK": str(tmp_path / "never")}
    Path(spec).write_text(json.dumps(raw))
    runner = start_runner(pl.root, "run", spec)
    wait_for(lambda: len(pids_in(pids)) == 2, "datum f08 to start its processes")
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 128 + signal.SIGTERM
    assert "stopped by signal 15" in err
    assert not any(alive(p) for p in pids_in(pids))
    job = Store(pl.root).list_jobs()[-1]
    assert job.state == "killed" and sum(d.state == "success" for d in job.datums) == 8
    assert not (pl.root / "tmp" / job.id).exists()


# -- full disk ---------------------------------------------------------------------------------------


def test_a_full_disk_fails_the_job_with_one_line_removes_partial_files_and_a_rerun_completes(
    pl, tmp_path, monkeypatch
):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {n: n for n in ("a", "b", "c")})))
    spec = write_spec(
        tmp_path,
        "big",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        'n=$(basename /pfs/raw/*); head -c 1000 /dev/zero | tr "\\0" "$n" > /pfs/out/$n',
    )
    (pl.root / "objects" / "ab").mkdir(parents=True, exist_ok=True)
    (pl.root / "objects" / "ab" / ".tmp-left-by-a-kill").write_text("partial")
    monkeypatch.setenv(DISK_FULL_FAULT_ENV, "1500")  # the second datum's output does not fit
    code, out, err = pl("run", spec)
    assert (code, out.strip()) == (1, "big: processed=1 skipped=0 failed=0")
    failures = [line for line in err.splitlines() if "no space left" in line]
    assert len(failures) == 1 and "free space and run again" in failures[0]
    assert "Traceback" not in err
    assert list(pl.root.rglob(".tmp-*")) == []
    job = Store(pl.root).list_jobs()[-1]
    assert job.state == "failure" and "no space left" in job.reason
    assert Store(pl.root).head("big") is None

    monkeypatch.delenv(DISK_FULL_FAULT_ENV)
    code, out, _ = pl("run", spec)
    assert (code, out.strip()) == (0, "big: processed=3 skipped=0 failed=0")  # a failed job is no base
    assert pl("get-file", "big:c")[1] == "c" * 1000


def test_processes_started_by_the_runner_are_gone_after_a_normal_run(pl, tmp_path):
    """The group reaper ends with the run: nothing the runner started outlives it."""
    put_x_csv(pl, tmp_path)
    spec = write_spec(tmp_path, "ok", {"pfs": {"repo": "raw", "glob": "/"}}, "true")
    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    assert pl("run", spec)[0] == 0
    mine = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and p.name not in before and alive(int(p.name))
    ]
    children = [pid for pid in mine if Path(f"/proc/{pid}/stat").read_text().split()[3] == str(os.getpid())]
    assert children == []


# -- env files ---------------------------------------------------------------------------------------


def test_a_stray_dot_env_never_overrides_the_spec_env_and_is_named_without_values(pl, tmp_path, monkeypatch):
    """A ``.env`` may supply what the spec leaves to secrets and what it does not set, nothing else."""
    put_x_csv(pl, tmp_path)
    spec = write_spec(
        tmp_path,
        "envs",
        {"pfs": {"repo": "raw", "glob": "/"}},
        "env | grep -E '^(PG_|EXTRA)' | sort > /pfs/out/env",
    )
    raw = json.loads(Path(spec).read_text())
    raw["transform"]["env"] = {"PG_SSLMODE": "verify-full"}
    raw["transform"]["secrets"] = [{"name": "pg", "key": "PG_PASSWORD", "env_var": "PG_PASSWORD"}]
    Path(spec).write_text(json.dumps(raw))
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env").write_text(
        "PG_SSLMODE=disable-from-dotenv\nPG_PASSWORD=pw-from-dotenv\nEXTRA_SETTING=extra-from-dotenv\n"
    )
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("PG_PASSWORD", raising=False)
    monkeypatch.delenv("PG_SSLMODE", raising=False)
    code, _, err = pl("run", spec)
    assert code == 0, err
    env = dict(line.split("=", 1) for line in pl("get-file", "envs:env")[1].splitlines())
    assert env == {
        "PG_SSLMODE": "verify-full",
        "PG_PASSWORD": "pw-from-dotenv",
        "EXTRA_SETTING": "extra-from-dotenv",
    }
    assert "PG_SSLMODE from .env ignored: the spec's transform.env sets it" in err
    assert "taken from .env: EXTRA_SETTING, PG_PASSWORD (values not shown)" in err
    assert "from-dotenv" not in err
    log = pl("logs", "--pipeline", "envs")[1]
    assert "taken from .env: EXTRA_SETTING, PG_PASSWORD" in log and "from-dotenv" not in log

    code, _, err = pl("run", spec, "--env", "PG_SSLMODE=disable")  # explicit: it wins, and re-runs
    assert code == 0 and "PG_SSLMODE from .env ignored" not in err
    assert "PG_SSLMODE=disable\n" in pl("get-file", "envs:env")[1]


def test_job_timeout_kills_the_job_and_every_datum_process(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {n: n for n in ("a", "b")})))
    pids = tmp_path / "pids"
    spec = write_spec(
        tmp_path,
        "slow",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait",
        job_timeout="1s",
    )
    code, out, err = pl("run", spec)
    assert out.strip() == "slow: processed=0 skipped=0 failed=1"  # the datum in flight; the other never ran
    assert code == 1 and "slow: job" in err and "was killed: job timed out after 1s (job_timeout)" in err
    job = Store(pl.root).list_jobs()[-1]
    assert job.state == "killed" and Store(pl.root).head("slow") is None
    assert pids_in(pids) and not any(alive(p) for p in pids_in(pids))
