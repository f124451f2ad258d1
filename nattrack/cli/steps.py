"""Step-by-step replay output: each packet's path through the hooks, then the table."""
from __future__ import annotations

from ..conntrack import show
from ..packet.ipv4 import Packet

class StepPrinter:
    """on_packet callback for replay_captures(): prints to a text stream."""

    def __init__(self, out) -> None:
        self.out = out
        self.n = 0
        self.t0: float | None = None

    def __call__(self, pkt: Packet, verdict, router) -> None:
        self.n += 1
        if self.t0 is None:
            self.t0 = pkt.ts
        w = self.out.write
        w(f"\n#{self.n} +{pkt.ts - self.t0:.3f}s\n")
        for hook, note in verdict.steps:
            w(f"    {hook:<13} {note}\n")
        for sent in verdict.sent:
            if sent.pkt is not None:
                w(f"    {'sent':<13} on {sent.oif}: {sent.pkt.summary()}\n")
                break
        table = router.ct
        now_j = table.jiffies()
        lines = [show.format_conn(ct, now_j) for ct in table.conns(reap=False)]
        w("    table:" + ("" if lines else " (empty)") + "\n")
        for line in lines:
            w(f"      {line}\n")
