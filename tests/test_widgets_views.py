"""The notebooks' live views (nattrack.widgets.views): state, stored markup, threads.

No browser and no kernel: the ipywidgets models are plain objects here, and what a
notebook test would read from the stored widget state is ``view.widget.value``
parsed with ``widget_state``.  Packets and tables come from the engine (the
reference lab of tests/conftest.py); expectations come from scapy's dissection and
from the transition table, not from the views' helpers.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack.proto_tcp import INDEX_NAMES, TCP_CONNTRACK_NAMES, TCP_CONNTRACKS
from nattrack.conntrack.show import conn_json
from nattrack.widgets import (MIN_INTERVAL, ComparisonView, ConntrackTableView, EventLogView,
                              ModeBanner, PacketView, StateDiagramView, TimelineView, Updater,
                              grading_mode, stop_all, widget_state)
from nattrack_lab import PRIV1, PRIV2, PUB, RTR_PUB, Lab, TcpFlow, tcp_state

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def not_grading(monkeypatch):
    for var in ("NATTRACK_GRADING", "NBGRADER_EXECUTION"):
        monkeypatch.delenv(var, raising=False)
    yield
    stop_all()


def stored(view) -> dict[str, str]:
    """What a notebook test reads: the data-* attributes of the stored HTML value."""
    return widget_state(view.widget.value)


def root(view) -> ET.Element:
    return ET.fromstring(view.widget.value)


def classed(el: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in el.iter() if name in (e.get("class") or "").split()]


def settle(view) -> None:
    """Wait out the throttle, so the next update draws at once."""
    time.sleep(MIN_INTERVAL + 0.05)


# --------------------------------------------------------------------------- table

def test_table_view_from_engine_lines_and_json():
    lab = Lab()
    flow = TcpFlow(lab, sport=40000, dport=80)
    flow.client("S")
    v = ConntrackTableView(title="nattrack (Python tracker)")
    summary = "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown."
    v.update([*lab.table(), summary])
    s = stored(v)
    assert s["view"] == "table" and s["entries"] == "1" and s["states"] == "SYN_SENT"
    assert s["flows"] == f"tcp {PRIV1}:40000 > {PUB}:80" and s["new"] == s["flows"]
    assert v.state["entries"] == 1 and v.state["flows"] == [s["flows"]]
    row = next(r for r in root(v).iter("tr") if r.get("data-flow"))
    assert row.get("data-reply") == f"{PUB}:80 -> {RTR_PUB}:40000"      # the SNAT, visible
    assert "nattrack (Python tracker)" in "".join(root(v).itertext())
    # the same entry as conn_json, one step later: not new, its state cell changed
    flow.server("SA")
    settle(v)
    v.update([conn_json(c, lab.ct.jiffies()) for c in lab.conns()], highlight="40000")
    s = stored(v)
    assert s["states"] == "SYN_RECV" and s["new"] == "" and s["changed"] == s["flows"]
    assert s["highlight"] == s["flows"]
    row = next(r for r in root(v).iter("tr") if r.get("data-flow"))
    assert "nt-hl" in row.get("class").split()
    assert [td.get("class").split()[-1] for td in row if "nt-changed" in td.get("class")] == \
        ["nt-col-timeout", "nt-col-state", "nt-col-flags"]         # UNREPLIED is gone
    # the entry gone: listed as gone, table empty
    settle(v)
    v.update([])
    assert stored(v)["entries"] == "0" and stored(v)["gone"] == s["flows"]


def test_table_view_bad_input_is_one_clear_error():
    v = ConntrackTableView()
    with pytest.raises(ValueError, match="conntrack -L"):
        v.update(["this is not a conntrack line"])
    with pytest.raises(ValueError, match="conntrack entry"):
        v.update([], highlight={"not": "an entry"})
    assert v.state["entries"] == 0                   # nothing drawn from it
    assert v.renders == 1


# --------------------------------------------------------------------------- diagram

# A connection's life, with the flag index each packet selects; the new state is the
# table cell, looked up here.
HANDSHAKE_AND_CLOSE = [("ORIGINAL", "SYN"), ("REPLY", "SYN-ACK"), ("ORIGINAL", "ACK"),
                       ("REPLY", "FIN"), ("ORIGINAL", "ACK"), ("ORIGINAL", "FIN"),
                       ("REPLY", "ACK")]


def cell(d: str, flag: str, old: str) -> str:
    new = TCP_CONNTRACKS[("ORIGINAL", "REPLY").index(d)][INDEX_NAMES.index(flag)][
        TCP_CONNTRACK_NAMES.index(old)]
    return TCP_CONNTRACK_NAMES[new]


def test_diagram_view_follows_a_connection_and_highlights_each_transition():
    v = StateDiagramView(min_interval=0)            # every update drawn at once
    old = "NONE"
    for d, flag in HANDSHAKE_AND_CLOSE:
        new = cell(d, flag, old)
        v.update(new, old, d, flag)
        s = stored(v)
        assert (s["state"], s["transition"], s["dir"], s["flag"]) == (new, f"{old}>{new}",
                                                                     d, flag)
        assert s["in-table"] == "true"
        svg = root(v).find(SVG + "svg")
        hl = classed(svg, "nt-highlight")
        assert [(e.get("data-from"), e.get("data-to")) for e in hl] == [(old, new)]
        assert [n.get("data-state") for n in classed(svg, "nt-current")] == [new]
        old = new
    assert old == "TIME_WAIT"
    assert v.renders == 1 + len(HANDSHAKE_AND_CLOSE)


def test_diagram_view_draws_a_hidden_rst_edge_when_taken():
    v = StateDiagramView()
    v.update("CLOSE", "ESTABLISHED", "REPLY", "RST-ACK")
    s = stored(v)
    assert s["transition"] == "ESTABLISHED>CLOSE" and s["flag"] == "RST"
    hl = classed(root(v), "nt-highlight")
    assert len(hl) == 1 and "nt-extra" in hl[0].get("class")
    assert hl[0].get("data-label") == "REPLY RST"
    with pytest.raises(ValueError):
        v.update("ESTABLISHED_ISH")


def test_diagram_view_from_the_engine_state():
    lab = Lab()
    flow = TcpFlow(lab)
    v = StateDiagramView(min_interval=0)
    old = "NONE"
    for who, flags, d in (("client", "S", "ORIGINAL"), ("server", "SA", "REPLY"),
                          ("client", "A", "ORIGINAL")):
        getattr(flow, who)(flags)
        new = tcp_state(lab.only())
        v.update(new, old, d, flags)
        assert stored(v)["transition"] == f"{old}>{new}"
        assert stored(v)["in-table"] == "true"
        old = new
    assert old == "ESTABLISHED"


# --------------------------------------------------------------------------- packets

SCAPY_FIELDS = {"src": ("IP", "src"), "dst": ("IP", "dst"), "ttl": ("IP", "ttl"),
                "ip_csum": ("IP", "chksum"), "proto": ("IP", "proto"),
                "sport": ("L4", "sport"), "dport": ("L4", "dport"), "l4_csum": ("L4", "chksum")}


def changed_by_scapy(before: bytes, after: bytes) -> set[str]:
    a, b = IP(before), IP(after)
    out = set()
    for key, (layer, name) in SCAPY_FIELDS.items():
        x, y = (a, b) if layer == "IP" else (a.payload, b.payload)
        if getattr(x, name) != getattr(y, name):
            out.add(key)
    return out


def test_packet_view_marks_exactly_what_the_engine_rewrote():
    lab = Lab()
    first = bytes(IP(src=PRIV1, dst=PUB, ttl=64) / UDP(sport=5353, dport=53) / Raw(b"q1"))
    second = bytes(IP(src=PRIV2, dst=PUB, ttl=64) / UDP(sport=5353, dport=53) / Raw(b"q2"))
    out1 = lab.send("eth0", first).sent[0].data
    out2 = lab.send("eth0", second).sent[0].data      # same source port: MASQUERADE moves it
    v = PacketView(min_interval=0)
    v.update(first, out1)
    s = stored(v)
    assert set(s["changed"].split(",")) == changed_by_scapy(first, out1) == \
        {"src", "ttl", "ip_csum", "l4_csum"}
    v.update(second, out2, "h2 → r (LAN side)")
    s = stored(v)
    assert set(s["changed"].split(",")) == changed_by_scapy(second, out2) == \
        {"src", "sport", "ttl", "ip_csum", "l4_csum"}
    rows = {tr.get("data-field"): tr for tr in root(v).iter("tr") if tr.get("data-field")}
    marked = {k for k, tr in rows.items() if "nt-changed" in (tr.get("class") or "")}
    assert marked == set(s["changed"].split(","))
    assert [td.text for td in rows["src"]] == ["IP src", PRIV2, RTR_PUB]
    assert "h2 → r (LAN side)" in "".join(root(v).itertext())
    # the reply on its way back: destination address and port restored
    reply = bytes(IP(out2).__class__(src=PUB, dst=RTR_PUB, ttl=64) /
                  UDP(sport=53, dport=IP(out2)[UDP].sport) / Raw(b"a2"))
    back = lab.send("eth1", reply).sent[0].data
    v.update(reply, back, "srv → r (WAN side)", "r → h2 (LAN side)")
    assert set(stored(v)["changed"].split(",")) == changed_by_scapy(reply, back) == \
        {"dst", "dport", "ttl", "ip_csum", "l4_csum"}
    # one packet alone; garbage is one clear error
    v.update(first)
    assert stored(v)["changed"] == "" and stored(v)["after"] == ""
    with pytest.raises(ValueError, match="IPv4"):
        v.update(b"\x00" * 10, out1)


def test_packet_view_on_the_recorded_home_capture():
    """Before/after pairs from replaying examples/demo/home.pcapng: the TCP SYN keeps its
    port, the second host's UDP packet on a taken port gets a new one."""
    from nattrack.packet.ipv4 import Packet
    from nattrack.packet.pcapio import CaptureReader, ip_offset, merge_captures
    from nattrack.replay import replay_captures
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo"
    reader = CaptureReader(str(demo / "home.pcapng"))
    try:                                            # every datagram as it arrived
        arrived = [bytes(f.data[ip_offset(f):]) for f in merge_captures([reader])
                   if ip_offset(f) is not None and Packet.parse(f.data, ip_offset(f))]
    finally:
        reader.close()
    left = []                                       # and what left for it, in the same order
    replay_captures([(None, str(demo / "home.pcapng"))],
                    {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, {"default": "wan"},
                    rules_path=str(demo / "home.rules"), seed=1,
                    on_packet=lambda pkt, v, router: left.append(
                        [s.data for s in v.sent if s.oif == "wan"]))
    pairs = [(b, a[0]) for b, a in zip(arrived, left, strict=True) if a]
    syn = next((b, a) for b, a in pairs if TCP in IP(b) and IP(b)[TCP].flags == "S")
    clash = next((b, a) for b, a in pairs
                 if UDP in IP(b) and IP(a)[UDP].sport != IP(b)[UDP].sport)
    v = PacketView(min_interval=0)
    for (before, after), expected in ((syn, {"src", "ttl", "ip_csum", "l4_csum"}),
                                      (clash, {"src", "sport", "ttl", "ip_csum", "l4_csum"})):
        v.update(before, after)
        assert set(stored(v)["changed"].split(",")) == changed_by_scapy(before, after) == expected


# --------------------------------------------------------------------------- timeline

def test_timeline_view_counts_down_and_marks_destroy():
    lab = Lab(sysctl={"nf_conntrack_udp_timeout": 10})
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=5353, dport=53) / Raw(b"q"))
    lab.advance(5)
    lab.send("eth0", IP(src=PRIV2, dst=PUB) / UDP(sport=7000, dport=53) / Raw(b"q"))
    v = TimelineView(horizon=30, min_interval=0)
    v.update(lab.table(), lab.now())
    bars = {b.get("data-flow"): b for b in classed(root(v), "nt-bar")}
    f1, f2 = f"udp {PRIV1}:5353 > {PUB}:53", f"udp {PRIV2}:7000 > {PUB}:53"
    assert set(bars) == {f1, f2}
    assert [float(bars[f].get("data-remaining")) for f in (f1, f2)] == [5.0, 10.0]
    w1, w2 = (float(bars[f].find(SVG + "rect[@class='nt-fill']").get("width")) for f in (f1, f2))
    assert w2 > w1 > 0
    assert stored(v)["destroyed"] == ""
    lab.advance(6)                                  # the first is over: gone from -L
    v.update(lab.table(), lab.now())
    s = stored(v)
    assert s["entries"] == "1" and s["flows"] == f2 and s["destroyed"] == f1
    gone = classed(root(v), "nt-destroyed")
    assert [g.get("data-flow") for g in gone] == [f1] and "DESTROY" in "".join(gone[0].itertext())
    # the marker leaves the chart after ``horizon`` seconds
    lab.advance(31)
    v.update(lab.table(), lab.now())
    assert stored(v)["destroyed"] == f2 and stored(v)["entries"] == "0"


