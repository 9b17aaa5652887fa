"""The runner's state on disk: a content-addressed object store, repos of commits, jobs, datum results.

Layout under the root (``.pachyderm-local/`` by default)::

    objects/ab/abcdef...            file contents, named by sha256 (identical files stored once)
    repos/<repo>/commits/<id>.json  one manifest per commit: a full snapshot {path: {sha256, size}}
    repos/<repo>/master             the id of the branch head
    jobs/<job id>.json              one record per job (pipeline, inputs, counts, state, output commit)
    datums/<pipeline>/<version>/<datum id>.json   output manifest of each datum that succeeded
    logs/<job id>/<datum id>.log    stdout+stderr of every try of a datum
    tmp/                            datum sandboxes while a job runs

Every write is a temp file + rename, so a killed runner leaves the previous state readable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REPO = re.compile(r"^[A-Za-z0-9_-]+$")


class StoreError(Exception):
    """A user-facing problem with the state (unknown repo, missing file...)."""


def new_id() -> str:
    return uuid.uuid4().hex


def file_folder_clashes(paths: Iterable[str]) -> list[str]:
    """Paths that a commit would hold both as a file and as a folder (``a`` and ``a/b``), described."""
    files = set(paths)
    clashes = []
    for path in sorted(files):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                clashes.append(f"'{folder}' would be both a file and the folder of '{path}'")
                break
    return clashes


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Commit:
    repo: str
    id: str
    parent: str | None
    created: str
    origin: str
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256", "size"}

    def shas(self) -> dict[str, str]:
        return {p: meta["sha256"] for p, meta in self.files.items()}


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # -- locking ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time per root (a second ``run`` waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- objects ---------------------------------------------------------------------------------
    def object_path(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha

    def put_object(self, source: Path) -> tuple[str, int]:
        """Store a file's content; returns (sha256, size). Known content is not copied again."""
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
        target = self.object_path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return sha, source.stat().st_size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        target = self.object_path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return sha, len(data)

    def materialize(self, sha: str, target: Path) -> None:
        """Copy an object out (a copy, not a link, so a datum cannot corrupt the store)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.object_path(sha), target)

    # -- repos and commits -----------------------------------------------------------------------
    def repo_dir(self, repo: str) -> Path:
        if not _REPO.match(repo):
            raise StoreError(f"invalid repo name {repo!r}: use letters, digits, '-' and '_'")
        return self.root / "repos" / repo

    def repo_exists(self, repo: str) -> bool:
        return self.repo_dir(repo).is_dir()

    def create_repo(self, repo: str, exist_ok: bool = False) -> None:
        path = self.repo_dir(repo)
        if path.is_dir() and not exist_ok:
            raise StoreError(f"repo {repo!r} already exists")
        (path / "commits").mkdir(parents=True, exist_ok=True)

    def list_repos(self) -> list[str]:
        base = self.root / "repos"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def head(self, repo: str) -> Commit | None:
        if not self.repo_exists(repo):
            raise StoreError(f"repo {repo!r} does not exist (create it with create-repo or put-file)")
        ref = self.repo_dir(repo) / "master"
        return self.commit(repo, ref.read_text().strip()) if ref.exists() else None

    def commit(self, repo: str, commit_id: str) -> Commit:
        path = self.repo_dir(repo) / "commits" / f"{commit_id}.json"
        if not path.exists():
            raise StoreError(f"commit {commit_id!r} not found in repo {repo!r}")
        data = _read_json(path)
        return Commit(repo, data["id"], data["parent"], data["created"], data["origin"], data["files"])

    def resolve(self, repo: str, commit_id: str | None) -> Commit | None:
        return self.commit(repo, commit_id) if commit_id else self.head(repo)

    def list_commits(self, repo: str) -> list[Commit]:
        commits = [self.commit(repo, p.stem) for p in (self.repo_dir(repo) / "commits").glob("*.json")]
        return sorted(commits, key=lambda c: c.created)

    def write_commit(
        self, repo: str, files: dict[str, dict[str, Any]], origin: str, commit_id: str | None = None
    ) -> Commit:
        """Record a full snapshot as the new head of ``repo``."""
        clashes = file_folder_clashes(files)
        if clashes:
            raise StoreError(f"{repo}: {clashes[0]}; Pachyderm refuses such a commit")
        self.create_repo(repo, exist_ok=True)
        parent = self.head(repo)
        commit = Commit(repo, commit_id or new_id(), parent.id if parent else None, now(), origin, files)
        _write_json(
            self.repo_dir(repo) / "commits" / f"{commit.id}.json",
            {
                "id": commit.id,
                "parent": commit.parent,
                "created": commit.created,
                "origin": origin,
                "files": files,
            },
        )
        ref = self.repo_dir(repo) / "master"
        fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(commit.id + "\n")
        os.replace(tmp, ref)
        return commit

    # -- jobs, datum results, logs ---------------------------------------------------------------
    def save_job(self, record: dict[str, Any]) -> None:
        _write_json(self.root / "jobs" / f"{record['id']}.json", record)

    def job(self, job_id: str) -> dict[str, Any]:
        path = self.root / "jobs" / f"{job_id}.json"
        if not path.exists():
            matches = list((self.root / "jobs").glob(f"{job_id}*.json")) if job_id else []
            if len(matches) != 1:
                raise StoreError(f"job {job_id!r} not found")
            path = matches[0]
        return _read_json(path)

    def list_jobs(self) -> list[dict[str, Any]]:
        base = self.root / "jobs"
        jobs = [_read_json(p) for p in base.glob("*.json")] if base.is_dir() else []
        return sorted(jobs, key=lambda j: j["started"])

    def datum_dir(self, pipeline: str, version: str) -> Path:
        return self.root / "datums" / pipeline / version

    def base_job_datums(self, pipeline: str, version: str) -> set[str]:
        """Datums a new job may reuse: those of the pipeline's last successful job (its *base*, as Pachyderm
        calls it), plus those that succeeded in failed jobs since, so a retry reruns only the failures.

        Pachyderm reuses only the base job's datums: a datum that succeeded in an older job (a file deleted,
        then put back) runs again, so a pipeline with side effects (pg-load) sees the input come back.
        Nothing is reused across spec versions.
        """
        reusable: set[str] = set()
        for job in reversed(self.list_jobs()):
            if job["pipeline"] != pipeline or job.get("state") not in ("success", "failure"):
                continue
            if job.get("spec_version") != version:
                break
            states = ("success", "skipped") if job["state"] == "success" else ("success",)
            reusable |= {d["id"] for d in job.get("datums", []) if d.get("state") in states}
            if job["state"] == "success":
                break
        return reusable

    def done_datums(self, pipeline: str, version: str) -> set[str]:
        base = self.datum_dir(pipeline, version)
        return {p.stem for p in base.glob("*.json")} if base.is_dir() else set()

    def datum_output(self, pipeline: str, version: str, datum_id: str) -> dict[str, dict[str, Any]]:
        return _read_json(self.datum_dir(pipeline, version) / f"{datum_id}.json")["files"]

    def datum_job(self, pipeline: str, version: str, datum_id: str) -> str:
        """The job that processed a datum whose result is reused."""
        return _read_json(self.datum_dir(pipeline, version) / f"{datum_id}.json")["job"]

    def save_datum_output(
        self, pipeline: str, version: str, datum_id: str, job_id: str, files: dict[str, dict[str, Any]]
    ) -> None:
        _write_json(self.datum_dir(pipeline, version) / f"{datum_id}.json", {"job": job_id, "files": files})

    def log_path(self, job_id: str, datum_id: str) -> Path:
        return self.root / "logs" / job_id / f"{datum_id}.log"

    def sandbox_dir(self, job_id: str) -> Path:
        return self.root / "tmp" / job_id
