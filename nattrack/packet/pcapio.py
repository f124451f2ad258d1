"""Capture files in and out: classic pcap and pcapng, read and written with struct.

No scapy dissection here: it is too slow for the replay loop.  Formats follow the libpcap savefile format (pcap(5),
"pcap-savefile") and draft-ietf-opsawg-pcapng: Section Header Block (either byte
order, several sections per file), Interface Description Block (if_name = option
2, if_tsresol = option 9, if_tsoffset = option 14), Enhanced, Simple and obsolete
Packet Blocks; every other block type is skipped.

A Frame is one captured link-layer frame; ip_offset() tells where its IPv4
header starts, for the link types a Linux router capture can produce.

Bad input raises CaptureError naming the file and byte offset, except a
truncated last record (a capture cut short by a full disk or a killed tcpdump):
reading stops there and CaptureReader.truncated is set.
"""
from __future__ import annotations

import heapq
import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_BSD = 12          # DLT_RAW's own value, written by some systems
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset((LINKTYPE_ETHERNET, LINKTYPE_RAW_BSD, LINKTYPE_RAW,
                                 LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_LINUX_SLL2))

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6
MAX_BLOCK = 16 * 1024 * 1024   # Wireshark's limit for one pcapng block
MAX_RECORD = 262144            # libpcap's largest snapshot length

PathOrFile = str | os.PathLike[str] | BinaryIO
CaptureSource = str | os.PathLike[str] | io.BufferedIOBase    # a reader needs readinto()


class CaptureError(ValueError):
    """A capture file that cannot be read (message names the file and byte offset)."""


class Frame:
    """One captured frame: time (s), interface name, link type, mutable bytes."""
    __slots__ = ("ts", "iface", "linktype", "data")

    def __init__(self, ts: float, iface: str | None, linktype: int, data: bytearray):
        self.ts, self.iface, self.linktype, self.data = ts, iface, linktype, data

    def __repr__(self) -> str:
        return f"<Frame ts={self.ts:.6f} iface={self.iface} linktype={self.linktype} len={len(self.data)}>"


def ip_offset(frame: Frame) -> int | None:
    """Offset of the IPv4 header in frame.data, or None if the frame is not IPv4."""
    d, lt = frame.data, frame.linktype
    if lt == LINKTYPE_ETHERNET:
        if len(d) < 14:
            return None
        etype = d[12] << 8 | d[13]
        if etype == 0x8100 and len(d) >= 18:          # one 802.1Q tag
            return 18 if (d[16] << 8 | d[17]) == 0x0800 else None
        return 14 if etype == 0x0800 else None
    if lt in (LINKTYPE_RAW, LINKTYPE_RAW_BSD, LINKTYPE_IPV4):
        return 0 if d and d[0] >> 4 == 4 else None
    if lt == LINKTYPE_LINUX_SLL:                       # protocol at bytes 14-15
        return 16 if len(d) >= 16 and (d[14] << 8 | d[15]) == 0x0800 else None
    if lt == LINKTYPE_LINUX_SLL2:                      # protocol at bytes 0-1
        return 20 if len(d) >= 20 and (d[0] << 8 | d[1]) == 0x0800 else None
    return None


class _Truncated(Exception):
    """Internal: the file ended inside a record."""


