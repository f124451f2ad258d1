"""Conntrack core against docs kernel-conntrack.md §1, §2, §7 (and the robustness of the
packet path): tuples and inversion, status/ctinfo values, confirmation, deadlines and the
gc worker, table limits and early drop, malformed input."""
from __future__ import annotations

import re
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack import conn as C
from nattrack.conntrack.core import NF_INET_PRE_ROUTING, ConntrackTable
from nattrack.conntrack.tuple import Tuple, invert_tuple
from nattrack.packet.ipv4 import Packet
from nattrack.replay import ManualClock

from nattrack_lab import (PRIV1, PRIV2, PUB, RTR_PRIV, RTR_PUB, Lab, TcpFlow, UdpFlow,
                          event_ts, inet_sum, nat_rules)

# ============================================================================================
# §1.1 tuples
# ============================================================================================

SPEC_ICMP_INVMAP = {8: 0, 13: 14, 15: 16, 17: 18, 0: 8, 14: 13, 16: 15, 18: 17}

addrs = st.integers(0, 2**32 - 1)
ports = st.integers(0, 65535)


@st.composite
def invertible_tuples(draw):
    proto = draw(st.sampled_from([6, 17, 1, 47, 132, 253]))
    src, dst = draw(addrs), draw(addrs)
    if proto == 1:
        return Tuple.icmp("0.0.0.0", "0.0.0.0", draw(st.sampled_from(sorted(SPEC_ICMP_INVMAP))),
                          draw(st.integers(0, 255)), draw(ports))._replace(src=src, dst=dst)
    if proto in (6, 17, 132):
        return Tuple(src, dst, proto, draw(ports), draw(ports))
    return Tuple(src, dst, proto, 0, 0)


@given(invertible_tuples())
def test_invert_twice_is_identity(t):
    assert invert_tuple(invert_tuple(t)) == t


@given(st.sampled_from([6, 17]), addrs, addrs, ports, ports)
def test_reply_tuple_swaps_addresses_and_ports(proto, src, dst, sport, dport):
    r = invert_tuple(Tuple(src, dst, proto, sport, dport))
    assert r == Tuple(dst, src, proto, dport, sport)


@pytest.mark.parametrize("type_", range(256))
def test_icmp_type_map(type_):
    """§1.1: id kept, code kept, type mapped to its answer; any other type has no inverse."""
    t = Tuple.icmp("10.0.0.2", "203.0.113.2", type_, 7, 4242)
    r = invert_tuple(t)
    if type_ in SPEC_ICMP_INVMAP:
        assert r == Tuple.icmp("203.0.113.2", "10.0.0.2", SPEC_ICMP_INVMAP[type_], 7, 4242)
    else:
        assert r is None


def test_icmp_tuple_keeps_id_on_source_side_type_code_on_destination_side():
    t = Tuple.icmp("10.0.0.2", "203.0.113.2", 8, 0, 10820)
    assert (t.sport, t.icmp_type, t.icmp_code) == (10820, 8, 0)


def test_both_tuples_are_in_the_table(lab):
    f = UdpFlow(lab)
    f.client()
    ct = lab.only()
    assert lab.ct.hash[ct.orig] is ct and lab.ct.hash[ct.reply] is ct
    assert ct.reply == Tuple.make(PUB, RTR_PUB, "udp", 5353, 41000)   # NAT replaced it (§1.1)


# ============================================================================================
# §1.3 / §1.4 values
# ============================================================================================

def test_status_bit_numbers():
    bits = {"IPS_EXPECTED": 0, "IPS_SEEN_REPLY": 1, "IPS_ASSURED": 2, "IPS_CONFIRMED": 3,
            "IPS_SRC_NAT": 4, "IPS_DST_NAT": 5, "IPS_SEQ_ADJUST": 6, "IPS_SRC_NAT_DONE": 7,
            "IPS_DST_NAT_DONE": 8, "IPS_DYING": 9, "IPS_FIXED_TIMEOUT": 10, "IPS_TEMPLATE": 11,
            "IPS_NAT_CLASH": 12, "IPS_HELPER": 13, "IPS_OFFLOAD": 14, "IPS_HW_OFFLOAD": 15}
    for name, bit in bits.items():
        assert getattr(C, name) == 1 << bit, name
    assert C.IPS_NAT_MASK == C.IPS_SRC_NAT | C.IPS_DST_NAT
    assert C.IPS_NAT_DONE_MASK == C.IPS_SRC_NAT_DONE | C.IPS_DST_NAT_DONE


