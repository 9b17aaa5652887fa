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
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jobs import FINISHED_STATES, DatumRecord, JobRecord
from .names import InvalidNameError, validate_id, validate_name


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


@contextlib.contextmanager
def _temp_file(folder: Path) -> Iterator[str]:
    """A ``.tmp-*`` file in ``folder`` that is removed unless the body renamed it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a reader never sees a half-written file."""
    with _temp_file(path.parent) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _replace_text(path, json.dumps(data, indent=1, sort_keys=True))


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
    """``disk_full_after`` is a fault point for tests: object writes past that many bytes fail with ENOSPC."""

    def __init__(self, root: str | Path, disk_full_after: int | None = None) -> None:
        self.root = Path(root).resolve()
        self._object_bytes_left = disk_full_after

    def _copy_into(self, source: Path | None, data: bytes | None, tmp: str) -> None:
        """Write an object's bytes to ``tmp`` (from a file or memory), honouring the disk-full fault point."""
        with open(tmp, "wb") as dst:
            if source is not None:
                with open(source, "rb") as src:
                    blocks = iter(lambda: src.read(1 << 20), b"")
                    for block in blocks:
                        self._write_block(dst, block, tmp)
            elif data:
                self._write_block(dst, data, tmp)

    def _write_block(self, dst: Any, block: bytes, tmp: str) -> None:
        if self._object_bytes_left is not None:
            if len(block) > self._object_bytes_left:
                dst.write(block[: self._object_bytes_left])
                dst.flush()
                self._object_bytes_left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            self._object_bytes_left -= len(block)
        dst.write(block)

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

    def object_size(self, sha: str) -> int:
        return self.object_path(sha).stat().st_size

    def put_object(self, source: Path) -> tuple[str, int]:
        """Store a file's content; returns (sha256, size). Known content is not copied again."""
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
        target = self.object_path(sha)
        if not target.exists():
            with _temp_file(target.parent) as tmp:
                self._copy_into(source, None, tmp)
                os.replace(tmp, target)
        return sha, source.stat().st_size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        sha = hashlib.sha256(data).hexdigest()
        target = self.object_path(sha)
        if not target.exists():
            with _temp_file(target.parent) as tmp:
                self._copy_into(None, data, tmp)
                os.replace(tmp, target)
        return sha, len(data)

    def materialize(self, sha: str, target: Path) -> None:
        """Copy an object out (a copy, not a link, so a datum cannot corrupt the store)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.object_path(sha), target)

    # -- repos and commits -----------------------------------------------------------------------
    def repo_dir(self, repo: str) -> Path:
        try:
            return self.root / "repos" / validate_name("repo name", repo)
        except InvalidNameError as exc:
            raise StoreError(str(exc)) from exc

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
        path = self.repo_dir(repo) / "commits" / f"{validate_id('commit', commit_id)}.json"
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
        _replace_text(self.repo_dir(repo) / "master", commit.id + "\n")
        return commit

    # -- jobs, datum results, logs ---------------------------------------------------------------
    def save_job(self, record: JobRecord) -> None:
        _write_json(self.root / "jobs" / f"{record.id}.json", record.to_json())

    def append_job_datum(self, job_id: str, entry: DatumRecord) -> None:
        """Journal a finished datum as soon as it ends, so a killed run's work is not lost."""
        path = self.root / "jobs" / f"{job_id}.datums.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")

    def job_journal(self, job_id: str) -> list[DatumRecord]:
        path = self.root / "jobs" / f"{job_id}.datums.jsonl"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by the kill
                entries.append(DatumRecord.from_json(json.loads(line)))
        return entries

    def mark_interrupted_jobs_killed(self) -> list[JobRecord]:
        """Jobs still ``running`` while we hold the lock belong to a runner that died: mark them
        ``killed`` with the datums their journal shows finished. Returns the records changed."""
        changed = []
        for record in self.list_jobs():
            if record.state != "running":
                continue
            record.datums = self.job_journal(record.id)
            record.count(record.datums)
            record.state, record.resumable = "killed", True
            record.reason, record.finished = "the runner stopped before the job finished", now()
            self.save_job(record)
            changed.append(record)
        return changed

    def remove_partial_files(self) -> int:
        """Remove ``.tmp-*`` files a killed or disk-full run left in the store; returns how many."""
        removed = 0
        for folder in ("objects", "repos", "jobs", "datums"):
            for path in (self.root / folder).rglob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def job(self, job_id: str) -> JobRecord:
        validate_id("job", job_id)
        path = self.root / "jobs" / f"{job_id}.json"
        if not path.exists():
            matches = list((self.root / "jobs").glob(f"{job_id}*.json")) if job_id else []
            if len(matches) != 1:
                raise StoreError(f"job {job_id!r} not found")
            path = matches[0]
        return JobRecord.from_json(_read_json(path))

    def list_jobs(self) -> list[JobRecord]:
        base = self.root / "jobs"
        jobs = [JobRecord.from_json(_read_json(p)) for p in base.glob("*.json")] if base.is_dir() else []
        return sorted(jobs, key=lambda j: j.started)

    def datum_dir(self, pipeline: str, version: str) -> Path:
        return self.root / "datums" / pipeline / version

    def base_job_datums(self, pipeline: str, version: str) -> set[str]:
        """Datums a new job may reuse: those of the pipeline's last successful job (its *base*, as
        Pachyderm's ``pending_job.go`` picks it), plus those finished by jobs interrupted since.

        A failed job is never a base and its successes are not reused: they run again, as in Pachyderm.
        An interrupted job (the runner was killed) stands for the job Pachyderm would resume, so what it
        finished is kept. A datum that succeeded only in an older job (a file deleted, then put back)
        runs again, so a pipeline with side effects (pg-load) sees the input come back. Nothing is
        reused across spec versions.
        """
        reusable: set[str] = set()
        for job in reversed(self.list_jobs()):
            if job.pipeline != pipeline or job.state not in FINISHED_STATES:
                continue
            if job.spec_version != version:
                break
            if job.state == "success":
                reusable |= {d.id for d in job.datums if d.state in ("success", "skipped")}
                break
            if job.state == "killed" and job.resumable:
                reusable |= {d.id for d in job.datums if d.state == "success"}
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
