"""Gate and fixtures for the live-lab tests.

Tests marked ``needs_root`` build Mininet networks: without root they are skipped
when CI is unset and fail when it is set (the repository's conftest.py also turns
any skip into a failure under CI as root).  Every lab here runs with its own run
directory (NATTRACK_RUN_DIR), so a lab someone has up on the machine is never
touched, and a force cleanup only sees what these tests started.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _is_root() -> bool:
    return os.geteuid() == 0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_root: builds network namespaces (root)")


@pytest.fixture(autouse=True)
def _root_gate(request):
    if request.node.get_closest_marker("needs_root") is None or _is_root():
        return
    if _in_ci():
        pytest.fail("live-lab tests need root (Mininet, namespaces); CI must run them as root",
                    pytrace=False)
    pytest.skip("live-lab tests need root; run as root (CI=true makes this a failure)")


class Lab:
    """Runs the nattrack CLI against one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.env = dict(os.environ, NATTRACK_RUN_DIR=str(run_dir), PYTHONPATH=str(REPO))
        self.env.pop("NATTRACK_LAB_SOCK", None)

    @property
    def sock(self) -> Path:
        return self.run_dir / "lab.sock"

    def cli(self, *args: str, timeout: float = 120, input: str | None = None,
            user: int | None = None, groups: str | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "nattrack.cli.main", *args]
        env = self.env
        if user is not None:
            # An unprivileged user may not be able to enter the checkout (a clone under a
            # 0700 directory): give it a world-readable copy of the package, as an
            # installed kit would be, and the system Python.
            env = dict(env, PYTHONPATH=str(readable_package_copy()))
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}",
                    f"--groups={groups}" if groups else "--clear-groups", "--",
                    "/usr/bin/python3", "-m", "nattrack.cli.main", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env, input=input, cwd="/")

    def state(self) -> dict:
        try:
            return json.loads((self.run_dir / "lab.json").read_text())
        except (OSError, ValueError):
            return {}

    def client(self):
        from nattrack.lab.client import LabClient
        return LabClient(self.sock)

    def paths(self):
        from nattrack.lab import Paths
        return Paths(self.run_dir)


_PACKAGE_COPY: list[Path] = []


def readable_package_copy() -> Path:
    """A world-readable copy of nattrack/ (made once per test run, removed at exit)."""
    if not _PACKAGE_COPY:
        d = Path(tempfile.mkdtemp(prefix="ntpkg-", dir="/tmp"))
        shutil.copytree(REPO / "nattrack", d / "nattrack",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
        atexit.register(shutil.rmtree, d, True)
        _PACKAGE_COPY.append(d)
    return _PACKAGE_COPY[0]


def make_run_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="ntlab-", dir="/tmp"))
    os.chmod(d, 0o755)                       # unprivileged clients must reach the socket
    return d


def stop_lab(lab: Lab) -> None:
    if lab.sock.exists():
        lab.cli("lab", "down", timeout=60)
    if _is_root():
        lab.cli("lab", "down", "--force", timeout=60)


@pytest.fixture(scope="module")
def basic_lab():
    """One basic lab (python mode) shared by a module's tests."""
    if not _is_root():
        if _in_ci():
            pytest.fail("live-lab tests need root", pytrace=False)
        pytest.skip("live-lab tests need root; run as root (CI=true makes this a failure)")
    lab = Lab(make_run_dir())
    t0 = time.monotonic()
    up = lab.cli("lab", "up", "--topo", "basic")
    lab.up_seconds = time.monotonic() - t0
    lab.up_result = up
    if up.returncode != 0:
        stop_lab(lab)
        pytest.fail(f"lab up failed: {up.stderr.strip()}", pytrace=False)
    try:
        yield lab
    finally:
        stop_lab(lab)
        shutil.rmtree(lab.run_dir, ignore_errors=True)


@pytest.fixture
def fresh_lab():
    """A run directory of its own; whatever the test starts is cleared afterwards."""
    lab = Lab(make_run_dir())
    try:
        yield lab
    finally:
        stop_lab(lab)
        shutil.rmtree(lab.run_dir, ignore_errors=True)


def lab_leftovers(lab: Lab, netns: list[int]) -> dict:
    """Processes with this lab's marker or in its namespaces, prefixed root interfaces."""
    from nattrack.lab.cleanup import root_leftover_ifaces
    from nattrack.lab.procs import environ_marker, netns_inode, pids
    marked, in_ns = [], []
    for pid in pids():
        m = environ_marker(pid)
        if m is not None and m.rpartition("#")[0] == str(lab.run_dir):
            marked.append(pid)
        elif netns and netns_inode(pid) in set(netns):
            in_ns.append(pid)
    return {"marked": marked, "in_netns": in_ns, "ifaces": root_leftover_ifaces()}
