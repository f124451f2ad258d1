"""Differential fuzzing: generated packet sequences through the kernel and the engine.

Hand-written scenarios (scenarios.py) only find what their author thought of.  Here
hypothesis draws a :class:`Case` -- a ruleset from a small family (MASQUERADE, SNAT,
SNAT to a port range, DNAT, filter DROP INVALID, a FORWARD policy, no NAT), a sysctl
profile (defaults, tcp_loose=0, be_liberal=1, ignore_invalid_rst=1, every timeout 2 s)
and up to three flows (TCP, UDP, ICMP echo) with a sequence of steps: TCP segments
with any flags, sequence and acknowledgment numbers chosen relative to the flow (the
next byte, retransmissions, just inside / at / past the receiver's window edge, far
off, zero), windows, window-scale options, payload sizes, in either direction; UDP
datagrams; echo requests and replies; ICMP errors quoting a flow's packet (correctly or
not); and long pauses.  :func:`run_case` turns it into a harness
:class:`~.harness.Scenario`, runs it through the real kernel (a :class:`~.harness.KernelLab`
per ruleset, flushed between cases) and the engine (``test_kernel_diff.run_engine``)
and compares exactly what the suite compares (``test_kernel_diff.compare``).
hypothesis shrinks a disagreement to a minimal case, which :func:`scenario_source`
prints as a scenario for scenarios.py.

Timing.  The kernel runs in real time, the engine replays the captured timestamps, so
any outcome that depends on *when* (an entry expiring, UDP's 2 s stream detection)
is only comparable away from the boundary.  Steps come in bursts (well under a second);
a pause is 2.7 s, longer than every shortened timeout (2 s); :func:`timing_margin`
rejects the rare case where a packet or the final listing still lands within 0.2 s of
a 2 s boundary.  The router's own ICMP errors are rate-limited per destination and the
kernel's bucket outlives a case (the engine's starts full), so the labs run with
``net.ipv4.icmp_ratelimit=0`` and a case that makes the router send more errors than a
full bucket holds (6) is rejected.  Random NAT ports are paired with the engine's by value
(test_kernel_diff.compare), so a disagreement where that pairing cannot work (an ICMP error
quoting a random port, a random port given twice) is rejected too (docs/fuzzing.md).

Used by test_fuzz.py (a fixed-seed budget in CI) and ``scripts/fuzz-kernel`` (long runs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from typing import Any

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from .harness import (PRIV1, PRIV2, PUB, ROUTER_PRIV, ROUTER_PUB, KernelLab, LabError,
                      Recording, Scenario, Send, Sleep)
from .scenarios import DNAT_FORWARD, MASQ, MASQ_DROP_INVALID, MASQ_FORWARD_POLICY, SNAT_RANGE

# ----------------------------------------------------------------------------------------
# The family of rulesets and sysctl profiles.

_NAT_HEAD = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             ":POSTROUTING ACCEPT [0:0]\n")
SNAT_PLAIN = _NAT_HEAD + "-A POSTROUTING -o r-pub -j SNAT --to-source 203.0.113.1\nCOMMIT\n"
NO_NAT = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

RULESETS = {
    "masq": MASQ,
    "masq_drop_invalid": MASQ_DROP_INVALID,
    "forward_policy": MASQ_FORWARD_POLICY,   # NEW allowed for tcp/80 and udp/53 only
    "snat": SNAT_PLAIN,
    "snat_range": SNAT_RANGE,                # tcp/udp to 1024-1030 (random), icmp not NATed
    "dnat": DNAT_FORWARD,                    # pub -> r:8080 => priv1:80, and MASQUERADE
    "no_nat": NO_NAT,
}

SHORT = "2"
_SHORT_TIMEOUTS = (
    "udp_timeout", "udp_timeout_stream", "icmp_timeout", "generic_timeout",
    "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_established",
    "tcp_timeout_fin_wait", "tcp_timeout_close_wait", "tcp_timeout_last_ack",
    "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_max_retrans",
    "tcp_timeout_unacknowledged")
SYSCTL_PROFILES = {
    "default": {},
    "strict": {"net.netfilter.nf_conntrack_tcp_loose": "0"},
    "liberal": {"net.netfilter.nf_conntrack_tcp_be_liberal": "1"},
    "ignore_invalid_rst": {"net.netfilter.nf_conntrack_tcp_ignore_invalid_rst": "1"},
    "short_timeouts": {f"net.netfilter.nf_conntrack_{k}": SHORT for k in _SHORT_TIMEOUTS},
}
BOUNDARY = float(SHORT)   # every time-dependent boundary is 2 s (timeouts, UDP stream_ts)
PAUSE = 2.7               # a pause: past every shortened timeout, clear of the boundary
MARGIN = 0.2              # closer than this to a boundary: the kernel's outcome is racy
ICMP_BURST = 6            # XRLIM_BURST_FACTOR: errors a full per-destination bucket allows

# ----------------------------------------------------------------------------------------
# A case (what hypothesis draws and shrinks).

TCP_FLAGS = ("A", "PA", "S", "SA", "FA", "R", "RA", "F", "", "SF", "SR", "FPA", "SRA")
SEQ_CHOICES = ("next", "retrans", "plus1", "minus1", "edge_in", "edge", "edge_out", "far",
               "old", "new_isn")
ACK_CHOICES = ("all", "less", "more", "far", "zero", "old")
WINDOWS = (65535, 502, 0, 1)
WSCALES = (None, 7, 0, 14)           # None: no options on a SYN; else MSS+WScale+SAckOK
DATA_LENS = (0, 1, 5, 1000)
ISNS = (1000, 2**32 - 3, 0x7FFFFFF0)
PROTOS = ("tcp", "udp", "icmp")


@dataclasses.dataclass(frozen=True)
class Flow:
    proto: str        # tcp, udp, icmp
    host: str         # the client: priv1/priv2 (outbound) or pub (inbound, dnat only)
    dport: int        # the server's port (icmp: unused)
    ciss: int = 1000
    siss: int = 50000
    # tcp: the steps start after a clean handshake (SYN, SYN-ACK, ACK), both SYNs with
    # this window scale (-1: none), so the steps explore an established connection
    handshake: int | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str                  # tcp, udp, icmp, icmperr, repeat (a flow's last packet), pause
    flow: int = 0
    reply: bool = False        # sent by the server side (or about the client's packet)
    flags: str = ""
    seq: str = "next"
    ack: str = "all"
    data: int = 0
    win: int = 65535
    wscale: int | None = None
    code: int = 3              # icmperr: (3, code) or 11 for time exceeded
    bad_inner: bool = False    # icmperr quotes a packet that belongs to no connection


@dataclasses.dataclass(frozen=True)
class Case:
    rules: str                 # key of RULESETS
    profile: str               # key of SYSCTL_PROFILES
    flows: tuple[Flow, ...]
    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        return "fuzz_" + hashlib.sha1(repr(self).encode()).hexdigest()[:10]


def _dports(rules: str) -> st.SearchStrategy[int]:
    return st.sampled_from((80, 53, 9000) if rules == "forward_policy" else (9000, 80, 53))


@st.composite
def flows(draw, rules: str, protos: tuple[str, ...] = PROTOS) -> tuple[Flow, ...]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        proto = draw(st.sampled_from(protos))
        host = draw(st.sampled_from(("priv1", "priv2")))
        if rules == "dnat" and proto == "tcp" and draw(st.booleans()):
            host = "pub"                          # inbound through the port forward
        handshake = None
        if proto == "tcp" and draw(st.booleans()):
            handshake = draw(st.sampled_from((-1, 7, 0, 14)))
        out.append(Flow(proto, host, draw(_dports(rules)),
                        ciss=draw(st.sampled_from(ISNS)), siss=draw(st.sampled_from(ISNS[::-1])),
                        handshake=handshake))
    return tuple(out)


@st.composite
def one_step(draw, rules: str, fl: tuple[Flow, ...]) -> tuple[Step, ...]:
    """A step of one of the flows, rarely after a pause (it costs 2.7 s; shrinks away)."""
    i = draw(st.integers(0, len(fl) - 1))
    f = fl[i]
    pause = (Step("pause"),) if draw(st.integers(0, 11)) == 11 else ()
    # The comparison does not rename random NAT ports inside ICMP errors: none for
    # flows SNATed to a port range.
    err = ("icmperr",) if _nat_kind(rules, f) != "random" else ()
    kind = draw(st.sampled_from((f.proto,) * 8 + err + ("repeat",)))
    if kind == "repeat":                 # the flow's previous packet again, unchanged
        return (*pause, Step("repeat", i))
    if kind == "tcp":
        flags = draw(st.sampled_from(TCP_FLAGS))
        return (*pause, Step("tcp", i, draw(st.booleans()), flags,
                             seq=draw(st.sampled_from(SEQ_CHOICES)),
                             ack=draw(st.sampled_from(ACK_CHOICES)),
                             data=draw(st.sampled_from(DATA_LENS)),
                             win=draw(st.sampled_from(WINDOWS)),
                             wscale=draw(st.sampled_from(WSCALES)) if "S" in flags else None))
    if kind == "icmperr":
        return (*pause, Step("icmperr", i, draw(st.booleans()),
                             code=draw(st.sampled_from((3, 1, 11))),
                             bad_inner=draw(st.booleans())))
    return (*pause, Step(kind, i, draw(st.booleans()), data=draw(st.sampled_from((1, 5)))))


@st.composite
def steps_for(draw, rules: str, fl: tuple[Flow, ...]) -> tuple[Step, ...]:
    drawn = draw(st.lists(one_step(rules, fl), min_size=1, max_size=16))
    # one pause at most, never first (it would only cost time); a repeat needs a packet
    out, paused, sent = [], False, {i for i, f in enumerate(fl) if f.handshake is not None}
    for step in (s for group in drawn for s in group):
        if step.kind == "pause":
            if paused or not out:
                continue
            paused = True
        elif step.kind == "repeat" and step.flow not in sent:
            continue
        else:
            sent.add(step.flow)
        out.append(step)
    while out and out[-1].kind == "pause":
        out.pop()
    return tuple(out) or (Step(fl[0].proto),)


@st.composite
def cases(draw, rulesets: tuple[str, ...] = tuple(RULESETS),
          protos: tuple[str, ...] = PROTOS) -> Case:
    rules = draw(st.sampled_from(rulesets))
    profile = draw(st.sampled_from(tuple(SYSCTL_PROFILES)))
    fl = draw(flows(rules, protos))
    return Case(rules, profile, fl, draw(steps_for(rules, fl)))


# ----------------------------------------------------------------------------------------
# From a case to a harness scenario.

_ADDR = {"priv1": PRIV1, "priv2": PRIV2, "pub": PUB}
MOD = 2**32


@dataclasses.dataclass
class _Side:
    isn: int
    nxt: int                   # next sequence number (after everything sent)
    acked: int | None = None   # the last ack number this side sent
    win: int = 65535
    wscale: int | None = None  # from its SYN


class _Conv:
    """The addresses of one flow as each side sees them, and TCP sequence bookkeeping."""

    def __init__(self, case: Case, index: int):
        f = case.flows[index]
        self.flow, self.index = f, index
        self.cport = 41000 + 100 * index + {"priv1": 0, "priv2": 10, "pub": 20}[f.host]
        self.nat = _nat_kind(case.rules, f)
        if f.host == "pub":                      # inbound: pub -> r:8080 => priv1:80
            self.client = ("pub", PUB, ROUTER_PUB, 8080)
            self.server = ("priv1", PRIV1, 80)
        else:
            self.client = (f.host, _ADDR[f.host], PUB, f.dport)
            self.server = ("pub", PUB, f.dport)
        self.c, self.s = _Side(f.ciss, f.ciss), _Side(f.siss, f.siss)

    def server_dst(self) -> tuple[str, int | None]:
        """Where the server sends (address, port), None = the kernel's choice (random)."""
        if self.flow.host == "pub":
            return PUB, self.cport
        if self.nat == "none":
            return self.client[1], self.cport
        return ROUTER_PUB, (self.cport if self.nat == "kept" else None)


