"""The notebooks' pure renderers (nattrack.widgets): well-formed, complete, escaped, stable.

Expectations are derived from the data the renderers are given (the TCP transition
table, the lines, the packets), never from the renderers' own helpers.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from nattrack.conntrack.conn import HZ, IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, Conn
from nattrack.conntrack.proto_tcp import (INDEX_NAMES, TCP_CONNTRACK_MAX, TCP_CONNTRACK_NAMES,
                                          TCP_CONNTRACKS)
from nattrack.conntrack.show import conn_json, format_conn, parse_conntrack_line
from nattrack.conntrack.tuple import Tuple, ip2int
from nattrack.packet.ipv4 import Packet
from nattrack.widgets import (conntrack_table_html, event_log_html, kernel_comparison_html,
                              packet_before_after_html, state_diagram_svg, timeline_svg,
                              widget_state)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x&y')</script>"

TCP_EST = ("tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=40000 dport=80 "
           "src=203.0.113.2 dst=203.0.113.1 sport=80 dport=40000 [ASSURED] mark=0 use=1")
UDP_NEW = ("udp      17 29 src=10.0.0.2 dst=203.0.113.2 sport=5353 dport=53 [UNREPLIED] "
           "src=203.0.113.2 dst=203.0.113.1 sport=53 dport=5353 mark=0 use=1")
PING = ("icmp     1 29 src=10.0.0.2 dst=203.0.113.2 type=8 code=0 id=7 "
        "src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=7 mark=0 use=1")


def parse(fragment: str) -> ET.Element:
    return ET.fromstring(fragment)


def has_class(el: ET.Element, name: str) -> bool:
    return name in (el.get("class") or "").split()


def with_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if has_class(el, name)]


def text_of(el: ET.Element) -> str:
    return "".join(el.itertext())


def table_rows(root: ET.Element) -> list[ET.Element]:
    return [tr for tr in root.iter("tr") if tr.find("td") is not None]


# --------------------------------------------------------------------------- state diagram

def table_edges() -> dict[tuple[str, str, str], set[str]]:
    """(dir, old, new) -> flag index names, straight from TCP_CONNTRACKS."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for d, rows in enumerate(TCP_CONNTRACKS):
        for index, row in enumerate(rows):
            for old, new in enumerate(row):
                if new < TCP_CONNTRACK_MAX:            # not sIV / sIG
                    key = (("ORIGINAL", "REPLY")[d], TCP_CONNTRACK_NAMES[old],
                           TCP_CONNTRACK_NAMES[new])
                    out.setdefault(key, set()).add(INDEX_NAMES[index])
    return out


def svg_edges(root: ET.Element) -> list[ET.Element]:
    return with_class(root, "nt-edge")