def test_ctinfo_values_and_state_bits():
    assert (C.IP_CT_ESTABLISHED, C.IP_CT_RELATED, C.IP_CT_NEW, C.IP_CT_ESTABLISHED_REPLY,
            C.IP_CT_RELATED_REPLY) == (0, 1, 2, 3, 4)
    assert [C.ctstate_bit(i) for i in (0, 1, 2, 3, 4)] == [2, 4, 8, 2, 4]
    assert C.ctstate_bit(None) == 1 and C.CTSTATE_UNTRACKED == 64
    assert [C.ctinfo_dir(i) for i in range(5)] == [0, 0, 0, 1, 1]


# ============================================================================================
# §1.5 confirmation
# ============================================================================================

def test_new_event_at_confirmation_with_unreplied(lab):
    UdpFlow(lab).client()
    assert len(lab.events) == 1 and lab.events[0].startswith("    [NEW] udp      17 30 ")
    assert "[UNREPLIED]" in lab.events[0]
    assert lab.only().status & C.IPS_CONFIRMED


@pytest.mark.parametrize("forward", [[], ["-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]])
def test_packet_dropped_in_forward_leaves_no_entry_and_no_event(make_lab, forward):
    """§1.5 [EXP]: a UDP packet dropped in FORWARD produced 0 flow entries and 0 flow events."""
    lab = make_lab(rules=nat_rules(forward=forward, forward_policy="DROP"))
    v = UdpFlow(lab).client()
    assert v.dropped and not v.sent
    assert lab.conns() == [] and lab.events == [] and lab.ct.hash == {}
    assert lab.ct.count == 0
    TcpFlow(lab).client("S")
    assert lab.conns() == [] and lab.events == []


def test_locally_delivered_packet_confirms_at_local_in(lab):
    """§1.5: confirmation also happens at LOCAL_IN; the router's own echo reply then finds
    the entry in the REPLY direction."""
    v = lab.send("eth0", IP(src=PRIV1, dst=RTR_PRIV) / ICMP(type=8, id=99) / Raw(b"x" * 8))
    ct = lab.only()
    assert ct.status & C.IPS_CONFIRMED and ct.status & C.IPS_SEEN_REPLY
    assert v.sent and IP(v.sent[0].data).dst == PRIV1


# ============================================================================================
# §2 step 2: fragments and unparsable packets
# ============================================================================================

def test_non_first_fragment_is_invalid_for_conntrack():
    table = ConntrackTable(ManualClock(10.0), {"nf_conntrack_buckets": 64})
    raw = bytes(IP(src=PRIV1, dst=PUB, frag=100, proto=17) / Raw(b"x" * 40))
    pkt = Packet.parse(bytearray(raw), 0, iif="eth0")
    assert table.conntrack_in(pkt, NF_INET_PRE_ROUTING) == 1
    assert pkt.ct is None and table.stats["invalid"] == 1 and table.count == 0


def test_fragmented_datagram_is_tracked_once_reassembled(lab):
    whole = IP(src=PRIV1, dst=PUB, id=777) / UDP(sport=41000, dport=5353) / Raw(b"y" * 100)
    from scapy.all import fragment
    frags = fragment(whole, fragsize=48)
    assert len(frags) > 1
    for fr in frags:
        lab.send("eth0", fr)
    assert len(lab.conns()) == 1 and lab.stats["invalid"] == 0


# ============================================================================================
# §7.1 / §7.2 deadlines, lazy expiry, gc
# ============================================================================================

def test_remaining_rounds_down(lab):
    UdpFlow(lab).client()
    assert lab.remaining() == 30
    lab.advance(0.01)
    assert lab.remaining() == 29


def test_expired_entry_invisible_immediately(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 5})
    UdpFlow(lab).client()
    lab.skip(4.99)
    assert len(lab.table()) == 1
    lab.skip(0.01)
    assert lab.table() == []
    assert lab.ct.find(Tuple.make(PRIV1, PUB, "udp", 41000, 5353)) is None


def test_packet_on_expired_tuple_reaps_then_creates_new_entry(make_lab):
    """§7.2: lookups skip (and reap) an expired entry: DESTROY without a number, then NEW."""
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 5})
    f = UdpFlow(lab)
    f.client()
    old = lab.only()
    lab.skip(6)
    lab.raw_events.clear()
    f.client()
    ev = lab.events
    assert len(ev) == 2
    assert ev[0] == ("[DESTROY] udp      17 src=10.0.0.2 dst=203.0.113.2 sport=41000 dport=5353 "
                     "[UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=41000")
    assert ev[1].startswith("    [NEW] udp      17 5 ")
    assert lab.only() is not old


