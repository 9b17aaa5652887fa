"""pachyderm-local's container engine, the parts that need no engine: the launcher command, the mapping back
to container paths, what reaches the container, and the layout that keeps a mounted /pfs alive.
Running the images themselves: tests/test_images.py (make image-test)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from pachyderm_local.datums import Datum, DatumInput
from pachyderm_local.engine import (
    ContainerEngine,
    build_parser,
    container_argv,
    engine_from_flags,
    open_for_image_user,
)
from pachyderm_local.envs import LocalEnv
from pachyderm_local.pathmap import PathMap
from pachyderm_local.runner import Runner, RunSettings
from pachyderm_local.spec import parse_spec
from pachyderm_local.store import Store

SPEC = {
    "pipeline": {"name": "load"},
    "input": {"pfs": {"repo": "answers", "glob": "/"}},
    "transform": {
        "image": "myorg/pachyderm-qa-load:IMAGE_TAG",
        "cmd": ["pg-load", "/pfs/answers"],
        "env": {"PG_SSLMODE": "verify-full", "CA": "/var/secrets/db/ca.pem"},
        "secrets": [
            {"name": "db", "key": "PG_PASSWORD", "env_var": "PG_PASSWORD"},
            {"name": "db", "mount_path": "/var/secrets/db"},
        ],
    },
}


def launcher_args(wrapped: list[str]):
    """The launcher's own parse of a wrapped command (after `python -m pachyderm_local.engine`)."""
    assert wrapped[1:3] == ["-m", "pachyderm_local.engine"]
    return build_parser().parse_args(wrapped[3:])


@pytest.fixture
def spec():
    return parse_spec(SPEC, "load.json")


def test_wrap_names_the_tagged_image_the_network_and_what_pachyderm_would_set(spec, tmp_path):
    engine = ContainerEngine("podman", "local", {"load": "host"})
    pfs = tmp_path / "sandbox" / "pfs"
    argv = engine.wrap(
        spec, ["pg-load", f"{pfs}/answers"], pfs=pfs, secret_dirs={"db": "/srv/db"}, overrides=["EXTRA"]
    )
    assert argv[argv.index("--image") + 1] == "myorg/pachyderm-qa-load:local"
    assert argv[argv.index("--network") + 1] == "host"
    assert argv[argv.index("--") + 1 :] == ["pg-load", f"{pfs}/answers"]
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert mounts == [f"{pfs}=pfs", "/srv/db=var/secrets/db"]
    keys = {argv[i + 1] for i, a in enumerate(argv) if a == "--env-key"}
    assert {"PG_SSLMODE", "CA", "PG_PASSWORD", "EXTRA", "PACH_JOB_ID", "answers", "answers_COMMIT"} <= keys
    assert "PATH" not in keys and "HOME" not in keys
    default = ContainerEngine().wrap(spec, ["x"], pfs=pfs, secret_dirs={}, overrides=[])
    assert default[default.index("--network") + 1] == "none"


def test_the_runners_second_mapping_leaves_the_launcher_alone(spec, tmp_path):
    """With datum batching the runner maps /pfs and secret paths over the whole wrapped command."""
    pfs = tmp_path / "worker-0" / "pfs"
    wrapped = ContainerEngine().wrap(
        spec, list(spec.cmd), pfs=pfs, secret_dirs={"db": "/srv/db"}, overrides=[]
    )
    remapped = PathMap.of({"/pfs": str(pfs), "/var/secrets/db": "/srv/db"}).apply_all(wrapped)
    split = wrapped.index("--")
    assert remapped[:split] == wrapped[:split]
    assert remapped[split + 1 :] == ["pg-load", f"{pfs}/answers"]


