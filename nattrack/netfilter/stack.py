"""The router's IPv4 path: one straight line of plain function calls.

Models the order in which the kernel runs a datagram through netfilter
(include/uapi/linux/netfilter_ipv4.h priorities; ip_rcv(), ip_forward(),
ip_local_deliver(), ip_output())::

  receive ─► defrag(-400) ─► PRE_ROUTING: conntrack_in(-200), DNAT(-100)
          ─► routing ─┬─► FORWARD: TTL-1, filter(0) ─► POST_ROUTING: SNAT(+100), confirm ─► send
                      └─► LOCAL_IN: filter(0), SNAT(+100), confirm ─► the router itself
  the router's own answers ─► LOCAL_OUT: conntrack_in, DNAT, filter ─► routing ─► POST_ROUTING

Nothing here touches a socket or a clock: the live router, the shadow tracker,
``nattrack replay`` and the grader all drive this same class.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from ..conntrack.conn import CTINFO_NAMES
from ..conntrack.core import (HOOK_NAMES, NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN,
                              NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
                              ConntrackTable)
from ..conntrack.tuple import IPPROTO_ICMP, int2ip, ip2int
from ..nat.core import nf_nat_ipv4_fn
from ..nat.masquerade import masq_device_down, masq_inet_addr_removed
from ..packet.checksum import checksum
from ..packet.defrag import Defrag, refragment
from ..packet.ipv4 import Packet

FILTER_CHAIN = {NF_INET_LOCAL_IN: "INPUT", NF_INET_FORWARD: "FORWARD", NF_INET_LOCAL_OUT: "OUTPUT"}


@dataclass
class Interface:
    name: str
    addrs: list[tuple[int, int]]          # (address, prefix length)
    mtu: int = 1500


@dataclass
class Route:
    net: int
    plen: int
    iface: str
    gateway: int | None = None
    mask: int = 0

    def __post_init__(self) -> None:
        self.mask = _mask(self.plen)


class Sent:
    """A datagram leaving the router: its interface and its bytes (IP header first)."""
    __slots__ = ("oif", "data", "pkt")

    def __init__(self, oif: str, data: bytes, pkt: Packet | None = None) -> None:
        self.oif, self.data, self.pkt = oif, data, pkt


class Verdict:
    """What happened to one received datagram; ``steps`` (the packet trace) only when asked."""
    __slots__ = ("sent", "dropped", "steps")

    def __init__(self, trace: bool = False) -> None:
        self.sent: list[Sent] = []
        self.dropped: str | None = None
        self.steps: list[tuple[str, str]] | None = [] if trace else None


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def parse_cidr(text: str) -> tuple[int, int]:
    addr, _, plen = text.partition("/")
    return ip2int(addr), int(plen or 32)


class Router:
    """A Linux IPv4 router with conntrack, NAT and a filter table.

    ``ifaces`` maps interface names to ``"ADDR/PREFIX"`` (or a list of them);
    ``routes`` maps ``"default"`` or ``"NET/PREFIX"`` to ``"IFACE"`` or
    ``"IFACE via GATEWAY"``; connected subnets are routed implicitly.
    """

    def __init__(self, ifaces: dict[str, str | list[str]], routes: dict[str, str] | None = None,
                 ruleset=None, sysctl: dict | None = None, clock: Callable[[], float] | None = None,
                 seed: int | None = None, ip_forward: bool = True) -> None:
        self.clock = clock or (lambda: 0.0)
        self.ct = ConntrackTable(self.clock, sysctl, seed=seed)
        self.ruleset = ruleset
        self.ip_forward = ip_forward
        self.defrag = Defrag()
        self.ifaces: dict[str, Interface] = {}
        self.routes: list[Route] = []
        self.counters = {"forwarded": 0, "delivered": 0, "dropped": 0, "ip_hdr_errors": 0}
        for name, spec in ifaces.items():
            cidrs = [spec] if isinstance(spec, str) else list(spec)
            iface = Interface(name, [parse_cidr(c) for c in cidrs])
            self.ifaces[name] = iface
            for addr, plen in iface.addrs:
                self.routes.append(Route(addr & _mask(plen), plen, name))
        for dest, via in (routes or {}).items():
            net, plen = (0, 0) if dest == "default" else parse_cidr(dest)
            iface, _, gw = via.partition(" via ")
            if iface not in self.ifaces:
                raise ValueError(f"route {dest}: unknown interface {iface!r}")
            self.routes.append(Route(net & _mask(plen), plen, iface, ip2int(gw) if gw else None))
        self.routes.sort(key=lambda r: -r.plen)
        self.local = {addr for i in self.ifaces.values() for addr, _ in i.addrs}

    # --- routing -----------------------------------------------------------------------

    def route(self, daddr: int) -> Route | None:
        """fib_lookup(): the longest matching prefix."""
        for r in self.routes:
            if daddr & r.mask == r.net:
                return r
        return None

    def source_address(self, oif: str | None, daddr: int) -> int | None:
        """inet_select_addr(): the interface address on the next hop's subnet, else its first."""
        iface = self.ifaces.get(oif) if oif else None
        if iface is None or not iface.addrs:
            return None
        r = self.route(daddr)
        nexthop = r.gateway if r is not None and r.gateway else daddr
        for addr, plen in iface.addrs:
            if nexthop & _mask(plen) == addr & _mask(plen):
                return addr
        return iface.addrs[0][0]

    # --- hooks -------------------------------------------------------------------------

    def _filter(self, hook: int, pkt: Packet, oif: str | None) -> int:
        if self.ruleset is None:
            return NF_ACCEPT
        verdict = self.ruleset.verdict(FILTER_CHAIN[hook], pkt, pkt.ctinfo, pkt.iif, oif)
        return NF_ACCEPT if verdict == "ACCEPT" else NF_DROP

    def _nat(self, hook: int, pkt: Packet, oif: str | None) -> int:
        return nf_nat_ipv4_fn(self.ct, self.ruleset, pkt, hook, oif, self.source_address)

    # --- the paths ---------------------------------------------------------------------

    def receive(self, pkt: Packet, trace: bool = False) -> Verdict:
        """A datagram arrived on ``pkt.iif``: run it through the router."""
        v = Verdict(trace)
        step = v.steps.append if trace else None
        if step:
            step(("received", f"on {pkt.iif}: {pkt.summary()}"))
        if pkt.mf or pkt.frag:
            pkt = self.defrag.add(pkt, self.clock())
            if pkt is None:
                if step:
                    step(("defrag", "fragment queued"))
                return v
        if self.ct.conntrack_in(pkt, NF_INET_PRE_ROUTING) == NF_DROP:
            return self._drop(v, "conntrack: table full")
        if step:
            step(("PRE_ROUTING", "conntrack: " + _ct_note(pkt)))
            before = _addr_note(pkt)
        if self._nat(NF_INET_PRE_ROUTING, pkt, None) == NF_DROP:
            return self._drop(v, "nat PREROUTING")
        if step:
            step(("PRE_ROUTING", _nat_note("nat (destination)", before, pkt)))
        if pkt.dst in self.local:
            return self._local_in(pkt, v, step)
        if not self.ip_forward:
            return self._drop(v, "forwarding disabled")
        r = self.route(pkt.dst)
        if r is None:
            return self._drop(v, "no route")
        if pkt.ttl <= 1:
            return self._drop(v, "TTL exceeded")
        pkt.decrease_ttl()
        if self._filter(NF_INET_FORWARD, pkt, r.iface) == NF_DROP:
            return self._drop(v, "filter FORWARD")
        if step:
            step(("FORWARD", f"routed out {r.iface}, TTL now {pkt.ttl}, filter: ACCEPT"))
        self._post_routing(pkt, r.iface, v, step)
        if not v.dropped:
            self.counters["forwarded"] += 1
        return v

    def _post_routing(self, pkt: Packet, oif: str, v: Verdict, step) -> None:
        before = _addr_note(pkt) if step else ""
        if self._nat(NF_INET_POST_ROUTING, pkt, oif) == NF_DROP:
            self._drop(v, "nat POSTROUTING")
            return
        new = pkt.ct is not None and not pkt.ct.is_confirmed()
        if self.ct.confirm(pkt) == NF_DROP:
            self._drop(v, "conntrack confirm: the reply tuple is taken (clash)")
            return
        if step:
            step(("POST_ROUTING", _nat_note("nat (source)", before, pkt)))
            if new:
                step(("POST_ROUTING", "conntrack: confirmed, the entry is now in the table"))
        pkt.oif = oif
        mtu = self.ifaces[oif].mtu
        if pkt.frag_sizes is None and pkt.tot_len <= mtu:
            v.sent.append(Sent(oif, bytes(pkt.buf[pkt.off:pkt.off + pkt.tot_len]), pkt))
            return
        for data in refragment(pkt, mtu):
            v.sent.append(Sent(oif, data, pkt))

    def _local_in(self, pkt: Packet, v: Verdict, step) -> Verdict:
        if self._filter(NF_INET_LOCAL_IN, pkt, None) == NF_DROP:
            return self._drop(v, "filter INPUT")
        if self._nat(NF_INET_LOCAL_IN, pkt, None) == NF_DROP:
            return self._drop(v, "nat INPUT")
        if self.ct.confirm(pkt) == NF_DROP:
            return self._drop(v, "conntrack confirm: clash")
        self.counters["delivered"] += 1
        if step:
            step(("LOCAL_IN", "delivered to the router"))
        answer = self._icmp_echo(pkt)
        if answer is not None:
            self.send_local(answer, v, step)
        return v

    def send_local(self, pkt: Packet, v: Verdict | None = None, step=None) -> Verdict:
        """A datagram the router itself sends: LOCAL_OUT, routing, POST_ROUTING."""
        v = v or Verdict(step is not None)
        if self.ct.conntrack_in(pkt, NF_INET_LOCAL_OUT) == NF_DROP:
            return self._drop(v, "conntrack: table full")
        if self._nat(NF_INET_LOCAL_OUT, pkt, None) == NF_DROP:
            return self._drop(v, "nat OUTPUT")
        r = self.route(pkt.dst)
        if r is None:
            return self._drop(v, "no route")
        if self._filter(NF_INET_LOCAL_OUT, pkt, r.iface) == NF_DROP:
            return self._drop(v, "filter OUTPUT")
        self._post_routing(pkt, r.iface, v, step)
        return v

    def _icmp_echo(self, pkt: Packet) -> Packet | None:
        """icmp_echo(): the kernel answers a ping to one of its addresses."""
        if pkt.proto != IPPROTO_ICMP or pkt.itype != 8 or pkt.frag or pkt.mf:
            return None
        icmp = bytearray(pkt.buf[pkt.l4:pkt.l4 + pkt.l4len])
        icmp[0] = 0
        icmp[2:4] = b"\0\0"
        struct.pack_into("!H", icmp, 2, checksum(icmp))
        hdr = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(icmp), 0, 0, 64, IPPROTO_ICMP,
                                    0, pkt.dst, pkt.src))
        struct.pack_into("!H", hdr, 10, checksum(hdr))
        return Packet.parse(hdr + icmp, 0, iif=None, ts=pkt.ts)

    def _drop(self, v: Verdict, why: str) -> Verdict:
        v.dropped = why
        self.counters["dropped"] += 1
        if v.steps is not None:
            v.steps.append(("DROP", why))
        return v

    # --- interface changes (what the kernel's netdevice/inetaddr notifiers do) -----------

    def iface_down(self, name: str) -> int:
        """The interface went down: its masqueraded connections are deleted."""
        return masq_device_down(self.ct, name)

    def remove_address(self, name: str, cidr: str) -> int:
        """An address left the interface: masqueraded flows that used it are deleted."""
        addr, plen = parse_cidr(cidr)
        iface = self.ifaces[name]
        iface.addrs = [a for a in iface.addrs if a != (addr, plen)]
        self.local = {a for i in self.ifaces.values() for a, _ in i.addrs}
        self.routes = [r for r in self.routes if not (r.iface == name and r.net == addr & r.mask
                                                       and r.plen == plen and r.gateway is None)]
        return masq_inet_addr_removed(self.ct, name, addr)

    # --- maintenance ---------------------------------------------------------------------

    def housekeeping(self) -> None:
        """What runs between packets: the conntrack gc worker and fragment expiry."""
        if self.ct.gc_next_run is None or self.ct.jiffies() >= self.ct.gc_next_run:
            self.ct.gc_worker()
        self.defrag.expire(self.clock())


def _ct_note(pkt: Packet) -> str:
    ct = pkt.ct
    if ct is None:
        return "INVALID (no conntrack)"
    return f"{CTINFO_NAMES[pkt.ctinfo]} {ct.orig!r}"


def _addr_note(pkt: Packet) -> str:
    return f"{int2ip(pkt.src)}:{pkt.sport} > {int2ip(pkt.dst)}:{pkt.dport}"


def _nat_note(kind: str, before: str, pkt: Packet) -> str:
    after = _addr_note(pkt)
    if pkt.ct is None:
        return f"{kind}: none (INVALID packets are never translated)"
    return f"{kind}: {before} -> {after}" if after != before else f"{kind}: no change"


__all__ = ["Router", "Sent", "Verdict", "HOOK_NAMES", "parse_cidr"]
