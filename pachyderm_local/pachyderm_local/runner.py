"""Run pipeline specs as jobs against the local store: DAG order, datums, sandboxes, commits.

A job goes through four steps, each a method of ``Runner``: resolve its input commits (a cron input
ticks), plan its datums (what to process, what to reuse), execute them (in a thread pool, or through
datum batching workers) and commit the merged output. ``JobRecord`` carries the outcome to the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .batching import (
    BatchingLink,
    BatchWorker,
    DatumQueue,
    UserCodeExited,
    datum_sets,
    write_pachctl,
)
from .batching_pachctl import SOCKET_ENV
from .dag import downstream_of, pipeline_order
from .datums import CommitView, Datum, plan_datums, split_done
from .engine import ContainerEngine
from .envs import LocalEnv, effective_spec_env, job_env
from .jobs import DatumOutcome, DatumRecord, JobRecord
from .names import InvalidNameError, validate_file_path
from .outputs import merge_outputs
from .pathmap import PathMap
from .procs import DatumCommand, GroupReaper, start_datum_process, wait_with_timeout
from .sandbox import container_paths, datum_variables, lay_out, prepend_path
from .spec import CronInput, PfsInput, PipelineSpec, SpecError, leaf_inputs, spec_version
from .store import Store, new_id, now

LOG_TAIL_LINES = 30
_TICK = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_T = TypeVar("_T")


@dataclass
class RunSettings:
    max_parallelism: int | None = None  # caps parallelism_spec.constant on a small machine
    keep_sandboxes: bool = False
    engine: ContainerEngine | None = None  # run each command in the spec's image (engine.py)


@dataclass
class JobPlan:
    """What a job will do, decided before anything runs: the datums to process and those to reuse."""

    spec: PipelineSpec
    record: JobRecord
    todo: list[Datum]
    skip: list[Datum]
    parallelism: int
    finished: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def job_id(self) -> str:
        return self.record.id

    @property
    def version(self) -> str:
        return self.record.spec_version


class DiskFullError(Exception):
    """The store's disk is full: the job fails with one line; a rerun after freeing space completes."""


class JobKilled(Exception):
    """The job was killed (``job_timeout``), as Pachyderm kills it: state ``killed``, nothing committed."""


class RunInterrupted(BaseException):
    """The runner got SIGTERM or SIGINT: end every datum process group, mark the job killed, stop."""


