"""The FTP conntrack helper: PORT/EPRT and 227/229 in the control connection.

Models net/netfilter/nf_conntrack_ftp.c (6.18): help(), find_pattern(), try_rfc959(),
try_rfc1123(), try_eprt(), try_epsv_response(), get_port(), find_nl_seq(),
update_nl_seq().  The helper is attached only by a rule (``-j CT --helper ftp``,
``ct helper set``): since 6.0 the kernel never attaches one by port.

What the kernel does, and so this module:

* Only packets of an established control connection with payload are read.
* A packet is searched only if it starts right after a newline seen earlier in the same
  direction (its sequence number is one of the two remembered ``seq_aft_nl``); so the
  very first line each way is never searched.  A packet ending in ``\\n`` records the
  sequence number after it.
* Client to server: ``PORT a,b,c,d,p,q`` and ``EPRT |1|a.b.c.d|port|``; server to
  client: ``227 `` (the first digit on starts ``a,b,c,d,p,q``) and ``229 (|||port|)``.
  The patterns are case-insensitive and must open the packet.  A packet that is a
  prefix of a pattern, or a pattern whose numbers do not parse, is dropped (the kernel
  logs "partial matching").
* The address in the command must be the sender's own (else no expectation: the
  module's ``loose=0``); the expected connection comes from the other end of the control
  connection to that address and port, any source port (expect.Expectation).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .conn import IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IPS_NAT_MASK, ctinfo_dir
from .expect import FULL_MASK, Expectation
from .tuple import IPPROTO_TCP
from .uapi import NF_ACCEPT, NF_DROP

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable

# A number parser: (data, terminator, sender's address) -> (length, shift, address, port).
Parser = Callable[[bytes, "int | None", int], "tuple[int, int, int, int]"]

NUM_SEQ_TO_REMEMBER = 2
# The expected data connection: source address, destination address and port fixed.
FTP_MASK = FULL_MASK._replace(sport=0)


class FtpMaster:
    """struct nf_ct_ftp_master: the sequence numbers just after a newline, per direction."""
    __slots__ = ("seq_aft_nl",)
    name = "ftp"

    def __init__(self) -> None:
        self.seq_aft_nl: tuple[list[int], list[int]] = ([], [])

    def help(self, table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int) -> int:
        return help_ftp(table, ct, self, pkt, ctinfo)


def _isdigit(c: int) -> bool:
    return 48 <= c <= 57


def try_number(data: bytes, size: int, sep: int, term: int | None) -> tuple[int, list[int]]:
    """try_number(): (length, numbers) of ``size`` numbers split by ``sep`` and ended by
    ``term`` (any character if None); length 0 if they do not parse."""
    nums = [0] * size
    i = 0
    for length, c in enumerate(data):
        if i >= size:
            break
        if _isdigit(c):
            nums[i] = (nums[i] * 10 + c - 48) & 0xFFFFFFFF
        elif c == sep:
            i += 1
        elif (term is None or c == term) and i == size - 1:
            return length, nums
        else:
            return 0, nums
    return 0, nums


def _addr(n: list[int]) -> int:
    return ((n[0] << 24) | (n[1] << 16) | (n[2] << 8) | n[3]) & 0xFFFFFFFF


def try_rfc959(data: bytes, term: int | None) -> tuple[int, int, int, int]:
    """try_rfc959(): ``a,b,c,d,p,q`` -> (length, offset shift, address, port)."""
    length, n = try_number(data, 6, ord(","), term)
    return length, 0, _addr(n), ((n[4] << 8) | n[5]) & 0xFFFF


def try_rfc1123(data: bytes, term: int | None) -> tuple[int, int, int, int]:
    """try_rfc1123(): the 227 reply's numbers start at its first digit (RFC 1123 4.1.2.6)."""
    for i, c in enumerate(data):
        if _isdigit(c):
            length, _, addr, port = try_rfc959(data[i:], None)
            return length, i, addr, port
    return 0, 0, 0, 0


def get_port(data: bytes, start: int, delim: int) -> tuple[int, int]:
    """get_port(): (end offset after the delimiter, port), or (0, 0); a u16 that wraps."""
    port = 0
    for i in range(start, len(data)):
        c = data[i]
        if c == delim:
            return (i + 1, port) if port else (0, 0)
        if not _isdigit(c):
            break
        port = (port * 10 + c - 48) & 0xFFFF
    return 0, 0


def _bad_delim(data: bytes) -> bool:
    d = data[0]
    return _isdigit(d) or d < 33 or d > 126


def try_eprt(data: bytes, term: int | None, sender: int) -> tuple[int, int, int, int]:
    """try_eprt(): ``|1|a.b.c.d|port|`` (IPv4 only here)."""
    if len(data) <= 3 or _bad_delim(data) or data[2] != data[0] or data[1] != ord("1"):
        return 0, 0, 0, 0
    delim = data[0]
    length, n = try_number(data[3:], 4, ord("."), delim)
    if not length:
        return 0, 0, 0, 0
    end, port = get_port(data, 3 + length + 1, delim)
    return end, 0, _addr(n), port


