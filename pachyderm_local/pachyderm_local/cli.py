"""``pachyderm-local``: run Pachyderm 2.x spec files on one machine, with pachctl-like verbs.

This is the composition root: flags and environment are read here once and passed down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .datums import CommitView, plan_datums
from .engine import ENGINES, engine_from_flags
from .envs import EnvFileError, LocalEnv, parse_assignments, parse_env_file
from .names import InvalidNameError, clean_lookup_path, validate_file_path, validate_id, validate_name
from .pathmap import UnsafePathError
from .procs import GroupReaper
from .runner import RunInterrupted, Runner, RunSettings, resolve_local_dir
from .sandbox import prepend_path
from .spec import PfsInput, SpecError, leaf_inputs, load_spec
from .store import Store, StoreError

DEFAULT_ROOT = ".pachyderm-local"
#: fault point for tests: the store's object writes fail with ENOSPC after this many bytes
DISK_FULL_FAULT_ENV = "PACHYDERM_LOCAL_FAULT_DISK_FULL_AFTER"


def _split_ref(ref: str) -> tuple[str, str | None, str]:
    """``repo[@commit][:path]`` -> (repo, commit or None, raw path); the repo and commit are validated."""
    head, _, path = ref.partition(":")
    repo, _, commit = head.partition("@")
    validate_name("repo", repo)
    if commit in ("", "master"):
        commit = ""
    return repo, (validate_id("commit", commit) if commit else None), path


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def cmd_create_repo(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    with store.lock():
        for repo in args.repo:
            store.create_repo(repo)
            print(f"created repo {repo}", file=out)
    return 0


def cmd_put_file(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    repo, commit, raw_target = _split_ref(args.dest)
    if commit:
        raise StoreError("put-file writes to the branch head; drop '@commit'")
    target = validate_file_path(raw_target) if raw_target.strip("/") else ""
    sources = [Path(f) for f in args.files]
    single_file = len(sources) == 1 and sources[0].is_file() and target and not args.dest.endswith("/")
    with store.lock():
        if not store.repo_exists(repo):
            store.create_repo(repo)
        head = store.head(repo)
        files = dict(head.files) if head else {}
        pairs = [pair for source in sources for pair in _put_pairs(source, target, bool(single_file))]
        for path, rel in pairs:
            sha, size = store.put_object(path)
            files[rel] = {"sha256": sha, "size": size}
        commit_obj = store.write_commit(repo, dict(sorted(files.items())), origin="put-file")
    print(f"{repo}@{commit_obj.id}: {len(pairs)} file(s) put, {len(files)} in the commit", file=out)
    return 0


def _put_pairs(source: Path, target: str, single_file: bool) -> list[tuple[Path, str]]:
    """(local file, store key) of each file ``put-file`` adds from ``source``; a folder is refused whole
    when one of its names is not a valid PFS path."""
    if not source.exists():
        raise StoreError(f"put-file: {source} does not exist")
    if single_file:
        pairs = [(source, target)]
    elif source.is_dir():
        pairs = [
            (p, "/".join(filter(None, [target, p.relative_to(source).as_posix()])))
            for p in sorted(source.rglob("*"))
            if p.is_file()
        ]
    else:
        pairs = [(source, "/".join(filter(None, [target, source.name])))]
    checked = []
    for path, rel in pairs:
        try:
            checked.append((path, validate_file_path(rel)))
        except InvalidNameError as exc:
            raise StoreError(f"put-file: {path}: {exc}") from exc
    return checked


def cmd_delete_file(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    repo, _, raw_target = _split_ref(args.ref)
    target = clean_lookup_path(raw_target)
    with store.lock():
        head = store.head(repo)
        files = dict(head.files) if head else {}
        gone = [p for p in files if p == target or p.startswith(target + "/")] if target else []
        if not gone:
            raise StoreError(f"delete-file: {repo}:{target} not found")
        for p in gone:
            del files[p]
        commit = store.write_commit(repo, files, origin="delete-file")
    print(f"{repo}@{commit.id}: {len(gone)} file(s) deleted", file=out)
    return 0


def cmd_list_repos(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    print(f"{'REPO':<28} {'FILES':>6} {'SIZE':>10}  HEAD", file=out)
    for repo in store.list_repos():
        head = store.head(repo)
        files = head.files if head else {}
        size = sum(m["size"] for m in files.values())
        print(f"{repo:<28} {len(files):>6} {_human(size):>10}  {head.id if head else '-'}", file=out)
    return 0


def cmd_list_files(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    repo, commit_id, raw_prefix = _split_ref(args.ref)
    prefix = clean_lookup_path(raw_prefix)
    commit = store.resolve(repo, commit_id)
    if commit is None:
        print(f"{repo} has no commits", file=sys.stderr)
        return 0
    for path, meta in sorted(commit.files.items()):
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            print(f"/{path}\t{_human(meta['size'])}\t{meta['sha256'][:12]}", file=out)
    return 0


def cmd_get_file(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    repo, commit_id, raw_path = _split_ref(args.ref)
    path = clean_lookup_path(raw_path)
    commit = store.resolve(repo, commit_id)
    if commit is None or path not in commit.files:
        raise StoreError(f"get-file: {args.ref} not found")
    data = store.object_path(commit.files[path]["sha256"]).read_bytes()
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        out.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def cmd_list_jobs(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    jobs = [j for j in store.list_jobs() if not args.pipeline or j.pipeline == args.pipeline]
    print(
        f"{'JOB':<34} {'PIPELINE':<16} {'STATE':<8} {'PROC':>5} {'SKIP':>5} {'FAIL':>5} {'SECS':>7}  STARTED",
        file=out,
    )
    for j in jobs:
        print(
            f"{j.id:<34} {j.pipeline:<16} {j.state:<8} {j.processed:>5} "
            f"{j.skipped:>5} {j.failed:>5} {0 if j.seconds is None else j.seconds:>7}  {j.started}",
            file=out,
        )
        if j.reason:
            print(f"{'':<34} {j.reason}", file=out)
    return 0


def cmd_logs(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    if args.job:
        job = store.job(args.job)
    else:
        jobs = [j for j in store.list_jobs() if not args.pipeline or j.pipeline == args.pipeline]
        if not jobs:
            raise StoreError("logs: no jobs yet")
        job = jobs[-1]
    for datum in job.datums:
        if args.datum and not datum.id.startswith(args.datum):
            continue
        path = store.log_path(datum.from_job or job.id, datum.id)
        print(
            f"=== {job.pipeline} job {job.id} datum {datum.id} ({datum.inputs}) {datum.state}"
            + (f" (reused from job {datum.from_job})" if datum.from_job else ""),
            file=out,
        )
        if path.exists():
            out.write(path.read_text(encoding="utf-8", errors="replace"))
    return 0


def cmd_list_datum(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    """``pachctl list datum -f SPEC``: the datums of the spec over the current input commits (a cron
    input: its ticks so far); runs nothing."""
    spec = load_spec(args.file)
    commits: dict[str, CommitView] = {}
    for leaf in leaf_inputs(spec.input):
        if not store.repo_exists(leaf.repo) and isinstance(leaf, PfsInput):
            raise StoreError(f"{spec.source}: input repo {leaf.repo!r} does not exist")
        head = store.head(leaf.repo) if store.repo_exists(leaf.repo) else None
        commits[leaf.repo] = CommitView(head.id, head.shas()) if head else CommitView("", {})
    for datum in plan_datums(spec.input, commits):
        files = [(item, f"/{rel}", sha) for item in datum.inputs for rel, sha in item.files]
        if args.raw:
            record = {
                "id": datum.pach_id,
                "hash": datum.id,
                "inputs": [
                    {"name": i.name, "repo": i.repo, "commit": i.commit_id, "path": i.pfs_path}
                    for i in datum.inputs
                ],
                "files": [{"input": i.name, "path": path, "sha256": sha} for i, path, sha in files],
            }
            print(json.dumps(record, sort_keys=True), file=out)
        else:
            print(f"{datum.pach_id}\t" + " ".join(f"{i.name}:{path}" for i, path, _ in files), file=out)
    return 0


def cmd_run(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    specs = [load_spec(p) for p in args.specs]
    env_files: dict[str, str] = {}
    paths = args.env_file if args.env_file is not None else ([".env"] if Path(".env").is_file() else [])
    for path in paths:
        env_files.update(parse_env_file(Path(path).read_text(encoding="utf-8"), path))
    secret_dirs = {}
    for item in args.secret_dir:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise StoreError(f"--secret-dir expects NAME=EXISTING_DIR, got {item!r}")
        secret_dirs[name] = resolve_local_dir(folder)
    process = prepend_path(dict(os.environ), str(Path(sys.executable).parent))
    local = LocalEnv(
        process=process,
        files=env_files,
        flags=parse_assignments(args.env),
        secret_dirs=secret_dirs,
        file_names=", ".join(paths) or "env file",
    )
    try:
        engine = engine_from_flags(args.engine, args.image_tag, args.engine_network)
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    settings = RunSettings(args.max_parallelism, args.keep_sandboxes, engine)
    with store.lock(), GroupReaper() as reaper, _interrupts_raise() as received:
        try:
            results = Runner(store, local, settings, sys.stderr, reaper).run(specs, out)
        except RunInterrupted:
            print(
                f"pachyderm-local: stopped by signal {received[0]}: the running job is marked killed, "
                "its finished datums are kept for the next run",
                file=sys.stderr,
            )
            return 128 + received[0]
    return 1 if any(r.state != "success" for r in results) else 0


@contextlib.contextmanager
def _interrupts_raise() -> Iterator[list[int]]:
    """SIGTERM and SIGINT raise RunInterrupted in the main thread, so the runner ends every datum process
    group and records the job before exiting; yields the signal received (once there is one)."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise RunInterrupted()

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pachyderm-local", description="Run Pachyderm 2.x pipeline specs locally, unchanged."
    )
    parser.add_argument(
        "--root",
        default=os.environ.get("PACHYDERM_LOCAL_ROOT", DEFAULT_ROOT),
        help="state folder (env PACHYDERM_LOCAL_ROOT, default %(default)s)",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("create-repo", help="create input repos")
    p.add_argument("repo", nargs="+")
    p.set_defaults(func=cmd_create_repo)
    p = sub.add_parser("put-file", help="add files (folders recursively) to a repo as a new commit")
    p.add_argument("dest", metavar="REPO[:PATH]")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_put_file)
    p = sub.add_parser("delete-file", help="remove a file or folder from a repo as a new commit")
    p.add_argument("ref", metavar="REPO:PATH")
    p.set_defaults(func=cmd_delete_file)
    p = sub.add_parser("list-repos", help="repos with their head commit")
    p.set_defaults(func=cmd_list_repos)
    p = sub.add_parser("list-files", help="files of a commit (default: the head)")
    p.add_argument("ref", metavar="REPO[@COMMIT][:PATH]")
    p.set_defaults(func=cmd_list_files)
    p = sub.add_parser("get-file", help="print a file of a commit")
    p.add_argument("ref", metavar="REPO[@COMMIT]:PATH")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_get_file)
    p = sub.add_parser("list-jobs", help="jobs, oldest first")
    p.add_argument("--pipeline")
    p.set_defaults(func=cmd_list_jobs)
    p = sub.add_parser("logs", help="per-datum logs of a job (default: the latest)")
    p.add_argument("--pipeline")
    p.add_argument("--job")
    p.add_argument("--datum", help="datum id prefix")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("list-datum", help="the datums of a spec over the current inputs (runs nothing)")
    p.add_argument("-f", "--file", required=True, metavar="SPEC")
    p.add_argument("--raw", action="store_true", help="one JSON object per datum: id, hash, inputs, files")
    p.set_defaults(func=cmd_list_datum)
    p = sub.add_parser("run", help="run the specs' DAG once; one summary line per job")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VAL", help="override spec env / set a secret"
    )
    p.add_argument(
        "--env-file",
        action="append",
        default=None,
        metavar="FILE",
        help="KEY=VAL file (default: ./.env if present)",
    )
    p.add_argument(
        "--secret-dir",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="local folder for a mounted secret",
    )
    p.add_argument("--max-parallelism", type=int, default=None, help="cap parallelism_spec.constant")
    p.add_argument("--keep-sandboxes", action="store_true", help="keep datum sandboxes for debugging")
    p.add_argument("--engine", choices=ENGINES, help="run each command in the spec's image (engine.py)")
    p.add_argument("--image-tag", default="local", help="replaces IMAGE_TAG in images (default: local)")
    p.add_argument("--engine-network", action="append", default=[], metavar="PIPELINE=MODE")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fault = os.environ.get(DISK_FULL_FAULT_ENV, "")
    store = Store(args.root, disk_full_after=int(fault) if fault.isdigit() else None)
    try:
        return args.func(store, args, sys.stdout)
    except (SpecError, StoreError, EnvFileError, UnsafePathError, InvalidNameError, OSError) as exc:
        print(f"pachyderm-local: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
