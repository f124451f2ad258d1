"""`nattrack trace --format nft` against the kernel's own `nft monitor trace` (issue 12 item 4).

The same frames go through the same rule set twice: in a kernel lab of the harness (the
rule set's nft form loaded with ``nft -f``, plus a table that sets ``meta nftrace set 1``
in prerouting, before everything), with ``nft monitor trace`` recording in the router's
namespace; and through nattrack's engine (nattrack.netfilter.nfttrace.trace_receive, what
the live router runs for `nattrack trace --format nft`).  The lines must be the same, line
by line, trace ids aside (random in the kernel, one per packet here).  Lines of the
harness's own tables (the nftrace table, iptables' conntrack-forcing ``ip mangle``) are
left out.  nft >= 1.1 prints a ``conntrack:`` line per base chain where the kernel
reports the connection; nattrack's are compared (direction and state) when the machine's
nft prints any (nft 1.0.6 on Debian 12 and 1.1.3 on Debian 13 print none).

The engine traces with the running kernel's profile: before 6.5 (Debian 12's 6.1) the
kernel reports the end of each chain as ``verdict continue`` and a ``return`` as
``verdict return`` (NFT_TRACETYPE_RETURN events), later kernels do not.

Each comparison runs twice, with the machine's nft and with Debian 13's (nft 1.1.3 from
a cached trixie root, ``tests/rootfs.py``, run with chroot inside the router's namespace
against this kernel): the engine prints as the monitoring nft's version does.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from nattrack.conntrack.profile import PROFILES, running_profile
from nattrack.netfilter.nfttrace import nft_form, nft_version, trace_receive
from nattrack.netfilter.ruleset import Ruleset
from nattrack.netfilter.rulesfile import parse_rules, to_nft
from nattrack.ipv4.stack import Router
from nattrack.packet.ipv4 import Packet

from .harness import (
    HOST_GATEWAY_IF,
    IFACES,
    MACS,
    PRIV1,
    PUB,
    ROUTER_PUB,
    ROUTES,
    KernelLab,
)
from .scenarios import MASQ_FORWARD_POLICY

# A tutorial-style rule set: NAT both ways, a stateful forward filter with user chains
# (jump, goto, return), a named and an anonymous set, counters, a comment, a log rule,
# a second filter chain on forward at another priority, and an input chain.
LESSON = """\
table ip nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "r-pub" tcp dport 8080 dnat to 10.0.0.2:80
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "r-pub" counter masquerade
	}
}
table ip filter {
	set blocked {
		type inet_service
		elements = { 7, 9 }
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related counter accept
		ct state invalid drop
		tcp dport { 22, 80 } counter comment "web or ssh"
		udp dport @blocked drop
		iifname "r-priv" jump from_lan
		ct status dnat goto from_wan
	}
	chain from_lan {
		udp dport 53 accept
		tcp dport 80 accept
		return
	}
	chain from_wan {
		tcp dport 80 accept
	}
	chain input {
		type filter hook input priority filter; policy accept;
		icmp type echo-request counter accept
	}
}
table ip audit {
	chain early {
		type filter hook forward priority -10; policy accept;
		ip daddr 203.0.113.99 log prefix "audit " drop
		meta l4proto udp counter
	}
}
"""

# Sets nftrace on every packet the router receives, before any other chain.
TRACE_TABLE = """
table ip nattrack_trace {
	chain pre {
		type filter hook prerouting priority -350; policy accept;
		meta nftrace set 1
	}
}
"""


def _frames():
    """(host, IP packet) in order: a TCP connection out (masqueraded), UDP allowed, UDP
    blocked by a set, UDP dropped by the policy, a port forward in, a ping to the router,
    a packet the audit chain drops, and an ICMP error for the open connection."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    def out(l4, **k):
        return "priv1", IP(src=PRIV1, dst=PUB, **k) / l4

    def back(l4, **k):
        return "pub", IP(src=PUB, dst=ROUTER_PUB, **k) / l4

    return [
        out(TCP(sport=40000, dport=80, flags="S", seq=1000), tos=0xb9),
        back(TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001)),
        out(TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001)),
        out(TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5001) / b"GET / HTTP/1.0\r\n"),
        out(UDP(sport=40053, dport=53) / b"\x12\x34query"),
        back(UDP(sport=53, dport=40053) / b"\x12\x34answer-longer-than-twelve"),
        out(UDP(sport=40007, dport=7) / b"echo"),
        out(UDP(sport=40099, dport=5000)),
        back(TCP(sport=50000, dport=8080, flags="S", seq=7000)),
        back(ICMP(type=8, id=7, seq=1) / b"ping"),
        ("priv1", IP(src=PRIV1, dst="203.0.113.99") / UDP(sport=1, dport=2)),
        back(ICMP(type=3, code=3) / IP(src=ROUTER_PUB, dst=PUB) / TCP(sport=40000, dport=80,
                                                                   flags="PA")),
    ]


@pytest.fixture(scope="module")
def trixie_nft(tmp_path_factory) -> list[str]:
    """Debian 13's nft, run through chroot (no mounts: nft needs only netlink; netbase's
    /etc/protocols names ``ip protocol udp`` as on an installed system)."""
    from tests.rootfs import rootfs_problem, rootfs_tarball, unpack
    problem = rootfs_problem()
    if problem:
        pytest.skip(problem)
    root = unpack(rootfs_tarball("trixie", ["netbase", "nftables"]), tmp_path_factory.mktemp("trixie"))
    return ["chroot", str(root), "/usr/sbin/nft"]