def _nat_kind(rules: str, f: Flow) -> str:
    """kept: SNAT/MASQUERADE keeps the client's port (it is unique); random: SNAT to a
    port range that does not contain it; none: not translated."""
    if rules == "no_nat" or f.host == "pub":
        return "none"
    if rules == "snat_range":
        return "random" if f.proto in ("tcp", "udp") else "none"
    return "kept"


def _nat_port(lab: KernelLab, conv: _Conv) -> int:
    """The source port the kernel gave the flow (its own port if the entry is gone)."""
    try:
        return lab.mapped_key(conv.flow.proto, conv.client[1], conv.cport, PUB, conv.flow.dport)
    except LabError:
        return conv.cport


def _seq_for(step: Step, me: _Side, peer: _Side) -> tuple[int, bool]:
    """The sequence number ``step`` asks for and whether it moves the sender's stream."""
    syn = "S" in step.flags
    if step.seq == "new_isn":
        me.isn = me.nxt = (me.isn + 1_000_000) % MOD
        return me.isn, True
    if step.seq == "next":
        return (me.isn if syn else me.nxt), True
    if step.seq == "retrans":
        return (me.isn if syn else me.nxt - max(step.data, 1)), False
    edge = (peer.acked if peer.acked is not None else me.isn + 1) + \
        (peer.win << peer.wscale if peer.wscale is not None and me.wscale is not None
         else peer.win)
    return {"plus1": me.nxt + 1, "minus1": me.nxt - 1, "edge_in": edge - max(step.data, 1),
            "edge": edge, "edge_out": edge + 1, "far": me.nxt + 2**30,
            "old": me.nxt - 200_000}[step.seq], False