# ------------------------------------------------------------------ events, comparison, mode

def test_event_log_view_counts_and_colours():
    lab = Lab(sysctl={"nf_conntrack_udp_timeout": 10})
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=5353, dport=53) / Raw(b"q"))
    lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=53, dport=5353) / Raw(b"a"))
    lab.advance(300)                                # past even the stream timeout
    v = EventLogView(limit=2, min_interval=0)
    v.append(lab.raw_events)
    s = stored(v)
    assert (s["events"], s["new"], s["update"], s["destroy"]) == ("3", "1", "1", "1")
    assert s["shown"] == "2" and s["last"] == lab.raw_events[-1]
    kinds = [e.get("class").split()[-1] for e in classed(root(v), "nt-event")]
    assert kinds == ["nt-ev-update", "nt-ev-destroy"]
    v.append("")                                     # blank lines are not events
    assert v.state["events"] == 3
    # the same events as event_json dicts, or as one -E text, show the same
    for form in (lab._events_json, "\n".join(lab.raw_events) + "\n"):
        w = EventLogView(limit=2, min_interval=0)
        w.append(form)
        assert stored(w) == stored(v) | {"renders": "2"}


def test_comparison_view_pairs_json_with_lines():
    lab = Lab()
    TcpFlow(lab, sport=40000).client("S")
    now = lab.ct.jiffies()
    py = [conn_json(c, now) for c in lab.conns()]
    v = ComparisonView(min_interval=0)
    v.update(py, [line.replace(" 119 ", " 118 ") for line in lab.table()])
    s = stored(v)
    assert (s["flows"], s["agree"], s["same"]) == ("1", "1", "true")
    kernel = [line.replace(f"dport={40000} mark", "dport=1024 mark") for line in lab.table()]
    v.update(py, kernel)
    s = stored(v)
    assert (s["agree"], s["differ"], s["same"]) == ("0", "1", "false")
    assert s["differing"] == f"tcp {PRIV1}:40000 > {PUB}:8080"
    assert "reply tuple differs" in "".join(root(v).itertext())


