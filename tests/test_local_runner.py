"""pachyderm-local end to end on toy specs (plain ``sh`` commands): state, skips, retries, parallelism,
collisions, cron ticks, Pachyderm's environment and the per-job summary lines."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from fixtures_runner import make_files, write_spec
from pachyderm_local.store import Store


def test_put_file_stores_identical_content_once_and_commits_full_snapshots(pl, tmp_path):
    src = make_files(tmp_path / "src", {"a.csv": "same\n", "sub/b.csv": "same\n", "c.csv": "other\n"})
    assert pl("put-file", "raw", str(src))[0] == 0
    assert pl("put-file", "raw:extra/z.csv", str(src / "c.csv"))[0] == 0
    store = Store(pl.root)
    commits = store.list_commits("raw")
    assert [len(c.files) for c in commits] == [3, 4] and commits[1].parent == commits[0].id
    assert len(list((pl.root / "objects").rglob("*"))) - len(list((pl.root / "objects").glob("*"))) == 2
    code, out, _ = pl("list-files", "raw")
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        "/a.csv",
        "/c.csv",
        "/extra/z.csv",
        "/sub/b.csv",
    ]
    assert pl("get-file", f"raw@{commits[0].id}:sub/b.csv")[1] == "same\n"
    assert pl("delete-file", "raw:sub")[0] == 0
    assert "/sub/b.csv" not in pl("list-files", "raw")[1]
    code, _, err = pl("get-file", "raw:nope.csv")
    assert code == 2 and "raw:nope.csv not found" in err


def test_dag_runs_in_order_skips_unchanged_datums_and_mirrors_edits_and_deletes(pl, tmp_path):
    src = make_files(tmp_path / "src", {"a.txt": "apple\n", "sub/b.txt": "banana\n", "c.txt": "cherry\n"})
    pl("put-file", "raw", str(src))
    # Each file is a datum: upper-case it into out/<same path>; then one datum counts the whole repo.
    upper = write_spec(
        tmp_path,
        "upper",
        {"pfs": {"repo": "raw", "glob": "/**.txt"}},
        'cd /pfs/raw && for f in $(find . -type f); do mkdir -p "/pfs/out/$(dirname $f)"; '
        'tr a-z A-Z < "$f" > "/pfs/out/$f"; done',
    )
    count = write_spec(
        tmp_path,
        "count",
        {"pfs": {"repo": "upper", "glob": "/"}},
        "cat $(find /pfs/upper -type f | sort) > /pfs/out/all",
    )
    code, out, err = pl("run", count, upper)
    assert code == 0, err
    assert out.splitlines() == [
        "upper: processed=3 skipped=0 failed=0",
        "count: processed=1 skipped=0 failed=0",
    ]
    assert pl("get-file", "count:all")[1] == "APPLE\nCHERRY\nBANANA\n"

    code, out, _ = pl("run", upper, count)
    assert out.splitlines() == [
        "upper: processed=0 skipped=3 failed=0",
        "count: processed=0 skipped=1 failed=0",
    ]

    (src / "c.txt").write_text("cranberry\n")
    pl("put-file", "raw:c.txt", str(src / "c.txt"))
    code, out, _ = pl("run", upper, count)
    assert out.splitlines() == [
        "upper: processed=1 skipped=2 failed=0",
        "count: processed=1 skipped=0 failed=0",
    ]
    assert pl("get-file", "count:all")[1] == "APPLE\nCRANBERRY\nBANANA\n"

    pl("delete-file", "raw:a.txt")
    code, out, _ = pl("run", upper, count)
    assert out.splitlines() == [
        "upper: processed=0 skipped=2 failed=0",
        "count: processed=1 skipped=0 failed=0",
    ]
    assert [line.split("\t")[0] for line in pl("list-files", "upper")[1].splitlines()] == [
        "/c.txt",
        "/sub/b.txt",
    ]

    jobs = Store(pl.root).list_jobs()
    assert [j.pipeline for j in jobs] == ["upper", "count"] * 4
    assert all(j.output_commit == j.id for j in jobs)
    listing = pl("list-jobs", "--pipeline", "upper")[1]
    assert len(listing.splitlines()) == 5 and "success" in listing


def test_datum_tries_retries_a_failing_datum_then_gives_up(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {"x": "1"})))
    counter = tmp_path / "tries"
    flaky = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        'echo "try $n"; [ $n -ge 3 ]'
    )
    spec = write_spec(tmp_path, "flaky", {"pfs": {"repo": "raw", "glob": "/*"}}, flaky, datum_tries=3)
    code, out, _ = pl("run", spec)
    assert (code, out.strip()) == (0, "flaky: processed=1 skipped=0 failed=0")
    assert counter.read_text().strip() == "3"

    counter.write_text("0")
    pl("put-file", "raw:y", str(tmp_path / "src" / "x"))  # a new datum (new path)
    spec = write_spec(tmp_path, "flaky", {"pfs": {"repo": "raw", "glob": "/*"}}, flaky, datum_tries=2)
    code, out, err = pl("run", spec)
    assert (code, out.strip()) == (1, "flaky: processed=0 skipped=1 failed=1")
    assert "raw:/y) failed: exit code 1" in err and "try 2" in err  # the log tail is shown
    job = Store(pl.root).list_jobs()[-1]
    assert job.state == "failure" and job.output_commit is None
    assert [d.tries for d in job.datums if d.state == "failed"] == [2]
    logs = pl("logs", "--pipeline", "flaky")[1]
    assert "try 1/2" in logs and "try 2/2" in logs and "reused from job" in logs

    code, out, _ = pl(
        "run", spec
    )  # the counter is now past 3: the failed datum succeeds, the other stays done
    assert (code, out.strip()) == (0, "flaky: processed=1 skipped=1 failed=0")


def test_parallelism_runs_exactly_constant_datums_at_once(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {f"f{i}": str(i) for i in range(6)})))
    running, seen = tmp_path / "running", tmp_path / "seen"
    running.mkdir()
    script = (
        f"touch {running}/$PACH_DATUM_ID; ls {running} | wc -l >> {seen}; "
        f"sleep 0.4; rm {running}/$PACH_DATUM_ID"
    )
    spec = write_spec(
        tmp_path, "par", {"pfs": {"repo": "raw", "glob": "/*"}}, script, parallelism_spec={"constant": 2}
    )
    assert pl("run", spec)[0] == 0
    assert max(int(n) for n in seen.read_text().split()) == 2

    seen.unlink()
    spec = write_spec(
        tmp_path, "par2", {"pfs": {"repo": "raw", "glob": "/*"}}, script, parallelism_spec={"constant": 3}
    )
    assert pl("run", spec, "--max-parallelism", "1")[0] == 0
    assert max(int(n) for n in seen.read_text().split()) == 1


def test_two_datums_writing_one_path_fail_the_job_and_block_downstream(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {"a": "1", "b": "2"})))
    clash = write_spec(tmp_path, "clash", {"pfs": {"repo": "raw", "glob": "/*"}}, "echo hi > /pfs/out/same")
    after = write_spec(tmp_path, "after", {"pfs": {"repo": "clash", "glob": "/"}}, "true")
    code, out, err = pl("run", clash, after)
    assert code == 1
    assert out.strip() == "clash: processed=2 skipped=0 failed=0"
    assert "output path 'same' was written by 2 datums" in err
    assert "after: not run, an upstream job failed" in err
    assert Store(pl.root).head("clash") is None
    assert "written by 2 datums" in pl("list-jobs")[1]


def test_datum_sees_pachyderm_env_and_input_paths(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {"dir/x.csv": "1"})))
    script = (
        "env | grep -E '^(PACH_|PPS_|FILESET_ID|raw|QA_MODEL|SECRET_TOKEN)' | sort > /pfs/out/env; "
        "ls $raw > /pfs/out/ls; cat /pfs/raw/dir/x.csv >> /pfs/out/ls; cp /pfs/.env /pfs/out/dotenv"
    )
    spec = write_spec(
        tmp_path,
        "envcheck",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        script,
    )
    raw = json.loads(Path(spec).read_text())
    raw["transform"]["env"] = {"QA_MODEL": "hub/model"}
    raw["transform"]["secrets"] = [{"name": "tok", "key": "t", "env_var": "SECRET_TOKEN"}]
    Path(spec).write_text(json.dumps(raw))
    (tmp_path / "local.env").write_text("SECRET_TOKEN=from-env-file\n")
    code, _, err = pl(
        "run", spec, "--env", "QA_MODEL=/models/tiny", "--env-file", str(tmp_path / "local.env")
    )
    assert code == 0, err
    env = dict(line.split("=", 1) for line in pl("get-file", "envcheck:env")[1].splitlines())
    job = Store(pl.root).list_jobs()[-1]
    input_commit = Store(pl.root).head("raw").id
    assert env["PACH_JOB_ID"] == job.id == env["PACH_OUTPUT_COMMIT_ID"]
    assert env["PACH_DATUM_ID"] == job.datums[0].datum_id
    # worker/common DatumID: BLAKE2b-256 of name, repo, branch and path (a folder ends with '/'), each
    # followed by its length as a big-endian int64
    digest = hashlib.blake2b(digest_size=32)
    for part in (b"raw", b"raw", b"master", b"/dir/"):
        digest.update(part + struct.pack(">q", len(part)))
    assert env["PACH_DATUM_ID"] == digest.hexdigest()
    assert env["FILESET_ID"] == job.datums[0].id
    assert env["PPS_PIPELINE_NAME"] == "envcheck" and env["PPS_PROJECT_NAME"] == "default"
    assert env["PPS_SPEC_COMMIT"] == job.spec_version and env["PPS_POD_NAME"]
    dotenv = dict(line.split("=", 1) for line in pl("get-file", "envcheck:dotenv")[1].splitlines())
    assert {k: v for k, v in env.items() if k in dotenv} == dotenv
    assert set(dotenv) == {"PACH_JOB_ID", "PACH_OUTPUT_COMMIT_ID", "PACH_DATUM_ID", "FILESET_ID", "raw"} | {
        "raw_COMMIT"
    }  # Pachyderm's variables only: no secret lands on disk
    assert env["raw"].endswith("/pfs/raw/dir") and str(pl.root) in env["raw"]
    assert env["raw_COMMIT"] == input_commit
    assert env["QA_MODEL"] == "/models/tiny" and env["SECRET_TOKEN"] == "from-env-file"
    assert pl("get-file", "envcheck:ls")[1] == "x.csv\n1"
    assert not (pl.root / "tmp" / job.id).exists()  # sandboxes are removed


def test_cron_input_ticks_once_per_run_and_overwrite_keeps_one_tick(pl, tmp_path):
    spec = write_spec(
        tmp_path,
        "clock",
        {"cron": {"name": "tick", "spec": "@every 5m", "overwrite": True}},
        "ls /pfs/tick > /pfs/out/ticks",
    )
    for _ in range(2):
        code, out, _ = pl("run", spec)
        assert (code, out.strip()) == (0, "clock: processed=1 skipped=0 failed=0")
    store = Store(pl.root)
    assert len(store.list_commits("clock_tick")) == 2
    assert len(store.head("clock_tick").files) == 1
    assert pl("get-file", "clock:ticks")[1].strip() == next(iter(store.head("clock_tick").files))


def test_missing_input_repo_and_bad_spec_are_clear_errors(pl, tmp_path):
    spec = write_spec(tmp_path, "orphan", {"pfs": {"repo": "nowhere", "glob": "/*"}}, "true")
    code, out, err = pl("run", spec)
    assert code == 2 and out == ""
    assert "input repo 'nowhere' does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pipeline": {"name": "bad"}, "input": {"pfs": {"repo": "r", "glob": "/*"}}}))
    code, _, err = pl("run", str(bad))
    assert code == 2 and "bad.json: pipeline must specify a transform" in err


def test_mounted_secret_maps_to_a_local_folder_and_stdin_is_rewritten(pl, tmp_path):
    pl("put-file", "raw", str(make_files(tmp_path / "src", {"x": "1"})))
    keys = make_files(tmp_path / "keys", {"key.json": '{"k": 1}'})
    raw = {
        "pipeline": {"name": "sec"},
        "input": {"pfs": {"repo": "raw", "glob": "/"}},
        "transform": {
            "cmd": ["sh"],
            "stdin": [
                'cat "$KEYFILE" > /pfs/out/k 2>/dev/null || echo unset > /pfs/out/k',
                "cp /pfs/raw/x /pfs/out/x",
            ],
            "env": {"KEYFILE": "/var/secrets/app/key.json"},
            "secrets": [{"name": "app-key", "mount_path": "/var/secrets/app"}],
        },
    }
    spec = tmp_path / "sec.json"
    spec.write_text(json.dumps(raw))
    code, _, err = pl("run", str(spec), "--secret-dir", f"app-key={keys}")
    assert code == 0, err
    assert pl("get-file", "sec:k")[1] == '{"k": 1}' and pl("get-file", "sec:x")[1] == "1"

    raw["transform"]["env"]["OTHER"] = "changed"  # a new spec version, so the datum runs again
    spec.write_text(json.dumps(raw))
    code, _, err = pl("run", str(spec))
    assert code == 0
    assert "KEYFILE left unset: it points into secret 'app-key'" in err
    assert pl("get-file", "sec:k")[1] == "unset\n"


def test_a_file_deleted_then_put_back_is_processed_again_downstream(pl, tmp_path):
    """Pachyderm skips only the base job's datums: the whole-repo datum of an older state must run again."""
    src = make_files(tmp_path / "src", {"a.txt": "apple\n", "b.txt": "banana\n"})
    pl("put-file", "raw", str(src))
    count = write_spec(
        tmp_path,
        "count",
        {"pfs": {"repo": "raw", "glob": "/"}},
        "ls /pfs/raw | sort > /pfs/out/names; date +%s%N > /pfs/out/ran",
    )
    assert "count: processed=1 skipped=0 failed=0" in pl("run", count)[1]
    first = pl("get-file", "count:ran")[1]
    assert pl("delete-file", "raw:b.txt")[0] == 0
    assert "count: processed=1 skipped=0 failed=0" in pl("run", count)[1]
    assert pl("get-file", "count:names")[1] == "a.txt\n"
    assert pl("put-file", "raw:b.txt", str(src / "b.txt"))[0] == 0  # back to the first job's input
    assert "count: processed=1 skipped=0 failed=0" in pl("run", count)[1]
    assert pl("get-file", "count:names")[1] == "a.txt\nb.txt\n"
    assert pl("get-file", "count:ran")[1] != first  # it ran again, as Pachyderm would
    assert "count: processed=0 skipped=1 failed=0" in pl("run", count)[1]  # unchanged since: skipped