class CaptureReader:
    """Single-pass iterator over the frames of a pcap or pcapng file.

    ``iface`` names the frames of a classic pcap (which has no interface
    names); in a pcapng it only names interfaces whose IDB has no if_name,
    which otherwise read as ``if<N>`` (N = interface number in the section).
    A pcapng interface of a link type outside SUPPORTED_LINKTYPES still yields
    its frames (ip_offset() is None for them); a classic pcap of such a link
    type is refused.
    After iteration ``truncated`` tells whether the last record was cut short.
    The header is checked on construction, so a bad file fails early.
    """

    def __init__(self, source: CaptureSource, iface: str | None = None):
        if isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            # what open(source, "rb", buffering=1 << 16) builds, typed as a reader with readinto()
            self._f: io.BufferedIOBase = io.BufferedReader(io.FileIO(source, "rb"), 1 << 16)
            self._own = True
        else:
            self.name = getattr(source, "name", "<stream>")
            self._f, self._own = source, False
        self.iface = iface
        self.truncated = False
        self.offset = 0
        try:
            head = self._read(4, at_start=True)
            (magic_le,) = struct.unpack("<I", head)
            (magic_be,) = struct.unpack(">I", head)
            if magic_be == PCAPNG_SHB:
                self.format = "pcapng"
                self._e = self._shb(head + self._read(4), 0)
            elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
                self.format = "pcap"
                self._open_pcap(head, magic_le, magic_be)
            else:
                raise self._error(f"unknown magic 0x{magic_be:08x} (not pcap or pcapng)", 0)
        except _Truncated:
            self.close()
            raise self._error("file too short for a capture header", 0) from None
        except BaseException:
            self.close()
            raise

    # --- low-level helpers ---------------------------------------------------------

    def _error(self, what: str, at: int) -> CaptureError:
        return CaptureError(f"{self.name}: {what} at byte {at}")

    def _read(self, n: int, at_start: bool = False) -> bytes:
        b = self._f.read(n)
        if len(b) != n:
            if not b and at_start and self.offset == 0:
                raise self._error("empty file", 0)
            raise _Truncated
        self.offset += n
        return b

    def _readinto(self, n: int) -> bytearray:
        buf = bytearray(n)
        if self._f.readinto(buf) != n:
            raise _Truncated
        self.offset += n
        return buf

    def close(self) -> None:
        if self._own:
            self._f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        records = self._pcap_frames() if self.format == "pcap" else self._pcapng_frames()
        try:
            yield from records
        except _Truncated:
            self.truncated = True
        finally:
            self.close()

    # --- classic pcap --------------------------------------------------------------

    def _open_pcap(self, head: bytes, magic_le: int, magic_be: int) -> None:
        self._e = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        self._scale = 1e-9 if PCAP_MAGIC_NS in (magic_le, magic_be) else 1e-6
        _vmaj, _vmin, _zone, _sig, snaplen, network = struct.unpack(self._e + "HHiIII", self._read(20))
        self.linktype = network & 0xFFFF        # upper bits may carry FCS information
        if self.linktype not in SUPPORTED_LINKTYPES:
            raise self._error(f"unsupported link type {self.linktype}", 20)
        self._maxrec = max(snaplen, MAX_RECORD)

    def _pcap_frames(self) -> Iterator[Frame]:
        rec = struct.Struct(self._e + "IIII")
        read, iface, lt, scale, maxrec = self._f.read, self.iface, self.linktype, self._scale, self._maxrec
        while True:
            at = self.offset
            h = read(16)
            if len(h) < 16:
                if h:
                    raise _Truncated
                return
            self.offset += 16
            sec, frac, incl, _orig = rec.unpack(h)
            if incl > maxrec:
                raise self._error(f"implausible record length {incl}", at)
            yield Frame(sec + frac * scale, iface, lt, self._readinto(incl))

    # --- pcapng --------------------------------------------------------------------

    def _shb(self, head: bytes, at: int) -> str:
        """Read the rest of a Section Header Block (head = its first 8 bytes); its byte order."""
        bom = self._read(4)
        if bom == b"\x4d\x3c\x2b\x1a":
            e = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            e = ">"
        else:
            raise self._error("bad byte-order magic in section header", at + 8)
        blen = struct.unpack(e + "I", head[4:])[0]
        self._check_len(blen, at, minimum=28)
        self._check_trailer(self._read(blen - 12), blen, e, at)
        return e

    def _pcapng_frames(self) -> Iterator[Frame]:
        e = self._e
        ifaces: list[tuple[int, str, float, float]] = []   # linktype, name, units->s, offset s
        last_ts = 0.0
        while True:
            at = self.offset
            head = self._f.read(8)
            if len(head) < 8:
                if head:
                    raise _Truncated
                return
            self.offset += 8
            if head[:4] == b"\n\r\r\n":          # SHB: same bytes in either byte order
                e = self._shb(head, at)
                ifaces, last_ts = [], 0.0
                continue
            btype, blen = struct.unpack(e + "II", head)
            self._check_len(blen, at, minimum=12)
            if btype not in (_IDB, _EPB, _SPB, _OPB):
                skipped = self._read(blen - 8)
                self._check_trailer(skipped, blen, e, at)
                continue
            body = self._readinto(blen - 8)
            self._check_trailer(body, blen, e, at)
            if btype == _IDB:
                ifaces.append(self._idb(body, e, at, len(ifaces)))
                continue
            if btype == _SPB:
                if len(body) < 8:
                    raise self._error("short simple packet block", at)
                if not ifaces:
                    raise self._error("packet block before any interface", at)
                (orig,) = struct.unpack_from(e + "I", body)
                caplen, ifid, ts, start = min(orig, len(body) - 8), 0, None, 4
            else:                             # EPB, or the obsolete Packet Block
                if len(body) < 24:
                    raise self._error("short packet block", at)
                ifid, hi, lo, caplen, _orig = struct.unpack_from(
                    e + ("IIIII" if btype == _EPB else "HxxIIII"), body)
                if caplen > len(body) - 24:
                    raise self._error(f"captured length {caplen} exceeds block", at)
                ts, start = hi << 32 | lo, 20
            if ifid >= len(ifaces):
                raise self._error(f"packet on undeclared interface {ifid}", at)
            lt, name, unit, tsoff = ifaces[ifid]
            if ts is None:
                ts = last_ts                  # SPBs carry no time: reuse the previous one
            else:
                ts = last_ts = ts * unit + tsoff
            yield Frame(ts, name, lt, body[start:start + caplen])

    def _check_len(self, blen: int, at: int, minimum: int) -> None:
        if blen < minimum or blen % 4 or blen > MAX_BLOCK:
            raise self._error(f"bad block length {blen}", at)

    def _check_trailer(self, body: bytes | bytearray, blen: int, e: str, at: int) -> None:
        if struct.unpack_from(e + "I", body, len(body) - 4)[0] != blen:
            raise self._error("block trailer length does not match header", at)

    def _idb(self, body: bytes | bytearray, e: str, at: int, n: int) -> tuple[int, str, float, float]:
        if len(body) < 12:
            raise self._error("short interface description block", at)
        linktype, _res, _snap = struct.unpack_from(e + "HHI", body)
        name, unit, tsoff = None, 1e-6, 0.0
        i, end = 8, len(body) - 4
        while i + 4 <= end:
            code, olen = struct.unpack_from(e + "HH", body, i)
            i += 4
            if code == 0:
                break
            if i + olen > end:
                raise self._error("interface option overruns its block", at)
            val = bytes(body[i:i + olen])
            if code == 2:
                name = val.rstrip(b"\0").decode("utf-8", "replace")
            elif code == 9 and olen >= 1:
                r = val[0]
                unit = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == 14 and olen >= 8:
                tsoff = float(struct.unpack(e + "q", val[:8])[0])
            i += (olen + 3) & ~3
        return linktype, name or self.iface or f"if{n}", unit, tsoff


