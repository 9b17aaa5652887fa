"""Read a Pachyderm 2.x pipeline spec (JSON) into the parts the local runner executes (pure).

The spec is parsed as pachctl parses it: protojson into Pachyderm's own ``CreatePipelineRequest``
message (python-pachyderm's, with ``google.protobuf.json_format``). So an unknown field is an error that
names it, camelCase names (``datumTries``) are accepted, durations are protobuf's ``"600s"`` form and
every field has its proto type. Then the checks pachd makes at create time (names, inputs, cron specs,
``reprocess_spec``) and its defaults (``datum_tries: 0`` is 3, an input's name is its repo) are applied.
Fields with no local meaning (image, resources, autoscaling...) are accepted and ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from google.protobuf import duration_pb2, json_format
from python_pachyderm.proto.v2.pps import pps_pb2

from .cron_spec import CronSpecError, validate_cron_spec
from .globs import GlobError, check_glob, clean_glob


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
    job_timeout_s: float | None = None
    reprocess_every_job: bool = False
    datum_batching: bool = False
    project: str = "default"
    #: the spec as protojson would print it back (proto field names, defaults left out)
    raw: dict[str, Any] = field(default_factory=dict)


#: ancestry.ValidateName; Pachyderm itself checks input names only for "", "out" and ".env", the runner
#: also keeps them to this set because an input name becomes a folder under /pfs.
_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
DEFAULT_DATUM_TRIES = 3  # pps/server/api_server.go DefaultDatumTries
_REPROCESS_SPECS = ("", "until_success", "every_job")
#: fields of Pachyderm 2.11's CreatePipelineRequest that python-pachyderm 7.6's message lacks, and back
_NEWER_DURATION_FIELDS = {"maximum_expected_uptime", "maximumExpectedUptime"}
_REMOVED_FIELDS = {"details_json", "detailsJson"}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float | None:
    """Seconds in a Go ``time.ParseDuration`` string (``@every 1h30m`` in cron specs); None if not one."""
    parts = _GO_DURATION_PART.findall(text)
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


def parse_request(raw: Any, source: str = "<spec>") -> pps_pb2.CreatePipelineRequest:
    """protojson-parse a spec into Pachyderm's CreatePipelineRequest, as pachctl does."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec must be a JSON object (one pipeline per file)")
    raw = dict(raw)
    for key in _REMOVED_FIELDS & raw.keys():
        raise SpecError(f'{source}: unknown field "{key}" (Pachyderm 2.11 removed it)')
    for key in sorted(_NEWER_DURATION_FIELDS & raw.keys()):
        value = raw.pop(key)
        try:
            json_format.ParseDict(value, duration_pb2.Duration())
        except json_format.ParseError as exc:
            raise SpecError(f"{source}: {key}: {exc}") from exc
    try:
        return json_format.ParseDict(raw, pps_pb2.CreatePipelineRequest())
    except json_format.ParseError as exc:
        raise SpecError(f"{source}: {exc}") from exc


def parse_spec(raw: Any, source: str = "<spec>") -> PipelineSpec:
    """Read the executable parts of a spec; raises SpecError naming ``source`` and the field."""

    def fail(msg: str) -> SpecError:
        return SpecError(f"{source}: {msg}")

    request = parse_request(raw, source)
    name = request.pipeline.name
    _check_pipeline_name(name, fail)
    _check_supported(request, fail)
    transform = request.transform
    secrets = _secrets(transform, fail)
    tries = request.datum_tries
    if tries == 0:
        tries = DEFAULT_DATUM_TRIES
    node, _ = _input(request.input, name, fail)
    _check_names(node, set(), fail)
    return PipelineSpec(
        name=name,
        source=source,
        input=node,
        cmd=tuple(transform.cmd),
        stdin=tuple(transform.stdin),
        env=dict(transform.env),
        secrets=secrets,
        parallelism=max(1, request.parallelism_spec.constant),
        # Pachyderm retries only when datum_tries > 0 (worker.go WithRetry(tries-1)): negative is one try.
        datum_tries=max(1, tries),
        accept_return_code=tuple(transform.accept_return_code),
        datum_timeout_s=_seconds(request, "datum_timeout"),
        job_timeout_s=_seconds(request, "job_timeout"),
        reprocess_every_job=request.reprocess_spec == "every_job",
        datum_batching=transform.datum_batching,
        project=request.pipeline.project.name or "default",
        raw=json_format.MessageToDict(request, preserving_proto_field_name=True),
    )


def _check_pipeline_name(name: str, fail: Any) -> None:
    """pachd's checks of a pipeline name (``ancestry.ValidateName`` and its length limit)."""
    if not name:
        raise fail("no pipeline `name` specified")
    if not _NAME.match(name):
        raise fail(
            f"invalid pipeline name: name ({name}) invalid: only alphanumeric characters, "
            "underscores, and dashes are allowed"
        )
    if not name[0].isalnum():
        raise fail("pipeline names must start with an alphanumeric character")
    if len(name) > 63:
        raise fail(f"pipeline name is {len(name)} characters long, but must have at most 63: {name!r}")