class _JobTimer:
    """``job_timeout``: when it passes, ``on_fire`` ends every datum process group."""

    def __init__(self, seconds: float | None, on_fire: Callable[[], None]) -> None:
        self.seconds = seconds
        self.fired = threading.Event()
        self._on_fire = on_fire
        self._timer = threading.Timer(seconds, self._fire) if seconds is not None else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        self._on_fire()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def error(self) -> JobKilled:
        return JobKilled(f"job timed out after {self.seconds:g}s (job_timeout)")


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
    def run(self, specs: Sequence[PipelineSpec], out: TextIO) -> list[JobRecord]:
        """Run every pipeline once, in dependency order; a failed job blocks its downstream."""
        ordered = pipeline_order(specs)
        self._check_inputs_exist(ordered)
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

    def _check_inputs_exist(self, ordered: Sequence[PipelineSpec]) -> None:
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

    def recover(self) -> None:
        """Close what a killed runner left: its jobs become ``killed`` (their finished datums are kept
        and reused), their sandboxes and the store's partial ``.tmp-*`` files are removed."""
        for record in self.store.mark_interrupted_jobs_killed():
            self.say(
                f"{record.pipeline}: job {record.id[:12]} was interrupted (the runner stopped); "
                f"marked killed, its {record.processed} finished datum(s) are reused"
            )
            shutil.rmtree(self.store.sandbox_dir(record.id), ignore_errors=True)
        self.store.remove_partial_files()

    # -- one job: resolve, plan, execute, commit -------------------------------------------------
    def run_job(self, spec: PipelineSpec) -> JobRecord:
        """One job of ``spec``; its record (saved in the store) says how it ended."""
        started = time.monotonic()
        plan = self.plan(spec, self.resolve(spec))
        job = plan.record
        self.store.save_job(job)
        self._announce(plan)
        try:
            outcomes = self.execute(plan)
            ran = [o.record() for o in outcomes]
            self.commit(plan, outcomes)
        except RunInterrupted:
            job.state, job.reason, job.resumable = "killed", "interrupted (SIGTERM or SIGINT)", True
            job.finished, job.datums = now(), self.store.job_journal(job.id)
            self.store.save_job(job)
            raise
        except (DiskFullError, UserCodeExited, JobKilled) as stopped:
            ran = self.store.job_journal(job.id)
            self._stopped(plan, stopped, ran)
        except Exception as exc:  # a runner fault, not a datum's: the job must not stay "running" forever
            job.state, job.reason, job.finished = "failure", f"runner error: {exc}", now()
            self.store.save_job(job)
            raise
        finally:
            if not self.settings.keep_sandboxes:
                shutil.rmtree(self.store.sandbox_dir(job.id), ignore_errors=True)
        job.finished, job.seconds = now(), round(time.monotonic() - started, 3)
        job.datums = ran + [self._reused(plan, d) for d in plan.skip]
        self.store.save_job(job)
        return job

    def resolve(self, spec: PipelineSpec) -> dict[str, CommitView]:
        """The input commit of each input repo (a cron input ticks first); creates the output repo."""
        self.store.create_repo(spec.name, exist_ok=True)
        commits: dict[str, CommitView] = {}
        for leaf in leaf_inputs(spec.input):
            if isinstance(leaf, CronInput):
                commits[leaf.repo] = self._tick(leaf)
            else:
                head = self.store.head(leaf.repo)
                commits[leaf.repo] = CommitView(head.id, head.shas()) if head else CommitView("", {})
        return commits

    def plan(self, spec: PipelineSpec, commits: dict[str, CommitView]) -> JobPlan:
        """The job's datums, split into those to process and those its base job already did."""
        version = spec_version(spec, effective_spec_env(spec, self.local))
        done = (
            set()
            if spec.reprocess_every_job
            else self.store.base_job_datums(spec.name, version) & self.store.done_datums(spec.name, version)
        )
        todo, skip = split_done(plan_datums(spec.input, commits), done)
        record = JobRecord(
            id=new_id(),
            pipeline=spec.name,
            spec=spec.source,
            spec_version=version,
            inputs={repo: view.commit_id for repo, view in commits.items()},
            started=now(),
            skipped=len(skip),
        )
        parallelism = min(spec.parallelism, self.settings.max_parallelism or spec.parallelism)
        return JobPlan(spec, record, todo, skip, parallelism)

    def _announce(self, plan: JobPlan) -> None:
        spec, todo, skip = plan.spec, plan.todo, plan.skip
        self.say(
            f"{spec.name}: job {plan.job_id[:12]}: {len(todo) + len(skip)} datums, {len(todo)} to process, "
            f"{len(skip)} already done (spec version {plan.version}), parallelism {plan.parallelism}"
        )
        if todo:
            for note in job_env(spec, self.local, PathMap.of({})).notes:
                self.say(f"{spec.name}: {note}")

    def execute(self, plan: JobPlan) -> list[DatumOutcome]:
        """Process the datums to do, under ``job_timeout``; raises JobKilled when it passes."""
        self._stop = threading.Event()
        timer = _JobTimer(plan.spec.job_timeout_s, self._stop_all)
        try:
            outcomes = self._run_datums(plan)
        except (DiskFullError, UserCodeExited) as exc:
            if timer.fired.is_set():  # user code killed by the job timeout may report something else first
                raise timer.error() from exc
            raise
        finally:
            timer.cancel()
        if timer.fired.is_set():
            raise timer.error()
        return outcomes

    def commit(self, plan: JobPlan, outcomes: list[DatumOutcome]) -> None:
        """Count the datums, then commit the merged output or record why the job failed."""
        job = plan.record
        job.count([o.record() for o in outcomes])
        if job.failed:
            job.state, job.reason = "failure", f"{job.failed} datum(s) failed"
            for outcome in outcomes:
                if not outcome.ok:
                    self._show_failure(plan, outcome)
            return
        outputs = [(o.datum.id, o.files) for o in outcomes]
        outputs += [(d.id, self.store.datum_output(plan.spec.name, plan.version, d.id)) for d in plan.skip]
        merged_shas, collisions = merge_outputs(
            (datum_id, {p: m["sha256"] for p, m in files.items()}) for datum_id, files in outputs
        )
        if collisions:
            job.state, job.reason = "failure", "; ".join(c.message() for c in collisions[:5])
            self.say(f"{plan.spec.name}: job {job.id[:12]} failed: {job.reason}")
            return
        meta = {p: m for _, files in outputs for p, m in files.items()}
        files = {p: meta[p] for p in sorted(merged_shas)}
        with disk_full_is_a_job_failure("committing the job's output"):
            commit = self.store.write_commit(plan.spec.name, files, origin=f"job:{job.id}", commit_id=job.id)
        job.output_commit, job.state = commit.id, "success"

    def _stopped(self, plan: JobPlan, stopped: Exception, ran: list[DatumRecord]) -> None:
        """The job ended early (disk full, batched code exited, ``job_timeout``): nothing is committed."""
        job = plan.record
        job.state = "killed" if isinstance(stopped, JobKilled) else "failure"
        job.reason = str(stopped)
        job.count(ran)
        verb = "was killed" if job.state == "killed" else "failed"
        self.say(f"{plan.spec.name}: job {job.id[:12]} {verb}: {stopped}")

    def _reused(self, plan: JobPlan, datum: Datum) -> DatumRecord:
        return DatumRecord(
            id=datum.id,
            datum_id=datum.pach_id,
            inputs=datum.describe(),
            state="skipped",
            from_job=self.store.datum_job(plan.spec.name, plan.version, datum.id),
        )

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

    # -- executing datums ------------------------------------------------------------------------
    def _run_datums(self, plan: JobPlan) -> list[DatumOutcome]:
        """Process the plan's datums; on an interrupt or a runner fault every datum process group is
        ended first."""
        if not plan.todo:
            return []
        if plan.spec.datum_batching:
            return self._run_batched(plan)
        return self._in_pool(plan.parallelism, [partial(self._run_datum, plan, d) for d in plan.todo])

    def _in_pool(self, parallelism: int, tasks: list[Callable[[], _T]]) -> list[_T]:
        """Run ``tasks`` on ``parallelism`` threads; the first runner fault (a full disk, batched code
        that exits early, an interrupt) stops the job's other datums before they start and ends every
        datum process group, whatever thread notices first."""
        pool = ThreadPoolExecutor(max_workers=parallelism)
        try:
            futures = [pool.submit(self._stop_job_on_error, task) for task in tasks]
            return [f.result() for f in futures]
        except BaseException:
            self._stop_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stop_job_on_error(self, task: Callable[[], _T]) -> _T:
        try:
            return task()
        except BaseException:
            self._stop.set()
            raise

    def _stop_all(self) -> None:
        self._stop.set()
        self.reaper.kill_all()

    def _finish_datum(self, plan: JobPlan, outcome: DatumOutcome) -> None:
        """Journal a datum as soon as it ends (what a killed run keeps) and report it."""
        self.store.append_job_datum(plan.job_id, outcome.record())
        self.say(
            f"{plan.spec.name}: datum {next(plan.finished)}/{len(plan.todo)} {outcome.datum.describe()} "
            f"{outcome.status()} in {outcome.seconds:.1f}s"
        )

    # -- one datum -------------------------------------------------------------------------------
    def lay_out(self, job_id: str, pfs: Path, datum: Datum | None) -> None:
        """The one builder of a datum's sandbox ``pfs`` (see sandbox.lay_out); in a container the user code
        sees it at ``/pfs``."""
        seen_as = Path("/pfs") if self.settings.engine is not None else None
        with disk_full_is_a_job_failure("laying out a datum's sandbox"):
            lay_out(self.store, pfs, job_id, datum, seen_as)

    def datum_command(
        self,
        spec: PipelineSpec,
        job_id: str,
        pfs: Path,
        datum: Datum | None,
        batching: BatchingLink | None = None,
    ) -> tuple[DatumCommand, list[str]]:
        """The one place a datum process is described: argv, environment and stdin, with ``/pfs`` mapped
        to the sandbox ``pfs``; plus notes for the log. ``datum`` is None for a batching worker, whose
        process outlives single datums: as in Pachyderm it gets no per-datum variables (they are in
        ``/pfs/.env``), but the stand-in ``pachctl`` first on PATH and the worker's socket."""
        path_map = container_paths(spec, self.local.secret_dirs, pfs)
        env_plan = job_env(spec, self.local, path_map)
        env = env_plan.env
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
        if batching is not None:
            prepend_path(env, str(batching.bin_dir))
            env[SOCKET_ENV] = batching.socket
        stdin = path_map.apply("\n".join(spec.stdin)) + "\n" if spec.stdin else None
        argv = path_map.apply_all(spec.cmd)
        if self.settings.engine is not None:  # the same command, inside the spec's image
            overrides = [*self.local.files, *self.local.flags]
            argv = self.settings.engine.wrap(
                spec, argv, pfs=pfs, secret_dirs=self.local.secret_dirs, overrides=overrides
            )
        return DatumCommand(argv, env, stdin), env_plan.notes

    def _run_datum(self, plan: JobPlan, datum: Datum) -> DatumOutcome:
        """Up to ``datum_tries`` tries, each in a fresh sandbox."""
        log_path = self.store.log_path(plan.job_id, datum.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        outcome = DatumOutcome(datum)
        started = time.monotonic()
        for attempt in range(1, plan.spec.datum_tries + 1):
            if self._stop.is_set():
                if attempt == 1:  # never started: not recorded as processed
                    outcome.error = "not run: the job was stopped"
                    return outcome
                break
            outcome.tries = attempt
            outcome.error, files = self._try_datum(plan, datum, attempt, log_path)
            if not outcome.error:
                outcome.ok, outcome.files = True, files
                break
        outcome.seconds = time.monotonic() - started
        self._finish_datum(plan, outcome)
        return outcome

    def _try_datum(
        self, plan: JobPlan, datum: Datum, attempt: int, log_path: Path
    ) -> tuple[str, dict[str, dict[str, Any]]]:
        """One try: (error or "", output files)."""
        spec = plan.spec
        sandbox = self.store.sandbox_dir(plan.job_id) / f"{datum.id[:16]}-{attempt}"
        shutil.rmtree(sandbox, ignore_errors=True)
        pfs = sandbox / "pfs"
        self.lay_out(plan.job_id, pfs, datum)
        command, notes = self.datum_command(spec, plan.job_id, pfs, datum)
        files: dict[str, dict[str, Any]] = {}
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"--- {now()} try {attempt}/{spec.datum_tries} datum {datum.describe()}\n")
            for note in notes:
                log.write(f"[pachyderm-local] {note}\n")
            log.flush()
            error = self._run_process(spec, command, log)
            if not error:
                try:
                    files = self._collect_output(plan, datum, pfs)
                except InvalidNameError as exc:
                    error = f"cannot upload an output file: {exc}"
            log.write(f"[pachyderm-local] try {attempt}: {error or 'success'}\n")
        if not self.settings.keep_sandboxes:
            shutil.rmtree(sandbox, ignore_errors=True)
        return error, files

    def _run_process(self, spec: PipelineSpec, command: DatumCommand, log: TextIO) -> str:
        """Run one datum process to its end; "" on success, else why it failed."""
        try:
            proc = start_datum_process(command, log, self.reaper)
        except OSError as exc:
            return f"cannot start {command.argv[0]!r}: {exc}"
        code = wait_with_timeout(proc, self.reaper, spec.datum_timeout_s)
        if code is None:
            return f"timed out after {spec.datum_timeout_s:g}s"
        if self._stop.is_set():
            return "stopped: the job was interrupted"
        return "" if code == 0 or code in spec.accept_return_code else f"exit code {code}"

    def _run_batched(self, plan: JobPlan) -> list[DatumOutcome]:
        """Datum batching: one long-lived command per worker slot (see batching.py)."""
        spec = plan.spec
        job_dir = self.store.sandbox_dir(plan.job_id)
        host = _BatchedJob(self, plan, job_dir / "bin")
        write_pachctl(host.bin_dir)
        set_spec = spec.raw.get("datum_set_spec", {})
        sets = datum_sets(
            plan.todo,
            spec.parallelism,
            number=int(set_spec.get("number", 0)),
            size_bytes=int(set_spec.get("size_bytes", 0)),
            per_worker=int(set_spec.get("per_worker", 0)),
            size_of=lambda d: sum(self.store.object_size(sha) for i in d.inputs for _, sha in i.files),
        )
        queue = DatumQueue(sets)
        workers = [
            BatchWorker(spec, job_dir / f"worker-{n}", host, self.reaper, self._stop)
            for n in range(min(plan.parallelism, len(sets)))
        ]
        self._in_pool(plan.parallelism, [partial(w.run, queue) for w in workers])
        return [host.finished.get(d.id) or DatumOutcome(d, error="not run") for d in plan.todo]

    def _collect_output(self, plan: JobPlan, datum: Datum, pfs: Path) -> dict[str, dict[str, Any]]:
        """Store ``/pfs/out``; a file name PFS cannot hold fails the datum (InvalidNameError), as in
        Pachyderm's worker."""
        files = {}
        paths = [p for p in sorted((pfs / "out").rglob("*")) if p.is_file()]
        names = [validate_file_path(p.relative_to(pfs / "out").as_posix()) for p in paths]
        with disk_full_is_a_job_failure("storing a datum's output"):
            for path, name in zip(paths, names, strict=True):
                sha, size = self.store.put_object(path)
                files[name] = {"sha256": sha, "size": size}
            self.store.save_datum_output(plan.spec.name, plan.version, datum.id, plan.job_id, files)
        return files

    def _show_failure(self, plan: JobPlan, outcome: DatumOutcome) -> None:
        log_path = self.store.log_path(plan.job_id, outcome.datum.id)
        lines = (
            log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.exists() else []
        )
        tail = "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])
        self.say(
            f"{plan.spec.name}: datum {outcome.datum.id[:12]} ({outcome.datum.describe()}) failed: "
            f"{outcome.error}; last lines of {log_path}:\n{tail}"
        )


