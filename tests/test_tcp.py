"""TCP connection tracking against docs kernel-conntrack.md §3 (and §2 where TCP shows it).

Every expectation is typed from the reference: the two transition tables of §3.3 are
copied below as text and compared with the engine's ``TCP_CONNTRACKS`` and, cell by cell,
with what the router does to a crafted packet; the [EXP] event lines of §3.4 and §3.7
are compared as text.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from nattrack.conntrack import proto_tcp
from nattrack.conntrack.conn import IPS_ASSURED, IPS_SEEN_REPLY
from nattrack.conntrack.sysctl import DEFAULTS, Sysctl

from nattrack_lab import PRIV1, PUB, RTR_PUB, Lab, TcpFlow, tcp_state

# --------------------------------------------------------------------------------------------
# §3.3, copied from the reference (columns: NONE SYN_SENT SYN_RECV ESTAB FIN_WAIT CLOSE_WAIT
# LAST_ACK TIME_WAIT CLOSE SYN_SENT2)
# --------------------------------------------------------------------------------------------

SPEC_ORIGINAL = """
| SYN | SYN_SENT | SYN_SENT | sIG | sIG | sIG | sIG | sIG | SYN_SENT | SYN_SENT | SYN_SENT2 |
| SYN-ACK | sIV | sIV | SYN_RECV | sIV | sIV | sIV | sIV | sIV | sIV | SYN_RECV |
| FIN | sIV | sIV | FIN_WAIT | FIN_WAIT | LAST_ACK | LAST_ACK | LAST_ACK | TIME_WAIT | CLOSE | sIV |
| ACK | ESTAB | sIV | ESTAB | ESTAB | CLOSE_WAIT | CLOSE_WAIT | TIME_WAIT | TIME_WAIT | CLOSE | sIV |
| RST | sIV | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE |
| NONE | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV |
"""
SPEC_REPLY = """
| SYN | sIV | SYN_SENT2 | sIV | sIV | sIV | sIV | sIV | SYN_SENT | sIV | SYN_SENT2 |
| SYN-ACK | sIV | SYN_RECV | sIG | sIG | sIG | sIG | sIG | sIG | sIG | SYN_RECV |
| FIN | sIV | sIV | FIN_WAIT | FIN_WAIT | LAST_ACK | LAST_ACK | LAST_ACK | TIME_WAIT | CLOSE | sIV |
| ACK | sIV | sIG | SYN_RECV | ESTAB | CLOSE_WAIT | CLOSE_WAIT | TIME_WAIT | TIME_WAIT | CLOSE | sIG |
| RST | sIV | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE | CLOSE |
| NONE | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV | sIV |
"""
STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
          "TIME_WAIT", "CLOSE", "SYN_SENT2"]
INDEXES = ["SYN", "SYN-ACK", "FIN", "ACK", "RST", "NONE"]
ORIG, REPLY = 0, 1


def _parse_spec(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = ["ESTABLISHED" if c == "ESTAB" else c for c in cells[1:]]
        assert len(rows[cells[0]]) == 10
    return rows


SPEC = (_parse_spec(SPEC_ORIGINAL), _parse_spec(SPEC_REPLY))


def spec_cell(direction: int, index: str, state: str) -> str:
    return SPEC[direction][index][STATES.index(state)]


def engine_name(value: int) -> str:
    if value == proto_tcp.sIV:
        return "sIV"
    if value == proto_tcp.sIG:
        return "sIG"
    return proto_tcp.TCP_CONNTRACK_NAMES[value]


ALL_CELLS = [(d, i, s) for d in (ORIG, REPLY) for i in INDEXES for s in STATES]


@pytest.mark.parametrize("direction,index,state", ALL_CELLS,
                         ids=[f"{'orig' if d == 0 else 'reply'}-{i}-{s}" for d, i, s in ALL_CELLS])
def test_transition_table_data_matches_spec(direction, index, state):
    got = proto_tcp.TCP_CONNTRACKS[direction][INDEXES.index(index)][STATES.index(state)]
    assert engine_name(got) == spec_cell(direction, index, state)


def test_state_numbers_and_names_match_spec_table():
    # §3.1: 0 NONE ... 9 SYN_SENT2, 10 MAX (= sIV), 11 IGNORE (= sIG), 12 RETRANS, 13 UNACK
    assert proto_tcp.TCP_CONNTRACK_NAMES == STATES
    assert (proto_tcp.sIV, proto_tcp.sIG) == (10, 11)
    assert (proto_tcp.TCP_CONNTRACK_RETRANS, proto_tcp.TCP_CONNTRACK_UNACK) == (12, 13)


# --------------------------------------------------------------------------------------------
# §3.2 flag index and the valid flag combinations
# --------------------------------------------------------------------------------------------

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
SPEC_VALID = {SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG}


def spec_index(flags: int) -> str:
    if flags & RST:
        return "RST"
    if flags & SYN:
        return "SYN-ACK" if flags & ACK else "SYN"
    if flags & FIN:
        return "FIN"
    if flags & ACK:
        return "ACK"
    return "NONE"


def spec_valid(flags: int) -> bool:
    return flags & ~(PSH | ECE | CWR) in SPEC_VALID


def flag_str(flags: int) -> str:
    return "".join(c for bit, c in zip((FIN, SYN, RST, PSH, ACK, URG, ECE, CWR), "FSRPAUEC")
                   if flags & bit)


def test_flag_index_priority_rst_syn_fin_ack_none():
    for flags in range(256):
        assert INDEXES[proto_tcp.get_conntrack_index(flags)] == spec_index(flags), flag_str(flags)
    # FIN+ACK counts as FIN; RST wins over everything; SYN over FIN.
    assert spec_index(FIN | ACK) == "FIN"


@pytest.mark.parametrize("flags", range(64), ids=[flag_str(f) or "none" for f in range(64)])
def test_first_packet_flags_create_entry_only_for_syn_or_loose_ack(flags):
    """§3.2 + §3.3: a first packet opens an entry only with index SYN (SYN_SENT) or ACK
    (ESTABLISHED, loose=1), and only if the combination is valid; everything else is
    INVALID: no entry, `invalid` + 1, and it leaves untranslated."""
    lab = Lab()
    v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=42000, dport=9000, flags=flags,
                                                      seq=100, ack=200 if flags & ACK else 0))
    out = IP(v.sent[0].data)
    masked = flags & ~PSH
    if masked in (SYN, SYN | URG, ACK, ACK | URG):
        assert len(lab.conns()) == 1
        assert tcp_state(lab.only()) == ("SYN_SENT" if flags & SYN else "ESTABLISHED")
        assert out.src == RTR_PUB
        assert lab.stats["invalid"] == 0
    else:
        assert lab.conns() == []
        assert lab.stats["invalid"] == 1
        assert out.src == PRIV1
        assert lab.events == []


@pytest.mark.parametrize("flags", range(256), ids=[flag_str(f) or "none" for f in range(256)])
def test_invalid_flag_combinations_are_invalid_even_on_established(flags):
    """§3.2: tcp_error rejects any combination outside the list before the table is used."""
    lab = Lab()
    f = TcpFlow(lab)
    f.handshake()
    before = lab.remaining()
    lab.advance(5)
    v = f.client(flags, advance=False)
    invalid = lab.stats["invalid"]
    if not spec_valid(flags):
        assert invalid == 1
        assert not f.client_translated(v)
        assert tcp_state(lab.only()) == "ESTABLISHED"
        assert lab.remaining() == before - 5
    elif spec_index(flags) == "ACK":
        assert invalid == 0 and f.client_translated(v)


def test_bare_fin_is_invalid_and_leaves_untranslated_while_syn_is_natted(lab):
    """§2 [EXP]: `IP 10.0.0.2.42023 > 203.0.113.2.9003: Flags [F]` left un-NATed, the SYN a
    second later went out as 203.0.113.1.42024."""
    out = lab.out("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=42023, dport=9003, flags="F"))
    assert (out.src, out[TCP].sport) == (PRIV1, 42023)
    assert lab.conns() == [] and lab.stats["invalid"] == 1
    lab.advance(1)
    out = lab.out("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=42024, dport=9004, flags="S"))
    assert (out.src, out[TCP].sport) == (RTR_PUB, 42024)


@pytest.mark.parametrize("flags", ["F", "SF", "R", "", "FR", "SR", "U", "P"])
def test_stateless_invalid_first_packets_create_no_entry(lab, flags):
    """§3.2 [EXP]: bare FIN, SYN+FIN and (state-less) RST each incremented `invalid` and
    created no entry; a packet with no flags is always invalid."""
    v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=42000, dport=9000, flags=flags))
    assert lab.conns() == [] and lab.events == []
    assert lab.stats["invalid"] == 1
    assert IP(v.sent[0].data).src == PRIV1


def test_bad_tcp_checksum_is_invalid_in_prerouting_only_when_checking_enabled(make_lab):
    pkt = IP(src=PRIV1, dst=PUB) / TCP(sport=42000, dport=9000, flags="S", chksum=0x1234)
    lab = make_lab()
    lab.send("eth0", pkt)
    assert lab.conns() == [] and lab.stats["invalid"] == 1
    lab = make_lab(sysctl={"nf_conntrack_checksum": 0})
    lab.send("eth0", pkt)
    assert len(lab.conns()) == 1 and lab.stats["invalid"] == 0


def test_bad_tcp_checksum_not_checked_outside_prerouting(lab):
    """§3.2: the checksum is only checked in PRE_ROUTING (a LOCAL_OUT packet is trusted)."""
    lab.send_local(IP(src=RTR_PUB, dst=PUB) / TCP(sport=42000, dport=9000, flags="S", chksum=0x1234))
    assert len(lab.conns()) == 1 and lab.stats["invalid"] == 0


def test_truncated_tcp_header_is_invalid(lab):
    raw = bytes(IP(src=PRIV1, dst=PUB) / TCP(sport=42000, dport=9000, flags="S"))[:20 + 12]
    pkt = IP(raw)
    pkt.len = len(raw)
    del pkt.chksum
    lab.send("eth0", IP(bytes(pkt)))
    assert lab.conns() == [] and lab.stats["invalid"] == 1


# --------------------------------------------------------------------------------------------
# §3.3 every cell, through the router with crafted packets
# --------------------------------------------------------------------------------------------

def reach(lab: Lab, state: str) -> TcpFlow:
    """Bring a flow into ``state`` with ordinary, in-window packets."""
    f = TcpFlow(lab)
    steps = {
        "SYN_SENT": [("c", "S")],
        "SYN_RECV": [("c", "S"), ("s", "SA")],
        "ESTABLISHED": [("c", "S"), ("s", "SA"), ("c", "A")],
        "FIN_WAIT": [("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA")],
        "CLOSE_WAIT": [("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "A")],
        "LAST_ACK": [("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "A"), ("s", "FA")],
        "TIME_WAIT": [("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "A"), ("s", "FA"),
                      ("c", "A")],
        "CLOSE": [("c", "S"), ("s", "SA"), ("c", "A"), ("c", "R")],
        "SYN_SENT2": [("c", "S"), ("s", "S")],
    }[state]
    for side, flags in steps:
        (f.client if side == "c" else f.server)(flags)
    assert tcp_state(lab.only()) == state, f"test set-up failed to reach {state}: {lab.table()}"
    return f


def assert_router_resets(f: TcpFlow, v) -> None:
    """An INVALID server segment is not translated, so it is addressed to the router itself,
    whose stack answers it with a RST (tcp_v4_send_reset(): nothing listens on the
    masqueraded port).  That RST belongs to no connection and is INVALID too (tcp_new()
    refuses a RST): `invalid` +2 in all, as a 6.18 router counts (tests/kernel scenario
    local_late_replies_after_expiry)."""
    assert len(v.sent) == 1, [IP(s.data).summary() for s in v.sent]
    rst = IP(v.sent[0].data)
    assert v.sent[0].oif == f.server_if
    assert (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == (RTR_PUB, f.dst, f.nat_port, f.dport)
    assert rst[TCP].flags.R


PROBE_FLAGS = {"SYN": "S", "SYN-ACK": "SA", "FIN": "FA", "ACK": "A", "NONE": "U"}
REACHABLE_CELLS = [(d, i, s) for d, i, s in ALL_CELLS if not (d == REPLY and s == "NONE")]


@pytest.mark.parametrize("direction,index,state", REACHABLE_CELLS,
                         ids=[f"{'orig' if d == 0 else 'reply'}-{i}-{s}" for d, i, s in REACHABLE_CELLS])
def test_transition_cell_through_router(direction, index, state):
    """One cell of §3.3 with the post-table rules of §3.4 that apply to it.

    sIV: INVALID (`invalid`+1, packet not translated, nothing changes); sIG: accepted and
    translated but state and timeout untouched; a state: the entry moves there.
    Specials: a SYN that yields SYN_SENT in TIME_WAIT/CLOSE after a FIN/RST reopens
    (DESTROY then NEW); a RST before any reply deletes the entry.
    (The REPLY/NONE column is unreachable: without an entry there is no reply direction.)
    """
    lab = Lab()
    expected = spec_cell(direction, index, state)
    flags = PROBE_FLAGS.get(index) or ("R" if direction == ORIG else "RA")

    if state == "NONE":
        v = TcpFlow(lab).client(flags)
        if expected == "sIV":
            assert lab.conns() == [] and lab.stats["invalid"] == 1
            assert IP(v.sent[0].data).src == PRIV1
        else:
            assert tcp_state(lab.only()) == expected
            assert IP(v.sent[0].data).src == RTR_PUB
        return

    f = reach(lab, state)
    ct = lab.only()
    lab.advance(5)
    remaining = lab.remaining(ct)
    lab.raw_events.clear()
    invalid = lab.stats["invalid"]
    v = f.client(flags) if direction == ORIG else f.server(flags)
    translated = f.client_translated(v) if direction == ORIG else f.server_translated(v)

    if expected == "sIV":
        if direction == REPLY and "R" not in flags:
            assert_router_resets(f, v)          # the router's own RST: INVALID as well
            assert lab.stats["invalid"] == invalid + 2
        else:                                   # (no stack answers a RST)
            assert lab.stats["invalid"] == invalid + 1
        assert not translated
        assert tcp_state(ct) == state and lab.remaining(ct) == remaining
        assert lab.events == []
    elif expected == "sIG":
        assert lab.stats["invalid"] == invalid
        assert translated
        assert tcp_state(ct) == state and lab.remaining(ct) == remaining
    elif expected == "SYN_SENT" and state in ("TIME_WAIT", "CLOSE"):
        # §3.4.1: the close was initiated (FIN) or the last packet this way was a RST.
        ev = lab.events
        assert len(ev) == (3 if direction == REPLY else 2), ev
        assert ev[0].startswith(f"[DESTROY] tcp      6 {remaining} {state} ")
        assert ev[1].startswith("    [NEW] tcp      6 120 SYN_SENT ")
        if direction == REPLY:
            # The new connection's SYN is for the router itself (the NAT binding went with
            # the old entry); nothing listens there, so its stack answers RST|ACK, and that
            # reply RST before any other reply deletes the new entry at once.
            assert f"src={f.dst} dst={RTR_PUB} sport={f.dport} dport={f.nat_port} " in ev[1]
            rst = IP(v.sent[0].data)
            assert len(v.sent) == 1 and rst[TCP].flags == "RA" and rst.dst == f.dst
            assert len(ev) == 3 and ev[2].startswith("[DESTROY] tcp      6 ") and " CLOSE " in ev[2]
            assert lab.conns() == []
        else:
            new = lab.only()
            assert new is not ct and tcp_state(new) == "SYN_SENT"
            assert new.orig.src == ct.orig.src
    elif expected == "CLOSE" and state == "SYN_SENT":
        # §3.4: no reply seen yet and a RST -> the entry is deleted at once.
        assert lab.conns() == []
        ev = lab.events
        assert len(ev) == 1 and ev[0].startswith("[DESTROY] tcp      6 ") and " CLOSE " in ev[0]
    else:
        assert lab.stats["invalid"] == invalid
        assert translated
        assert tcp_state(ct) == expected
        if expected != state:
            assert any(e.startswith(" [UPDATE]") and f" {expected} " in e for e in lab.events)


# --------------------------------------------------------------------------------------------
# §3.4 lifecycles with the [EXP] events
# --------------------------------------------------------------------------------------------

O_8080 = "src=10.0.0.2 dst=203.0.113.2 sport=40001 dport=8080"
R_8080 = "src=203.0.113.2 dst=203.0.113.1 sport=8080 dport=40001"


def test_full_lifecycle_active_close_events(lab):
    """§3.4 [EXP] full lifecycle: client 10.0.0.2 active close, server closes 1.5 s later."""
    f = TcpFlow(lab, sport=40001, dport=8080)
    f.handshake()
    lab.advance(0.5)
    f.client("FA")
    f.server("A")
    lab.advance(1.5)
    f.server("FA")
    f.client("A")
    assert lab.events == [
        f"    [NEW] tcp      6 120 SYN_SENT {O_8080} [UNREPLIED] {R_8080}",
        f" [UPDATE] tcp      6 60 SYN_RECV {O_8080} {R_8080}",
        f" [UPDATE] tcp      6 432000 ESTABLISHED {O_8080} {R_8080} [ASSURED]",
        f" [UPDATE] tcp      6 120 FIN_WAIT {O_8080} {R_8080} [ASSURED]",
        f" [UPDATE] tcp      6 60 CLOSE_WAIT {O_8080} {R_8080} [ASSURED]",
        f" [UPDATE] tcp      6 30 LAST_ACK {O_8080} {R_8080} [ASSURED]",
        f" [UPDATE] tcp      6 120 TIME_WAIT {O_8080} {R_8080} [ASSURED]",
    ]
    lab.advance(2.5)
    assert lab.table() == [f"tcp      6 117 TIME_WAIT {O_8080} {R_8080} [ASSURED] mark=0 use=1"]


def test_established_listing_shows_431999_just_after_handshake(lab):
    """§9.1/§7.1 [EXP]: remaining time is rounded down: `tcp 6 431999 ESTABLISHED`."""
    f = TcpFlow(lab, sport=40000, dport=80)
    f.handshake()
    lab.advance(0.1)
    assert lab.table() == [
        "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=40000 dport=80 "
        "src=203.0.113.2 dst=203.0.113.1 sport=80 dport=40000 [ASSURED] mark=0 use=1"]


def test_close_wait_skipped_when_fin_is_piggybacked(lab):
    """§3.4 [EXP] nc run: SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, LAST_ACK, TIME_WAIT."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("FA")
    f.server("FA")          # FIN+ACK acknowledging the client's FIN: index FIN
    f.client("A")
    states = [e.split()[4] for e in lab.events]
    assert states == ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "LAST_ACK", "TIME_WAIT"]
    assert lab.events[-1] == f" [UPDATE] tcp      6 120 TIME_WAIT {O_8080} {R_8080} [ASSURED]"


