"""scripts/deploy: pure request building (tags, projects, create vs update, DAG order), then the client path.

The connected path runs the script against a stand-in pachd: a gRPC server in this process that implements the
few PFS/PPS calls deploy makes with python-pachyderm's own generated servicers, and records what it receives.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, json_format
from python_pachyderm.proto.v2.pfs import pfs_pb2, pfs_pb2_grpc
from python_pachyderm.proto.v2.pps import pps_pb2, pps_pb2_grpc

from pachyderm_local import deploy as dr

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"
DEPLOY_CLI = ROOT / "pachyderm_local" / "pachyderm_local" / "deploy_cli.py"
SHA = "0123456789abcdef0123456789abcdef01234567"


REPOS = dr.ImageRepositories.from_namespace("myorg")


def _specs() -> list[tuple[str, dict]]:
    """The DAG as the files in specs/ describe it (the same names), deliberately out of order."""
    pg_load = {
        "pipeline": {"name": "pg-load"},
        "input": {"pfs": {"repo": "qa-answer", "glob": "/"}},
        "transform": {
            "image": "pachyderm-qa-load:IMAGE_TAG",
            "cmd": ["pg-load", "/pfs/qa-answer"],
            "secrets": [{"name": "pg-credentials", "key": "PG_PASSWORD", "env_var": "PG_PASSWORD"}],
        },
    }
    qa_answer = {
        "pipeline": {"name": "qa-answer"},
        "input": {"pfs": {"repo": "gcs-ingest", "glob": "/**.csv"}},
        "transform": {
            "image": "pachyderm-qa-answer:IMAGE_TAG",
            "cmd": ["qa-answer", "answer", "/pfs/gcs-ingest", "/pfs/out"],
        },
        "parallelism_spec": {"constant": 2},
        "datum_tries": 3,
    }
    gcs_ingest = {
        "pipeline": {"name": "gcs-ingest"},
        "input": {"cron": {"name": "tick", "spec": "@every 5m", "overwrite": True}},
        "transform": {
            "image": "pachyderm-qa-answer:IMAGE_TAG",
            "cmd": ["sh", "-c", "qa-answer ingest gs://$GCS_BUCKET/$GCS_PREFIX /pfs/out"],
            "secrets": [{"name": "gcs-credentials", "mount_path": "/var/secrets/gcs"}],
        },
    }
    return [("pg-load.json", pg_load), ("qa-answer.json", qa_answer), ("gcs-ingest.json", gcs_ingest)]


def _pipelines(requests) -> list:
    return [r.kwargs["req"] for r in requests if r.method == "create_pipeline_from_request"]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("pachyderm-qa-answer:IMAGE_TAG", f"myorg/pachyderm-qa-answer:{SHA}"),
        ("pachyderm-qa-load:IMAGE_TAG", f"myorg/pachyderm-qa-load:{SHA}"),
        ("pachyderm-qa-answer:IMAGE_TAG-cuda", f"myorg/pachyderm-qa-answer:{SHA}-cuda"),
        ("postgres:16", "postgres:16"),
    ],
)
def test_substitute_image(image, expected):
    assert dr.substitute_image(image, REPOS, SHA) == expected


def test_substitute_image_with_explicit_repositories():
    repos = dr.ImageRepositories(answer="ghcr.io/acme/qa-gpu", load="registry.local:5000/acme/loader")
    assert dr.substitute_image("pachyderm-qa-answer:IMAGE_TAG", repos, SHA) == f"ghcr.io/acme/qa-gpu:{SHA}"
    assert (
        dr.substitute_image("pachyderm-qa-load:IMAGE_TAG", repos, SHA)
        == f"registry.local:5000/acme/loader:{SHA}"
    )


@pytest.mark.parametrize(
    "image",
    [
        "pachyderm-qa-other:IMAGE_TAG",
        "myorg/pachyderm-qa-answer:IMAGE_TAG",
        "pachyderm-qa-answer:IMAGE_TAG_gpu",
        "pachyderm-qa-answer:IMAGE_TAG-",
    ],
)
def test_unknown_placeholder_is_refused(image):
    with pytest.raises(dr.DeployError, match=r"unknown image placeholder"):
        dr.substitute_image(image, REPOS, SHA)


@pytest.mark.parametrize(
    "sha", ["", "0123456", SHA.upper(), SHA + "0", "g" * 40, "IMAGE_TAG", f"{SHA[:39]} "]
)
def test_bad_sha_is_refused(sha):
    with pytest.raises(dr.DeployError, match=r"expected the full 40-character lowercase git commit SHA"):
        dr.validate_sha(sha)
    with pytest.raises(dr.DeployError):
        dr.build_requests(_specs(), repos=REPOS, sha=sha)


@pytest.mark.parametrize("namespace", ["", "My Org", "myorg/", "-myorg", "myorg:latest"])
def test_bad_namespace_is_refused(namespace):
    with pytest.raises(dr.DeployError, match="bad image namespace"):
        dr.ImageRepositories.from_namespace(namespace)


def test_fresh_cluster_creates_pipelines_in_dag_order_with_tagged_images():
    requests = dr.build_requests(_specs(), repos=REPOS, sha=SHA)
    assert [r.method for r in requests] == ["create_pipeline_from_request"] * 3
    reqs = _pipelines(requests)
    assert [r.pipeline.name for r in reqs] == ["gcs-ingest", "qa-answer", "pg-load"]
    assert [r.pipeline.project.name for r in reqs] == ["default"] * 3
    assert [r.transform.image for r in reqs] == [
        f"myorg/pachyderm-qa-answer:{SHA}",
        f"myorg/pachyderm-qa-answer:{SHA}",
        f"myorg/pachyderm-qa-load:{SHA}",
    ]
    assert [r.update for r in reqs] == [False] * 3
    assert reqs[1].input.pfs.project == "default"
    assert reqs[1].parallelism_spec.constant == 2
    assert reqs[2].transform.secrets[0].env_var == "PG_PASSWORD"
    # the caller's dicts are untouched: the placeholder survives for the next deploy
    assert _specs()[0][1]["transform"]["image"] == "pachyderm-qa-load:IMAGE_TAG"


def test_existing_pipelines_are_updated_and_others_created():
    state = dr.ClusterState(
        repos=frozenset({("default", "gcs-ingest"), ("default", "qa-answer")}),
        pipelines=frozenset({("default", "gcs-ingest"), ("default", "qa-answer")}),
    )
    reqs = _pipelines(dr.build_requests(_specs(), repos=REPOS, sha=SHA, state=state, reprocess=True))
    assert [(r.pipeline.name, r.update, r.reprocess) for r in reqs] == [
        ("gcs-ingest", True, True),
        ("qa-answer", True, True),
        ("pg-load", False, False),
    ]
    plain = _pipelines(dr.build_requests(_specs(), repos=REPOS, sha=SHA, state=state))
    assert [r.reprocess for r in plain] == [False, False, False]


def test_project_and_missing_input_repo_are_created_first():
    specs = _specs()
    # the README's no-GCS variant: qa-answer reads a `questions` repo users fill with `pachctl put file`
    specs[1][1]["input"] = {"pfs": {"repo": "questions", "glob": "/**.csv"}}
    requests = dr.build_requests(specs, repos=REPOS, sha=SHA, project="qa")
    assert [r.method for r in requests[:2]] == ["create_project", "create_repo"]
    assert requests[0].kwargs == {"project_name": "qa"}
    assert requests[1].kwargs == {
        "repo_name": "questions",
        "project_name": "qa",
        "description": "input of qa-answer",
    }
    reqs = _pipelines(requests)
    assert {r.pipeline.project.name for r in reqs} == {"qa"}
    assert reqs[1].input.pfs.project == "qa"
    existing = dr.ClusterState(projects=frozenset({"default", "qa"}), repos=frozenset({("qa", "questions")}))
    assert {
        r.method for r in dr.build_requests(specs, repos=REPOS, sha=SHA, project="qa", state=existing)
    } == {"create_pipeline_from_request"}


def test_nested_inputs_order_the_dag():
    specs = _specs()
    specs[0][1]["input"] = {
        "cross": [
            {"pfs": {"repo": "qa-answer", "glob": "/"}},
            {"union": [{"pfs": {"repo": "gcs-ingest", "glob": "/"}}]},
        ]
    }
    names = [r.pipeline.name for r in _pipelines(dr.build_requests(specs, repos=REPOS, sha=SHA))]
    assert names == ["gcs-ingest", "qa-answer", "pg-load"]


def test_cycle_duplicate_and_invalid_specs_are_refused():
    specs = _specs()
    specs[2][1]["input"] = {"pfs": {"repo": "pg-load", "glob": "/"}}
    with pytest.raises(
        dr.DeployError, match=r"cycle: default/gcs-ingest, default/pg-load, default/qa-answer"
    ):
        dr.build_requests(specs, repos=REPOS, sha=SHA)

    with pytest.raises(
        dr.DeployError, match=r"copy.json: pipeline 'qa-answer' is also defined in qa-answer.json"
    ):
        dr.build_requests([*_specs(), ("copy.json", _specs()[1][1])], repos=REPOS, sha=SHA)

    specs = _specs()
    specs[1][1]["paralelism_spec"] = specs[1][1].pop("parallelism_spec")
    with pytest.raises(
        dr.DeployError, match=r"qa-answer.json: not a valid Pachyderm pipeline spec: .*paralelism_spec"
    ):
        dr.build_requests(specs, repos=REPOS, sha=SHA)

    specs = _specs()
    specs[1][1]["transform"]["image"] = "pachyderm-qa-answer:latest-IMAGE_TAG"
    with pytest.raises(dr.DeployError, match=r"qa-answer.json: unknown image placeholder"):
        dr.build_requests(specs, repos=REPOS, sha=SHA)

    specs = _specs()
    del specs[0][1]["pipeline"]["name"]
    with pytest.raises(dr.DeployError, match=r"pg-load.json: the spec has no pipeline.name"):
        dr.build_requests(specs, repos=REPOS, sha=SHA)


# --- the script itself -----------------------------------------------------------------------------------


@pytest.fixture
def spec_files(tmp_path: Path) -> list[Path]:
    paths = []
    for name, spec in _specs():
        path = tmp_path / name
        path.write_text(json.dumps(spec))
        paths.append(path)
    return paths


def _deploy(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PACH_CONFIG": "/nonexistent/config.json"}
    return subprocess.run(
        [sys.executable, str(DEPLOY), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _spec_args(paths: list[Path]) -> list[str]:
    return [a for p in paths for a in ("--spec", str(p))]


def test_dry_run_prints_the_requests_without_connecting(spec_files):
    # nothing listens on port 9: a connection attempt would fail the run
    result = _deploy(
        "--dry-run",
        "--tag",
        SHA,
        "--namespace",
        "myorg",
        "--pachd-address",
        "grpc://127.0.0.1:9",
        *_spec_args(spec_files),
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert [p["method"] for p in printed] == ["create_pipeline_from_request"] * 3
    assert [p["kwargs"]["req"]["pipeline"]["name"] for p in printed] == ["gcs-ingest", "qa-answer", "pg-load"]
    assert printed[2]["kwargs"]["req"]["transform"]["image"] == f"myorg/pachyderm-qa-load:{SHA}"
    # the printed JSON is exactly a CreatePipelineRequest
    for p in printed:
        json_format.ParseDict(p["kwargs"]["req"], pps_pb2.CreatePipelineRequest())


def test_script_errors_are_clear(spec_files):
    result = _deploy("--dry-run", "--tag", "abc123", "--namespace", "myorg", *_spec_args(spec_files))
    assert result.returncode == 2
    assert "deploy: error: bad --tag 'abc123': expected the full 40-character" in result.stderr

    result = _deploy("--dry-run", "--namespace", "myorg", *_spec_args(spec_files))
    assert result.returncode == 2
    assert "--tag (or IMAGE_TAG) is required" in result.stderr

    result = _deploy("--dry-run", "--tag", SHA, *_spec_args(spec_files))
    assert result.returncode == 2
    assert (
        "give --namespace (or DOCKERHUB_NAMESPACE), or both --answer-image and --load-image" in result.stderr
    )

    result = _deploy("--dry-run", "--tag", SHA, "--namespace", "myorg", "--spec", "/nonexistent/x.json")
    assert result.returncode == 2
    assert "deploy: error: /nonexistent/x.json: spec file not found" in result.stderr


def test_env_configures_the_images_and_flags_win(spec_files):
    env = {"IMAGE_TAG": SHA, "DOCKERHUB_NAMESPACE": "envorg", "PG_LOAD_IMAGE": "envorg/custom-loader"}
    result = _deploy("--dry-run", *_spec_args(spec_files), env=env)
    assert result.returncode == 0, result.stderr
    images = [p["kwargs"]["req"]["transform"]["image"] for p in json.loads(result.stdout)]
    assert images == [f"envorg/pachyderm-qa-answer:{SHA}"] * 2 + [f"envorg/custom-loader:{SHA}"]
    result = _deploy(
        "--dry-run", "--namespace", "flagorg", "--load-image", "flagorg/l", *_spec_args(spec_files), env=env
    )
    images = [p["kwargs"]["req"]["transform"]["image"] for p in json.loads(result.stdout)]
    assert images == [f"flagorg/pachyderm-qa-answer:{SHA}"] * 2 + [f"flagorg/l:{SHA}"]


class _StandInPachd(pfs_pb2_grpc.APIServicer, pps_pb2_grpc.APIServicer):
    """Answers the list calls from a fixed state and records every create call with its auth metadata."""

    def __init__(self, pipelines: list[str]):
        self.pipelines = pipelines
        self.received: list[tuple[str, object]] = []
        self.tokens: set[str] = set()

    def _note(self, context) -> None:
        self.tokens |= {v for k, v in context.invocation_metadata() if k == "authn-token"}

    def ListProject(self, request, context):
        self._note(context)
        yield pfs_pb2.ProjectInfo(project=pfs_pb2.Project(name="default"))

    def ListRepo(self, request, context):
        self._note(context)
        for name in self.pipelines:
            yield pfs_pb2.RepoInfo(
                repo=pfs_pb2.Repo(name=name, type="user", project=pfs_pb2.Project(name="default"))
            )

    def ListPipeline(self, request, context):
        self._note(context)
        for name in self.pipelines:
            yield pps_pb2.PipelineInfo(
                pipeline=pps_pb2.Pipeline(name=name, project=pfs_pb2.Project(name="default"))
            )

    def CreateProject(self, request, context):
        self.received.append(("create_project", request))
        return empty_pb2.Empty()

    def CreateRepo(self, request, context):
        self.received.append(("create_repo", request))
        return empty_pb2.Empty()

    def CreatePipeline(self, request, context):
        self._note(context)
        self.received.append(("create_pipeline", request))
        return empty_pb2.Empty()


@pytest.fixture
def stand_in_pachd():
    def start(pipelines: list[str]):
        servicer = _StandInPachd(pipelines)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pfs_pb2_grpc.add_APIServicer_to_server(servicer, server)
        pps_pb2_grpc.add_APIServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"grpc://127.0.0.1:{port}"

    servers: list[grpc.Server] = []
    yield start
    for server in servers:
        server.stop(grace=None)


def test_deploy_sends_exactly_the_dry_run_requests_to_pachd(spec_files, stand_in_pachd):
    pachd, address = stand_in_pachd([])
    common = ["--tag", SHA, "--namespace", "myorg", *_spec_args(spec_files)]
    dry = json.loads(_deploy("--dry-run", *common).stdout)
    result = _deploy("--pachd-address", address, *common, env={"PACH_PYTHON_AUTH_TOKEN": "tok-s3cret"})
    assert result.returncode == 0, result.stderr
    assert [m for m, _ in pachd.received] == ["create_pipeline"] * 3
    sent = [json_format.MessageToDict(r, preserving_proto_field_name=True) for _, r in pachd.received]
    assert sent == [p["kwargs"]["req"] for p in dry]
    assert pachd.tokens == {"tok-s3cret"}
    assert "tok-s3cret" not in result.stderr + result.stdout
    assert f"create pipeline default/pg-load image myorg/pachyderm-qa-load:{SHA}" in result.stderr
    assert "3 requests applied" in result.stderr


def test_deploy_updates_pipelines_that_exist_on_the_cluster(spec_files, stand_in_pachd):
    pachd, address = stand_in_pachd(["gcs-ingest", "qa-answer", "pg-load"])
    result = _deploy(
        "--pachd-address",
        address,
        "--tag",
        SHA,
        "--namespace",
        "myorg",
        "--reprocess",
        *_spec_args(spec_files),
    )
    assert result.returncode == 0, result.stderr
    assert [(r.pipeline.name, r.update, r.reprocess) for _, r in pachd.received] == [
        ("gcs-ingest", True, True),
        ("qa-answer", True, True),
        ("pg-load", True, True),
    ]
    assert "update pipeline default/qa-answer" in result.stderr


def test_unreachable_pachd_is_a_clear_error(spec_files):
    result = _deploy(
        "--pachd-address", "grpc://127.0.0.1:9", "--tag", SHA, "--namespace", "myorg", *_spec_args(spec_files)
    )
    assert result.returncode == 1
    assert "deploy: error talking to pachd at grpc://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


# --- the real specs/ files -------------------------------------------------------------------------------


def _real_specs(*relpaths: str) -> list[tuple[str, dict]]:
    return [(p, json.loads((ROOT / p).read_text())) for p in relpaths]


def test_real_specs_deploy_in_dag_order_with_every_placeholder_replaced():
    requests = dr.build_requests(_real_specs(*dr.DEFAULT_SPEC_FILES), repos=REPOS, sha=SHA)
    reqs = _pipelines(requests)
    assert [r.method for r in requests] == ["create_pipeline_from_request"] * 3
    assert [(r.pipeline.project.name, r.pipeline.name) for r in reqs] == [
        ("default", "gcs-ingest"),
        ("default", "qa-answer"),
        ("default", "pg-load"),
    ]
    assert [r.transform.image for r in reqs] == [
        f"myorg/pachyderm-qa-answer:{SHA}",
        f"myorg/pachyderm-qa-answer:{SHA}",
        f"myorg/pachyderm-qa-load:{SHA}",
    ]
    dumped = json.dumps([r.to_json() for r in requests])
    assert "IMAGE_TAG" not in dumped
    # the secrets the scripts create are the ones the specs consume
    assert {s.name for s in reqs[0].transform.secrets} == {"gcs-credentials"}
    db_template = json.loads((ROOT / "secrets" / "secret_template_db.json").read_text())
    assert {(s.name, s.key, s.env_var) for s in reqs[2].transform.secrets} == {
        ("pg-credentials", k, k) for k in db_template["data"]
    }
    gcs_template = json.loads((ROOT / "secrets" / "secret_template.json").read_text())
    assert reqs[0].transform.secrets[0].mount_path == "/var/secrets/gcs"
    assert reqs[0].transform.env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/gcs/" + next(
        iter(gcs_template["data"])
    )


def test_real_gpu_variant_points_at_the_cuda_tag():
    files = ("specs/gcs-ingest.json", "specs/gpu/qa-answer.json", "specs/pg-load.json")
    reqs = _pipelines(dr.build_requests(_real_specs(*files), repos=REPOS, sha=SHA))
    assert [r.pipeline.name for r in reqs] == ["gcs-ingest", "qa-answer", "pg-load"]
    assert reqs[1].transform.image == f"myorg/pachyderm-qa-answer:{SHA}-cuda"


def test_script_defaults_to_the_three_real_specs():
    result = _deploy("--dry-run", "--tag", SHA, "--namespace", "myorg")
    assert result.returncode == 0, result.stderr
    assert [p["kwargs"]["req"]["pipeline"]["name"] for p in json.loads(result.stdout)] == [
        "gcs-ingest",
        "qa-answer",
        "pg-load",
    ]


def test_every_variable_the_deployment_tools_read_is_documented():
    docs = (ROOT / "docs" / "deployment.md").read_text()
    names = set(re.findall(r'env\.get\("([A-Z_]+)"\)', DEPLOY_CLI.read_text()))
    for script in ("create_secret.sh", "create_secret_db.sh"):
        names |= set(re.findall(r"\$\{?((?:PG|GOOGLE)_[A-Z_]+)", (ROOT / "scripts" / script).read_text()))
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    names |= set(re.findall(r"\b(?:secrets|vars)\.([A-Z_]+)", workflow))
    assert {"IMAGE_TAG", "PACHD_ADDRESS", "PG_SSLCLIENT_CERT", "DOCKERHUB_TOKEN", "PUSH_LATEST"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in docs)
    assert not missing, f"not in docs/deployment.md: {missing}"
