"""Run pipeline specs as jobs against the local store: DAG order, datums, sandboxes, commits."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .batching import DatumQueue, serve_worker, write_pachctl
from .dag import downstream_of, pipeline_order
from .datums import CommitView, Datum, plan_datums, split_done
from .engine import ContainerEngine
from .envs import LocalEnv, effective_spec_env, job_env
from .outputs import merge_outputs
from .pathmap import PathMap
from .spec import CronInput, PfsInput, PipelineSpec, SpecError, leaf_inputs, spec_version
from .store import Store, new_id, now

LOG_TAIL_LINES = 30


@dataclass
class RunSettings:
    max_parallelism: int | None = None  # caps parallelism_spec.constant on a small machine
    keep_sandboxes: bool = False
    engine: ContainerEngine | None = None  # run each command in the spec's image (engine.py)


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


class Runner:
    def __init__(self, store: Store, local: LocalEnv, settings: RunSettings, err: TextIO) -> None:
        self.store = store
        self.local = local
        self.settings = settings
        self.err = err
        self._print_lock = threading.Lock()

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
        try:
            if todo and spec.datum_batching:
                outcomes = self._run_batched(spec, job_id, todo, version, parallelism)
            elif todo:
                counter = iter(range(1, len(todo) + 1))
                with ThreadPoolExecutor(max_workers=parallelism) as pool:
                    futures = [
                        pool.submit(self._run_datum, spec, job_id, d, version, counter, len(todo))
                        for d in todo
                    ]
                    outcomes = [f.result() for f in futures]
        except Exception as exc:  # a runner fault, not a datum's: the job must not stay "running" forever
            record.update(state="failure", reason=f"runner error: {exc}", finished=now())
            store.save_job(record)
            raise
        result.processed = sum(o.ok for o in outcomes)
        result.failed = sum(not o.ok for o in outcomes)
        if result.failed:
            result.state = "failure"
            result.reason = f"{result.failed} datum(s) failed"
            for o in outcomes:
                if not o.ok:
                    self._show_failure(spec, job_id, o)
        else:
            outputs = [(o.datum.id, o.files) for o in outcomes]
            outputs += [(d.id, store.datum_output(spec.name, version, d.id)) for d in skip]
            merged_shas, collisions = merge_outputs(
                (datum_id, {p: m["sha256"] for p, m in files.items()}) for datum_id, files in outputs
            )
            if collisions:
                result.state = "failure"
                result.reason = "; ".join(c.message() for c in collisions[:5])
                self.say(f"{spec.name}: job {job_id[:12]} failed: {result.reason}")
            else:
                meta = {p: m for _, files in outputs for p, m in files.items()}
                files = {p: meta[p] for p in sorted(merged_shas)}
                commit = store.write_commit(spec.name, files, origin=f"job:{job_id}", commit_id=job_id)
                result.output_commit = commit.id
                result.state = "success"
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
            datums=[
                {
                    "id": o.datum.id,
                    "inputs": o.datum.describe(),
                    "state": "success" if o.ok else "failed",
                    "tries": o.tries,
                    "seconds": round(o.seconds, 3),
                    "error": o.error,
                }
                for o in outcomes
            ]
            + [
                {
                    "id": d.id,
                    "inputs": d.describe(),
                    "state": "skipped",
                    "from_job": store.datum_job(spec.name, version, d.id),
                }
                for d in skip
            ],
        )
        store.save_job(record)
        return result

    def _tick(self, cron: CronInput) -> CommitView:
        """One cron tick: a file named by the current time (microseconds, so two runs never coincide)."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        sha, size = self.store.put_bytes(b"")
        self.store.create_repo(cron.repo, exist_ok=True)
        previous = self.store.head(cron.repo)
        files = {} if cron.overwrite or previous is None else dict(previous.files)
        files[stamp] = {"sha256": sha, "size": size}
        commit = self.store.write_commit(cron.repo, files, origin=f"cron:{cron.schedule}")
        return CommitView(commit.id, commit.shas())

    # -- one datum -------------------------------------------------------------------------------
    def _run_datum(
        self, spec: PipelineSpec, job_id: str, datum: Datum, version: str, counter: Any, total: int
    ) -> _DatumOutcome:
        store = self.store
        log_path = store.log_path(job_id, datum.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        outcome = _DatumOutcome(datum, ok=False)
        started = time.monotonic()
        for attempt in range(1, spec.datum_tries + 1):
            outcome.tries = attempt
            sandbox = store.sandbox_dir(job_id) / f"{datum.id[:16]}-{attempt}"
            shutil.rmtree(sandbox, ignore_errors=True)
            pfs = sandbox / "pfs"
            self._layout(datum, pfs)
            path_map = self._path_map(spec, pfs)
            plan = job_env(spec, self.local, path_map)
            env = plan.env
            env.update(
                PACH_JOB_ID=job_id,
                PACH_DATUM_ID=datum.id,
                PACH_OUTPUT_COMMIT_ID=job_id,
                PPS_PIPELINE_NAME=spec.name,
            )
            for item in datum.inputs:
                env[item.name] = str(pfs / item.name) + ("" if item.path == "/" else item.path)
                env[f"{item.name}_COMMIT"] = item.commit_id
            argv = path_map.apply_all(spec.cmd)
            if self.settings.engine is not None:
                argv = self.settings.engine.wrap(spec, argv, pfs=pfs, **self._engine_context())
            stdin = path_map.apply("\n".join(spec.stdin)) + "\n" if spec.stdin else None
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"--- {now()} try {attempt}/{spec.datum_tries} datum {datum.describe()}\n")
                for note in plan.notes:
                    log.write(f"[pachyderm-local] {note}\n")
                log.flush()
                try:
                    proc = subprocess.run(
                        argv,
                        input=stdin,
                        text=True,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        timeout=spec.datum_timeout_s,
                        check=False,
                    )
                    code: int | None = proc.returncode
                    error = "" if code == 0 or code in spec.accept_return_code else f"exit code {code}"
                except subprocess.TimeoutExpired:
                    code, error = None, f"timed out after {spec.datum_timeout_s:g}s"
                except OSError as exc:
                    code, error = None, f"cannot start {argv[0]!r}: {exc}"
                log.write(f"[pachyderm-local] try {attempt}: {error or 'success'}\n")
            if not error:
                files = self._collect_output(spec, version, job_id, datum, pfs)
                outcome.ok, outcome.files, outcome.error = True, files, ""
                if not self.settings.keep_sandboxes:
                    shutil.rmtree(sandbox, ignore_errors=True)
                break
            outcome.error = error
            if not self.settings.keep_sandboxes:
                shutil.rmtree(sandbox, ignore_errors=True)
        outcome.seconds = time.monotonic() - started
        state = "ok" if outcome.ok else f"FAILED ({outcome.error}, {outcome.tries} tries)"
        self.say(
            f"{spec.name}: datum {next(counter)}/{total} {datum.describe()} {state} in {outcome.seconds:.1f}s"
        )
        return outcome

    def _run_batched(
        self, spec: PipelineSpec, job_id: str, todo: list[Datum], version: str, parallelism: int
    ) -> list[_DatumOutcome]:
        """Datum batching: one long-lived command per worker slot (see batching.py)."""
        store = self.store
        job_dir = store.sandbox_dir(job_id)
        bin_dir = job_dir / "bin"
        write_pachctl(bin_dir)
        queue = DatumQueue(list(todo))
        counter = iter(range(1, len(todo) + 1))
        finished: dict[str, _DatumOutcome] = {}
        lock = threading.Lock()

        def process_env(pfs: Path) -> tuple[dict[str, str], PathMap]:
            path_map = self._path_map(spec, pfs)
            plan = job_env(spec, self.local, path_map)
            env = plan.env
            env.update(PACH_JOB_ID=job_id, PACH_OUTPUT_COMMIT_ID=job_id, PPS_PIPELINE_NAME=spec.name)
            for leaf in leaf_inputs(spec.input):
                if isinstance(leaf, PfsInput):
                    env[leaf.name] = str(pfs / leaf.name)
            prepend_path(env, str(bin_dir))
            return env, path_map

        def collect(outcome: _DatumOutcome, pfs: Path) -> None:
            outcome.files = self._collect_output(spec, version, job_id, outcome.datum, pfs)
            outcome.ok, outcome.error = True, ""

        def finish(outcome: _DatumOutcome) -> None:
            with lock:
                finished[outcome.datum.id] = outcome
            state = "ok" if outcome.ok else f"FAILED ({outcome.error}, {outcome.tries} tries)"
            self.say(
                f"{spec.name}: datum {next(counter)}/{len(todo)} {outcome.datum.describe()} {state} "
                f"in {outcome.seconds:.1f}s"
            )

        def worker(slot: int) -> None:
            engine, run_spec, layout = self.settings.engine, spec, self._layout
            if engine is not None:  # the command in a container that keeps /pfs mounted across datums
                pfs = job_dir / f"worker-{slot}" / "pfs"
                cmd = engine.wrap(spec, list(spec.cmd), pfs=pfs, **self._engine_context())
                run_spec, layout = replace(spec, cmd=tuple(cmd)), engine.keep_mount(self._layout)
            serve_worker(
                spec=run_spec,
                worker_dir=job_dir / f"worker-{slot}",
                queue=queue,
                make_outcome=lambda d: _DatumOutcome(d, ok=False),
                layout=layout,
                collect=collect,
                finish=finish,
                process_env=process_env,
                log_path=lambda d: store.log_path(job_id, d.id),
            )

        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            for future in [pool.submit(worker, n) for n in range(min(parallelism, len(todo)))]:
                future.result()
        return [finished.get(d.id) or _DatumOutcome(d, ok=False, error="not run") for d in todo]

    def _engine_context(self) -> dict[str, Any]:
        return {"secret_dirs": self.local.secret_dirs, "overrides": self.local.overrides()}

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

    def _layout(self, datum: Datum, pfs: Path) -> None:
        """Fresh ``/pfs/<input>`` folders holding the datum's files, and an empty ``/pfs/out``."""
        shutil.rmtree(pfs, ignore_errors=True)
        (pfs / "out").mkdir(parents=True)
        for item in datum.inputs:
            (pfs / item.name).mkdir(parents=True, exist_ok=True)
            for rel, sha in item.files:
                self.store.materialize(sha, pfs / item.name / rel)

    def _collect_output(
        self, spec: PipelineSpec, version: str, job_id: str, datum: Datum, pfs: Path
    ) -> dict[str, dict[str, Any]]:
        files = {}
        for path in sorted((pfs / "out").rglob("*")):
            if path.is_file():
                sha, size = self.store.put_object(path)
                files[path.relative_to(pfs / "out").as_posix()] = {"sha256": sha, "size": size}
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


def prepend_path(env: dict[str, str], folder: str) -> dict[str, str]:
    """Put the runner's own bin folder first on PATH so a venv's console scripts are found unactivated."""
    paths = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if folder not in paths:
        env["PATH"] = os.pathsep.join([folder, *paths])
    return env


def resolve_local_dir(path: str) -> str:
    return str(Path(path).resolve())
