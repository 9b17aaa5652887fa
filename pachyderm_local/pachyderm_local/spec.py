"""Read a Pachyderm 2.x pipeline spec (JSON) into the parts the local runner executes (pure).

The spec file itself is the pipeline's only description; this module just reads it. Fields with no
local meaning (image, resource requests, autoscaling...) are kept in ``raw`` and ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .globs import clean_glob, compile_glob


class SpecError(ValueError):
    """A spec the local runner cannot execute; the message names the file and the field."""


@dataclass(frozen=True)
class PfsInput:
    name: str
    repo: str
    glob: str


@dataclass(frozen=True)
class CronInput:
    """A cron input: each local ``run`` is one tick, written to repo ``<pipeline>_<name>``."""

    name: str
    repo: str
    schedule: str
    overwrite: bool


@dataclass(frozen=True)
class CrossInput:
    children: tuple[Input, ...]


@dataclass(frozen=True)
class UnionInput:
    children: tuple[Input, ...]


Input = Union[PfsInput, CronInput, CrossInput, UnionInput]  # noqa: UP007 (a runtime alias on 3.10)


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = ""
    env_var: str = ""
    mount_path: str = ""


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    source: str
    input: Input
    cmd: tuple[str, ...]
    stdin: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[SecretRef, ...] = ()
    parallelism: int = 1
    datum_tries: int = 3
    accept_return_code: tuple[int, ...] = ()
    datum_timeout_s: float | None = None
    reprocess_every_job: bool = False
    datum_batching: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


_REPO_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: a Go duration (protobuf Duration in a spec is written like Go's time.ParseDuration input): "600s", "1h30m"
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float | None:
    """Seconds in a Go-style duration (``600s``, ``1h30m``, ``1.5h``, ``250ms``); None if it is not one."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def load_spec(path: str | Path) -> PipelineSpec:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec: {exc}") from exc
    return parse_spec(raw, str(path))


def parse_spec(raw: dict[str, Any], source: str = "<spec>") -> PipelineSpec:
    """Read the executable parts of a spec; raises SpecError naming ``source`` and the field."""

    def fail(msg: str) -> SpecError:
        return SpecError(f"{source}: {msg}")

    if not isinstance(raw, dict):
        raise fail("a spec must be a JSON object")
    name = (raw.get("pipeline") or {}).get("name", "")
    if not isinstance(name, str) or not _REPO_NAME.match(name):
        raise fail(f"pipeline.name must be letters, digits, '-' or '_', got {name!r}")
    if "spout" in raw or "service" in raw:
        raise fail("spout and service pipelines are not supported by pachyderm-local")
    transform = raw.get("transform") or {}
    cmd = transform.get("cmd") or []
    if not cmd or not all(isinstance(c, str) for c in cmd):
        raise fail("transform.cmd must be a non-empty list of strings")
    if "input" not in raw:
        raise fail("input is missing")
    secrets = tuple(
        SecretRef(s.get("name", ""), s.get("key", ""), s.get("env_var", ""), s.get("mount_path", ""))
        for s in transform.get("secrets") or []
    )
    for s in secrets:
        if not s.name or not (s.env_var or s.mount_path):
            raise fail(f"transform.secrets entry {s} needs a name and an env_var or a mount_path")
    timeout = raw.get("datum_timeout")
    timeout_s = None
    if timeout:
        timeout_s = duration_seconds(str(timeout))
        if timeout_s is None:
            raise fail(f"datum_timeout must be a duration like '600s' or '1h30m', got {timeout!r}")
    tries = int(raw.get("datum_tries") or 3)
    if tries < 1:
        raise fail("datum_tries must be at least 1")
    return PipelineSpec(
        name=name,
        source=source,
        input=_parse_input(raw["input"], name, fail),
        cmd=tuple(cmd),
        stdin=tuple(transform.get("stdin") or ()),
        env={str(k): str(v) for k, v in (transform.get("env") or {}).items()},
        secrets=secrets,
        parallelism=max(1, int((raw.get("parallelism_spec") or {}).get("constant") or 1)),
        datum_tries=tries,
        accept_return_code=tuple(int(c) for c in transform.get("accept_return_code") or ()),
        datum_timeout_s=timeout_s,
        reprocess_every_job=(raw.get("reprocess_spec") == "every_job"),
        datum_batching=bool(transform.get("datum_batching")),
        raw=raw,
    )


def _parse_input(node: dict[str, Any], pipeline: str, fail: Any) -> Input:
    if not isinstance(node, dict) or len(node) != 1:
        raise fail(f"each input must have exactly one of pfs, cron, cross, union; got {node!r}")
    ((kind, body),) = node.items()
    if kind == "pfs":
        repo = body.get("repo", "")
        if not _REPO_NAME.match(repo or ""):
            raise fail(f"input.pfs.repo must be a repo name, got {repo!r}")
        if body.get("branch", "master") != "master":
            raise fail("input.pfs.branch: pachyderm-local only has the 'master' branch")
        glob = body.get("glob")
        if not glob:
            raise fail(f"input.pfs (repo {repo}) needs a glob")
        try:
            compile_glob(glob)
        except ValueError as exc:
            raise fail(f"input.pfs.glob: {exc}") from exc
        name = body.get("name") or repo
        if not isinstance(name, str) or not _REPO_NAME.match(name):
            raise fail(
                f"input.pfs.name {name!r} invalid: only alphanumeric characters, underscores, "
                "and dashes are allowed"
            )
        return PfsInput(name=name, repo=repo, glob=clean_glob(glob))
    if kind == "cron":
        cron_name = body.get("name", "")
        if not _REPO_NAME.match(cron_name or ""):
            raise fail(f"input.cron.name must be set, got {cron_name!r}")
        return CronInput(
            name=cron_name,
            repo=body.get("repo") or f"{pipeline}_{cron_name}",
            schedule=body.get("spec", ""),
            overwrite=bool(body.get("overwrite", False)),
        )
    if kind in ("cross", "union"):
        children = tuple(_parse_input(child, pipeline, fail) for child in body or [])
        if not children:
            raise fail(f"input.{kind} needs at least one input")
        return CrossInput(children) if kind == "cross" else UnionInput(children)
    raise fail(f"input type {kind!r} is not supported by pachyderm-local (pfs, cron, cross, union are)")


def leaf_inputs(node: Input) -> list[PfsInput | CronInput]:
    if isinstance(node, (PfsInput, CronInput)):
        return [node]
    return [leaf for child in node.children for leaf in leaf_inputs(child)]


def upstream_repos(spec: PipelineSpec) -> set[str]:
    """Repos this pipeline reads through pfs inputs (cron repos are its own)."""
    return {leaf.repo for leaf in leaf_inputs(spec.input) if isinstance(leaf, PfsInput)}


def spec_version(spec: PipelineSpec, effective_env: dict[str, str]) -> str:
    """The version under which datum results are reused.

    It covers what decides a datum's output: the transform (cmd, stdin, env...), the input tree
    (globs, names), ``salt``, and the effective value of each env key the spec itself declares (so a
    local ``--env QA_MODEL=...`` override re-answers). Connection details that come only from
    secrets or the process environment are not part of it, as in Pachyderm.
    """
    material = {
        # The image is not used locally (the deploy step swaps its tag per commit).
        "transform": {k: v for k, v in spec.raw.get("transform", {}).items() if k != "image"},
        "input": spec.raw.get("input", {}),
        "salt": spec.raw.get("salt", ""),
        "env": {k: effective_env.get(k, v) for k, v in sorted(spec.env.items())},
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
