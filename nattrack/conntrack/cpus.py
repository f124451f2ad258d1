"""Packets on several CPUs at once: the insertion race and its clash resolution.

On a real machine each CPU runs a packet through the hooks on its own; a new
entry hangs off its packet, unconfirmed (not in the table, invisible to other
CPUs), from nf_conntrack_in() until __nf_conntrack_confirm() at the end of
POST_ROUTING / LOCAL_IN.  Two packets of one new flow processed at the same
time (a resolver's A and AAAA queries from one UDP socket, sent by two threads)
therefore both find nothing and both make an entry; NAT may even send them to
different backends.  The first to confirm wins; the other's confirm finds the
winner and goes to nf_ct_resolve_clash() (see ConntrackTable.resolve_clash and
docs/clash.md).

:func:`race` plays that deterministically: packet ``i`` runs on "CPU i" through
conntrack_in, NAT, routing and the filter up to its confirm, where it waits
until every packet has got as far as it goes; then the confirms run in the
order the scenario names, and each packet goes on (is sent, or dropped).
Nothing of the one-packet path changes: the router's normal receive() runs
for each packet, only its confirm call is held back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..packet.ipv4 import Packet
from .conn import IPS_NAT_CLASH
from .core import NF_DROP, ConntrackTable


class VerdictLike(Protocol):
    """What the router's receive() returns (ipv4.stack.Verdict, a layer above)."""
    steps: list[tuple[str, str]] | None

    @property
    def sent(self) -> Sequence[object]: ...


class RouterLike(Protocol):
    """The router race() drives (ipv4.stack.Router): its table and its receive path."""
    ct: ConntrackTable

    def receive(self, pkt: Packet, trace: bool = False) -> VerdictLike: ...


# What a packet's confirm did, as :attr:`Lane.outcome`.
INSERTED = "inserted"                 # first to confirm: its entry is in the table
MERGED = "merged"                     # clash_resolve: it adopted the winner's entry
NAT_CLASH = "nat-clash"               # clash_resolve: its entry is in the reply direction only
INSERT_FAILED = "insert-failed"       # drop + insert_failed: the packet is dropped
NO_CONFIRM = "no-confirm"             # its entry was confirmed already, or it had none
NOT_REACHED = "not-reached"           # dropped (or delivered elsewhere) before the confirm hook


@dataclass
class Lane:
    """One CPU's packet in a :func:`race`."""
    cpu: int
    packet: Packet
    verdict: VerdictLike | None = None    # once it ran
    outcome: str = NOT_REACHED
    confirmed_at: int | None = None   # its place in the confirm order (0 = first)

    def describe(self) -> str:
        """One line for a notebook or a lab: which CPU, what happened at its confirm."""
        what = {
            INSERTED: "no entry in its way: its entry is inserted",
            MERGED: "lost the race; its entry was the same flow: the packet adopts the "
                    "winner's entry (clash_resolve)",
            NAT_CLASH: "lost the race with another NAT choice: its entry is inserted in the "
                       "reply direction only, NAT_CLASH, 1 s (clash_resolve)",
            INSERT_FAILED: "lost the race and could not be merged: dropped (insert_failed, drop)",
            NO_CONFIRM: "nothing to insert",
            NOT_REACHED: "never reached the confirm hook",
        }[self.outcome]
        sent = self.verdict is not None and bool(self.verdict.sent)
        place = "" if self.confirmed_at is None else f"confirm #{self.confirmed_at + 1}, "
        return f"CPU {self.cpu}: {place}{what}; packet {'sent' if sent else 'not sent'}"


def race(router: RouterLike, packets: Sequence[Packet], order: Sequence[int] | None = None,
         trace: bool = False) -> list[Lane]:
    """Run ``packets`` (parsed Packets with ``iif`` set) through ``router`` at the same
    time, one per CPU, and confirm them in ``order`` (indexes into ``packets``; default
    0, 1, ...).  Returns one :class:`Lane` per packet, in packet order.
    """
    n = len(packets)
    order = list(range(n)) if order is None else list(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"confirm order {order}: name each of the {n} packets (0..{n - 1}) "
                         "exactly once")
    table = router.ct
    lanes = [Lane(i, p) for i, p in enumerate(packets)]
    parked: dict[int, Packet] = {}        # lane -> its packet, waiting at the confirm hook
    verdicts: dict[int, int] = {}         # lane -> what its confirm returned
    running: list[int] = []               # the lane whose code runs now (innermost last)
    real_confirm = table.confirm

    def confirm_all() -> None:
        for place, i in enumerate(k for k in order if k in parked):
            pkt = parked[i]
            new = pkt.ct is not None and not pkt.ct.is_confirmed()
            before = table.stats["clash_resolve"]
            verdicts[i] = real_confirm(pkt)
            lanes[i].confirmed_at = place
            lanes[i].outcome = _outcome(new, verdicts[i], pkt, before != table.stats["clash_resolve"])

    def run(i: int) -> None:
        if i == n:
            confirm_all()
            return
        running.append(i)
        lanes[i].verdict = router.receive(packets[i], trace)
        running.pop()
        if i not in parked:               # it never got to the confirm hook: the next CPU
            run(i + 1)

    def held_confirm(pkt: Packet) -> int:
        # The first confirm of each lane waits there while the other CPUs run theirs.
        i = running[-1]
        if i in parked:
            return real_confirm(pkt)
        parked[i] = pkt
        run(i + 1)
        return verdicts[i]

    table.confirm = held_confirm  # type: ignore[method-assign]  # the router calls self.ct.confirm
    try:
        run(0)
    finally:
        del table.confirm
    for lane in lanes:
        if trace and lane.verdict is not None and lane.verdict.steps is not None:
            lane.verdict.steps.append((f"CPU {lane.cpu}", lane.describe()))
    return lanes


def _outcome(new: bool, verdict: int, pkt: Packet, clash_resolved: bool) -> str:
    if not new:
        return NO_CONFIRM
    if verdict == NF_DROP:
        return INSERT_FAILED
    if clash_resolved:
        return NAT_CLASH if pkt.ct.status & IPS_NAT_CLASH else MERGED
    return INSERTED
