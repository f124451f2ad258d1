"""UDP connection tracking.

Models net/netfilter/nf_conntrack_proto_udp.c (Linux >= 5.16): udp_error() and
nf_conntrack_udp_packet().  UDP has no state of its own: what students see is
[UNREPLIED] until a reply, then 30 s until the flow is more than 2 s old, then
the 120-s stream timeout together with [ASSURED] (commit b7b1d02fc439).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .conn import IPCT_ASSURED, IPS_ASSURED, IPS_CONFIRMED, IPS_NAT_CLASH, IPS_SEEN_REPLY, Conn
from .uapi import INVALID, NF_ACCEPT

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .core import ConntrackTable

STREAM_DELAY = 2          # seconds: stream_ts = now + 2 * HZ


def udp_error(pkt: Packet, hook_is_prerouting: bool, sysctl: Mapping[str, int]) -> str | None:
    """udp_error(): header present, length field sane, checksum (PRE_ROUTING only)."""
    if not pkt.l4ok:
        return "truncated/malformed packet"
    if sysctl["nf_conntrack_checksum"] and hook_is_prerouting and not pkt.l4_checksum_ok():
        return "bad checksum"
    return None


def udp_timeout_choice(ct: Conn, now_j: int) -> tuple[str, bool]:
    """nf_conntrack_udp_packet()'s decision for one packet: the setting whose timeout the
    entry is refreshed to, and whether the entry becomes ASSURED.  A stream (a reply seen
    and the flow older than stream_ts) gets the stream timeout and ASSURED."""
    if ct.status & IPS_SEEN_REPLY and now_j > ct.proto:     # time_after(jiffies, stream_ts)
        return "nf_conntrack_udp_timeout_stream", not ct.status & IPS_ASSURED
    return "nf_conntrack_udp_timeout", False


def udp_packet(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int, direction: int,
               hook_is_prerouting: bool) -> int:
    """nf_conntrack_udp_packet(): refresh to 30 s, or 120 s + ASSURED for a stream
    (udp_timeout_choice(), which lab 3 replaces)."""
    sysctl = table.sysctl
    if udp_error(pkt, hook_is_prerouting, sysctl):
        return INVALID
    now_j = table.now_j
    if not ct.status & IPS_CONFIRMED:
        ct.proto = now_j + STREAM_DELAY * table.hz         # stream_ts
    timeout, assured = udp_timeout_choice(ct, now_j)
    table.refresh(ct, sysctl[timeout], pkt, direction)
    # a clash entry (IPS_NAT_CLASH) times out soon: it never becomes ASSURED
    if assured and not ct.status & (IPS_ASSURED | IPS_NAT_CLASH):
        ct.status |= IPS_ASSURED
        ct.ecache |= IPCT_ASSURED
    return NF_ACCEPT
