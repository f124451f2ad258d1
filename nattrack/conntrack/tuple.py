"""Connection tuples, their inversion and the ICMP type map.

Models include/net/netfilter/nf_conntrack_tuple.h and nf_ct_invert_tuple()
(nf_conntrack_core.c, nf_conntrack_proto_icmp.c).

A tuple has a manipulable source half (address + 16-bit key) and a fixed
destination half (address + 16-bit key + protocol).  For TCP and UDP the keys
are the ports.  For ICMP the source key is the echo identifier (the part NAT
may rewrite) and the destination key holds type << 8 | code, exactly like the
kernel's ``dst.u.icmp.{type,code}``.  Other protocols ("generic") have keys 0.

Addresses are IPv4 addresses as unsigned 32-bit ints: cheap to hash and to
compare, turned into dotted quads only for display.
"""
from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, NamedTuple

# The protocol numbers (packet/ipv4.py's), re-exported: conntrack and nat take them from here.
from ..packet.ipv4 import IPPROTO_ICMP as IPPROTO_ICMP, IPPROTO_TCP as IPPROTO_TCP
from ..packet.ipv4 import IPPROTO_UDP as IPPROTO_UDP

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet

# nf_conntrack_proto_icmp.c: invmap[] -- the only ICMP types that have an answer.
ICMP_INVMAP = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
# icmp_new()'s valid_new[]: only requests may create an entry.
ICMP_REQUEST_TYPES = frozenset((8, 13, 15, 17))

# nf_conntrack_standalone.c: l4proto names as /proc and conntrack(8) print them.
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6",
               132: "sctp", 136: "udplite"}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
# Protocols whose tuple keys are ports: tcp, udp, dccp, sctp, udplite.
PORT_PROTOS = frozenset((6, 17, 33, 132, 136))


def ip2int(addr: str) -> int:
    return int(struct.unpack("!I", socket.inet_aton(addr))[0])


def int2ip(addr: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", addr))


class Tuple(NamedTuple):
    """struct nf_conntrack_tuple (IPv4): src/dst address, protocol, src/dst key."""
    src: int
    dst: int
    proto: int
    sport: int = 0      # TCP/UDP source port, ICMP id
    dport: int = 0      # TCP/UDP destination port, ICMP type << 8 | code

    @classmethod
    def make(cls, src: str, dst: str, proto: int | str, sport: int = 0, dport: int = 0) -> Tuple:
        """Build a tuple from dotted quads and a protocol number or name (tests, labs)."""
        if isinstance(proto, str):
            proto = PROTO_NUMBERS[proto]
        return cls(ip2int(src), ip2int(dst), proto, sport, dport)

    @classmethod
    def icmp(cls, src: str, dst: str, type_: int, code: int, ident: int) -> Tuple:
        return cls(ip2int(src), ip2int(dst), IPPROTO_ICMP, ident, type_ << 8 | code)

    @property
    def icmp_type(self) -> int:
        return self.dport >> 8

    @property
    def icmp_code(self) -> int:
        return self.dport & 0xFF

    def __repr__(self) -> str:
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.proto == IPPROTO_ICMP:
            keys = f"type={self.dport >> 8} code={self.dport & 0xFF} id={self.sport}"
        else:
            keys = f"sport={self.sport} dport={self.dport}"
        return f"<{name} src={int2ip(self.src)} dst={int2ip(self.dst)} {keys}>"


# Tuple(...) without the Python-level __new__ a NamedTuple class gets: the same object,
# built in C, for the tuples made on every packet.
_make = tuple.__new__


def invert_tuple(t: Tuple) -> Tuple | None:
    """Models nf_ct_invert_tuple(): swap addresses and ports; map the ICMP type.

    Returns None where the kernel fails (an ICMP type without an answer), which
    means no conntrack can be created for the packet.
    """
    if t.proto == IPPROTO_ICMP:
        rtype = ICMP_INVMAP.get(t.dport >> 8)
        if rtype is None:
            return None
        return Tuple(t.dst, t.src, IPPROTO_ICMP, t.sport, rtype << 8 | (t.dport & 0xFF))
    return _make(Tuple, (t.dst, t.src, t.proto, t.dport, t.sport))


def get_tuple(pkt: Packet) -> Tuple | None:
    """nf_ct_get_tuple(): the tuple of a packet, or None if its L4 header is unusable."""
    proto = pkt.proto
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if not pkt.l4ok:
            return None
        return _make(Tuple, (pkt.src, pkt.dst, proto, pkt.sport, pkt.dport))
    if proto == IPPROTO_ICMP:
        if not pkt.l4ok:
            return None
        return Tuple(pkt.src, pkt.dst, proto, pkt.sport, pkt.itype << 8 | pkt.icode)
    return Tuple(pkt.src, pkt.dst, proto, 0, 0)


_ADDRS: dict[int, int] = {}
_PORTS: dict[int, int] = {}


def interned(t: Tuple) -> Tuple:
    """The same tuple built from shared int objects: a million entries for a few hosts
    and ports then hold references, not a million copies of the same numbers."""
    if len(_ADDRS) > 65536:
        _ADDRS.clear()
    a = _ADDRS.setdefault
    p = _PORTS.setdefault
    return _make(Tuple, (a(t.src, t.src), a(t.dst, t.dst), t.proto,
                         p(t.sport, t.sport), p(t.dport, t.dport)))
