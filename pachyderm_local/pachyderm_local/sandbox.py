"""A datum's sandbox: the local folder that stands for ``/pfs``, and the variables that point into it.

Each datum (or datum batching worker) gets a ``pfs`` folder holding ``<input name>/<matched files at
their full paths>`` (copies, so user code cannot damage the store), an empty ``out/`` and ``.env``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .datums import Datum
from .names import validate_file_path
from .pathmap import PathMap
from .spec import PipelineSpec
from .store import Store


def lay_out(store: Store, pfs: Path, job_id: str, datum: Datum | None, seen_as: Path | None = None) -> None:
    """A fresh ``pfs`` with an empty ``out/``; with a datum, also its ``<input>`` folders and ``.env``
    (a batching worker starts its user code before its first datum: ``datum`` None). ``seen_as`` is where
    the user code sees ``pfs`` (``/pfs`` inside a container), for the paths written into ``.env``."""
    shutil.rmtree(pfs, ignore_errors=True)
    (pfs / "out").mkdir(parents=True)
    if datum is None:
        return
    for item in datum.inputs:
        (pfs / item.name).mkdir(parents=True, exist_ok=True)
        for rel, sha in item.files:
            # Commits hold validated paths; checked again so a hand-edited store cannot escape /pfs.
            store.materialize(sha, pfs / item.name / validate_file_path(rel))
    write_env_file(pfs, job_id, datum, seen_as or pfs)


def datum_variables(datum: Datum, pfs: Path) -> dict[str, str]:
    """Pachyderm's per-datum variables (``driver.UserCodeEnv``), with ``/pfs`` at the sandbox ``pfs``."""
    env = {"PACH_DATUM_ID": datum.pach_id, "FILESET_ID": datum.id}
    for item in datum.inputs:
        env[item.name] = str(pfs / item.name) + ("" if item.path == "/" else item.path)
        env[f"{item.name}_COMMIT"] = item.commit_id
    return env


def write_env_file(pfs: Path, job_id: str, datum: Datum, seen_as: Path) -> None:
    """``/pfs/.env`` (Pachyderm >= 2.6 writes one per datum): the only place batched user code finds the
    current datum's variables. Locally it holds Pachyderm's variables only, never the process environment
    or secrets (Pachyderm writes its whole environment there)."""
    variables = {"PACH_JOB_ID": job_id, "PACH_OUTPUT_COMMIT_ID": job_id, **datum_variables(datum, seen_as)}
    (pfs / ".env").write_text("".join(f"{k}={v}\n" for k, v in variables.items()), encoding="utf-8")


def container_paths(spec: PipelineSpec, secret_dirs: Mapping[str, str], pfs: Path) -> PathMap:
    """``/pfs`` -> the sandbox, and each secret ``mount_path`` that has a local folder -> that folder."""
    mapping = {"/pfs": str(pfs)}
    mapping.update(
        {s.mount_path: secret_dirs[s.name] for s in spec.secrets if s.mount_path and s.name in secret_dirs}
    )
    return PathMap.of(mapping)


def prepend_path(env: dict[str, str], folder: str) -> dict[str, str]:
    """Put a bin folder first on PATH (the runner's own, so a venv's console scripts are found
    unactivated; a batching job's, for its stand-in ``pachctl``)."""
    paths = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if folder not in paths:
        env["PATH"] = os.pathsep.join([folder, *paths])
    return env
