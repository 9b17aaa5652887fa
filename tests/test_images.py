"""Both images as `make images` builds them with the tiny model baked, run from outside as a deployment does.

`make image-test` builds them and runs this file (marker `images`, deselected from a plain `pytest`). Image 1
runs as uid 10001 with no network, a read-only root filesystem and read-only input, and must write exactly
the bytes the host's `qa-answer answer` writes with the same model, laid into a host cache by the same
docker/bake_model.py. Image 2 mirrors those answers into a Postgres reached through its socket folder.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_csv_input import test_unreadable_file_gives_one_file_level_rejection as _file_level_cases
from test_ingest import files_under, upload
from test_pg_load import row_versions

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
STATE = ROOT / ".containers"
ANSWER_IMAGE = "pachyderm-qa-answer:local"
LOAD_IMAGE = "pachyderm-qa-load:local"
TINY_MODEL = ROOT / ".demo" / "tiny-model"  # what `make image-test` bakes (make tiny-model)
MODEL_ID = "local/tiny-model"  # docker/build-images.sh: local/<folder name>
USER = "10001:10001"


@dataclass(frozen=True)
class Engine:
    """The container engine `make images` used, with its project-local settings."""

    name: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def container(
        self, image: str, *command: str, options: tuple[str, ...] = (), network: str = "none"
    ) -> subprocess.CompletedProcess:
        """`run --rm` as the image user, root filesystem read-only but an empty /tmp (as a pod's emptyDir)."""
        pull = "--pull=never" if self.name == "podman" else "--pull=missing"
        tmpfs = ("--read-only-tmpfs=false",) if self.name == "podman" else ()  # only the /tmp below
        flags = ("--rm", pull, "--user", USER, f"--network={network}", "--read-only", *tmpfs, "--tmpfs=/tmp")
        flags += options
        return self.run("run", *flags, image, *command)


@pytest.fixture(scope="module")
def engine() -> Engine:
    settings = STATE / "engine.env"
    if not settings.is_file():
        pytest.fail(f"{settings} is missing: build the images first (make image-test does)")
    values = dict(line.split("=", 1) for line in settings.read_text().splitlines() if "=" in line)
    found = Engine(values.pop("ENGINE"), {**os.environ, **values})
    for image in (ANSWER_IMAGE, LOAD_IMAGE):
        inspected = found.run("image", "inspect", "--format", "{{.Id}}", image)
        assert inspected.returncode == 0, f"{image} not built (make image-test builds it): {inspected.stderr}"
    return found


@pytest.fixture(scope="module")
def host_hf_home(tmp_path_factory) -> Path:
    """The tiny model in a host HF cache under the image's id and revision, by the image's own bake code."""
    spec = importlib.util.spec_from_file_location("bake_model", ROOT / "docker" / "bake_model.py")
    bake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bake)
    hf_home = tmp_path_factory.mktemp("hf")
    bake.bake_folder(MODEL_ID, TINY_MODEL, hf_home / "hub")
    return hf_home


