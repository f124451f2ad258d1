"""UDP (§4), ICMP (§5, §5.1) and generic protocols (§6) against docs kernel-conntrack.md."""
from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from nattrack.conntrack.conn import (IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW,
                                     IP_CT_RELATED, IP_CT_RELATED_REPLY, IPS_ASSURED,
                                     IPS_SEEN_REPLY)

from nattrack_lab import (PRIV1, PRIV2, PUB, RTR_PUB, TcpFlow, UdpFlow, inet_sum,
                          ip_header_ok, nat_rules)

# ============================================================================================
# UDP
# ============================================================================================

O_5353 = "src=10.0.0.2 dst=203.0.113.2 sport=41000 dport=5353"
R_5353 = "src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=41000"


def test_udp_exchange_events_match_exp(lab):
    """§4 [EXP]: request/response to an echo server, then a third exchange after 2.3 s."""
    f = UdpFlow(lab)
    f.client()
    lab.advance(0.000117)
    f.server()
    lab.advance(0.5)
    assert lab.table() == [f"udp      17 29 {O_5353} {R_5353} mark=0 use=1"]
    lab.advance(1.8)
    f.client()
    f.server()
    assert lab.events == [
        f"    [NEW] udp      17 30 {O_5353} [UNREPLIED] {R_5353}",
        f" [UPDATE] udp      17 30 {O_5353} {R_5353}",
        f" [UPDATE] udp      17 120 {O_5353} {R_5353} [ASSURED]",
    ]
    lab.advance(0.1)
    assert lab.table() == [f"udp      17 119 {O_5353} {R_5353} [ASSURED] mark=0 use=1"]


def test_udp_unreplied_is_30s_and_each_query_refreshes(lab):
    f = UdpFlow(lab, sport=41001, dport=9999)
    f.client()
    lab.advance(0.5)
    assert lab.table() == [
        "udp      17 29 src=10.0.0.2 dst=203.0.113.2 sport=41001 dport=9999 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1 sport=9999 dport=41001 mark=0 use=1"]
    lab.advance(20)
    f.client()
    assert lab.remaining() == 30
    assert len(lab.events) == 1                  # a refresh is no event
    lab.skip(30)
    assert lab.table() == []


def test_repeated_udp_queries_before_answer_are_new(lab):
    """§1.4: repeated UDP queries before any answer all match ctstate NEW."""
    f = UdpFlow(lab)
    f.client()
    assert lab.last.ctinfo == IP_CT_NEW
    f.client()
    assert lab.last.ctinfo == IP_CT_NEW
    f.server()
    assert lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY
    f.client()
    assert lab.last.ctinfo == IP_CT_ESTABLISHED


def test_udp_first_reply_keeps_30s_even_when_old(lab):
    """§4: the first reply still gets 30 s (SEEN_REPLY is set after the handler)."""
    f = UdpFlow(lab)
    f.client()
    lab.advance(5)
    f.server()
    ct = lab.only()
    assert lab.remaining() == 30 and not ct.status & IPS_ASSURED
    f.server()
    assert lab.remaining() == 120 and ct.status & IPS_ASSURED


@pytest.mark.parametrize("age,assured", [(1.0, False), (2.0, False), (2.1, True)])
def test_udp_assured_only_after_2s_and_a_reply(lab, age, assured):
    """§4: once SEEN_REPLY is set, `now > stream_ts` (= creation + 2 s) -> 120 s + ASSURED."""
    f = UdpFlow(lab)
    f.client()
    f.server()
    lab.advance(age)
    f.client()
    ct = lab.only()
    assert bool(ct.status & IPS_ASSURED) == assured
    assert lab.remaining() == (120 if assured else 30)


def test_udp_without_reply_never_assured(lab):
    f = UdpFlow(lab)
    for _ in range(5):
        f.client()
        lab.advance(2)
    assert not lab.only().status & (IPS_ASSURED | IPS_SEEN_REPLY)
    assert lab.remaining() == 30 - 2


def test_udp_assured_refresh_produces_no_event(lab):
    """§9.3/§4: a plain refresh of an already-ASSURED flow is no event."""
    f = UdpFlow(lab)
    f.client()
    f.server()
    lab.advance(3)
    f.client()
    n = len(lab.events)
    lab.advance(50)
    f.client()
    f.server()
    assert len(lab.events) == n and lab.remaining() == 120


def test_udp_timeouts_from_sysctls(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_udp_timeout": 10,
                           "net.netfilter.nf_conntrack_udp_timeout_stream": 50})
    f = UdpFlow(lab)
    f.client()
    assert lab.remaining() == 10
    f.server()
    assert lab.remaining() == 10
    lab.advance(3)
    f.client()
    assert lab.remaining() == 50


