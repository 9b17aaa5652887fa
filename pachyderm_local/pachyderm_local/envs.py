"""Build a datum's environment from the spec, local overrides and secrets (pure).

Precedence, lowest first: the runner's own environment (PATH, HOME...), values from ``--env-file`` /
``./.env`` for variables the spec does not set, the spec's ``transform.env``, ``--env KEY=VAL``, secrets'
``env_var`` (looked up in --env, then the env files, then the process environment), and last Pachyderm's
own variables. On a cluster the spec's env is what the container gets, so neither the process
environment nor an env file (a stray ``.env``) overrides it: only an explicit ``--env`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .pathmap import PathMap
from .spec import PipelineSpec

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class EnvFileError(ValueError):
    """A malformed line in an env file; names the file and line (never the value)."""


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` allowed, ``#`` comments, optional single or double quotes)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise EnvFileError(f"{source}:{number}: expected KEY=VALUE")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``--env KEY=VAL`` flags."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise EnvFileError(f"--env expects KEY=VALUE, got {key!r}")
        values[key] = value
    return values


@dataclass(frozen=True)
class LocalEnv:
    """Everything local that feeds a datum's environment."""

    process: Mapping[str, str]
    files: Mapping[str, str] = field(default_factory=dict)  # merged --env-file / .env
    flags: Mapping[str, str] = field(default_factory=dict)  # --env
    secret_dirs: Mapping[str, str] = field(default_factory=dict)  # secret name -> local folder
    file_names: str = "env file"  # how notes name the env files, e.g. "./.env"

    def lookup_secret(self, key: str) -> tuple[str, str] | None:
        """(value, where it came from) of a secret's variable."""
        for source, origin in ((self.flags, "--env"), (self.files, "file"), (self.process, "process")):
            if key in source:
                return source[key], origin
        return None


@dataclass
class EnvPlan:
    """The environment shared by all datums of a job, plus what was left out and why."""

    env: dict[str, str]
    notes: list[str]


def effective_spec_env(spec: PipelineSpec, local: LocalEnv) -> dict[str, str]:
    """Spec env after explicit ``--env`` overrides: used for the spec version too."""
    return {k: local.flags.get(k, v) for k, v in spec.env.items()}


def job_env(spec: PipelineSpec, local: LocalEnv, secret_map: PathMap) -> EnvPlan:
    """The environment for every datum of ``spec`` (before Pachyderm's per-datum variables)."""
    notes: list[str] = []
    env = dict(local.process)
    secret_vars = {s.env_var for s in spec.secrets if s.env_var}
    unmapped_mounts = [s for s in spec.secrets if s.mount_path and s.name not in local.secret_dirs]
    from_files: list[str] = []
    for key, value in local.files.items():
        if key in spec.env and key not in secret_vars:
            if key not in local.flags:
                notes.append(
                    f"{key} from {local.file_names} ignored: the spec's transform.env sets it "
                    f"(pass --env {key}=... to override it locally)"
                )
            continue
        if key not in secret_vars and key not in local.flags:
            env[key] = secret_map.apply(value)
            from_files.append(key)
    for key, value in spec.env.items():
        if key in local.flags:
            continue
        hits = [s for s in unmapped_mounts if secret_map.mentions(value, s.mount_path)]
        if hits:
            env.pop(key, None)
            notes.append(
                f"{key} left unset: it points into secret {hits[0].name!r} (mounted at "
                f"{hits[0].mount_path}), which has no local folder (--secret-dir {hits[0].name}=DIR)"
            )
            continue
        env[key] = secret_map.apply(value)
    for key, value in local.flags.items():
        env[key] = secret_map.apply(value)
    for secret in spec.secrets:
        if secret.env_var:
            found = local.lookup_secret(secret.env_var)
            if found is None:
                notes.append(
                    f"secret {secret.name!r}: {secret.env_var} not found in --env, env files "
                    "or the environment; left unset"
                )
            else:
                env[secret.env_var] = found[0]
                if found[1] == "file" and secret.env_var not in from_files:
                    from_files.append(secret.env_var)
    if from_files:
        notes.append(f"taken from {local.file_names}: {', '.join(sorted(from_files))} (values not shown)")
        if secret.mount_path and secret.name not in local.secret_dirs:
            notes.append(
                f"secret {secret.name!r} (mount_path {secret.mount_path}) has no local folder; skipped"
            )
    return EnvPlan(env, notes)
