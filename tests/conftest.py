"""Shared fixtures for the spec-derived engine tests (test_tcp, test_udp_icmp, test_nat,
test_core, test_checksum).

The lab is the reference's experiment set-up (docs kernel-conntrack.md, conventions):
private hosts 10.0.0.2 / 10.0.0.3 behind a router (eth0 10.0.0.1/24, eth1 203.0.113.1/24)
that masquerades everything leaving eth1, and a public server 203.0.113.2.

``Lab`` drives a :class:`nattrack.ipv4.stack.Router` with scapy-built packets on a
:class:`nattrack.replay.ManualClock`, records ``conntrack -E`` lines with
:func:`nattrack.replay.event_recorder` and runs the gc worker the way ``nattrack replay``
does (``table.run_gc_until`` before every packet and when time moves on).

Expectations in the tests come from the reference, never from the engine's code.
"""
from __future__ import annotations

import struct
import sys

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack.show import format_conn
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.ipv4.stack import Router, Verdict
from nattrack.packet.ipv4 import Packet
from nattrack.replay import ManualClock, event_recorder

PRIV1, PRIV2 = "10.0.0.2", "10.0.0.3"          # ntpriv1, ntpriv2
PUB = "203.0.113.2"                             # ntpub
RTR_PRIV, RTR_PUB = "10.0.0.1", "203.0.113.1"   # ntrtr
T0 = 1000.0                                     # the lab clock starts here (seconds)

DEFAULT_IFACES = {"eth0": RTR_PRIV + "/24", "eth1": RTR_PUB + "/24"}
DEFAULT_ROUTES = {"default": "eth1"}
# Small hash so that the gc worker's pass is cheap; tests that care pass their own.
LAB_SYSCTL = {"nf_conntrack_buckets": 1024}


