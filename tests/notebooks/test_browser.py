"""A real browser, as a class uses the notebooks: `nattrack notebook` serves JupyterLab,
Debian's Chromium (driven by Playwright, no browser download) opens all six notebooks
in one JupyterLab on one lab, runs them in the order 00, 02, 01, 04, 03, 05 (each one's
kernel stays open, with its event streams, while the others change rules and
settings), then clicks through 01's first panel again, in 03 presses the time
buttons between steps, and in 05 presses steps out of order and changes the kernel.  Asserted on what the widgets show (their ``data-*``): no panel
in error, every step's text agrees with its table (and, in the scripted order, with
the script), the end of a scenario is said, and reset leaves nothing behind; no
JavaScript error.  A screenshot is kept in artifacts/notebooks/01-tcp-states.png.

As root (CI) the notebooks are live: a classroom lab with its own run directory, and
the launcher runs Jupyter (hence the kernels) as nobody.  Without root: replay mode.
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


ORDER = ["00-welcome", "02-snat", "01-tcp-states", "04-related-and-invalid", "03-timeouts",
         "05-incidents"]
TITLES = {"00-welcome": "Welcome: the lab", "01-tcp-states": "TCP states: SYN, ACK, FIN",
          "02-snat": "SNAT: what the router rewrites", "03-timeouts": "Timeouts: countdowns",
          "04-related-and-invalid": "RELATED and INVALID",
          "05-incidents": "Incidents: the DNS race"}
# 05 runs on the engine only (nattrack.notebook.incidents): its panels, not a session's.
ENGINE_PANELS = {"05-incidents": ["dns-race", "dns-race-snat", "stale-udp"]}
RUN_ALL_S = 300            # one notebook's Run All, live (03 waits about a minute)

# Every panel of the page (or of one notebook) as data: its views' data-* attributes.
PANELS_JS = """
(root) => Array.from(root.querySelectorAll("[data-view='steps']")).map(steps => {
  const panel = steps.closest('.jp-OutputArea-output');
  const data = el => el ? Object.fromEntries(el.getAttributeNames()
      .filter(n => n.startsWith('data-')).map(n => [n.slice(5), el.getAttribute(n)])) : null;
  const one = sel => data(panel.querySelector(sel));
  return {steps: data(steps), explain: one("[data-view='explain']"),
          table: one(".nattrack-role-table [data-view='table']"),
          rows: Array.from(panel.querySelectorAll(
              ".nattrack-role-table [data-view='table'] tr[data-flow]")).map(data),
          packet: one(".nattrack-role-packet [data-view='packet']"),
          events: one(".nattrack-role-events [data-view='events']"),
          diagram: one(".nattrack-role-diagram [data-view='diagram']"),
          compare: one(".nattrack-role-compare [data-view='compare']"),
          clock: one("[data-view='clock']"),
          cpus: one("[data-view='cpus']"), race: one("[data-view='race-timeline']"),
          busy: panel.querySelectorAll('button:disabled').length > 0,
          note: (panel.querySelector('[data-note]') || {getAttribute: () => ''})
                .getAttribute('data-note') || '',
          errors: Array.from(panel.querySelectorAll('[data-error], .nt-err'))
                       .map(e => e.textContent.trim())};
})
"""


def test_five_notebooks_in_one_jupyterlab(served):
    from playwright.sync_api import sync_playwright
    launcher, mode = served
    base, token = launcher.url.split("/lab?token=")
    errors: list[str] = []
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    SHOT.with_name("01-tcp-states-failure.png").unlink(missing_ok=True)
    t0 = time.monotonic()
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
    print(f"five notebooks, {mode}, in Chromium: {time.monotonic() - t0:.0f} s")
    real = [e for e in errors if not any(b.search(e) for b in BENIGN)]
    assert real == [], f"JavaScript errors: {real}"
    assert SHOT.stat().st_size > 10_000


# -- JupyterLab -----------------------------------------------------------------------------

def notebook(page, name: str):
    """The notebook's panel (its DOM stays attached while another tab is in front)."""
    return page.locator(".jp-NotebookPanel").filter(has_text=TITLES[name])