def _check_supported(request: pps_pb2.CreatePipelineRequest, fail: Any) -> None:
    """pachd's create-time checks of the request, and what the local runner cannot run."""
    if request.HasField("tf_job"):
        raise fail("embedding TFJobs in pipelines is not supported yet")
    if request.HasField("spout") or request.HasField("service"):
        raise fail("spout and service pipelines are not supported by pachyderm-local")
    if request.s3_out:
        raise fail("s3_out is not supported by pachyderm-local (the output is read from /pfs/out)")
    if not request.HasField("transform"):
        raise fail("pipeline must specify a transform")
    transform = request.transform
    if transform.err_cmd or transform.err_stdin:
        raise fail("transform.err_cmd is not supported by pachyderm-local (a failed datum stays failed)")
    if request.output_branch not in ("", "master"):
        raise fail("output_branch: pachyderm-local only has the 'master' branch")
    if not transform.cmd:
        raise fail("transform.cmd must be a non-empty list of strings (the image's entrypoint is not known)")
    if not request.HasField("input"):
        raise fail("input is missing")
    if request.reprocess_spec not in _REPROCESS_SPECS:
        raise fail("invalid pipeline spec: ReprocessSpec must be one of 'until_success' or 'every_job'")


def _secrets(transform: pps_pb2.Transform, fail: Any) -> tuple[SecretRef, ...]:
    secrets = tuple(SecretRef(s.name, s.key, s.env_var, s.mount_path) for s in transform.secrets)
    for s in secrets:
        if not s.name or not (s.env_var or s.mount_path):
            raise fail(f"transform.secrets entry {s} needs a name and an env_var or a mount_path")
    return secrets


def _seconds(request: pps_pb2.CreatePipelineRequest, name: str) -> float | None:
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    return value.seconds + value.nanos / 1e9


def _input(node: pps_pb2.Input, pipeline: str, fail: Any) -> tuple[Input, str]:
    """The input tree and its sort key. As ``pps.SortInput`` (run by pachd before input names get their
    default), the children of a cross or union are sorted stably by ``InputName``: a pfs input's
    explicit name (an unnamed one sorts as ""), "" for cron, a cross or union's first child's."""
    kinds = [f.name for f, _ in node.ListFields()]
    if len(kinds) > 1:
        raise fail(f"multiple input types set ({', '.join(kinds)})")
    if not kinds:
        raise fail("no input set")
    kind = kinds[0]
    if kind == "pfs":
        return _pfs_input(node.pfs, fail), node.pfs.name
    if kind == "cron":
        return _cron_input(node.cron, pipeline, fail), ""
    if kind in ("cross", "union"):
        keyed = sorted((_input(child, pipeline, fail) for child in getattr(node, kind)), key=lambda c: c[1])
        children = tuple(child for child, _ in keyed)
        key = keyed[0][1] if keyed else ""
        return (CrossInput(children) if kind == "cross" else UnionInput(children)), key
    raise fail(f"input type {kind!r} is not supported by pachyderm-local (pfs, cron, cross, union are)")


def _pfs_input(pfs: pps_pb2.PFSInput, fail: Any) -> PfsInput:
    if not pfs.repo:
        raise fail("input must specify a repo")
    if not _NAME.match(pfs.repo):
        raise fail(f"input.pfs.repo {pfs.repo!r} is not a repo name")
    if pfs.repo == "out" and not pfs.name:
        raise fail("inputs based on repos named \"out\" must have 'name' set")
    if pfs.commit:
        raise fail("input cannot come from a commit; use a branch with head pointing to the commit")
    if pfs.branch not in ("", "master"):
        raise fail("input.pfs.branch: pachyderm-local only has the 'master' branch")
    for unsupported in ("s3", "empty_files", "join_on", "group_by", "outer_join", "trigger"):
        if pfs.HasField(unsupported) if unsupported == "trigger" else getattr(pfs, unsupported):
            raise fail(f"input.pfs.{unsupported} is not supported by pachyderm-local")
    if not pfs.glob:
        raise fail(f"input.pfs (repo {pfs.repo}) must specify a glob")
    try:
        check_glob(pfs.glob)
    except GlobError as exc:
        raise fail(f"input.pfs.glob: {exc}") from exc
    return PfsInput(name=pfs.name or pfs.repo, repo=pfs.repo, glob=clean_glob(pfs.glob))


def _cron_input(cron: pps_pb2.CronInput, pipeline: str, fail: Any) -> CronInput:
    try:
        validate_cron_spec(cron.spec)
    except CronSpecError as exc:
        raise fail(f"input.cron.spec: error parsing cron-spec: {exc}") from exc
    return CronInput(
        name=cron.name,
        repo=cron.repo or f"{pipeline}_{cron.name}",
        schedule=cron.spec,
        overwrite=cron.overwrite,
    )


def _check_names(node: Input, names: set[str], fail: Any) -> None:
    """ppsutil.ValidateNames: every input has a valid, unique name (a union's children may share one)."""
    if isinstance(node, (PfsInput, CronInput)):
        kind = "pfs" if isinstance(node, PfsInput) else "cron"
        if not node.name:
            raise fail(f"input.{kind}: input must specify a name")
        if node.name == "out":
            raise fail(f"input.{kind}.name: input cannot be named {node.name}")
        if not _NAME.match(node.name):
            raise fail(
                f"input.{kind}.name {node.name!r} invalid: only alphanumeric characters, underscores, "
                "and dashes are allowed"
            )
        if node.name in names:
            raise fail(f'name "{node.name}" was used more than once')
        names.add(node.name)
    elif isinstance(node, UnionInput):
        merged: set[str] = set()
        for child in node.children:
            branch = set(names)
            _check_names(child, branch, fail)
            merged |= branch
        names |= merged
    else:
        for child in node.children:
            _check_names(child, names, fail)


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
    secrets or the process environment are not part of it, as in Pachyderm. It is computed from the
    parsed message, so ``datumTries`` and ``datum_tries`` spellings of one spec are one version.
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