def test_udp_sysctl_defaults():
    from nattrack.conntrack.sysctl import Sysctl
    s = Sysctl()
    assert (s["nf_conntrack_udp_timeout"], s["nf_conntrack_udp_timeout_stream"]) == (30, 120)
    assert s["nf_conntrack_icmp_timeout"] == 30 and s["nf_conntrack_generic_timeout"] == 600


def _udp_raw(length=None, chksum=None, payload=b"hello") -> bytes:
    u = UDP(sport=41000, dport=5353)
    if length is not None:
        u.len = length
    if chksum is not None:
        u.chksum = chksum
    return bytes(IP(src=PRIV1, dst=PUB) / u / Raw(payload))


@pytest.mark.parametrize("why,raw", [
    ("length field below 8", _udp_raw(length=7)),
    ("length field beyond the datagram", _udp_raw(length=200)),
    ("bad checksum", _udp_raw(chksum=0x1234)),
])
def test_malformed_udp_is_invalid(lab, why, raw):
    v = lab.send("eth0", raw)
    assert lab.conns() == [] and lab.stats["invalid"] == 1, why
    assert IP(v.sent[0].data).src == PRIV1


def test_udp_checksum_zero_is_not_checked(lab):
    lab.send("eth0", _udp_raw(chksum=0))
    assert len(lab.conns()) == 1 and lab.stats["invalid"] == 0