def test_passive_close_by_server(lab):
    """Server closes first: FIN_WAIT (server FIN), CLOSE_WAIT, LAST_ACK, TIME_WAIT."""
    f = TcpFlow(lab)
    f.handshake()
    f.server("FA")
    f.client("A")
    f.client("FA")
    f.server("A")
    assert [e.split()[4] for e in lab.events][3:] == ["FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                                                       "TIME_WAIT"]


def test_rst_on_established_gives_close_10s_then_expires(lab):
    """§3.4 [EXP]: `[UPDATE] tcp 6 10 CLOSE ... [ASSURED]`, then the entry expires 10 s later."""
    f = TcpFlow(lab, sport=40003, dport=8081)
    f.handshake()
    lab.raw_events.clear()
    f.client("R")
    o = "src=10.0.0.2 dst=203.0.113.2 sport=40003 dport=8081"
    r = "src=203.0.113.2 dst=203.0.113.1 sport=8081 dport=40003"
    assert lab.events == [f" [UPDATE] tcp      6 10 CLOSE {o} {r} [ASSURED]"]
    lab.advance(0.5)
    assert lab.table() == [f"tcp      6 9 CLOSE {o} {r} [ASSURED] mark=0 use=1"]
    lab.skip(10)
    assert lab.table() == []                     # expired: invisible at once (§7.2)
    lab.advance(61)
    assert lab.events[-1] == f"[DESTROY] tcp      6 CLOSE {o} {r} [ASSURED]"


def test_rst_from_server_on_established_gives_close(lab):
    f = TcpFlow(lab)
    f.handshake()
    f.server("RA")
    assert tcp_state(lab.only()) == "CLOSE" and lab.remaining() == 10


def test_rst_as_first_reply_deletes_entry(lab):
    """§3.4 [EXP] connect to a closed port: NEW SYN_SENT then DESTROY 120 CLOSE [UNREPLIED]."""
    f = TcpFlow(lab, sport=40002, dport=81)
    f.client("S")
    v = f.server("RA", seq=0)
    assert f.server_translated(v), "the RST itself still belongs to the connection"
    o = "src=10.0.0.2 dst=203.0.113.2 sport=40002 dport=81"
    r = "src=203.0.113.2 dst=203.0.113.1 sport=81 dport=40002"
    assert lab.events == [
        f"    [NEW] tcp      6 120 SYN_SENT {o} [UNREPLIED] {r}",
        f"[DESTROY] tcp      6 120 CLOSE {o} [UNREPLIED] {r}",
    ]
    assert lab.conns() == []


def test_syn_retransmission_does_not_refresh_timeout(lab):
    """§3.4 [EXP]: a second SYN 3 s later left the timer counting down (114 at listing)."""
    f = TcpFlow(lab, sport=42001, dport=9001)
    f.client("S")
    lab.advance(3)
    f.client("S", seq=1000)                      # the same SYN again
    lab.advance(3)
    assert lab.table() == [
        "tcp      6 114 SYN_SENT src=10.0.0.2 dst=203.0.113.2 sport=42001 dport=9001 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1 sport=9001 dport=42001 mark=0 use=1"]
    assert len(lab.events) == 1


def test_repeated_syn_before_answer_is_ctstate_new(lab):
    """§1.4: SYN retransmits before any answer all match ctstate NEW."""
    from nattrack.conntrack.conn import IP_CT_NEW
    f = TcpFlow(lab)
    f.client("S")
    assert lab.last.ctinfo == IP_CT_NEW
    f.client("S", seq=1000)
    assert lab.last.ctinfo == IP_CT_NEW


def test_reopen_from_time_wait_destroys_then_creates(lab):
    """§3.4.1 [EXP]: `[DESTROY] tcp 6 119 TIME_WAIT ...` immediately followed by
    `[NEW] tcp 6 120 SYN_SENT ...`."""
    f = TcpFlow(lab, sport=40000, dport=80)
    f.handshake()
    f.active_close()
    lab.advance(1)
    lab.raw_events.clear()
    old = lab.only()
    v = f.client("S", seq=900000)
    assert f.client_translated(v)
    o = "src=10.0.0.2 dst=203.0.113.2 sport=40000 dport=80"
    r = "src=203.0.113.2 dst=203.0.113.1 sport=80 dport=40000"
    assert lab.events == [
        f"[DESTROY] tcp      6 119 TIME_WAIT {o} {r} [ASSURED]",
        f"    [NEW] tcp      6 120 SYN_SENT {o} [UNREPLIED] {r}",
    ]
    assert lab.only() is not old


def test_reopen_from_close_after_own_rst(lab):
    """§3.4.1: CLOSE + SYN after a RST sent in this direction -> delete and recreate."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("R")
    lab.raw_events.clear()
    f.client("S", seq=777777)
    assert [e.split()[0] for e in lab.events] == ["[DESTROY]", "[NEW]"]
    assert tcp_state(lab.only()) == "SYN_SENT"


def test_syn_in_close_after_peer_rst_is_ignored_not_reopened(lab):
    """§3.4.1: without a close initiator and without a RST from *this* side the SYN that
    maps to SYN_SENT is treated like sIG."""
    f = TcpFlow(lab)
    f.handshake()
    f.server("RA")
    lab.advance(1)
    lab.raw_events.clear()
    ct = lab.only()
    v = f.client("S", seq=777777)
    assert f.client_translated(v)
    assert lab.only() is ct and tcp_state(ct) == "CLOSE" and lab.events == []
    assert lab.remaining(ct) == 9


def test_syn_on_established_is_ignored_but_translated(lab):
    """§3.4.2: ORIGINAL SYN while ESTABLISHED is sIG: accepted (NATed), nothing changes."""
    f = TcpFlow(lab)
    f.handshake()
    lab.advance(10)
    lab.raw_events.clear()
    v = f.client("S", seq=123456)
    assert f.client_translated(v)
    assert tcp_state(lab.only()) == "ESTABLISHED" and lab.remaining() == 432000 - 10
    assert lab.events == [] and lab.stats["invalid"] == 0


def test_ignored_syn_resynchronised_by_matching_synack(lab):
    """§3.4.2: a SYN-ACK acknowledging exactly the ignored SYN re-synchronises the tracker:
    SYN_SENT -> SYN_RECV with the new window data."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("S", seq=700000)                    # sIG, remembered
    v = f.server("SA", seq=900000, ack=700001)
    assert f.server_translated(v)
    assert tcp_state(lab.only()) == "SYN_RECV"
    f.cnxt, f.snxt = 700001, 900001
    f.client("A")
    assert tcp_state(lab.only()) == "ESTABLISHED"


def test_simultaneous_open_via_syn_sent2(lab):
    """§3.3/§3.4.5: SYN both ways -> SYN_SENT2; SYN-ACK -> SYN_RECV; the REPLY ACK then goes
    straight to ESTABLISHED (and, reply seen, ASSURED)."""
    f = TcpFlow(lab)
    f.client("S")
    f.server("S")
    assert tcp_state(lab.only()) == "SYN_SENT2"
    assert lab.remaining() == 120
    f.client("SA", seq=1000)                     # simultaneous open: SYN-ACK re-uses the ISS
    assert tcp_state(lab.only()) == "SYN_RECV"
    f.server("A")
    ct = lab.only()
    assert tcp_state(ct) == "ESTABLISHED"
    assert ct.status & IPS_ASSURED
    states = [e.split()[4] for e in lab.events]
    assert states == ["SYN_SENT", "SYN_SENT2", "SYN_RECV", "ESTABLISHED"]


def test_syn_sent2_timeout_is_120s_without_a_sysctl(make_lab):
    """§3.1: SYN_SENT2 has 120 s and no sysctl of its own (it is not the SYN_SENT value).

    The reply SYN itself does not refresh (no reply seen yet, a SYN in SYN_SENT:
    the kernel showed 119 in its [UPDATE]); the next packet, the client's SYN
    again, refreshes with SYN_SENT2's own 120 s.
    """
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_syn_sent": 77})
    f = TcpFlow(lab)
    f.client("S")
    assert lab.remaining() == 77
    f.server("S")
    assert tcp_state(lab.only()) == "SYN_SENT2"
    assert lab.remaining() == 77
    f.client("S")
    assert tcp_state(lab.only()) == "SYN_SENT2"
    assert lab.remaining() == 120


def test_reply_ack_in_syn_sent_is_ignored(lab):
    """§3.4.2: a REPLY ACK while SYN_SENT (RFC 5961 challenge ACK) is sIG."""
    f = TcpFlow(lab)
    f.client("S")
    v = f.server("A", seq=5000, ack=1001)
    assert f.server_translated(v)
    assert tcp_state(lab.only()) == "SYN_SENT"


# --------------------------------------------------------------------------------------------
# §3.7 mid-stream pickup
# --------------------------------------------------------------------------------------------

def test_midstream_pickup_loose_creates_established_capped_at_300(lab):
    """§3.7 [EXP]: `[NEW] tcp 6 300 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=42000
    dport=9000 [UNREPLIED] ...`; ASSURED once a reply has been seen and the next packet."""
    f = TcpFlow(lab, sport=42000, dport=9000, iss=111111, irs=222222)
    f.client("A")
    assert lab.events == [
        "    [NEW] tcp      6 300 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=42000 "
        "dport=9000 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=9000 dport=42000"]
    f.client("PA", b"x" * 10)
    assert lab.remaining() == 300
    f.server("A")                                # the first reply
    ct = lab.only()
    assert ct.status & IPS_SEEN_REPLY and not ct.status & IPS_ASSURED
    f.client("A")
    assert ct.status & IPS_ASSURED
    assert tcp_state(ct) == "ESTABLISHED"
    assert lab.table()[0].endswith("[ASSURED] mark=0 use=1")


def test_midstream_pickup_is_liberal_about_windows(lab):
    """§3.7: a picked-up connection has both directions marked be-liberal."""
    f = TcpFlow(lab, iss=111111, irs=222222)
    f.client("A")
    f.server("A")
    v = f.client("A", seq=111111 + 50_000_000)
    assert f.client_translated(v) and lab.stats["invalid"] == 0


def test_midstream_pickup_with_loose_0_is_invalid(make_lab):
    """§3.7 [EXP]: with nf_conntrack_tcp_loose=0 no entry was created and `invalid` rose by one."""
    lab = make_lab(sysctl={"nf_conntrack_tcp_loose": 0})
    v = TcpFlow(lab, sport=42000, dport=9000).client("A")
    assert lab.conns() == [] and lab.stats["invalid"] == 1
    assert IP(v.sent[0].data).src == PRIV1


# --------------------------------------------------------------------------------------------
# §3.6 window checks
# --------------------------------------------------------------------------------------------

def test_window_check_I_seq_over_upper_bound_is_invalid(lab):
    f = TcpFlow(lab)
    f.handshake()
    v = f.client("PA", b"data", seq=f.cnxt + 10_000_000)
    assert not f.client_translated(v)
    assert lab.stats["invalid"] == 1
    assert lab.remaining() == 432000 and tcp_state(lab.only()) == "ESTABLISHED"


def test_window_check_III_ack_over_upper_bound_is_invalid(lab):
    f = TcpFlow(lab)
    f.handshake()
    v = f.client("A", ack=f.snxt + 10_000_000)
    assert not f.client_translated(v)
    assert lab.stats["invalid"] == 1


def test_window_check_III_on_server_side_is_invalid(lab):
    f = TcpFlow(lab)
    f.handshake()
    v = f.server("A", ack=f.cnxt + 10_000_000)
    assert not f.server_translated(v)
    assert_router_resets(f, v)                  # its RST is INVALID too
    assert lab.stats["invalid"] == 2


@pytest.mark.parametrize("which", ["seq", "ack"])
def test_be_liberal_accepts_out_of_window(make_lab, which):
    lab = make_lab(sysctl={"nf_conntrack_tcp_be_liberal": 1})
    f = TcpFlow(lab)
    f.handshake()
    kw = {"seq": f.cnxt + 10_000_000} if which == "seq" else {"ack": f.snxt + 10_000_000}
    v = f.client("A", **kw)
    assert f.client_translated(v) and lab.stats["invalid"] == 0


def test_in_window_data_both_ways_is_accepted(lab):
    f = TcpFlow(lab)
    f.handshake()
    for _ in range(5):
        assert f.client_translated(f.client("PA", b"q" * 100))
        assert f.server_translated(f.server("PA", b"r" * 1000))
    f.client("A")
    assert lab.stats["invalid"] == 0 and lab.remaining() == 432000


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1400)), min_size=1, max_size=12))
def test_in_window_conversations_never_invalid(exchanges):
    """Property: a conversation whose sequence numbers are right is never INVALID and stays
    ESTABLISHED (window checks only reject what is outside the windows)."""
    lab = Lab()
    f = TcpFlow(lab)
    f.handshake()
    for from_client, n in exchanges:
        v = (f.client if from_client else f.server)("PA", b"z" * n)
        assert (f.client_translated(v) if from_client else f.server_translated(v))
    assert lab.stats["invalid"] == 0
    assert tcp_state(lab.only()) == "ESTABLISHED"


