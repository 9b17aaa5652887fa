"""Pure request building for `scripts/deploy`: spec dicts and the cluster's state in, the exact calls out.

Nothing here connects to pachd, so `--dry-run` and the tests see the very requests a real deploy sends.
The image placeholders `pachyderm-qa-answer:IMAGE_TAG` and `pachyderm-qa-load:IMAGE_TAG` are the contract with
specs/; they become `<repository>:<git sha>` here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from python_pachyderm.util import parse_dict_pipeline_spec

IMAGE_TAG = "IMAGE_TAG"
ANSWER_IMAGE_NAME = "pachyderm-qa-answer"
LOAD_IMAGE_NAME = "pachyderm-qa-load"
DEFAULT_PROJECT = "default"
#: The three pipelines of the DAG, in the files H4's specs/ folder holds.
DEFAULT_SPEC_FILES = ("specs/gcs-ingest.json", "specs/qa-answer.json", "specs/pg-load.json")

_SHA = re.compile(r"[0-9a-f]{40}")
_PLACEHOLDER_TAG = re.compile(rf"{IMAGE_TAG}(?P<suffix>-[a-z0-9][a-z0-9.-]*)?")
# A Docker repository: optional registry host[:port], then lowercase path components.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*")
_NAMESPACE = re.compile(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}")


class DeployError(ValueError):
    """A spec or an option that cannot be deployed; the message says which and why."""


@dataclass(frozen=True)
class ImageRepositories:
    """Where the two images live, without a tag: e.g. `myorg/pachyderm-qa-answer`."""

    answer: str
    load: str

    @classmethod
    def from_namespace(cls, namespace: str) -> ImageRepositories:
        if not _NAMESPACE.fullmatch(namespace):
            raise DeployError(
                f"bad image namespace {namespace!r}: expected a Docker Hub user/org like 'myorg'"
            )
        return cls(answer=f"{namespace}/{ANSWER_IMAGE_NAME}", load=f"{namespace}/{LOAD_IMAGE_NAME}")

    def __post_init__(self) -> None:
        for ref in (self.answer, self.load):
            if not _REPOSITORY.fullmatch(ref):
                raise DeployError(
                    f"bad image repository {ref!r}: expected e.g. 'myorg/{ANSWER_IMAGE_NAME}' (no tag)"
                )


@dataclass(frozen=True)
class ClusterState:
    """What already exists on the cluster; empty for a dry run (everything is then a create)."""

    projects: frozenset[str] = frozenset({DEFAULT_PROJECT})
    repos: frozenset[tuple[str, str]] = frozenset()
    pipelines: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Request:
    """One python-pachyderm `Client` call: `getattr(client, method)(**kwargs)`."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kwargs": {
                k: json_format.MessageToDict(v, preserving_proto_field_name=True)
                if isinstance(v, Message)
                else v
                for k, v in self.kwargs.items()
            },
        }


def validate_sha(sha: str) -> str:
    """Images are tagged with the full commit SHA (`github.sha`), so only that can name one."""
    if not _SHA.fullmatch(sha):
        raise DeployError(
            f"bad --tag {sha!r}: expected the full 40-character lowercase git commit SHA "
            "(images are tagged with it; `git rev-parse <ref>` prints it)"
        )
    return sha


def substitute_image(image: str, repos: ImageRepositories, sha: str) -> str:
    """`pachyderm-qa-answer:IMAGE_TAG` -> `<repos.answer>:<sha>`; an image without the placeholder is kept.

    A variant suffix survives: `pachyderm-qa-answer:IMAGE_TAG-cuda` -> `<repos.answer>:<sha>-cuda`.
    """
    if IMAGE_TAG not in image:
        return image
    name, sep, tag = image.rpartition(":")
    targets = {ANSWER_IMAGE_NAME: repos.answer, LOAD_IMAGE_NAME: repos.load}
    match = _PLACEHOLDER_TAG.fullmatch(tag)
    if not sep or not match or name not in targets:
        raise DeployError(
            f"unknown image placeholder {image!r}: expected {ANSWER_IMAGE_NAME}:{IMAGE_TAG} or "
            f"{LOAD_IMAGE_NAME}:{IMAGE_TAG}, optionally with a variant suffix such as {IMAGE_TAG}-cuda"
        )
    return f"{targets[name]}:{validate_sha(sha)}{match.group('suffix') or ''}"


