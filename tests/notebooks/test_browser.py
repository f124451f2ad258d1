"""A real browser: `nattrack notebook` serves JupyterLab, Debian's Chromium (driven by
Playwright, no browser download) opens 01-tcp-states, runs every cell, then uses the
first panel's buttons; the state diagram and the table must follow, with no
JavaScript error.  A screenshot is kept in artifacts/notebooks/01-tcp-states.png.

As root (CI) the notebook is live: a classroom lab with its own run directory, and
the launcher runs Jupyter (hence the kernel) as nobody.  Without root: replay mode.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import lab_down, lab_up
from .nbrun import REPO

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOT = REPO / "artifacts" / "notebooks" / "01-tcp-states.png"
# Console messages that are not errors of the page: Chromium's own complaint when it
# cannot reach the (disabled) Google services is the only one tolerated.
BENIGN = (re.compile(r"^Failed to load resource: net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED)"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launcher:
    """`nattrack notebook --no-lab` in the background; its URL once it is ready."""

    def __init__(self, env: dict, port: int) -> None:
        argv = [sys.executable, "-m", "nattrack.cli.main", "notebook", "--no-lab",
                "--port", str(port)]
        if os.geteuid() == 0:
            argv += ["--user", "nobody"]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, start_new_session=True, cwd=str(REPO))
        self.url = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            m = re.search(r"(http://\S+/lab\?token=\w+)", line or "")
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            self.log.seek(0)
            raise AssertionError(f"nattrack notebook did not print its URL: {self.log.read()[-2000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)            # what Ctrl-C does
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def jupyter_pids(port: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"jupyterlab" in b" ".join(cmd) and f"--port={port}".encode() in cmd:
                out.append(int(d.name))
    return out


@pytest.fixture
def served():
    """(launcher, mode): JupyterLab on a free port, live as root, else replay."""
    port = free_port()
    env = dict(os.environ)
    env.pop("NATTRACK_LAB_SOCK", None)
    lab = None
    if os.geteuid() == 0:
        lab = lab_up()
        env["NATTRACK_RUN_DIR"] = str(lab.run_dir)
        mode = "live"
    else:
        env["NATTRACK_RUN_DIR"] = tempfile.mkdtemp(prefix="ntnb-nolab-")
        env["NATTRACK_NOTEBOOK_MODE"] = "replay"
        mode = "replay"
    try:
        launcher = Launcher(env, port)
        try:
            yield launcher, mode
        finally:
            rc = launcher.stop()
            assert rc == 0, f"the launcher exited with {rc}"
            assert jupyter_pids(port) == [], "JupyterLab left running"
    finally:
        if lab is not None:
            lab_down(lab)


def test_tcp_states_in_chromium(served):
    from playwright.sync_api import sync_playwright
    launcher, mode = served
    base, token = launcher.url.split("/lab?token=")
    errors: list[str] = []
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    SHOT.with_name("01-tcp-states-failure.png").unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            try:
                drive(page, base, token, mode)
            except Exception:
                page.screenshot(path=str(SHOT.with_name("01-tcp-states-failure.png")))
                raise
        finally:
            browser.close()
    real = [e for e in errors if not any(b.search(e) for b in BENIGN)]
    assert real == [], f"JavaScript errors: {real}"
    assert SHOT.stat().st_size > 10_000


def kernel_ready(page, base: str, token: str) -> None:
    """The notebook's kernel is started and idle, server side and in the page."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = page.request.get(f"{base}/api/sessions?token={token}")
        sessions = [x for x in r.json() if x.get("path", "").endswith("01-tcp-states.ipynb")]
        if sessions and (sessions[0].get("kernel") or {}).get("execution_state") == "idle":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the notebook's kernel did not start")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def run_all(page) -> None:
    """Run > Run All Cells, until the first code cell has run (JupyterLab ignores the
    command while its session is still connecting to a kernel the server already has)."""
    first = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_function("el => /\\[(\\d+|\\*)\\]/.test(el.textContent)",
                                   arg=first.element_handle(), timeout=10_000)
            return
        except Exception:                                   # noqa: BLE001 -- try again
            continue
    raise AssertionError("Run All Cells ran nothing three times")


def drive(page, base: str, token: str, mode: str) -> None:
    page.goto(f"{base}/lab/tree/01-tcp-states.ipynb?reset&token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    kernel_ready(page, base, token)
    run_all(page)

    banner = page.locator(f"[data-view='mode'][data-mode='{mode}']")
    banner.wait_for(state="attached", timeout=60_000)
    diagram = page.locator("[data-view='diagram']").first
    table = page.locator("[data-view='table']").first
    # run_all() of the first panel ends in TIME_WAIT, on the diagram and in the table
    page.locator("[data-view='diagram'][data-state='TIME_WAIT']").first.wait_for(
        state="attached", timeout=120_000)
    page.wait_for_function(
        "() => !Array.from(document.querySelectorAll('.jp-InputPrompt'))"
        ".some(p => p.textContent.includes('*'))", timeout=180_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=60_000)
    assert table.get_attribute("data-states") == "TIME_WAIT"

    # the buttons: reset, then three times "next step": the handshake
    panel = page.locator(".jp-OutputArea-output").filter(has=diagram).first
    panel.get_by_role("button", name="reset").click()
    page.wait_for_function(
        "() => document.querySelector(\"[data-view='diagram']\")"
        ".getAttribute('data-state') === ''", timeout=30_000)
    seen = []
    for _ in range(3):
        panel.get_by_role("button", name="next step ▶").click()
        page.wait_for_function(
            "n => document.querySelector(\"[data-view='steps']\")"
            ".getAttribute('data-steps').split(',').filter(x => x).length === n",
            arg=len(seen) + 1, timeout=30_000)
        seen.append(diagram.get_attribute("data-state"))
    assert seen == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"]
    assert diagram.get_attribute("data-transition") == "SYN_RECV>ESTABLISHED"
    assert table.get_attribute("data-states") == "ESTABLISHED"
    panel.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOT))
