"""What the router process changes in its network namespace, and how it undoes it.

Models nothing in the kernel: this is the lab-kit recipe for a user-space router
(docs lab-kit-conventions.md section 2).  Every change goes through one
:class:`NamespaceChanges` object that remembers how to take it back, so a clean
exit (SIGTERM, SIGINT, the ``stop`` verb, an exception) leaves the namespace
as it found it: iptables rules deleted, the nft rule set put back, sysctls
restored, addresses and routes it added removed.  Offloads are turned off and left off.

Everything here acts on the namespace of the calling process (``ip``,
``iptables``, ``ethtool`` and /proc/sys all follow the process's netns), so it
works the same under ``ip netns exec`` and Mininet's ``mnexec``.
"""
from __future__ import annotations

import fcntl
import logging
import socket
import struct
import subprocess
from typing import Iterable, Literal

from ..packet.checksum import checksum

log = logging.getLogger("nattrack.router")

SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
# struct virtio_net_hdr in front of every frame read or written (PACKET_VNET_HDR): flags,
# gso_type, hdr_len, gso_size, csum_start, csum_offset, in the host's byte order.
VNET_HDR = struct.Struct("=BBHHHH")
VNET_LEN = VNET_HDR.size
VNET_ZERO = bytes(VNET_LEN)               # what we send: no offload asked
VNET_F_NEEDS_CSUM = 1


class SetupError(RuntimeError):
    """The namespace could not be prepared (the message says which command failed)."""


