"""What the grading tests share: the kit's CLI run as a user runs it, and a scratch folder
others may enter (the sandboxed worker runs as another uid)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def nattrack(*args, cwd="/", env=None) -> subprocess.CompletedProcess:
    """``python -m nattrack.cli.main ARGS`` from ``cwd``, this checkout importable."""
    return subprocess.run([sys.executable, "-m", "nattrack.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def scratch(prefix: str):
    """A fresh 0755 folder, removed afterwards: ``yield from scratch("nt-x-")`` in a fixture."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