def test_mode_banner():
    b = ModeBanner()
    b.update("replay", "recorded: 01-tcp-states (2026-11-20)")
    assert stored(b)["mode"] == "replay" and "01-tcp-states" in stored(b)["label"]
    assert "REPLAY" in "".join(root(b).itertext())
    with pytest.raises(ValueError, match="live"):
        b.update("demo", "x")


# --------------------------------------------------------------------------- throttling, stop

def test_updates_are_coalesced_and_the_last_one_wins():
    v = EventLogView(min_interval=0.6)              # long enough for a slow, busy machine
    base = v.renders
    for i in range(200):                            # a burst from a fast packet loop
        v.append(f"    [NEW] udp      17 30 src=10.0.0.{i % 250} dst=1.1.1.1 sport=1 dport=2")
    assert v.renders == base + 1                    # the first drawn at once, the rest wait
    assert v.state["events"] == 1
    time.sleep(0.6 + 0.2)
    assert v.renders == base + 2                    # one trailing render with all of them
    assert v.state["events"] == 200


def test_at_most_five_renders_a_second():
    v = TimelineView(horizon=60)
    start = time.monotonic()
    base = v.renders
    n = 0
    while time.monotonic() - start < 1.0:
        v.update([], n)
        n += 1
        time.sleep(0.002)
    time.sleep(MIN_INTERVAL + 0.1)
    assert n > 50
    assert v.renders - base <= 1 / MIN_INTERVAL + 2
    assert v.state["now"] == n - 1                  # nothing lost at the end