def _ack_for(step: Step, peer: _Side) -> int:
    if "A" not in step.flags:
        return 0
    return {"all": peer.nxt, "less": peer.nxt - 1, "more": peer.nxt + 1,
            "far": peer.nxt + 2**30, "zero": 0, "old": peer.isn}[step.ack]


def _tcp_send(conv: _Conv, step: Step) -> Send:
    me, peer = (conv.s, conv.c) if step.reply else (conv.c, conv.s)
    seq, advance = _seq_for(step, me, peer)
    ack = _ack_for(step, peer)
    seglen = step.data + ("S" in step.flags) + ("F" in step.flags)
    if advance:
        me.nxt = max(me.nxt, seq + seglen)
    if "A" in step.flags:
        me.acked = ack
    me.win = step.win
    options = []
    if step.wscale is not None:
        me.wscale = step.wscale
        options = [("MSS", 1460), ("WScale", step.wscale), ("SAckOK", b"")]
    payload = b"d" * step.data

    def build(dst: str, sport: int, dport: int, src: str) -> IP:
        pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=step.flags,
                                         seq=seq % MOD, ack=ack % MOD, window=step.win,
                                         options=options)
        return pkt / payload if payload else pkt
    note = (f"flow {conv.index} {'server' if step.reply else 'client'} tcp "
            f"[{step.flags}] seq={step.seq} ack={step.ack} len={step.data} win={step.win}")
    return _send(conv, step.reply, build, note)


