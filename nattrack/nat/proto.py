"""Rewriting packet headers for NAT.

Models net/netfilter/nf_nat_proto.c: nf_nat_ipv4_manip_pkt(), the l4 manip
functions (tcp_manip_pkt, udp_manip_pkt, icmp_manip_pkt) and
nf_nat_icmp_reply_translation().  Checksums are patched incrementally
(RFC 1624) as the kernel does; the ICMP checksum of an error whose quoted
packet changed is recomputed in full.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..conntrack.conn import IPS_NAT_DONE_MASK, IPS_NAT_MASK, IPS_DST_NAT, IPS_SRC_NAT, ctinfo_dir
from ..conntrack.tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Tuple, invert_tuple
from ..packet.ipv4 import ICMP_QUERY_TYPES

if TYPE_CHECKING:
    from ..conntrack.conn import Conn
    from ..packet.ipv4 import Packet

MANIP_SRC, MANIP_DST = 0, 1
ICMP_REDIRECT = 5


def l4proto_manip_pkt(pkt: Packet, target: Tuple, manip: int) -> None:
    """tcp/udp_manip_pkt: the port of the manipulated side; icmp_manip_pkt: the query id."""
    proto = target.proto
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if manip == MANIP_SRC:
            pkt.set_port(True, target.sport)
        else:
            pkt.set_port(False, target.dport)
    elif proto == IPPROTO_ICMP and pkt.proto == IPPROTO_ICMP and pkt.itype in ICMP_QUERY_TYPES:
        pkt.set_port(True, target.sport)       # the id is the same for both manip types


def nf_nat_ipv4_manip_pkt(pkt: Packet, target: Tuple, manip: int) -> None:
    """nf_nat_ipv4_manip_pkt(): write target's source (SRC) or destination (DST)."""
    l4proto_manip_pkt(pkt, target, manip)
    if manip == MANIP_SRC:
        pkt.set_addr(True, target.src)
    else:
        pkt.set_addr(False, target.dst)


def nf_nat_manip_to_inverse(pkt: Packet, other: Tuple, manip: int) -> None:
    """nf_nat_ipv4_manip_pkt(pkt, invert_tuple(other), manip), read off ``other`` without
    building the inverse: nf_ct_invert_tuple() swaps the halves, except that an ICMP id
    stays the source key."""
    proto = other.proto
    if manip == MANIP_SRC:
        if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
            pkt.set_port(True, other.dport)
        elif proto == IPPROTO_ICMP and pkt.proto == IPPROTO_ICMP and pkt.itype in ICMP_QUERY_TYPES:
            pkt.set_port(True, other.sport)
        pkt.set_addr(True, other.dst)
    else:
        if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
            pkt.set_port(False, other.sport)
        elif proto == IPPROTO_ICMP and pkt.proto == IPPROTO_ICMP and pkt.itype in ICMP_QUERY_TYPES:
            pkt.set_port(True, other.sport)
        pkt.set_addr(False, other.src)


def nf_nat_icmp_reply_translation(pkt: Packet, ct: Conn, ctinfo: int, hook: int, manip: int) -> bool:
    """nf_nat_icmp_reply_translation(): translate an ICMP error about a NATed flow.

    The quoted packet travelled the other way, so it gets the opposite
    manipulation; then the ICMP checksum is recomputed and the outer header is
    translated like any packet of its direction.  False means drop.
    """
    if not pkt.l4_checksum_ok():
        return False
    if pkt.itype == ICMP_REDIRECT:
        # Redirects for NATed flows would let the ends talk past the translation.
        if ct.status & IPS_NAT_DONE_MASK != IPS_NAT_DONE_MASK or ct.status & IPS_NAT_MASK:
            return False
    direction = ctinfo_dir(ctinfo)
    statusbit = IPS_SRC_NAT if manip == MANIP_SRC else IPS_DST_NAT
    if direction:
        statusbit ^= IPS_NAT_MASK
    if not ct.status & statusbit:
        return True
    inner = pkt.embedded_packet()
    if inner is None:
        return False
    nf_nat_ipv4_manip_pkt(inner, ct.tuple(1 - direction), 1 - manip)
    pkt.recompute_icmp_checksum()
    target = invert_tuple(ct.tuple(1 - direction))
    assert target is not None          # an entry's tuples invert: init_conntrack checked
    target = target._replace(proto=IPPROTO_ICMP)
    nf_nat_ipv4_manip_pkt(pkt, target, manip)
    return True
