"""What `scripts/deploy` sends to a cluster (pure): specs and the cluster's state in, the exact calls out.

Nothing here connects to pachd, so `--dry-run` and the tests see the very requests a real deploy sends
(`deploy_cli.py` is the command line). Each spec becomes Pachyderm's `CreatePipelineRequest`, the message
the local runner parses specs into too, and the pipelines are ordered with the runner's `dag`. The image
placeholders `pachyderm-qa-answer:IMAGE_TAG` and `pachyderm-qa-load:IMAGE_TAG` are the contract with
specs/; they become `<repository>:<git sha>` here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from python_pachyderm.proto.v2.pps import pps_pb2
from python_pachyderm.util import parse_dict_pipeline_spec

from .dag import DependencyCycle, dependency_order

IMAGE_TAG = "IMAGE_TAG"
ANSWER_IMAGE_NAME = "pachyderm-qa-answer"
LOAD_IMAGE_NAME = "pachyderm-qa-load"
DEFAULT_PROJECT = "default"
#: The three pipelines of the DAG, relative to the repository root.
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


def input_leaves(node: pps_pb2.Input) -> Iterator[tuple[str, Message]]:
    """Every leaf input (`pfs`, `cron`) of a possibly nested cross/union/join/group input."""
    for field_descriptor, value in node.ListFields():
        if field_descriptor.name in ("cross", "union", "join", "group"):
            for child in value:
                yield from input_leaves(child)
        else:
            yield field_descriptor.name, value


def pfs_leaves(request: pps_pb2.CreatePipelineRequest) -> list[pps_pb2.PFSInput]:
    return [leaf for kind, leaf in input_leaves(request.input) if kind == "pfs"]


def pipeline_key(request: pps_pb2.CreatePipelineRequest) -> tuple[str, str]:
    """(project, name): what names a pipeline, and its output repo, on the cluster."""
    return request.pipeline.project.name, request.pipeline.name


def pipeline_request(
    source: str, spec: Any, *, repos: ImageRepositories, sha: str, project: str | None
) -> pps_pb2.CreatePipelineRequest:
    """The spec as the cluster gets it: image tagged, the pipeline and every pfs input without a project
    placed in `project` (else the spec's, else `default`). The caller's dict is left untouched."""
    if not isinstance(spec, dict):
        raise DeployError(f"{source}: a pipeline spec must be a JSON object")
    if not (spec.get("pipeline") or {}).get("name"):
        raise DeployError(f"{source}: the spec has no pipeline.name")
    if "image" not in (spec.get("transform") or {}):
        raise DeployError(f"{source}: the spec has no transform.image")
    try:
        request = parse_dict_pipeline_spec(spec)
        request.transform.image = substitute_image(request.transform.image, repos, sha)
    except json_format.ParseError as exc:
        raise DeployError(f"{source}: not a valid Pachyderm pipeline spec: {exc}") from None
    except DeployError as exc:
        raise DeployError(f"{source}: {exc}") from None
    chosen = project or request.pipeline.project.name or DEFAULT_PROJECT
    request.pipeline.project.name = chosen
    for leaf in pfs_leaves(request):
        leaf.project = leaf.project or chosen
    return request


def dag_order(
    requests: list[tuple[str, pps_pb2.CreatePipelineRequest]],
) -> list[tuple[str, pps_pb2.CreatePipelineRequest]]:
    """Each pipeline after the pipelines whose output repos it reads (the given order otherwise)."""
    by_key: dict[tuple[str, str], tuple[str, pps_pb2.CreatePipelineRequest]] = {}
    for source, request in requests:
        key = pipeline_key(request)
        if key in by_key:
            raise DeployError(f"{source}: pipeline {key[1]!r} is also defined in {by_key[key][0]}")
        by_key[key] = (source, request)
    deps = {
        key: {(leaf.project, leaf.repo) for leaf in pfs_leaves(request)} & by_key.keys()
        for key, (_, request) in by_key.items()
    }
    try:
        return [by_key[k] for k in dependency_order(list(by_key), deps)]
    except DependencyCycle as cycle:
        names = sorted(f"{p}/{n}" for p, n in cycle.members)
        raise DeployError(f"the pipelines' inputs form a cycle: {', '.join(names)}") from None


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
    placed = [
        (source, pipeline_request(source, spec, repos=repos, sha=sha, project=project))
        for source, spec in specs
    ]
    ordered = [request for _, request in dag_order(placed)]
    outputs = {pipeline_key(r) for r in ordered}
    projects: list[str] = []
    input_repos: dict[tuple[str, str], list[str]] = {}
    for request in ordered:
        key = pipeline_key(request)
        projects.append(key[0])
        for leaf in pfs_leaves(request):
            repo_key = (leaf.project, leaf.repo)
            user_repo = leaf.repo_type in ("", "user")
            if user_repo and repo_key not in outputs | state.repos | state.pipelines:
                projects.append(repo_key[0])
                input_repos.setdefault(repo_key, []).append(key[1])
        request.update = key in state.pipelines
        request.reprocess = reprocess and request.update
    return [
        *(
            Request("create_project", {"project_name": p})
            for p in dict.fromkeys(projects)
            if p not in state.projects
        ),
        *(
            Request(
                "create_repo",
                {"repo_name": repo, "project_name": proj, "description": f"input of {', '.join(readers)}"},
            )
            for (proj, repo), readers in input_repos.items()
        ),
        *(Request("create_pipeline_from_request", {"req": r}) for r in ordered),
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