def host_answer(in_dir: Path, out_dir: Path, hf_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "QA_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", QA_MODEL=MODEL_ID)
    result = subprocess.run(
        [str(BIN / "qa-answer"), "answer", str(in_dir), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def writable_out(path: Path) -> Path:
    """An output folder the image user owns, as Pachyderm hands /pfs/out to the pipeline's user."""
    path.mkdir(parents=True)
    os.chown(path, 10001, 10001)
    return path


def image_answer(engine: Engine, in_dir: Path, out_dir: Path) -> subprocess.CompletedProcess:
    return engine.container(
        ANSWER_IMAGE,
        *("qa-answer", "answer", "/pfs/in", "/pfs/out"),
        options=("-v", f"{in_dir}:/pfs/in:ro", "-v", f"{out_dir}:/pfs/out"),
    )


def assert_same_files(image_out: Path, host_out: Path) -> dict[str, bytes]:
    image_files, host_files = files_under(image_out), files_under(host_out)
    assert sorted(image_files) == sorted(host_files)
    for name, data in host_files.items():
        assert image_files[name] == data, f"{name} differs between the image and the host"
    return image_files


def bad_csv_corpus(folder: Path) -> Path:
    """The CSV reader's corpus of unreadable files, plus files with bad rows among good ones."""
    folder.mkdir()
    (mark,) = _file_level_cases.pytestmark
    for case in mark.args[1]:
        (folder / f"{case.id}.csv").write_bytes(case.values[0])
    (folder / "bad-rows.csv").write_bytes(
        b"question,context,id\n"
        b"Who?,Ada wrote it.,a\n"
        b"caf\xe9?,latin-1 bytes,b\n"
        b"Who?,too,many,fields\n"
        b"too few\n"
        b",no question,c\n"
        b"Who?,   ,d\n"
        b"Who?,nul\x00here,f\n"
        b'"bad"quote,c,g\n'
        b'Last?,"multi\nline ok",h\n'
        b'q2,"open\nq3,c3\n'
    )
    (folder / "nested").mkdir()
    latin1 = "question,context\n" + "".join(f"Où {i}?,à côté {i}\n" for i in range(5))
    (folder / "nested" / "latin1.csv").write_bytes(latin1.encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def examples_answered(engine, host_hf_home, tmp_path_factory) -> Path:
    out = writable_out(tmp_path_factory.mktemp("examples") / "out")
    result = image_answer(engine, ROOT / "examples", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_image1_answers_examples_offline_read_only_byte_identical_to_the_host(
    examples_answered, host_hf_home, tmp_path
):
    host_answer(ROOT / "examples", tmp_path / "host", host_hf_home)
    files = assert_same_files(examples_answered, tmp_path / "host")
    answers = [name for name in files if name.startswith("answers/")]
    assert len(answers) == 3 and all(files[name].count(b"\n") > 1 for name in answers)
    assert f"{MODEL_ID}@".encode() in files["answers/geography.csv"]


def test_image1_rejects_the_bad_csv_corpus_byte_identical_to_the_host(engine, host_hf_home, tmp_path):
    corpus = bad_csv_corpus(tmp_path / "in")
    out = writable_out(tmp_path / "image")
    result = image_answer(engine, corpus, out)
    assert result.returncode == 0, result.stdout + result.stderr
    host_answer(corpus, tmp_path / "host", host_hf_home)
    files = assert_same_files(out, tmp_path / "host")
    rejected = b"".join(data for name, data in files.items() if name.startswith("rejected/"))
    assert b"the file is UTF-16 encoded; save it as UTF-8" in rejected
    assert b"not UTF-8: undecodable byte 0xf9 in column 'question'" in rejected
    assert b"Ada wrote it." in files["answers/bad-rows.csv"]


def test_image1_ingests_from_the_gcs_emulator(engine, gcs_server, gcs_bucket, tmp_path):
    sources = {"questions/a.csv": b"question,context\nWho?,Ada.\n", "questions/sub/b.csv": b"q,c\n"}
    upload(gcs_bucket, {**sources, "elsewhere/c.csv": b"x\n", "questions/notes.txt": b"n\n"})
    out = writable_out(tmp_path / "out")
    result = engine.container(
        ANSWER_IMAGE,
        *("qa-answer", "ingest", f"gs://{gcs_bucket.name}/questions", "/pfs/out"),
        options=("-e", f"STORAGE_EMULATOR_HOST={gcs_server.url}", "-v", f"{out}:/pfs/out"),
        network="host",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_under(out) == {
        "a.csv": sources["questions/a.csv"],
        "sub/b.csv": sources["questions/sub/b.csv"],
    }


@pytest.fixture
def socket_dir(pg_database) -> Iterator[Path]:
    """The test server's socket folder, reachable by the image user for the test's duration."""
    folder = Path(pg_database.env["PG_HOST"])
    mode = folder.stat().st_mode & 0o7777
    folder.chmod(0o777)
    yield folder
    folder.chmod(mode)


def image_load(engine: Engine, pg_database, socket_dir: Path, in_dir: Path) -> subprocess.CompletedProcess:
    env = {**pg_database.env, "PG_HOST": "/run/pg"}
    flags = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    return engine.container(
        LOAD_IMAGE,
        *("pg-load", "/pfs/in"),
        options=(*flags, "-v", f"{socket_dir}:/run/pg", "-v", f"{in_dir}:/pfs/in:ro"),
    )


def test_image2_mirrors_the_answers_into_postgres_and_a_rerun_writes_nothing(
    engine, examples_answered, pg_database, socket_dir
):
    first = image_load(engine, pg_database, socket_dir, examples_answered)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "files unchanged=0 added=3 " in first.stdout
    answer_lines = sum(
        data.count(b"\n") - 1
        for name, data in files_under(examples_answered).items()
        if name.startswith("answers/")
    )
    conn = pg_database.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT source_file) FROM qa_answers")
        assert cur.fetchone() == (answer_lines, 3)
    before = row_versions(conn)

    again = image_load(engine, pg_database, socket_dir, examples_answered)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "files unchanged=3 added=0 replaced=0 deleted=0" in again.stdout and " written=0;" in again.stdout
    assert row_versions(conn) == before


def test_image2_has_no_torch(engine):
    result = engine.container(LOAD_IMAGE, "python", "-c", "import torch")
    assert result.returncode == 1
    assert "No module named 'torch'" in result.stderr


def test_an_unreadable_mounted_model_folder_is_named_as_unreadable(engine, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    (model / "model.safetensors").chmod(0o600)  # what save_pretrained leaves, owned by root
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.csv").write_text("question,context\nWho?,Ada.\n")
    out = writable_out(tmp_path / "out")
    result = engine.container(
        ANSWER_IMAGE,
        *("qa-answer", "answer", "/pfs/in", "/pfs/out"),
        options=(
            *("-v", f"{model}:/model:ro", "-v", f"{tmp_path / 'in'}:/pfs/in:ro", "-v", f"{out}:/pfs/out"),
            *("-e", "QA_MODEL=/model"),
        ),
    )
    assert result.returncode != 0
    assert "not readable by uid 10001: /model/model.safetensors (mode 0600, owner uid 0)" in result.stderr
    assert "No such file or directory" not in result.stderr


def test_the_ci_smoke_step_answers_examples_in_image1(engine, examples_answered, tmp_path):
    """The workflow's own smoke script, `docker` standing for this engine, judged by the image's answer."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    step = next(s for s in workflow["jobs"]["images"]["steps"] if s.get("name", "").startswith("Smoke test"))
    shims = tmp_path / "bin"
    shims.mkdir()
    if engine.name == "podman":  # docker's --read-only gives no writable /tmp of its own; neither may podman
        (shims / "docker").write_text(
            '#!/bin/sh\nif [ "$1" = run ]; then shift\n'
            '  exec podman run --pull=never --read-only-tmpfs=false "$@"\nfi\nexec podman "$@"\n'
        )
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {
        **engine.env,
        "PATH": f"{shims}{os.pathsep}{engine.env['PATH']}",
        "IMAGE": ANSWER_IMAGE,
        "COMMAND": "qa-answer",
        "RUNNER_TEMP": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    text = (examples_answered / "answers" / "geography.csv").read_text(encoding="utf-8")
    geo_1 = next(r for r in csv.DictReader(io.StringIO(text, newline="")) if r["id"] == "geo-1")
    assert f"What is the capital of France? -> {geo_1['answer']!r}" in result.stdout, result.stderr
    # the tiny random model may or may not land on Paris; the step must pass exactly when it does
    if "Paris" in geo_1["answer"]:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1 and "was not answered with Paris" in result.stderr


# --- pachyderm-local --engine: the DAG's steps in their images ----------------------------------------------


def pachyderm_local(engine: Engine, root: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(BIN / "pachyderm-local"), "--root", str(root), *args],
        env={**engine.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_pachyderm_local_runs_the_dag_in_the_images_as_on_the_host(
    engine, gcs_server, gcs_bucket, pg_database, tmp_path
):
    upload(
        gcs_bucket,
        {f"q/{p.relative_to(ROOT / 'examples')}": p.read_bytes() for p in (ROOT / "examples").rglob("*.csv")},
    )
    specs = [str(ROOT / "specs" / f"{name}.json") for name in ("gcs-ingest", "qa-answer", "pg-load")]
    flags = ["--env", f"GCS_BUCKET={gcs_bucket.name}", "--env", "GCS_PREFIX=q", "--env", "PG_SSLMODE=disable"]
    flags += ["--env", f"QA_MODEL={TINY_MODEL}", "--env", f"STORAGE_EMULATOR_HOST={gcs_server.url}"]
    in_images = ["--engine", engine.name, "--engine-network", "gcs-ingest=host"]
    pg_env = {k: v for k, v in pg_database.env.items() if k != "PG_SSLMODE"}

    first = pachyderm_local(engine, tmp_path / "images", "run", *specs, *flags, *in_images, env=pg_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "qa-answer: processed=3 skipped=0 failed=0" in first.stdout
    assert "pg-load: processed=1 skipped=0 failed=0" in first.stdout
    conn = pg_database.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT source_file), count(*) FROM qa_answers")
        assert cur.fetchone() == (3, 10)
    before = row_versions(conn)

    again = pachyderm_local(engine, tmp_path / "images", "run", *specs, *flags, *in_images, env=pg_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        "qa-answer: processed=0 skipped=3" in again.stdout
        and "pg-load: processed=0 skipped=1" in again.stdout
    )
    assert row_versions(conn) == before

    host = pachyderm_local(engine, tmp_path / "host", "run", *specs[:2], *flags)
    assert host.returncode == 0, host.stdout + host.stderr
    for name in ("answers/geography.csv", "answers/history/europe.csv", "answers/science.csv"):
        in_image = pachyderm_local(engine, tmp_path / "images", "get-file", f"qa-answer:{name}")
        on_host = pachyderm_local(engine, tmp_path / "host", "get-file", f"qa-answer:{name}")
        assert in_image.stdout == on_host.stdout != ""
    assert engine.run("ps", "-a", "--filter", "name=pachyderm-local-", "--format", "{{.Names}}").stdout == ""


def test_a_datum_that_times_out_in_a_container_takes_the_container_with_it(engine, tmp_path):
    spec = tmp_path / "sleepy.json"
    spec.write_text(
        '{"pipeline": {"name": "sleepy"}, "input": {"pfs": {"repo": "things", "glob": "/*"}},'
        ' "transform": {"image": "pachyderm-qa-load:IMAGE_TAG", "cmd": ["sleep", "600"]},'
        ' "datum_tries": 1, "datum_timeout": "3s"}'
    )
    (tmp_path / "a.txt").write_text("a\n")
    assert (
        pachyderm_local(engine, tmp_path / "root", "put-file", "things", str(tmp_path / "a.txt")).returncode
        == 0
    )
    result = pachyderm_local(engine, tmp_path / "root", "run", str(spec), "--engine", engine.name)
    assert result.returncode == 1 and "sleepy: processed=0 skipped=0 failed=1" in result.stdout
    assert "timed out after 3s" in result.stderr
    # the watchdog removes the container once the killed client's pipe closes: allow it a few seconds
    deadline = time.monotonic() + 30
    while (
        names := engine.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [n for n in names if n.startswith("pachyderm-local-")] == []


def _answers_block(stdout: str) -> str:
    return stdout.split("A few answers from Postgres", 1)[1].split("Where to look", 1)[0]


@pytest.mark.slow
def test_demo_in_the_images_prints_the_hosts_answers_and_its_rerun_does_nothing(engine, tmp_path):
    """`make demo ENGINE=podman` (scripts/demo.py --engine) against `make demo`, same model folder."""

    def demo(state: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "python"), str(ROOT / "scripts" / "demo.py"), "--state-dir", str(state), *args],
            env={**os.environ, "QA_MODEL": str(TINY_MODEL)},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )

    in_images = demo(tmp_path / "images", "--engine", engine.name)
    assert in_images.returncode == 0, in_images.stdout + in_images.stderr
    assert f"steps run in the images ({engine.name})" in in_images.stdout
    assert (
        "demo: files=3 answers=10 rejected=0 answered_files_this_run=3 loads_this_run=1" in in_images.stdout
    )
    on_host = demo(tmp_path / "host")
    assert on_host.returncode == 0, on_host.stdout + on_host.stderr
    assert _answers_block(in_images.stdout) == _answers_block(on_host.stdout)
    again = demo(tmp_path / "images", "--engine", engine.name)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo: nothing changed since the last run: nothing answered, nothing written" in again.stdout
