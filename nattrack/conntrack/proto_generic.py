"""Protocols without a tracker of their own.

Models generic_packet() of nf_conntrack_core.c and nf_conntrack_proto_generic.c:
the tuple is the two addresses and the protocol number, every packet refreshes
the 600-s generic timeout, and the entry is never ASSURED.
"""
from __future__ import annotations

from .uapi import NF_ACCEPT


def generic_packet(table, ct, pkt, ctinfo: int, direction: int, hook_is_prerouting: bool) -> int:
    table.refresh(ct, table.sysctl["nf_conntrack_generic_timeout"], pkt, direction)
    return NF_ACCEPT
