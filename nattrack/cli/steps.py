"""Step-by-step replay output: each packet's path through the hooks, then the table."""
from __future__ import annotations

from ..conntrack import show
from ..conntrack.tuple import PROTO_NAMES, int2ip
from ..packet.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, Packet

TCP_FLAG_LETTERS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"))


def describe(pkt: Packet) -> str:
    """A tcpdump-like one-line summary of a datagram."""
    src, dst = int2ip(pkt.src), int2ip(pkt.dst)
    if pkt.proto == IPPROTO_TCP:
        flags = "".join(ch for bit, ch in TCP_FLAG_LETTERS if pkt.tcpflags & bit) or "none"
        return f"{src}.{pkt.sport} > {dst}.{pkt.dport}: tcp [{flags}] seq {pkt.seq} len {pkt.payload_len}"
    if pkt.proto == IPPROTO_ICMP:
        return f"{src} > {dst}: icmp type {pkt.itype} code {pkt.icode} id {pkt.sport}"
    name = PROTO_NAMES.get(pkt.proto, str(pkt.proto))
    return f"{src}.{pkt.sport} > {dst}.{pkt.dport}: {name} len {pkt.payload_len}"


class StepPrinter:
    """on_packet callback for replay_captures(): prints to a text stream."""

    def __init__(self, out) -> None:
        self.out = out
        self.n = 0
        self.t0 = None

    def __call__(self, pkt: Packet, verdict, router) -> None:
        self.n += 1
        if self.t0 is None:
            self.t0 = pkt.ts
        w = self.out.write
        w(f"\n#{self.n} +{pkt.ts - self.t0:.3f}s in {pkt.iif}: {describe(pkt)}\n")
        for hook, note in verdict.steps:
            w(f"    {hook:<13} {note}\n")
        for sent in verdict.sent:
            if sent.pkt is not None:
                w(f"    out {sent.oif}: {describe(sent.pkt)}\n")
                break
        table = router.ct
        now_j = table.jiffies()
        lines = [show.format_conn(ct, now_j) for ct in table.conns(reap=False)]
        w("    table:" + ("" if lines else " (empty)") + "\n")
        for line in lines:
            w(f"      {line}\n")