def try_epsv_response(data: bytes, term: int | None, sender: int) -> tuple[int, int, int, int]:
    """try_epsv_response(): ``|||port|``; the address is the sender's own."""
    if len(data) <= 3 or _bad_delim(data) or data[1] != data[0] or data[2] != data[0]:
        return 0, 0, 0, 0
    end, port = get_port(data, 3, data[0])
    return end, 0, sender, port


# The kinds of announcement (enum nf_ct_ftp_type), as SEARCH lists them.
FTP_TYPES = (("PORT", "EPRT"), ("PASV", "EPSV"))
# nf_nat_ftp_hook: nattrack.nat.ftp registers nf_nat_ftp() here (the kernel's RCU hook),
# called instead of expecting the connection as announced when the entry is NATed.
nf_nat_ftp_hook: Callable[..., int] | None = None

# search[dir]: (pattern, skip character, terminator, parser)
SEARCH: tuple[tuple[tuple[bytes, int | None, int | None, Parser], ...], ...] = (
    ((b"PORT", ord(" "), ord("\r"), lambda d, t, s: try_rfc959(d, t)),
     (b"EPRT", ord(" "), ord("\r"), try_eprt)),
    ((b"227 ", None, None, lambda d, t, s: try_rfc1123(d, t)),
     (b"229 ", ord("("), ord(")"), try_epsv_response)),
)


def find_pattern(data: bytes, pattern: bytes, skip: int | None, term: int | None,
                 getnum: Parser, sender: int) -> tuple[int, int, int, int, int]:
    """find_pattern(): (1 match, 0 none, -1 partial), address, port, and where the
    numbers are in the payload (matchoff, matchlen: what nf_nat_ftp rewrites)."""
    plen = len(pattern)
    if len(data) <= plen:
        return (-1 if data.lower() == pattern[:len(data)].lower() else 0), 0, 0, 0, 0
    if data[:plen].lower() != pattern.lower():
        return 0, 0, 0, 0, 0
    i = plen
    if skip is not None:
        while data[i] != skip:
            if i == len(data) - 1:
                return -1, 0, 0, 0, 0
            i += 1
        i += 1
    length, shift, addr, port = getnum(data[i:], term, sender)
    return (1 if length else -1), addr, port, i + shift, length


def help_ftp(table: ConntrackTable, ct: Conn, info: FtpMaster, pkt: Packet, ctinfo: int) -> int:
    """help() of nf_conntrack_ftp.c for one packet of the control connection."""
    if ctinfo not in (IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY) or not pkt.l4ok:
        return NF_ACCEPT
    start = pkt.l4 + pkt.doff
    end = pkt.l4 + pkt.l4len
    if start >= end:
        return NF_ACCEPT
    data = bytes(pkt.buf[start:end])
    d = ctinfo_dir(ctinfo)
    seq = (pkt.seq + len(data)) & 0xFFFFFFFF
    ends_in_nl = data[-1:] == b"\n"
    ret = NF_ACCEPT
    if pkt.seq in info.seq_aft_nl[d]:
        sender = ct.tuple(d).src
        found = addr = port = matchoff = matchlen = kind = 0
        for kind in range(len(SEARCH[d])):
            pattern, skip, term, getnum = SEARCH[d][kind]
            found, addr, port, matchoff, matchlen = find_pattern(data, pattern, skip, term,
                                                                 getnum, sender)
            if found:
                break
        if found == -1:
            table.log.append(f"nf_ct_ftp: dropping packet: partial matching of "
                             f"`{pattern.decode()}'")
            return NF_DROP
        if found == 1 and addr == sender:
            other = ct.tuple(1 - d)
            exp = Expectation(ct, other._replace(proto=IPPROTO_TCP, sport=0, dport=port),
                              FTP_MASK, "ftp")
            if nf_nat_ftp_hook is not None and ct.status & IPS_NAT_MASK:
                ret = nf_nat_ftp_hook(table, pkt, ct, ctinfo, FTP_TYPES[d][kind], matchoff,
                                      matchlen, exp)
            elif not table.expect.related(exp):
                table.log.append("nf_ct_ftp: dropping packet: cannot add expectation")
                ret = NF_DROP
    if ends_in_nl:
        update_nl_seq(info, d, seq)
    return ret


def _before(a: int, b: int) -> bool:
    return (a - b) & 0x80000000 != 0


def update_nl_seq(info: FtpMaster, d: int, nl_seq: int) -> None:
    """update_nl_seq(): remember up to two; a full list replaces its oldest if newer."""
    seqs = info.seq_aft_nl[d]
    if nl_seq in seqs:
        return
    if len(seqs) < NUM_SEQ_TO_REMEMBER:
        seqs.append(nl_seq)
        return
    oldest = 0 if _before(seqs[0], seqs[1]) else 1
    if _before(seqs[oldest], nl_seq):
        seqs[oldest] = nl_seq


HELPERS = {"ftp": FtpMaster}
