"""The notebooks' data layer on a live classroom lab (kernel mode), as the notebooks use it:
an unprivileged client (nobody, in the nattrack group) runs every notebook's scenarios
through live sessions; the facts the offline tests check on the recordings must hold
live, and the Python tracker must agree with the kernel after every step.  And
``nattrack record`` records a scenario that then replays.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import REPO, Lab, make_run_dir, readable_package_copy, stop_lab

pytestmark = pytest.mark.needs_root
NOBODY = 65534

# Run as nobody: every scenario of every notebook (03's udp-assured up to "again": its
# expiry step waits 25 s; the offline tests check it on the recording).
CLIENT = r"""
import json, sys
from nattrack.notebook import open_session, NOTEBOOKS
out = []
for nb in NOTEBOOKS:
    s = open_session(nb, "live")
    assert s.mode == "live", s
    for scn in s.scenarios():
        steps = [st.name for st in scn.steps]
        if scn.name == "udp-assured":
            steps = steps[:steps.index("again") + 1]
        for name in steps:
            r = s.run(scn.name, name)
            out.append({"nb": nb, "scenario": scn.name, "step": name, "label": s.label,
                        "transition": r.transition.to_json() if r.transition else None,
                        "table": r.table, "kernel_table": r.kernel_table, "events": r.events,
                        "kernel_events": r.kernel_events,
                        "packets": [p.to_json() for p in r.packets]})
    s.close()
json.dump(out, sys.stdout)
"""


def _entries(table) -> list:
    return sorted((e["proto"], e["state"], str(e["orig"]), str(e["reply"]), e["assured"],
                   e["unreplied"]) for e in table)


def _kinds(events) -> list:
    return [e.split()[0] for e in events]


@pytest.fixture(scope="module")
def classroom():
    lab = Lab(make_run_dir())
    up = lab.cli("lab", "up", "--topo", "classroom", "--mode", "kernel")
    if up.returncode != 0:
        stop_lab(lab)
        pytest.fail(f"lab up failed: {up.stderr.strip()}", pytrace=False)
    try:
        yield lab
    finally:
        stop_lab(lab)


def test_record_writes_a_recording_that_replays(tmp_path):
    """`nattrack record` (its own lab, up and down) then a replay session over it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NATTRACK_RUN_DIR", None)
    p = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "record", "00-welcome",
                        "--scenario", "udp", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(l.startswith("00-welcome udp question: [NEW forwarded]") for l in lines), lines
    assert lines[-1].startswith("wrote 2 files")
    from nattrack.notebook import open_session
    s = open_session("00-welcome", "replay", recordings=tmp_path)
    rec = s.recording("udp")
    q, a = (s.run("udp", st) for st in ("question", "answer"))
    assert q.table[0]["unreplied"] and not a.table[0]["unreplied"]
    assert _entries(a.table) == _entries(rec["steps"][1]["table"]) == _entries(a.kernel_table)