def test_reply_after_expiry_does_not_match_old_entry(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 5})
    f = UdpFlow(lab)
    f.client()
    lab.skip(6)
    v = f.server()
    assert lab.last.ct is not None and lab.last.ctinfo == C.IP_CT_NEW
    # No un-NAT: it is addressed to the router itself, where nothing listens on the port,
    # so its stack answers port unreachable (__udp4_lib_rcv() -> icmp_send()), RELATED to
    # the new entry, not INVALID (tests/kernel scenario local_late_replies_after_expiry).
    assert len(v.sent) == 1 and v.sent[0].oif == "eth1"
    err = IP(v.sent[0].data)
    assert (err.src, err.dst, err[ICMP].type, err[ICMP].code) == (RTR_PUB, PUB, 3, 3)
    assert (err[ICMP].payload.src, err[ICMP].payload.dst) == (PUB, RTR_PUB)
    assert lab.stats["invalid"] == 0


def test_gc_reaps_with_destroy_without_timeout(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 3})
    UdpFlow(lab, sport=43001, dport=7000).client()
    created = lab.now()
    lab.advance(120)
    destroys = [e for e in lab.raw_events if "[DESTROY]" in e]
    assert len(destroys) == 1
    assert re.search(r"\[DESTROY\] udp      17 src=", destroys[0])
    assert created + 3 <= event_ts(destroys[0]) <= created + 3 + 61
    assert lab.conns() == [] and lab.ct.count == 0


def test_gc_exp_three_short_entries_all_reaped_within_a_minute(make_lab):
    """§7.2 [EXP]: three UDP entries with a 3-s timeout created at t=0, 7, 14 s were all
    destroyed (together at t≈30.5 s); the model may choose its timer but must reap them
    late-but-bounded."""
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 3})
    t0 = lab.now()
    for i, sport in enumerate((43001, 43002, 43003)):
        UdpFlow(lab, sport=sport, dport=7000).client()
        lab.advance(7)
    lab.advance(100)
    stamps = {int(re.search(r"sport=(\d+)", e).group(1)): event_ts(e)
              for e in lab.raw_events if "[DESTROY]" in e}
    assert sorted(stamps) == [43001, 43002, 43003]
    for i, sport in enumerate((43001, 43002, 43003)):
        deadline = t0 + 7 * i + 3
        assert deadline <= stamps[sport] <= deadline + 61


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 50), st.integers(1, 90)), min_size=1, max_size=6))
def test_gc_reaping_late_but_bounded(entries):
    """Property: every entry is reaped by the gc worker no earlier than its deadline and
    no more than about a minute after it (GC_SCAN_INTERVAL_MAX = 60 s)."""
    deadlines = {}
    lab = Lab(sysctl={"nf_conntrack_generic_timeout": 1})
    start = lab.now()
    for i, (at, timeout) in enumerate(sorted(entries)):
        lab.advance(start + at - lab.now())
        lab.ct.sysctl["nf_conntrack_generic_timeout"] = timeout
        # a server each: masqueraded generic flows to one server would share a reply tuple
        lab.send("eth0", IP(src=f"10.0.0.{i + 2}", dst=f"192.0.2.{i + 10}", proto=253) / Raw(b"x"))
        deadlines[f"10.0.0.{i + 2}"] = lab.now() + timeout
    lab.advance(250)
    seen = {}
    for e in lab.raw_events:
        if "[DESTROY]" in e:
            assert re.search(r"\[DESTROY\] unknown  253 src=", e), e
            seen[re.search(r"src=(\S+)", e).group(1)] = event_ts(e)
    assert set(seen) == set(deadlines)
    for host, dl in deadlines.items():
        assert dl - 0.01 <= seen[host] <= dl + 61


