"""The TCP segments a router's own stack answers with: RSTs and a listener's SYN-ACK.

Models tcp_v4_send_reset() and tcp_v4_send_synack() (net/ipv4/tcp_ipv4.c), sent through
ip_send_unicast_reply() / ip_build_and_send_pkt().  Which segment gets which answer is the
router's decision (``stack.Router._tcp_rcv``).
"""
from __future__ import annotations

import struct

from ..packet.checksum import checksum, pseudo_header_sum
from ..packet.ipv4 import IPPROTO_TCP, TH_ACK, TH_FIN, TH_RST, TH_SYN, Packet

IPTOS_ECN_MASK = 0x03
IP_DF = 0x4000
IP_DEFAULT_TTL = 64                                 # net.ipv4.ip_default_ttl
SYNACK_WINDOW = 64240                               # tcp_select_initial_window() for MSS 1460


def tcp_v4_send_reset(pkt: Packet, tos: int | None = None) -> Packet:
    """tcp_v4_send_reset(): for a segment with ACK a RST with seq = its ack_seq;
    otherwise RST|ACK with seq 0 and ack = seq + SYN + FIN + data length.  Window 0,
    no options; from the per-CPU control socket (ip_send_unicast_reply()): TOS the
    segment's without ECN bits, TTL ip_default_ttl, DF set, so IP id 0
    (ip_select_ident(): DF and no connected socket)."""
    if pkt.tcpflags & TH_ACK:
        seq, ack, flags = pkt.ack, 0, TH_RST
    else:
        seglen = bool(pkt.tcpflags & TH_SYN) + bool(pkt.tcpflags & TH_FIN) + pkt.payload_len
        seq, ack, flags = 0, (pkt.seq + seglen) & 0xFFFFFFFF, TH_RST | TH_ACK
    if tos is None:
        tos = pkt.buf[pkt.off + 1] & ~IPTOS_ECN_MASK
    return _tcp_segment(pkt, tos, seq, ack, flags, 0, b"")


def tcp_v4_send_synack(pkt: Packet, isn: int, mss: int) -> Packet:
    """tcp_v4_send_synack() from a listener: SYN|ACK acknowledging the SYN, IP id 0 with
    DF, TOS 0 (tcp_reflect_tos off), window 64240 and only an MSS option.  A real
    listener adds what the SYN offered (SACK permitted, timestamps, window scale) and
    draws its sequence number ``isn`` from secure_tcp_seq(), a keyed hash: here it is
    random."""
    options = struct.pack("!BBH", 2, 4, mss)
    return _tcp_segment(pkt, 0, isn, (pkt.seq + 1) & 0xFFFFFFFF, TH_SYN | TH_ACK,
                        SYNACK_WINDOW, options)


def _tcp_segment(to: Packet, tos: int, seq: int, ack: int, flags: int, window: int,
                 options: bytes) -> Packet:
    """A TCP segment from the router answering ``to`` (its addresses and ports swapped):
    DF set, IP id 0, TTL ip_default_ttl, checksums right."""
    doff = (20 + len(options)) // 4
    tcp = bytearray(struct.pack("!HHIIBBHHH", to.dport, to.sport, seq, ack, doff << 4, flags,
                                window, 0, 0) + options)
    start = pseudo_header_sum(to.dst, to.src, IPPROTO_TCP, len(tcp))
    struct.pack_into("!H", tcp, 16, checksum(tcp, start))
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x45, tos, 20 + len(tcp), 0, IP_DF,
                                IP_DEFAULT_TTL, IPPROTO_TCP, 0, to.dst, to.src))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    seg = Packet.parse(hdr + tcp, 0, iif=None, ts=to.ts)
    assert seg is not None                  # a datagram built whole always parses
    return seg