def _send(conv: _Conv, reply: bool, build, note: str) -> Send:
    """A Send from the client or the server of ``conv``; ``build(dst, sport, dport, src)``
    makes the IP packet.  A server packet to a port only the kernel knows is built when
    the step runs."""
    if not reply:
        host, src, dst, dport = conv.client
        return Send(host, build(dst, conv.cport, dport, src), note=note)
    host, src, sport = conv.server
    dst, dport = conv.server_dst()
    if dport is None:
        return Send(host, lambda lab: build(dst, sport, _nat_port(lab, conv), src), note=note)
    return Send(host, build(dst, sport, dport, src), note=note)


def _icmp_error(conv: _Conv, step: Step) -> Send:
    """An ICMP error about the flow: sent by the server about the client's packet as it
    arrived there (``reply`` False), or by the client about the server's packet.  (Flows
    with a random NAT port get none: see :func:`one_step`.)"""
    typ, code = (11, 0) if step.code == 11 else (3, step.code)
    if not step.reply:
        host, src, sport = conv.server
        dst, dport = conv.server_dst()
        assert dport is not None, "no ICMP error steps for a random NAT port"
        quoted = _quoted(conv, step, dst, src, dport, sport)
    else:
        host, src, dst, dport = conv.client
        quoted = _quoted(conv, step, dst, src, dport, conv.cport)
    who = "client" if step.reply else "server"
    return Send(host, IP(src=src, dst=dst) / ICMP(type=typ, code=code) / quoted,
                note=f"flow {conv.index} icmp error {typ}/{code} from the {who}")


