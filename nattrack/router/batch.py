"""Frames in batches: recvmmsg(2) and sendmmsg(2) on an AF_PACKET socket, through ctypes.

Models nothing in the kernel; it is how the live router (dataplane.py) moves frames
with one system call per batch instead of one per frame.  Each batch owns a fixed
array of slots in one anonymous mmap (pages are only touched when a frame lands in
them), and the ``struct mmsghdr``/``iovec`` arrays that point at those slots are
built once: per frame the caller only copies bytes and reads or writes a length.

* :class:`RxBatch` -- ``recv(sock)`` reads as many frames as are waiting, up to its
  slot count, and never waits (``MSG_DONTWAIT``): a lone frame comes back at once.
  Frame ``i`` is ``view[i * slot : i * slot + length(i)]``; ``pkttype(i)`` and
  ``ifindex(i)`` are what its ``struct sockaddr_ll`` says (a socket bound to every
  interface, like kernel mode's shadow, tells them apart by the index).
* :class:`TxBatch` -- ``add(hdr, data)`` copies one frame into the next slot;
  ``flush(sock)`` sends them all (sendmmsg), skipping and counting a frame the
  kernel refuses, as a failed ``send()`` would be.

Where the C library has no recvmmsg/sendmmsg (or the kernel refuses them with
ENOSYS), :func:`mmsg_problem` says why in one line, and :class:`SingleRx` /
:class:`SingleTx` do the same job one frame per system call with the same interface.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket

MSG_DONTWAIT = 0x40
MAX_BATCH = 1024                 # UIO_MAXIOV: the most messages one recvmmsg/sendmmsg takes
SLL_IFINDEX = 4                  # offsetof(struct sockaddr_ll, sll_ifindex), an int
SLL_PKTTYPE = 10                 # offsetof(struct sockaddr_ll, sll_pkttype)
SOCKADDR_LL_ROOM = 32            # sizeof(struct sockaddr_ll) is 20; room to spare


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


# Where msg_len and iov_len sit, counted in their own units, so that one
# memoryview cast reads or writes them without a ctypes attribute lookup.
_MSG_LEN_STRIDE = ctypes.sizeof(MMsgHdr) // 4
_MSG_LEN_AT = MMsgHdr.msg_len.offset // 4
_IOV_STRIDE = ctypes.sizeof(IoVec) // ctypes.sizeof(ctypes.c_size_t)
_IOV_LEN_AT = IoVec.iov_len.offset // ctypes.sizeof(ctypes.c_size_t)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        rx, tx = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError) as exc:
        return None, None, f"the C library has no recvmmsg/sendmmsg ({exc})"
    rx.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    tx.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    rx.restype = tx.restype = ctypes.c_int
    return rx, tx, None


_recvmmsg, _sendmmsg, _LIBC_PROBLEM = _load_libc()


def mmsg_problem(sock: socket.socket | None = None) -> str | None:
    """None when batches work, else one line saying why not.  With ``sock``, the kernel
    is asked too: a recvmmsg and a sendmmsg of zero messages answer 0, or ENOSYS on a
    kernel without them (or EPERM under a seccomp filter that forbids them)."""
    if _LIBC_PROBLEM:
        return _LIBC_PROBLEM
    if sock is not None:
        for name, call in (("recvmmsg", lambda: _recvmmsg(sock.fileno(), None, 0, MSG_DONTWAIT, None)),
                           ("sendmmsg", lambda: _sendmmsg(sock.fileno(), None, 0, MSG_DONTWAIT))):
            if call() < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return f"{name} refused on a packet socket: {os.strerror(err)}"
    return None


def _slots(count: int, slot: int) -> tuple[mmap.mmap, memoryview, int]:
    area = mmap.mmap(-1, count * slot, flags=mmap.MAP_PRIVATE)     # private: not shared over fork()
    return area, memoryview(area), ctypes.addressof(ctypes.c_char.from_buffer(area))


class RxBatch:
    """``count`` receive slots of ``slot`` bytes each, read with one recvmmsg."""

    def __init__(self, count: int, slot: int) -> None:
        if not 1 <= count <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} frames, not {count}")
        self.count, self.slot = count, slot
        self._area, self.view, base = _slots(count, slot)
        self._names = ctypes.create_string_buffer(count * SOCKADDR_LL_ROOM)
        self._iov = (IoVec * count)()
        self._msgs = (MMsgHdr * count)()
        names = ctypes.addressof(self._names)
        for i in range(count):
            self._iov[i].iov_base, self._iov[i].iov_len = base + i * slot, slot
            h = self._msgs[i].msg_hdr
            h.msg_name, h.msg_namelen = names + i * SOCKADDR_LL_ROOM, SOCKADDR_LL_ROOM
            h.msg_iov, h.msg_iovlen = ctypes.addressof(self._iov[i]), 1
        self._lens = memoryview(self._msgs).cast("B").cast("I")
        self._ints = memoryview(self._names).cast("B").cast("i")      # for sll_ifindex
        self._msgs_at = ctypes.addressof(self._msgs)

    def recv(self, sock: socket.socket) -> int:
        """Frames read now (0 when none is waiting); never waits.  Other errors raise."""
        fd = sock.fileno()
        while True:
            got = _recvmmsg(fd, self._msgs_at, self.count, MSG_DONTWAIT, None)
            if got >= 0:
                return got
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise OSError(err, os.strerror(err))

    def length(self, i: int) -> int:
        """Bytes of frame ``i`` (as recv() returns it: truncated to the slot)."""
        return self._lens[i * _MSG_LEN_STRIDE + _MSG_LEN_AT]

    def pkttype(self, i: int) -> int:
        """sll_pkttype of frame ``i`` (PACKET_OUTGOING = 4 marks our own sends)."""
        return self._names[i * SOCKADDR_LL_ROOM + SLL_PKTTYPE][0]

    def ifindex(self, i: int) -> int:
        """sll_ifindex of frame ``i``: the interface it came in by (or went out of)."""
        return self._ints[(i * SOCKADDR_LL_ROOM + SLL_IFINDEX) // 4]


class TxBatch:
    """``count`` send slots of ``slot`` bytes each, sent with one sendmmsg."""

    def __init__(self, count: int, slot: int) -> None:
        if not 1 <= count <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} frames, not {count}")
        self.count, self.slot = count, slot
        self.queued = 0
        self._area, self.view, base = _slots(count, slot)
        self._iov = (IoVec * count)()
        self._msgs = (MMsgHdr * count)()
        for i in range(count):
            self._iov[i].iov_base = base + i * slot
            h = self._msgs[i].msg_hdr
            h.msg_iov, h.msg_iovlen = ctypes.addressof(self._iov[i]), 1
        # size_t ("N") is missing from typeshed's memoryview.cast() formats
        self._iov_lens = memoryview(self._iov).cast("B").cast("N")  # type: ignore[call-overload]
        self._msgs_at = ctypes.addressof(self._msgs)
        self._msg_size = ctypes.sizeof(MMsgHdr)

    def add(self, hdr: bytes, data) -> bool:
        """Copy ``hdr + data`` into the next slot; False (nothing copied) when the batch
        is full or the frame does not fit a slot: flush, or send it on its own."""
        i = self.queued
        frame = hdr + data              # one short copy: cheaper than two slice writes
        n = len(frame)
        if i == self.count or n > self.slot:
            return False
        off = i * self.slot
        self.view[off:off + n] = frame
        self._iov_lens[i * _IOV_STRIDE + _IOV_LEN_AT] = n
        self.queued = i + 1
        return True

    def frame(self, i: int) -> memoryview:
        """Queued frame ``i`` (valid until the next add after a flush)."""
        return self.view[i * self.slot:i * self.slot + self._iov_lens[i * _IOV_STRIDE + _IOV_LEN_AT]]

    def flush(self, sock: socket.socket) -> tuple[int, int]:
        """Send every queued frame: (sent, refused).  A frame the kernel refuses (its
        buffer full, say) is counted and skipped; the rest are still sent."""
        fd = sock.fileno()
        total, done, sent, refused = self.queued, 0, 0, 0
        self.queued = 0
        while done < total:
            r = _sendmmsg(fd, self._msgs_at + done * self._msg_size, total - done, MSG_DONTWAIT)
            if r > 0:
                done += r
                sent += r
                continue
            if r < 0 and ctypes.get_errno() == errno.EINTR:
                continue
            done += 1                  # sendmmsg reports the error of the first frame it could not send
            refused += 1
        return sent, refused


class SingleRx:
    """RxBatch's interface, one recvfrom per call (where recvmmsg is unavailable)."""

    def __init__(self, count: int, slot: int) -> None:
        self.count, self.slot = 1, slot
        self.view = memoryview(bytearray(slot))
        self._len = 0
        self._pkttype = 0
        self._ifname = ""
        self._indexes: dict[str, int] = {}       # recvfrom names the interface: no ioctl per frame

    def recv(self, sock: socket.socket) -> int:
        try:
            self._len, addr = sock.recvfrom_into(self.view)
        except (BlockingIOError, InterruptedError):
            return 0
        # (ifname, proto, pkttype, hatype, addr); a Unix socket has no address
        self._ifname, self._pkttype = (addr[0], addr[2]) if addr else ("", 0)
        return 1

    def length(self, i: int) -> int:
        return self._len

    def pkttype(self, i: int) -> int:
        return self._pkttype

    def ifindex(self, i: int) -> int:
        if not self._ifname:
            return 0
        index = self._indexes.get(self._ifname)
        if index is None:
            index = self._indexes[self._ifname] = socket.if_nametoindex(self._ifname)
        return index


class SingleTx:
    """TxBatch's interface, one send per frame (where sendmmsg is unavailable)."""

    def __init__(self, count: int, slot: int) -> None:
        self.count, self.slot = count, slot
        self._frames: list[bytes] = []

    @property
    def queued(self) -> int:
        return len(self._frames)

    def add(self, hdr: bytes, data) -> bool:
        if len(self._frames) == self.count:
            return False
        self._frames.append(hdr + data)
        return True

    def frame(self, i: int) -> memoryview:
        return memoryview(self._frames[i])

    def flush(self, sock: socket.socket) -> tuple[int, int]:
        sent = refused = 0
        for f in self._frames:
            try:
                sock.send(f)
                sent += 1
            except OSError:
                refused += 1
        self._frames.clear()
        return sent, refused


__all__ = ["MAX_BATCH", "RxBatch", "SingleRx", "SingleTx", "TxBatch", "mmsg_problem"]
