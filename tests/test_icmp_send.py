"""Router.icmp_send(): the ICMP errors the router itself sends (net/ipv4/icmp.c)."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror

from nattrack.conntrack.conn import CTINFO_NAMES
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.ipv4.stack import Router
from nattrack.packet.ipv4 import Packet

RULES = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
         ":POSTROUTING ACCEPT [0:0]\n"
         "-A PREROUTING -i wan -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80\n"
         "-A POSTROUTING -o wan -j MASQUERADE\nCOMMIT\n")


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def router(**kw) -> Router:
    return Router({"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, kw.pop("routes", {"default": "wan"}),
                  parse_rules(RULES), clock=kw.pop("clock", Clock()), seed=1, **kw)


def feed(r: Router, scapy_pkt, iif: str):
    pkt = Packet.parse(bytearray(bytes(scapy_pkt)), 0, iif)
    return r.receive(pkt), pkt


def test_ttl_exceeded_through_snat_comes_from_the_lan_address_untranslated():
    r = router()
    v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9", ttl=1, tos=0x28)
                / UDP(sport=40000, dport=33434) / b"probe", "lan")
    assert v.dropped == "TTL exceeded"
    (sent,) = v.sent
    err = IP(sent.data)
    assert sent.oif == "lan" and (err.src, err.dst) == ("10.0.0.1", "10.0.0.2")
    assert (err[ICMP].type, err[ICMP].code, err.ttl, int(err.flags)) == (11, 0, 64, 0)
    assert err.tos == 0xC0 | (0x28 & 0x1E)
    q = err[IPerror]
    assert (q.src, q.dst, q.ttl, q[UDPerror].sport) == ("10.0.0.2", "198.51.100.9", 1, 40000)
    assert CTINFO_NAMES[sent.pkt.ctinfo] == "RELATED_REPLY"      # nf_ct_attach()
    assert r.ct.count == 0 and r.ct.stats["error"] == 0 and r.ct.stats["invalid"] == 0


def test_ttl_exceeded_for_a_dnat_packet_quotes_the_public_destination():
    r = router()
    v, _ = feed(r, IP(src="203.0.113.2", dst="203.0.113.1", ttl=1) / TCP(sport=5000, dport=8080,
                                                                         flags="S"), "wan")
    (sent,) = v.sent
    err = IP(sent.data)
    assert sent.oif == "wan" and (err.src, err.dst) == ("203.0.113.1", "203.0.113.2")
    q = err[IPerror]
    assert (q.dst, q[TCPerror].dport) == ("203.0.113.1", 8080)   # nf_nat_icmp_reply_translation()
    assert IP(bytes(err)).chksum == err.chksum and r.ct.count == 0


def test_ttl_exceeded_on_a_reply_is_related_and_quotes_the_nat_address():
    r = router()
    out, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9") / UDP(sport=40001, dport=53), "lan")
    nat_port = IP(out.sent[0].data)[UDP].sport
    v, _ = feed(r, IP(src="198.51.100.9", dst="203.0.113.1", ttl=1) / UDP(sport=53, dport=nat_port),
                "wan")
    (sent,) = v.sent
    err = IP(sent.data)
    assert CTINFO_NAMES[sent.pkt.ctinfo] == "RELATED"
    assert (err.dst, err[IPerror].dst, err[UDPerror].dport) == ("198.51.100.9", "203.0.113.1", nat_port)


def test_no_route_is_net_unreachable():
    r = router(routes={})
    v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9") / UDP(sport=40002, dport=53), "lan")
    assert v.dropped == "no route"
    err = IP(v.sent[0].data)
    assert (err[ICMP].type, err[ICMP].code, err.src) == (3, 0, "10.0.0.1")


def test_frag_needed_carries_the_mtu_and_is_not_rate_limited():
    r = router()
    r.ifaces["wan"].mtu = 1400
    for i in range(10):
        v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9", flags="DF", id=i)
                    / UDP(sport=40003, dport=9) / (b"x" * 1472), "lan")
        assert v.dropped == "fragmentation needed (DF set, MTU 1400)"
        err = IP(v.sent[0].data)
        assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, 1400)
        assert len(v.sent[0].data) == 576 and err[IPerror].len == 1500      # quote cut at 576
    v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9") / UDP(sport=40004, dport=9)
                / (b"x" * 1472), "lan")                                    # no DF: fragmented
    assert v.dropped is None and len(v.sent) == 2


def test_rate_limit_per_destination_burst_6_then_one_per_second():
    clock = Clock()
    r = router(clock=clock)
    probe = IP(src="10.0.0.2", dst="198.51.100.9", ttl=1) / UDP(sport=40005, dport=33434)
    sent = [len(feed(r, probe, "lan")[0].sent) for _ in range(10)]
    assert sent == [1] * 6 + [0] * 4 and r.counters["icmp_ratelimited"] == 4
    other = IP(src="10.0.0.3", dst="198.51.100.9", ttl=1) / UDP(sport=40005, dport=33434)
    assert len(feed(r, other, "lan")[0].sent) == 1                       # its own bucket
    clock.t += 0.5
    assert not feed(r, probe, "lan")[0].sent
    clock.t += 0.5
    assert len(feed(r, probe, "lan")[0].sent) == 1
    r2 = router(icmp={"icmp_ratemask": 0})
    assert all(feed(r2, probe, "lan")[0].sent for _ in range(10))


def test_no_error_about_errors_fragments_or_broadcasts():
    r = router()
    inner = IP(src="10.0.0.2", dst="198.51.100.9") / UDP(sport=1, dport=2)
    cases = [IP(src="203.0.113.2", dst="10.0.0.2", ttl=1) / ICMP(type=3, code=3) / bytes(inner)[:28],
             IP(src="10.0.0.2", dst="203.0.113.255", ttl=1) / UDP(sport=1, dport=2),
             IP(src="10.0.0.255", dst="198.51.100.9", ttl=1) / UDP(sport=1, dport=2)]
    for c in cases:
        v, _ = feed(r, c, "wan" if c.src == "203.0.113.2" else "lan")
        assert v.dropped == "TTL exceeded" and v.sent == [], c.summary()
    frag = Packet.parse(bytearray(bytes(IP(src="10.0.0.2", dst="198.51.100.9", ttl=1, frag=185)
                                        / (b"x" * 16))), 0, "lan")
    assert r.icmp_send(frag, 11, 0, 0) is None                            # only fragment 0
    v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9", ttl=1) / ICMP(type=8, id=7), "lan")
    assert IP(v.sent[0].data)[ICMP].type == 11                            # queries are answered


def test_inbound_ifaddr_and_bad_setting():
    r = router(routes={"default": "wan", "192.0.2.0/24": "lan via 10.0.0.254"},
               icmp={"icmp_errors_use_inbound_ifaddr": 1})
    v, _ = feed(r, IP(src="192.0.2.7", dst="198.51.100.9", ttl=1) / UDP(sport=1, dport=2), "wan")
    err = IP(v.sent[0].data)
    assert (err.src, err.dst, v.sent[0].oif) == ("203.0.113.1", "192.0.2.7", "lan")
    r = router(routes={"default": "wan", "192.0.2.0/24": "lan via 10.0.0.254"})
    v, _ = feed(r, IP(src="192.0.2.7", dst="198.51.100.9", ttl=1) / UDP(sport=1, dport=2), "wan")
    assert IP(v.sent[0].data).src == "10.0.0.1"                           # the route back's
    with pytest.raises(ValueError, match="unknown ICMP setting 'icmp_ratelimt'"):
        router(icmp={"icmp_ratelimt": 5})


def test_filter_drop_answers_nothing():
    rules = RULES + "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    r = Router({"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, {"default": "wan"},
               parse_rules(rules), clock=Clock(), seed=1)
    v, _ = feed(r, IP(src="10.0.0.2", dst="198.51.100.9") / UDP(sport=1, dport=2), "lan")
    assert v.dropped == "filter FORWARD" and v.sent == []
