"""Build a datum's environment from the spec, local overrides and secrets (pure).

Precedence, lowest first: the runner's own environment (PATH, HOME...), values from ``--env-file`` /
``./.env`` for variables the spec does not set, the spec's ``transform.env``, ``--env KEY=VAL``, secrets'
``env_var`` (looked up in --env, then the env files, then the process environment), and last Pachyderm's
own variables. On a cluster the spec's env is what the container gets, so neither the process
environment nor an env file (a stray ``.env``) overrides it: only an explicit ``--env`` does.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dotenv.parser import parse_stream

from .pathmap import PathMap
from .spec import PipelineSpec

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EnvFileError(ValueError):
    """A malformed line in an env file; names the file and line (never the value)."""


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """``KEY=VALUE`` lines in python-dotenv's format (``export``, ``#`` comments, quotes, escapes).

    Parsed by python-dotenv's own parser rather than ``dotenv_values``, which logs and skips a line it
    cannot read: here such a line, a key without ``=`` or a name that is no variable name is an error.
    """
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is None and not binding.error:
            continue  # blank line or comment
        if binding.error or binding.value is None or not _KEY.match(binding.key or ""):
            raise EnvFileError(f"{source}:{binding.original.line}: expected KEY=VALUE")
        values[binding.key] = binding.value
    return values


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``--env KEY=VAL`` flags."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
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
    plan = EnvPlan(dict(local.process), [])
    from_files = _add_env_files(plan, spec, local, secret_map)
    _add_spec_env(plan, spec, local, secret_map)
    for key, value in local.flags.items():
        plan.env[key] = secret_map.apply(value)
    from_files += _add_secrets(plan, spec, local, from_files)
    if from_files:
        plan.notes.append(
            f"taken from {local.file_names}: {', '.join(sorted(from_files))} (values not shown)"
        )
    for secret in spec.secrets:
        if secret.mount_path and secret.name not in local.secret_dirs:
            plan.notes.append(
                f"secret {secret.name!r} (mount_path {secret.mount_path}) has no local folder; skipped"
            )
    return plan


def _add_env_files(plan: EnvPlan, spec: PipelineSpec, local: LocalEnv, secret_map: PathMap) -> list[str]:
    """Env-file values for keys neither the spec, a secret nor ``--env`` sets; returns the keys taken."""
    secret_vars = {s.env_var for s in spec.secrets if s.env_var}
    taken: list[str] = []
    for key, value in local.files.items():
        if key in secret_vars or key in local.flags:
            continue
        if key in spec.env:
            plan.notes.append(
                f"{key} from {local.file_names} ignored: the spec's transform.env sets it "
                f"(pass --env {key}=... to override it locally)"
            )
            continue
        plan.env[key] = secret_map.apply(value)
        taken.append(key)
    return taken


def _add_spec_env(plan: EnvPlan, spec: PipelineSpec, local: LocalEnv, secret_map: PathMap) -> None:
    """The spec's ``transform.env``, except keys ``--env`` sets and values pointing into an unmapped
    secret mount (left unset, so clients fall back to their defaults)."""
    unmapped_mounts = [s for s in spec.secrets if s.mount_path and s.name not in local.secret_dirs]
    for key, value in spec.env.items():
        if key in local.flags:
            continue
        hits = [s for s in unmapped_mounts if secret_map.mentions(value, s.mount_path)]
        if hits:
            plan.env.pop(key, None)
            plan.notes.append(
                f"{key} left unset: it points into secret {hits[0].name!r} (mounted at "
                f"{hits[0].mount_path}), which has no local folder (--secret-dir {hits[0].name}=DIR)"
            )
            continue
        plan.env[key] = secret_map.apply(value)


def _add_secrets(plan: EnvPlan, spec: PipelineSpec, local: LocalEnv, from_files: list[str]) -> list[str]:
    """Each secret's ``env_var`` from ``--env``, the env files or the process; returns the keys that
    came from an env file and are not in ``from_files`` yet."""
    taken: list[str] = []
    for secret in spec.secrets:
        if not secret.env_var:
            continue
        found = local.lookup_secret(secret.env_var)
        if found is None:
            plan.notes.append(
                f"secret {secret.name!r}: {secret.env_var} not found in --env, env files "
                "or the environment; left unset"
            )
            continue
        plan.env[secret.env_var] = found[0]
        if found[1] == "file" and secret.env_var not in from_files + taken:
            taken.append(secret.env_var)
    return taken
