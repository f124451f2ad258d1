"""MASQUERADE and interface changes.

Models the notifiers of net/netfilter/nf_nat_masquerade.c: when an interface
goes down (masq_device_event, NETDEV_DOWN) every masqueraded connection that
left through it is deleted; when an IPv4 address is removed from it
(masq_inet_event) only those whose reply tuple points at that address are.
Plain SNAT (--to-source) entries are never flushed this way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..conntrack.core import ConntrackTable


def masq_device_down(table: ConntrackTable, ifname: str) -> int:
    """nf_nat_masquerade's NETDEV_DOWN: kill what was masqueraded out of ``ifname``."""
    doomed = [ct for ct in table.conns(reap=False) if ct.nat_oif == ifname]
    for ct in doomed:
        table.kill(ct)
    return len(doomed)


def masq_inet_addr_removed(table: ConntrackTable, ifname: str, addr: int) -> int:
    """masq_inet_event(NETDEV_DOWN for an address): kill masqueraded entries whose
    reply goes back to the removed address; other addresses' flows stay."""
    doomed = [ct for ct in table.conns(reap=False) if ct.nat_oif == ifname and ct.reply.dst == addr]
    for ct in doomed:
        table.kill(ct)
    return len(doomed)
