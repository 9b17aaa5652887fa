"""Dockerfiles, .dockerignore and the CI workflow, checked offline (tests/test_images.py runs the images).

Linters (hadolint, actionlint with shellcheck, the GitHub workflow JSON schema), the build context and
dependency layer the Dockerfiles rely on, the pinned model, and the baked-model cache layout, loaded through
the real `qa-answer answer` with the tiny model standing in for distilbert.
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


def test_image1_pins_the_qa_model_transformers_names_as_its_default():
    """The baked model is transformers' own default QA model, at the full commit of the short one it names."""
    # read from transformers' source: importing transformers.pipelines costs seconds
    pipelines = Path(importlib.util.find_spec("transformers").submodule_search_locations[0]) / "pipelines"
    qa_default = re.search(
        r'"question-answering": \{.*?"model": \("([^"]+)", "([0-9a-f]+)"\)',
        (pipelines / "__init__.py").read_text(),
        re.S,
    )
    assert qa_default, "transformers no longer names a default QA model"
    default_id, default_revision = qa_default.groups()
    args = _args(DOCKERFILES["answer"])
    assert args["QA_MODEL_ID"] == default_id == DEFAULT_MODEL
    assert re.fullmatch(r"[0-9a-f]{40}", args["QA_MODEL_REVISION"])
    assert args["QA_MODEL_REVISION"].startswith(default_revision)


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
