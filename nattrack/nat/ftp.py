"""NAT of FTP's announcements: the address and port in PORT/EPRT/227/229 follow the NAT.

Models net/netfilter/nf_nat_ftp.c (nf_nat_ftp(), nf_nat_ftp_fmt_cmd()) and the parts of
nf_nat_helper.c it uses: nf_nat_exp_find_port(), __nf_nat_mangle_tcp_packet() and
nf_nat_follow_master().  Importing this module registers nf_nat_ftp() as
conntrack.helper_ftp.nf_nat_ftp_hook, as loading nf_nat_ftp.ko does.

For an announcement on a NATed control connection the expected connection comes to
where the announcing packet goes (the reply tuple's destination: the NAT address); the
port is the announced one if free, else a random one; the payload is rewritten to say
so, and a length change is recorded for sequence adjustment (conntrack/seqadj.py).  The
data connection that fulfils the expectation is NATed back to the announcer at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..conntrack import helper_ftp
from ..conntrack.conn import ctinfo_dir
from ..conntrack.core import NF_ACCEPT, NF_DROP
from ..conntrack.seqadj import _tcp_checksum, seqadj_set
from ..conntrack.tuple import int2ip
from ..packet.checksum import checksum
from .core import NF_NAT_MANIP_DST, NF_NAT_MANIP_SRC, nf_nat_setup_info
from .range import NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange

if TYPE_CHECKING:
    from ..conntrack.conn import Conn
    from ..conntrack.core import ConntrackTable
    from ..conntrack.expect import Expectation
    from ..packet.ipv4 import Packet

MAX_ATTEMPTS = 128
USHRT_MAX = 0xFFFF


def fmt_cmd(kind: str, addr: int, port: int) -> bytes:
    """nf_nat_ftp_fmt_cmd(): the numbers as the announcement writes them."""
    if kind in ("PORT", "PASV"):
        a = int2ip(addr).replace(".", ",")
        return f"{a},{port >> 8},{port & 0xFF}".encode()
    if kind == "EPRT":
        return f"|1|{int2ip(addr)}|{port}|".encode()
    return f"|||{port}|".encode()                      # EPSV


def exp_find_port(table: ConntrackTable, exp: Expectation, port: int) -> int:
    """nf_nat_exp_find_port(): the announced port if no other expectation holds it, else
    up to 128 random ones above it; 0 if none is free."""
    lo, span = port, USHRT_MAX - port
    attempts = min(span, MAX_ATTEMPTS)
    while True:
        exp.tuple = exp.tuple._replace(dport=port)
        if table.expect.related(exp):
            return port
        attempts -= 1
        if attempts < 0:
            return 0
        port = lo + table.rng.randrange(span)


def mangle_tcp_packet(table: ConntrackTable, pkt: Packet, ct: Conn, ctinfo: int,
                      matchoff: int, matchlen: int, rep: bytes) -> bool:
    """__nf_nat_mangle_tcp_packet(): replace payload bytes, fix the lengths and checksums,
    and record a length change for nf_ct_seqadj."""
    start = pkt.l4 + pkt.doff + matchoff
    grow = len(rep) - matchlen
    if pkt.tot_len + grow > 0xFFFF:                    # enlarge_skb() refuses
        return False
    buf, off = pkt.buf, pkt.off
    buf[start:start + matchlen] = rep
    pkt.tot_len += grow
    pkt.l4len += grow
    buf[off + 2:off + 4] = pkt.tot_len.to_bytes(2, "big")
    buf[off + 10:off + 12] = b"\0\0"                  # ip_send_check()
    buf[off + 10:off + 12] = checksum(buf[off:off + pkt.ihl]).to_bytes(2, "big")
    _tcp_checksum(pkt)
    if grow:
        seqadj_set(table, ct, ctinfo, pkt.seq, grow)
    return True


def nf_nat_ftp(table: ConntrackTable, pkt: Packet, ct: Conn, ctinfo: int, kind: str,
               matchoff: int, matchlen: int, exp: Expectation) -> int:
    """nf_nat_ftp(): expect the connection at the NAT address, say so in the payload."""
    d = ctinfo_dir(ctinfo)
    newaddr = ct.tuple(1 - d).dst                     # where this packet goes, after NAT
    exp.saved_port = exp.tuple.dport
    exp.dir = 1 - d
    exp.expectfn = nf_nat_follow_master
    port = exp_find_port(table, exp, exp.saved_port)
    if port == 0:
        table.log.append("nf_nat_ftp: dropping packet: all ports in use")
        return NF_DROP
    if not mangle_tcp_packet(table, pkt, ct, ctinfo, matchoff, matchlen,
                             fmt_cmd(kind, newaddr, port)):
        table.log.append("nf_nat_ftp: dropping packet: cannot mangle packet")
        if exp in table.expect.items:
            table.expect.unlink(exp)                  # nf_ct_unexpect_related()
        return NF_DROP
    return NF_ACCEPT


def nf_nat_follow_master(table: ConntrackTable, ct: Conn, exp: Expectation) -> None:
    """nf_nat_follow_master(): the new entry's source becomes where the master sends to,
    its destination the announcer, at the port it announced."""
    master = exp.master.tuple(1 - exp.dir)
    nf_nat_setup_info(table, ct, NatRange(master.dst, master.dst, 0, 0, NF_NAT_RANGE_MAP_IPS),
                      NF_NAT_MANIP_SRC)
    nf_nat_setup_info(table, ct, NatRange(master.src, master.src, exp.saved_port, exp.saved_port,
                                          NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED),
                      NF_NAT_MANIP_DST)


helper_ftp.nf_nat_ftp_hook = nf_nat_ftp