def test_stop_draws_what_is_pending_then_freezes():
    v = ConntrackTableView()
    v.update([])
    v.update([("udp      17 29 src=10.0.0.2 dst=1.1.1.1 sport=1 dport=2 [UNREPLIED] "
               "src=1.1.1.1 dst=10.0.0.2 sport=2 dport=1 mark=0 use=1")])
    v.stop()
    assert stored(v)["entries"] == "1" and stored(v)["stopped"] == "true"
    renders = v.renders
    v.update([])
    time.sleep(MIN_INTERVAL + 0.1)
    assert v.renders == renders and stored(v)["entries"] == "1"



def test_stop_keeps_the_last_differences_on_the_table():
    v = ConntrackTableView()
    line = ("udp      17 {} src=10.0.0.2 dst=1.1.1.1 sport={} dport=2 [UNREPLIED] "
            "src=1.1.1.1 dst=10.0.0.2 sport=2 dport={} mark=0 use=1")
    v.update([line.format(29, 1, 1), line.format(29, 5, 5)])
    v.flush()
    v.update([line.format(20, 1, 1), line.format(29, 7, 7)])   # 5 gone, 7 new, 1 ticks
    v.flush()
    before = dict(v.state)
    assert before["new"] and before["gone"], before
    html = v.widget.value
    v.stop()
    assert {k: v.state[k] for k in ("new", "changed", "gone")} == \
        {k: before[k] for k in ("new", "changed", "gone")}
    assert stored(v)["stopped"] == "true" and v.state["stopped"] is True
    assert v.widget.value.replace(' data-stopped="true"', "").replace(
        f'data-renders="{v.renders}"', f'data-renders="{v.renders - 1}"') == html
    assert "nt-new" in v.widget.value


