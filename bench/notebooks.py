"""Notebook benchmark: each notebook's full live run, and how fast a view follows a packet.

Run from the repository root, as root (it builds the classroom lab)::

    sudo .venv/bin/python -m bench.notebooks                     # every notebook, about 3 minutes
    sudo .venv/bin/python -m bench.notebooks --only 01-tcp-states
    sudo .venv/bin/python -m bench.notebooks --json

1. For every notebook: the classroom lab brought up (its own run directory), the notebook
   executed headless in live mode exactly as tests/notebooks does (nbclient, the kernel
   as nobody), the lab brought down.  The figure is the sum, start and teardown
   included (target <= 90 s).
2. View latency: ``ui.live_table`` (refresh every 0.25 s) follows the tracker while a UDP
   datagram is sent from h1 through the lab service; the time from asking the service to
   send it until the table widget's value shows the new flow (target <= 0.5 s; it
   includes starting the sender inside the node).  Also a stepper's button (``run()``):
   press to every view drawn, for the handshake's steps.

Like the other benchmarks it prints figures next to their targets and never fails on
a missed target.  Progress goes to stderr.  Serialise with other live work:
``flock /tmp/nattrack-live.lock sudo .venv/bin/python -m bench.notebooks``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from .engine import progress

TARGET_RUN_S = 90.0
TARGET_VIEW_S = 0.5


def notebook_run(name: str) -> dict:
    from tests.notebooks import nbrun
    from tests.notebooks.conftest import lab_down, lab_up
    t0 = time.monotonic()
    lab = lab_up()
    up = time.monotonic() - t0
    try:
        env = nbrun.kernel_env(lab.user, {"NATTRACK_RUN_DIR": str(lab.run_dir)})
        run = nbrun.execute(name, {"MODE": "live"}, env, user=lab.user, probe=False)
    finally:
        t1 = time.monotonic()
        lab_down(lab)
        down = time.monotonic() - t1
    return {"notebook": name, "lab_up_s": up, "run_s": run.seconds, "lab_down_s": down,
            "total_s": time.monotonic() - t0}


def view_latency(samples: int) -> dict:
    """LiveTable latency (send request -> widget value) and Stepper press -> drawn."""
    from nattrack.lab.client import LabClient
    from nattrack.lab.craft import SEND_SNIPPET, build
    from nattrack.notebook import open_session, ui
    from tests.notebooks.conftest import lab_down, lab_up
    lab = lab_up()
    os.environ["NATTRACK_RUN_DIR"] = str(lab.run_dir)
    out: dict = {}
    try:
        client = LabClient(lab.run_dir / "lab.sock")
        session = open_session("00-welcome", "live", client=client)
        table = ui.live_table(session, interval=0.25)
        seen: dict[str, float] = {}
        lock = threading.Lock()

        def watch(change):
            now = time.monotonic()
            with lock:
                for flow in list(pending):
                    if flow in change["new"]:
                        seen[flow] = now
                        pending.discard(flow)

        pending: set[str] = set()
        table.table.widget.observe(watch, names="value")
        lat, lat_sent = [], []
        for i in range(samples):
            port = 40900 + i
            flow = f"udp 10.0.0.10:{port} &gt; 203.0.113.10:5900"
            with lock:
                pending.add(flow)
            pkt = build("udp", "10.0.0.10", "203.0.113.10", port, 5900, payload=b"bench")
            t0 = time.monotonic()
            r = client.exec("h1", ["python3", "-c", SEND_SNIPPET, pkt.hex()], timeout=20)
            t_sent = time.monotonic()
            if r.returncode != 0:
                raise RuntimeError(f"sending from h1 failed: {r.stderr.strip()}")
            deadline = t0 + 5
            while flow not in seen and time.monotonic() < deadline:
                time.sleep(0.005)
            if flow in seen:
                lat.append(seen[flow] - t0)
                lat_sent.append(seen[flow] - t_sent)
            time.sleep(0.1)
        table.stop()
        out["live_table"] = {"samples": samples, "seen": len(lat),
                             "median_s": statistics.median(lat) if lat else None,
                             "max_s": max(lat) if lat else None,
                             "after_send_returned_median_s":
                                 statistics.median(lat_sent) if lat_sent else None}
        session.close()
        s01 = open_session("01-tcp-states", "live", client=client)
        p = ui.stepper(s01, "handshake")
        presses = []
        for step in ("SYN", "SYN-ACK", "ACK"):
            t0 = time.monotonic()
            p.run(step)
            presses.append(time.monotonic() - t0)
        out["stepper_press_s"] = {"steps": len(presses), "median_s": statistics.median(presses),
                                  "max_s": max(presses)}
        p.stop()
        s01.close()
    finally:
        lab_down(lab)
    return out


def secs(value) -> str:
    """A measured time, or "-" when nothing was measured (no packet seen, say)."""
    return "-" if value is None else f"{value:.3f} s"


def verdict(value, target) -> str:
    return "-" if value is None else ("yes" if value <= target else "NO")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.notebooks", description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", metavar="NOTEBOOK", help="just these notebooks")
    ap.add_argument("--samples", type=int, default=10, help="packets for the latency figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.notebooks needs root (it builds the classroom lab): run it with sudo",
              file=sys.stderr)
        return 2
    from tests.notebooks.nbrun import NOTEBOOKS
    names = args.only or NOTEBOOKS
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        print(f"unknown notebook(s) {', '.join(unknown)}: {', '.join(NOTEBOOKS)}", file=sys.stderr)
        return 2
    runs = []
    for name in names:
        progress(f"{name}: lab up, run live, lab down ...")
        runs.append(notebook_run(name))
    progress("view latency ...")
    lat = view_latency(args.samples)
    if args.json:
        json.dump({"runs": runs, "latency": lat}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'notebook (live)':<26} {'lab up':>7} {'run':>7} {'down':>7} {'total':>7}  "
          f"target <= {TARGET_RUN_S:g} s")
    for r in runs:
        print(f"{r['notebook']:<26} {r['lab_up_s']:>6.1f}s {r['run_s']:>6.1f}s "
              f"{r['lab_down_s']:>6.1f}s {r['total_s']:>6.1f}s  {verdict(r['total_s'], TARGET_RUN_S)}")
    lt = lat["live_table"]
    print(f"view latency, packet -> live table value: median {secs(lt['median_s'])}, "
          f"max {secs(lt['max_s'])} over {lt['seen']}/{lt['samples']} packets  "
          f"target <= {TARGET_VIEW_S} s: {verdict(lt['max_s'], TARGET_VIEW_S)}")
    print(f"  (from the send having returned: median {secs(lt['after_send_returned_median_s'])})")
    sp = lat["stepper_press_s"]
    print(f"stepper button -> every view drawn (capture, send, both tables): median "
          f"{secs(sp['median_s'])}, max {secs(sp['max_s'])} over {sp['steps']} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
