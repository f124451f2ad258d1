"""The expectation table: connections a helper said are coming.

Models net/netfilter/nf_conntrack_expect.c: nf_ct_expect_init(), nf_ct_expect_related()
(__nf_ct_expect_check(), expect_matches(), expect_clash(), evict_oldest_expect(),
nf_ct_expect_insert()), nf_ct_find_expectation(), nf_ct_remove_expectations(), the
expectation timer, and ctnetlink's expectation lines (``conntrack -L expect``,
``conntrack -E expect``), checked against conntrack-tools 1.4.7 on a 6.18 kernel.

An expectation is a tuple with a mask (a zero bit in the mask matches anything: the FTP
helper leaves the source port open), a master entry, a deadline in jiffies on the table's
clock, and the helper's name.  The first new connection whose original tuple matches
takes it out of the table and becomes RELATED to the master (core.init_conntrack).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

from .tuple import Tuple, int2ip

if TYPE_CHECKING:
    from .conn import Conn
    from .core import ConntrackTable

FULL_MASK = Tuple(0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFF, 0xFFFF)
NF_CT_EXPECT_CLASS_DEFAULT = 0

# struct nf_conntrack_expect_policy of each helper: (max_expected, timeout in seconds).
EXPECT_POLICY = {"ftp": (1, 5 * 60)}

# listener(kind "NEW" | "DESTROY", expectation, now in jiffies)
ExpectListener = Callable[[str, "Expectation", int], None]


class Expectation:
    """struct nf_conntrack_expect: tuple & mask, master, deadline (jiffies), helper name."""
    __slots__ = ("tuple", "mask", "master", "timeout", "helper", "klass", "expectfn",
                 "saved_port", "dir")

    def __init__(self, master: Conn, t: Tuple, mask: Tuple, helper: str,
                 klass: int = NF_CT_EXPECT_CLASS_DEFAULT) -> None:
        self.master, self.tuple, self.mask = master, t, mask
        self.helper, self.klass = helper, klass
        self.timeout = 0
        # NAT (nf_nat_ftp): called on the new entry that fulfils it (nf_nat_follow_master),
        # with the port announced before NAT changed it and the direction it comes from.
        self.expectfn: Callable[[ConntrackTable, Conn, Expectation], None] | None = None
        self.saved_port = 0
        self.dir = 0

    def matches(self, t: Tuple) -> bool:
        """nf_ct_tuple_mask_cmp(): t equals the expected tuple where the mask has bits."""
        return all((a ^ b) & m == 0 for a, b, m in zip(t, self.tuple, self.mask))

    def remaining(self, now_j: int, hz: int) -> int:
        """ctnetlink_exp_dump_expect(): (expires - jiffies) / HZ, never negative."""
        return max(0, self.timeout - now_j) // hz

    def __repr__(self) -> str:
        return f"<Expectation {self.tuple!r} master={self.master.orig!r} helper={self.helper}>"


def _intersects(a: Expectation, b: Expectation) -> bool:
    """expect_clash(): the tuples agree wherever both masks have bits."""
    return a.klass == b.klass and all(
        (x ^ y) & (ma & mb) == 0 for x, y, ma, mb in zip(a.tuple, b.tuple, a.mask, b.mask))


class ExpectTable:
    """One namespace's expectations, in insertion order (a master's oldest first)."""

    def __init__(self, table: ConntrackTable) -> None:
        self.table = table
        self.items: list[Expectation] = []
        self.listeners: list[ExpectListener] = []
        self.stats = {"expect_new": 0, "expect_create": 0, "expect_delete": 0}

    def __len__(self) -> int:
        return len(self.live())

    def _event(self, kind: str, exp: Expectation) -> None:
        for listener in self.listeners:
            listener(kind, exp, self.table.jiffies())

    def unlink(self, exp: Expectation) -> None:
        """nf_ct_unlink_expect_report(): out of the table, a DESTROY event."""
        self.items.remove(exp)
        self.stats["expect_delete"] += 1
        self._event("DESTROY", exp)

    def reap(self) -> None:
        """The expectation timers (nf_ct_expectation_timed_out()) that have fired by now."""
        now_j = self.table.jiffies()
        for exp in [e for e in self.items if e.timeout - now_j <= 0]:
            self.unlink(exp)

    def live(self) -> list[Expectation]:
        self.reap()
        return list(self.items)

    def related(self, exp: Expectation) -> bool:
        """nf_ct_expect_related(): insert exp; False where the kernel returns an error
        (-EBUSY: another master's expectation overlaps it; -EMFILE)."""
        self.reap()
        for other in list(self.items):
            if (other.master is exp.master and other.klass == exp.klass
                    and other.tuple == exp.tuple and other.mask == exp.mask):
                self.unlink(other)              # expect_matches(): the new one replaces it
            elif _intersects(other, exp):
                return False                    # expect_clash()
        max_expected, seconds = EXPECT_POLICY[exp.helper]
        mine = [e for e in self.items if e.master is exp.master and e.klass == exp.klass]
        if len(mine) >= max_expected:
            self.unlink(mine[0])                # evict_oldest_expect()
        exp.timeout = self.table.jiffies() + seconds * self.table.hz
        self.items.append(exp)
        self.stats["expect_create"] += 1
        self._event("NEW", exp)
        return True

    def find(self, t: Tuple) -> Expectation | None:
        """nf_ct_find_expectation(): the expectation t fulfils (its master confirmed and
        alive), taken out of the table; None if there is none."""
        if not self.items:
            return None
        self.reap()
        for exp in self.items:
            if exp.matches(t):
                if not exp.master.is_confirmed() or self.table.is_expired(exp.master):
                    return None
                self.unlink(exp)
                self.stats["expect_new"] += 1
                return exp
        return None

    def remove_for(self, master: Conn) -> None:
        """nf_ct_remove_expectations(): a dying master takes its expectations along."""
        for exp in [e for e in self.items if e.master is master]:
            self.unlink(exp)

    def flush(self) -> int:
        """conntrack -F expect."""
        doomed = list(self.items)
        for exp in doomed:
            self.unlink(exp)
        return len(doomed)

    def __iter__(self) -> Iterator[Expectation]:
        return iter(self.live())


def _addr_port(prefix: str, t: Tuple) -> str:
    return f"{prefix}src={int2ip(t.src)} {prefix}dst={int2ip(t.dst)} sport={t.sport} dport={t.dport}"


def format_expect(exp: Expectation, now_j: int, hz: int) -> str:
    """One ``conntrack -L expect`` line (conntrack-tools' nfexp_snprintf_default)."""
    return " ".join((str(exp.remaining(now_j, hz)), f"proto={exp.tuple.proto}",
                     _addr_port("", exp.tuple), _addr_port("mask-", exp.mask),
                     _addr_port("master-", exp.master.orig), f"class={exp.klass}",
                     f"helper={exp.helper}"))


def format_expect_event(kind: str, exp: Expectation, now_j: int, hz: int) -> str:
    """One ``conntrack -E expect`` line: ``    [NEW] `` or ``[DESTROY] `` then the -L line."""
    return f"{'[' + kind + ']':>9} " + format_expect(exp, now_j, hz)
