"""The README stays true: every environment variable the code reads is in its table, its commands exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_NAME = re.compile(
    r"^(?:(?:QA|PG|GCS|PACH|PACHD|PACHYDERM|HF|GOOGLE|STORAGE|DEMO|DOCKERHUB)_[A-Z0-9_]+|DATABASE_URL|IMAGE_TAG"
    r"|QA_ANSWER_IMAGE|PG_LOAD_IMAGE)$"
)


def _python_sources() -> list[Path]:
    folders = ["pachyderm_01", "pachyderm_02", "pachyderm_local", "docker"]
    files = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    return [*files, *(ROOT / "scripts").glob("*.py"), ROOT / "scripts" / "deploy"]


def _env_names_in_code() -> set[str]:
    names = set()
    for path in _python_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.match(node.value):
                names.add(node.value)
    for script in (ROOT / "scripts").glob("*.sh"):
        found = re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script.read_text())
        names.update(n for n in found if ENV_NAME.match(n))
    return names


def _readme_table_names() -> set[str]:
    section = README.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))


def test_code_reads_the_variables_we_scan_for():
    names = _env_names_in_code()
    assert {"QA_MODEL", "PG_PASSWORD", "PG_SSLKEY", "STORAGE_EMULATOR_HOST", "PG_SSL_CLIENT_KEY"} <= names


def test_every_environment_variable_is_in_the_readme_table():
    missing = sorted(_env_names_in_code() - _readme_table_names() - {"PG_SSL_BINDIR"})  # tests only
    assert missing == []


@pytest.mark.parametrize("command", ["qa-answer", "pg-load", "pachyderm-local"])
def test_readme_commands_are_console_scripts(command):
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f"`{command}" in README
    assert re.search(rf"^{re.escape(command)} = ", pyproject, re.M)


def test_readme_first_screen_has_the_two_commands_and_they_exist_in_the_makefile():
    first_screen = "\n".join(README.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "tiny-model"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M)


def test_linked_docs_exist():
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link
