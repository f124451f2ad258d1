"""ICMP connection tracking and ICMP errors as RELATED.

Models net/netfilter/nf_conntrack_proto_icmp.c: nf_conntrack_icmp_packet(),
nf_conntrack_icmpv4_error(), and nf_conntrack_inet_error() of
nf_conntrack_core.c.  Query types make entries (30 s, never ASSURED, not
removed by the reply so duplicates still match); error types are matched to
the flow they quote through the inverted embedded tuple.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .conn import IP_CT_DIR_REPLY, IP_CT_RELATED, IP_CT_RELATED_REPLY
from ..packet.ipv4 import ICMP_ERROR_TYPES, NR_ICMP_TYPES
from .tuple import ICMP_REQUEST_TYPES, Tuple, get_tuple, invert_tuple
from .uapi import INVALID, NF_ACCEPT

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable


def icmp_packet(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int, direction: int,
                hook_is_prerouting: bool) -> int:
    """nf_conntrack_icmp_packet(): only requests may open an entry; refresh to 30 s."""
    if ct.orig.dport >> 8 not in ICMP_REQUEST_TYPES:
        return INVALID                     # "can't create new conn with type"
    table.refresh(ct, table.sysctl["nf_conntrack_icmp_timeout"], pkt, direction)
    return NF_ACCEPT


def error_lookup(quoted: Tuple) -> Tuple | None:
    """The tuple of the connection an ICMP error is about: nf_conntrack_inet_error()'s
    nf_ct_invert_tuple() of the tuple the error quotes (the quoted packet went the other
    way); None if it has no inverse (an ICMP type without an answer)."""
    return invert_tuple(quoted)


def related_ctinfo(direction: int, outer_dst: int, entry_dst: int) -> int | None:
    """What nf_conntrack_inet_error() makes of an error matching ``direction`` of an entry:
    RELATED, or RELATED_REPLY in the reply direction; None (INVALID) unless the error is
    addressed where that direction's packets go, or anybody could forge "related" errors
    for other hosts."""
    if outer_dst != entry_dst:
        return None
    return IP_CT_RELATED_REPLY if direction == IP_CT_DIR_REPLY else IP_CT_RELATED


def icmp_error(table: ConntrackTable, pkt: Packet,
               hook_is_prerouting: bool) -> tuple[str, Conn | None, int | None]:
    """nf_conntrack_icmpv4_error() + nf_conntrack_inet_error().

    error_lookup() and related_ctinfo() are its two decisions (lab 3 replaces them).
    Returns (verdict, ct, ctinfo):
      ("query", None, None)  not an error message: go on with normal tracking;
      ("related", ct, ctinfo) the error belongs to ct (RELATED / RELATED_REPLY);
      ("error", None, None)  malformed or unmatched: counted as `error`, INVALID.
    """
    if not pkt.l4ok:
        return "error", None, None                     # short packet
    if table.sysctl["nf_conntrack_checksum"] and hook_is_prerouting and not pkt.l4_checksum_ok():
        return "error", None, None                     # bad checksum
    if pkt.itype > NR_ICMP_TYPES:
        return "error", None, None                     # invalid icmp type
    if pkt.itype not in ICMP_ERROR_TYPES:
        return "query", None, None
    inner = pkt.embedded_packet()
    if inner is None or inner.frag or not inner.l4ok:
        return "error", None, None
    origtuple = get_tuple(inner)
    if origtuple is None:
        return "error", None, None
    innertuple = error_lookup(origtuple)
    if innertuple is None:
        return "error", None, None
    found = table.find(innertuple)
    if found is None:
        return "error", None, None
    ct, direction = found
    ctinfo = related_ctinfo(direction, pkt.dst, ct.tuple(direction).dst)
    if ctinfo is None:
        return "error", None, None
    return "related", ct, ctinfo
