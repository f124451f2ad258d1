"""The notebooks' data layer offline: replay sessions over the shipped recordings.

The strongest check: the replay recomputes the tracker (the engine over the recorded
ingress packets, on a manual clock) and must find, step by step, the tables, events,
transitions and per-packet verdicts the live shadow tracker recorded; and the
recorded kernel agreed with the tracker.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from nattrack.conntrack import show
from nattrack.lab.craft import build, tcp_flags
from nattrack.notebook import NOTEBOOKS, SessionError, open_session
from nattrack.notebook.recorded import RECORDINGS
from nattrack.packet.checksum import ones_sum, pseudo_header_sum
from nattrack.packet.ipv4 import Packet
from nattrack.packet.pcapio import CaptureReader


def replay(nb: str):
    return open_session(nb, "replay")


def _ev_key(line: str) -> tuple:
    p = show.parse_conntrack_line(line)
    return (p["kind"], p["proto"], p["state"], str(p["orig"]), str(p["reply"]),
            sorted(p["flags"]))


def _ev_timeout(line: str):
    return show.parse_conntrack_line(line)["timeout"]


def _entries(table) -> list:
    return sorted((e["proto"], e["state"], str(e["orig"]), str(e["reply"]), e["assured"],
                   e["unreplied"]) for e in table)


def _timeouts(table) -> list:
    return [e["timeout"] for e in sorted(table, key=lambda e: str(e["orig"]))]


def _close(a: list, b: list, slack: int = 1) -> bool:
    return len(a) == len(b) and all((x is None and y is None) or abs(x - y) <= slack
                                    for x, y in zip(a, b))


def ip(text: str) -> int:
    return struct.unpack("!I", socket.inet_aton(text))[0]


def pkt(data: bytes) -> Packet:
    p = Packet.parse(bytearray(data))
    assert p is not None
    return p


def l4_checksum_ok(data: bytes) -> bool:
    p = pkt(data)
    seg = data[p.l4 - p.off:p.tot_len]
    if p.proto == 1:
        return ones_sum(seg) == 0xFFFF
    return ones_sum(seg, pseudo_header_sum(p.src, p.dst, p.proto, len(seg))) == 0xFFFF


def run_all(nb: str, scenario: str):
    s = replay(nb)
    return s, [s.run(scenario, st.name) for st in s.scenario(scenario).steps]


# --- the recomputation equals the recording --------------------------------------------------

@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_replay_recomputes_what_was_recorded(nb):
    s = replay(nb)
    assert s.mode == "replay" and s.label.startswith("Replay of a recorded lab run (recorded ")
    assert s.scenarios(), nb
    for scn in s.scenarios():
        if scn.simulated:
            continue
        rec = s.recording(scn.name)
        assert rec["lab_mode"] == "kernel" and rec["topology"] == "classroom"
        for st, rs in zip(scn.steps, rec["steps"], strict=True):
            r = s.run(scn.name, st.name)
            where = f"{nb}/{scn.name}/{st.name}"
            assert r.step == st.name and r.scenario == scn.name
            assert _entries(r.table) == _entries(rs["table"]), where
            assert _close(_timeouts(r.table), _timeouts(rs["table"])), where
            assert [_ev_key(e) for e in r.events] == [_ev_key(e) for e in rs["events"]], where
            assert _close([_ev_timeout(e) for e in r.events],
                          [_ev_timeout(e) for e in rs["events"]]), where
            assert (r.transition.to_json() if r.transition else None) == rs["transition"], where
            assert [p.ctinfo for p in r.packets] == [p["ctinfo"] for p in rs["packets"]], where
            assert [p.verdict for p in r.packets] == [p["verdict"] for p in rs["packets"]], where
            # what the kernel did with the same packets: the same entries and events
            assert _entries(r.kernel_table) == _entries(r.table), where
            assert ([_ev_key(e) for e in r.kernel_events]
                    == [_ev_key(e) for e in r.events]), where


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_recordings_are_small_and_their_pcapng_holds_both_sides(nb):
    folder = RECORDINGS / nb
    total = 0
    for scn in replay(nb).scenarios():
        if scn.simulated:
            assert not (folder / f"{scn.name}.json").exists()
            continue
        rec = json.loads((folder / f"{scn.name}.json").read_text())
        frames = list(CaptureReader(str(folder / f"{scn.name}.pcapng")))
        total += sum(f.stat().st_size for f in folder.glob(f"{scn.name}.*"))
        pairs = [p for st in rec["steps"] for p in st["packets"]]
        sides = sum(1 for p in pairs if p["iface_in"]) + sum(1 for p in pairs if p["after"])
        ipv4 = [f for f in frames if f.data[12:14] == b"\x08\x00"]
        assert len(ipv4) >= sides, scn.name
        assert {f.iface for f in frames} <= {"ntr-lan", "ntr-wan"}
    assert total < 400_000


# --- 01: TCP states ------------------------------------------------------------------------

def test_handshake_transitions_time_wait_and_destroy_after_advance():
    s, rs = run_all("01-tcp-states", "handshake")
    steps = [(r.transition.old_state, r.transition.new_state, r.transition.direction,
              r.transition.flag) for r in rs]
    assert steps == [
        ("NONE", "SYN_SENT", "ORIGINAL", "SYN"), ("SYN_SENT", "SYN_RECV", "REPLY", "SYN-ACK"),
        ("SYN_RECV", "ESTABLISHED", "ORIGINAL", "ACK"),
        ("ESTABLISHED", "ESTABLISHED", "ORIGINAL", "data"),
        ("ESTABLISHED", "ESTABLISHED", "REPLY", "ACK"),
        ("ESTABLISHED", "FIN_WAIT", "ORIGINAL", "FIN"), ("FIN_WAIT", "CLOSE_WAIT", "REPLY", "ACK"),
        ("CLOSE_WAIT", "LAST_ACK", "REPLY", "FIN"), ("LAST_ACK", "TIME_WAIT", "ORIGINAL", "ACK")]
    assert rs[0].table[0]["unreplied"] and not rs[1].table[0]["unreplied"]
    assert rs[2].table[0]["assured"] and rs[2].table[0]["timeout"] >= 431999
    (entry,) = s.table()
    assert entry["state"] == "TIME_WAIT" and 118 <= entry["timeout"] <= 120
    t0 = s.now()
    s.advance(60)
    assert s.now() == pytest.approx(t0 + 60)
    (entry,) = s.table()
    assert 58 <= entry["timeout"] <= 60                  # the timer ran down
    s.advance(61)
    assert s.table() == []
    assert s.events()[-1].startswith("[DESTROY] tcp") and "TIME_WAIT" in s.events()[-1]
    # the kernel's side stays as recorded after the last step
    assert s.kernel_table()[0]["state"] == "TIME_WAIT"


def test_reply_goes_to_the_routers_translated_address_and_comes_back_to_h1():
    _, rs = run_all("01-tcp-states", "handshake")
    syn, synack = rs[0].packets[0], rs[1].packets[0]
    b, a = pkt(syn.before), pkt(syn.after)
    assert (syn.iface_in, syn.iface_out) == ("ntr-lan", "ntr-wan")
    assert (b.src, a.src, a.sport, a.dst) == (ip("10.0.0.10"), ip("203.0.113.1"), 40001,
                                              ip("203.0.113.10"))
    assert b.tcpflags == tcp_flags("S") and b.seq == a.seq
    b, a = pkt(synack.before), pkt(synack.after)
    assert (b.dst, b.dport, a.dst, a.dport) == (ip("203.0.113.1"), 40001, ip("10.0.0.10"), 40001)
    assert b.ack == pkt(syn.before).seq + 1            # acknowledges the SYN
    for p in (syn, synack):
        assert l4_checksum_ok(p.before) and l4_checksum_ok(p.after)
        assert p.before[10:12] != p.after[10:12]        # the IP checksum was rewritten


@pytest.mark.parametrize("scenario, final", [("rst", ("ESTABLISHED", "CLOSE", "ORIGINAL", "RST")),
                                             ("simultaneous-close", ("TIME_WAIT", "TIME_WAIT", "REPLY", "ACK")),
                                             ("half-close", ("LAST_ACK", "TIME_WAIT", "ORIGINAL", "ACK")),
                                             ("closed-port", ("SYN_SENT", "CLOSE", "REPLY", "RST"))])
def test_tcp_variants_end_where_the_kernel_ends(scenario, final):
    _, rs = run_all("01-tcp-states", scenario)
    t = rs[-1].transition
    assert (t.old_state, t.new_state, t.direction, t.flag) == final
    if scenario == "closed-port":
        # srv's own kernel answered RST; conntrack destroyed the unreplied entry at once
        assert rs[-1].table == [] and rs[-1].kernel_table == []
        assert [e.split()[0] for e in rs[-1].events] == ["[NEW]", "[DESTROY]"]
    if scenario == "half-close":
        data = next(r for r in rs if r.step == "data")
        assert data.transition.new_state == "CLOSE_WAIT" and data.transition.flag == "data"


# --- 02: SNAT ------------------------------------------------------------------------------

def test_second_host_same_port_gets_another_port():
    _, rs = run_all("02-snat", "clash")
    h1, h2, answer = rs
    assert pkt(h1.packets[0].after).sport == 40021               # free: kept
    moved = pkt(h2.packets[0].after)
    assert pkt(h2.packets[0].before).sport == 40021 and moved.sport != 40021
    e2 = next(e for e in h2.table if e["orig"]["src"] == "10.0.0.11")
    assert e2["reply"] == {"src": "203.0.113.10", "dst": "203.0.113.1", "sport": 5021,
                           "dport": moved.sport}
    back = answer.packets[0]
    assert (pkt(back.before).dport, pkt(back.after).dst, pkt(back.after).dport) == (
        moved.sport, ip("10.0.0.11"), 40021)


def test_snat_range_and_port_forward():
    _, rs = run_all("02-snat", "snat-range")
    ports = {e["reply"]["dport"] for e in rs[-1].table}
    assert len(ports) == 2 and all(20000 <= p <= 20009 for p in ports)
    _, rs = run_all("02-snat", "port-forward")
    syn = rs[0].packets[0]
    assert (syn.iface_in, syn.iface_out) == ("ntr-wan", "ntr-lan")
    assert (pkt(syn.before).dst, pkt(syn.before).dport) == (ip("203.0.113.1"), 8080)
    assert (pkt(syn.after).dst, pkt(syn.after).dport) == (ip("10.0.0.11"), 5080)
    (e,) = rs[-1].table
    assert e["reply"]["src"] == "10.0.0.11" and e["reply"]["sport"] == 5080
    assert e["state"] == "ESTABLISHED" and e["assured"]


# --- 03: timeouts --------------------------------------------------------------------------

def test_udp_unreplied_to_assured_then_destroy():
    s, rs = run_all("03-timeouts", "udp-assured")
    q, a, again, expire = rs
    assert q.table[0]["unreplied"] and not q.table[0]["assured"] and q.table[0]["timeout"] <= 10
    assert not a.table[0]["unreplied"] and not a.table[0]["assured"]
    assert again.table[0]["assured"] and 18 <= again.table[0]["timeout"] <= 20
    assert expire.table == [] and expire.kernel_table == []
    assert [e.split()[0] for e in expire.events] == ["[DESTROY]"]
    assert [e.split()[0] for e in expire.kernel_events] == ["[DESTROY]"]
    assert s.recording("udp-assured")["sysctls"]["net.netfilter.nf_conntrack_udp_timeout"] == 10


def test_advance_runs_timeouts_down_in_replay():
    s = replay("03-timeouts")
    s.run("udp-assured", "question")
    assert len(s.table()) == 1
    s.advance(11)                                        # nf_conntrack_udp_timeout = 10 s
    assert s.table() == []
    assert s.events()[-1].startswith("[DESTROY] udp")
    # the next recorded step still replays (its packets come later by the same offset)
    r = s.run("udp-assured", "answer")
    assert r.packets and s.now() >= r.t


def test_time_wait_expiry_with_a_shortened_timeout():
    s, rs = run_all("03-timeouts", "time-wait")
    tw = next(r for r in rs if r.step == "last-ACK")
    assert tw.table[0]["state"] == "TIME_WAIT" and tw.table[0]["timeout"] <= 5
    assert rs[-1].table == [] and "[DESTROY]" in rs[-1].events[0]


def test_set_sysctl_in_replay_changes_the_engine():
    s = replay("03-timeouts")
    assert s.set_sysctl("nf_conntrack_udp_timeout", 3) == 3
    s.run("time-wait", "SYN")                           # a scenario without its own UDP value
    assert s.engine.router.ct.sysctl.get_full("net.netfilter.nf_conntrack_udp_timeout") == 3
    with pytest.raises(SessionError, match="nf_conntrack_bogus"):
        s.set_sysctl("nf_conntrack_bogus", 1)


def test_full_table_early_drop_spares_the_assured_entry():
    s, (assured, fill, more) = run_all("03-timeouts", "table-full")
    assert assured.table[0]["assured"] and assured.kernel_table is None
    assert len(fill.table) == 4 and all(p.ctinfo == "NEW" for p in fill.packets)
    assert len(more.table) == 4 and more.packets[0].verdict == "forwarded"
    assert [e.split()[0] for e in more.events] == ["[DESTROY]", "[NEW]"]
    assert "ESTABLISHED" in {e["state"] for e in more.table}           # ASSURED: spared
    assert s.engine.router.ct.stats["early_drop"] == 1
    s.set_sysctl("nf_conntrack_max", 262144)
    s.advance(31)                                      # the UDP entries time out, TCP stays
    assert [e["proto"] for e in s.table()] == ["tcp"]
    s.run("udp-assured", "question")                   # a recorded scenario again: kernel side
    assert s.kernel_table() is not None and s.engine.router.ct.sysctl["nf_conntrack_max"] == 262144


# --- 04: RELATED and INVALID -----------------------------------------------------------------

def test_port_unreachable_is_related_and_its_quote_is_rewritten():
    _, (r,) = run_all("04-related-and-invalid", "port-unreachable")
    err = r.packets[1]
    assert err.ctinfo == "RELATED_REPLY" and err.verdict == "forwarded"
    b, a = pkt(err.before), pkt(err.after)
    assert (b.proto, b.itype, b.icode) == (1, 3, 3)
    qb, qa = pkt(err.before[28:] + b"\0" * 8), pkt(err.after[28:] + b"\0" * 8)
    assert (b.dst, qb.src, qb.sport) == (ip("203.0.113.1"), ip("203.0.113.1"), 40040)
    assert (a.dst, qa.src, qa.sport) == (ip("10.0.0.10"), ip("10.0.0.10"), 40040)
    assert l4_checksum_ok(err.after)


def test_time_exceeded_from_afar_and_from_the_router_are_related():
    _, (first, far, ttl1) = run_all("04-related-and-invalid", "ttl-exceeded")
    (err,) = far.packets
    assert err.ctinfo == "RELATED_REPLY" and pkt(err.after).dst == ip("10.0.0.10")
    assert pkt(err.after[28:] + b"\0" * 8).src == ip("10.0.0.10")
    dropped, own = ttl1.packets
    assert dropped.verdict == "dropped: TTL exceeded" and dropped.after is None
    assert own.iface_in is None and own.verdict == "sent by the router"
    assert own.ctinfo == "RELATED_REPLY" and pkt(own.before).itype == 11   # nf_ct_attach()
    assert pkt(own.before[28:] + b"\0" * 8).src == ip("10.0.0.10")          # quote untranslated


def test_invalid_leaks_without_a_filter_and_is_dropped_with_one():
    _, (r,) = run_all("04-related-and-invalid", "invalid-leak")
    (p,) = r.packets
    assert p.ctinfo == "INVALID" and p.verdict == "forwarded"
    assert pkt(p.after).src == ip("10.0.0.10")                 # untranslated: a leak
    assert r.table == [] and r.kernel_table == []
    s, rs = run_all("04-related-and-invalid", "firewall")
    assert s.engine.router.ct.stats["invalid"] >= 1
    bare = next(r for r in rs if r.step == "bare-ACK")
    assert bare.packets[0].ctinfo == "INVALID" and bare.packets[0].after is None
    assert bare.packets[0].verdict == "dropped: filter FORWARD"
    unsolicited = rs[-1].packets[0]
    assert unsolicited.ctinfo == "NEW" and unsolicited.verdict == "dropped: filter FORWARD"
    assert [e["state"] for e in rs[-1].table] == ["ESTABLISHED"]


def test_welcome_ping_and_udp():
    _, (ping,) = run_all("00-welcome", "ping")
    assert [p.ctinfo for p in ping.packets] == ["NEW", "ESTABLISHED_REPLY"]
    (e,) = ping.table
    assert e["proto"] == "icmp" and e["orig"]["id"] == 7 and not e["unreplied"]
    _, (q, a) = run_all("00-welcome", "udp")
    assert q.table[0]["unreplied"] and not a.table[0]["unreplied"]


# --- the API's edges ---------------------------------------------------------------------------

def test_run_catches_up_and_rerunning_an_earlier_step_starts_over():
    s = replay("01-tcp-states")
    r = s.run("handshake", "ACK")                        # SYN and SYN-ACK run first
    assert r.transition.new_state == "ESTABLISHED" and len(s.results) == 3
    r = s.run("handshake", "SYN")                        # earlier: from a reset
    assert [e["state"] for e in r.table] == ["SYN_SENT"] and r.transition.old_state == "NONE"
    assert s.run("handshake").step == "SYN-ACK"          # no step: the next one
    s.reset()
    assert s.table() == [] and s.kernel_table() == []
    r = s.run("rst", "SYN")
    assert [e["orig"]["sport"] for e in r.table] == [40002]


def test_bad_names_are_one_line_errors(monkeypatch, tmp_path):
    with pytest.raises(SessionError, match="known are 00-welcome"):
        open_session("05-nope", "replay")
    s = replay("01-tcp-states")
    with pytest.raises(SessionError, match="scenarios are handshake"):
        s.run("nope")
    with pytest.raises(SessionError, match="steps are SYN, SYN-ACK"):
        s.run("handshake", "nope")
    with pytest.raises(SessionError, match="sudo nattrack record 01-tcp-states"):
        open_session("01-tcp-states", "replay", recordings=tmp_path)


def test_auto_mode_falls_back_to_replay_and_live_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("NATTRACK_LAB_SOCK", str(tmp_path / "none.sock"))
    monkeypatch.delenv("NATTRACK_NOTEBOOK_MODE", raising=False)
    s = open_session("00-welcome")
    assert s.mode == "replay" and "sudo nattrack notebook" in s.why_not_live
    with pytest.raises(SessionError, match=r"sudo nattrack notebook"):
        open_session("00-welcome", "live")
    monkeypatch.setenv("NATTRACK_NOTEBOOK_MODE", "replay")
    s = open_session("00-welcome", "auto")
    assert s.mode == "replay" and s.why_not_live == "NATTRACK_NOTEBOOK_MODE=replay"



def test_grading_always_replays_even_when_live_is_asked_for(monkeypatch):
    import nattrack.notebook.live as live
    import nattrack.notebook.session as session
    from nattrack.widgets import views
    assert session.GRADING_VARS == views.GRADING_VARS      # one notion of a grading run

    def no_live(*a, **kw):
        raise AssertionError("a grading run opened a live session")
    monkeypatch.setattr(live, "LiveSession", no_live)
    for var in ("NATTRACK_GRADING", "NBGRADER_EXECUTION"):
        monkeypatch.delenv("NATTRACK_GRADING", raising=False)
        monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
        monkeypatch.setenv(var, "1")
        monkeypatch.setenv("NATTRACK_NOTEBOOK_MODE", "live")
        s = open_session("00-welcome")
        assert s.mode == "replay" and s.why_not_live.startswith("a grading run")
        assert "replay instead of the live lab" in s.why_not_live
        monkeypatch.delenv("NATTRACK_NOTEBOOK_MODE")
        s = open_session("00-welcome", "live")
        assert s.mode == "replay" and "replay instead of the live lab" in s.why_not_live
        s = open_session("00-welcome", "auto")
        assert s.mode == "replay" and s.why_not_live.startswith("a grading run")
    monkeypatch.delenv("NBGRADER_EXECUTION")
    with pytest.raises(AssertionError, match="opened a live session"):
        open_session("00-welcome", "live")                   # not grading: live is tried


def test_a_failed_event_stream_is_a_session_error(monkeypatch, tmp_path):
    """The lab answers but its event streams cannot be read: no live session without
    events (auto falls back to replay and says why); a stream that fails later stops
    the next step."""
    from nattrack.notebook.live import LiveSession, _Pump
    monkeypatch.delenv("NATTRACK_NOTEBOOK_MODE", raising=False)
    monkeypatch.delenv("NATTRACK_GRADING", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)

    class Answers:                                # hello and status work, streams do not
        path = tmp_path / "gone.sock"

        def hello(self):
            return {"topo": "classroom", "mode": "kernel"}

        def status(self):
            return {}
    with pytest.raises(SessionError, match="tracker's event stream .* failed: .*restart"):
        open_session("01-tcp-states", "live", client=Answers())
    s = open_session("01-tcp-states", "auto", client=Answers())
    assert s.mode == "replay" and "event stream" in s.why_not_live
    assert not [t for t in threading.enumerate() if t.name.startswith("nattrack-notebook-")]

    failed = _Pump(Answers.path, "kernel_conntrack", {}, "line")
    failed.start()
    failed.join(5)
    ended = _Pump(Answers.path, "conntrack", {}, "event")
    ended.ready.set()                             # started, then the service closed it
    live = LiveSession.__new__(LiveSession)
    live.sim = None
    for pump, why in ((failed, "the kernel's event stream .* failed"),
                      (ended, "the tracker's event stream .* ended")):
        live._pumps = [pump]
        with pytest.raises(SessionError, match=why):
            live._step(None, None)
    ended.stopping.set()                          # stopped on purpose: not a failure
    assert ended.failure() is None


def test_a_capture_that_does_not_start_stops_the_step(monkeypatch):
    import nattrack.notebook.live as live
    monkeypatch.setattr(live, "CAPTURE_START_S", 0.3)
    monkeypatch.setattr(live, "CAPTURE_END_S", 2.0)

    class Client:
        def __init__(self, starts: bool):
            self.starts = starts

        def capture(self, path, router, started, stop):
            if self.starts:
                started()
            while not stop():
                time.sleep(0.01)
            from nattrack.packet.pcapio import PcapngWriter
            PcapngWriter(path).close()                # the service's file: no frames
    s = live.LiveSession.__new__(live.LiveSession)
    ran = []
    s.client = Client(starts=False)
    with pytest.raises(SessionError, match="the capture did not start within 0.3 s"):
        s._capture(lambda: ran.append(1))
    assert ran == []                                  # no step without its packets
    s.client = Client(starts=True)
    assert s._capture(lambda: ran.append(1)) == [] and ran == [1]

# --- craft ---------------------------------------------------------------------------------------

def test_craft_builds_valid_packets_and_rejects_bad_flags(capsys):
    for proto in ("tcp", "udp", "icmp"):
        data = build(proto, "10.0.0.10", "203.0.113.10", 40001, 5001, "SA" if proto == "tcp" else "",
                     7, 9, payload=b"hello", ipid=42)
        p = pkt(data)
        assert p.l4ok and p.ipid == 42 and l4_checksum_ok(data)
        assert ones_sum(data[:20]) == 0xFFFF
    assert pkt(build("tcp", "1.2.3.4", "5.6.7.8", 1, 2, "FA", 1, 2)).tcpflags == 0x11
    from nattrack.lab.craft import main
    assert main(["tcp", "--src", "1.2.3.4", "--dst", "5.6.7.8", "--flags", "SX"]) == 2
    assert "use the letters" in capsys.readouterr().err


def test_the_services_rules_verb_takes_only_shipped_files_by_name():
    from nattrack.lab import LabError
    from nattrack.lab.api import shipped_rules
    assert shipped_rules("classroom-firewall").name == "classroom-firewall.rules"
    assert shipped_rules("classroom.rules").name == "classroom.rules"
    for bad in ("../../etc/shadow", "/etc/passwd", "", None, "nope"):
        with pytest.raises(LabError, match="examples/rules"):
            shipped_rules(bad)
