"""Run pipeline specs as jobs against the local store: DAG order, datums, sandboxes, commits."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .batching import DatumQueue, UserCodeExited, datum_sets, serve_worker, write_pachctl
from .dag import downstream_of, pipeline_order
from .datums import CommitView, Datum, plan_datums, split_done
from .envs import LocalEnv, effective_spec_env, job_env
from .names import InvalidNameError, validate_file_path
from .outputs import merge_outputs
from .pathmap import PathMap
from .procs import DatumCommand, GroupReaper, start_datum_process, wait_with_timeout
from .spec import CronInput, PfsInput, PipelineSpec, SpecError, leaf_inputs, spec_version
from .store import Store, new_id, now

LOG_TAIL_LINES = 30
_TICK = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@dataclass
class RunSettings:
    max_parallelism: int | None = None  # caps parallelism_spec.constant on a small machine
    keep_sandboxes: bool = False


@dataclass
class JobResult:
    pipeline: str
    job_id: str
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    state: str = "running"
    reason: str = ""
    output_commit: str | None = None

    def summary_line(self) -> str:
        return f"{self.pipeline}: processed={self.processed} skipped={self.skipped} failed={self.failed}"


@dataclass
class _DatumOutcome:
    datum: Datum
    ok: bool
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    tries: int = 0
    seconds: float = 0.0
    error: str = ""


class DiskFullError(Exception):
    """The store's disk is full: the job fails with one line; a rerun after freeing space completes."""


class JobKilled(Exception):
    """The job was killed (``job_timeout``), as Pachyderm kills it: state ``killed``, nothing committed."""


class RunInterrupted(BaseException):
    """The runner got SIGTERM or SIGINT: end every datum process group, mark the job killed, stop."""


