"""nattrack.netfilter.nfttrace offline: handles, rule text, the packet line, verdicts, and
`nattrack trace --format nft` printing a router's records.  The line-by-line comparison
with the kernel's own `nft monitor trace` is tests/kernel/test_nft_trace.py."""
from __future__ import annotations

import io

import pytest

from nattrack.cli.conntrack import run_trace
from nattrack.conntrack.tuple import ip2int
from nattrack.lab import LabError
from nattrack.netfilter.nfttrace import handles, listed_rule, trace_receive
from nattrack.netfilter.ruleset import Ruleset
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.ipv4.stack import Router
from nattrack.packet.ipv4 import Packet

RULES = """\
table ip filter {
	set ports {
		type inet_service
		elements = { 7, 9 }
	}
	chain fw {
		type filter hook forward priority filter; policy drop;
		tcp dport { 22, 80 } counter comment "counter in a comment"
		iifname "lan" jump lan
		udp dport @ports drop
	}
	chain lan {
		udp dport 53 accept
	}
}
"""
IFACES = {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}


def _udp(sport: int, dport: int, payload: bytes = b"") -> Packet:
    import struct
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      ip2int("10.0.0.2").to_bytes(4, "big"),
                      ip2int("203.0.113.2").to_bytes(4, "big"))
    from nattrack.packet.checksum import checksum
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return Packet.parse(bytearray(hdr + udp), iif="lan")


def test_handles_follow_nft_f_order_chains_sets_anonymous_sets_rules():
    rs = parse_rules(RULES)
    # chains fw 1, lan 2, set ports 3; { 22, 80 } 4, its rule 5; then 6, 7; lan's rule 8
    assert handles(rs) == {("ip filter", "fw"): [5, 6, 7], ("ip filter", "lan"): [8]}


def test_rule_text_has_counter_values_but_not_inside_a_comment():
    rule = parse_rules(RULES).tables["ip filter"]["fw"][0]
    assert listed_rule(rule) == ('tcp dport { 22, 80 } counter packets 0 bytes 0 '
                                 'comment "counter in a comment"')


def test_a_packet_through_a_jump_to_its_verdict():
    router = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES))
    v, lines = trace_receive(router, _udp(4000, 53, b"\x00\x01hi"), trace_id=0xABCDEF01,
                             ether=("02:00:00:00:00:02", "02:00:00:00:00:01"))
    assert v.sent and not v.dropped
    assert lines == [
        ('trace id abcdef01 ip filter fw packet: iif "lan" oif "wan" ether saddr '
         '02:00:00:00:00:02 ether daddr 02:00:00:00:00:01 ip saddr 10.0.0.2 ip daddr '
         '203.0.113.2 ip dscp cs0 ip ecn not-ect ip ttl 63 ip id 1 ip length 32 udp sport '
         '4000 udp dport 53 udp length 12 @th,64,32 0x16869 '),
        'trace id abcdef01 ip filter fw rule iifname "lan" jump lan (verdict jump lan)',
        'trace id abcdef01 ip filter lan rule udp dport 53 accept (verdict accept)',
    ]


def test_a_protocol_without_transport_fields_is_named_as_nft_names_it():
    """``ip protocol gre``: for a protocol nft shows no header fields of, the name from
    /etc/protocols (nft's getprotobynumber()), then the transport header raw."""
    import struct
    from nattrack.packet.checksum import checksum
    gre = b"\x00\x00\x08\x00"
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(gre), 1, 0, 64, 47, 0,
                      ip2int("10.0.0.2").to_bytes(4, "big"), ip2int("203.0.113.2").to_bytes(4, "big"))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    router = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES))
    v, lines = trace_receive(router, Packet.parse(bytearray(hdr + gre), iif="lan"), trace_id=1)
    assert v.dropped == "filter FORWARD"
    assert lines[0].endswith(" ip ttl 63 ip id 1 ip protocol gre ip length 24 @th,0,32 0x800 ")


def test_a_drop_by_a_set_and_a_drop_by_the_policy():
    router = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES))
    p = _udp(4000, 7)
    p.iif = "wan"                       # not from lan: no jump
    v, lines = trace_receive(router, p, trace_id=1)
    assert v.dropped and lines[-1] == ("trace id 00000001 ip filter fw rule udp dport @ports "
                                       "drop (verdict drop)")
    p = _udp(4000, 5000)
    p.iif = "wan"
    v, lines = trace_receive(router, p, trace_id=2, conntrack=True)
    assert v.dropped and lines[-1] == "trace id 00000002 ip filter fw policy drop "
    assert lines[0].startswith("trace id 00000002 ip filter fw conntrack: ct direction "
                               "original ct state new ct id ")


def test_the_engine_answers_the_same_with_and_without_the_trace():
    a = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES), seed=1)
    b = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES), seed=1)
    for sport, dport in ((1, 53), (2, 7), (3, 22), (4, 5000)):
        va = a.receive(_udp(sport, dport), trace=True)
        vb, _lines = trace_receive(b, _udp(sport, dport))
        assert ([s.data for s in va.sent], va.dropped) == ([s.data for s in vb.sent],
                                                           vb.dropped)
    assert b.ruleset.__class__ is Ruleset            # the traced view is gone afterwards


class _Records:
    """What the lab service's trace stream hands run_trace: the router's records."""
    def __init__(self, records):
        self.records = records

    def trace(self, filters, count=None, router=None):
        yield from self.records


def test_cli_prints_the_nft_lines_of_each_record():
    router = Router(IFACES, {"default": "wan"}, ruleset=parse_rules(RULES))
    records = []
    for dport in (53, 5000):
        _v, lines = trace_receive(router, _udp(4000 + dport, dport))
        records.append({"ts": 0, "steps": [], "nft": lines})
    out = io.StringIO()
    assert run_trace(_Records(records), {}, fmt="nft", out=out) == 0
    text = out.getvalue().splitlines()
    assert text == records[0]["nft"] + records[1]["nft"]
    assert text[-1].endswith(" ip filter fw policy drop ")


def test_cli_names_a_router_without_nft_lines_in_one_line():
    with pytest.raises(LabError, match="no nft trace lines"):
        run_trace(_Records([{"ts": 0, "steps": []}]), {}, fmt="nft", out=io.StringIO())


def test_a_reject_is_a_drop_verdict_as_nft_reject_sets():
    rs = parse_rules("table ip filter {\n\tchain fw {\n\t\ttype filter hook forward priority 0;"
                       " policy accept;\n\t\tudp dport 5000 reject\n\t}\n}\n")
    router = Router(IFACES, {"default": "wan"}, ruleset=rs)
    v, lines = trace_receive(router, _udp(4000, 5000), trace_id=3)
    assert v.dropped and lines[-1] == "trace id 00000003 ip filter fw rule udp dport 5000 reject " \
        "(verdict drop)"


def test_handles_count_ct_helper_objects_before_sets():
    """What `nft -a list ruleset` showed on 6.18 after `nft -f` of this rule set's nft form:
    chain fw 1, ct helper ftp 2, set s 3, rules 4 and (after the anonymous set 5) 6."""
    rs = parse_rules('table ip filter {\n\tct helper ftp {\n\t\ttype "ftp" protocol tcp\n\t}\n'
                       "\tset s { type inet_service; elements = { 1, 2 } }\n"
                       "\tchain fw {\n\t\ttype filter hook forward priority 0; policy accept;\n"
                       '\t\ttcp dport 21 ct helper set "ftp"\n\t\ttcp dport { 5, 6 } accept\n'
                       "\t}\n}\n")
    assert handles(rs) == {("ip filter", "fw"): [4, 6]}