def test_every_notebook_live_as_an_unprivileged_client(classroom):
    gid = grp.getgrnam("nattrack").gr_gid
    copy = readable_package_copy()
    if not (copy / "examples" / "rules").exists():     # the kit's rules, as an install has them
        shutil.copytree(REPO / "examples" / "rules", copy / "examples" / "rules")
        subprocess.run(["chmod", "-R", "a+rX", str(copy / "examples")], check=True)
    env = dict(os.environ, PYTHONPATH=str(copy),
               NATTRACK_LAB_SOCK=str(classroom.sock))
    t = time.monotonic()
    p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={gid}",
                        "--", "/usr/bin/python3", "-c", CLIENT], capture_output=True, text=True,
                       timeout=300, env=env, cwd="/")
    elapsed = time.monotonic() - t
    assert p.returncode == 0, p.stderr[-3000:]
    steps = json.loads(p.stdout)
    by = {(s["nb"], s["scenario"], s["step"]): s for s in steps}
    print(f"{len(steps)} live steps in {elapsed:.1f} s")

    for s in steps:
        where = f"{s['nb']}/{s['scenario']}/{s['step']}"
        if s["scenario"] == "table-full":               # simulated: the tracker alone
            assert s["kernel_table"] is None and s["kernel_events"] == [], where
            continue
        assert s["label"].startswith("Live lab: classroom topology, kernel mode")
        # the shadow tracker and the kernel agree after every step
        assert _entries(s["table"]) == _entries(s["kernel_table"]), where
        assert all(abs(a["timeout"] - b["timeout"]) <= 1 for a, b in
                   zip(sorted(s["table"], key=lambda e: str(e["orig"])),
                       sorted(s["kernel_table"], key=lambda e: str(e["orig"])))), where
        assert _kinds(s["events"]) == _kinds(s["kernel_events"]), where
        assert s["packets"] or s["step"] in ("expire",), where

    def tr(nb, scn, step):
        t = by[(nb, scn, step)]["transition"]
        return (t["old_state"], t["new_state"], t["direction"], t["flag"])

    assert [tr("01-tcp-states", "handshake", x) for x in ("SYN", "SYN-ACK", "ACK")] == [
        ("NONE", "SYN_SENT", "ORIGINAL", "SYN"), ("SYN_SENT", "SYN_RECV", "REPLY", "SYN-ACK"),
        ("SYN_RECV", "ESTABLISHED", "ORIGINAL", "ACK")]
    assert tr("01-tcp-states", "handshake", "last-ACK")[1] == "TIME_WAIT"
    assert tr("01-tcp-states", "rst", "RST")[1] == "CLOSE"
    assert tr("01-tcp-states", "closed-port", "SYN") == ("SYN_SENT", "CLOSE", "REPLY", "RST")
    syn = by[("01-tcp-states", "handshake", "SYN")]["packets"][0]
    assert syn["ctinfo"] == "NEW" and bytes.fromhex(syn["after"])[12:16] == bytes([203, 0, 113, 1])

    h2 = by[("02-snat", "clash", "h2")]
    e2 = next(e for e in h2["table"] if e["orig"]["src"] == "10.0.0.11")
    assert e2["reply"]["dst"] == "203.0.113.1" and e2["reply"]["dport"] != 40021
    ports = {e["reply"]["dport"] for e in by[("02-snat", "snat-range", "answer-h1")]["table"]}
    assert len(ports) == 2 and all(20000 <= p <= 20009 for p in ports)
    (fw,) = by[("02-snat", "port-forward", "ACK")]["table"]
    assert fw["reply"]["src"] == "10.0.0.11" and fw["state"] == "ESTABLISHED"

    again = by[("03-timeouts", "udp-assured", "again")]["table"][0]
    assert again["assured"] and again["timeout"] <= 20
    assert by[("03-timeouts", "time-wait", "expire")]["table"] == []
    assert "[DESTROY]" in by[("03-timeouts", "time-wait", "expire")]["kernel_events"][0]

    err = by[("04-related-and-invalid", "port-unreachable", "probe")]["packets"][1]
    assert err["ctinfo"] == "RELATED_REPLY" and bytes.fromhex(err["after"])[16:20] == bytes(
        [10, 0, 0, 10])
    leak = by[("04-related-and-invalid", "invalid-leak", "bare-ACK")]["packets"][0]
    assert leak["ctinfo"] == "INVALID" and bytes.fromhex(leak["after"])[12:16] == bytes(
        [10, 0, 0, 10])
    blocked = by[("04-related-and-invalid", "firewall", "bare-ACK")]["packets"][0]
    assert blocked["after"] is None and blocked["verdict"] == "dropped: filter FORWARD"
    far = by[("04-related-and-invalid", "ttl-exceeded", "far-error")]["packets"][0]
    assert far["ctinfo"] == "RELATED_REPLY"