def kernels_ready(page, base: str, token: str, names: list[str]) -> None:
    """Every named notebook has a started, idle kernel."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = page.request.get(f"{base}/api/sessions?token={token}")
        idle = {Path(x.get("path", "")).stem for x in r.json()
                if (x.get("kernel") or {}).get("execution_state") == "idle"}
        if set(names) <= idle:
            return
        time.sleep(0.3)
    raise AssertionError(f"the kernels did not all start: {names}")


def open_all(page, base: str, token: str) -> None:
    """00 by its URL, the others from the file browser, each in its own tab."""
    page.goto(f"{base}/lab/tree/{ORDER[0]}.ipynb?reset&token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    for name in ORDER[1:]:
        page.locator(".jp-DirListing-item", has_text=f"{name}.ipynb").first.dblclick()
        notebook(page, name).wait_for(state="attached", timeout=60_000)
    kernels_ready(page, base, token, ORDER)


def front(page, name: str) -> None:
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=f"{name}.ipynb").first.click()
    notebook(page, name).wait_for(state="visible", timeout=30_000)


def run_all(page, name: str) -> None:
    """Run > Run All Cells in the notebook in front, until every code cell has run
    (JupyterLab ignores the command while its session is still connecting)."""
    nb = notebook(page, name)
    prompts = nb.locator(".jp-CodeCell .jp-InputPrompt")
    for _ in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_function("el => /\\[(\\d+|\\*)\\]/.test(el.textContent)",
                                   arg=prompts.first.element_handle(), timeout=10_000)
            break
        except Exception:                                   # noqa: BLE001 -- try again
            continue
    else:
        raise AssertionError(f"Run All Cells ran nothing three times in {name}")
    page.wait_for_function(
        "els => els.every(p => /\\[\\d+\\]/.test(p.textContent))",
        arg=prompts.element_handles(), timeout=RUN_ALL_S * 1000)
    tracebacks = nb.locator("[data-mime-type='application/vnd.jupyter.stderr']")
    assert tracebacks.count() == 0, f"{name}: {tracebacks.first.inner_text()[:2000]}"


def panels(page, name: str | None = None) -> list[dict]:
    root = notebook(page, name) if name else page.locator("body")
    return root.first.evaluate(PANELS_JS)


def panel_of(page, scenario: str) -> dict:
    found = [p for p in panels(page) if p["steps"]["scenario"] == scenario]
    assert len(found) == 1, f"{len(found)} panels for {scenario}"
    return found[0]


def output_of(page, scenario: str):
    return page.locator(".jp-OutputArea-output").filter(
        has=page.locator(f"[data-view='steps'][data-scenario='{scenario}']"))


def press(page, scenario: str, button: str, expect: str, timeout: float = 60) -> dict:
    """Press one of a panel's buttons, then wait until its buttons are enabled again (the
    press is over, every view drawn) and ``expect`` (JS, on the panel's data as
    PANELS_JS gives it: ``p``) holds; the panel's data."""
    output_of(page, scenario).get_by_role("button", name=button, exact=True).click()
    page.wait_for_function(
        f"""sc => {{ const p = ({PANELS_JS})(document.body).find(
                 x => x.steps.scenario === sc);
             return p && (p.errors.length > 0 || (!p.busy && ({expect}))); }}""",
        arg=scenario, timeout=timeout * 1000)
    p = panel_of(page, scenario)
    assert p["errors"] == [], f"{scenario}, {button}: {p['errors']}"
    return p


# -- what every panel must show ---------------------------------------------------------------

def steps_done(p: dict) -> list[str]:
    return [x for x in (p["steps"].get("steps") or "").split(",") if x]


def agrees(p: dict, where: str, timer_runs: bool = False) -> None:
    """The step's text and the table say the same about the step's entry."""
    e = p["explain"]
    rows = [r for r in p["rows"] if e["flow"] and r["flow"] == e["flow"]]
    if e["present"] == "false":
        assert rows == [], f"{where}: the text says no entry, the table has {rows}"
        return
    assert len(rows) == 1, f"{where}: the text's entry {e['flow']!r} is not in {p['rows']}"
    row = rows[0]
    assert row["state"] == e["state"], (where, row, e)
    assert set(row["flags"].split()) >= set(e["flags"].split()), (where, row, e)
    drift = int(e["timeout"]) - int(row["timeout"])
    assert 0 <= drift <= (60 if timer_runs else 1), (where, row, e)
    if p["diagram"] is not None and e["state"]:
        assert p["diagram"]["state"] == e["state"], (where, p["diagram"], e)


def nothing_left(p: dict, where: str) -> None:
    assert steps_done(p) == [], where
    assert p["table"]["entries"] == "0" and p["rows"] == [], (where, p["table"])
    assert "before" not in p["packet"] and p["packet"]["changed"] == "", (where, p["packet"])
    assert p["events"]["events"] == "0", (where, p["events"])
    assert p["explain"]["step"] == "", (where, p["explain"])
    if p["diagram"] is not None:
        assert p["diagram"]["state"] == "", (where, p["diagram"])
    if p["compare"] is not None:
        assert p["compare"]["python"] == "0" and p["compare"]["kernel"] == "0", p["compare"]


