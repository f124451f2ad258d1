"""UDP connection tracking.

Models net/netfilter/nf_conntrack_proto_udp.c (Linux >= 5.16): udp_error() and
nf_conntrack_udp_packet().  UDP has no state of its own: what students see is
[UNREPLIED] until a reply, then 30 s until the flow is more than 2 s old, then
the 120-s stream timeout together with [ASSURED] (commit b7b1d02fc439).
"""
from __future__ import annotations

from .conn import IPCT_ASSURED, IPS_ASSURED, IPS_CONFIRMED, IPS_NAT_CLASH, IPS_SEEN_REPLY
from .uapi import NF_ACCEPT

INVALID = 0                              # the tracker's verdict (NF_ACCEPT: uapi.py)
STREAM_DELAY = 2          # seconds: stream_ts = now + 2 * HZ


def udp_error(pkt, hook_is_prerouting: bool, sysctl) -> str | None:
    """udp_error(): header present, length field sane, checksum (PRE_ROUTING only)."""
    if not pkt.l4ok:
        return "truncated/malformed packet"
    if sysctl["nf_conntrack_checksum"] and hook_is_prerouting and not pkt.l4_checksum_ok():
        return "bad checksum"
    return None


def udp_packet(table, ct, pkt, ctinfo: int, direction: int, hook_is_prerouting: bool) -> int:
    """nf_conntrack_udp_packet(): refresh to 30 s, or 120 s + ASSURED for a stream."""
    sysctl = table.sysctl
    if udp_error(pkt, hook_is_prerouting, sysctl):
        return INVALID
    now_j = table.now_j
    status = ct.status
    if not status & IPS_CONFIRMED:
        ct.proto = now_j + STREAM_DELAY * table.hz         # stream_ts
    if status & IPS_SEEN_REPLY:
        extra = sysctl["nf_conntrack_udp_timeout"]
        stream = False
        if now_j > ct.proto:                                  # time_after(jiffies, stream_ts)
            extra = sysctl["nf_conntrack_udp_timeout_stream"]
            stream = not status & IPS_ASSURED
        table.refresh(ct, extra, pkt, direction)
        if status & IPS_NAT_CLASH:
            return NF_ACCEPT                                  # clash entries time out soon
        if stream and not ct.status & IPS_ASSURED:
            ct.status |= IPS_ASSURED
            ct.ecache |= IPCT_ASSURED
    else:
        table.refresh(ct, sysctl["nf_conntrack_udp_timeout"], pkt, direction)
    return NF_ACCEPT