def iter_inputs(node: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every leaf input (`pfs`, `cron`, ...) of a possibly nested cross/union/join/group input."""
    if not node:
        return
    for kind, value in node.items():
        if kind in ("cross", "union", "join", "group"):
            for child in value:
                yield from iter_inputs(child)
        else:
            yield kind, value


def pipeline_name(spec: dict[str, Any], source: str) -> str:
    name = (spec.get("pipeline") or {}).get("name")
    if not name:
        raise DeployError(f"{source}: the spec has no pipeline.name")
    return name


def with_project(spec: dict[str, Any], project: str | None) -> dict[str, Any]:
    """A copy of the spec with the pipeline's project set and every pfs input without one placed in it.

    (In the spec JSON a pipeline's project is `{"name": ...}` while a pfs input's is a plain string.)
    """
    spec = copy.deepcopy(spec)
    pipeline = spec.setdefault("pipeline", {})
    chosen = project or (pipeline.get("project") or {}).get("name") or DEFAULT_PROJECT
    pipeline["project"] = {"name": chosen}
    for kind, leaf in iter_inputs(spec.get("input")):
        if kind == "pfs" and not leaf.get("project"):
            leaf["project"] = chosen
    return spec


def dag_order(specs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Specs sorted so each pipeline follows the pipelines whose output repos it reads (stable otherwise)."""
    by_key: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for source, spec in specs:
        key = (spec["pipeline"]["project"]["name"], pipeline_name(spec, source))
        if key in by_key:
            raise DeployError(f"{source}: pipeline {key[1]!r} is also defined in {by_key[key][0]}")
        by_key[key] = (source, spec)
    deps = {
        key: {
            (leaf["project"], leaf["repo"])
            for kind, leaf in iter_inputs(spec.get("input"))
            if kind == "pfs" and (leaf["project"], leaf.get("repo")) in by_key
        }
        for key, (_, spec) in by_key.items()
    }
    ordered: list[tuple[str, str]] = []
    while len(ordered) < len(by_key):
        ready = [k for k in by_key if k not in ordered and deps[k] <= set(ordered)]
        if not ready:
            cycle = sorted(f"{p}/{n}" for p, n in by_key if (p, n) not in ordered)
            raise DeployError(f"the pipelines' inputs form a cycle: {', '.join(cycle)}")
        ordered.append(ready[0])
    return [by_key[k] for k in ordered]


def build_requests(
    specs: Iterable[tuple[str, dict[str, Any]]],
    *,
    repos: ImageRepositories,
    sha: str,
    project: str | None = None,
    state: ClusterState | None = None,
    reprocess: bool = False,
) -> list[Request]:
    """The calls that make the cluster run these specs at image tag `sha`: projects, input repos, pipelines.

    A pipeline already on the cluster is updated (`update=True`; `reprocess` re-runs its datums), else
    created. Input repos that no pipeline produces and that do not exist yet are created; cron repos are
    Pachyderm's own.
    """
    validate_sha(sha)
    state = state or ClusterState()
    placed = []
    for source, spec in specs:
        if not isinstance(spec, dict):
            raise DeployError(f"{source}: a pipeline spec must be a JSON object")
        placed.append((source, with_project(spec, project)))
    ordered = dag_order(placed)
    outputs = {(s["pipeline"]["project"]["name"], s["pipeline"]["name"]) for _, s in ordered}

    projects: list[str] = []
    input_repos: dict[tuple[str, str], list[str]] = {}
    pipelines: list[Request] = []
    for source, spec in ordered:
        key = (spec["pipeline"]["project"]["name"], spec["pipeline"]["name"])
        if key[0] not in state.projects and key[0] not in projects:
            projects.append(key[0])
        transform = spec.get("transform") or {}
        if "image" not in transform:
            raise DeployError(f"{source}: the spec has no transform.image")
        try:
            transform["image"] = substitute_image(transform["image"], repos, sha)
        except DeployError as exc:
            raise DeployError(f"{source}: {exc}") from None
        for kind, leaf in iter_inputs(spec.get("input")):
            repo_key = (leaf["project"], leaf.get("repo", "")) if kind == "pfs" else None
            if repo_key is None or leaf.get("repo_type", "user") != "user":
                continue
            if repo_key not in outputs and repo_key not in state.repos and repo_key not in state.pipelines:
                if repo_key[0] not in state.projects and repo_key[0] not in projects:
                    projects.append(repo_key[0])
                input_repos.setdefault(repo_key, []).append(key[1])
        spec["update"] = key in state.pipelines
        spec["reprocess"] = bool(reprocess and spec["update"])
        try:
            request = parse_dict_pipeline_spec(spec)
        except json_format.ParseError as exc:
            raise DeployError(f"{source}: not a valid Pachyderm pipeline spec: {exc}") from None
        pipelines.append(Request("create_pipeline_from_request", {"req": request}))

    return [
        *(Request("create_project", {"project_name": p}) for p in projects),
        *(
            Request(
                "create_repo",
                {"repo_name": repo, "project_name": proj, "description": f"input of {', '.join(readers)}"},
            )
            for (proj, repo), readers in input_repos.items()
        ),
        *pipelines,
    ]


def describe(request: Request) -> str:
    """One human line per request, for the deploy log."""
    if request.method == "create_pipeline_from_request":
        req = request.kwargs["req"]
        verb = "update" if req.update else "create"
        extra = " (reprocess all datums)" if req.reprocess else ""
        name = f"{req.pipeline.project.name}/{req.pipeline.name}"
        return f"{verb} pipeline {name} image {req.transform.image}{extra}"
    if request.method == "create_repo":
        return f"create repo {request.kwargs['project_name']}/{request.kwargs['repo_name']}"
    return f"create project {request.kwargs['project_name']}"