# --------------------------------------------------------------------------------------------
# §3.4.6 RST validation
# --------------------------------------------------------------------------------------------

def test_rst_below_peer_ack_is_invalid(lab):
    f = TcpFlow(lab)
    f.handshake()
    f.client("PA", b"x" * 100)
    f.server("A")
    v = f.client("R", seq=f.cnxt - 50)
    assert not f.client_translated(v)
    assert lab.stats["invalid"] == 1 and tcp_state(lab.only()) == "ESTABLISHED"


def test_rst_below_peer_ack_accepted_with_ignore_invalid_rst(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_tcp_ignore_invalid_rst": 1})
    f = TcpFlow(lab)
    f.handshake()
    f.client("PA", b"x" * 100)
    f.server("A")
    v = f.client("R", seq=f.cnxt - 50)
    assert f.client_translated(v) and lab.stats["invalid"] == 0


def test_inexact_rst_on_established_keeps_state_for_challenge_ack(lab):
    """§3.4.6: in ESTABLISHED a RST whose sequence is not exactly the expected one keeps the
    old state; §3.5 rule 2 still gives it the CLOSE timeout."""
    f = TcpFlow(lab)
    f.handshake()
    v = f.client("R", seq=f.cnxt + 100)
    assert f.client_translated(v)
    assert tcp_state(lab.only()) == "ESTABLISHED"
    assert lab.remaining() == 10


def test_rst_after_own_data_is_part_of_a_train(lab):
    """§3.4.6: ...unless it directly follows data from the same side."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("PA", b"x" * 19)
    f.client("R")                                # seq = end of that data, not yet ACKed
    assert tcp_state(lab.only()) == "CLOSE"


def test_rst_in_closing_states_accepted_without_window_check(lab):
    f = TcpFlow(lab)
    f.handshake()
    f.client("FA")
    v = f.client("R", seq=f.cnxt + 50_000_000)   # far outside any window
    assert f.client_translated(v)
    assert tcp_state(lab.only()) == "CLOSE"


# --------------------------------------------------------------------------------------------
# §3.5 timeout selection
# --------------------------------------------------------------------------------------------

def test_unacknowledged_data_caps_established_at_300(lab):
    f = TcpFlow(lab)
    f.handshake()
    f.client("PA", b"x" * 500)
    assert lab.remaining() == 300
    f.server("A")
    assert lab.remaining() == 432000


def test_unacknowledged_timeout_from_sysctl(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_unacknowledged": 250})
    f = TcpFlow(lab)
    f.handshake()
    f.server("PA", b"x" * 10)
    assert lab.remaining() == 250


def test_max_retrans_identical_packets_give_retrans_timeout(make_lab):
    """§3.5 rule 1: retransmission counter >= nf_conntrack_tcp_max_retrans (3) -> RETRANS.
    Distinct values for RETRANS (200) and UNACK (400) tell the rules apart."""
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_max_retrans": 200,
                           "nf_conntrack_tcp_timeout_unacknowledged": 400})
    f = TcpFlow(lab)
    f.handshake()
    seq = f.cnxt
    f.client("PA", b"x" * 100)
    assert lab.remaining() == 400
    seen = []
    for _ in range(3):
        f.client("PA", b"x" * 100, seq=seq)
        seen.append(lab.remaining())
    assert seen == [400, 400, 200]


def test_max_retrans_sysctl_changes_threshold(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_tcp_max_retrans": 1,
                           "nf_conntrack_tcp_timeout_max_retrans": 200,
                           "nf_conntrack_tcp_timeout_unacknowledged": 400})
    f = TcpFlow(lab)
    f.handshake()
    seq = f.cnxt
    f.client("PA", b"x" * 100)
    f.client("PA", b"x" * 100, seq=seq)
    assert lab.remaining() == 200


def test_retransmission_counter_resets_on_a_different_packet(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_max_retrans": 200,
                           "nf_conntrack_tcp_timeout_unacknowledged": 400})
    f = TcpFlow(lab)
    f.handshake()
    seq = f.cnxt
    f.client("PA", b"x" * 100)
    f.client("PA", b"x" * 100, seq=seq)
    f.client("PA", b"x" * 100, seq=seq)
    f.server("A", ack=f.cnxt - 100)              # something else in between
    f.client("PA", b"x" * 100, seq=seq)
    assert lab.remaining() == 400


def test_zero_window_gives_retrans_timeout(lab):
    """§3.5 rule 4: last recorded window zero and state timeout > RETRANS -> 300 s."""
    f = TcpFlow(lab)
    f.handshake()
    f.server("A", win=0)
    assert lab.remaining() == 300


def test_out_of_window_fin_both_ways_cuts_assured_entry_to_unack(make_lab):
    """§3.5 extra rule (nf_tcp_handle_invalid): INVALID FIN/RST from both sides in turn
    cuts the remaining time of an ASSURED entry to UNACK."""
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_unacknowledged": 250})
    f = TcpFlow(lab)
    f.handshake()
    f.client("FA", seq=f.cnxt + 10_000_000, advance=False)
    assert lab.remaining() == 432000
    v = f.server("FA", seq=f.snxt + 10_000_000, advance=False)
    assert_router_resets(f, v)                  # the server's FIN is for the router: RST, INVALID
    assert lab.stats["invalid"] == 3
    assert lab.remaining() == 250
    assert tcp_state(lab.only()) == "ESTABLISHED"


def test_state_timeouts_come_from_their_sysctls(make_lab):
    lab = make_lab(sysctl={
        "nf_conntrack_tcp_timeout_syn_sent": 111, "nf_conntrack_tcp_timeout_syn_recv": 52,
        "nf_conntrack_tcp_timeout_established": 4321, "nf_conntrack_tcp_timeout_fin_wait": 113,
        "nf_conntrack_tcp_timeout_close_wait": 54, "nf_conntrack_tcp_timeout_last_ack": 25,
        "nf_conntrack_tcp_timeout_time_wait": 117})
    f = TcpFlow(lab)
    f.handshake()
    f.active_close()
    got = [(e.split()[4], int(e.split()[3])) for e in lab.events]
    assert got == [("SYN_SENT", 111), ("SYN_RECV", 52), ("ESTABLISHED", 4321), ("FIN_WAIT", 113),
                   ("CLOSE_WAIT", 54), ("LAST_ACK", 25), ("TIME_WAIT", 117)]


def test_close_timeout_from_sysctl(make_lab):
    lab = make_lab(sysctl={"net.netfilter.nf_conntrack_tcp_timeout_close": 7})
    f = TcpFlow(lab)
    f.handshake()
    f.client("R")
    assert lab.remaining() == 7


TCP_SYSCTL_DEFAULTS = {
    "nf_conntrack_tcp_timeout_syn_sent": 120, "nf_conntrack_tcp_timeout_syn_recv": 60,
    "nf_conntrack_tcp_timeout_established": 432000, "nf_conntrack_tcp_timeout_fin_wait": 120,
    "nf_conntrack_tcp_timeout_close_wait": 60, "nf_conntrack_tcp_timeout_last_ack": 30,
    "nf_conntrack_tcp_timeout_time_wait": 120, "nf_conntrack_tcp_timeout_close": 10,
    "nf_conntrack_tcp_timeout_max_retrans": 300, "nf_conntrack_tcp_timeout_unacknowledged": 300,
    "nf_conntrack_tcp_loose": 1, "nf_conntrack_tcp_be_liberal": 0,
    "nf_conntrack_tcp_max_retrans": 3, "nf_conntrack_tcp_ignore_invalid_rst": 0,
}


@pytest.mark.parametrize("name,default", sorted(TCP_SYSCTL_DEFAULTS.items()))
def test_tcp_sysctl_exists_with_kernel_default(name, default):
    s = Sysctl()
    assert s[name] == default
    assert s.get_full("net.netfilter." + name) == default
    s.set("net.netfilter." + name, 5)
    assert s[name] == 5
    assert Sysctl({name: 6})[name] == 6


def test_no_unexpected_tcp_sysctls():
    assert {k for k in DEFAULTS if k.startswith("nf_conntrack_tcp_")} == set(TCP_SYSCTL_DEFAULTS)


# --------------------------------------------------------------------------------------------
# more §3.4 special cases and §3.6 window details
# --------------------------------------------------------------------------------------------

def test_challenge_ack_in_last_ack_does_not_move_to_time_wait(lab):
    """§3.4.4: LAST_ACK -> TIME_WAIT by ACK is suppressed when the ACK is the challenge ACK
    provoked by a SYN that was let through in LAST_ACK (RFC 5961)."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("FA")
    f.server("A")
    f.server("FA")
    assert tcp_state(lab.only()) == "LAST_ACK"
    v = f.client("S", seq=f.cnxt + 100_000, advance=False)      # sIG, remembered
    assert f.client_translated(v)
    v = f.server("A")                                          # the challenge ACK
    assert f.server_translated(v)
    assert tcp_state(lab.only()) == "LAST_ACK"
    f.client("A")                                              # the real last ACK
    assert tcp_state(lab.only()) == "TIME_WAIT"


def test_rst_answering_ignored_syn_closes_without_window_check(lab):
    """§3.4.6: a RST that answers a SYN previously let through as ignored is accepted
    without window checks."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("S", seq=3_000_000_000, advance=False)            # sIG on ESTABLISHED
    v = f.server("RA", seq=0x7000_0000, ack=3_000_000_001)     # far outside any window
    assert f.server_translated(v)
    assert tcp_state(lab.only()) == "CLOSE"


@pytest.mark.parametrize("sender, accepted, state", [
    ("server", True, "CLOSE"), ("client", False, "ESTABLISHED"),
])
def test_rst_to_ignored_syn_needs_the_other_direction(lab, sender, accepted, state):
    """"netfilter: conntrack: tcp: do not force CLOSE on invalid-seq RST without direction
    check" (_rst_check): only the other side's RST answers the ignored SYN without a window
    check.  A RST from the SYN's own sender, with the same ack and a sequence number far
    outside its window, goes through tcp_in_window like any RST: INVALID, left as it was
    (not translated), and the entry stays ESTABLISHED."""
    f = TcpFlow(lab)
    f.handshake()
    f.client("S", seq=3_000_000_000, advance=False)            # sIG on ESTABLISHED
    v = getattr(f, sender)("RA", seq=0x7000_0000, ack=3_000_000_001)
    translated = f.server_translated(v) if sender == "server" else f.client_translated(v)
    assert translated == accepted
    assert tcp_state(lab.only()) == state


def test_rst_answering_challenge_ack_in_syn_sent(lab):
    """§3.4.6: a reset in response to a challenge ACK we let through earlier is accepted
    without window checks (SYN_SENT, reply ACK ignored, then RST with seq = its ack)."""
    f = TcpFlow(lab)
    f.client("S")
    f.server("A", seq=5000, ack=123456)                       # challenge ACK, sIG
    v = f.client("R", seq=123456)
    assert f.client_translated(v)
    assert tcp_state(lab.only()) == "CLOSE"


def test_higher_syn_in_syn_sent_reinitialises_window(lab):
    """§3.6: a higher SYN while in SYN_SENT re-initialises that direction, so the SYN-ACK to
    the new ISN is in window."""
    f = TcpFlow(lab)
    f.client("S")
    f.client("S", seq=5_000_000, advance=False)
    f.cnxt = 5_000_001
    v = f.server("SA")
    assert f.server_translated(v)
    assert tcp_state(lab.only()) == "SYN_RECV"


def test_reopen_after_server_initiated_close(lab):
    """§3.4.1: either side may have initiated the close."""
    f = TcpFlow(lab)
    f.handshake()
    f.server("FA")
    f.client("FA")
    f.server("A")
    assert tcp_state(lab.only()) == "TIME_WAIT"
    lab.raw_events.clear()
    f.client("S", seq=2_000_000)
    assert [e.split()[0] for e in lab.events] == ["[DESTROY]", "[NEW]"]


def _bulk(f: TcpFlow, n: int, size: int = 1000) -> None:
    for _ in range(n):
        f.client("PA", b"d" * size)
        f.server("A")


def test_window_check_II_old_data_is_ignored_not_invalid(lab):
    """§3.6 check II (seq+len below sender.td_end - receiver.td_maxwin): IGNORE = accepted
    but no state/timeout update (current kernels)."""
    f = TcpFlow(lab, iss=1000)
    f.handshake()
    _bulk(f, 30)
    lab.advance(5)
    v = f.client("PA", b"d" * 100, seq=1001)                  # data acknowledged long ago
    assert f.client_translated(v)
    assert lab.stats["invalid"] == 0
    assert lab.remaining() == 432000 - 5


def test_window_check_IV_ack_far_below_is_ignored_not_invalid(lab):
    """§3.6 check IV (sack below receiver.td_end - max(sender.td_maxwin, 66000)): IGNORE."""
    f = TcpFlow(lab)
    f.handshake()
    for _ in range(100):                                      # the server sends > 66000 bytes
        f.server("PA", b"s" * 1000)
        f.client("A")
    lab.advance(5)
    v = f.client("A", ack=f.snxt - 90_000, advance=False)
    assert f.client_translated(v)
    assert lab.stats["invalid"] == 0
    assert lab.remaining() == 432000 - 5


@pytest.mark.parametrize("server_scales,accepted", [(True, True), (False, False)])
def test_window_scaling_only_when_both_syns_carry_it(lab, server_scales, accepted):
    """§3.6: window scaling is used only if both SYNs carried the option."""
    f = TcpFlow(lab)
    f.client("S", options=[("WScale", 7)], win=100)
    f.server("SA", options=[("WScale", 7)] if server_scales else [], win=100)   # never scaled
    f.client("A")
    f.server("A", win=100)                  # 100 << 7 = 12800 bytes if scaling is on
    v = f.client("PA", b"x" * 100, seq=f.cnxt + 12000, advance=False)
    assert f.client_translated(v) == accepted
    assert lab.stats["invalid"] == (0 if accepted else 1)


def test_midstream_pickup_cap_follows_unacknowledged_sysctl(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_tcp_timeout_unacknowledged": 250})
    TcpFlow(lab).client("A")
    assert lab.remaining() == 250
