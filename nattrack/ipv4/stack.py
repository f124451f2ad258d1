"""The router's IPv4 path: one straight line of plain function calls.

Models the order in which the kernel runs a datagram through netfilter
(include/uapi/linux/netfilter_ipv4.h priorities; ip_rcv(), ip_forward(),
ip_local_deliver(), ip_output())::

  receive ─► defrag(-400) ─► PRE_ROUTING: conntrack_in(-200), DNAT(-100)
          ─► routing ─┬─► FORWARD: TTL-1, filter(0) ─► POST_ROUTING: SNAT(+100), confirm ─► send
                      └─► LOCAL_IN: filter(0), SNAT(+100), confirm ─► the router itself
  the router's own answers ─► LOCAL_OUT: conntrack_in, DNAT, filter ─► routing ─► POST_ROUTING

A datagram the router cannot forward is answered with an ICMP error (icmp_send(), see
:meth:`Router.icmp_send`): no route (ip_error()), TTL exceeded and DF set but too big for
the next hop (ip_forward()).  A FORWARD filter DROP answers nothing.

A datagram addressed to the router itself is answered as Linux's own stack answers it
(:meth:`Router.local_deliver`): a ping with an echo reply, TCP with a RST where nothing
listens, UDP to a closed port and an unknown protocol with ICMP errors; ports declared
open with ``listen`` behave as a listening socket's.  An INPUT filter DROP answers nothing.

The routes are ``route.py``'s, the ICMP messages and their rate limits ``icmp.py``'s, the
TCP answers ``tcp_ipv4.py``'s (net/ipv4/route.c, icmp.c, tcp_ipv4.c); this module is the
path through them (ip_input.c, ip_forward.c, ip_output.c).  Nothing here touches a socket
or a clock: the live router, the shadow tracker, ``nattrack replay`` and the grader all
drive this same class.
"""
from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping

from ..conntrack.conn import (CTINFO_NAMES, IP_CT_IS_REPLY, IP_CT_RELATED, IP_CT_RELATED_REPLY,
                              IP_CT_UNTRACKED)
from ..conntrack.core import (HOOK_NAMES, NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN,
                              NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
                              ConntrackTable)
from ..conntrack.tuple import IPPROTO_ICMP, int2ip, ip2int
from ..nat import ftp as _nat_ftp  # noqa: F401 -- registers nf_nat_ftp (as loading nf_nat_ftp.ko)
from ..nat.core import nf_nat_ipv4_fn
from ..nat.masquerade import masq_device_down, masq_inet_addr_removed
from ..packet.defrag import Defrag, refragment
from ..packet.ipv4 import (ICMP_ERROR_TYPES, IPPROTO_TCP, IPPROTO_UDP, NR_ICMP_TYPES, TH_ACK, TH_FIN,
                           TH_RST, TH_SYN, Packet)
from .icmp import (ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED, ICMP_NET_UNREACH,
                   ICMP_PORT_UNREACH, ICMP_PROT_UNREACH, ICMP_TIME_EXCEEDED, IcmpRateLimit, icmp_echo,
                   icmp_error)
from .route import Interface, Route, fib_lookup, inet_make_mask, inet_select_addr, is_broadcast, parse_cidr
from .tcp_ipv4 import tcp_v4_send_reset, tcp_v4_send_synack

FILTER_CHAIN = {NF_INET_LOCAL_IN: "INPUT", NF_INET_FORWARD: "FORWARD", NF_INET_LOCAL_OUT: "OUTPUT"}

# ipt_REJECT's --reject-with names (nft reject with icmp/icmpx ...) -> ICMP unreachable code.
REJECT_ICMP_CODES = {"icmp-net-unreachable": 0, "icmp-host-unreachable": 1,
                     "icmp-proto-unreachable": 2, "icmp-port-unreachable": 3,
                     "icmp-net-prohibited": 9, "icmp-host-prohibited": 10,
                     "icmp-admin-prohibited": 13}
IPPROTO_IGMP, IPPROTO_UDPLITE = 2, 136
# Protocols with a handler in inet_protos[] in a fresh namespace of a stock kernel (found by
# sending every protocol number to a 6.18 router: only these got no protocol unreachable).
# Modules add theirs when loaded (gre 47, ipip 4, esp4 50, ah4 51, sctp 132, ...).  IGMP and
# UDP-Lite are delivered and answered with nothing here: the kernel answers a valid UDP-Lite
# datagram to a closed port with port unreachable (seen on 6.18), which is not modelled.
LOCAL_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_IGMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE})
LISTEN_PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
ACCEPTED_MAX = 4096                                 # connections remembered per router


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


