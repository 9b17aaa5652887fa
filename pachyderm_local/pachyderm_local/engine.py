"""Run datums inside the spec's image (``run --engine podman|docker``) instead of on the host.

The runner prepares a datum's command and environment exactly as for a host run (``/pfs`` mapped to the
sandbox); ``ContainerEngine.wrap`` puts a launcher in front of it. The launcher (``python -m
pachyderm_local.engine``) runs when the command starts, so it also sees what is only known then (the
datum-batching socket): it maps the sandbox back to ``/pfs`` and each secret folder back to its
``mount_path``, mounts them, forwards only the variables Pachyderm would set (spec env, overrides, secrets,
Pachyderm's own) by name so values never reach an argv, and execs ``<engine> run`` of the spec's image with
``IMAGE_TAG`` replaced. A watchdog in its own session removes the container when the engine client ends
for any reason (success, failure, timeout kill, interrupt): killing the client alone would leave the
container running.

Host paths that a forwarded variable names and that exist (a key file, a Postgres socket folder) are
mounted at the same path, read-only; of a folder others may not enter, only its Unix sockets. The
batching socket's folder is mounted at ``/run/pachyderm-local`` with a stand-in ``pachctl`` at
``/usr/local/bin/pachctl``; ``/pfs/out`` is made writable for the image's user. The network is ``none``
unless ``--engine-network PIPELINE=MODE`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .batching import write_pachctl
from .batching_pachctl import SOCKET_ENV
from .pathmap import PathMap
from .spec import PfsInput, PipelineSpec, leaf_inputs

ENGINES = ("podman", "docker")
SOCKET_MOUNT = "/run/pachyderm-local"
_SYSTEM_FOLDERS = tuple(
    f"/{d}/" for d in ("usr", "lib", "lib64", "bin", "sbin", "etc", "opt", "proc", "sys", "dev")
)
PACHYDERM_VARS = (
    "PACH_JOB_ID",
    "PACH_DATUM_ID",
    "PACH_OUTPUT_COMMIT_ID",
    "FILESET_ID",
    "PPS_PIPELINE_NAME",
    "PPS_PROJECT_NAME",
    "PPS_SPEC_COMMIT",
    "PPS_POD_NAME",
)


@dataclass(frozen=True)
class ContainerEngine:
    """How datums run in containers: the engine CLI, the tag for ``IMAGE_TAG``, networks per pipeline."""

    command: str = "podman"
    image_tag: str = "local"
    networks: Mapping[str, str] = field(default_factory=dict)

    def image(self, spec: PipelineSpec) -> str:
        image = spec.raw.get("transform", {}).get("image", "")
        if not image:
            raise ValueError(f"pipeline {spec.name!r} has no transform.image to run in")
        return image.replace("IMAGE_TAG", self.image_tag)

    def wrap(
        self,
        spec: PipelineSpec,
        argv: list[str],
        *,
        pfs: Path,
        secret_dirs: Mapping[str, str],
        overrides: Iterable[str],
    ) -> list[str]:
        """The host argv that runs ``argv`` (already mapped to ``pfs``) in the spec's image."""
        # HOST=container path without its leading slash: with datum batching the runner maps the whole
        # command's /pfs and secret paths to local folders once more, and must leave these alone.
        mounts = [f"{pfs}=pfs"]
        mounts += [
            f"{secret_dirs[s.name]}={s.mount_path.lstrip('/')}"
            for s in spec.secrets
            if s.mount_path and s.name in secret_dirs
        ]
        keys = {*spec.env, *overrides, *(s.env_var for s in spec.secrets if s.env_var), *PACHYDERM_VARS}
        keys.add(SOCKET_ENV)
        for leaf in leaf_inputs(spec.input):
            if isinstance(leaf, PfsInput):
                keys.update({leaf.name, f"{leaf.name}_COMMIT"})
        launcher = [sys.executable, "-m", "pachyderm_local.engine", "--engine", self.command]
        launcher += ["--image", self.image(spec), "--network", self.networks.get(spec.name, "none")]
        launcher += [arg for mount in mounts for arg in ("--mount", mount)]
        launcher += [arg for key in sorted(keys) for arg in ("--env-key", key)]
        if spec.stdin:
            launcher.append("--interactive")
        return [*launcher, "--", *argv]

    def keep_mount(self, layout: Callable[[object, Path], None]) -> Callable[[object, Path], None]:
        """Wrap a layout function so ``pfs`` keeps its inode: a running container's mount stays live."""

        def stable_layout(datum: object, pfs: Path) -> None:
            staging = pfs.with_name(pfs.name + ".next")
            layout(datum, staging)
            pfs.mkdir(parents=True, exist_ok=True)
            for child in list(pfs.iterdir()):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            for child in list(staging.iterdir()):
                child.rename(pfs / child.name)
            staging.rmdir()
            open_for_image_user(pfs)

        return stable_layout


