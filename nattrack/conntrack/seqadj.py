"""TCP sequence number adjustment after a helper changed a payload's length.

Models net/netfilter/nf_conntrack_seqadj.c: nf_ct_seqadj_set(), nf_ct_seq_adjust()
(with nf_ct_sack_adjust()) and nf_ct_seq_offset().  When NAT rewrites "PORT 10,0,0,2,..."
as "PORT 203,0,113,1,..." the sender's later bytes sit 3 further on: every later segment
of that direction gets its sequence number moved by the offset, every segment the other
way its ACK (and SACK blocks) moved back, and conntrack's window check (tcp_in_window)
reads ACKs through nf_ct_seq_offset().

Per entry and direction: the position of the last correction, the offset before it and
the offset after it (struct nf_ct_seqadj); kept in ``ConntrackTable.seqadj``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..packet.checksum import checksum, pseudo_header_sum
from .conn import IPS_SEQ_ADJUST, ctinfo_dir

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable

M = 0xFFFFFFFF
TCPOPT_SACK = 5


def after(a: int, b: int) -> bool:
    return ((b - a) & M) >= 0x80000000


class SeqAdj:
    """struct nf_ct_seqadj: one direction's correction."""
    __slots__ = ("correction_pos", "offset_before", "offset_after")

    def __init__(self) -> None:
        self.correction_pos = self.offset_before = self.offset_after = 0

    def offset(self, seq: int) -> int:
        return self.offset_after if after(seq, self.correction_pos) else self.offset_before


def seqadj_set(table: ConntrackTable, ct: Conn, ctinfo: int, seq: int, off: int) -> None:
    """nf_ct_seqadj_set(): from ``seq`` on, this direction's bytes move by ``off`` more."""
    if off == 0:
        return
    ways = table.seqadj.setdefault(ct, (SeqAdj(), SeqAdj()))
    ct.status |= IPS_SEQ_ADJUST
    this = ways[ctinfo_dir(ctinfo)]
    if this.offset_before == this.offset_after or after(seq, this.correction_pos):
        this.correction_pos = seq
        this.offset_before = this.offset_after
        this.offset_after += off


def seq_offset(table: ConntrackTable, ct: Conn, direction: int, seq: int) -> int:
    """nf_ct_seq_offset(): how far ``seq`` of ``direction`` has been moved."""
    ways = table.seqadj.get(ct) if table.seqadj else None
    return ways[direction].offset(seq) if ways is not None else 0


def seq_adjust(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int) -> bool:
    """nf_ct_seq_adjust(): move the segment's sequence number, ACK and SACK blocks, then
    the TCP checksum (the kernel updates it incrementally: the same result)."""
    ways = table.seqadj.get(ct)
    if ways is None or not pkt.l4ok:
        return True
    d = ctinfo_dir(ctinfo)
    this, other = ways[d], ways[1 - d]
    buf, l4 = pkt.buf, pkt.l4
    seq = int.from_bytes(buf[l4 + 4:l4 + 8], "big")
    newseq = (seq + this.offset(seq)) & M
    buf[l4 + 4:l4 + 8] = newseq.to_bytes(4, "big")
    pkt.seq = newseq
    if pkt.tcpflags & 0x10:                               # ACK
        ack = int.from_bytes(buf[l4 + 8:l4 + 12], "big")
        ackoff = other.offset_after if after((ack - other.offset_before) & M,
                                             other.correction_pos) else other.offset_before
        newack = (ack - ackoff) & M
        buf[l4 + 8:l4 + 12] = newack.to_bytes(4, "big")
        pkt.ack = newack
        _sack_adjust(pkt, other)
    _tcp_checksum(pkt)
    return True


def _sack_adjust(pkt: Packet, other: SeqAdj) -> None:
    """nf_ct_sack_adjust() / nf_ct_sack_block_adjust(): each SACK edge moved back."""
    buf, i, end = pkt.buf, pkt.l4 + 20, pkt.l4 + pkt.doff
    while i < end:
        kind = buf[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            return
        size = buf[i + 1]
        if kind == TCPOPT_SACK and (size - 2) % 8 == 0:
            for j in range(i + 2, i + size, 4):
                edge = int.from_bytes(buf[j:j + 4], "big")
                off = (other.offset_after if after((edge - other.offset_before) & M,
                                                   other.correction_pos)
                       else other.offset_before)
                buf[j:j + 4] = ((edge - off) & M).to_bytes(4, "big")
        i += size


def _tcp_checksum(pkt: Packet) -> None:
    """The TCP checksum over the segment as it now is."""
    buf, l4, n = pkt.buf, pkt.l4, pkt.l4len
    buf[l4 + 16:l4 + 18] = b"\0\0"
    csum = checksum(buf[l4:l4 + n], pseudo_header_sum(pkt.src, pkt.dst, 6, n))
    buf[l4 + 16:l4 + 18] = csum.to_bytes(2, "big")
