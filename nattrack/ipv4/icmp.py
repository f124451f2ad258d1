"""The ICMP a router sends: echo replies, error messages and their rate limits.

Models net/ipv4/icmp.c: icmp_echo() (the reply to a ping), __icmp_send()'s datagram (the
quote of the offending packet, TOS and TTL) and the two rate limits it applies, in the
kernel's order: the global bucket (icmp_global_allow(), ``icmp_msgs_per_sec`` and
``icmp_msgs_burst``) and one bucket per destination (icmpv4_xrlim_allow() ->
inet_peer_xrlim_allow(), ``icmp_ratelimit`` per token), both only for the types in
``icmp_ratemask`` (icmpv4_mask_allow()).  When to send (and from which address) is the
router's decision: ``stack.Router.icmp_send``.
"""
from __future__ import annotations

import random
import struct

from ..conntrack.conn import HZ
from ..packet.checksum import checksum
from ..packet.ipv4 import IPPROTO_ICMP, NR_ICMP_TYPES, Packet

ICMP_ECHOREPLY, ICMP_ECHO = 0, 8
ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
ICMP_NET_UNREACH, ICMP_PROT_UNREACH, ICMP_PORT_UNREACH = 0, 2, 3
ICMP_FRAG_NEEDED, ICMP_EXC_TTL = 4, 0
XRLIM_BURST_FACTOR = 6                              # inet_peer_xrlim_allow()
IPTOS_PREC_INTERNETCONTROL = 0xC0
ICMP_SYSCTL_DEFAULTS = {                            # net.ipv4.*, their kernel defaults
    "icmp_ratelimit": 1000,                         # ms per token of a destination's bucket
    "icmp_ratemask": 0x1818,                        # types 3, 4, 11, 12 are rate-limited
    "icmp_msgs_per_sec": 1000,                      # the global bucket
    "icmp_msgs_burst": 50,
    "icmp_errors_use_inbound_ifaddr": 0,
}


class IcmpRateLimit:
    """The rate limits of one network namespace: ``settings`` (ICMP_SYSCTL_DEFAULTS's keys),
    the global credit and the per-destination buckets (inet_peer's rate_tokens)."""

    def __init__(self, settings: dict[str, int] | None = None) -> None:
        unknown = set(settings or ()) - set(ICMP_SYSCTL_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown ICMP setting {sorted(unknown)[0]!r}: known are "
                             + ", ".join(ICMP_SYSCTL_DEFAULTS))
        self.settings = {**ICMP_SYSCTL_DEFAULTS, **(settings or {})}
        self._peers: dict[int, tuple[int, int]] = {}      # inet_peer: daddr -> (tokens, last)
        self._global_credit: int = 0
        self._global_stamp: int | None = None

    def limited(self, type_: int, code: int) -> bool:
        """icmpv4_mask_allow() negated: is this type rate-limited at all?"""
        if type_ > NR_ICMP_TYPES or (type_ == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED):
            return False
        return bool(1 << type_ & self.settings["icmp_ratemask"])

    def global_allow(self, now: int) -> bool:
        """icmp_global_allow(): credit refilled at icmp_msgs_per_sec, at most icmp_msgs_burst
        (``now`` in jiffies)."""
        if self._global_credit > 0:
            return True
        delta = HZ if self._global_stamp is None else min(now - self._global_stamp, HZ)
        if delta < HZ // 50:
            return False
        incr = self.settings["icmp_msgs_per_sec"] * delta // HZ
        if not incr:
            return False
        self._global_stamp = now
        self._global_credit = min(self._global_credit + incr, self.settings["icmp_msgs_burst"])
        return True

    def global_consume(self, rng: random.Random) -> None:
        """icmp_global_consume(): a sent error takes 0 to 2 credits."""
        self._global_credit -= rng.randrange(3)

    def xrlim_allow(self, daddr: int, now: int) -> bool:
        """inet_peer_xrlim_allow(): a token bucket per destination, icmp_ratelimit per token,
        six tokens at most; a new peer starts full (rate_last = jiffies - 60 * HZ)."""
        timeout = self.settings["icmp_ratelimit"] * HZ // 1000
        tokens, last = self._peers.get(daddr, (0, now - 60 * HZ))
        tokens = min(tokens + now - last, XRLIM_BURST_FACTOR * timeout)
        ok = tokens >= timeout
        if ok:
            tokens -= timeout
        if len(self._peers) > 4096:                   # inet_peer gc: full buckets are forgotten
            self._peers = {a: tl for a, tl in self._peers.items()
                           if now - tl[1] < XRLIM_BURST_FACTOR * timeout}
        self._peers[daddr] = (tokens, now)
        return ok


def icmp_echo(pkt: Packet) -> Packet | None:
    """icmp_echo(): the kernel answers a ping to one of its addresses."""
    if pkt.proto != IPPROTO_ICMP or pkt.itype != ICMP_ECHO or pkt.frag or pkt.mf:
        return None
    icmp = bytearray(pkt.buf[pkt.l4:pkt.l4 + pkt.l4len])
    icmp[0] = ICMP_ECHOREPLY
    icmp[2:4] = b"\0\0"
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(icmp), 0, 0, 64, IPPROTO_ICMP,
                                0, pkt.dst, pkt.src))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return Packet.parse(hdr + icmp, 0, iif=None, ts=pkt.ts)


def icmp_error(skb_in: Packet, type_: int, code: int, info: int, saddr: int, mtu: int,
               ip_id: int) -> Packet:
    """The datagram __icmp_send() builds about ``skb_in``: from ``saddr``, TOS precedence 6
    (0xc0) | the offending TOS bits, TTL 64, DF clear, IP id ``ip_id``; as much of the
    original as fits in 576 bytes (and the route's ``mtu``)."""
    room = min(mtu, 576) - 20 - 8
    quoted = bytes(skb_in.buf[skb_in.off:skb_in.off + min(skb_in.tot_len, room)])
    icmp = bytearray(struct.pack("!BBHI", type_, code, 0, info) + quoted)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    tos = IPTOS_PREC_INTERNETCONTROL | (skb_in.buf[skb_in.off + 1] & 0x1E)
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x45, tos, 20 + len(icmp),
                                ip_id, 0, 64, IPPROTO_ICMP, 0, saddr, skb_in.src))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    err = Packet.parse(hdr + icmp, 0, iif=None, ts=skb_in.ts)
    assert err is not None                  # a datagram built whole always parses
    return err