def engine_from_flags(engine: str | None, image_tag: str, networks: Iterable[str]) -> ContainerEngine | None:
    """``--engine``, ``--image-tag`` and ``--engine-network PIPELINE=MODE`` flags; None runs on the host."""
    pairs = {}
    for item in networks:
        pipeline, sep, mode = item.partition("=")
        if not sep or not pipeline or not mode:
            raise ValueError(f"--engine-network expects PIPELINE=MODE (none, host...), got {item!r}")
        pairs[pipeline] = mode
    if engine is None:
        if pairs:
            raise ValueError("--engine-network needs --engine")
        return None
    if shutil.which(engine) is None:
        raise ValueError(f"--engine {engine}: no {engine} command on PATH (make images installs podman)")
    return ContainerEngine(engine, image_tag, pairs)


def open_for_image_user(pfs: Path) -> None:
    """Inputs readable and ``out`` writable by the image's non-root user (uid 10001 here)."""
    for folder, _, names in os.walk(pfs):
        os.chmod(folder, 0o777 if Path(folder) == pfs / "out" else 0o755)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o644)


# --- the launcher: runs as the datum's command ------------------------------------------------------------


def container_argv(args: argparse.Namespace, env: Mapping[str, str], name: str) -> tuple[list[str], dict]:
    """``<engine> run`` for the launcher's arguments and environment; the client's environment."""
    pairs = {host: "/" + inside for host, _, inside in (mount.partition("=") for mount in args.mount)}
    to_container = PathMap.of({host: inside for host, inside in pairs.items()})
    volumes = [f"{host}:{inside}" for host, inside in pairs.items()]
    client_env = {k: v for k, v in env.items() if k not in args.env_key}
    forwarded = []
    for key in args.env_key:
        if key not in env:
            continue
        value = to_container.apply(env[key])
        if key == SOCKET_ENV:
            socket_dir = Path(value).parent
            socket_dir.chmod(0o711)
            Path(value).chmod(0o777)
            folder = Path(next(iter(pairs))).parent
            pachctl = write_pachctl(folder, "pachctl-in-container", "/usr/bin/env python3")  # image Python
            volumes += [f"{socket_dir}:{SOCKET_MOUNT}", f"{pachctl}:/usr/local/bin/pachctl:ro"]
            value = f"{SOCKET_MOUNT}/{Path(value).name}"
        elif value == env[key] and _names_host_path(value):
            volumes += _same_path_volumes(Path(value))
        client_env[key] = value
        forwarded += ["--env", key]
    pull = ["--pull=never"]
    argv = [args.engine, "run", "--rm", "--name", name, *pull, f"--network={args.network}"]
    argv += ["-i"] if args.interactive else []
    argv += [arg for volume in volumes for arg in ("--volume", volume)]
    argv += [*forwarded, args.image, *to_container.apply_all(args.command)]
    return argv, client_env


def _names_host_path(value: str) -> bool:
    """An existing host path outside the system folders an image brings its own of (never mounted over)."""
    if not value.startswith("/") or value.count("/") < 2 or value.startswith(_SYSTEM_FOLDERS):
        return False
    return Path(value).exists()


def _same_path_volumes(path: Path) -> list[str]:
    """A host path a variable names, at the same path. Of a folder others may not enter (a Postgres data
    folder holding its socket), only its Unix sockets, each mounted on its own."""
    if path.is_dir() and not path.stat().st_mode & 0o001:
        return [f"{s}:{s}" for s in sorted(path.iterdir()) if stat.S_ISSOCK(s.stat().st_mode)]
    return [f"{path}:{path}:ro"]


def _watchdog(engine: str, name: str) -> int:
    """Block until the engine client's pipe closes, then remove its container (gone already: no-op)."""
    sys.stdin.buffer.read()
    no_grace = ["--time", "0"] if engine == "podman" else []  # docker's rm -f kills at once
    subprocess.run([engine, "rm", "-f", *no_grace, name], capture_output=True, check=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The launcher's arguments, as ``ContainerEngine.wrap`` writes them."""
    parser = argparse.ArgumentParser(prog="python -m pachyderm_local.engine", description=__doc__)
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--image")
    parser.add_argument("--network", default="none")
    parser.add_argument("--mount", action="append", default=[], metavar="HOST=CONTAINER")
    parser.add_argument("--env-key", action="append", default=[], metavar="NAME")
    parser.add_argument("--interactive", action="store_true")
    parser.add_argument("--watchdog", metavar="CONTAINER_NAME", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.watchdog:
        return _watchdog(args.engine, args.watchdog)
    if not args.image or not args.mount or not args.command:
        parser.error("--image, --mount (the first is /pfs) and a command are required")
    name = f"pachyderm-local-{uuid.uuid4().hex[:12]}"
    run_argv, client_env = container_argv(args, os.environ, name)
    open_for_image_user(Path(args.mount[0].split("=", 1)[0]))
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-m", "pachyderm_local.engine", "--engine", args.engine, "--watchdog", name],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(read_end)
    os.set_inheritable(write_end, True)  # held by the engine client: closes when it ends, however
    os.execvpe(run_argv[0], run_argv, client_env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
