"""``nattrack record``: run the notebooks' scenarios on a live lab and write what happened.

For every scenario: a fresh start (its rules file, its sysctls, its entries deleted from both tables),
then each step as a live session performs it; written to
``<out>/<notebook>/<scenario>.json`` (packets before and after the router, both tables
and both event streams after each step, timestamps; see :mod:`.recorded`) and
``<scenario>.pcapng`` (the frames the router saw on both sides, per interface).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from ..lab import RULES_DIR
from ..packet.pcapio import PcapngWriter
from . import scenarios as sc
from .recorded import FORMAT, RECORDINGS
from .session import SessionError


def record_notebook(notebook: str, out: Path, client=None, only: Iterable[str] | None = None,
                    progress: Callable[[str], None] = print) -> list[Path]:
    """Record ``notebook``'s scenarios (or those named in ``only``) from the running lab."""
    from .live import LiveSession
    wanted = set(only or ())
    scenarios = [s for s in sc.notebook_scenarios(notebook)
                 if (not wanted or s.name in wanted) and not s.simulated]
    if not scenarios:
        return []
    written = []
    folder = out / notebook
    folder.mkdir(parents=True, exist_ok=True)
    session = LiveSession(notebook, client=client)
    try:
        for scn in scenarios:
            session.reset()
            session._start(scn)
            session.current, session.next_index = scn, 0
            t0 = time.time()
            steps, frames = [], []
            for st in scn.steps:
                t = time.monotonic()
                r = session.run(scn, st.name)
                frames += r.frames
                steps.append({
                    "name": st.name, "t": r.t, "packets": [p.to_json() for p in r.packets],
                    "transition": r.transition.to_json() if r.transition else None,
                    "table": r.table, "kernel_table": r.kernel_table, "events": r.events,
                    "kernel_events": r.kernel_events})
                tr = r.transition
                what = (f"{tr.old_state} -> {tr.new_state} ({tr.direction} {tr.flag})" if tr
                        else f"{len(r.table)} entr{'y' if len(r.table) == 1 else 'ies'}")
                pk = ", ".join(f"{p.ctinfo or '?'} {p.verdict}" for p in r.packets) or "no packets"
                progress(f"{notebook} {scn.name} {st.name}: [{pk}], {what}, "
                         f"{len(r.events)}+{len(r.kernel_events)} events "
                         f"({time.monotonic() - t:.1f} s)")
            rec = {"format": FORMAT, "notebook": notebook, "scenario": scn.name,
                   "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   "kernel": platform.release(), "topology": sc.TOPOLOGY,
                   "lab_mode": session.lab_mode, "rules": scn.rules,
                   "rules_text": (RULES_DIR / f"{scn.rules}.rules").read_text(),
                   "sysctls": dict(session.sysctls),
                   "router": {"ifaces": sc.ROUTER_IFACES, "routes": sc.ROUTER_ROUTES},
                   "t0": t0, "steps": steps}
            path = folder / f"{scn.name}.json"
            path.write_text(json.dumps(rec, indent=1) + "\n")
            with PcapngWriter(folder / f"{scn.name}.pcapng") as w:
                for name in sc.ROUTER_IFACES:
                    w.add_interface(name)
                for f in frames:
                    w.write(f.ts, f.iface, f.data)
            written += [path, folder / f"{scn.name}.pcapng"]
    finally:
        session.close()
    return written


def record(notebooks: list[str], out: Path, only: Iterable[str] | None = None,
           progress: Callable[[str], None] = print, python: str | None = None) -> list[Path]:
    """As root: start a classroom lab (kernel mode) in a run directory of its own, record,
    stop the lab."""
    from ..lab import LabError
    from ..lab.client import LabClient
    if only:
        known = {s.name for nb in notebooks for s in sc.notebook_scenarios(nb)}
        unknown = sorted(set(only) - known)
        if unknown:
            raise SessionError(f"no scenario {unknown[0]!r} in {', '.join(notebooks)} (known: "
                               f"{', '.join(sorted(known))})")
    if os.geteuid() != 0:
        raise SessionError("nattrack record starts a lab: run it as root (sudo nattrack record ...)")
    run_dir = Path(tempfile.mkdtemp(prefix="nattrack-record-"))
    os.chmod(run_dir, 0o755)
    env = dict(os.environ, NATTRACK_RUN_DIR=str(run_dir))
    env.pop("NATTRACK_LAB_SOCK", None)
    cli = [python or sys.executable, "-m", "nattrack.cli.main", "lab"]
    t = time.monotonic()
    progress(f"starting the {sc.TOPOLOGY} lab (kernel mode) in {run_dir}")
    up = subprocess.run(cli + ["up", "--topo", sc.TOPOLOGY, "--mode", "kernel"], env=env,
                        capture_output=True, text=True, timeout=180)
    try:
        if up.returncode != 0:
            raise SessionError(f"lab up failed: {(up.stderr or up.stdout).strip()}")
        progress(f"lab up ({time.monotonic() - t:.1f} s)")
        client = LabClient(run_dir / "lab.sock")
        written = []
        for nb in notebooks:
            written += record_notebook(nb, out, client, only, progress)
        return written
    except LabError as exc:
        raise SessionError(str(exc)) from None
    finally:
        subprocess.run(cli + ["down"], env=env, capture_output=True, timeout=120)
        subprocess.run(cli + ["down", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)
        progress("lab down")


def default_out() -> Path:
    return RECORDINGS