def test_a_failed_job_is_never_a_base_so_its_successes_run_again(pl, tmp_path):
    """pending_job.go: the base is the newest job whose commits carry no error."""
    src = make_files(tmp_path / "src", {"a.txt": "apple\n", "b.txt": "banana\n"})
    pl("put-file", "raw", str(src))
    marker = tmp_path / "break-b"
    marker.write_text("")
    spec = write_spec(
        tmp_path,
        "copy",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        f"if [ -e /pfs/raw/b.txt ] && [ -e {marker} ]; then exit 1; fi; cp /pfs/raw/* /pfs/out/",
        datum_tries=1,
    )
    assert "copy: processed=1 skipped=0 failed=1" in pl("run", spec)[1]
    marker.unlink()
    assert "copy: processed=2 skipped=0 failed=0" in pl("run", spec)[1]  # a.txt runs again
    assert "copy: processed=0 skipped=2 failed=0" in pl("run", spec)[1]
    assert pl("get-file", "copy:b.txt")[1] == "banana\n"


def test_a_path_cannot_be_both_a_file_and_a_folder(pl, tmp_path):
    """Pachyderm refuses such commits; input and output alike are refused with a message, never a crash."""
    src = make_files(tmp_path / "src", {"q.csv": "x\n"})
    assert pl("put-file", "raw:team/q.csv", str(src / "q.csv"))[0] == 0
    code, _, err = pl("put-file", "raw:team", str(src / "q.csv"))
    assert code == 2 and "'team' would be both a file and the folder of 'team/q.csv'" in err
    pl("put-file", "raw:other.csv", str(src / "q.csv"))
    # two datums: one writes the file x, the other the folder x/
    spec = write_spec(
        tmp_path,
        "clash",
        {"pfs": {"repo": "raw", "glob": "/*"}},
        "if [ -e /pfs/raw/other.csv ]; then echo a > /pfs/out/x; "
        "else mkdir /pfs/out/x; echo b > /pfs/out/x/y; fi",
    )
    code, _, err = pl("run", spec)
    assert code == 1 and "clash: job" in err and "failed: output path 'x' was written by 2 datums" in err
    assert [job.state for job in Store(pl.root).list_jobs() if job.pipeline == "clash"] == ["failure"]
