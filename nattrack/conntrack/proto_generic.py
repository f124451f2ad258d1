"""Protocols without a tracker of their own.

Models generic_packet() of nf_conntrack_core.c and nf_conntrack_proto_generic.c:
the tuple is the two addresses and the protocol number, every packet refreshes
the 600-s generic timeout, and the entry is never ASSURED.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .uapi import NF_ACCEPT

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable


def generic_packet(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int, direction: int,
                   hook_is_prerouting: bool) -> int:
    table.refresh(ct, table.sysctl["nf_conntrack_generic_timeout"], pkt, direction)
    return NF_ACCEPT
