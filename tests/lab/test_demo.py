"""The README's demo command runs end to end and both modes agree on every step."""
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.needs_root
def test_demo_runs_both_modes_and_the_tables_agree(tmp_path):
    env = {"NATTRACK_RUN_DIR": str(tmp_path / "run"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    res = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "demo"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.count("=> the same entries") == 3, out
    assert "you came from 203.0.113.1:" in out                 # srv saw the router's address
    assert "TIME_WAIT" in out and "[ASSURED]" in out
    assert "Both labs were stopped" in out
    assert not list((tmp_path / "run").glob("*.sock"))         # nothing left listening
