"""GRE connection tracking (without the PPTP helper).

Models nf_conntrack_gre_packet() of net/netfilter/nf_conntrack_proto_gre.c:
30 s until a reply is seen, then the 180-s stream timeout and ASSURED.  Without
the PPTP helper the keys of the tuple are 0, as gre_pkt_to_tuple() sets them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .conn import IPCT_ASSURED, IPS_ASSURED, IPS_CONFIRMED, IPS_NAT_CLASH, IPS_SEEN_REPLY
from .uapi import NF_ACCEPT

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable

IPPROTO_GRE = 47


class GreState:
    """struct nf_ct_gre: the two timeouts, fixed when the entry is created."""
    __slots__ = ("timeout", "stream_timeout")

    def __init__(self, timeout: int, stream_timeout: int) -> None:
        self.timeout, self.stream_timeout = timeout, stream_timeout


def gre_packet(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int, direction: int,
               hook_is_prerouting: bool) -> int:
    if not ct.status & IPS_CONFIRMED:
        s = table.sysctl
        ct.proto = GreState(s["nf_conntrack_gre_timeout"], s["nf_conntrack_gre_timeout_stream"])
    if ct.status & IPS_SEEN_REPLY:
        table.refresh(ct, ct.proto.stream_timeout, pkt, direction)
        if ct.status & IPS_NAT_CLASH:
            return NF_ACCEPT
        if not ct.status & IPS_ASSURED:
            ct.status |= IPS_ASSURED
            ct.ecache |= IPCT_ASSURED
    else:
        table.refresh(ct, ct.proto.timeout, pkt, direction)
    return NF_ACCEPT
