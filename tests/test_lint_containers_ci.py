"""Dockerfiles, .dockerignore and the CI workflow, checked by the strongest offline means (no Docker here).

Linters (hadolint, actionlint with shellcheck, the GitHub workflow JSON schema), the Dockerfiles' contract
(layer order, pinned model, offline runtime, non-root user, no torch in image 2), and the baked-model cache
layout, loaded through the real `qa-answer answer` with the tiny model standing in for distilbert.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml
from qa_answer.qa_config import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
DOCKERFILES = {"answer": ROOT / "pachyderm_01" / "Dockerfile", "load": ROOT / "pachyderm_02" / "Dockerfile"}
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr in _instructions(dockerfile):
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def _index(instrs: list[tuple[str, str]], kind: str, needle: str) -> int:
    hits = [i for i, (k, a) in enumerate(instrs) if k == kind and needle in a]
    assert hits, f"no {kind} containing {needle!r}"
    return hits[0]


def _args(dockerfile: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in _instructions(dockerfile) if k == "ARG" and "=" in a)


def _copy_sources(dockerfile: Path) -> set[str]:
    return {
        a.split()[0] for k, a in _instructions(dockerfile) if k == "COPY" and not a.startswith("--from")
    } - {"--chown"}


# --- Dockerfiles --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfiles_are_hadolint_clean(image):
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_local_build_files_are_lint_clean():
    """`make images`' own files: the Debian stand-in base, the build script, and .ci/run that runs it."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(ROOT / "docker" / "local-base.Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    scripts = [ROOT / "docker" / "build-images.sh", ROOT / ".ci" / "run"]
    result = subprocess.run(
        [str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_are_slim_layered_and_run_as_a_user(image):
    dockerfile = DOCKERFILES[image]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", _args(dockerfile)["PYTHON_IMAGE"])
    *_, build, runtime = _stages(dockerfile)
    # dependencies from pyproject.toml alone, then the code, so a code edit reuses the dependency layer
    deps = _index(build, "COPY", "pyproject.toml docker/constraints.txt /tmp/deps/")
    assert "README.md" not in build[deps][1]  # a docs edit must not rebuild (and ship) the dependencies
    install = _index(build, "RUN", f'pip install -c /tmp/deps/constraints.txt "/tmp/deps[{image}]"')
    assert "touch /tmp/deps/README.md " in build[install][1]
    assert "/pachyderm-qa.pth', 'w').write('/opt/app')" in build[install][1]  # the code's folder on the path
    code = _index(build, "COPY", "pachyderm_01/qa_answer")
    assert deps < install < code < _index(build, "RUN", "pip install --no-deps --target /opt/app /src")
    assert all("pyproject.toml" not in a or "/tmp/deps" in a or "/src" in a for k, a in build if k == "COPY")
    # the runtime stage: the dependencies' venv, then the code as its own last copied layer, a numeric
    # non-root user, a smoke test of the CLI as that user
    copies = [a for k, a in runtime if k == "COPY"]
    assert copies[0] == "--from=build /opt/venv /opt/venv" and copies[-1] == "--from=build /opt/app /opt/app"
    assert "PATH=/opt/app/bin:/opt/venv/bin:$PATH" in " ".join(a for k, a in runtime if k == "ENV")
    user = [a for k, a in runtime if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    command = {"answer": "qa-answer", "load": "pg-load"}[image]
    assert _index(runtime, "USER", "") < _index(runtime, "RUN", f"{command} --help")


def test_image1_has_cpu_torch_and_the_pinned_model_offline():
    dockerfile = DOCKERFILES["answer"]
    args = _args(dockerfile)
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    model_stage, build, runtime = _stages(dockerfile)
    # a local model folder replaces the empty qa_model stage (a named build context), else the hub download
    assert model_stage == [("FROM", "scratch AS qa_model")]
    torch = _index(build, "RUN", 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert torch < _index(build, "RUN", 'pip install -c /tmp/deps/constraints.txt "/tmp/deps[answer]"')
    # the model: a full commit that transformers 5.2 itself names as the QA default, baked before the code
    # (read from transformers' source: importing transformers.pipelines costs seconds)
    pipelines = Path(importlib.util.find_spec("transformers").submodule_search_locations[0]) / "pipelines"
    qa_default = re.search(
        r'"question-answering": \{.*?"model": \("([^"]+)", "([0-9a-f]+)"\)',
        (pipelines / "__init__.py").read_text(),
        re.S,
    )
    assert qa_default, "transformers no longer names a default QA model"
    default_id, default_revision = qa_default.groups()
    assert args["QA_MODEL_ID"] == default_id == DEFAULT_MODEL
    assert re.fullmatch(r"[0-9a-f]{40}", args["QA_MODEL_REVISION"])
    assert args["QA_MODEL_REVISION"].startswith(default_revision)
    bake = _index(build, "RUN", 'python /tmp/bake_model.py "${QA_MODEL_ID}" "${QA_MODEL_REVISION}"')
    assert "--from-folder /tmp/qa_model" in build[bake][1]
    assert _index(build, "COPY", "--from=qa_model / /tmp/qa_model/") < bake
    assert bake < _index(build, "COPY", "pachyderm_01/qa_answer")
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    assert "HF_HOME=/opt/hf" in env and "HF_HOME=/opt/hf" in " ".join(a for k, a in build if k == "ENV")
    assert "QA_MODEL=${QA_MODEL_ID}" in env
    assert any(k == "COPY" and a == "--from=build /opt/hf /opt/hf" for k, a in runtime)
    # the runtime smoke test answers a row offline, as the runtime user
    assert (
        "qa-answer answer /tmp/smoke/in /tmp/smoke/out"
        in runtime[_index(runtime, "RUN", "qa-answer --help")][1]
    )


def test_image2_never_installs_torch():
    dockerfile = DOCKERFILES["load"]
    text = " ".join(a for k, a in _instructions(dockerfile) if k in ("RUN", "ARG", "ENV"))
    assert "[answer]" not in text and "torch==" not in text and "TORCH_INDEX_URL" not in text
    assert not any(
        re.match(r"(torch|transformers)\b", d) for d in PYPROJECT["project"]["optional-dependencies"]["load"]
    )
    *_, runtime = _stages(dockerfile)
    guard = runtime[_index(runtime, "RUN", "pg-load --help")][1]
    assert "find_spec(m) for m in ('torch', 'transformers')" in guard


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_package_folders_match_pyproject(image):
    """A package added to pyproject must be stubbed and copied too, or `docker build` breaks: caught here."""
    instrs = _instructions(DOCKERFILES[image])
    stub_run = next(a for k, a in instrs if k == "RUN" and a.startswith("mkdir -p /tmp/deps/"))
    mkdirs = stub_run.split("&&")[0].split()[2:]
    assert {m.removeprefix("/tmp/deps/") for m in mkdirs} == PACKAGE_DIRS
    assert _copy_sources(DOCKERFILES[image]) - {"pyproject.toml", "docker/bake_model.py"} == PACKAGE_DIRS
    assert image in PYPROJECT["project"]["optional-dependencies"]


def test_dependency_layer_builds_from_pyproject_and_stubs_alone(tmp_path):
    """What the dependency layer does: pyproject.toml plus empty package folders is an installable project."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in PACKAGE_DIRS:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").touch()
    result = subprocess.run(
        [
            str(BIN / "python"),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            "dist",
            ".",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "dist").glob("pachyderm_qa-*.whl"))) == 1


def test_dockerignore_sends_only_what_the_dockerfiles_copy():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "deny by default, so .venv, .git, .env and keys never reach a build context"
    included = {p[1:] for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES.values():
        for source in _copy_sources(dockerfile):
            assert (ROOT / source).exists(), source
            assert any(source == inc or source.startswith(inc + "/") for inc in included), source
    for private in (".venv", ".git", ".env", "secrets", "tests", ".pachyderm-local", ".demo"):
        assert not any(private == inc or inc.startswith(private + "/") for inc in included), private


# --- the baked model cache ----------------------------------------------------------------------------------


def _bake_module():
    spec = importlib.util.spec_from_file_location("bake_model", ROOT / "docker" / "bake_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_baked_cache(tmp_path: Path, model_dir: Path, revision: str) -> tuple[Path, Path]:
    """The cache layout `snapshot_download` leaves in HF_HOME, with the tiny model instead of distilbert."""
    from huggingface_hub.file_download import repo_folder_name

    hf_home = tmp_path / "hf"
    snapshot = (
        hf_home / "hub" / repo_folder_name(repo_id=DEFAULT_MODEL, repo_type="model") / "snapshots" / revision
    )
    shutil.copytree(model_dir, snapshot)
    return hf_home, snapshot


def _answer_offline(tmp_path: Path, hf_home: Path) -> subprocess.CompletedProcess:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "q.csv").write_text(
        "question,context\nWho wrote it?,It was written by Ada Lovelace in 1843.\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "QA_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", QA_DEVICE="cpu")
    return subprocess.run(
        [str(BIN / "qa-answer"), "answer", str(tmp_path / "in"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_baked_cache_serves_the_plain_hub_id_offline_at_the_pinned_revision(tmp_path, tiny_qa_model_dir):
    revision = _args(DOCKERFILES["answer"])["QA_MODEL_REVISION"]
    hf_home, snapshot = _fake_baked_cache(tmp_path, tiny_qa_model_dir, revision)
    ref = _bake_module().pin_main_ref(snapshot)
    assert ref.read_text() == revision

    result = _answer_offline(tmp_path, hf_home)
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / "out" / "answers" / "q.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert rows[0]["model"] == f"{DEFAULT_MODEL}@{revision}"


def test_without_the_pinned_ref_the_offline_load_fails_clearly(tmp_path, tiny_qa_model_dir):
    revision = _args(DOCKERFILES["answer"])["QA_MODEL_REVISION"]
    hf_home, _ = _fake_baked_cache(tmp_path, tiny_qa_model_dir, revision)
    result = _answer_offline(tmp_path, hf_home)
    assert result.returncode != 0
    assert DEFAULT_MODEL in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def test_pin_main_ref_refuses_a_folder_that_is_not_a_snapshot(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face cache snapshot folder"):
        _bake_module().pin_main_ref(tmp_path / "snapshots" / "main")


# --- CI workflow --------------------------------------------------------------------------------------------


def test_workflows_pass_actionlint_with_shellcheck_and_the_schema():
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert str(WORKFLOW) in workflows
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # actionlint runs shellcheck
    assert shutil.which("shellcheck", path=env["PATH"])
    # no `-ignore` for deprecated runtimes: every action used runs on a current Node
    result = subprocess.run(
        [str(BIN / "actionlint"), *workflows], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *workflows],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflow_tests_every_push_and_pr_with_the_readme_command():
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert {"push", "pull_request"} <= set(triggers)
    test = wf["jobs"]["test"]
    assert "make lint" in _runs(test)
    assert "-m pytest -q" in _runs(test)  # the suite of `make test`; its image half is the images job
    assert "make test" in (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in _runs(test)


def test_workflow_pushes_both_images_by_sha_from_main_only():
    wf = _workflow()
    images = wf["jobs"]["images"]
    assert images["needs"] == "test"
    assert "github.ref == 'refs/heads/main'" in images["if"]
    assert "pull_request" not in images["if"]
    matrix = images["strategy"]["matrix"]["include"]
    assert {m["dockerfile"] for m in matrix} == {"pachyderm_01/Dockerfile", "pachyderm_02/Dockerfile"}
    assert len({m["component"] for m in matrix}) == len(matrix)  # one cache scope per image
    steps = images["steps"]
    builds = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
    assert [b["with"].get("push", False) for b in builds] == [False, True]
    for build in builds:
        assert build["with"]["cache-from"] == "type=gha,scope=${{ matrix.component }}"
    assert builds[0]["with"]["cache-to"] == "type=gha,mode=max,scope=${{ matrix.component }}"
    smoke = next(s for s in steps if s.get("name", "").startswith("Smoke test"))
    assert steps.index(builds[0]) < steps.index(smoke) < steps.index(builds[1])
    assert smoke["run"].startswith('docker run --rm "$IMAGE" "$COMMAND" --help\n')
    # image 1 answers examples/ with the baked model, offline, and must find Paris (test_images.py runs it)
    assert "docker run --rm --network none --read-only --tmpfs /tmp --user 10001:10001" in smoke["run"]
    assert '-v "$PWD/examples:/pfs/in:ro"' in smoke["run"] and '"Paris" in row["answer"]' in smoke["run"]
    tags = next(s for s in steps if s.get("id") == "tags")
    assert 'tags="${IMAGE}:${GITHUB_SHA}${SUFFIX}"' in tags["run"]
    assert 'if [ "$PUSH_LATEST" = "true" ]; then' in tags["run"]  # latest only when asked
    assert tags["env"]["PUSH_LATEST"] == "${{ inputs.push_latest || vars.PUSH_LATEST == 'true' }}"
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"] == {
        "username": "${{ secrets.DOCKERHUB_USERNAME }}",
        "password": "${{ secrets.DOCKERHUB_TOKEN }}",
    }


def test_image_names_are_set_in_one_place():
    text = WORKFLOW.read_text()
    wf = _workflow()
    assert wf["env"]["QA_ANSWER_IMAGE"].startswith("${{ vars.QA_ANSWER_IMAGE || ")
    assert wf["env"]["PG_LOAD_IMAGE"].startswith("${{ vars.PG_LOAD_IMAGE || ")
    for name in ("pachyderm-qa-answer", "pachyderm-qa-load"):
        assert text.count(name) == 1, name  # only in the defaults above
    for job in wf["jobs"].values():
        assert "QA_ANSWER_IMAGE" not in job.get("env", {}) and "PG_LOAD_IMAGE" not in job.get("env", {})


def test_workflow_deploys_only_when_pachd_address_is_set():
    deploy = _workflow()["jobs"]["deploy"]
    assert deploy["needs"] == "images"
    assert deploy["env"]["PACHD_ADDRESS"] == "${{ secrets.PACHD_ADDRESS }}"
    run = next(s for s in deploy["steps"] if "python scripts/deploy" in s.get("run", ""))
    assert run["if"] == "env.PACHD_ADDRESS != ''"
    assert '--tag "$GITHUB_SHA"' in run["run"]
    assert '--answer-image "$QA_ANSWER_IMAGE" --load-image "$PG_LOAD_IMAGE"' in run["run"]
    assert "python-pachyderm==7.6.0" in _runs(deploy)


def test_constraints_pin_what_the_images_install_and_no_torch():
    """docker/constraints.txt: exact pins (name==version) for every runtime dependency, torch pinned apart."""
    lines = [
        line
        for line in (ROOT / "docker/constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==", 1) for line in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and version for name, version in pins.items()), lines
    names = {name.lower().replace("_", "-") for name in pins}
    for needed in ("transformers", "tokenizers", "numpy", "google-cloud-storage", "tqdm", "psycopg2-binary"):
        assert needed in names
    assert not names & {"torch", "pachyderm-qa"}