def nat_rules(postrouting=("-o eth1 -j MASQUERADE",), prerouting=(), output=(),
              forward=None, forward_policy="ACCEPT") -> str:
    """iptables-save text: a nat table (and a filter table when ``forward`` is given)."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
             ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    lines += [f"-A PREROUTING {r}" for r in prerouting]
    lines += [f"-A OUTPUT {r}" for r in output]
    lines += [f"-A POSTROUTING {r}" for r in postrouting]
    lines.append("COMMIT")
    if forward is not None:
        lines += ["*filter", ":INPUT ACCEPT [0:0]", f":FORWARD {forward_policy} [0:0]",
                  ":OUTPUT ACCEPT [0:0]"]
        lines += [f"-A FORWARD {r}" for r in forward]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


MASQ_RULES = nat_rules()


def strip_ts(line: str) -> str:
    """`conntrack -E -o timestamp` line -> the line without ``[sec.usec]\\t``."""
    return line.split("\t", 1)[1] if line.startswith("[") and "\t" in line else line


def event_ts(line: str) -> float:
    return float(line[1:line.index("]")])


# --- an independent checksum oracle (RFC 1071), not the engine's --------------------

def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_header_ok(data: bytes, off: int = 0) -> bool:
    ihl = (data[off] & 0x0F) * 4
    return inet_sum(bytes(data[off:off + ihl])) == 0xFFFF


def recomputed(data: bytes) -> IP:
    """The datagram re-built by scapy with every checksum recomputed from scratch."""
    p = IP(bytes(data))
    del p.chksum
    for layer in (TCP, UDP, ICMP):
        if layer in p:
            del p[layer].chksum
            break
    return IP(bytes(p))


def checksums_of(data: bytes) -> dict:
    p = IP(bytes(data))
    out = {"ip": p.chksum}
    for name, layer in (("tcp", TCP), ("udp", UDP), ("icmp", ICMP)):
        if layer in p:
            out[name] = p[layer].chksum
            break
    return out


# --- the lab ----------------------------------------------------------------------------

class Lab:
    """A masquerading router, a manual clock and a `conntrack -E` recorder."""

    def __init__(self, rules: str | None = MASQ_RULES, sysctl: dict | None = None,
                 ifaces: dict | None = None, routes: dict | None = None, seed: int = 1,
                 t0: float = T0) -> None:
        self.clock = ManualClock(t0)
        settings = dict(LAB_SYSCTL)
        settings.update(sysctl or {})
        self.router = Router(ifaces or DEFAULT_IFACES, routes or DEFAULT_ROUTES,
                             parse_rules(rules) if rules is not None else None,
                             settings, self.clock, seed=seed)
        self.ct = self.router.ct
        self.raw_events: list[str] = []
        self._events_json: list[dict] = []
        self.ct.listeners.append(event_recorder(self.raw_events, self._events_json, self.clock))
        self.last: Packet | None = None

    # time ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def advance(self, seconds: float) -> None:
        """Move the clock, running the gc worker whenever the kernel's would have run."""
        self.ct.run_gc_until(self.clock() + seconds, self.clock.set)

    def skip(self, seconds: float) -> None:
        """Move the clock *without* letting the gc worker run (to see lazy expiry)."""
        self.clock.set(self.clock() + seconds)

    # packets ------------------------------------------------------------------------------
    def parse(self, iif: str | None, pkt) -> Packet:
        data = bytearray(bytes(pkt))
        p = Packet.parse(data, 0, iif=iif, ts=self.clock())
        assert p is not None, "test bug: the packet does not pass ip_rcv()"
        return p

    def send(self, iif: str, pkt) -> Verdict:
        """Deliver a scapy packet (or raw bytes) to the router on ``iif``."""
        self.ct.run_gc_until(self.clock(), self.clock.set)
        self.last = self.parse(iif, pkt)
        return self.router.receive(self.last)

    def send_local(self, pkt) -> Verdict:
        """A datagram the router itself originates (LOCAL_OUT)."""
        self.ct.run_gc_until(self.clock(), self.clock.set)
        self.last = self.parse(None, pkt)
        return self.router.send_local(self.last)

    def out(self, iif: str, pkt) -> IP | None:
        """Send and return the (first) datagram that left the router, dissected by scapy."""
        v = self.send(iif, pkt)
        return IP(v.sent[0].data) if v.sent else None

    # observation ---------------------------------------------------------------------------
    @property
    def events(self) -> list[str]:
        """`conntrack -E` lines without the ``-o timestamp`` prefix."""
        return [strip_ts(e) for e in self.raw_events]

    def take_events(self) -> list[str]:
        ev = self.events
        self.raw_events.clear()
        return ev

    def table(self) -> list[str]:
        """`conntrack -L` lines (without the summary line)."""
        now_j = self.ct.jiffies()
        return [format_conn(c, now_j) for c in self.ct.conns(reap=False)]

    def conns(self) -> list:
        return list(self.ct.conns(reap=False))

    def only(self):
        """The one and only live entry."""
        conns = self.conns()
        assert len(conns) == 1, f"expected one entry, have {self.table()}"
        return conns[0]

    def remaining(self, ct=None) -> int:
        return self.ct.remaining(ct if ct is not None else self.only())

    @property
    def stats(self) -> dict:
        return self.ct.stats


def tcp_state(ct) -> str:
    from nattrack.conntrack.proto_tcp import TCP_CONNTRACK_NAMES
    return TCP_CONNTRACK_NAMES[ct.proto.state]


def tcp_flags(flags: int | str) -> str:
    """Scapy's flag letters (F S R P A U E C) for a flag byte; strings pass through."""
    if isinstance(flags, str):
        return flags
    return "".join(c for i, c in enumerate("FSRPAUEC") if flags >> i & 1)