def drive(page, base: str, token: str, mode: str) -> None:
    open_all(page, base, token)
    for name in ORDER:                            # Run All, one notebook after the other
        front(page, name)
        run_all(page, name)
        page.locator(f"[data-view='mode'][data-mode='{mode}']").first.wait_for(
            state="attached", timeout=30_000)
    from nattrack.notebook.scenarios import SCENARIOS
    for name in ORDER:                            # the scripted order: no panel in error, ...
        found = panels(page, name)
        assert sorted(p["steps"]["scenario"] for p in found) == sorted(
            ENGINE_PANELS.get(name) or [x.name for x in SCENARIOS[name]]), (
                name, [p["steps"] for p in found])
        for p in found:
            where = f"{name}/{p['steps']['scenario']} after Run All"
            assert p["errors"] == [], f"{where}: {p['errors']}"
            assert p["explain"]["end"] == "true", (where, p["explain"])
            if name in ENGINE_PANELS:
                continue
            assert p["explain"]["differs"] == "false", (where, p["explain"])
            agrees(p, where, timer_runs=name == "03-timeouts")

    # 01 again, by hand: every step's text agrees with its table; the end is said
    front(page, "01-tcp-states")
    sc = "handshake"
    nothing_left(press(page, sc, "reset", "p.steps.steps === ''"), "01 reset")
    names = ["SYN", "SYN-ACK", "ACK", "data", "data-ACK", "FIN", "FIN-ACK", "FIN2", "last-ACK"]
    for i, step in enumerate(names):
        p = press(page, sc, "next step ▶", f"p.steps.steps.split(',').length === {i + 1}"
                  f" && p.explain.step === {step!r}")
        agrees(p, f"01/{sc}/{step} by hand")
        if step == "data":
            assert p["explain"]["timeout-key"] == "nf_conntrack_tcp_timeout_unacknowledged", p
    assert p["explain"]["end"] == "true" and p["explain"]["differs"] == "false", p["explain"]
    p = press(page, sc, "next step ▶", "p.note.includes('the scenario is over')")
    assert steps_done(p) == names                  # no silent start over
    output_of(page, sc).evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOT))
    nothing_left(press(page, sc, "reset", "p.steps.steps === ''"), "01 reset after the end")

    # 03, with time let pass between the steps: the text says what happened
    front(page, "03-timeouts")
    sc = "udp-assured"
    nothing_left(press(page, sc, "reset", "p.steps.steps === ''"), "03 reset")
    p = press(page, sc, "question", "p.explain.step === 'question'")
    agrees(p, "03 question")
    p = press(page, sc, "+1 s", "p.clock && p.clock.waited === '1'", timeout=30)
    assert p["clock"]["left"] == p["rows"][0]["timeout"], p           # the views move together
    assert p["compare"]["same"] == "true", p["compare"]
    p = press(page, sc, "answer", "p.explain.step === 'answer'")
    agrees(p, "03 answer")
    assert p["explain"]["differs"] == "false", p["explain"]
    p = press(page, sc, "+10 s", "p.clock && p.clock.waited === '10'", timeout=60)
    assert p["rows"] == [] and p["clock"]["left"] == "", p              # it ran out
    assert p["compare"]["python"] == "0" and p["compare"]["kernel"] == "0", p["compare"]
    p = press(page, sc, "again", "p.explain.step === 'again'")
    agrees(p, "03 again after +10 s")
    e = p["explain"]
    assert (e["flags"], e["timeout-key"]) == ("UNREPLIED", "nf_conntrack_udp_timeout"), e
    assert e["differs"] == "true" and "ASSURED" in e["expected"], e
    nothing_left(press(page, sc, "reset", "p.steps.steps === ''"), "03 reset after +10 s")

    # 05, out of order: the clash first, back to the start, another kernel, the SNAT drop
    front(page, "05-incidents")
    sc = "dns-race"
    p = press(page, sc, "confirm-second", "p.explain.step === 'confirm-second'")
    assert p["cpus"]["outcomes"] == "inserted,nat-clash", p["cpus"]
    p = press(page, sc, "send", "p.explain.step === 'send'")
    assert p["cpus"]["stages"] == "received,received" and p["rows"] == [], p
    output_of(page, sc).locator("select").nth(1).select_option("6.1")
    page.wait_for_function(f"""() => ({PANELS_JS})(document.body).some(
        x => x.steps.scenario === 'dns-race' && x.steps.kernel === '6.1')""", timeout=30_000)
    p = press(page, sc, "after-5s", "p.explain.step === 'after-5s'")
    assert p["steps"]["steps"] == "send,cpu-0,cpu-1,confirm-first,confirm-second,answers," \
        "after-5s,confirm-second,send,after-5s", p["steps"]
    assert p["race"]["lookup"] == "0.001" and p["explain"]["end"] == "true", p
    p = press(page, "dns-race-snat", "confirm-second", "p.explain.step === 'confirm-second'")
    assert p["cpus"]["outcomes"] == "inserted,insert-failed", p["cpus"]
    p = press(page, "dns-race-snat", "after-5s", "p.explain.step === 'after-5s'")
    assert (p["race"]["dropped"], p["race"]["retries"], p["race"]["lookup"]) == ("1", "1", "5.001")
    output_of(page, "dns-race-snat").evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOT.with_name("05-incidents.png")))
    nothing = press(page, "stale-udp", "reset", "p.steps.steps === ''")
    assert nothing["rows"] == [] and nothing["explain"]["step"] == "", nothing

    for name in ORDER:                            # and nothing went red anywhere meanwhile
        for p in panels(page, name):
            assert p["errors"] == [], f"{name}/{p['steps']['scenario']}: {p['errors']}"
