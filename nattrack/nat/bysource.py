"""NAT's own state in a conntrack table: the by-source hash and the kernel's forced choices.

Models nf_nat_bysource of net/netfilter/nf_nat_core.c, a hash private to NAT: every
entry NAT has bound in the source direction (IPS_SRC_NAT_DONE) is hashed by its
original source address, source port/id and protocol (hash_by_src()), so that
find_appropriate_src() can give a new flow from the same source the mapping an
earlier one got.  Conntrack does not know it: when an entry is freed, conntrack
calls the hooks registered on its table, and NAT's removes the entry here, as
nf_conntrack_free() calls nat_hook->remove_nat_bysrc() (nf_nat_cleanup_conntrack()).

The same per-table state holds ``forced``, kernel mode's channel: original tuple ->
the tuple the connection's first packet had when the real kernel sent it.
nf_nat_setup_info() then binds to that one point, as ctnetlink's CTA_NAT_SRC/DST does.
"""
from __future__ import annotations

from typing import Sequence

from ..conntrack.conn import IPS_SRC_NAT_DONE, Conn
from ..conntrack.core import ConntrackTable
from ..conntrack.tuple import Tuple

NAT_NET_ID = "nat"                  # this module's key in ConntrackTable.pernet (net_generic())


def bysource_key(t: Tuple) -> int:
    """hash_by_src()'s inputs, as one int: source address, source port/id, protocol."""
    return t.src << 24 | t.sport << 8 | t.proto


class NatNet:
    """NAT's state for one table (one network namespace)."""

    __slots__ = ("bysource", "forced")

    def __init__(self) -> None:
        # key -> the entry, or the entries newest first (an hlist); one entry needs no list.
        self.bysource: dict[int, Conn | list[Conn]] = {}
        self.forced: dict[Tuple, Tuple] = {}      # kernel mode: NAT choices seen leave

    def add(self, ct: Conn) -> None:
        """nf_nat_setup_info()'s hlist_add_head_rcu() into nf_nat_bysource."""
        key = bysource_key(ct.orig)
        entry = self.bysource.get(key)
        if entry is None:
            self.bysource[key] = ct
        elif isinstance(entry, list):
            entry.insert(0, ct)
        else:
            self.bysource[key] = [ct, entry]

    def same_source(self, t: Tuple) -> Sequence[Conn]:
        """The entries hashed under t's source, newest first (find_appropriate_src()'s walk)."""
        entry = self.bysource.get(bysource_key(t))
        if entry is None:
            return ()
        return entry if isinstance(entry, list) else (entry,)

    def remove_nat_bysrc(self, ct: Conn) -> None:
        """nf_nat_cleanup_conntrack() (nat_hook->remove_nat_bysrc): leave the by-source hash."""
        if not ct.status & IPS_SRC_NAT_DONE:
            return                           # never hashed
        key = bysource_key(ct.orig)
        entry = self.bysource.get(key)
        if entry is ct:
            del self.bysource[key]
        elif isinstance(entry, list):
            entry[:] = [c for c in entry if c is not ct]
            if len(entry) == 1:
                self.bysource[key] = entry[0]
            elif not entry:
                del self.bysource[key]


def nat_net(table: ConntrackTable) -> NatNet:
    """NAT's state in ``table``, made (and its destroy hook registered) on first use."""
    net = table.pernet.get(NAT_NET_ID)
    if isinstance(net, NatNet):
        return net
    net = NatNet()
    table.pernet[NAT_NET_ID] = net
    table.destroy_hooks.append(net.remove_nat_bysrc)
    return net


def nat_forced(table: ConntrackTable) -> dict[Tuple, Tuple]:
    """Kernel mode's forced choices for ``table``: set ``[orig] = tuple that left`` before
    the packet goes through the engine, pop it after."""
    return nat_net(table).forced