def read_capture(path: CaptureSource, iface: str | None = None) -> Iterator[Frame]:
    """The frames of a pcap or pcapng file (see CaptureReader)."""
    return iter(CaptureReader(path, iface))


def merge_captures(sources: Iterable[tuple[str | None, CaptureSource] | CaptureReader]) -> Iterator[Frame]:
    """Frames of several captures (``(iface, path)`` pairs or readers) in time order.

    heapq.merge is stable: equal timestamps keep the order of ``sources``, then
    file order.  Each capture is assumed sorted in time, as capture tools write
    them.  Pass CaptureReader objects to check ``.truncated`` afterwards.
    """
    readers = [s if isinstance(s, CaptureReader) else CaptureReader(s[1], s[0]) for s in sources]
    return heapq.merge(*readers, key=lambda f: f.ts)


class PcapngWriter:
    """Write Ethernet (or other link type) frames to a little-endian pcapng file.

    Each interface gets an IDB with if_name and if_tsresol = 6 (microseconds);
    frames go out as Enhanced Packet Blocks.  Wireshark/tshark read files that
    mix link types; libpcap (tcpdump) needs all interfaces of one link type.
    """

    def __init__(self, target: PathOrFile):
        if isinstance(target, (str, os.PathLike)):
            self._f: BinaryIO = open(target, "wb")
            self._own = True
        else:
            self._f, self._own = target, False
        self._ifaces: dict[str, int] = {}
        shb = struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1) + _option(4, b"nattrack") + _END_OPT
        self._block(PCAPNG_SHB, shb)

    def _block(self, btype: int, body: bytes) -> None:
        n = len(body) + 12
        self._f.write(struct.pack("<II", btype, n) + body + struct.pack("<I", n))

    def add_interface(self, name: str, linktype: int = LINKTYPE_ETHERNET) -> int:
        """Declare an interface; returns its pcapng interface id."""
        body = (struct.pack("<HHI", linktype, 0, MAX_RECORD)
                + _option(2, name.encode()) + _option(9, b"\x06") + _END_OPT)
        self._block(_IDB, body)
        self._ifaces[name] = n = len(self._ifaces)
        return n

    def write(self, ts: float, iface_name: str, data: bytes | bytearray | memoryview) -> None:
        """One frame at time ts (seconds) on iface_name (declared as Ethernet if new)."""
        ifid = self._ifaces.get(iface_name)
        if ifid is None:
            ifid = self.add_interface(iface_name)
        us = round(ts * 1_000_000)
        n = len(data)
        self._block(_EPB, struct.pack("<IIIII", ifid, us >> 32, us & 0xFFFFFFFF, n, n)
                    + bytes(data) + b"\0" * (-n % 4))

    def close(self) -> None:
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END_OPT = b"\0\0\0\0"


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


__all__ = ["CaptureError", "CaptureReader", "Frame", "PcapngWriter", "SUPPORTED_LINKTYPES",
           "ip_offset", "merge_captures", "read_capture"]