def test_udp_bad_checksum_accepted_when_checking_disabled(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_checksum": 0})
    lab.send("eth0", _udp_raw(chksum=0x1234))
    assert len(lab.conns()) == 1


# ============================================================================================
# ICMP queries
# ============================================================================================

def ping(lab, src=PRIV1, dst=PUB, ident=10820, seq=1, type_=8):
    return lab.send("eth0", IP(src=src, dst=dst) / ICMP(type=type_, id=ident, seq=seq) / Raw(b"x" * 56))


def pong(lab, ident, src=PUB, dst=RTR_PUB, seq=1, type_=0):
    return lab.send("eth1", IP(src=src, dst=dst) / ICMP(type=type_, id=ident, seq=seq) / Raw(b"x" * 56))


def test_icmp_echo_events_match_exp(lab):
    """§5 [EXP]: events for 2 answered pings and one unanswered."""
    ping(lab, seq=1)
    pong(lab, 10820, seq=1)
    lab.advance(1)
    ping(lab, seq=2)
    pong(lab, 10820, seq=2)
    lab.advance(1)
    ping(lab, dst="203.0.113.77", ident=10845)
    assert lab.events == [
        "    [NEW] icmp     1 30 src=10.0.0.2 dst=203.0.113.2 type=8 code=0 id=10820 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=10820",
        " [UPDATE] icmp     1 30 src=10.0.0.2 dst=203.0.113.2 type=8 code=0 id=10820 "
        "src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=10820",
        "    [NEW] icmp     1 30 src=10.0.0.2 dst=203.0.113.77 type=8 code=0 id=10845 [UNREPLIED] "
        "src=203.0.113.77 dst=203.0.113.1 type=0 code=0 id=10845",
    ]
    lab.advance(2)
    assert "icmp     1 28 src=10.0.0.2 dst=203.0.113.77 type=8 code=0 id=10845 [UNREPLIED] " \
           "src=203.0.113.77 dst=203.0.113.1 type=0 code=0 id=10845 mark=0 use=1" in lab.table()


def test_icmp_echo_is_30s_refreshed_and_never_assured(lab):
    for seq in range(1, 8):
        ping(lab, seq=seq)
        v = pong(lab, 10820, seq=seq)
        assert IP(v.sent[0].data).dst == PRIV1
        assert lab.remaining() == 30
        lab.advance(1.5)
    ct = lab.only()
    assert ct.status & IPS_SEEN_REPLY and not ct.status & IPS_ASSURED


def test_icmp_reply_does_not_remove_entry_duplicates_still_match(lab):
    ping(lab)
    pong(lab, 10820)
    v = pong(lab, 10820)                         # a duplicate reply
    assert IP(v.sent[0].data).dst == PRIV1
    assert lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY and len(lab.conns()) == 1


def test_two_ping_ids_are_two_entries(lab):
    ping(lab, ident=1)
    ping(lab, ident=2)
    ping(lab, ident=1, seq=2)
    assert len(lab.conns()) == 2


def test_icmp_timeout_from_sysctl(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_icmp_timeout": 12})
    ping(lab)
    assert lab.remaining() == 12


def test_unsolicited_echo_reply_is_invalid(lab):
    v = ping(lab, type_=0)
    assert lab.conns() == [] and lab.stats["invalid"] == 1 and lab.stats["error"] == 0
    assert IP(v.sent[0].data).src == PRIV1


@pytest.mark.parametrize("type_,reply", [(8, 0), (13, 14), (15, 16), (17, 18)])
def test_icmp_query_types_create_entries_with_answer_type(lab, type_, reply):
    ping(lab, type_=type_, ident=77)
    line = lab.table()[0]
    assert f"type={type_} code=0 id=77 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 type={reply} code=0 id=77" in line
    v = pong(lab, 77, type_=reply)
    assert IP(v.sent[0].data).dst == PRIV1
    assert lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY


@pytest.mark.parametrize("type_", [0, 1, 2, 6, 7, 9, 10, 14, 16, 18])
def test_icmp_types_that_cannot_open_are_invalid(lab, type_):
    """§5: reply types (have an inverse, fail "valid new") and types without an inverse
    (e.g. 9, 10): no entry, INVALID (counted `invalid`, not `error`)."""
    ping(lab, type_=type_)
    assert lab.conns() == [] and lab.stats["invalid"] == 1 and lab.stats["error"] == 0


@pytest.mark.parametrize("type_", [19, 30, 40, 255])
def test_icmp_types_above_18_count_error(lab, type_):
    ping(lab, type_=type_)
    assert lab.conns() == [] and lab.stats["error"] == 1 and lab.stats["invalid"] == 0


def test_truncated_icmp_header_counts_error(lab):
    raw = bytes(IP(src=PRIV1, dst=PUB, proto=1) / Raw(b"\x08\x00\x00"))
    lab.send("eth0", raw)
    assert lab.conns() == [] and lab.stats["error"] == 1


def test_icmp_bad_checksum_counts_error(lab):
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / ICMP(type=8, id=5, chksum=0x1234))
    assert lab.conns() == [] and lab.stats["error"] == 1


# ============================================================================================
# §5.1 ICMP errors -> RELATED
# ============================================================================================

def icmp_error(src, dst, quoted: bytes, type_=3, code=3) -> IP:
    return IP(src=src, dst=dst) / ICMP(type=type_, code=code) / Raw(quoted)


def inner_fields(data: bytes) -> tuple:
    """(src, dst, sport, dport) of the packet quoted in an ICMP error (outer IHL 20)."""
    off = 28
    ihl = (data[off] & 0x0F) * 4
    src = socket.inet_ntoa(data[off + 12:off + 16])
    dst = socket.inet_ntoa(data[off + 16:off + 20])
    sport, dport = struct.unpack_from("!HH", data, off + ihl)
    return src, dst, sport, dport


@pytest.mark.parametrize("quote", [28, None], ids=["ip+8", "whole"])
def test_icmp_port_unreachable_is_related_reply_and_translated(lab, quote):
    """§5.1 [EXP]: UDP to a closed port, seen on both sides of the router:
    pub side inner 203.0.113.1.41002 > 203.0.113.2.9999, priv side inner
    10.0.0.2.41002 > 203.0.113.2.9999; the 4 "unused" bytes stay 0; the UDP entry stays
    [UNREPLIED] with its timeout running (27 three seconds later)."""
    f = UdpFlow(lab, sport=41002, dport=9999)
    f.client(b"x")
    quoted = bytes(f.last_out)[:quote] if quote else bytes(f.last_out)
    udp_ct = lab.only()
    lab.advance(3)
    v = lab.send("eth1", icmp_error(PUB, RTR_PUB, quoted))
    assert lab.last.ct is udp_ct and lab.last.ctinfo == IP_CT_RELATED_REPLY
    data = v.sent[0].data
    out = IP(data)
    assert (out.src, out.dst, v.sent[0].oif) == (PUB, PRIV1, "eth0")
    assert out[ICMP].type == 3 and out[ICMP].code == 3
    assert data[24:28] == b"\0\0\0\0"
    assert inner_fields(data) == (PRIV1, PUB, 41002, 9999)
    assert ip_header_ok(data) and ip_header_ok(data, 28)
    assert inet_sum(data[20:]) == 0xFFFF, "ICMP checksum"
    assert not udp_ct.status & IPS_SEEN_REPLY
    assert lab.table() == [
        "udp      17 27 src=10.0.0.2 dst=203.0.113.2 sport=41002 dport=9999 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1 sport=9999 dport=41002 mark=0 use=1"]
    assert lab.stats["error"] == 0 and lab.events[1:] == []


def test_icmp_error_about_remapped_port_restores_private_port(lab):
    """§5.1 + §8.3: the quoted packet gets the opposite manipulation, port included."""
    UdpFlow(lab, src=PRIV1, sport=45000, dport=9999).client()
    f2 = UdpFlow(lab, src=PRIV2, sport=45000, dport=9999)
    f2.client()
    assert f2.nat_port != 45000
    v = lab.send("eth1", icmp_error(PUB, RTR_PUB, bytes(f2.last_out)[:28]))
    data = v.sent[0].data
    assert IP(data).dst == PRIV2
    assert inner_fields(data) == (PRIV2, PUB, 45000, 9999)
    assert ip_header_ok(data, 28) and inet_sum(data[20:]) == 0xFFFF


def test_icmp_error_about_tcp_flow_rewrites_embedded_header(lab):
    f = TcpFlow(lab, sport=40500, dport=80)
    f.client("S")
    v = lab.send("eth1", icmp_error(PUB, RTR_PUB, bytes(f.last_out)[:28], code=1))
    data = v.sent[0].data
    assert lab.last.ctinfo == IP_CT_RELATED_REPLY
    assert inner_fields(data) == (PRIV1, PUB, 40500, 80)
    assert ip_header_ok(data) and ip_header_ok(data, 28) and inet_sum(data[20:]) == 0xFFFF
    assert lab.only().proto.state == 1 and lab.remaining() == 120


def test_icmp_error_from_client_is_related_original(lab):
    """An error about a *reply* packet travels in the original direction: RELATED; the outer
    source and the quoted destination get the masquerade address."""
    f = UdpFlow(lab, sport=41003, dport=9999)
    f.client()
    f.server()
    delivered = bytes(f.last_out)                 # 203.0.113.2:9999 -> 10.0.0.2:41003
    v = lab.send("eth0", icmp_error(PRIV1, PUB, delivered[:28]))
    assert lab.last.ctinfo == IP_CT_RELATED
    data = v.sent[0].data
    assert (IP(data).src, IP(data).dst) == (RTR_PUB, PUB)
    assert inner_fields(data) == (PUB, RTR_PUB, 9999, 41003)
    assert ip_header_ok(data) and ip_header_ok(data, 28) and inet_sum(data[20:]) == 0xFFFF


def test_icmp_error_outer_destination_mismatch_counts_error(lab):
    """§5.1 step 4: the outer destination must be the destination of the matched direction."""
    f = UdpFlow(lab, sport=41004, dport=9999)
    f.client()
    v = lab.send("eth1", icmp_error(PUB, "203.0.113.9", bytes(f.last_out)[:28]))
    assert lab.last.ct is None
    assert lab.stats["error"] == 1
    assert all(IP(s.data).dst != PRIV1 for s in v.sent)


def test_icmp_error_without_matching_flow_counts_error(lab):
    quoted = bytes(IP(src=RTR_PUB, dst=PUB) / UDP(sport=50000, dport=53))[:28]
    lab.send("eth1", icmp_error(PUB, RTR_PUB, quoted))
    assert lab.last.ct is None and lab.stats["error"] == 1 and lab.conns() == []


def test_icmp_error_does_not_refresh_or_mark_reply_on_tcp(lab):
    f = TcpFlow(lab)
    f.handshake()
    lab.advance(100)
    lab.raw_events.clear()
    lab.send("eth1", icmp_error(PUB, RTR_PUB, bytes(f.last_out)[:28], type_=11, code=0))
    assert lab.last.ctinfo == IP_CT_RELATED_REPLY
    assert lab.remaining() == 432000 - 100 and lab.events == []


def test_icmp_error_with_bad_checksum_counts_error(lab):
    f = UdpFlow(lab, sport=41005, dport=9999)
    f.client()
    pkt = IP(src=PUB, dst=RTR_PUB) / ICMP(type=3, code=3, chksum=0x4321) / Raw(bytes(f.last_out)[:28])
    lab.send("eth1", pkt)
    assert lab.last.ct is None and lab.stats["error"] == 1


def test_icmp_redirect_for_natted_flow_is_dropped(lab):
    """§5.1: redirects for NATed flows are dropped."""
    f = UdpFlow(lab, sport=41006, dport=9999)
    f.client()
    v = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / ICMP(type=5, code=1, gw="203.0.113.3")
                 / Raw(bytes(f.last_out)[:28]))
    assert v.dropped and v.sent == []


def test_icmp_error_about_remapped_echo_id_restores_id(lab):
    """§5.1 + §8.3: an error quoting an echo request whose id was changed by NAT."""
    ping(lab, src=PRIV1, ident=4242)
    v = ping(lab, src=PRIV2, ident=4242)
    sent = bytes(v.sent[0].data)
    new_id = IP(sent)[ICMP].id
    assert new_id != 4242
    v = lab.send("eth1", icmp_error(PUB, RTR_PUB, sent[:28], code=1))
    data = v.sent[0].data
    assert IP(data).dst == PRIV2
    inner_id = struct.unpack_from("!H", data, 28 + 20 + 4)[0]
    assert inner_id == 4242
    assert ip_header_ok(data, 28) and inet_sum(data[20:]) == 0xFFFF


# ============================================================================================
# §6 generic protocols
# ============================================================================================

def test_generic_protocol_is_600s_refreshed_never_assured(lab):
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"payload"))
    assert lab.events == [
        "    [NEW] unknown  253 600 src=10.0.0.2 dst=203.0.113.2 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1"]
    lab.advance(100)
    assert lab.remaining() == 500
    v = lab.send("eth1", IP(src=PUB, dst=RTR_PUB, proto=253) / Raw(b"answer"))
    assert IP(v.sent[0].data).dst == PRIV1
    assert lab.remaining() == 600
    lab.advance(5)
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"more"))
    ct = lab.only()
    assert ct.status & IPS_SEEN_REPLY and not ct.status & IPS_ASSURED


def test_generic_timeout_from_sysctl(make_lab):
    lab = make_lab(sysctl={"nf_conntrack_generic_timeout": 42})
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"payload"))
    assert lab.remaining() == 42


def test_generic_tuple_is_addresses_and_protocol_only(lab):
    """§6: ports are 0, so two datagrams of one protocol between two hosts share an entry."""
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"\x01\x02\x03\x04"))
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"\x09\x08\x07\x06"))
    ct = lab.only()
    assert (ct.orig.sport, ct.orig.dport) == (0, 0)


def test_gre_uses_gre_timeout_not_generic(lab):
    lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=47) / Raw(b"\x00\x00\x08\x00" + b"x" * 20))
    assert lab.remaining() == 30


def test_icmp_error_mtu_field_is_left_alone(lab):
    """§5.1: the id field is rewritten only for query types; the MTU field of a
    "fragmentation needed" error stays as it was."""
    UdpFlow(lab, src=PRIV1, sport=45000, dport=9999).client()
    f2 = UdpFlow(lab, src=PRIV2, sport=45000, dport=9999)
    f2.client(b"x" * 1400)
    err = IP(src=PUB, dst=RTR_PUB) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(bytes(f2.last_out)[:28])
    v = lab.send("eth1", err)
    data = v.sent[0].data
    assert data[24:28] == b"\x00\x00\x05\x00"
    assert inner_fields(data) == (PRIV2, PUB, 45000, 9999)


def test_related_error_passes_stateful_firewall(make_lab):
    """§1.4: RELATED packets match `--ctstate RELATED`; INVALID and NEW inbound do not."""
    lab = make_lab(rules=nat_rules(forward=["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                                            "-i eth0 -o eth1 -j ACCEPT"], forward_policy="DROP"))
    f = UdpFlow(lab, sport=41010, dport=9999)
    f.client()
    v = lab.send("eth1", icmp_error(PUB, RTR_PUB, bytes(f.last_out)[:28]))
    assert v.sent and IP(v.sent[0].data).dst == PRIV1
    v = lab.send("eth1", IP(src=PUB, dst=PRIV1) / UDP(sport=1, dport=2))
    assert v.dropped


def test_icmp_error_from_intermediate_router_keeps_its_source(lab):
    """§5.1 (c): the outer header is translated like a packet of its direction: only the
    destination (the masquerade address) changes for an error travelling in REPLY."""
    f = UdpFlow(lab, sport=41020, dport=33434, dst="192.0.2.80")
    f.client()
    v = lab.send("eth1", icmp_error("198.51.100.99", RTR_PUB, bytes(f.last_out)[:28], type_=11, code=0))
    out = IP(v.sent[0].data)
    assert (out.src, out.dst) == ("198.51.100.99", PRIV1)
    assert lab.last.ctinfo == IP_CT_RELATED_REPLY
    assert inner_fields(v.sent[0].data) == (PRIV1, "192.0.2.80", 41020, 33434)


def test_udp_checksum_not_checked_outside_prerouting(lab):
    """§4: the UDP checksum is checked only in PRE_ROUTING."""
    lab.send_local(IP(src=RTR_PUB, dst=PUB) / UDP(sport=41000, dport=53, chksum=0x1234) / Raw(b"x"))
    assert len(lab.conns()) == 1 and lab.stats["invalid"] == 0