@pytest.fixture(params=["host", "trixie"], ids=["host-nft", "debian13-nft"])
def nft(request) -> list[str]:
    """The nft that monitors: this machine's, or Debian 13's."""
    return ["nft"] if request.param == "host" else request.getfixturevalue("trixie_nft")


def _kernel_trace(rs: Ruleset, frames, workdir, handles: bool, nft: list[str]) -> list[str]:
    rules = to_nft(rs) + TRACE_TABLE
    with KernelLab(rules, workdir=workdir) as lab:
        mon = lab._spawn("rtr", [*nft, *(["-a"] if handles else []), "monitor", "trace"],
                         stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not lab._netlink_listening(mon.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for host, pkt in frames:
            lab.send(host, pkt)
            time.sleep(0.05)
        time.sleep(0.5)
        mon.send_signal(signal.SIGTERM)
        out, _ = mon.communicate(timeout=10)
    tables = tuple(key + " " for key in nft_form(rs).tables)
    return [line for line in out.splitlines() if ID.sub("", line).startswith(tables)]


def _engine_trace(rs: Ruleset, frames, conntrack: bool, handles: bool,
                  version: tuple[int, int]) -> list[list[str]]:
    from scapy.layers.l2 import Ether
    router = Router(IFACES, ROUTES, ruleset=rs, profile=running_profile())   # this kernel's events
    traces = []
    for host, pkt in frames:
        iface = HOST_GATEWAY_IF[host]
        frame = bytes(Ether(src=MACS[host], dst=MACS[iface]) / pkt)
        p = Packet.parse(bytearray(frame[14:]), iif=iface)
        _v, lines = trace_receive(router, p, ether=(MACS[host], MACS[iface]),
                                  conntrack=conntrack, show_handles=handles, nft=version)
        traces.append(lines)
    return traces


ID = re.compile(r"^trace id [0-9a-f]{8} ")


def _compare(rs: Ruleset, workdir, nft: list[str], handles: bool = False) -> None:
    frames = _frames()
    kernel = _kernel_trace(rs, frames, workdir, handles, nft)
    assert kernel, "nft monitor trace printed nothing for the rule set's tables"
    with_ct = any(" conntrack: " in line for line in kernel)
    traces = _engine_trace(rs, frames, conntrack=with_ct, handles=handles,
                           version=nft_version(nft))
    for lines in traces:                         # one id per packet, its own
        assert len({line[:17] for line in lines}) <= 1, lines
    assert len({t[0][:17] for t in traces if t}) == sum(1 for t in traces if t)
    ours = [ID.sub("trace id ID ", line) for t in traces for line in t]
    theirs = [ID.sub("trace id ID ", line) for line in kernel]
    if with_ct:           # direction and state; ids are each side's own, status bits beyond
        ours, theirs = ([re.sub(r"ct (status \S+|id \d+) ", "", x) for x in lines]   # nft's
                        for lines in (ours, theirs))                               # names vary
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"line {i}:\n nattrack: {a!r}\n kernel:   {b!r}"
    assert len(ours) == len(theirs), (ours[len(theirs):], theirs[len(ours):])


@pytest.mark.kernel
@pytest.mark.parametrize("handles", [False, True], ids=["plain", "with-handles"])
def test_trace_matches_nft_monitor_trace_for_a_lesson_in_nft(tmp_path, nft, handles):
    """With ``handles``, `nft -a monitor trace` against ``show_handles``: each rule's
    ``# handle N`` as the kernel numbered it (chains, named sets, anonymous sets, rules)."""
    _compare(parse_rules(LESSON, "lesson.nft"), tmp_path, nft, handles)


@pytest.mark.kernel
def test_trace_matches_nft_monitor_trace_for_an_iptables_rule_set(tmp_path, nft):
    """An iptables rules file is traced in the nft form `nattrack rules translate` writes."""
    _compare(parse_rules(MASQ_FORWARD_POLICY, "masq.rules"), tmp_path, nft)


def test_a_6_1_kernel_reports_chain_ends_and_returns_as_return_events():
    """Offline: with the 6.1 profile the lines have 6.1's NFT_TRACETYPE_RETURN events
    (what Debian 12's 6.1 printed under vm-check: ``verdict continue`` ending the nat
    prerouting chain), with the newest none."""
    from scapy.layers.inet import IP, UDP
    rs = parse_rules(LESSON, "lesson.nft")
    lines = {}
    for name in ("6.1", "6.18"):
        router = Router(IFACES, ROUTES, ruleset=rs, profile=PROFILES[name])
        p = Packet.parse(bytearray(bytes(IP(src=PRIV1, dst=PUB) / UDP(sport=40099, dport=5000))),
                         iif=HOST_GATEWAY_IF["priv1"])
        lines[name] = [ID.sub("", line) for line in trace_receive(router, p, trace_id=1)[1]
                       if " packet: " not in line]
    assert lines["6.18"] == [
        "ip nat prerouting policy accept ",
        "ip audit early rule ip protocol udp counter packets 0 bytes 0 (verdict continue)",
        "ip audit early policy accept ",
        'ip filter forward rule iifname "r-priv" jump from_lan (verdict jump from_lan)',
        "ip filter from_lan rule return (verdict return)",
        "ip filter forward policy drop "]
    assert lines["6.1"] == [
        "ip nat prerouting verdict continue ",
        "ip nat prerouting policy accept ",
        "ip audit early rule ip protocol udp counter packets 0 bytes 0 (verdict continue)",
        "ip audit early verdict continue ",
        "ip audit early policy accept ",
        'ip filter forward rule iifname "r-priv" jump from_lan (verdict jump from_lan)',
        "ip filter from_lan verdict return ",
        "ip filter forward verdict continue ",
        "ip filter forward policy drop "]
