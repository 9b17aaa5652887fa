"""Image 2 has no torch: loading pg-load must never import the model stack (or numpy), nor the dev tools
in pachyderm_local (embedded services, tiny model) that the tests and the demo use."""

from __future__ import annotations

import subprocess
import sys


def test_import_graph_stays_free_of_torch_and_transformers():
    code = (
        "import sys, pg_load.cli, pg_load.store, pg_load.certs, psycopg2; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers', 'numpy', 'pachyderm_local')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]"