def test_refresh_replaces_deadline_and_can_shorten_it(lab):
    f = TcpFlow(lab)
    f.handshake()
    assert lab.remaining() == 432000
    f.client("FA")
    assert lab.remaining() == 120


def test_timeouts_work_across_32bit_jiffies_wrap(make_lab):
    wrap = 2**32 / C.HZ
    lab = make_lab(t0=wrap - 10)
    f = UdpFlow(lab)
    f.client()
    lab.advance(20)
    assert lab.remaining() == 10
    lab.skip(10)
    assert lab.table() == []


def test_accounting_counts_packets_and_bytes_per_direction(make_lab):
    """§7.1 / §9.1 [EXP] with nf_conntrack_acct=1: 2 answered pings of 84 bytes:
    `packets=2 bytes=168 ... packets=2 bytes=168`."""
    lab = make_lab(sysctl={"nf_conntrack_acct": 1})
    for seq in (1, 2):
        lab.send("eth0", IP(src=PRIV1, dst=PUB) / ICMP(type=8, id=10820, seq=seq) / Raw(b"x" * 56))
        lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / ICMP(type=0, id=10820, seq=seq) / Raw(b"x" * 56))
    line = lab.table()[0]
    assert "id=10820 packets=2 bytes=168 src=203.0.113.2" in line
    assert line.endswith("id=10820 packets=2 bytes=168 mark=0 use=1")


# ============================================================================================
# §7.3 table limit, early drop, table full
# ============================================================================================

SMALL = {"nf_conntrack_max": 4, "nf_conntrack_buckets": 4}


def _assured_udp(lab, n, base=41000):
    flows = [UdpFlow(lab, sport=base + i) for i in range(n)]
    for f in flows:
        f.client()
        f.server()
    lab.advance(2.5)
    for f in flows:
        f.client()
    assert all(c.status & C.IPS_ASSURED for c in lab.conns())
    return flows


def test_early_drop_evicts_unassured_entries(make_lab):
    lab = make_lab(sysctl=SMALL)
    for i in range(4):
        UdpFlow(lab, sport=41000 + i).client()
    lab.raw_events.clear()
    v = UdpFlow(lab, sport=42000).client()
    assert v.sent and not v.dropped
    dropped = lab.stats["early_drop"]
    destroys = [e for e in lab.events if e.startswith("[DESTROY]")]
    assert dropped >= 1 and len(destroys) == dropped
    assert all(re.match(r"\[DESTROY\] udp      17 30 ", e) for e in destroys)   # killed early
    assert lab.events[-1].startswith("    [NEW] udp      17 30 src=10.0.0.2 dst=203.0.113.2 sport=42000")
    assert len(lab.conns()) == 5 - dropped <= 4
    assert lab.stats["drop"] == 0


def test_early_drop_spares_assured_entries(make_lab):
    lab = make_lab(sysctl=SMALL)
    _assured_udp(lab, 3)
    UdpFlow(lab, sport=41500).client()           # the only unassured entry
    v = UdpFlow(lab, sport=42000).client()
    assert v.sent
    assert lab.stats["early_drop"] == 1
    assert {c.orig.sport for c in lab.conns()} == {41000, 41001, 41002, 42000}


def test_table_full_of_assured_entries_drops_packet(make_lab):
    lab = make_lab(sysctl=SMALL)
    _assured_udp(lab, 4)
    lab.raw_events.clear()
    v = UdpFlow(lab, sport=42000).client()
    assert v.dropped and not v.sent
    assert lab.stats["drop"] == 1 and lab.stats["early_drop"] == 0
    assert "nf_conntrack: table full, dropping packet" in lab.ct.log
    assert len(lab.conns()) == 4 and lab.events == []
    # established flows keep working
    assert UdpFlow(lab, sport=41000).client().sent


def test_table_full_of_assured_tcp_drops_new_syn(make_lab):
    lab = make_lab(sysctl=SMALL)
    for i in range(4):
        TcpFlow(lab, sport=40000 + i).handshake()
    v = TcpFlow(lab, sport=50000).client("S")
    assert v.dropped and lab.stats["drop"] == 1


