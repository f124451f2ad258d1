"""Internet checksums: full computation (RFC 1071) and incremental update (RFC 1624).

Models csum_replace4()/inet_proto_csum_replace{2,4}() of include/net/checksum.h,
which nf_nat_proto.c uses to patch headers after NAT.  Eqn. 3 of RFC 1624,
HC' = ~(~HC + ~m + m'), gives the same value as a full recomputation (there is
no -0 ambiguity), which tests/test_checksum.py checks on random packets.
"""
from __future__ import annotations



def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """One's-complement sum of 16-bit big-endian words (plus ``start``), folded to 16 bits.

    Folding with end-around carry is arithmetic modulo 0xFFFF, except that a
    non-zero multiple of 0xFFFF folds to 0xFFFF, not 0; so the whole buffer can
    be read as one big integer (C speed) instead of word by word.
    """
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8                                 # pad the odd byte with a zero
    total = v + start
    s = total % 0xFFFF
    return 0xFFFF if s == 0 and total else s


def checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The Internet checksum of data (with an optional partial sum added)."""
    return ~ones_sum(data, start) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header used by TCP and UDP."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


def csum_replace2(csum: int, old: int, new: int) -> int:
    """Update a checksum for one 16-bit field changing from old to new."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_replace4(csum: int, old: int, new: int) -> int:
    """Update a checksum for one 32-bit field (an IPv4 address) changing."""
    s = ((~csum & 0xFFFF) + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF)
         + (new >> 16) + (new & 0xFFFF))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
