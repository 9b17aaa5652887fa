"""The run, the CLI, the row results and the user errors of qa-answer load without torch or transformers."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = (
    "qa_answer.cli",
    "qa_answer.errors",
    "qa_answer.results",
    "qa_answer.answer_run",
    "qa_answer.settings",
    "qa_answer.sources",
    "qa_answer.datum_batching",
    "qa_answer.faults",
)


def test_types_errors_and_cli_import_without_torch_or_transformers():
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {TORCH_FREE!r}]; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]"