def run(cmd: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
    if check and p.returncode != 0:
        raise SetupError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip() or 'exit %d' % p.returncode}")
    return p


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def iface_info(name: str) -> tuple[int, bytes, int]:
    """(ifindex, MAC address, MTU) of an interface of this namespace (ioctl, not /sys,
    which shows the namespace /sys was mounted in)."""
    ifindex = socket.if_nametoindex(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s16x", name.encode())
        mac = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
        mtu = struct.unpack_from("i", fcntl.ioctl(s.fileno(), SIOCGIFMTU, req), 16)[0]
    return ifindex, bytes(mac), mtu


# One journal entry, by kind: a sysctl's (path, old value), a command to run, an
# iptables-restore input, the nft tables to delete.
_Undo = (tuple[Literal["sysctl"], tuple[str, str]] | tuple[Literal["cmd"], list[str]]
         | tuple[Literal["restore"], str] | tuple[Literal["nft"], set[str]])


class NamespaceChanges:
    """A journal of changes to this network namespace, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[_Undo] = []
        self._nft_journaled = False
        self._nft_tables: set[str] = set()            # "FAMILY NAME" of what nft_load loaded

    # --- primitives ------------------------------------------------------------------------

    def sysctl(self, key: str, value: str | int) -> None:
        """Write /proc/sys/KEY (kernel name), remembering the old value."""
        path = sysctl_path(key)
        try:
            with open(path) as f:
                old = f.read().strip()
            if old != str(value):
                with open(path, "w") as f:
                    f.write(f"{value}\n")
                self._undo.append(("sysctl", (path, old)))
        except OSError as exc:
            raise SetupError(f"sysctl {key}={value}: {exc.strerror or exc}") from None

    def iptables(self, table: str, add: list[str], delete: list[str]) -> None:
        """``iptables -w -t TABLE ADD...``; undone with ``iptables -w -t TABLE DELETE...``."""
        run(["iptables", "-w", "-t", table, *add])
        self._undo.append(("cmd", ["iptables", "-w", "-t", table, *delete]))

    def iptables_restore(self, text: str) -> None:
        """Load ``text`` with iptables-restore; undone by restoring each table it names as it
        was before (or empty with ACCEPT policies if it did not exist)."""
        before = run(["iptables-save"], check=False).stdout
        saved = _split_tables(before)
        tables = list(_split_tables(text))
        run(["iptables-restore", "-w"], input=text)
        restore = []
        for t in tables:
            restore.append(saved.get(t) or empty_table(t))
        self._undo.append(("restore", "".join(restore)))

    def nft_load(self, text: str, tables: Iterable[str]) -> None:
        """Load an nft rule set: the tables loaded before and the ``tables`` ("FAMILY NAME")
        the text defines are deleted and ``text`` is loaded, in one ``nft -f`` transaction
        (a refusal changes nothing); other tables (iptables-nft's) stay.  Undone by deleting
        the tables last loaded."""
        drop = sorted(self._nft_tables | set(tables))
        run(["nft", "-f", "-"], input=_nft_delete(drop) + text)
        if not self._nft_journaled:
            self._undo.append(("nft", self._nft_tables))    # the set as it is at undo time
            self._nft_journaled = True
        self._nft_tables.clear()
        self._nft_tables.update(tables)

    def ensure_addr(self, iface: str, cidr: str) -> None:
        """The interface is up and has ADDR/PREFIX (added, and later removed, if missing)."""
        p = run(["ip", "-o", "-4", "addr", "show", "dev", iface])
        if f" {cidr} " not in p.stdout + " ":
            run(["ip", "addr", "add", cidr, "dev", iface])
            self._undo.append(("cmd", ["ip", "addr", "del", cidr, "dev", iface]))
        if "UP" not in run(["ip", "-o", "link", "show", "dev", iface]).stdout.split(">")[0]:
            run(["ip", "link", "set", iface, "up"])

    def ensure_route(self, dest: str, iface: str, gateway: str | None) -> None:
        """A kernel route to DEST (``default`` or NET/LEN), added if the table has none."""
        if run(["ip", "-4", "route", "show", dest], check=False).stdout.strip():
            return
        cmd = ["ip", "-4", "route", "add", dest] + (["via", gateway] if gateway else []) + ["dev", iface]
        run(cmd)
        self._undo.append(("cmd", ["ip", "-4", "route", "del", dest] + (["via", gateway] if gateway else [])
                           + ["dev", iface]))

    @staticmethod
    def offloads_off(iface: str) -> None:
        """ethtool -K IF rx off tx off tso off gso off gro off (one by one: veth and friends
        refuse some; refusals are fine).  Not undone."""
        for feature in ("rx", "tx", "tso", "gso", "gro"):
            run(["ethtool", "-K", iface, feature, "off"], check=False)

    # --- undo ------------------------------------------------------------------------------

    def undo(self) -> list[str]:
        """Take every change back, newest first; returns the problems met (never raises)."""
        problems = []
        while self._undo:
            entry = self._undo.pop()
            kind = entry[0]
            try:
                if entry[0] == "sysctl":
                    path, old = entry[1]
                    with open(path, "w") as f:
                        f.write(old + "\n")
                elif entry[0] == "cmd":
                    run(entry[1])
                elif entry[0] == "restore":
                    run(["iptables-restore", "-w"], input=entry[1])
                elif entry[0] == "nft":
                    run(["nft", "-f", "-"], input=_nft_delete(sorted(entry[1])))
            except Exception as exc:          # noqa: BLE001 -- keep undoing the rest
                problems.append(f"undo {kind}: {exc}")
                log.warning("undo %s failed: %s", kind, exc)
        return problems


_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
            "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
            "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
            "raw": ("PREROUTING", "OUTPUT"),
            "security": ("INPUT", "FORWARD", "OUTPUT")}


def _nft_delete(tables: list[str]) -> str:
    # "add" first, so deleting a table that is not there is no error.
    return "".join(f"add table {t}\ndelete table {t}\n" for t in tables)


def _split_tables(text: str) -> dict[str, str]:
    """iptables-save text -> {table: its block from ``*table`` to ``COMMIT``}."""
    out: dict[str, str] = {}
    cur, lines = None, []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("*"):
            cur, lines = s[1:].split()[0], [s]
        elif cur is not None:
            lines.append(line)
            if s == "COMMIT":
                out[cur] = "\n".join(lines) + "\n"
                cur = None
    return out


def empty_table(table: str) -> str:
    chains = "".join(f":{c} ACCEPT [0:0]\n" for c in _BUILTIN.get(table, ()))
    return f"*{table}\n{chains}COMMIT\n"


def packet_socket(ifname: str | None, rcvbuf: int = 4 << 20) -> socket.socket:
    """An AF_PACKET SOCK_RAW socket for ETH_P_ALL, bound to one interface (or all when
    ``ifname`` is None), non-blocking, with a big receive buffer.

    Frames come and go behind a virtio_net_hdr (PACKET_VNET_HDR): it says, in the data
    itself and so at no extra cost, when a checksum was left to offload by a peer veth
    with tx checksumming on (:func:`finish_checksum` completes it).
    """
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)          # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.setsockopt(socket.SOL_SOCKET, 32, rcvbuf)          # SO_SNDBUFFORCE
    except OSError:
        pass
    if ifname:
        s.bind((ifname, ETH_P_ALL))          # unbound, an ETH_P_ALL socket sees every interface
    s.setblocking(False)
    return s


def finish_checksum(buf: bytearray, size: int) -> bool:
    """Complete the L4 checksum of a frame read with its virtio_net_hdr when the header
    says VIRTIO_NET_HDR_F_NEEDS_CSUM (skb_checksum_help(): the field holds the
    pseudo-header sum; fold the sum from csum_start to the end of the datagram)."""
    flags, _gso, _hl, _gs, start, offset = VNET_HDR.unpack_from(buf)
    if not flags & VNET_F_NEEDS_CSUM:
        return False
    start += VNET_LEN
    end = size
    if size >= VNET_LEN + 18 and buf[VNET_LEN + 12:VNET_LEN + 14] == b"\x08\x00":
        end = min(size, VNET_LEN + 14 + (buf[VNET_LEN + 16] << 8 | buf[VNET_LEN + 17]))
    at = start + offset
    if not start < at + 2 <= end:
        return False
    c = checksum(memoryview(buf)[start:end])
    c = c or 0xFFFF                                  # CSUM_MANGLED_0
    buf[at], buf[at + 1] = c >> 8, c & 0xFF
    return True


def packet_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped because the socket's buffer was full since the last call
    (PACKET_STATISTICS: struct tpacket_stats {tp_packets, tp_drops}; reading resets it)."""
    try:
        _packets, drops = struct.unpack("II", sock.getsockopt(263, 6, 8))   # SOL_PACKET, PACKET_STATISTICS
    except OSError:
        return 0
    return drops


__all__ = ["NamespaceChanges", "SetupError", "empty_table", "iface_info", "packet_socket", "packet_drops",
           "finish_checksum", "run", "sysctl_path", "VNET_LEN", "VNET_ZERO"]