class Router:
    """A Linux IPv4 router with conntrack, NAT and a filter table.

    ``ifaces`` maps interface names to ``"ADDR/PREFIX"`` (or a list of them);
    ``routes`` maps ``"default"`` or ``"NET/PREFIX"`` to ``"IFACE"`` or
    ``"IFACE via GATEWAY"``; connected subnets are routed implicitly.
    Traffic to the router's own addresses is answered as Linux answers it
    (:meth:`local_deliver`: RSTs, port and protocol unreachables, echo replies), and
    ``listen`` (``{"tcp": {22}, "udp": {53}}``) declares the ports where something listens.
    ``local_stack=False`` answers only pings: for a tracker that sees the kernel's own
    answers instead of making them (kernel mode's shadow).  ``profile`` (a
    :class:`~nattrack.conntrack.profile.KernelProfile`) says which kernel's behaviour the
    engine follows where kernels differ (default: the newest).
    """

    def __init__(self, ifaces: Mapping[str, str | list[str]], routes: dict[str, str] | None = None,
                 ruleset=None, sysctl: Mapping[str, int | str] | None = None, clock: Callable[[], float] | None = None,
                 seed: int | None = None, ip_forward: bool = True,
                 icmp: dict[str, int] | None = None,
                 local_stack: bool = True,
                 listen: Mapping[str, Iterable[int]] | None = None,
                 profile=None) -> None:
        self.clock = clock or (lambda: 0.0)
        if listen and not local_stack:
            raise ValueError("listen needs local_stack=True (open ports of the router's own stack)")
        self.local_stack = local_stack
        self.listen = parse_listen(listen)
        # Connections a listener answered, oldest first (a SYN flood forgets the oldest, as
        # a full SYN queue would).
        self._accepted: dict[tuple[int, int, int, int], int] = {}    # -> our ISN
        self.ct = ConntrackTable(self.clock, sysctl, seed=seed, profile=profile)
        self.icmp_limit = IcmpRateLimit(icmp)
        self.icmp = self.icmp_limit.settings
        self._rng = random.Random(seed)
        self.ruleset = ruleset
        self.ip_forward = ip_forward
        self.defrag = Defrag()
        self.ifaces: dict[str, Interface] = {}
        self.routes: list[Route] = []
        self.counters = {"forwarded": 0, "delivered": 0, "dropped": 0, "ip_hdr_errors": 0,
                         "icmp_errors_sent": 0, "icmp_ratelimited": 0}
        for name, spec in ifaces.items():
            cidrs = [spec] if isinstance(spec, str) else list(spec)
            iface = Interface(name, [parse_cidr(c) for c in cidrs])
            self.ifaces[name] = iface
            for addr, plen in iface.addrs:
                self.routes.append(Route(addr & inet_make_mask(plen), plen, name))
        for dest, via in (routes or {}).items():
            net, plen = (0, 0) if dest == "default" else parse_cidr(dest)
            dev, _, gw = via.partition(" via ")
            if dev not in self.ifaces:
                raise ValueError(f"route {dest}: unknown interface {dev!r}")
            self.routes.append(Route(net & inet_make_mask(plen), plen, dev, ip2int(gw) if gw else None))
        self.routes.sort(key=lambda r: -r.plen)
        self.local = {addr for i in self.ifaces.values() for addr, _ in i.addrs}

    # --- routing -----------------------------------------------------------------------

    def route(self, daddr: int) -> Route | None:
        """fib_lookup(): the longest matching prefix."""
        return fib_lookup(self.routes, daddr)

    def source_address(self, oif: str | None, daddr: int) -> int | None:
        """inet_select_addr(): the interface address on the next hop's subnet, else its first."""
        return inet_select_addr(self.routes, self.ifaces.get(oif) if oif else None, daddr)

    # --- hooks -------------------------------------------------------------------------

    def _filter(self, hook: int, pkt: Packet, oif: str | None, v: Verdict | None = None,
                step=None) -> int:
        if self.ruleset is None:
            return NF_ACCEPT
        verdict, rule = self.ruleset.decide(FILTER_CHAIN[hook], pkt, pkt.ctinfo, pkt.iif, oif)
        if self.ruleset.helpers:
            helper = self.ruleset.take_helper(pkt)
            if helper and pkt.ct is not None:       # nft `ct helper set` on a new entry
                self.ct.assign_helper(pkt.ct, helper)
        if verdict == "REJECT":
            self._reject(pkt, rule.reject_with, v, step)
        return NF_ACCEPT if verdict == "ACCEPT" else NF_DROP

    def _reject(self, pkt: Packet, how: str, v: Verdict | None, step) -> None:
        """nft_reject_ipv4_eval() / reject_tg(): answer, then the packet is dropped.

        ``tcp-reset``: nf_send_reset(): nothing for a non-first fragment, a RST, a bad
        checksum or a broadcast; else the RST tcp_v4_send_reset() would send, but TOS 0
        and TTL from the route (nf_reject_iphdr_put()), the rejected packet's entry
        attached (nf_ct_attach()), out through LOCAL_OUT.  Otherwise nf_send_unreach():
        nothing for a non-first fragment or a bad checksum (UDP without one is fine),
        else icmp_send() destination unreachable with the code ``how`` names."""
        if pkt.frag or not pkt.l4ok or not pkt.l4_checksum_ok():
            return
        if how != "tcp-reset":
            self.icmp_send(pkt, ICMP_DEST_UNREACH, REJECT_ICMP_CODES[how], 0, v, step)
            return
        if (pkt.proto != IPPROTO_TCP or pkt.tcpflags & TH_RST or pkt.dst >= 0xE0000000
                or self._is_broadcast(pkt.dst)):
            return
        rst = tcp_v4_send_reset(pkt, tos=0)
        if pkt.ct is not None and pkt.ctinfo is not None:     # set together by conntrack_in
            rst.ct = pkt.ct
            rst.ctinfo = IP_CT_RELATED if pkt.ctinfo >= IP_CT_IS_REPLY else IP_CT_RELATED_REPLY
        if step:
            step(("reject", f"answers {rst.summary()}"))
        self.send_local(rst, v or Verdict(), step)

    def _nat(self, hook: int, pkt: Packet, oif: str | None) -> int:
        return nf_nat_ipv4_fn(self.ct, self.ruleset, pkt, hook, oif, self.source_address)

    # --- the paths ---------------------------------------------------------------------

    def receive(self, pkt: Packet, trace: bool = False) -> Verdict:
        """A datagram arrived on ``pkt.iif``: run it through the router."""
        v = Verdict(trace)
        step = v.steps.append if v.steps is not None else None      # a list when trace
        if step:
            step(("received", f"on {pkt.iif}: {pkt.summary()}"))
        if pkt.mf or pkt.frag:
            whole = self.defrag.add(pkt, self.clock())
            if whole is None:
                if step:
                    step(("defrag", "fragment queued"))
                return v
            pkt = whole
        rs = self.ruleset
        helper = ""
        if rs is not None and ("raw", "PREROUTING") in rs.hooks:
            drop, notrack = rs.raw("PREROUTING", pkt, pkt.iif, None)
            if drop:
                return self._drop(v, "raw PREROUTING")
            if notrack:                             # nft_notrack_eval(): nf_ct_set(UNTRACKED)
                pkt.ct, pkt.ctinfo = None, IP_CT_UNTRACKED
            elif rs.helpers:                        # -j CT --helper: the template's helper
                helper = rs.raw_helper("PREROUTING", pkt, pkt.iif, None)
        if pkt.ctinfo == IP_CT_UNTRACKED:
            pass                                    # nf_conntrack_in() ignores it
        elif self.ct.conntrack_in(pkt, NF_INET_PRE_ROUTING) == NF_DROP:
            return self._drop(v, "conntrack: table full")
        if helper and pkt.ct is not None:
            self.ct.assign_helper(pkt.ct, helper)
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
        if r is None:                               # ip_route_input(): ENETUNREACH, ip_error()
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, v, step)
            return self._drop(v, "no route")
        if pkt.ttl <= 1:                            # ip_forward(): too_many_hops
            self.icmp_send(pkt, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0, v, step)
            return self._drop(v, "TTL exceeded")
        mtu = self.ifaces[r.iface].mtu
        if _exceeds_mtu(pkt, mtu):
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu, v, step)
            return self._drop(v, f"fragmentation needed (DF set, MTU {mtu})")
        pkt.decrease_ttl()
        if self._filter(NF_INET_FORWARD, pkt, r.iface, v, step) == NF_DROP:
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
        new = step and pkt.ct is not None and not pkt.ct.is_confirmed()
        if self.ct.confirm(pkt) == NF_DROP:
            self._drop(v, "conntrack confirm: clash with an entry confirmed first (insert_failed)")
            return
        if step:
            step(("POST_ROUTING", _nat_note("nat (source)", before, pkt)))
            if new and pkt.ct.is_confirmed():
                step(("POST_ROUTING", "conntrack: confirmed, the entry is now in the table"))
        pkt.oif = oif
        mtu = self.ifaces[oif].mtu
        if pkt.frag_sizes is None and pkt.tot_len <= mtu:
            v.sent.append(Sent(oif, bytes(pkt.buf[pkt.off:pkt.off + pkt.tot_len]), pkt))
            return
        for data in refragment(pkt, mtu):
            v.sent.append(Sent(oif, data, pkt))

    def _local_in(self, pkt: Packet, v: Verdict, step) -> Verdict:
        if self._filter(NF_INET_LOCAL_IN, pkt, None, v, step) == NF_DROP:
            return self._drop(v, "filter INPUT")
        if self._nat(NF_INET_LOCAL_IN, pkt, None) == NF_DROP:
            return self._drop(v, "nat INPUT")
        if self.ct.confirm(pkt) == NF_DROP:
            return self._drop(v, "conntrack confirm: clash")
        self.counters["delivered"] += 1
        if step:
            step(("LOCAL_IN", "delivered to the router"))
        if self.local_stack:
            self.local_deliver(pkt, v, step)
        else:
            answer = icmp_echo(pkt)
            if answer is not None:
                self.send_local(answer, v, step)
        return v

    # --- the router's own stack --------------------------------------------------------

    def local_deliver(self, pkt: Packet, v: Verdict, step=None) -> None:
        """ip_protocol_deliver_rcu(): hand a datagram for the router to its protocol.

        ICMP: icmp_rcv() answers echo requests.  TCP: tcp_v4_rcv() (see :meth:`_tcp_rcv`).
        UDP: __udp4_lib_rcv() answers a closed port with port unreachable (icmp_send(),
        rate-limited); a bad checksum or length gets nothing.  A protocol without a
        handler (:data:`LOCAL_PROTOCOLS`) gets protocol unreachable.  Every answer leaves
        through LOCAL_OUT (:meth:`send_local`)."""
        if pkt.proto == IPPROTO_ICMP:
            answer = icmp_echo(pkt)
        elif pkt.proto == IPPROTO_TCP:
            answer = self._tcp_rcv(pkt)
        elif pkt.proto == IPPROTO_UDP:
            if pkt.l4ok and pkt.l4_checksum_ok() and pkt.dport not in self.listen[IPPROTO_UDP]:
                self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, v, step)
            return
        elif pkt.proto not in LOCAL_PROTOCOLS:
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PROT_UNREACH, 0, v, step)
            return
        else:
            return
        if answer is not None:
            if step:
                step(("local stack", f"answers {answer.summary()}"))
            self.send_local(answer, v, step)

    def _tcp_rcv(self, pkt: Packet) -> Packet | None:
        """tcp_v4_rcv(): a segment with a bad header or checksum is dropped silently.

        No socket (nothing listens on the port): tcp_v4_send_reset() answers anything but a
        RST.  A port in ``listen`` behaves as a listener (tcp_rcv_state_process(), LISTEN):
        a segment with ACK gets a RST, a SYN without FIN a SYN-ACK (tcp_v4_send_synack()),
        anything else nothing; once a SYN-ACK went out, a retransmitted SYN gets it again
        (tcp_check_req()) and the rest of that connection belongs to its socket and is
        answered with nothing (no data ACKs, no retransmission timers are modelled)."""
        if not pkt.l4ok or not pkt.l4_checksum_ok():
            return None
        flags = pkt.tcpflags
        if pkt.dport in self.listen[IPPROTO_TCP]:
            conn = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
            if conn in self._accepted:
                if flags & TH_RST:
                    del self._accepted[conn]
                elif flags & (TH_SYN | TH_ACK) == TH_SYN:
                    return self._synack(pkt, self._accepted[conn])
                return None
            if flags & TH_ACK and not flags & TH_RST:
                return tcp_v4_send_reset(pkt)
            if flags & TH_SYN and not flags & (TH_FIN | TH_RST):
                self._accepted[conn] = isn = self._rng.getrandbits(32)
                if len(self._accepted) > ACCEPTED_MAX:
                    del self._accepted[next(iter(self._accepted))]
                return self._synack(pkt, isn)
            return None
        return None if flags & TH_RST else tcp_v4_send_reset(pkt)

    def _synack(self, pkt: Packet, isn: int) -> Packet:
        """tcp_v4_send_synack() with the MSS of the route back (tcp_mss_clamp: MTU - 40)."""
        back = self.route(pkt.src)
        mss = self.ifaces[back.iface].mtu - 40 if back else 536
        return tcp_v4_send_synack(pkt, isn, mss)

    def send_local(self, pkt: Packet, v: Verdict | None = None, step=None) -> Verdict:
        """A datagram the router itself sends: LOCAL_OUT, routing, POST_ROUTING.

        A datagram that already carries a conntrack (an ICMP error, nf_ct_attach()) is
        left alone by nf_conntrack_in() ("previously seen", no counter on current
        kernels) and never confirmed; NAT still translates it (RELATED ICMP:
        nf_nat_icmp_reply_translation())."""
        v = v or Verdict(step is not None)
        rs = self.ruleset
        if rs is not None and ("raw", "OUTPUT") in rs.hooks:
            drop, notrack = rs.raw("OUTPUT", pkt, None, None)
            if drop:
                return self._drop(v, "raw OUTPUT")
            if notrack and pkt.ct is None:          # an attached entry stays (nft_notrack_eval)
                pkt.ctinfo = IP_CT_UNTRACKED
        if pkt.ct is None and pkt.ctinfo != IP_CT_UNTRACKED:
            if self.ct.conntrack_in(pkt, NF_INET_LOCAL_OUT) == NF_DROP:
                return self._drop(v, "conntrack: table full")
            if rs is not None and rs.helpers and pkt.ct is not None:
                helper = rs.raw_helper("OUTPUT", pkt, None, None)
                if helper:                          # -j CT --helper in raw OUTPUT
                    self.ct.assign_helper(pkt.ct, helper)
        if self._nat(NF_INET_LOCAL_OUT, pkt, None) == NF_DROP:
            return self._drop(v, "nat OUTPUT")
        r = self.route(pkt.dst)
        if r is None:
            return self._drop(v, "no route")
        if self._filter(NF_INET_LOCAL_OUT, pkt, r.iface, v, step) == NF_DROP:
            return self._drop(v, "filter OUTPUT")
        self._post_routing(pkt, r.iface, v, step)
        return v

    # --- ICMP errors the router sends (net/ipv4/icmp.c) ----------------------------------

    def icmp_send(self, skb_in: Packet, type_: int, code: int, info: int,
                  v: Verdict | None = None, step=None) -> Packet | None:
        """icmp_send() / __icmp_send(): answer ``skb_in`` (as it is now, after PRE_ROUTING)
        with an ICMP error; returns the error, or None when the kernel sends nothing.

        Nothing for a non-first fragment, a broadcast/multicast destination or an
        unusable source, nor about an ICMP error (unknown types count as errors).
        Rate limits, in the kernel's order: the global bucket (icmpv4_global_allow(),
        ``icmp_msgs_per_sec``/``icmp_msgs_burst``), then one bucket per destination
        (icmpv4_xrlim_allow() -> inet_peer_xrlim_allow(): ``icmp_ratelimit`` per token,
        a burst of 6), both only for types in ``icmp_ratemask`` (fragmentation needed
        never).  Source: the address the route back to the offending source selects
        (saddr 0 into icmp_route_lookup(); with ``icmp_errors_use_inbound_ifaddr`` the
        incoming interface's), or for a datagram addressed to the router the address it
        was sent to (RTCF_LOCAL: saddr = iph->daddr), TOS precedence 6 (0xc0) | the TOS bits, TTL 64, DF clear, IP
        id random (ip_select_ident()); as much of the original as fits in 576 bytes.
        icmp_glue_bits() attaches the offending packet's conntrack (nf_ct_attach():
        RELATED_REPLY for a packet of the original direction, RELATED for a reply),
        so LOCAL_OUT does not look it up and POST_ROUTING translates the quote back.
        """
        if skb_in.frag or skb_in.dst >= 0xE0000000 or self._is_broadcast(skb_in.dst):
            return None
        src = skb_in.src
        if src == 0 or src >= 0xE0000000 or self._is_broadcast(src):
            return None
        if type_ in ICMP_ERROR_TYPES and skb_in.proto == IPPROTO_ICMP:
            inner = skb_in.itype
            if skb_in.l4len < 1 or inner > NR_ICMP_TYPES or inner in ICMP_ERROR_TYPES:
                return None
        limit = self.icmp_limit
        limited = limit.limited(type_, code)
        if limited and not limit.global_allow(self.ct.jiffies()):
            self.counters["icmp_ratelimited"] += 1
            return None
        back = self.route(src)
        if back is None:
            return None
        saddr = skb_in.dst if skb_in.dst in self.local else None     # RTCF_LOCAL: the address hit
        if saddr is None and self.icmp["icmp_errors_use_inbound_ifaddr"] and skb_in.iif in self.ifaces:
            saddr = self.source_address(skb_in.iif, src)
        if saddr is None:
            saddr = self.source_address(back.iface, src)
        if saddr is None:
            return None
        if limited:
            if not limit.xrlim_allow(src, self.ct.jiffies()):
                self.counters["icmp_ratelimited"] += 1
                return None
            limit.global_consume(self._rng)
        err = icmp_error(skb_in, type_, code, info, saddr, self.ifaces[back.iface].mtu,
                         self._rng.getrandbits(16))
        if skb_in.ct is not None and skb_in.ctinfo is not None:   # nf_ct_attach() -> nf_conntrack_attach()
            err.ct = skb_in.ct
            err.ctinfo = IP_CT_RELATED if skb_in.ctinfo >= IP_CT_IS_REPLY else IP_CT_RELATED_REPLY
        self.counters["icmp_errors_sent"] += 1
        if step:
            step(("icmp_send", f"ICMP type {type_} code {code} to {int2ip(src)} from {int2ip(saddr)}"))
        self.send_local(err, v or Verdict(), step)
        return err

    def _is_broadcast(self, addr: int) -> bool:
        return is_broadcast(self.ifaces.values(), addr)

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


