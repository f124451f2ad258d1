"""The nft rules syntax (nattrack.netfilter.nft): every construct of the subset is
read into the same model the iptables parser builds, matches packets like the
kernel's nft expressions, and every refusal names the line and the token.

Packets are built with scapy and parsed like the router parses them."""
from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from nattrack.conntrack.conn import (IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW,
                                     IPS_DST_NAT, IPS_SRC_NAT)
from nattrack.conntrack.tuple import ip2int
from nattrack.netfilter.nft import (CtDirectionMatch, CtStatusMatch, NamedSet, SetMatch,
                                    TcpFlagsMatch, parse_nft)
from nattrack.nat.range import (NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PERSISTENT,
                                NF_NAT_RANGE_PROTO_RANDOM, NF_NAT_RANGE_PROTO_RANDOM_FULLY,
                                NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)
from nattrack.netfilter.ruleset import Ruleset
from nattrack.netfilter.rulesfile import is_nft, parse_rules, to_nft
from nattrack.netfilter.xtables import IcmpMatch, RulesError, StateMatch
from nattrack.packet.ipv4 import Packet


def pkt(proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=1234, dport=80, flags="S",
        itype=8, iif="eth0"):
    ip = IP(src=src, dst=dst)
    layer = {"tcp": lambda: ip / TCP(sport=sport, dport=dport, flags=flags),
             "udp": lambda: ip / UDP(sport=sport, dport=dport),
             "icmp": lambda: ip / ICMP(type=itype, id=sport)}[proto]()
    p = Packet.parse(bytearray(bytes(layer)), 0, iif=iif)
    assert p is not None
    return p


class FakeCt:
    """Only the status bits a ct status match reads (a real nf_conn in the engine)."""
    def __init__(self, status: int) -> None:
        self.status = status


def chain(*rules: str, kind="filter", hook="forward", policy="accept", extra="") -> Ruleset:
    body = "\n".join("\t\t" + r for r in rules)
    return parse_nft(f"table ip t {{\n{extra}\tchain c {{\n\t\ttype {kind} hook {hook} "
                     f"priority 0; policy {policy};\n{body}\n\t}}\n}}\n", "t.nft")


def one(*rules: str, **kw):
    rs = chain(*rules, **kw)
    (r,) = rs.tables["ip t"]["c"]
    return r


def iptables_rule(line: str, table="filter"):
    rs = parse_rules(f"*{table}\n{line}\nCOMMIT\n")
    return next(iter(rs.rules()))


def same_model(nft_rule, ipt_rule) -> bool:
    """Equal but for where they sit and nft's counter (iptables always counts)."""
    return replace(nft_rule, table=ipt_rule.table, chain=ipt_rule.chain, counter=False) == ipt_rule


# --- one model underneath ---------------------------------------------------------------