# --------------------------------------------------------------------------- Updater and grading

def test_updater_throttles_reports_errors_and_stops(capfd):
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("lab went away")

    u = Updater(fn, interval=0.01)                  # asks for 100/s, gets at most 5/s
    time.sleep(1.0)
    assert u.running
    u.stop()
    assert not u.running and not u.thread.is_alive()
    n = len(calls)
    assert 3 <= n <= 7
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= MIN_INTERVAL - 0.02
    assert u.errors == 1 and "lab went away" in u.widget.value
    assert widget_state(u.widget.value)["errors"] == "1"
    time.sleep(0.4)
    assert len(calls) == n                          # stopped means stopped
    out, err = capfd.readouterr()
    assert out == "" and "lab went away" not in err


def test_updater_drives_a_view_from_its_thread():
    lab = Lab()
    v = TimelineView(horizon=120)
    seen = []

    def refresh():
        v.update(lab.table(), lab.now())
        seen.append(threading.current_thread().name)

    u = Updater(refresh, interval=0.2)
    TcpFlow(lab, sport=40000).client("S")
    time.sleep(0.7)
    u.stop()
    v.flush()
    assert seen and set(seen) == {"nattrack-updater"}
    assert stored(v)["entries"] == "1"


@pytest.mark.parametrize("var", ["NATTRACK_GRADING", "NBGRADER_EXECUTION"])
def test_grading_mode_starts_no_thread(monkeypatch, var):
    assert not grading_mode()
    monkeypatch.setenv(var, "1")
    assert grading_mode()
    before = set(threading.enumerate())
    calls = []
    u = Updater(lambda: calls.append(1), interval=0.2)
    assert calls == [1] and u.thread is None and not u.running    # once, synchronously
    v = EventLogView()
    for i in range(20):                             # every update drawn now: a snapshot
        v.append(f"[DESTROY] udp      17 src=10.0.0.2 dst=1.1.1.1 sport={i} dport=2")
    assert v.state["events"] == 20 and stored(v)["destroy"] == "20"
    time.sleep(0.3)
    assert calls == [1]
    assert set(threading.enumerate()) == before
    u.stop()
    monkeypatch.setenv(var, "")
    assert not grading_mode()


def test_diagram_view_shows_the_timeouts_the_notebook_set():
    v = StateDiagramView(timeouts={"nf_conntrack_tcp_timeout_close": 3}, min_interval=0)
    assert "CLOSE=3" in stored(v)["timeouts"].split(",")
    v.set_timeouts({"net.netfilter.nf_conntrack_tcp_timeout_time_wait": 12})
    assert "TIME_WAIT=12" in stored(v)["timeouts"].split(",")
    with pytest.raises(ValueError):
        StateDiagramView(timeouts={"no_such_timeout": 1})


def test_diagram_views_use_ids_of_their_own():
    """Ids are global to the page: each diagram's arrows refer to its own markers."""
    import re
    ids = []
    for _ in range(2):
        v = StateDiagramView()
        v.update("CLOSE", "ESTABLISHED", "REPLY", "RST")
        svg = root(v).find(SVG + "svg")
        defined = {m.get("id") for m in svg.iter(SVG + "marker")}
        used = {re.fullmatch(r"url\(#(.+)\)", p.get("marker-end")).group(1)
                for p in svg.iter(SVG + "path") if p.get("marker-end")}
        assert used and used <= defined
        ids.append(defined)
    assert not ids[0] & ids[1]