def test_gc_early_drop_near_full_table_kills_closing_assured_tcp(make_lab):
    """§7.3: after a "table full", the gc worker (count >= 95 % of nf_conntrack_max) also
    kills ASSURED TCP entries in FIN_WAIT..CLOSE; ASSURED UDP entries survive."""
    lab = make_lab(sysctl={"nf_conntrack_max": 100, "nf_conntrack_buckets": 16})
    hosts = [f"10.0.0.{h}" for h in range(10, 20)]
    flows = [UdpFlow(lab, src=h, sport=41000 + i) for h in hosts for i in range(10)][:98]
    for f in flows:
        f.client()
        f.server()
    lab.advance(2.5)
    for f in flows:
        f.client()
    for sport in (40000, 40001):
        t = TcpFlow(lab, sport=sport)
        t.handshake()
        t.active_close()
    assert lab.ct.count == 100
    v = UdpFlow(lab, sport=50000).client()
    assert v.dropped and lab.stats["drop"] == 1
    lab.raw_events.clear()
    lab.advance(61)
    destroys = [e for e in lab.events if e.startswith("[DESTROY]")]
    assert len(destroys) == 2 and all(" TIME_WAIT " in e for e in destroys)
    assert all(re.match(r"\[DESTROY\] tcp      6 \d+ TIME_WAIT", e) for e in destroys)
    assert lab.ct.count == 98
    assert UdpFlow(lab, sport=50000).client().sent


# ============================================================================================
# robustness: malformed input never raises and is classified
# ============================================================================================

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data):
    pkt = Packet.parse(bytearray(data), 0, iif="eth0")
    if pkt is not None:
        lab = Lab()
        lab.router.receive(pkt)


def _ip_datagram(proto: int, l4: bytes, tot_len: int | None = None, ihl: int = 5,
                 version: int = 4, good_csum: bool = True, src=PRIV1, dst=PUB) -> bytes:
    hdr_len = ihl * 4
    opts = b"\x01" * max(0, hdr_len - 20)
    tl = 20 + len(opts) + len(l4) if tot_len is None else tot_len
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, tl & 0xFFFF, 1, 0, 64,
                                proto, 0, socket.inet_aton(src), socket.inet_aton(dst))) + opts
    if good_csum:
        struct.pack_into("!H", hdr, 10, ~inet_sum(bytes(hdr)) & 0xFFFF)
    return bytes(hdr) + l4


@settings(max_examples=300, deadline=None)
@given(proto=st.sampled_from([1, 6, 17, 47, 253]), l4=st.binary(max_size=60),
       slack=st.integers(-30, 10))
def test_garbage_l4_is_classified_exactly_once(proto, l4, slack):
    """Property: a datagram that passes ip_rcv() either creates an entry or is counted
    `invalid` or `error` — exactly one of them (fresh table, nothing to match)."""
    raw = _ip_datagram(proto, l4)
    tot_len = len(raw) + slack
    raw = _ip_datagram(proto, l4, tot_len=tot_len)
    pkt = Packet.parse(bytearray(raw), 0, iif="eth0")
    if tot_len > len(raw) or tot_len < 20:
        assert pkt is None                    # ip_rcv() drops it: an IP header error
        return
    assert pkt is not None
    lab = Lab()
    v = lab.router.receive(pkt)
    outcome = (len(lab.conns()), lab.stats["invalid"], lab.stats["error"])
    assert sorted(outcome) == [0, 0, 1], (outcome, v.dropped)


@pytest.mark.parametrize("why,raw", [
    ("version 6", _ip_datagram(17, b"\0" * 8, version=6)),
    ("ihl below 5", _ip_datagram(17, b"\0" * 8, ihl=4)),
    ("bad header checksum", _ip_datagram(17, b"\0" * 8, good_csum=False)),
    ("total length beyond the data", _ip_datagram(17, b"\0" * 8, tot_len=100)),
    ("total length below the header", _ip_datagram(17, b"\0" * 8, tot_len=10)),
    ("shorter than an IP header", b"\x45\x00\x00"),
])
def test_ip_header_errors_are_rejected_before_conntrack(why, raw):
    assert Packet.parse(bytearray(raw), 0, iif="eth0") is None, why


