"""``qa-answer answer --datum-batching``: one model load, then a datum per ``pachctl next datum``.

A stand-in ``pachctl`` plays Pachyderm's worker: each call saves the previous datum's output, lays out
the next CSV under the same IN_DIR / OUT_DIR, and after the last one kills qa-answer (as the worker does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from contract_readers import read_answers

WORKER = """#!{python}
import os, shutil, signal, sys
from pathlib import Path
state = Path({state!r}); inputs = {inputs!r}; in_dir = Path({in_dir!r}); out_dir = Path({out_dir!r})
calls = int(state.read_text()) if state.exists() else 0
if calls:  # the previous datum is done: keep its output, as the worker commits it
    shutil.copytree(out_dir, state.parent / f"datum-{{calls}}", dirs_exist_ok=True)
state.write_text(str(calls + 1))
if calls == len(inputs):
    os.kill(os.getppid(), signal.SIGKILL)
    sys.exit(0)
for folder in (in_dir, out_dir):
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
name, text = inputs[calls]
(in_dir / name).write_text(text)
"""


def _script(folder: Path, text: str) -> Path:
    path = folder / "pachctl"
    path.write_text(text)
    path.chmod(0o755)
    return path


def _qa_answer(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("qa-answer", path=str(Path(sys.executable).parent))
    assert exe
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)


def _env(tiny_qa_model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env.update(QA_MODEL=str(tiny_qa_model_dir), **extra)
    return env


def test_two_datums_with_one_model_load(tmp_path, tiny_qa_model_dir):
    in_dir, out_dir, work = tmp_path / "pfs" / "in", tmp_path / "pfs" / "out", tmp_path / "worker"
    work.mkdir()
    inputs = [
        ("first.csv", "question,context\nWhere is Paris?,Paris is in France.\n"),
        ("second.csv", "question,context\nWho?,Marie Curie did.\nWhat?,A bridge.\n"),
    ]
    pachctl = _script(
        work,
        WORKER.format(
            python=sys.executable,
            state=str(work / "calls"),
            inputs=inputs,
            in_dir=str(in_dir),
            out_dir=str(out_dir),
        ),
    )
    result = _qa_answer(
        ["answer", str(in_dir), str(out_dir), "--datum-batching"],
        _env(tiny_qa_model_dir, QA_PACHCTL=str(pachctl)),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr  # stopped by the worker, as in Pachyderm
    assert result.stderr.count("loaded model") == 1, result.stderr
    assert [line.split()[1:4] for line in result.stdout.splitlines()] == [
        ["files=1", "unreadable_files=0", "rows=1"],
        ["files=1", "unreadable_files=0", "rows=2"],
    ]
    for number, (name, _) in enumerate(inputs, start=1):
        datum_out = work / f"datum-{number}"
        assert sorted(p.name for p in (datum_out / "answers").iterdir()) == [name]
        with (datum_out / "answers" / name).open(encoding="utf-8", newline="") as stream:
            assert len(list(read_answers(stream))) == number


def test_env_switch_and_a_failing_pachctl_is_a_clear_error(tmp_path, tiny_qa_model_dir):
    pachctl = _script(tmp_path, "#!/bin/sh\nexit 3\n")
    env = _env(tiny_qa_model_dir, QA_PACHCTL=str(pachctl), QA_DATUM_BATCHING="1")
    result = _qa_answer(["answer", str(tmp_path / "not-yet"), str(tmp_path / "out")], env)
    assert result.returncode == 1
    assert f"qa-answer: error: '{pachctl} next datum' exited with code 3" in result.stderr
    assert result.stdout == ""