class Runner:
    def __init__(
        self, store: Store, local: LocalEnv, settings: RunSettings, err: TextIO, reaper: GroupReaper
    ) -> None:
        self.store = store
        self.local = local
        self.settings = settings
        self.err = err
        self.reaper = reaper
        self._print_lock = threading.Lock()
        self._stop = threading.Event()

    def say(self, message: str) -> None:
        with self._print_lock:
            print(message, file=self.err, flush=True)

    # -- the DAG ---------------------------------------------------------------------------------
    def run(self, specs: Sequence[PipelineSpec], out: TextIO) -> list[JobResult]:
        """Run every pipeline once, in dependency order; a failed job blocks its downstream."""
        ordered = pipeline_order(specs)
        produced = {s.name for s in ordered}
        for spec in ordered:
            for leaf in leaf_inputs(spec.input):
                if (
                    isinstance(leaf, PfsInput)
                    and leaf.repo not in produced
                    and not self.store.repo_exists(leaf.repo)
                ):
                    raise SpecError(
                        f"{spec.source}: input repo {leaf.repo!r} does not exist; create it with "
                        f"'pachyderm-local create-repo {leaf.repo}' or 'put-file', "
                        "or also pass the spec of the pipeline that writes it"
                    )
        self.recover()
        blocked: set[str] = set()
        results = []
        for spec in ordered:
            if spec.name in blocked:
                self.say(f"{spec.name}: not run, an upstream job failed")
                continue
            result = self.run_job(spec)
            results.append(result)
            print(result.summary_line(), file=out, flush=True)
            if result.state != "success":
                blocked |= downstream_of(spec.name, ordered)
        return results

    def recover(self) -> None:
        """Close what a killed runner left: its jobs become ``killed`` (their finished datums are kept
        and reused), their sandboxes and the store's partial ``.tmp-*`` files are removed."""
        for record in self.store.mark_interrupted_jobs_killed():
            done = sum(d["state"] == "success" for d in record["datums"])
            self.say(
                f"{record['pipeline']}: job {record['id'][:12]} was interrupted (the runner stopped); "
                f"marked killed, its {done} finished datum(s) are reused"
            )
            shutil.rmtree(self.store.sandbox_dir(record["id"]), ignore_errors=True)
        self.store.remove_partial_files()

    # -- one job ---------------------------------------------------------------------------------
    def run_job(self, spec: PipelineSpec) -> JobResult:
        store = self.store
        job_id = new_id()
        result = JobResult(spec.name, job_id)
        started = time.monotonic()
        store.create_repo(spec.name, exist_ok=True)
        commits: dict[str, CommitView] = {}
        for leaf in leaf_inputs(spec.input):
            if isinstance(leaf, CronInput):
                commits[leaf.repo] = self._tick(leaf)
            else:
                head = store.head(leaf.repo)
                commits[leaf.repo] = CommitView(head.id, head.shas()) if head else CommitView("", {})
        version = spec_version(spec, effective_spec_env(spec, self.local))
        datums = plan_datums(spec.input, commits)
        done = (
            set()
            if spec.reprocess_every_job
            else store.base_job_datums(spec.name, version) & store.done_datums(spec.name, version)
        )
        todo, skip = split_done(datums, done)
        result.skipped = len(skip)
        record: dict[str, Any] = {
            "id": job_id,
            "pipeline": spec.name,
            "spec": spec.source,
            "spec_version": version,
            "inputs": {repo: view.commit_id for repo, view in commits.items()},
            "started": now(),
            "state": "running",
        }
        store.save_job(record)
        parallelism = min(spec.parallelism, self.settings.max_parallelism or spec.parallelism)
        self.say(
            f"{spec.name}: job {job_id[:12]}: {len(todo) + len(skip)} datums, {len(todo)} to process, "
            f"{len(skip)} already done (spec version {version}), parallelism {parallelism}"
        )
        if todo:
            for note in job_env(spec, self.local, PathMap.of({})).notes:
                self.say(f"{spec.name}: {note}")
        outcomes: list[_DatumOutcome] = []

        def journal(outcome: _DatumOutcome) -> None:
            store.append_job_datum(job_id, _datum_entry(outcome))

        self._stop = threading.Event()
        timed_out = threading.Event()

        def job_timeout() -> None:
            timed_out.set()
            self._stop.set()
            self.reaper.kill_all()

        timer = threading.Timer(spec.job_timeout_s, job_timeout) if spec.job_timeout_s is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            outcomes = self._run_datums(spec, job_id, todo, version, parallelism, journal)
            if timer is not None:
                timer.cancel()
            if timed_out.is_set():
                raise JobKilled(f"job timed out after {spec.job_timeout_s:g}s (job_timeout)")
            self._finish_job(spec, job_id, version, outcomes, skip, result)
            entries = [_datum_entry(o) for o in outcomes]
        except RunInterrupted:
            record.update(
                state="killed", reason="interrupted (SIGTERM or SIGINT)", finished=now(), resumable=True
            )
            record["datums"] = store.job_journal(job_id)
            store.save_job(record)
            raise
        except (DiskFullError, UserCodeExited, JobKilled) as caught:
            # a user code killed by the job timeout may report something else first
            stopped: Exception = (
                JobKilled(f"job timed out after {spec.job_timeout_s:g}s (job_timeout)")
                if timed_out.is_set()
                else caught
            )
            entries = store.job_journal(job_id)
            result.state = "killed" if isinstance(stopped, JobKilled) else "failure"
            result.reason = str(stopped)
            result.processed = sum(e["state"] == "success" for e in entries)
            result.failed = sum(e["state"] == "failed" for e in entries)
            verb = "was killed" if result.state == "killed" else "failed"
            self.say(f"{spec.name}: job {job_id[:12]} {verb}: {stopped}")
        except Exception as exc:  # a runner fault, not a datum's: the job must not stay "running" forever
            record.update(state="failure", reason=f"runner error: {exc}", finished=now())
            store.save_job(record)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not self.settings.keep_sandboxes:
                shutil.rmtree(store.sandbox_dir(job_id), ignore_errors=True)
        record.update(
            state=result.state,
            reason=result.reason,
            finished=now(),
            seconds=round(time.monotonic() - started, 3),
            processed=result.processed,
            skipped=result.skipped,
            failed=result.failed,
            output_commit=result.output_commit,
            datums=entries
            + [
                {
                    "id": d.id,
                    "datum_id": d.pach_id,
                    "inputs": d.describe(),
                    "state": "skipped",
                    "from_job": store.datum_job(spec.name, version, d.id),
                }
                for d in skip
            ],
        )
        store.save_job(record)
        return result

    def _run_datums(
        self,
        spec: PipelineSpec,
        job_id: str,
        todo: list[Datum],
        version: str,
        parallelism: int,
        journal: Callable[[_DatumOutcome], None],
    ) -> list[_DatumOutcome]:
        """Process ``todo``; on an interrupt or a runner fault every datum process group is ended first."""
        if not todo:
            return []
        if spec.datum_batching:
            return self._run_batched(spec, job_id, todo, version, parallelism, journal)
        counter = iter(range(1, len(todo) + 1))
        pool = ThreadPoolExecutor(max_workers=parallelism)
        try:
            futures = [
                pool.submit(
                    self._stop_job_on_error,
                    self._run_datum,
                    spec,
                    job_id,
                    d,
                    version,
                    counter,
                    len(todo),
                    journal,
                )
                for d in todo
            ]
            return [f.result() for f in futures]
        except BaseException:
            self._stop.set()
            self.reaper.kill_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stop_job_on_error(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run a pool task; a runner fault in it (a full disk, batched code that exits early) stops the
        job's other datums before they start, whatever thread notices first."""
        try:
            return work(*args)
        except BaseException:
            self._stop.set()
            raise

    def _finish_job(
        self,
        spec: PipelineSpec,
        job_id: str,
        version: str,
        outcomes: list[_DatumOutcome],
        skip: list[Datum],
        result: JobResult,
    ) -> None:
        """Count the datums, then commit the merged output or record why the job failed."""
        store = self.store
        result.processed = sum(o.ok for o in outcomes)
        result.failed = sum(not o.ok for o in outcomes)
        if result.failed:
            result.state = "failure"
            result.reason = f"{result.failed} datum(s) failed"
            for o in outcomes:
                if not o.ok:
                    self._show_failure(spec, job_id, o)
            return
        outputs = [(o.datum.id, o.files) for o in outcomes]
        outputs += [(d.id, store.datum_output(spec.name, version, d.id)) for d in skip]
        merged_shas, collisions = merge_outputs(
            (datum_id, {p: m["sha256"] for p, m in files.items()}) for datum_id, files in outputs
        )
        if collisions:
            result.state = "failure"
            result.reason = "; ".join(c.message() for c in collisions[:5])
            self.say(f"{spec.name}: job {job_id[:12]} failed: {result.reason}")
            return
        meta = {p: m for _, files in outputs for p, m in files.items()}
        files = {p: meta[p] for p in sorted(merged_shas)}
        with disk_full_is_a_job_failure("committing the job's output"):
            commit = store.write_commit(spec.name, files, origin=f"job:{job_id}", commit_id=job_id)
        result.output_commit = commit.id
        result.state = "success"

    def _tick(self, cron: CronInput) -> CommitView:
        """One cron tick: an empty file named by the time in RFC 3339 (UTC, seconds), as Pachyderm's
        ``cronTick`` writes it; one datum per tick (glob ``/*``)."""
        sha, size = self.store.put_bytes(b"")
        self.store.create_repo(cron.repo, exist_ok=True)
        previous = self.store.head(cron.repo)
        stamp = next_tick_name(dt.datetime.now(dt.timezone.utc), previous.files if previous else {})
        files = {} if cron.overwrite or previous is None else dict(previous.files)
        files[stamp] = {"sha256": sha, "size": size}
        commit = self.store.write_commit(cron.repo, files, origin=f"cron:{cron.schedule}")
        return CommitView(commit.id, commit.shas())

    # -- one datum -------------------------------------------------------------------------------
    def datum_command(
        self, spec: PipelineSpec, job_id: str, pfs: Path, datum: Datum | None, bin_dir: Path | None = None
    ) -> tuple[DatumCommand, list[str]]:
        """The one place a datum process is described: argv, environment and stdin, with ``/pfs`` mapped
        to the sandbox ``pfs``; plus notes for the log. ``datum`` is None for a batching worker, whose
        process outlives single datums: as in Pachyderm it gets no per-datum variables (they are in
        ``/pfs/.env``)."""
        path_map = self._path_map(spec, pfs)
        plan = job_env(spec, self.local, path_map)
        env = plan.env
        env.update(
            PPS_PIPELINE_NAME=spec.name,
            PPS_PROJECT_NAME=spec.project,
            PPS_SPEC_COMMIT=spec_version(spec, effective_spec_env(spec, self.local)),
            PPS_POD_NAME=f"pachyderm-local-{spec.name}",
            PACH_JOB_ID=job_id,
            PACH_OUTPUT_COMMIT_ID=job_id,
        )
        if datum is not None:
            env.update(datum_variables(datum, pfs))
        if bin_dir is not None:
            prepend_path(env, str(bin_dir))
        stdin = path_map.apply("\n".join(spec.stdin)) + "\n" if spec.stdin else None
        return DatumCommand(path_map.apply_all(spec.cmd), env, stdin), plan.notes

    def _run_datum(
        self,
        spec: PipelineSpec,
        job_id: str,
        datum: Datum,
        version: str,
        counter: Any,
        total: int,
        journal: Callable[[_DatumOutcome], None],
    ) -> _DatumOutcome:
        store = self.store
        log_path = store.log_path(job_id, datum.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        outcome = _DatumOutcome(datum, ok=False)
        started = time.monotonic()
        for attempt in range(1, spec.datum_tries + 1):
            if self._stop.is_set():
                if attempt == 1:  # never started: not recorded as processed
                    outcome.error = "not run: the job was stopped"
                    return outcome
                break
            outcome.tries = attempt
            sandbox = store.sandbox_dir(job_id) / f"{datum.id[:16]}-{attempt}"
            shutil.rmtree(sandbox, ignore_errors=True)
            pfs = sandbox / "pfs"
            with disk_full_is_a_job_failure("laying out a datum's sandbox"):
                self._layout(job_id, datum, pfs)
            command, notes = self.datum_command(spec, job_id, pfs, datum)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"--- {now()} try {attempt}/{spec.datum_tries} datum {datum.describe()}\n")
                for note in notes:
                    log.write(f"[pachyderm-local] {note}\n")
                log.flush()
                try:
                    proc = start_datum_process(command, log, self.reaper)
                except OSError as exc:
                    error = f"cannot start {command.argv[0]!r}: {exc}"
                else:
                    code = wait_with_timeout(proc, self.reaper, spec.datum_timeout_s)
                    if code is None:
                        error = f"timed out after {spec.datum_timeout_s:g}s"
                    elif self._stop.is_set():
                        error = "stopped: the job was interrupted"
                    else:
                        error = "" if code == 0 or code in spec.accept_return_code else f"exit code {code}"
                if not error:
                    try:
                        files = self._collect_output(spec, version, job_id, datum, pfs)
                    except InvalidNameError as exc:
                        error = f"cannot upload an output file: {exc}"
                log.write(f"[pachyderm-local] try {attempt}: {error or 'success'}\n")
            if not self.settings.keep_sandboxes:
                shutil.rmtree(sandbox, ignore_errors=True)
            if not error:
                outcome.ok, outcome.files, outcome.error = True, files, ""
                break
            outcome.error = error
        outcome.seconds = time.monotonic() - started
        journal(outcome)
        state = "ok" if outcome.ok else f"FAILED ({outcome.error}, {outcome.tries} tries)"
        self.say(
            f"{spec.name}: datum {next(counter)}/{total} {datum.describe()} {state} in {outcome.seconds:.1f}s"
        )
        return outcome

    def _run_batched(
        self,
        spec: PipelineSpec,
        job_id: str,
        todo: list[Datum],
        version: str,
        parallelism: int,
        journal: Callable[[_DatumOutcome], None],
    ) -> list[_DatumOutcome]:
        """Datum batching: one long-lived command per worker slot (see batching.py)."""
        store = self.store
        job_dir = store.sandbox_dir(job_id)
        bin_dir = job_dir / "bin"
        write_pachctl(bin_dir)
        set_spec = spec.raw.get("datum_set_spec", {})
        sets = datum_sets(
            todo,
            spec.parallelism,
            number=int(set_spec.get("number", 0)),
            size_bytes=int(set_spec.get("size_bytes", 0)),
            per_worker=int(set_spec.get("per_worker", 0)),
            size_of=lambda d: sum(self.store.object_size(sha) for i in d.inputs for _, sha in i.files),
        )
        queue = DatumQueue(sets)
        counter = iter(range(1, len(todo) + 1))
        finished: dict[str, _DatumOutcome] = {}
        lock = threading.Lock()

        def collect(outcome: _DatumOutcome, pfs: Path) -> None:
            outcome.files = self._collect_output(spec, version, job_id, outcome.datum, pfs)
            outcome.ok, outcome.error = True, ""

        def finish(outcome: _DatumOutcome) -> None:
            with lock:
                finished[outcome.datum.id] = outcome
            journal(outcome)
            state = "ok" if outcome.ok else f"FAILED ({outcome.error}, {outcome.tries} tries)"
            self.say(
                f"{spec.name}: datum {next(counter)}/{len(todo)} {outcome.datum.describe()} {state} "
                f"in {outcome.seconds:.1f}s"
            )

        def worker(slot: int) -> None:
            serve_worker(
                spec=spec,
                worker_dir=job_dir / f"worker-{slot}",
                sets=queue,
                make_outcome=lambda d: _DatumOutcome(d, ok=False),
                layout=lambda d, pfs: self._layout(job_id, d, pfs),
                collect=collect,
                finish=finish,
                command=lambda pfs: self.datum_command(spec, job_id, pfs, None, bin_dir)[0],
                log_path=lambda d: store.log_path(job_id, d.id),
                reaper=self.reaper,
                stop=self._stop,
            )

        pool = ThreadPoolExecutor(max_workers=parallelism)
        try:
            workers = [
                pool.submit(self._stop_job_on_error, worker, n) for n in range(min(parallelism, len(sets)))
            ]
            for future in workers:
                future.result()
        except BaseException:
            self._stop.set()
            self.reaper.kill_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [finished.get(d.id) or _DatumOutcome(d, ok=False, error="not run") for d in todo]

    def _path_map(self, spec: PipelineSpec, pfs: Path) -> PathMap:
        mapping = {"/pfs": str(pfs)}
        mapping.update(
            {
                s.mount_path: self.local.secret_dirs[s.name]
                for s in spec.secrets
                if s.mount_path and s.name in self.local.secret_dirs
            }
        )
        return PathMap.of(mapping)

    def _layout(self, job_id: str, datum: Datum, pfs: Path) -> None:
        """Fresh ``/pfs/<input>`` folders holding the datum's files, and an empty ``/pfs/out``."""
        shutil.rmtree(pfs, ignore_errors=True)
        (pfs / "out").mkdir(parents=True)
        for item in datum.inputs:
            (pfs / item.name).mkdir(parents=True, exist_ok=True)
            for rel, sha in item.files:
                # Commits hold validated paths; checked again so a hand-edited store cannot escape /pfs.
                self.store.materialize(sha, pfs / item.name / validate_file_path(rel))
        write_env_file(pfs, job_id, datum)

    def _collect_output(
        self, spec: PipelineSpec, version: str, job_id: str, datum: Datum, pfs: Path
    ) -> dict[str, dict[str, Any]]:
        """Store ``/pfs/out``; a file name PFS cannot hold fails the datum (InvalidNameError), as in
        Pachyderm's worker."""
        files = {}
        paths = [p for p in sorted((pfs / "out").rglob("*")) if p.is_file()]
        names = [validate_file_path(p.relative_to(pfs / "out").as_posix()) for p in paths]
        with disk_full_is_a_job_failure("storing a datum's output"):
            for path, name in zip(paths, names, strict=True):
                sha, size = self.store.put_object(path)
                files[name] = {"sha256": sha, "size": size}
            self.store.save_datum_output(spec.name, version, datum.id, job_id, files)
        return files

    def _show_failure(self, spec: PipelineSpec, job_id: str, outcome: _DatumOutcome) -> None:
        log_path = self.store.log_path(job_id, outcome.datum.id)
        lines = (
            log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.exists() else []
        )
        tail = "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])
        self.say(
            f"{spec.name}: datum {outcome.datum.id[:12]} ({outcome.datum.describe()}) failed: "
            f"{outcome.error}; last lines of {log_path}:\n{tail}"
        )


def next_tick_name(now: dt.datetime, existing: Iterable[str]) -> str:
    """RFC 3339 in seconds (``2026-01-02T03:04:05Z``), after every existing tick: a run is one tick, and
    two runs in one second are still two ticks (Pachyderm's scheduled times never repeat)."""
    names = [n for n in existing if _TICK.match(n)]
    tick = now.astimezone(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    if names:
        latest = dt.datetime.strptime(max(names), "%Y-%m-%dT%H:%M:%SZ")
        tick = max(tick, latest + dt.timedelta(seconds=1))
    return tick.strftime("%Y-%m-%dT%H:%M:%SZ")


def datum_variables(datum: Datum, pfs: Path) -> dict[str, str]:
    """Pachyderm's per-datum variables (``driver.UserCodeEnv``), with ``/pfs`` at the sandbox ``pfs``."""
    env = {"PACH_DATUM_ID": datum.pach_id, "FILESET_ID": datum.id}
    for item in datum.inputs:
        env[item.name] = str(pfs / item.name) + ("" if item.path == "/" else item.path)
        env[f"{item.name}_COMMIT"] = item.commit_id
    return env


def write_env_file(pfs: Path, job_id: str, datum: Datum) -> None:
    """``/pfs/.env`` (Pachyderm >= 2.6 writes one per datum): the only place batched user code finds the
    current datum's variables. Locally it holds Pachyderm's variables only, never the process environment
    or secrets (Pachyderm writes its whole environment there)."""
    variables = {"PACH_JOB_ID": job_id, "PACH_OUTPUT_COMMIT_ID": job_id, **datum_variables(datum, pfs)}
    (pfs / ".env").write_text("".join(f"{k}={v}\n" for k, v in variables.items()), encoding="utf-8")


def _datum_entry(outcome: _DatumOutcome) -> dict[str, Any]:
    """A processed datum as the job record (and its journal) stores it."""
    return {
        "id": outcome.datum.id,
        "datum_id": outcome.datum.pach_id,
        "inputs": outcome.datum.describe(),
        "state": "success" if outcome.ok else "failed",
        "tries": outcome.tries,
        "seconds": round(outcome.seconds, 3),
        "error": outcome.error,
    }


@contextlib.contextmanager
def disk_full_is_a_job_failure(doing: str) -> Iterator[None]:
    """ENOSPC anywhere in the store becomes one DiskFullError line (the store removed its partial file)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DiskFullError(
            f"no space left on the device while {doing} ({exc.filename or 'the store'}); "
            "free space and run again"
        ) from None


def prepend_path(env: dict[str, str], folder: str) -> dict[str, str]:
    """Put the runner's own bin folder first on PATH so a venv's console scripts are found unactivated."""
    paths = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if folder not in paths:
        env["PATH"] = os.pathsep.join([folder, *paths])
    return env


def resolve_local_dir(path: str) -> str:
    return str(Path(path).resolve())
