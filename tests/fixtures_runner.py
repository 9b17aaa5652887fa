"""The local runner driven in-process, for the runner's tests: the ``pl`` fixture and toy specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pachyderm_local.cli import main


@pytest.fixture
def pl(tmp_path, capsys):
    """Run the CLI in-process against a fresh root; returns (exit code, stdout, stderr)."""
    root = tmp_path / "root"

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(["--root", str(root), *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    call.root = root  # type: ignore[attr-defined]
    return call


def write_spec(folder: Path, name: str, input_: dict, script: str, **extra) -> str:
    """A spec file whose transform is ``sh -c script``; returns its path."""
    spec = {"pipeline": {"name": name}, "input": input_, "transform": {"cmd": ["sh", "-c", script]}, **extra}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def make_files(folder: Path, files: dict[str, str]) -> Path:
    """``files`` (relative path -> text) under ``folder``; returns ``folder``."""
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder
