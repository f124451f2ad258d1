"""Checksums after NAT (docs kernel-conntrack.md §8.4): whatever is rewritten, the IP, TCP,
UDP and ICMP checksums equal a full recomputation (scapy, with the chksum fields deleted);
a UDP checksum of 0 ("none") stays 0 and a computed 0 is sent as 0xFFFF; an incremental
TCP update never gives 0xFFFF where a recomputation gives 0x0000."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack.tuple import ip2int
from nattrack.packet.ipv4 import Packet

from nattrack_lab import (PRIV1, PRIV2, PUB, RTR_PUB, Lab, checksums_of, inet_sum,
                          ip_header_ok, recomputed)


def assert_checksums_recomputed(data: bytes) -> None:
    assert checksums_of(data) == checksums_of(recomputed(data)), IP(data).summary()


# --------------------------------------------------------------------------------------------
# through the router
# --------------------------------------------------------------------------------------------

@st.composite
def client_packets(draw):
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    host = f"10.0.0.{draw(st.integers(2, 254))}"
    payload = draw(st.binary(max_size=64))
    ip = IP(src=host, dst=PUB, ttl=draw(st.integers(2, 255)), id=draw(st.integers(0, 65535)))
    if proto == "tcp":
        l4 = TCP(sport=draw(st.integers(1, 65535)), dport=draw(st.integers(1, 65535)),
                 flags=draw(st.sampled_from(["S", "A", "PA"])), seq=draw(st.integers(0, 2**32 - 1)),
                 ack=draw(st.integers(0, 2**32 - 1)), window=draw(st.integers(1, 65535)))
    elif proto == "udp":
        l4 = UDP(sport=draw(st.integers(1, 65535)), dport=draw(st.integers(1, 65535)))
    else:
        l4 = ICMP(type=8, id=draw(st.integers(0, 65535)), seq=draw(st.integers(0, 65535)))
    return ip / l4 / Raw(payload) if payload else ip / l4


@settings(max_examples=150, deadline=None)
@given(pkt=client_packets(), clash=st.booleans(), seed=st.integers(0, 2**32))
def test_checksums_after_masquerade_equal_recomputation(pkt, clash, seed):
    """Property: both directions of a masqueraded flow leave with every checksum right,
    whether only the address changes or (after a clash) the port/id too."""
    lab = Lab(seed=seed)
    if clash:                                    # another host took this port/id first
        other = pkt.copy()
        other.src = PRIV1 if pkt.src != PRIV1 else PRIV2
        lab.send("eth0", other)
    v = lab.send("eth0", pkt)
    assert v.sent, v.dropped
    out = v.sent[0].data
    assert IP(out).src == RTR_PUB
    assert_checksums_recomputed(out)
    # the answer, un-NATed on its way in
    o = IP(out)
    if TCP in o:
        reply = IP(src=PUB, dst=RTR_PUB) / TCP(sport=o[TCP].dport, dport=o[TCP].sport, flags="A",
                                               seq=12345, ack=(o[TCP].seq + 1) & 0xFFFFFFFF) / Raw(b"r" * 7)
    elif UDP in o:
        reply = IP(src=PUB, dst=RTR_PUB) / UDP(sport=o[UDP].dport, dport=o[UDP].sport) / Raw(b"r" * 7)
    else:
        reply = IP(src=PUB, dst=RTR_PUB) / ICMP(type=0, id=o[ICMP].id, seq=o[ICMP].seq) / Raw(b"r" * 7)
    v = lab.send("eth1", reply)
    if v.sent:                                   # (a TCP packet may be out of window)
        back = v.sent[0].data
        assert IP(back).dst == pkt.src
        assert_checksums_recomputed(back)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=1, max_size=300), quote=st.integers(28, 400),
       proto=st.sampled_from(["udp", "tcp"]), clash=st.booleans())
def test_icmp_error_checksums_after_translation(payload, quote, proto, clash):
    """§8.4: ICMP errors get the embedded header rewritten (its IP checksum patched) and the
    ICMP checksum recomputed over the whole message."""
    lab = Lab()
    l4 = UDP(sport=40000, dport=9999) if proto == "udp" else TCP(sport=40000, dport=80, flags="S")
    if clash:
        lab.send("eth0", IP(src=PRIV1, dst=PUB) / l4 / Raw(payload))
    v = lab.send("eth0", IP(src=PRIV2, dst=PUB) / l4 / Raw(payload))
    quoted = v.sent[0].data[:quote]
    err = IP(src=PUB, dst=RTR_PUB) / ICMP(type=3, code=3) / Raw(quoted)
    v = lab.send("eth1", err)
    data = v.sent[0].data
    assert IP(data).dst == PRIV2
    assert ip_header_ok(data) and ip_header_ok(data, 28)
    assert inet_sum(data[20:]) == 0xFFFF
    assert struct.unpack_from("!H", data, 28 + 20)[0] == 40000
    if proto == "udp" and len(quoted) >= 28 + 8 + len(payload):
        # the whole datagram was quoted: its UDP checksum must still be right
        inner = IP(bytes(data[28:]))
        assert checksums_of(bytes(inner)) == checksums_of(recomputed(bytes(inner)))


# --------------------------------------------------------------------------------------------
# header rewriting primitives (nf_nat_ipv4_manip_pkt and the l4 manip functions)
# --------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(pkt=client_packets(), new_src=st.integers(1, 2**32 - 2), new_dst=st.integers(1, 2**32 - 2),
       new_sport=st.integers(1, 65535), new_dport=st.integers(1, 65535),
       which=st.sets(st.sampled_from(["src", "dst", "sport", "dport"]), min_size=1))
def test_rewrite_keeps_checksums_equal_to_recomputation(pkt, new_src, new_dst, new_sport,
                                                        new_dport, which):
    p = Packet.parse(bytearray(bytes(pkt)), 0)
    if "sport" in which:
        p.set_port(True, new_sport)
    if "dport" in which:
        p.set_port(False, new_dport)
    if "src" in which:
        p.set_addr(True, new_src)
    if "dst" in which:
        p.set_addr(False, new_dst)
    data = p.ip_bytes()
    o = IP(data)
    if "src" in which:
        assert o.src == socket.inet_ntoa(struct.pack("!I", new_src))
    if "sport" in which and (TCP in o or UDP in o):
        assert o.sport == new_sport
    if "sport" in which and ICMP in o:
        assert o[ICMP].id == new_sport
    assert_checksums_recomputed(data)


# --------------------------------------------------------------------------------------------
# UDP checksum 0, and the 0x0000 / 0xFFFF corner
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clash", [False, True])
def test_udp_checksum_zero_stays_zero(lab, clash):
    if clash:
        lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=40000, dport=53) / Raw(b"q"))
    v = lab.send("eth0", IP(src=PRIV2, dst=PUB) / UDP(sport=40000, dport=53, chksum=0) / Raw(b"q"))
    out = IP(v.sent[0].data)
    assert out.src == RTR_PUB and (out[UDP].sport != 40000) == clash
    assert out[UDP].chksum == 0
    assert ip_header_ok(v.sent[0].data)
    back = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=53, dport=out[UDP].sport, chksum=0) / Raw(b"a"))
    assert IP(back.sent[0].data)[UDP].chksum == 0


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sport_giving_zero_checksum(proto: int, src: str, dst: str, l4_wo_sport: bytes) -> int:
    """The source port that makes the full checksum of (src, dst, segment) come out 0x0000,
    i.e. the one's-complement sum 0xFFFF.  ``l4_wo_sport`` has sport and checksum zeroed."""
    a, b = ip2int(src), ip2int(dst)
    s = (a >> 16) + (a & 0xFFFF) + (b >> 16) + (b & 0xFFFF) + proto + len(l4_wo_sport)
    s = _fold(s + inet_sum(l4_wo_sport))
    port = 0xFFFF - s
    return port or 0xFFFF


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_incremental_update_matches_recomputation_at_zero(lab, proto):
    """§8.4: after the address rewrite the checksum a full recomputation gives is 0x0000:
    TCP must carry 0x0000 (never 0xFFFF), UDP must carry 0xFFFF (0 means "no checksum")."""
    data = b"corner-case"
    if proto == "tcp":
        seg = TCP(sport=0, dport=80, flags="S", seq=1, window=1000, chksum=0) / Raw(data)
        num = 6
    else:
        seg = UDP(sport=0, dport=53, chksum=0) / Raw(data)
        num = 17
    port = _sport_giving_zero_checksum(num, RTR_PUB, PUB, bytes(seg))
    if proto == "tcp":
        pkt = IP(src=PRIV1, dst=PUB) / TCP(sport=port, dport=80, flags="S", seq=1, window=1000) / Raw(data)
    else:
        pkt = IP(src=PRIV1, dst=PUB) / UDP(sport=port, dport=53) / Raw(data)
    v = lab.send("eth0", pkt)
    out = IP(v.sent[0].data)
    assert out.src == RTR_PUB and out.sport == port
    want = 0x0000 if proto == "tcp" else 0xFFFF
    assert out[TCP if proto == "tcp" else UDP].chksum == want
    assert_checksums_recomputed(v.sent[0].data)


def test_incremental_tcp_port_update_never_gives_ffff():
    """The same corner reached by a port rewrite on a parsed packet."""
    data = b"abc"
    for dport in range(1, 4000, 37):
        seg = TCP(sport=0, dport=dport, flags="A", seq=7, ack=9, window=512, chksum=0) / Raw(data)
        port = _sport_giving_zero_checksum(6, PRIV1, PUB, bytes(seg))
        start = 1234 if port != 1234 else 4321
        p = Packet.parse(bytearray(bytes(IP(src=PRIV1, dst=PUB) / TCP(
            sport=start, dport=dport, flags="A", seq=7, ack=9, window=512) / Raw(data))), 0)
        p.set_port(True, port)
        out = IP(p.ip_bytes())
        assert out[TCP].chksum == 0x0000, dport
        assert_checksums_recomputed(p.ip_bytes())


def test_ttl_decrement_and_nat_keep_ip_checksum(lab):
    for ttl in (2, 64, 255):
        v = lab.send("eth0", IP(src=PRIV1, dst=PUB, ttl=ttl) / UDP(sport=40000 + ttl, dport=53))
        out = v.sent[0].data
        assert IP(out).ttl == ttl - 1 and ip_header_ok(out)
