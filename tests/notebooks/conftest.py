"""Fixtures for the notebook tests: the kernel's user, and a live classroom lab.

Live tests need root (they build the lab's namespaces): without root they are
skipped, unless CI is set, where they fail (and the repository's conftest turns any
skip into a failure under CI as root).  The lab runs with its own run directory
(NATTRACK_RUN_DIR), like tests/lab does, so a lab someone has up is never touched.
"""
from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nbrun import REPO, KernelUser, user_kernel


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need_root(what: str) -> None:
    if os.geteuid() == 0:
        return
    if in_ci():
        pytest.fail(f"{what} needs root (the lab's namespaces); CI must run it as root",
                    pytrace=False)
    pytest.skip(f"{what} needs root; run as root (CI=true makes this a failure)")


@pytest.fixture(scope="session")
def replay_user():
    """The kernel as nobody (root runner) or as the current user."""
    u = user_kernel()
    yield u
    if u.home:
        shutil.rmtree(u.home, ignore_errors=True)


@dataclass
class LiveLab:
    run_dir: Path
    env: dict
    user: KernelUser
    up_seconds: float = 0.0

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nattrack.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd="/")


def lab_up() -> LiveLab:
    """The notebooks' lab (topology and mode as `nattrack notebook` starts it)."""
    import time
    from nattrack.cli.notebook import lab_wanted
    topo, mode = lab_wanted()
    run_dir = Path(tempfile.mkdtemp(prefix="ntnb-lab-", dir="/tmp"))
    os.chmod(run_dir, 0o755)                   # the unprivileged kernel reaches the socket
    env = dict(os.environ, NATTRACK_RUN_DIR=str(run_dir), PYTHONPATH=str(REPO))
    env.pop("NATTRACK_LAB_SOCK", None)
    lab = LiveLab(run_dir, env, KernelUser())
    t0 = time.monotonic()
    r = lab.cli("lab", "up", "--topo", topo, "--mode", mode)
    lab.up_seconds = time.monotonic() - t0
    if r.returncode != 0:
        lab_down(lab)
        raise RuntimeError(f"lab up --topo {topo} --mode {mode} failed: {r.stderr.strip()}")
    lab.user = user_kernel(extra_gids=(grp.getgrnam("nattrack").gr_gid,))
    return lab


def lab_down(lab: LiveLab) -> None:
    if (lab.run_dir / "lab.sock").exists():
        lab.cli("lab", "down", timeout=60)
    lab.cli("lab", "down", "--force", timeout=60)
    shutil.rmtree(lab.run_dir, ignore_errors=True)
    if lab.user.home:
        shutil.rmtree(lab.user.home, ignore_errors=True)


@pytest.fixture(scope="module")
def live_lab():
    need_root("a live notebook run")
    try:
        lab = lab_up()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield lab
    finally:
        lab_down(lab)