def parse_listen(listen: Mapping[str, Iterable[int]] | None) -> dict[int, frozenset[int]]:
    """``{"tcp": {22}, "udp": {53}}`` -> {6: {22}, 17: {53}}; a clear error for anything else."""
    out: dict[int, frozenset[int]] = {proto: frozenset() for proto in LISTEN_PROTOCOLS.values()}
    for name, ports in (listen or {}).items():
        if name not in LISTEN_PROTOCOLS:
            raise ValueError(f"listen: unknown protocol {name!r} (known: tcp, udp)")
        ports = [ports] if isinstance(ports, int) else list(ports)
        bad = [p for p in ports if not isinstance(p, int) or not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"listen: {name} port {bad[0]!r} is not a number from 1 to 65535")
        out[LISTEN_PROTOCOLS[name]] = out[LISTEN_PROTOCOLS[name]] | frozenset(ports)
    return out


def _exceeds_mtu(pkt: Packet, mtu: int) -> bool:
    """ip_exceeds_mtu(): DF set and too big (a reassembled datagram: one of its fragments)."""
    if pkt.tot_len <= mtu or not pkt.buf[pkt.off + 6] & 0x40:
        return False
    return max(pkt.frag_sizes) > mtu if pkt.frag_sizes else True


def _ct_note(pkt: Packet) -> str:
    ct = pkt.ct
    if ct is None:
        return "UNTRACKED (notrack)" if pkt.ctinfo == IP_CT_UNTRACKED else "INVALID (no conntrack)"
    return f"{CTINFO_NAMES[pkt.ctinfo]} {ct.orig!r}"


def _addr_note(pkt: Packet) -> str:
    return f"{int2ip(pkt.src)}:{pkt.sport} > {int2ip(pkt.dst)}:{pkt.dport}"


def _nat_note(kind: str, before: str, pkt: Packet) -> str:
    after = _addr_note(pkt)
    if pkt.ct is None:
        return f"{kind}: none (INVALID packets are never translated)"
    return f"{kind}: {before} -> {after}" if after != before else f"{kind}: no change"


__all__ = ["Router", "Sent", "Verdict", "HOOK_NAMES", "parse_cidr", "parse_listen"]