class TcpFlow:
    """A TCP conversation between a private client and the public server, through the lab.

    Each side keeps its next sequence number, so packets are in window unless a test
    says otherwise: ``seq`` defaults to the sender's next sequence number and ``ack``
    (when the ACK flag is set) to the peer's.  The server answers the translated
    address/port the client's first translated packet left with.
    """

    def __init__(self, lab: Lab, src=PRIV1, sport=40001, dst=PUB, dport=8080,
                 iss=1000, irs=5000, win=8192, client_if="eth0", server_if="eth1") -> None:
        self.lab, self.src, self.sport, self.dst, self.dport = lab, src, sport, dst, dport
        self.cnxt, self.snxt, self.win = iss, irs, win
        self.client_if, self.server_if = client_if, server_if
        self.nat_addr, self.nat_port = RTR_PUB, sport
        self.last_out: IP | None = None

    @staticmethod
    def _advance(nxt: int, flags: str, data: bytes) -> int:
        return (nxt + len(data) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF

    def client_pkt(self, flags: str, data: bytes = b"", seq=None, ack=None, win=None,
                   options=()):
        flags = tcp_flags(flags)
        seq = self.cnxt if seq is None else seq
        ack = (self.snxt if "A" in flags else 0) if ack is None else ack
        pkt = IP(src=self.src, dst=self.dst) / TCP(
            sport=self.sport, dport=self.dport, flags=flags, seq=seq, ack=ack,
            window=self.win if win is None else win, options=list(options))
        return pkt / Raw(data) if data else pkt

    def server_pkt(self, flags: str, data: bytes = b"", seq=None, ack=None, win=None,
                   options=()):
        flags = tcp_flags(flags)
        seq = self.snxt if seq is None else seq
        ack = (self.cnxt if "A" in flags else 0) if ack is None else ack
        pkt = IP(src=self.dst, dst=self.nat_addr) / TCP(
            sport=self.dport, dport=self.nat_port, flags=flags, seq=seq, ack=ack,
            window=self.win if win is None else win, options=list(options))
        return pkt / Raw(data) if data else pkt

    def client(self, flags: str, data: bytes = b"", advance: bool = True, **kw) -> Verdict:
        flags = tcp_flags(flags)
        v = self.lab.send(self.client_if, self.client_pkt(flags, data, **kw))
        if advance and kw.get("seq") is None:
            self.cnxt = self._advance(self.cnxt, flags, data)
        self.last_out = IP(v.sent[0].data) if v.sent else None
        if self.last_out is not None and TCP in self.last_out and self.last_out.src != self.src:
            self.nat_addr, self.nat_port = self.last_out.src, self.last_out[TCP].sport
        return v

    def server(self, flags: str, data: bytes = b"", advance: bool = True, **kw) -> Verdict:
        flags = tcp_flags(flags)
        v = self.lab.send(self.server_if, self.server_pkt(flags, data, **kw))
        if advance and kw.get("seq") is None:
            self.snxt = self._advance(self.snxt, flags, data)
        self.last_out = IP(v.sent[0].data) if v.sent else None
        return v

    # Was the last client/server packet tracked (translated) or INVALID (left as it was)?
    def client_translated(self, v: Verdict) -> bool:
        assert v.sent, f"client packet not forwarded: {v.dropped}"
        return IP(v.sent[0].data).src == RTR_PUB

    def server_translated(self, v: Verdict) -> bool:
        # An untranslated reply is addressed to the router itself: delivered locally.
        return bool(v.sent) and IP(v.sent[0].data).dst == self.src

    def handshake(self) -> None:
        self.client("S")
        self.server("SA")
        self.client("A")

    def active_close(self) -> None:
        """Client FIN, server ACK, server FIN, client ACK (ends in TIME_WAIT)."""
        self.client("FA")
        self.server("A")
        self.server("FA")
        self.client("A")


class UdpFlow:
    def __init__(self, lab: Lab, src=PRIV1, sport=41000, dst=PUB, dport=5353) -> None:
        self.lab, self.src, self.sport, self.dst, self.dport = lab, src, sport, dst, dport
        self.nat_addr, self.nat_port = RTR_PUB, sport
        self.last_out: IP | None = None

    def client(self, data: bytes = b"q") -> Verdict:
        v = self.lab.send("eth0", IP(src=self.src, dst=self.dst) / UDP(sport=self.sport, dport=self.dport) / Raw(data))
        self.last_out = IP(v.sent[0].data) if v.sent else None
        if self.last_out is not None and UDP in self.last_out and self.last_out.src != self.src:
            self.nat_addr, self.nat_port = self.last_out.src, self.last_out[UDP].sport
        return v

    def server(self, data: bytes = b"r") -> Verdict:
        v = self.lab.send("eth1", IP(src=self.dst, dst=self.nat_addr) / UDP(sport=self.dport, dport=self.nat_port) / Raw(data))
        self.last_out = IP(v.sent[0].data) if v.sent else None
        return v


# The test modules import the helpers above as ``from nattrack_lab import ...``: a name of
# its own, whatever module name pytest gives this conftest (there is another conftest.py at
# the repository root).
sys.modules["nattrack_lab"] = sys.modules[__name__]


@pytest.fixture
def lab() -> Lab:
    """The reference's lab: MASQUERADE on eth1, clock at T0, events recorded."""
    return Lab()


@pytest.fixture
def make_lab():
    """Factory for labs with other rules / sysctls / interfaces."""
    return Lab
