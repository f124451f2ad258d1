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


# -- several notebooks on one lab -------------------------------------------------------------

def _session(lab, nb):
    from nattrack.lab.client import LabClient
    from nattrack.notebook import open_session
    return open_session(nb, "live", client=LabClient(lab.sock))


def _ours(res, ports) -> bool:
    """Every packet of the step is one of the scenario's own (by its client port)."""
    from nattrack.packet.ipv4 import Packet
    for pp in res.packets:
        p = Packet.parse(bytearray(pp.before))
        inner = p.embedded_packet() if p.proto == 1 and p.itype not in (0, 8) else None
        q = inner or p
        if not {q.sport, q.dport} & ports:
            return False
    return True


def test_notebooks_side_by_side_put_their_settings_back_and_take_turns(classroom):
    """Two notebooks' sessions on one lab, as two students' kernels: one changes the rules
    and a setting the other's scenario declares; the other's next step puts its own back
    and says so in one line, and its entries and NAT bindings were never touched.  Steps
    run at the same time take turns at the router's capture, each with its own packets."""
    import threading
    a, b = _session(classroom, "01-tcp-states"), _session(classroom, "03-timeouts")
    try:
        a.run("handshake", "ACK")
        b.run("udp-assured", "question")              # sets udp timeouts 10/20 s
        other = _session(classroom, "02-snat")
        other.run("snat-range", "h1")                 # the snat-range rules
        other.set_sysctl("nf_conntrack_udp_timeout", 30)
        r = b.run("udp-assured", "answer")
        assert any("classroom-snat-range.rules" in n and "loaded classroom.rules again" in n
                   for n in r.notes), r.notes
        assert any(n.startswith("nf_conntrack_udp_timeout was 30") and n.endswith("back to 10")
                   for n in r.notes), r.notes
        (e,) = r.table
        assert not e["unreplied"] and e["timeout"] <= 10      # answered, with its own 10 s
        other.close()
        # a's connection kept its entry and NAT through the other notebooks' changes
        r = a.run("handshake", "data")
        assert r.transition.old_state == r.transition.new_state == "ESTABLISHED"
        assert r.table[0]["reply"]["dst"] == "203.0.113.1"

        box, errors = {}, []

        def step(name, s, scn, st):
            try:
                box[name] = s.run(scn, st)
            except Exception as exc:                  # noqa: BLE001 -- asserted below
                errors.append(f"{name}: {exc}")
        threads = [threading.Thread(target=step, args=("a", a, "handshake", "data-ACK")),
                   threading.Thread(target=step, args=("b", b, "udp-assured", "again"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert box["a"].packets and _ours(box["a"], {40001})
        assert box["b"].packets and _ours(box["b"], {40030})
        assert box["b"].table[0]["assured"]
        # a reset deletes a's entries only
        a.reset()
        assert not [e for e in a.table() if e["orig"].get("sport") == 40001]
        assert [e for e in b.table() if e["orig"].get("sport") == 40030]
    finally:
        a.close()
        b.close()


def test_event_streams_reconnect_after_a_lab_restart(classroom):
    s = _session(classroom, "00-welcome")
    try:
        s.run("udp", "question")
        assert classroom.cli("lab", "down", timeout=60).returncode == 0
        up = classroom.cli("lab", "up", "--topo", "classroom", "--mode", "kernel")
        assert up.returncode == 0, up.stderr
        r = s.run("udp", "question")                  # the scenario starts over
        assert any("event stream" in n and n.endswith("reconnected") for n in r.notes), r.notes
        assert [e.split()[0] for e in r.events] == ["[NEW]"]
        assert r.table and r.table[0]["unreplied"]
    finally:
        s.close()