def test_the_container_sees_pfs_and_secret_paths_and_values_only_by_name(spec, tmp_path):
    pfs = tmp_path / "pfs"
    (pfs / "out").mkdir(parents=True)
    key_file = tmp_path / "key.json"
    key_file.write_text("{}")
    private = tmp_path / "pgdata"
    private.mkdir(mode=0o700)
    (private / "postgresql.conf").write_text("")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(private / ".s.PGSQL.5432"))
        wrapped = ContainerEngine().wrap(
            spec,
            ["pg-load", f"{pfs}/answers"],
            pfs=pfs,
            secret_dirs={"db": "/srv/db"},
            overrides=["K", "H", "LD_LIBRARY_PATH"],
        )
        args = launcher_args(wrapped)
        env = {
            "PATH": "/usr/bin",
            "PG_PASSWORD": "s3cret",
            "CA": "/srv/db/ca.pem",
            "answers": f"{pfs}/answers",
            "K": str(key_file),
            "H": str(private),
            "LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu",
        }
        argv, client_env = container_argv(args, env, "pachyderm-local-x")
    assert argv[:7] == [
        "podman",
        "run",
        "--rm",
        "--name",
        "pachyderm-local-x",
        "--pull=never",
        "--network=none",
    ]
    assert argv[-3:] == ["myorg/pachyderm-qa-load:local", "pg-load", "/pfs/answers"]
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert f"{pfs}:/pfs" in volumes and "/srv/db:/var/secrets/db" in volumes
    assert f"{key_file}:{key_file}:ro" in volumes
    sock_path = private / ".s.PGSQL.5432"
    assert f"{sock_path}:{sock_path}" in volumes and not any(v.startswith(f"{private}:") for v in volumes)
    assert not any(v.startswith("/usr/") for v in volumes)  # never over the image's own system folders
    assert "s3cret" not in " ".join(argv)  # values travel in the client's environment, named by --env
    assert argv[argv.index("PG_PASSWORD") - 1 : argv.index("PG_PASSWORD") + 1] == ["--env", "PG_PASSWORD"]
    assert client_env["PG_PASSWORD"] == "s3cret"
    assert client_env["CA"] == "/var/secrets/db/ca.pem" and client_env["answers"] == "/pfs/answers"
    assert "PATH" not in argv


def test_keep_mount_lays_out_each_datum_into_the_same_folder(tmp_path):
    def layout(datum, pfs: Path) -> None:  # what the runner's layout does: a fresh folder each time
        (pfs / "out").mkdir(parents=True)
        (pfs / "in").mkdir()
        (pfs / "in" / f"{datum}.csv").write_text(datum)

    pfs = tmp_path / "pfs"
    stable = ContainerEngine().keep_mount(layout)
    stable("a", pfs)
    inode = pfs.stat().st_ino
    (pfs / "out" / "written.csv").write_text("x")
    stable("b", pfs)
    assert pfs.stat().st_ino == inode
    assert sorted(p.relative_to(pfs).as_posix() for p in pfs.rglob("*")) == ["in", "in/b.csv", "out"]
    assert (pfs / "out").stat().st_mode & 0o777 == 0o777
    assert (pfs / "in" / "b.csv").stat().st_mode & 0o777 == 0o644


def test_open_for_image_user_leaves_inputs_read_only_for_others(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir(mode=0o700)
    (tmp_path / "in" / "q.csv").write_text("q")
    (tmp_path / "in" / "q.csv").chmod(0o600)
    open_for_image_user(tmp_path)
    assert [(p.name, p.stat().st_mode & 0o777) for p in sorted(tmp_path.rglob("*"))] == [
        ("in", 0o755),
        ("q.csv", 0o644),
        ("out", 0o777),
    ]


@pytest.mark.parametrize(
    ("engine", "networks", "error"),
    [
        (None, ["qa=host"], "--engine-network needs --engine"),
        ("podman", ["qa"], "--engine-network expects PIPELINE=MODE"),
        ("docker", [], "--engine docker: no docker command on PATH"),
    ],
)
def test_engine_flags_are_checked(engine, networks, error, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ValueError, match=error):
        engine_from_flags(engine, "local", networks)


def test_no_engine_flag_means_the_host():
    assert engine_from_flags(None, "local", []) is None


@pytest.mark.parametrize("engine", [None, ContainerEngine()])
def test_pfs_env_names_paths_where_the_user_code_sees_them(engine, tmp_path):
    """``/pfs/.env`` is how batched code learns its datum: inside a container its paths must be /pfs's."""
    runner = Runner(
        Store(tmp_path / "root"), LocalEnv(process={}), RunSettings(engine=engine), sys.stderr, None
    )
    datum = Datum((DatumInput("questions", "raw", "c1", "/a.csv", ()),))
    pfs = tmp_path / "sandbox" / "pfs"
    runner.lay_out("job1", pfs, datum)
    seen = "/pfs" if engine is not None else str(pfs)
    assert f"questions={seen}/questions/a.csv\n" in (pfs / ".env").read_text()