@pytest.mark.parametrize("nft, ipt", [
    ('iifname "eth0" ip saddr 10.0.0.0/24 tcp dport 22 ct state new accept',
     "-A FORWARD -s 10.0.0.0/24 -i eth0 -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT"),
    ('oifname != "wan*" ip daddr != 10.0.0.5 udp sport 1000-2000 drop',
     "-A FORWARD ! -d 10.0.0.5 ! -o wan+ -p udp -m udp --sport 1000:2000 -j DROP"),
    ("ip protocol gre accept", "-A FORWARD -p gre -j ACCEPT"),
    ("meta l4proto != tcp accept", "-A FORWARD ! -p tcp -j ACCEPT"),
    ("icmp type echo-request accept", "-A FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT"),
    ("icmp type destination-unreachable icmp code 4 accept",
     "-A FORWARD -p icmp -m icmp --icmp-type 3/4 -j ACCEPT"),
    ("ct state established,related accept",
     "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ("ct state { new, invalid } drop", "-A FORWARD -m conntrack --ctstate NEW,INVALID -j DROP"),
    ('tcp dport 80 accept comment "web"',
     '-A FORWARD -p tcp -m tcp --dport 80 -m comment --comment web -j ACCEPT'),
    ("tcp sport 1 tcp dport != 22 return", "-A FORWARD -p tcp -m tcp --sport 1 ! --dport 22 -j RETURN"),
    ("ip saddr 0.0.0.0/0 accept", "-A FORWARD -j ACCEPT"),
])
def test_nft_and_iptables_give_the_same_rule(nft, ipt):
    assert same_model(one(nft), iptables_rule(ipt))


@pytest.mark.parametrize("nft, ipt", [
    ("masquerade", "-A POSTROUTING -j MASQUERADE"),
    ("meta l4proto udp masquerade to :40000-40999 fully-random",
     "-A POSTROUTING -p udp -j MASQUERADE --to-ports 40000-40999 --random-fully"),
    ("meta l4proto tcp snat to 203.0.113.5-203.0.113.6:1024-2048 random,persistent",
     "-A POSTROUTING -p tcp -j SNAT --to-source 203.0.113.5-203.0.113.6:1024-2048 --random "
     "--persistent"),
    ("snat ip to 203.0.113.7", "-A POSTROUTING -j SNAT --to-source 203.0.113.7"),
])
def test_nat_statements_in_postrouting(nft, ipt):
    assert same_model(one(nft, kind="nat", hook="postrouting"), iptables_rule(ipt, "nat"))


def test_dnat_with_port_and_port_only():
    r = one('iifname "wan" tcp dport 8080 dnat to 10.0.0.10:80', kind="nat", hook="prerouting")
    assert r.target == "DNAT" and r.nat_range == NatRange(
        ip2int("10.0.0.10"), ip2int("10.0.0.10"), 80, 80,
        NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED)
    r = one("tcp dport 443 dnat to :8443", kind="nat", hook="prerouting")
    assert r.nat_range == NatRange(0, 0, 8443, 8443, NF_NAT_RANGE_PROTO_SPECIFIED)
    r = one("dnat to 10.0.0.2-10.0.0.5 random", kind="nat", hook="output")
    assert r.nat_range.flags == NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_RANDOM


def test_masquerade_flags_each():
    for word, flag in (("random", NF_NAT_RANGE_PROTO_RANDOM),
                       ("fully-random", NF_NAT_RANGE_PROTO_RANDOM_FULLY),
                       ("persistent", NF_NAT_RANGE_PERSISTENT)):
        assert one(f"masquerade {word}", kind="nat", hook="postrouting").nat_range.flags == flag


def test_statements_counter_log_goto_are_kept():
    rs = chain("counter packets 12 bytes 720 log prefix \"in: \" goto sub", extra="\tchain sub {\n\t\taccept\n\t}\n")
    r = rs.tables["ip t"]["c"][0]
    assert r.counter and r.log == "in: " and r.goto and r.target == "sub"
    r = one("log drop")
    assert r.log == "" and not r.counter and r.target == "DROP"


# --- the file forms -----------------------------------------------------------------------


LIST_RULESET = """\
table inet filter {
	set trusted {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/24,
			     192.0.2.7 }
	}

	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related counter packets 0 bytes 0 accept
		ip saddr @trusted tcp dport { 22, 8000-8080 } accept # handle 5
	}
}
table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" masquerade
	}
	chain prerouting {
		type nat hook prerouting priority dstnat + 5; policy accept;
	}
}
"""


def test_list_ruleset_output_named_priorities_sets_and_counters():
    rs = parse_rules(LIST_RULESET, "list.nft")
    assert rs.syntax == "nft"
    assert list(rs.tables) == ["inet filter", "ip nat"]
    assert rs.bases["inet filter"]["input"] == ("filter", "INPUT", 0)
    assert rs.bases["ip nat"] == {"postrouting": ("nat", "POSTROUTING", 100),
                                  "prerouting": ("nat", "PREROUTING", -95)}
    assert rs.policies["inet filter"]["input"] == "DROP"
    assert rs.sets["inet filter"]["trusted"] == NamedSet(
        "ipv4_addr", ((ip2int("10.0.0.0"), ip2int("10.0.0.255")),
                      (ip2int("192.0.2.7"), ip2int("192.0.2.7"))), True)
    est, ssh = rs.tables["inet filter"]["input"]
    assert est.counter and est.states == (StateMatch(0b110, False, "conntrack"),)
    assert est.line == 11 and ssh.line == 12
    assert est.text == "ct state established, related counter packets 0 bytes 0 accept"
    assert SetMatch("ip saddr", rs.sets["inet filter"]["trusted"].elements, False,
                    "trusted") in ssh.matches
    assert SetMatch("tcp dport", ((22, 22), (8000, 8080))) in ssh.matches


def test_add_commands_as_iptables_restore_translate_writes_them():
    text = ("add table ip nat\n"
            "add chain ip nat POSTROUTING { type nat hook postrouting priority 100; policy accept; }\n"
            "add chain ip nat SUB\n"
            'add rule ip nat POSTROUTING oifname "wan" counter jump SUB\n'
            "add rule ip nat SUB counter masquerade\n")
    rs = parse_nft(text)
    assert [r.target for r in rs.rules()] == ["SUB", "MASQUERADE"]
    assert rs.bases == {"ip nat": {"POSTROUTING": ("nat", "POSTROUTING", 100)}}


def test_syntax_detection():
    assert is_nft("#!/usr/sbin/nft -f\n")
    assert is_nft("# comment\n\nflush ruleset\n")
    assert is_nft("table ip nat {\n}\n")
    assert is_nft("add table ip nat\n")
    assert not is_nft("# comment\n*nat\nCOMMIT\n")
    assert not is_nft("")


WIDE = LIST_RULESET + """\
table ip more {
	chain fwdchain {
		type filter hook forward priority -10; policy accept;
		tcp flags syn / syn,ack ct status dnat ct direction original counter jump subchain
		icmp type { echo-request, echo-reply } accept
		meta l4proto { tcp, udp } ip daddr 10.0.0.1-10.0.0.3 log prefix "x" drop
		tcp flags & (fin|syn|rst|ack) != syn,ack goto subchain
		tcp flags rst drop
	}
	chain subchain {
		udp dport != @ports return
		ct status != snat accept
	}
	set ports {
		type inet_service
		elements = { 53, 123 }
	}
}
"""


def test_writer_round_trips_every_construct():
    rs = parse_rules(WIDE)
    text = to_nft(rs)
    assert parse_rules(text, "again.nft") == rs
    assert to_nft(parse_rules(to_nft(parse_rules(text)))) == text


# --- matching -----------------------------------------------------------------------------


def test_tcp_flags_forms_match_like_nft():
    syn, synack, ack = pkt(flags="S"), pkt(flags="SA"), pkt(flags="A")
    only_syn = one("tcp flags syn / syn,ack accept")
    assert only_syn.matches_packet(syn, IP_CT_NEW, "eth0", "eth1")
    assert not only_syn.matches_packet(synack, IP_CT_NEW, "eth0", "eth1")
    anyf = one("tcp flags syn,rst accept")
    assert TcpFlagsMatch(0x06, 0, True) in anyf.matches
    assert anyf.matches_packet(synack, IP_CT_NEW, "eth0", "eth1")
    assert not anyf.matches_packet(ack, IP_CT_NEW, "eth0", "eth1")
    masked = one("tcp flags & (syn|ack) == syn|ack accept")
    assert masked.matches_packet(synack, None, "eth0", "eth1")
    assert not masked.matches_packet(syn, None, "eth0", "eth1")
    assert not masked.matches_packet(pkt("udp"), None, "eth0", "eth1")


def test_ct_status_and_direction_need_a_connection():
    p = pkt()
    dnat = one("ct status dnat accept")
    assert not dnat.matches_packet(p, None, "eth0", "eth1")         # no conntrack entry
    p.ct = FakeCt(IPS_DST_NAT)
    assert dnat.matches_packet(p, IP_CT_NEW, "eth0", "eth1")
    p.ct = FakeCt(IPS_SRC_NAT)
    assert not dnat.matches_packet(p, IP_CT_NEW, "eth0", "eth1")
    assert one("ct status != dnat accept").matches_packet(p, IP_CT_NEW, "eth0", "eth1")
    reply = one("ct direction reply accept")
    assert CtDirectionMatch(True) in reply.matches
    assert reply.matches_packet(p, IP_CT_ESTABLISHED_REPLY, "eth0", "eth1")
    assert not reply.matches_packet(p, IP_CT_ESTABLISHED, "eth0", "eth1")
    assert one("ct direction != reply accept").matches_packet(p, IP_CT_ESTABLISHED, "e", "f")
    assert CtStatusMatch(IPS_DST_NAT) in dnat.matches


def test_sets_ranges_and_named_sets_match():
    r = one("ip saddr { 10.0.0.0/30, 10.0.1.5-10.0.1.9 } udp dport { 53, 5000-5010 } accept")
    hit = lambda **kw: r.matches_packet(pkt("udp", **kw), None, "eth0", "eth1")  # noqa: E731
    assert hit(src="10.0.0.3", dport=53) and hit(src="10.0.1.9", dport=5005)
    assert not hit(src="10.0.0.4", dport=53) and not hit(src="10.0.1.5", dport=54)
    assert not r.matches_packet(pkt("tcp", src="10.0.0.1", dport=53), None, "eth0", "eth1")
    rs = chain("ip daddr != @blocked accept",
               extra="\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 10.9.9.9 }\n\t}\n")
    r = rs.tables["ip t"]["c"][0]
    assert r.matches_packet(pkt(dst="10.0.0.2"), None, "eth0", "eth1")
    assert not r.matches_packet(pkt(dst="10.9.9.9"), None, "eth0", "eth1")
    icmp = one("icmp type { echo-request, echo-reply } accept")
    assert icmp.matches_packet(pkt("icmp", itype=0), None, "eth0", "eth1")
    assert not icmp.matches_packet(pkt("icmp", itype=3), None, "eth0", "eth1")


def test_several_filter_chains_on_one_hook_run_in_priority_order():
    text = """table ip a {
	chain late { type filter hook forward priority 10; policy accept;
		tcp dport 22 drop
	}
}
table inet b {
	chain early { type filter hook forward priority -10; policy accept;
		tcp dport 22 accept
		udp dport 53 drop
	}
}
"""
    rs = parse_nft(text)
    assert rs.hooks[("filter", "FORWARD")] == [(-10, "inet b", "early"), (10, "ip a", "late")]
    # accept ends the early chain only: the late one still drops ssh.
    assert rs.verdict("FORWARD", pkt(dport=22), IP_CT_NEW, "eth0", "eth1") == "DROP"
    assert rs.verdict("FORWARD", pkt("udp", dport=53), IP_CT_NEW, "eth0", "eth1") == "DROP"
    assert rs.verdict("FORWARD", pkt(dport=80), IP_CT_NEW, "eth0", "eth1") == "ACCEPT"
    assert rs.verdict("INPUT", pkt(dport=22), IP_CT_NEW, "eth0", None) == "ACCEPT"
    policy = parse_nft("table ip a { chain x { type filter hook input priority 5; policy drop; } }")
    assert policy.verdict("INPUT", pkt(), IP_CT_NEW, "eth0", None) == "DROP"


def test_several_nat_chains_first_nat_rule_wins_accept_goes_on():
    text = """table ip a {
	chain first { type nat hook postrouting priority srcnat - 10; policy accept;
		ip saddr 10.0.0.1 accept
		ip saddr 10.0.0.2 snat to 203.0.113.2
	}
	chain second { type nat hook postrouting priority srcnat; policy accept;
		masquerade
	}
}
"""
    rs = parse_nft(text)
    first = lambda src: rs.first_match("nat", "POSTROUTING", pkt(src=src), IP_CT_NEW, None, "wan")  # noqa: E731
    assert first("10.0.0.1").target == "MASQUERADE"
    assert first("10.0.0.2").target == "SNAT"
    assert first("10.0.0.3").target == "MASQUERADE"
    assert rs.first_match("nat", "PREROUTING", pkt(), IP_CT_NEW, "eth0", None) is None


def test_goto_does_not_come_back_jump_does():
    def rs(verb):
        return parse_nft(f"""table ip a {{
	chain fwd {{ type filter hook forward priority 0; policy accept;
		{verb} sub
		drop
	}}
	chain sub {{
		tcp dport 22 accept
	}}
}}""")
    udp = pkt("udp")
    assert rs("jump").verdict("FORWARD", udp, None, "eth0", "eth1") == "DROP"
    assert rs("goto").verdict("FORWARD", udp, None, "eth0", "eth1") == "ACCEPT"
    assert rs("goto").verdict("FORWARD", pkt(dport=22), None, "eth0", "eth1") == "ACCEPT"


def test_icmp_match_in_the_model():
    assert one("icmp type 13 accept").icmp == IcmpMatch(13, 0, 255)
    assert one("icmp type != echo-reply accept").icmp == IcmpMatch(0, 0, 255, True)


# --- refusals -----------------------------------------------------------------------------


REFUSALS = [
    ("table ip6 t { }", 1, "ip6", "unsupported family"),
    ("table ip t {\n chain c {\n }\n", 4, "end of file", "table ip t is not closed"),
    ("table ip t { chain c { type route hook output priority 0; } }", 1, "route", "chain type"),
    ("table ip t { chain c { type nat hook forward priority 0; } }", 1, "forward", "nat chains"),
    ("table ip t { chain c { type filter hook prerouting priority 0; } }", 1, "prerouting",
     "only before conntrack"),
    ("table ip t { chain c { type filter hook postrouting priority 0; } }", 1, "postrouting",
     "input, forward and output"),
    ("table ip t { chain c { type filter hook input priority raw; } }", 1, "type",
     "prerouting and output"),
    ("table ip t {\n chain c {\n  type filter hook prerouting priority raw;\n  reject\n }\n}",
     4, "reject", "raw-priority"),
    ("table ip t {\n chain c {\n  type filter hook prerouting priority raw;\n  jump d\n }\n"
     " chain d {\n }\n}", 4, "jump", "raw-priority"),
    ("table ip t {\n chain c {\n  type filter hook prerouting priority raw;\n  notrack "
     "notrack\n }\n}", 4, "notrack", "twice"),
    ("table ip t { chain c { type filter hook input priority raw; } }", 1, "type", "conntrack"),
    ("table ip t { chain c { type filter hook input priority 0; policy queue; } }", 1, "queue",
     "policy"),
    ("table ip t { chain c { type filter hook input priority bogus; } }", 1, "bogus", "priority"),
    ("table ip t { chain c { type nat hook postrouting priority 100; policy drop; } }", 1,
     "drop", "nat chain"),
    ("table ip t {\n chain c {\n  udp dport 53 reject with tcp reset\n }\n}", 3, "tcp",
     "contradicts"),
    ("table ip t {\n chain c {\n  reject with icmp frag-needed\n }\n}", 3, "frag-needed",
     "nattrack knows"),
    ("table ip t {\n chain c {\n  reject with icmpx net-prohibited\n }\n}", 3,
     "net-prohibited", "nattrack knows"),
    ("table ip t {\n chain c {\n  reject with icmpv6 port-unreachable\n }\n}", 3, "icmpv6",
     "icmp, icmpx or tcp reset"),
    ("table ip t {\n chain c {\n  reject with tcp bogus\n }\n}", 3, "tcp", "reset"),
    ("table inet t {\n chain c {\n  meta nfproto ipv6 accept\n }\n}", 3, "ipv6", "IPv4"),
    ("table ip t {\n chain c {\n  reject accept\n }\n}", 3, "accept", "verdict"),
    ("table ip t {\n chain c {\n  type nat hook output priority 0;\n  reject\n }\n}", 4,
     "reject", "nat chain"),
    ("table ip t {\n chain c {\n  notrack\n }\n}", 3, "notrack", "raw priority"),
    ("table ip t {\n chain c {\n  type filter hook input priority 0;\n  notrack\n }\n}", 4,
     "notrack", "raw priority"),
    ("table ip t {\n chain c {\n  meta mark 1 accept\n }\n}", 3, "mark", "meta key"),
    ("table ip t {\n chain c {\n  ip ttl 1 accept\n }\n}", 3, "ttl", "ip ttl"),
    ("table ip t {\n chain c {\n  tcp window 1 accept\n }\n}", 3, "window", "tcp window"),
    ("table ip t {\n chain c {\n  ct helper \"ftp\" accept\n }\n}", 3, "helper", "ct helper"),
    ("table ip t {\n chain c {\n  ct state bogus accept\n }\n}", 3, "bogus", "ct state"),
    ("table ip t {\n chain c {\n  ct status bogus accept\n }\n}", 3, "bogus", "ct status"),
    ("table ip t {\n chain c {\n  tcp flags syn|bogus accept\n }\n}", 3, "bogus", "TCP flag"),
    ("table ip t {\n chain c {\n  limit rate 1/second accept\n }\n}", 3, "limit", "unsupported"),
    ("table ip t {\n chain c {\n  ip saddr 10.0.0.256 accept\n }\n}", 3, "10.0.0.256", "address"),
    ("table ip t {\n chain c {\n  ip saddr 10.0.0.1/24 accept\n }\n}", 3, "10.0.0.1/24",
     "host bits"),
    ("table ip t {\n chain c {\n  ip saddr $lan accept\n }\n}", 3, "$lan", "variables"),
    ("table ip t {\n chain c {\n  tcp dport 70000 accept\n }\n}", 3, "70000", "port"),
    ("table ip t {\n chain c {\n  tcp dport 22 udp sport 1 accept\n }\n}", 3, "udp", "never"),
    ("table ip t {\n chain c {\n  accept drop\n }\n}", 3, "drop", "verdict"),
    ("table ip t {\n chain c {\n  jump nowhere\n }\n}", 3, "nowhere", "no chain"),
    ("table ip t {\n chain c {\n  ip saddr @nope accept\n }\n}", 3, "@nope", "no set"),
    ("table ip t {\n chain c {\n  iifname { \"a\", \"b\" } accept\n }\n}", 3, "{",
     "interface names"),
    ("table ip t { chain c { type filter hook forward priority 0; masquerade; } }", 1,
     "masquerade", "nat chains on postrouting"),
    ("table ip t { chain c { type nat hook prerouting priority 0; snat to 1.2.3.4; } }", 1,
     "snat", "postrouting, input"),
    ("table ip t { chain c { type nat hook prerouting priority 0; dnat to 1.2.3.4:80; } }", 1,
     "1.2.3.4:80", "tcp or udp"),
    ("table ip t { chain c { type nat hook prerouting priority 0; drop; } }", 1, "drop",
     "nat chain"),
    ("table ip t { chain c { type nat hook output priority 0; oifname \"x\" masquerade; } }", 1,
     "masquerade", "postrouting"),
    ("table ip t { chain c { type filter hook input priority 0; oifname \"x\" accept; } }", 1,
     "oifname", "no output interface"),
    ("table ip t {\n chain a {\n  jump b\n }\n chain b {\n  jump a\n }\n"
     " chain c { type filter hook input priority 0; jump a; }\n}", 6, "a", "loop"),
    ("table ip t {\n set s { type ether_addr; }\n}", 2, "ether_addr", "set type"),
    ("table ip t {\n set s { type inet_service; elements = { 1-5 } }\n}", 2, "s", "interval"),
    ("table ip t {\n set s { type inet_service; elements = { 1 } }\n chain c {\n"
     "  ip saddr @s accept\n }\n}", 4, "@s", "inet_service"),
    ("define lan = 10.0.0.0/24\n", 1, "define", "unsupported command"),
    ("delete table ip t\n", 1, "delete", "unsupported command"),
    ("add rule ip t c accept\n", 1, "t", "no table"),
    ("table ip t {\n chain c {\n  ip saddr 10.0.0.1 accept\n", 4, "end of file", "expected"),
    ("table ip t { map m { } }", 1, "map", "chain, set"),
    ("table ip t { chain ACCEPT { } }", 1, "ACCEPT", "clashes"),
    ("table ip t { chain c { policy drop; } }", 1, "drop", "base chain"),
    ("table ip t {\n chain c {\n  ip saddr != 0.0.0.0/0 accept\n }\n}", 3, "0.0.0.0/0",
     "never match"),
    ("table ip t {\n chain c {\n  ip saddr 1.2.3.4 ip saddr 1.2.3.5 accept\n }\n}", 3, "saddr",
     "twice"),
    ("table ip t {\n chain c {\n  tcp dport 22 ` accept\n }\n}", 3, "`", "unsupported"),
    ("table ip t {\n chain c {\n  ip saddr ! 10.0.0.1 accept\n }\n}", 3, "!",
     "unexpected character"),
]


@pytest.mark.parametrize("text, line, token, words", REFUSALS)
def test_refusals_name_the_line_and_the_token(text, line, token, words):
    with pytest.raises(RulesError) as err:
        parse_rules("#!/usr/sbin/nft -f\n" + text, "bad.nft")
    shift = 1
    assert err.value.lineno == line + shift, str(err.value)
    assert err.value.token == token, str(err.value)
    assert words in str(err.value)
    assert str(err.value).startswith(f"bad.nft:{line + shift}: ")


# --- reject ---------------------------------------------------------------------------------

REJECTS = """table inet filter {
\tchain fwd_filter {
\t\ttype filter hook forward priority filter; policy accept;
\t\ttcp dport 23 reject
\t\ttcp dport 24 reject with tcp reset
\t\tudp dport 25 reject with icmp type host-unreachable
\t\tudp dport 26 reject with icmpx admin-prohibited
\t\tudp dport 27 reject with icmp prot-unreachable
\t\treject with tcp reset
\t}
}
"""


def test_reject_forms_and_their_answers():
    rs = parse_rules(REJECTS)
    got = [(r.target, r.proto, r.reject_with) for r in rs.rules()]
    assert got == [("REJECT", 6, "icmp-port-unreachable"), ("REJECT", 6, "tcp-reset"),
                   ("REJECT", 17, "icmp-host-unreachable"), ("REJECT", 17, "icmp-admin-prohibited"),
                   ("REJECT", 17, "icmp-proto-unreachable"),
                   ("REJECT", 6, "tcp-reset")]         # `with tcp reset` implies tcp, as in nft
    text = to_nft(rs)
    assert "\t\ttcp dport 23 reject\n" in text and "\t\treject with tcp reset\n" in text
    assert "udp dport 25 reject with icmpx host-unreachable" in text
    assert "udp dport 27 reject with icmp prot-unreachable" in text
    assert parse_rules(text) == rs
    # `nft list ruleset` shows the IPv4 dependency nft adds in inet before `with icmp`.
    listed = text.replace("udp dport 27", "meta nfproto ipv4 udp dport 27")
    assert parse_rules(listed) == rs
    # In the engine: the verdict is REJECT, and decide() names the rule that answers.
    verdict, rule = rs.decide("FORWARD", pkt(dport=24), None, "eth0", "eth1")
    assert verdict == "REJECT" and rule.reject_with == "tcp-reset"
    assert rs.verdict("FORWARD", pkt(proto="udp", dport=80), None, "eth0", "eth1") == "ACCEPT"


# --- notrack ------------------------------------------------------------------------------

NOTRACK = """table inet raw {
\tchain pre {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tudp dport 5300 counter notrack
\t\tudp dport 5399 drop
\t}
\tchain out {
\t\ttype filter hook output priority -300; policy accept;
\t\tudp sport 5300 notrack accept
\t}
\tchain myforward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state untracked accept
\t}
}
"""


def test_notrack_in_raw_chains_runs_before_conntrack():
    rs = parse_rules(NOTRACK)
    assert ("raw", "PREROUTING") in rs.hooks and ("raw", "OUTPUT") in rs.hooks
    assert ("filter", "OUTPUT") not in rs.hooks           # a raw chain is not a filter one
    assert rs.raw("PREROUTING", pkt(proto="udp", dport=5300), "eth0", None) == (False, True)
    assert rs.raw("PREROUTING", pkt(proto="udp", dport=5399), "eth0", None) == (True, False)
    assert rs.raw("PREROUTING", pkt(proto="udp", dport=53), "eth0", None) == (False, False)
    assert rs.raw("OUTPUT", pkt(proto="udp", sport=5300), None, None) == (False, True)
    assert rs.counters[("inet raw", "pre", 0)] == [1, 28]     # IP length, no payload
    # ct state untracked: IP_CT_UNTRACKED, neither invalid nor new
    from nattrack.conntrack.conn import IP_CT_UNTRACKED
    assert rs.verdict("FORWARD", pkt(proto="udp"), IP_CT_UNTRACKED, "eth0", "eth1") == "ACCEPT"
    assert rs.verdict("FORWARD", pkt(proto="udp"), None, "eth0", "eth1") == "DROP"
    text = to_nft(rs)
    assert "udp dport 5300 counter notrack\n" in text and "udp sport 5300 notrack accept" in text
    assert parse_rules(text) == rs


# --- the iptables raw table (-j NOTRACK, -j CT --notrack) ----------------------------------

RAW_IPT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp --dport 5300 -j NOTRACK
-A PREROUTING -p udp --sport 5300 -j CT --notrack
-A PREROUTING -p udp --dport 5399 -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate UNTRACKED -j ACCEPT
COMMIT
"""


def test_the_iptables_raw_table_runs_before_conntrack_and_translates():
    from nattrack.cli.rules import translate
    rs = parse_rules(RAW_IPT)
    assert [(r.target, r.notrack) for r in rs.tables["raw"]["PREROUTING"]] == [
        ("", True), ("", True), ("DROP", False)]          # NOTRACK goes on (XT_CONTINUE)
    assert rs.raw("PREROUTING", pkt(proto="udp", dport=5300), "eth0", None) == (False, True)
    assert rs.raw("PREROUTING", pkt(proto="udp", dport=5399), "eth0", None) == (True, False)
    text = translate(rs, "nft")
    assert "table ip raw {" in text and "type filter hook prerouting priority -300;" in text
    assert "udp dport 5300 counter notrack" in text
    back = parse_rules(text)
    assert back.raw("PREROUTING", pkt(proto="udp", sport=5300), "eth0", None) == (False, True)
    assert "-A PREROUTING -p udp -m udp --sport 5300 -j CT --notrack" in translate(back, "iptables")


@pytest.mark.parametrize("text, says", [
    ("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CT\nCOMMIT\n", "only --notrack"),
    ("*raw\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n-A PREROUTING -j X\nCOMMIT\n", "raw table"),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j NOTRACK\nCOMMIT\n", "NOTRACK"),
    ("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MASQUERADE\nCOMMIT\n", "MASQUERADE"),
])
def test_raw_table_refusals(text, says):
    with pytest.raises(RulesError) as e:
        parse_rules(text, "bad.rules")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_notrack_with_a_verdict_has_no_iptables_form():
    from nattrack.netfilter.nft import to_iptables
    with pytest.raises(ValueError) as e:
        to_iptables(parse_rules(NOTRACK))
    assert "two iptables rules" in str(e.value)


# --- named sets declared with typeof ------------------------------------------------------------

TYPEOF_SETS = """table inet f {
\tset blocked {
\t\ttypeof ip saddr
\t\tflags interval,constant
\t\tauto-merge
\t\telements = { 10.9.0.0/24, 10.1.0.1-10.1.0.9 }
\t}
\tset ports {
\t\ttypeof tcp dport
\t\telements = { 22, 80 }
\t}
\tset protos {
\t\ttypeof meta l4proto
\t\telements = { tcp, udp }
\t}
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tip saddr @blocked drop
\t\ttcp dport @ports accept
\t\tmeta l4proto @protos counter
\t}
}
"""


def test_sets_declared_with_typeof_are_the_same_sets():
    rs = parse_rules(TYPEOF_SETS)
    by_type = parse_rules(TYPEOF_SETS.replace("typeof ip saddr", "type ipv4_addr")
                            .replace("typeof tcp dport", "type inet_service")
                            .replace("typeof meta l4proto", "type inet_proto")
                            .replace("\t\tauto-merge\n", ""))
    assert rs == by_type and {s.type for s in rs.sets["inet f"].values()} == {
        "ipv4_addr", "inet_service", "inet_proto"}
    with pytest.raises(RulesError) as e:
        parse_rules(TYPEOF_SETS.replace("typeof tcp dport", "typeof ip ttl"), "bad.nft")
    assert "typeof ip ttl" in str(e.value) and "bad.nft:9" in str(e.value)