def _quoted(conv: _Conv, step: Step, src: str, dst: str, sport: int, dport: int) -> bytes:
    """The start of the packet an ICMP error quotes (IP header + 8 bytes); ``bad_inner``
    changes its source port (echo id) so that it belongs to no connection."""
    bad = 1 if step.bad_inner else 0
    if conv.flow.proto == "icmp":
        l4 = ICMP(type=0 if step.reply else 8, id=conv.cport + bad, seq=1)
    elif conv.flow.proto == "udp":
        l4 = UDP(sport=sport + bad, dport=dport) / b"q"
    else:
        l4 = TCP(sport=sport + bad, dport=dport, flags="A", seq=1, ack=1)
    return bytes(IP(src=src, dst=dst) / l4)[:28]


def _datagram(conv: _Conv, step: Step) -> Send:
    payload = b"u" * step.data
    if step.kind == "udp":
        def build(dst, sport, dport, src):
            return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload
    else:
        def build(dst, sport, dport, src):      # echo request, or the reply from the server
            return IP(src=src, dst=dst) / ICMP(type=0 if step.reply else 8, id=conv.cport,
                                               seq=1) / payload
    who = "server" if step.reply else "client"
    return _send(conv, step.reply, build, f"flow {conv.index} {who} {step.kind} len={step.data}")


def to_scenario(case: Case) -> Scenario:
    convs = [_Conv(case, i) for i in range(len(case.flows))]
    out: list[Any] = []
    for conv in convs:
        if conv.flow.handshake is not None:
            ws = None if conv.flow.handshake < 0 else conv.flow.handshake
            out += [_tcp_send(conv, Step("tcp", conv.index, False, "S", wscale=ws)),
                    _tcp_send(conv, Step("tcp", conv.index, True, "SA", wscale=ws)),
                    _tcp_send(conv, Step("tcp", conv.index, False, "A"))]
    last: dict[int, Send] = {}                # each flow's latest packet
    for step in case.steps:
        if step.kind == "pause":
            out.append(Sleep(PAUSE, "pause"))
            continue
        conv = convs[step.flow]
        if step.kind == "repeat":
            if step.flow in last:
                out.append(last[step.flow])
            continue
        if step.kind == "tcp":
            out.append(_tcp_send(conv, step))
        elif step.kind == "icmperr":
            out.append(_icmp_error(conv, step))
        else:
            out.append(_datagram(conv, step))
        last[step.flow] = out[-1]
    random_ports = any(c.nat == "random" for c in convs)
    return Scenario(case.name, f"generated: {case!r}", RULESETS[case.rules], tuple(out),
                    sysctls=dict(SYSCTL_PROFILES[case.profile]), random_ports=random_ports)


# ----------------------------------------------------------------------------------------
# Running a case.

# test_kernel_diff's words for a random port given to two connections (one after the
# other, e.g. after an expiry): kernel and engine draw independently, so only one of them
# may happen to reuse a port.
RANDOM_REUSE = ("kernel reused", "to two connections the kernel kept apart")


class Rejected(Exception):
    """The case cannot be compared (timing too close to a boundary, rate limits, recorder
    trouble): not a disagreement."""


class Labs:
    """One KernelLab per ruleset, built on first use and reused (flushed) between cases."""

    def __init__(self, workdir=None):
        self.workdir = workdir
        self.labs: dict[str, KernelLab] = {}

    def get(self, rules: str) -> KernelLab:
        lab = self.labs.get(rules)
        if lab is None:
            wd = None if self.workdir is None else self.workdir / f"lab{len(self.labs)}"
            lab = KernelLab(rules, workdir=wd, keep_workdir=False).__enter__()
            # Rate limits outlive a case in the kernel; see the module docstring.
            lab.write_sysctls("rtr", {"net.ipv4.icmp_ratelimit": "0"})
            self.labs[rules] = lab
        return lab

    def close(self) -> None:
        for lab in self.labs.values():
            lab.close()
        self.labs.clear()

    def __enter__(self) -> "Labs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def timing_margin(times: list[float], listed_at: float) -> float:
    """The smallest distance (s) between a 2 s boundary started by a packet (ingress
    times) and a later packet or the final listing (inf if there is nothing after)."""
    times = sorted(times)
    best = float("inf")
    for i, a in enumerate(times):
        for b in times[i + 1:] + [listed_at]:
            best = min(best, abs(b - a - BOUNDARY))
    return best


