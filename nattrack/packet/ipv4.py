"""IPv4 datagrams in a mutable buffer: parsed once with struct, rewritten in place.

The hot loop never dissects with scapy (0.3-1 ms a packet); it reads the few
header fields conntrack and NAT need with struct.unpack_from and patches the
buffer with RFC 1624 incremental checksum updates, as nf_nat_proto.c does.

What the kernel's ip_rcv() would drop before netfilter (bad version, header
length or header checksum, total length beyond the data) makes parse() return
None.  A valid IP header with a truncated or inconsistent L4 header parses
with ``l4ok = False``: conntrack then classifies the packet INVALID.
"""
from __future__ import annotations

import struct
from typing import Any

from .checksum import checksum, csum_replace2, csum_replace4, ones_sum, pseudo_header_sum

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
ETH_HLEN = 14
ETH_P_IP = 0x0800

# TCP flag bits
TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG, TH_ECE, TH_CWR = 1, 2, 4, 8, 16, 32, 64, 128

_IPHDR = struct.Struct("!BBHHHBBHII")
_PORTS = struct.Struct("!HH")
_TCPHDR = struct.Struct("!HHIIBBHHH")
_ICMPHDR = struct.Struct("!BBHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# The ICMP types whose header carries an identifier (echo, timestamp, info, address mask),
# requests and replies; and the error types, which quote a datagram (icmp_pointers[].error).
ICMP_QUERY_TYPES = frozenset((0, 8, 13, 14, 15, 16, 17, 18))
ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
NR_ICMP_TYPES = 18                  # include/uapi/linux/icmp.h: the highest type known


class Packet:
    """One IPv4 datagram at offset ``off`` of ``buf`` (after a link header, if any).

    Fields are plain attributes read once by parse(); the set_* methods rewrite
    the buffer and keep every checksum right.  ``iif``/``oif`` are interface
    names, ``ts`` the capture time; ``frag_sizes`` remembers the fragments a
    reassembled datagram came in, so it can leave fragmented as it came.
    """
    __slots__ = ("buf", "off", "ihl", "tot_len", "proto", "src", "dst", "frag", "mf", "ipid",
                 "ttl", "l4", "l4len", "l4ok", "sport", "dport", "tcpflags", "seq", "ack",
                 "win", "doff", "itype", "icode", "iif", "oif", "ts", "frag_sizes",
                 "embedded", "ct", "ctinfo")
    # The slots' types, for readers and mypy (annotations without values make no class attributes).
    buf: bytearray | memoryview   # a memoryview: kernel mode's shadow parses a frame in its slot
    off: int
    ihl: int
    tot_len: int
    proto: int
    src: int
    dst: int
    frag: int                   # fragment offset in bytes
    mf: bool
    ipid: int
    ttl: int
    l4: int                     # offset of the L4 header in buf
    l4len: int
    l4ok: bool
    sport: int
    dport: int
    tcpflags: int
    seq: int
    ack: int
    win: int
    doff: int
    itype: int                  # -1: not ICMP
    icode: int
    iif: str | None
    oif: str | None
    ts: float
    frag_sizes: list[int] | None
    embedded: bool
    ct: Any                     # the nf_conn (nattrack.conntrack.conn.Conn), set by conntrack
    ctinfo: int | None

    @classmethod
    def parse(cls, buf: bytearray | memoryview, off: int = 0, iif: str | None = None, ts: float = 0.0,
              embedded: bool = False) -> Packet | None:
        """Parse the IPv4 header at buf[off:]; None if ip_rcv() would drop it.

        ``embedded`` parses the copy of a header inside an ICMP error: its total
        length may exceed what is there and only the first 8 L4 bytes are sure.
        """
        avail = len(buf) - off
        if avail < 20:
            return None
        vihl, _tos, tot_len, ipid, frag, ttl, proto, _csum, src, dst = _IPHDR.unpack_from(buf, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or ihl > avail:
            return None
        if not embedded:
            if tot_len < ihl or tot_len > avail:
                return None
            if ones_sum(buf[off:off + ihl]) != 0xFFFF:
                return None
        p = cls()
        p.buf, p.off, p.ihl, p.tot_len, p.proto = buf, off, ihl, tot_len, proto
        p.src, p.dst, p.ipid, p.ttl = src, dst, ipid, ttl
        p.frag, p.mf = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        p.iif, p.oif, p.ts, p.frag_sizes, p.embedded = iif, None, ts, None, embedded
        p.ct = p.ctinfo = None
        p.l4 = off + ihl
        end = off + tot_len if not embedded else len(buf)
        p.l4len = max(0, min(end, len(buf)) - p.l4)
        p.sport = p.dport = p.tcpflags = p.seq = p.ack = p.win = p.doff = 0
        p.itype = p.icode = -1
        p.l4ok = False
        if p.frag == 0:
            p._parse_l4()
        return p

    def _parse_l4(self) -> None:
        buf, l4, n = self.buf, self.l4, self.l4len
        proto = self.proto
        if proto == IPPROTO_TCP:
            if self.embedded:
                if n >= 8:
                    self.sport, self.dport, self.seq = struct.unpack_from("!HHI", buf, l4)
                    self.l4ok = True
                return
            if n < 20:
                return
            (self.sport, self.dport, self.seq, self.ack, doff, self.tcpflags, self.win,
             _c, _u) = _TCPHDR.unpack_from(buf, l4)
            self.doff = (doff >> 4) * 4
            self.l4ok = 20 <= self.doff <= n
        elif proto == IPPROTO_UDP:
            if n < 8:
                return
            self.sport, self.dport = _PORTS.unpack_from(buf, l4)
            ulen = struct.unpack_from("!H", buf, l4 + 4)[0]
            self.l4ok = self.embedded or 8 <= ulen <= n
        elif proto == IPPROTO_ICMP:
            if n < 8:
                return
            self.itype, self.icode, _c, ident = _ICMPHDR.unpack_from(buf, l4)
            self.sport = ident if self.itype in ICMP_QUERY_TYPES else 0
            self.l4ok = True
        else:
            self.l4ok = True

    # --- payload and options ---------------------------------------------------------

    @property
    def payload_len(self) -> int:
        """TCP segment data length (what tcp_in_window adds to seq)."""
        return self.l4len - self.doff if self.proto == IPPROTO_TCP else max(0, self.l4len - 8)

    def tcp_options(self) -> tuple[int | None, bool, int | None]:
        """(window scale, SACK permitted, highest SACK right edge) from the TCP options.

        Models tcp_options() and tcp_sack() of nf_conntrack_proto_tcp.c.
        """
        buf, i, end = self.buf, self.l4 + 20, self.l4 + self.doff
        wscale, sackok, sack = None, False, None
        while i < end:
            kind = buf[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end:
                break
            size = buf[i + 1]
            if size < 2 or i + size > end:
                break
            if kind == 3 and size == 3:
                wscale = min(buf[i + 2], 14)
            elif kind == 4 and size == 2:
                sackok = True
            elif kind == 5 and size >= 10 and (size - 2) % 8 == 0:
                for j in range(i + 2, i + size, 8):
                    edge = struct.unpack_from("!I", buf, j + 4)[0]
                    if sack is None or ((edge - sack) & 0xFFFFFFFF) < 0x80000000:
                        sack = edge
            i += size
        return wscale, sackok, sack

    def embedded_packet(self) -> Packet | None:
        """The datagram quoted inside an ICMP error (header + first L4 bytes)."""
        inner = self.l4 + 8
        if self.proto != IPPROTO_ICMP or self.l4len < 8 + 20:
            return None
        view = Packet.parse(self.buf, inner, embedded=True)
        return view

    # --- checksum verification (nf_conntrack_checksum) ------------------------------

    def l4_checksum_ok(self) -> bool:
        """nf_checksum(): verify the TCP/UDP/ICMP checksum of a whole datagram."""
        buf, l4, proto = self.buf, self.l4, self.proto
        data = buf[l4:l4 + self.l4len]          # a copy is cheaper than a memoryview when small
        if proto == IPPROTO_ICMP:
            return ones_sum(data) == 0xFFFF
        if proto == IPPROTO_UDP and buf[l4 + 6:l4 + 8] == b"\0\0":
            return True
        if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
            start = pseudo_header_sum(self.src, self.dst, proto, self.l4len)
            return ones_sum(data, start) == 0xFFFF
        return True

    # --- rewriting (nf_nat_ipv4_manip_pkt and the l4 manip functions) ---------------

    def _l4_csum_offset(self) -> int | None:
        """Where the L4 checksum sits, if it is present and must be patched."""
        if self.frag:
            return None
        if self.proto == IPPROTO_TCP and self.l4len >= 20:
            return self.l4 + 16
        if self.proto == IPPROTO_UDP and self.l4len >= 8:
            if self.buf[self.l4 + 6] | self.buf[self.l4 + 7]:
                return self.l4 + 6
        return None

    def _patch16(self, at: int, csum_at: int, value: int) -> None:
        buf = self.buf
        old = buf[at] << 8 | buf[at + 1]
        _U16.pack_into(buf, at, value)
        c = buf[csum_at] << 8 | buf[csum_at + 1]
        c = csum_replace2(c, old, value)
        if c == 0 and self.proto == IPPROTO_UDP:
            c = 0xFFFF       # CSUM_MANGLED_0: 0 means "no checksum" in UDP
        _U16.pack_into(buf, csum_at, c)

    def set_addr(self, is_src: bool, addr: int) -> None:
        """Write a new source or destination address, patching IP and L4 checksums."""
        at = self.off + (12 if is_src else 16)
        buf = self.buf
        old = _U32.unpack_from(buf, at)[0]
        if old == addr:
            return
        _U32.pack_into(buf, at, addr)
        ipc = self.off + 10
        _U16.pack_into(buf, ipc, csum_replace4(buf[ipc] << 8 | buf[ipc + 1], old, addr))
        l4c = self._l4_csum_offset()
        if l4c is not None:
            c = csum_replace4(buf[l4c] << 8 | buf[l4c + 1], old, addr)
            if c == 0 and self.proto == IPPROTO_UDP:
                c = 0xFFFF
            _U16.pack_into(buf, l4c, c)
        if is_src:
            self.src = addr
        else:
            self.dst = addr

    def set_port(self, is_src: bool, port: int) -> None:
        """Write a TCP/UDP port (or the ICMP query id for the source side)."""
        if self.proto == IPPROTO_ICMP:
            if is_src and self.itype in ICMP_QUERY_TYPES and port != self.sport:
                self._patch16(self.l4 + 4, self.l4 + 2, port)
                self.sport = port
            return
        if self.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return
        at = self.l4 if is_src else self.l4 + 2
        if (self.sport if is_src else self.dport) == port:
            return
        l4c = self._l4_csum_offset()
        if l4c is None:
            struct.pack_into("!H", self.buf, at, port)
        else:
            self._patch16(at, l4c, port)
        if is_src:
            self.sport = port
        else:
            self.dport = port

    def decrease_ttl(self) -> None:
        """ip_decrease_ttl(): TTL - 1 with the header checksum patched."""
        buf, at = self.buf, self.off + 8
        old = buf[at] << 8 | buf[at + 1]
        buf[at] -= 1
        self.ttl -= 1
        c = csum_replace2(buf[at + 2] << 8 | buf[at + 3], old, old - 0x100)
        buf[at + 2], buf[at + 3] = c >> 8, c & 0xFF

    def recompute_icmp_checksum(self) -> None:
        """Full ICMP checksum, as nf_nat_icmp_reply_translation() does for errors."""
        buf, l4 = self.buf, self.l4
        buf[l4 + 2:l4 + 4] = b"\0\0"
        struct.pack_into("!H", buf, l4 + 2, checksum(memoryview(buf)[l4:l4 + self.l4len]))

    def ip_bytes(self) -> bytes:
        """The datagram (link header and trailing padding excluded)."""
        return bytes(self.buf[self.off:self.off + self.tot_len])

    def summary(self) -> str:
        """A tcpdump-like one-line description."""
        src, dst = _ntoa(self.src), _ntoa(self.dst)
        if self.frag or self.mf:
            return f"{src} > {dst}: fragment proto {self.proto} offset {self.frag}{' MF' if self.mf else ''}"
        if self.proto == IPPROTO_TCP:
            flags = "".join(ch for bit, ch in _TCP_LETTERS if self.tcpflags & bit) or "none"
            return f"{src}.{self.sport} > {dst}.{self.dport}: tcp [{flags}] seq {self.seq} len {self.payload_len}"
        if self.proto == IPPROTO_UDP:
            return f"{src}.{self.sport} > {dst}.{self.dport}: udp len {self.payload_len}"
        if self.proto == IPPROTO_ICMP:
            ident = f" id {self.sport}" if self.itype in ICMP_QUERY_TYPES else ""
            return f"{src} > {dst}: icmp type {self.itype} code {self.icode}{ident}"
        return f"{src} > {dst}: proto {self.proto} len {self.l4len}"

    def __repr__(self) -> str:
        return f"<Packet {self.summary()} iif={self.iif}>"


_TCP_LETTERS = ((TH_SYN, "S"), (TH_FIN, "F"), (TH_RST, "R"), (TH_PSH, "P"), (TH_ACK, "."), (TH_URG, "U"))


def _ntoa(addr: int) -> str:
    return f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}"