@pytest.mark.parametrize("proto,l4,counter", [
    (6, b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x10", "invalid"),        # truncated TCP
    (6, bytes(TCP(sport=1, dport=2, flags="S", dataofs=4))[:20], "invalid"),   # doff < 5
    (6, bytes(TCP(sport=1, dport=2, flags="S", dataofs=15))[:20], "invalid"),  # doff beyond
    (17, b"\x01\x02\x03\x04", "invalid"),                                # truncated UDP
    (1, b"\x08\x00\x00", "error"),                                       # truncated ICMP
])
def test_truncated_l4_headers_are_classified(lab, proto, l4, counter):
    raw = _ip_datagram(proto, l4)
    v = lab.send("eth0", raw)
    assert lab.conns() == [] and lab.stats[counter] == 1
    assert lab.stats["invalid"] + lab.stats["error"] == 1
    assert v.sent and v.sent[0].data[12:16] == bytes([10, 0, 0, 2])   # not translated


# ============================================================================================
# table invariants under random traffic
# ============================================================================================

HOSTS = [PRIV1, PRIV2, "10.0.0.4"]
SERVERS = [PUB, "203.0.113.50"]


@st.composite
def traffic(draw):
    kind = draw(st.sampled_from(["tcp", "tcp-reply", "udp", "udp-reply", "icmp", "icmp-reply",
                                 "gre", "time", "garbage"]))
    port = draw(st.sampled_from([1000, 40000, 40001, 500]))
    host, server = draw(st.sampled_from(HOSTS)), draw(st.sampled_from(SERVERS))
    if kind == "time":
        return ("time", draw(st.sampled_from([0.5, 3, 40, 130])))
    if kind == "garbage":
        return ("raw", _ip_datagram(draw(st.sampled_from([1, 6, 17])), draw(st.binary(max_size=40)),
                                    src=host, dst=server))
    if kind == "tcp":
        flags = draw(st.sampled_from(["S", "SA", "A", "FA", "R", "RA", "PA", "F", ""]))
        return ("eth0", IP(src=host, dst=server) / TCP(sport=port, dport=80, flags=flags,
                                                       seq=draw(st.sampled_from([1000, 1001, 99999])),
                                                       ack=draw(st.sampled_from([0, 5001, 7777]))))
    if kind == "tcp-reply":
        flags = draw(st.sampled_from(["SA", "A", "FA", "RA", "S"]))
        return ("eth1", IP(src=server, dst=RTR_PUB) / TCP(sport=80, dport=port, flags=flags,
                                                         seq=5000, ack=draw(st.sampled_from([0, 1001, 1002]))))
    if kind == "udp":
        return ("eth0", IP(src=host, dst=server) / UDP(sport=port, dport=53) / Raw(b"q"))
    if kind == "udp-reply":
        return ("eth1", IP(src=server, dst=RTR_PUB) / UDP(sport=53, dport=port) / Raw(b"r"))
    if kind == "icmp":
        return ("eth0", IP(src=host, dst=server) / ICMP(type=draw(st.sampled_from([8, 0, 3, 13])), id=port))
    if kind == "icmp-reply":
        return ("eth1", IP(src=server, dst=RTR_PUB) / ICMP(type=0, id=port))
    return ("eth0", IP(src=host, dst=server, proto=47) / Raw(b"\0\0\x08\0"))


@settings(max_examples=60, deadline=None)
@given(st.lists(traffic(), max_size=40), st.sampled_from([{}, {"nf_conntrack_max": 5, "nf_conntrack_buckets": 4}]))
def test_table_stays_consistent_under_random_traffic(actions, sysctl):
    """Property: whatever arrives, nothing raises, every live entry is found under both of
    its tuples, no tuple belongs to two entries, the count matches, and the limit holds."""
    lab = Lab(sysctl=sysctl)
    for iface, what in actions:
        if iface == "time":
            lab.advance(what)
        elif iface == "raw":
            lab.send("eth0", what)
        else:
            lab.send(iface, what)
        live = lab.conns()
        for ct in live:
            assert lab.ct.hash.get(ct.orig) is ct and lab.ct.hash.get(ct.reply) is ct
            assert ct.status & C.IPS_CONFIRMED and not ct.status & C.IPS_DYING
        in_hash = {id(c): c for c in lab.ct.hash.values()}
        assert len(lab.ct.hash) == 2 * len(in_hash)
        assert lab.ct.count == len(in_hash)
        if sysctl:
            assert lab.ct.count <= sysctl["nf_conntrack_max"]