def ingress_times(rec: Recording) -> list[float]:
    return [ts for iface in ("r-priv", "r-pub") for ts, _ in rec.frames(iface, "in")]


def router_icmp_errors(rec: Recording) -> int:
    from scapy.layers.l2 import Ether
    n = 0
    for iface in ("r-priv", "r-pub"):
        for _, f in rec.frames(iface, "out"):
            pkt = Ether(f)
            if IP in pkt and ICMP in pkt and pkt[IP].src in (ROUTER_PRIV, ROUTER_PUB) \
                    and pkt[ICMP].type in (3, 4, 11, 12):
                n += 1
    return n


def engine_run(sc: Scenario, rec: Recording, tmp_path, rounds: int = 4):
    """``test_kernel_diff.run_engine``, repeated until the engine's random NAT choices
    stop changing: the engine's choice for a flow can depend on where the (rewritten)
    replies before it went, so one rewrite is not always enough."""
    from .test_kernel_diff import IFACES, compare, replay_recording, rewrite_nat_replies
    res = replay_recording(rec)
    if not sc.random_ports:
        return res
    seen: list[dict] = []
    for i in range(rounds):
        port_map = compare(rec, res, random_ports=True).port_map
        if port_map in seen:
            break
        seen.append(port_map)
        out = tmp_path / f"r-pub-in.rewritten{i}.pcap"
        if not rewrite_nat_replies(rec.pcaps[("r-pub", "in")], out, port_map,
                                   IFACES["r-pub"].split("/")[0]):
            break
        res = replay_recording(rec, pub_in=out)
    return res


def random_reuse(rec: Recording) -> bool:
    """Whether the kernel gave one connection (original tuple) two NAT ports in turn (it
    was made again and this time the port was taken), or one random port to two
    connections (the first expired or was killed): the comparison cannot pair those."""
    from .test_kernel_diff import _nat_field, _parse, _snat_translated, conn_key
    ports: dict[tuple, set] = {}
    conns: dict[tuple, set] = {}
    translated = set()
    for line in rec.events + rec.table:
        p = _parse(line)
        if _nat_field(p) not in p["reply"]:
            continue
        value = (int(p["proto"]), p["reply"][_nat_field(p)])
        ports.setdefault(conn_key(p), set()).add(value)
        if _snat_translated(p):
            translated.add(conn_key(p))
            conns.setdefault(value, set()).add(conn_key(p))
    return any(len(ports[k]) > 1 for k in translated) or any(len(c) > 1 for c in conns.values())


def quotes_random_port(rec: Recording, port_map: dict) -> bool:
    """Whether an ICMP error seen by the router quotes a NAT port the kernel chose at random
    (a clash: e.g. a reply-first packet's entry holds the client's port)."""
    from scapy.layers.inet import IPerror, TCPerror, UDPerror
    from scapy.layers.l2 import Ether
    ports = {port for _, port in port_map}
    for key in rec.pcaps:
        for _, f in rec.frames(*key):
            inner = Ether(f).getlayer(IPerror)
            l4 = inner.payload if inner is not None else None
            if isinstance(l4, (TCPerror, UDPerror)) and ports & {l4.sport, l4.dport}:
                return True
    return False


@dataclasses.dataclass
class Outcome:
    case: Case
    diff: Any                 # test_kernel_diff.Diff
    rec: Recording
    seconds: float


def run_case(labs: Labs, case: Case, tmp_path) -> Outcome:
    """Run ``case`` through the kernel and the engine and compare (raises Rejected)."""
    from .test_kernel_diff import compare
    sc = to_scenario(case)
    t0 = time.monotonic()
    lab = labs.get(sc.rules)
    rec = lab.run_scenario(sc)
    if rec.problems:
        raise Rejected(f"recorder trouble: {rec.problems[0]}")
    if timing_margin(ingress_times(rec), rec.listed_at) < MARGIN:
        raise Rejected(f"a packet or the listing within {MARGIN}s of a {BOUNDARY:g}s boundary")
    if router_icmp_errors(rec) >= ICMP_BURST:
        raise Rejected("the router sent more ICMP errors than a full rate-limit bucket allows")
    diff = compare(rec, engine_run(sc, rec, tmp_path), random_ports=sc.random_ports)
    if not diff.ok and (random_reuse(rec) or sc.random_ports and any(
            w in p for p in diff.problems for w in RANDOM_REUSE)):
        raise Rejected("a random NAT port given to two connections in turn, or a connection "
                       "made again with another (the comparison pairs random ports by value)")
    if not diff.ok and quotes_random_port(rec, diff.port_map):
        raise Rejected("an ICMP error quotes a port the kernel chose at random "
                       "(the comparison renames outer ports only)")
    return Outcome(case, diff, rec, time.monotonic() - t0)