class _BatchedJob:
    """What the batching workers of one job ask of the runner (batching.BatchHost)."""

    def __init__(self, runner: Runner, plan: JobPlan, bin_dir: Path) -> None:
        self.runner = runner
        self.plan = plan
        self.bin_dir = bin_dir
        self.finished: dict[str, DatumOutcome] = {}
        self._lock = threading.Lock()

    def lay_out(self, pfs: Path, datum: Datum | None) -> None:
        def lay_out(d: object, folder: Path) -> None:
            self.runner.lay_out(self.plan.job_id, folder, d)  # type: ignore[arg-type]

        engine = self.runner.settings.engine
        # A running container keeps seeing the folder it mounted: with an engine, /pfs keeps its inode.
        (engine.keep_mount(lay_out) if engine is not None else lay_out)(datum, pfs)

    def command(self, pfs: Path, socket_path: str) -> DatumCommand:
        link = BatchingLink(self.bin_dir, socket_path)
        return self.runner.datum_command(self.plan.spec, self.plan.job_id, pfs, None, link)[0]

    def collect(self, outcome: DatumOutcome, pfs: Path) -> None:
        outcome.files = self.runner._collect_output(self.plan, outcome.datum, pfs)
        outcome.ok, outcome.error = True, ""

    def finish(self, outcome: DatumOutcome) -> None:
        with self._lock:
            self.finished[outcome.datum.id] = outcome
        self.runner._finish_datum(self.plan, outcome)

    def log_path(self, datum: Datum) -> Path:
        return self.runner.store.log_path(self.plan.job_id, datum.id)


def next_tick_name(now: dt.datetime, existing: Iterable[str]) -> str:
    """RFC 3339 in seconds (``2026-01-02T03:04:05Z``), after every existing tick: a run is one tick, and
    two runs in one second are still two ticks (Pachyderm's scheduled times never repeat)."""
    names = [n for n in existing if _TICK.match(n)]
    tick = now.astimezone(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    if names:
        latest = dt.datetime.strptime(max(names), "%Y-%m-%dT%H:%M:%SZ")
        tick = max(tick, latest + dt.timedelta(seconds=1))
    return tick.strftime("%Y-%m-%dT%H:%M:%SZ")


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


def resolve_local_dir(path: str) -> str:
    return str(Path(path).resolve())