# The usual life of a connection, as a textbook draws it (what the diagram must show in bold).
TEXTBOOK_PATH = [("NONE", "SYN_SENT"), ("SYN_SENT", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
                 ("ESTABLISHED", "FIN_WAIT"), ("FIN_WAIT", "CLOSE_WAIT"),
                 ("CLOSE_WAIT", "LAST_ACK"), ("FIN_WAIT", "LAST_ACK"), ("LAST_ACK", "TIME_WAIT")]
SHORT = {"ORIGINAL": "ORIG", "REPLY": "REPLY"}


def expected_label(a: str, b: str) -> str:
    """The arrow's label as the table gives it: per direction, or bare when both agree."""
    edges = table_edges()
    by_dir = {d: [f for f in INDEX_NAMES if f in edges.get((d, a, b), ())]
              for d in ("ORIGINAL", "REPLY")}
    if by_dir["ORIGINAL"] and by_dir["ORIGINAL"] == by_dir["REPLY"]:
        return ",".join(by_dir["ORIGINAL"])
    return " / ".join(f"{SHORT[d]} {','.join(fl)}" for d, fl in by_dir.items() if fl)


def table_cells():
    """Every (direction, flag, old, new) cell of TCP_CONNTRACKS that is a transition."""
    for d, rows in enumerate(TCP_CONNTRACKS):
        for index, row in enumerate(rows):
            for old, new in enumerate(row):
                if new < TCP_CONNTRACK_MAX:
                    yield (("ORIGINAL", "REPLY")[d], INDEX_NAMES[index],
                           TCP_CONNTRACK_NAMES[old], TCP_CONNTRACK_NAMES[new])


def test_state_diagram_main_path_bold_with_labels_from_the_table():
    root = parse(state_diagram_svg())
    assert root.tag == SVG + "svg"
    main = {(e.get("data-from"), e.get("data-to")): e for e in with_class(root, "nt-main")}
    assert set(main) == set(TEXTBOOK_PATH)
    for (a, b), e in main.items():
        assert e.get("data-label") == expected_label(a, b)
        assert e.find(SVG + "text").text == e.get("data-label")
    assert main[("NONE", "SYN_SENT")].get("data-label") == "ORIG SYN"
    assert main[("SYN_SENT", "SYN_RECV")].get("data-label") == "REPLY SYN-ACK"
    assert main[("ESTABLISHED", "FIN_WAIT")].get("data-label") == "FIN"     # either side
    # every other drawn arrow is a real table transition too, dimmed, and none is an RST
    # cell or a loop: those are the one RST note and the legend
    edges = table_edges()
    for e in with_class(root, "nt-minor"):
        a, b = e.get("data-from"), e.get("data-to")
        if a is None:                                   # the arrow from the RST note
            continue
        assert any((d, a, b) in edges for d in ("ORIGINAL", "REPLY")), (a, b)
        assert e.get("data-label").startswith(expected_label(a, b))
        assert a != b and b != "CLOSE"
    assert ("SYN_SENT", "SYN_SENT2") in {(e.get("data-from"), e.get("data-to"))
                                         for e in with_class(root, "nt-minor")}
    assert any("--RST--> CLOSE" in text_of(g) for g in with_class(root, "nt-rst"))
    nodes = [n.get("data-state") for n in with_class(root, "nt-node")]
    assert nodes == TCP_CONNTRACK_NAMES
    assert not with_class(root, "nt-highlight") and not with_class(root, "nt-current")
    assert root.get("data-transition") == "" and root.get("data-state") == ""


@pytest.mark.parametrize("d, flag, old, new", list(table_cells()))
def test_state_diagram_highlights_exactly_the_cell_taken(d, flag, old, new):
    root = parse(state_diagram_svg(new, old, d, flag))
    hl = with_class(root, "nt-highlight")
    assert [(e.get("data-from"), e.get("data-to")) for e in hl] == [(old, new)]
    assert hl[0].get("data-label") == f"{SHORT[d]} {flag}"
    assert hl[0].find(SVG + "path") is not None
    assert [n.get("data-state") for n in with_class(root, "nt-current")] == [new]
    assert root.get("data-transition") == f"{old}>{new}"
    assert (root.get("data-dir"), root.get("data-flag")) == (d, flag)
    assert root.get("data-cell") == new and root.get("data-in-table") == "true"
    # an arrow normally hidden (an RST cell, a loop) is drawn just for this
    plain = {(e.get("data-from"), e.get("data-to"))
             for e in svg_edges(parse(state_diagram_svg()))}
    assert has_class(hl[0], "nt-extra") == ((old, new) not in plain)
    if old == new or (new == "CLOSE" and flag == "RST"):
        assert has_class(hl[0], "nt-extra")


def test_state_diagram_special_cases_and_ignored_packets():
    # a REPLY SYN-ACK in ESTABLISHED is an sIG cell: the state stays, the table says ignore
    assert TCP_CONNTRACKS[1][INDEX_NAMES.index("SYN-ACK")][3] == 11     # sIG
    root = parse(state_diagram_svg("ESTABLISHED", "ESTABLISHED", "REPLY", "SYN-ACK"))
    assert root.get("data-cell") == "IGNORE" and root.get("data-in-table") == "false"
    assert "ignore" in text_of(root)
    # NONE -> SYN_RECV is no cell at all (tcp_packet special case): drawn and named
    root = parse(state_diagram_svg("SYN_RECV", "NONE", "REPLY", "SYN-ACK"))
    hl = with_class(root, "nt-highlight")
    assert [(e.get("data-from"), e.get("data-to")) for e in hl] == [("NONE", "SYN_RECV")]
    assert has_class(hl[0], "nt-extra")
    assert root.get("data-cell") == "INVALID" and root.get("data-in-table") == "false"
    assert "special case of tcp_packet" in text_of(root)
    # without direction and flag, the arrow is still found in the table
    root = parse(state_diagram_svg(4, 3))                              # ESTABLISHED -> FIN_WAIT
    assert root.get("data-in-table") == "true" and root.get("data-transition") == \
        "ESTABLISHED>FIN_WAIT"
    assert [e.get("data-label") for e in with_class(root, "nt-highlight")] == ["FIN"]


@pytest.mark.parametrize("text, index", [
    ("SYN", "SYN"), ("syn-ack", "SYN-ACK"), ("SA", "SYN-ACK"), ("S.", "SYN-ACK"),
    ("ACK", "ACK"), ("data", "ACK"), ("PSH-ACK", "ACK"), ("FIN", "FIN"), ("FIN-ACK", "FIN"),
    ("F.", "FIN"), ("RST", "RST"), ("RST-ACK", "RST"), ("R", "RST"), (0x12, "SYN-ACK"),
    (0x14, "RST"), (0x00, "NONE"),
])
def test_flag_index_follows_get_conntrack_index(text, index):
    from nattrack.widgets import flag_index
    assert flag_index(text) == index


def test_state_diagram_rejects_bad_input_and_is_deterministic():
    for bad in (dict(current="<script>"), dict(current="SYN_RECV", prev="NONE", direction="UP"),
                dict(current="SYN_RECV", prev="NONE", flag="XMAS")):
        with pytest.raises(ValueError):
            state_diagram_svg(**bad)
    assert state_diagram_svg("SYN_RECV", "SYN_SENT", "REPLY", "SYN-ACK") == \
        state_diagram_svg("SYN_RECV", "SYN_SENT", "REPLY", "SYN-ACK")
    assert "<script" not in state_diagram_svg().lower()


# --------------------------------------------------------------------------- conntrack table

NOW_J = 5000 * HZ


def json_entry(orig, reply, left, state=None, assured=False, seen=True):
    ct = Conn(orig, reply, 1)
    ct.status = IPS_CONFIRMED | (IPS_SEEN_REPLY if seen else 0) | (IPS_ASSURED if assured else 0)
    ct.timeout = NOW_J + left * HZ + HZ // 2
    if state is not None:
        ct.proto = SimpleNamespace(state=TCP_CONNTRACK_NAMES.index(state))
    return ct


def test_conntrack_table_from_lines():
    root = parse(conntrack_table_html([TCP_EST, UDP_NEW, PING, ""]))
    heads = [th.text for th in root.iter("th")]
    assert heads == ["proto", "timeout", "state", "original", "reply", "flags"]
    rows = [[text_of(td) for td in tr.findall("td")] for tr in table_rows(root)]
    assert rows == [
        ["tcp 6", "431999", "ESTABLISHED", "10.0.0.2:40000 -> 203.0.113.2:80",
         "203.0.113.2:80 -> 203.0.113.1:40000", "ASSURED"],
        ["udp 17", "29", "", "10.0.0.2:5353 -> 203.0.113.2:53",
         "203.0.113.2:53 -> 203.0.113.1:5353", "UNREPLIED"],
        ["icmp 1", "29", "", "10.0.0.2 id 7 -> 203.0.113.2 type 8 code 0",
         "203.0.113.2 id 7 -> 203.0.113.1 type 0 code 0", ""],
    ]
    assert not with_class(root, "nt-new") and not with_class(root, "nt-changed")


def test_conntrack_table_from_json_matches_lines():
    T = Tuple.make
    ct = json_entry(T("10.0.0.2", "203.0.113.2", "tcp", 40000, 80),
                    T("203.0.113.2", "203.0.113.1", "tcp", 80, 40000), 431999, "ESTABLISHED",
                    assured=True)
    assert format_conn(ct, NOW_J) == TCP_EST
    from_json = parse(conntrack_table_html([conn_json(ct, NOW_J)]))
    from_line = parse(conntrack_table_html([TCP_EST]))
    assert [text_of(td) for td in table_rows(from_json)[0]] == \
        [text_of(td) for td in table_rows(from_line)[0]]


def test_conntrack_table_marks_new_rows_and_changed_cells():
    before = [TCP_EST.replace("431999 ESTABLISHED", "119 SYN_RECV").replace(" [ASSURED]", "")]
    now = [TCP_EST, UDP_NEW]
    root = parse(conntrack_table_html(now, previous=before))
    tcp_row, udp_row = table_rows(root)
    assert has_class(udp_row, "nt-new") and not has_class(tcp_row, "nt-new")
    changed = [td.get("class").split()[-1] for td in tcp_row.findall("td")
               if has_class(td, "nt-changed")]
    assert changed == ["nt-col-timeout", "nt-col-state", "nt-col-flags"]
    # the same table as its own previous: nothing new, nothing changed
    root = parse(conntrack_table_html(now, previous=now))
    assert not with_class(root, "nt-new") and not with_class(root, "nt-changed")


def test_conntrack_table_escapes_and_is_deterministic():
    hostile = {"proto": "tcp", "protonum": 6, "timeout": 5, "state": HOSTILE,
               "orig": {"src": HOSTILE, "dst": "1.2.3.4", "sport": 1, "dport": 2},
               "reply": {"src": "1.2.3.4", "dst": HOSTILE, "sport": 2, "dport": 1},
               "status": [], "assured": False, "unreplied": True, "mark": 0}
    html = conntrack_table_html([hostile], previous=[])
    assert "<script" not in html and "&lt;script&gt;" in html
    root = parse(html)
    assert HOSTILE in text_of(table_rows(root)[0])
    assert html == conntrack_table_html([hostile], previous=[])


# --------------------------------------------------------------------------- packets

def nat_out(data: bytes) -> bytes:
    """What MASQUERADE does to a packet leaving the lab's router: new source address and
    port (or ICMP id), TTL - 1; done with the engine's in-place rewriting."""
    p = Packet.parse(bytearray(data))
    p.decrease_ttl()
    p.set_addr(True, ip2int("203.0.113.1"))
    p.set_port(True, 61000)
    return p.ip_bytes()


def field_rows(html: str) -> dict[str, tuple[str, str, bool]]:
    root = parse(html)
    out = {}
    for tr in table_rows(root):
        name, before, after = (text_of(td) for td in tr.findall("td"))
        out[name] = (before, after, has_class(tr, "nt-changed"))
    return out


@pytest.mark.parametrize("l4, changed, unchanged", [
    (TCP(sport=40000, dport=80, flags="S"),
     {"IP src", "IP ttl", "IP checksum", "TCP sport", "TCP checksum"},
     {"IP dst", "IP proto", "TCP dport", "TCP flags"}),
    (UDP(sport=5353, dport=53) / b"q",
     {"IP src", "IP ttl", "IP checksum", "UDP sport", "UDP checksum"},
     {"IP dst", "IP proto", "UDP dport"}),
    (ICMP(type=8, code=0, id=7, seq=1),
     {"IP src", "IP ttl", "IP checksum", "ICMP id", "ICMP checksum"},
     {"IP dst", "IP proto", "ICMP type", "ICMP code"}),
])
def test_packet_before_after_highlights_exactly_the_changed_fields(l4, changed, unchanged):
    before = bytes(IP(src="10.0.0.2", dst="203.0.113.2", ttl=64) / l4)
    after = nat_out(before)
    rows = field_rows(packet_before_after_html(before, after))
    assert set(rows) == changed | unchanged
    for name, (b, a, marked) in rows.items():
        assert marked == (name in changed), name
        assert (b != a) == marked, name
    assert rows["IP src"] == ("10.0.0.2", "203.0.113.1", True)
    assert rows["IP ttl"] == ("64", "63", True)


def test_packet_before_after_icmp_error_shows_the_quoted_header():
    quoted = IP(src="203.0.113.1", dst="203.0.113.2") / UDP(sport=61000, dport=53)
    err = bytes(IP(src="203.0.113.2", dst="203.0.113.1") / ICMP(type=3, code=3) / bytes(quoted))
    p = Packet.parse(bytearray(err))
    p.set_addr(False, ip2int("10.0.0.2"))
    rows = field_rows(packet_before_after_html(err, p.ip_bytes()))
    assert rows["IP dst"] == ("203.0.113.1", "10.0.0.2", True)
    assert rows["inner IP src"] == ("203.0.113.1", "203.0.113.1", False)
    assert rows["inner UDP sport"][2] is False


def test_packet_before_after_rejects_garbage_and_is_deterministic():
    before = bytes(IP(src="10.0.0.2", dst="203.0.113.2") / TCP())
    with pytest.raises(ValueError):
        packet_before_after_html(before, b"\x45\x00")
    html = packet_before_after_html(before, nat_out(before))
    assert html == packet_before_after_html(before, nat_out(before))
    assert not with_class(parse(packet_before_after_html(before, before)), "nt-changed")


# --------------------------------------------------------------------------- timeline

def test_timeline_bars_scale_and_expiry():
    entries = [("a", 130.0), ("b", 100.0), ("c", 1000.0), (HOSTILE, 50.0)]
    svg = timeline_svg(entries, now=100.0, horizon=60)
    assert "<script" not in svg
    root = parse(svg)
    bars = with_class(root, "nt-bar")
    assert len(bars) == 4
    widths = [float(b.find(SVG + "rect[@class='nt-fill']").get("width")) for b in bars]
    assert widths[0] > 0 and widths[1] == 0 and widths[3] == 0
    assert widths[2] == pytest.approx(2 * widths[0])           # 30 s is half the 60 s scale
    assert [has_class(b, "nt-expired") for b in bars] == [False, True, False, True]
    assert text_of(bars[3]).startswith(HOSTILE)
    assert svg == timeline_svg(entries, now=100.0, horizon=60)


def test_timeline_accepts_dicts_and_conns():
    ct = Conn(Tuple.make("10.0.0.2", "203.0.113.2", "udp", 5353, 53),
              Tuple.make("203.0.113.2", "203.0.113.1", "udp", 53, 5353), 1)
    ct.timeout = 130 * HZ
    root = parse(timeline_svg([ct, {"label": "x", "deadline": 90}], now=100, horizon=60))
    bars = with_class(root, "nt-bar")
    assert "udp 10.0.0.2:5353 > 203.0.113.2:53" in text_of(bars[0])
    assert bars[0].get("data-remaining") == "30.0"
    assert has_class(bars[1], "nt-expired")
    with pytest.raises(ValueError):
        timeline_svg([], now=0, horizon=0)


# --------------------------------------------------------------------------- events

EVENTS = [
    "    [NEW] " + UDP_NEW.replace(" mark=0 use=1", ""),
    " [UPDATE] " + TCP_EST.replace(" mark=0 use=1", ""),
    "[DESTROY] " + PING.replace(" mark=0 use=1", ""),
]


def test_event_log_colours_kinds_and_keeps_the_last_lines():
    lines = [f"[1700000000.{i:06d}]\t{EVENTS[i % 3]}" for i in range(10)] + [HOSTILE]
    html = event_log_html(lines, limit=4)
    assert "<script" not in html
    root = parse(html)
    events = with_class(root, "nt-event")
    assert [text_of(e) for e in events] == lines[-4:]
    assert [next((c for c in e.get("class").split() if c.startswith("nt-ev-")), None)
            for e in events] == ["nt-ev-update", "nt-ev-destroy", "nt-ev-new", None]
    assert len(with_class(parse(event_log_html(lines)), "nt-event")) == 11
    assert not with_class(parse(event_log_html(lines, limit=0)), "nt-event")
    assert html == event_log_html(lines, limit=4)


# --------------------------------------------------------------------------- kernel comparison

def test_kernel_comparison_agreeing_tables():
    py = [TCP_EST, UDP_NEW]
    kern = [TCP_EST.replace("431999", "431998"), UDP_NEW.replace(" 29 ", " 30 ")]
    root = parse(kernel_comparison_html(py, kern))
    assert len(root.findall(".//table")) == 2
    assert not with_class(root, "nt-differ") and not with_class(root, "nt-changed")
    assert root.find(".//ul") is None
    assert "2 flow(s): 2 agree, 0 differ" in text_of(root)


def test_kernel_comparison_explains_each_disagreement():
    py = [TCP_EST, UDP_NEW, PING]
    kern = [TCP_EST.replace("431999 ESTABLISHED", "431990 " + HOSTILE),
            UDP_NEW.replace("dport=5353 mark", "dport=1024 mark")]
    html = kernel_comparison_html(py, kern)
    assert "<script" not in html
    root = parse(html)
    problems = [text_of(li) for li in root.iter("li")]
    assert len(problems) == 4                  # state, timeout, reply tuple, ping only in python
    assert any("TCP state differs" in p and HOSTILE in p for p in problems)
    assert any("timeout differs by 9 s" in p for p in problems)
    assert any("reply tuple differs" in p for p in problems)
    assert any(p.startswith("icmp") and "only in python" in p for p in problems)
    tables = root.findall(".//table")
    py_rows, kern_rows = table_rows(tables[0]), table_rows(tables[1])
    assert len(py_rows) == len(kern_rows) == 3
    assert all(has_class(r, "nt-differ") for r in py_rows + kern_rows)
    assert has_class(kern_rows[2], "nt-missing")
    tcp_changed = [td.get("class").split()[-1] for td in kern_rows[0].findall("td")
                   if has_class(td, "nt-changed")]
    assert tcp_changed == ["nt-col-timeout", "nt-col-state"]
    assert "1 differ" not in text_of(root) and "3 flow(s): 0 agree, 3 differ" in text_of(root)
    assert html == kernel_comparison_html(py, kern)


# --------------------------------------------------------------------------- machine-readable state

def test_widget_state_reads_back_what_each_fragment_shows():
    from nattrack.widgets import mode_banner_html, widget_state
    html = conntrack_table_html([TCP_EST, UDP_NEW], highlight="5353")
    s = widget_state(html)
    assert (s["view"], s["entries"], s["states"]) == ("table", "2", "ESTABLISHED,")
    assert s["highlight"] == "udp 10.0.0.2:5353 > 203.0.113.2:53"
    row = [tr for tr in table_rows(parse(html)) if has_class(tr, "nt-hl")]
    assert [tr.get("data-reply") for tr in row] == ["203.0.113.2:53 -> 203.0.113.1:5353"]
    # an entry (a whole line, or a dict) highlights the row with its original tuple
    for entry in (TCP_EST.replace("431999", "5"), parse_conntrack_line(TCP_EST)):
        s = widget_state(conntrack_table_html([TCP_EST, UDP_NEW], highlight=[entry]))
        assert s["highlight"] == "tcp 10.0.0.2:40000 > 203.0.113.2:80"
    # values are escaped in attributes too, and read back intact
    s = widget_state(mode_banner_html("replay", HOSTILE + ' "quoted"'))
    assert s == {"view": "mode", "mode": "replay", "label": HOSTILE + ' "quoted"'}
    with pytest.raises(ValueError, match="live"):
        mode_banner_html("demo")


def test_table_input_forms_summary_line_and_bad_lines():
    text = "\n".join([TCP_EST, UDP_NEW,
                      "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."])
    assert widget_state(conntrack_table_html(text))["entries"] == "2"   # one -L text
    with pytest.raises(ValueError, match="conntrack -L"):
        conntrack_table_html(["tcp six ESTABLISHED"])


def test_entry_and_event_lines_from_json_are_what_conntrack_prints():
    from nattrack.widgets.render import entry_line, event_line
    from nattrack_lab import Lab, TcpFlow
    lab = Lab()
    flow = TcpFlow(lab)
    for who, flags in (("client", "S"), ("server", "SA"), ("client", "A"), ("client", "FA"),
                       ("server", "FA"), ("client", "A")):
        getattr(flow, who)(flags)
        now = lab.ct.jiffies()
        for ct in lab.conns():
            assert entry_line(conn_json(ct, now)) == format_conn(ct, now)
    lab.advance(300)                                  # TIME_WAIT runs out: DESTROY
    assert any("[DESTROY]" in e for e in lab.raw_events)
    assert [event_line(j) for j in lab._events_json] == lab.raw_events


def test_timeline_destroy_rows():
    svg = timeline_svg([("a", 130.0)], now=100.0, horizon=60,
                       destroyed=[("gone-flow", 95.0), (HOSTILE, 99.0)])
    assert "<script" not in svg
    root = parse(svg)
    gone = with_class(root, "nt-destroyed")
    assert [g.get("data-flow") for g in gone] == ["gone-flow", HOSTILE]
    assert all("DESTROY" in text_of(g) for g in gone)
    assert "gone 5 s ago" in text_of(gone[0])
    s = widget_state(svg)
    assert s["destroyed"] == f"gone-flow,{HOSTILE}" and s["entries"] == "1"


def test_state_diagram_shows_each_state_timeout():
    from nattrack.conntrack.sysctl import DEFAULTS
    root = parse(state_diagram_svg(
        timeouts={"net.netfilter.nf_conntrack_tcp_timeout_time_wait": 7}))
    shown = {n.get("data-state"): [t.text for t in n.iter(SVG + "text")]
             for n in with_class(root, "nt-node")}
    assert shown["TIME_WAIT"] == ["TIME_WAIT", "7 s"]
    assert shown["SYN_SENT"] == ["SYN_SENT", f"{DEFAULTS['nf_conntrack_tcp_timeout_syn_sent']} s"]
    assert DEFAULTS["nf_conntrack_tcp_timeout_established"] == 5 * 86400
    assert shown["ESTABLISHED"] == ["ESTABLISHED", "5 d"]
    assert shown["NONE"] == ["NONE"]                      # no entry, no timer
    assert "TIME_WAIT=7" in root.get("data-timeouts").split(",")
    with pytest.raises(ValueError, match="unknown setting"):
        state_diagram_svg(timeouts={"tcp_timeout_time_wait": 7})


def test_timeline_axis_has_round_ticks():
    root = parse(timeline_svg([("a", 130.0)], now=100.0, horizon=120))
    ticks = [t.text for t in with_class(root, "nt-tick")]
    assert ticks == ["0 s", "20 s", "40 s", "60 s", "80 s", "100 s", "120 s"]
    long_label = "udp 192.168.122.148:41000 > 203.0.113.10:53 " + "x" * 40
    root = parse(timeline_svg([(long_label, 130.0)], now=100.0, horizon=30))
    bar = with_class(root, "nt-bar")[0]
    assert bar.get("data-flow") == long_label                  # whole in the data
    assert bar.find(SVG + "text").text.endswith("…")           # clipped on screen