# ----------------------------------------------------------------------------------------
# A found case as a scenario for scenarios.py.

def scenario_source(case: Case, name: str = "", rec: Recording | None = None) -> str:
    """Python source of a scenarios.py function reproducing ``case`` (literal packets)."""
    sc = to_scenario(case)
    name = name or case.name
    lines = [f"def _{name}() -> Scenario:",
             f"    # found by tests/kernel/fuzz.py: {case!r}",
             "    return Scenario(",
             f"        {name!r},",
             "        \"TODO: what it shows\",",
             f"        {_rules_name(case.rules)},",
             "        ("]
    for step in sc.steps:
        if isinstance(step, Sleep):
            lines.append(f"         Sleep({step.seconds}),")
        elif callable(step.packet):
            lines.append(f"         # {step.note}: addressed to the kernel's NAT port at run time")
            lines.append(f"         Send({step.host!r}, lambda lab: ...),")
        else:
            lines.append(f"         Send({step.host!r}, {_pkt_source(step.packet)}),")
    lines.append("        ),")
    if sc.sysctls:
        lines.append(f"        sysctls={sc.sysctls!r},")
    if rec is not None:
        lines.append(f"        # kernel: {len(rec.events)} events, {len(rec.table)} entries, "
                     f"invalid={rec.stats.get('invalid')}")
    lines.append("        expect=Expect())")
    return "\n".join(lines)


def _rules_name(key: str) -> str:
    return {"masq": "MASQ", "masq_drop_invalid": "MASQ_DROP_INVALID",
            "forward_policy": "MASQ_FORWARD_POLICY", "snat_range": "SNAT_RANGE",
            "dnat": "DNAT_FORWARD"}.get(key, repr(RULESETS[key]))


def _pkt_source(pkt) -> str:
    ip = pkt
    s = f"IP(src={ip.src!r}, dst={ip.dst!r})"
    l4 = ip.payload
    if isinstance(l4, TCP):
        s += (f" / TCP(sport={l4.sport}, dport={l4.dport}, flags={str(l4.flags)!r}, "
              f"seq={l4.seq}, ack={l4.ack}, window={l4.window}"
              + (f", options={l4.options!r}" if l4.options else "") + ")")
        data = bytes(l4.payload)
    elif isinstance(l4, UDP):
        s += f" / UDP(sport={l4.sport}, dport={l4.dport})"
        data = bytes(l4.payload)
    elif isinstance(l4, ICMP):
        s += f" / ICMP(type={l4.type}, code={l4.code}"
        if l4.type in (0, 8):
            s += f", id={l4.id}, seq={l4.seq})"
        else:
            s += ")"
        data = bytes(l4.payload)
    else:
        data = bytes(l4)
    return s + (f" / {data!r}" if data else "")


# ----------------------------------------------------------------------------------------
# Long runs: python -m kernel.fuzz (run from tests/; scripts/fuzz-kernel does that).

@dataclasses.dataclass
class Tally:
    compared: int = 0          # cases run through both and compared
    rejected: int = 0
    why_rejected: dict = dataclasses.field(default_factory=dict)     # reason -> count
    disagreed: int = 0         # compared cases that differed (shrinking steps included)
    seconds: float = 0.0
    found: list = dataclasses.field(default_factory=list)   # (case, rendered diff)


def fuzz_chunk(labs: Labs, tally: Tally, tmp_path, examples: int, seed: int,
               rulesets: tuple[str, ...] = tuple(RULESETS), shrink: bool = True,
               protos: tuple[str, ...] = PROTOS) -> None:
    """Run ``examples`` generated cases; a disagreement is shrunk and added to
    ``tally.found`` (the chunk then ends, as hypothesis stops at a failure)."""
    from hypothesis import HealthCheck, Phase, given, reject, settings
    from hypothesis import seed as hseed
    last_failure: list = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @hseed(seed)
    @given(cases(rulesets, protos))
    def check(case: Case) -> None:
        try:
            out = run_case(labs, case, tmp_path)
        except Rejected as exc:
            tally.rejected += 1
            why = str(exc).split(":")[0]
            tally.why_rejected[why] = tally.why_rejected.get(why, 0) + 1
            reject()
        tally.compared += 1
        tally.seconds += out.seconds
        if out.diff.ok:
            shutil.rmtree(out.rec.workdir, ignore_errors=True)
        else:
            tally.disagreed += 1
            last_failure[:] = [out]
            raise AssertionError(out.diff.headline())

    try:
        check()
    except Exception as exc:          # noqa: BLE001 -- a disagreement (or flaky) to record
        if not last_failure:
            raise
        out = last_failure[0]
        flaky = "" if isinstance(exc, AssertionError) else f" ({type(exc).__name__}: flaky?)"
        tally.found.append((out.case, out.diff.render(out.case.name, repr(out.case)) + flaky,
                            out.rec))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import pathlib
    import tempfile
    p = argparse.ArgumentParser(prog="scripts/fuzz-kernel", description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=500, help="cases to generate (default 500)")
    p.add_argument("--minutes", type=float, default=0, help="stop after this long (0: no limit)")
    p.add_argument("--seed", type=int, default=1, help="first seed (each chunk adds one)")
    p.add_argument("--chunk", type=int, default=25, help="cases per hypothesis run")
    p.add_argument("--rules", default=",".join(RULESETS),
                   help=f"rulesets to draw from (default all: {','.join(RULESETS)})")
    p.add_argument("--protos", default=",".join(PROTOS),
                   help="protocols of the flows (default tcp,udp,icmp)")
    p.add_argument("--no-shrink", action="store_true", help="report disagreements unshrunk")
    p.add_argument("--out", default="", help="where to write findings (default: a temp dir)")
    a = p.parse_args(argv)
    rulesets = tuple(a.rules.split(","))
    protos = tuple(a.protos.split(","))
    for given_, known, what in ((rulesets, RULESETS, "ruleset"), (protos, PROTOS, "protocol")):
        unknown = [r for r in given_ if r not in known]
        if unknown:
            p.error(f"unknown {what} {unknown[0]!r}: known are {', '.join(known)}")
    out = pathlib.Path(a.out or tempfile.mkdtemp(prefix="nattrack-fuzz-"))
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    tally, t0, chunk = Tally(), time.monotonic(), 0
    with Labs(out / "labs") as labs:
        generated = 0
        while generated < a.examples:
            if a.minutes and time.monotonic() - t0 > a.minutes * 60:
                break
            n = min(a.chunk, a.examples - generated)
            found_before = len(tally.found)
            fuzz_chunk(labs, tally, out / "tmp", n, a.seed + chunk, rulesets, not a.no_shrink,
                       protos)
            generated += n
            chunk += 1
            for case, text, rec in tally.found[found_before:]:
                k = len(tally.found)
                (out / f"found-{k}.txt").write_text(
                    text + "\n\n" + scenario_source(case, f"fuzz_found_{k}", rec) + "\n\n"
                    + rec.describe() + "\n")
                print(f"disagreement {k}: {text.splitlines()[0]} -> {out}/found-{k}.txt",
                      flush=True)
            print(f"[{(time.monotonic() - t0) / 60:.1f} min] seed {a.seed + chunk - 1}: "
                  f"{tally.compared} compared, {tally.rejected} rejected, "
                  f"{tally.disagreed} disagreeing runs, {len(tally.found)} found", flush=True)
    summary = {"compared": tally.compared, "rejected": tally.rejected,
               "why_rejected": tally.why_rejected,
               "disagreeing_runs": tally.disagreed, "found": len(tally.found),
               "chunks": chunk, "first_seed": a.seed, "rules": list(rulesets),
               "protos": list(protos),
               "minutes": round((time.monotonic() - t0) / 60, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"compared {tally.compared} generated sequences with the kernel in "
          f"{summary['minutes']} min ({tally.rejected} rejected as timing/rate-limit "
          f"dependent): {len(tally.found)} disagreement(s); findings in {out}")
    return 1 if tally.found else 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
