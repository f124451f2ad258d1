"""IPv4 reassembly before conntrack and refragmentation on output.

Models nf_defrag_ipv4 (ipv4_conntrack_defrag() at hook priority -400, which calls
ip_defrag() of net/ipv4/ip_fragment.c: ip_find(), ip_frag_queue(), ip_frag_reasm(),
ip_expire(); queue bookkeeping from net/ipv4/inet_fragment.c:
inet_frag_queue_insert()) and, on output, ip_fragment()/ip_do_fragment() of
net/ipv4/ip_output.c, which cut a reassembled datagram again at the largest
fragment size seen (IPCB(skb)->frag_max_size) so it leaves fragmented as it came.

Kernel behaviour reproduced (checked against Linux 6.x sources):

* Queues are keyed by (src, dst, proto, id); the kernel also keys by defrag
  "user" (conntrack zone/hook) and l3mdev vif, which are ignored here.
* A non-last fragment is cut down to a multiple of 8 (``end &= ~7``); a fragment
  that ends up empty, a last fragment that ends before data already queued or
  disagrees with an earlier last fragment, or a non-last fragment reaching past
  a known end kills the whole queue (ReasmFails).
* inet_frag_queue_insert() (since the 2018 FragmentSmack fixes): a fragment
  lying entirely inside one contiguous run already queued is a duplicate and is
  dropped alone (kernel drop reason DUP_FRAG; counted here as
  ``ReasmDuplicates``, which has no /proc/net/snmp counterpart); any other
  overlap kills the queue (ReasmOverlaps and ReasmFails).  Runs are tracked as
  the kernel builds them: a fragment extends the last run only when it arrives
  in order right after it.
* ip_frag_reasm(): the first fragment's header is used, with total length set,
  ECN merged by ip_frag_ecn_table (Not-ECT mixed with ECT/CE fails the
  datagram; CE anywhere marks it CE), frag_off = DF if the largest fragment had
  DF set, else 0, and a fresh header checksum.  A datagram longer than 65535
  bytes (ihl + payload) fails (ReasmFails) once complete, as in the kernel.
* ip_expire(): ipfrag_time after a queue was created (the timer is not pushed
  back by later fragments) it is discarded (ReasmFails, ReasmTimeout).  The
  kernel answers with ICMP time exceeded / fragment reassembly only if the
  offset-0 fragment was queued, and for conntrack's defrag users only when the
  datagram is for the local host (frag_expire_skip_icmp()); expire() returns
  those first fragments and leaves that decision to the caller.
* Memory: bytes of queued fragments (ihl + kept payload; the kernel counts
  skb->truesize, which is larger).  With ``evict=True`` (default) a fragment
  arriving while usage is above ipfrag_high_thresh first evicts least recently
  used queues down to ipfrag_low_thresh, each counting ReasmFails — the
  inet_frag_evictor() behaviour of kernels up to 4.16.  Since 4.17
  inet_frag_find() instead refuses every fragment while above the high
  threshold (ReasmFails) and queues only leave by completion or timeout; pass
  ``evict=False`` for that.
* Not modelled: ipfrag_max_dist (ip_frag_too_far()), which needs inet_peer.
"""
from __future__ import annotations

import heapq
import struct
from bisect import insort

from .checksum import checksum
from .ipv4 import Packet

IP_DF, IP_MF = 0x4000, 0x2000
_DUP, _OVERLAP = 1, 2
STAT_NAMES = ("ReasmReqds", "ReasmOKs", "ReasmFails", "ReasmTimeout", "ReasmOverlaps",
              "ReasmDuplicates")


class _Queue:
    """struct ipq: the fragments of one datagram being reassembled."""
    __slots__ = ("created", "frags", "runs", "length", "last_in", "meat", "mem",
                 "first", "sizes", "max_size", "max_df_size", "ecn")

    def __init__(self, now: float):
        self.created = now
        self.frags: list[tuple[int, bytes]] = []      # (offset, payload)
        self.runs: list[list[int]] = []               # [start, end] of contiguous runs
        self.length = 0                               # q.len: end of the datagram data
        self.last_in = False
        self.meat = 0                                 # payload bytes queued
        self.mem = 0
        self.first: Packet | None = None              # offset-0 fragment (a copy): FIRST_IN
        self.sizes: list[int] = []
        self.max_size = self.max_df_size = 0
        self.ecn = 0

    def insert(self, offset: int, end: int) -> int:
        """inet_frag_queue_insert(): 0 if queued, else _DUP or _OVERLAP."""
        runs = self.runs
        if not runs:
            runs.append([offset, end])
            return 0
        tail = runs[-1]
        if tail[1] < end:                     # the common case: goes to the end
            if offset < tail[1]:
                return _OVERLAP
            if offset == tail[1]:
                tail[1] = end                 # fragrun_append_to_last()
            else:
                runs.append([offset, end])
            return 0
        for start, stop in runs:              # the kernel's rb-tree search
            if end > start and offset < stop:
                return _DUP if start <= offset and end <= stop else _OVERLAP
        insort(runs, [offset, end])
        return 0


def _ecn_bit(tos: int) -> int:
    """ip4_frag_ecn(): IPFRAG_ECN_NOT_ECT 1, ECT_1 2, ECT_0 4, CE 8."""
    return 1 << (tos & 3)


# A queue's key: ip4_frag_match()'s saddr, daddr, protocol and id.
_Key = tuple[int, int, int, int]


class Defrag:
    """IPv4 fragment reassembly with kernel sysctl names, defaults and SNMP counters."""

    def __init__(self, ipfrag_time: float = 30.0, ipfrag_high_thresh: int = 4 * 1024 * 1024,
                 ipfrag_low_thresh: int = 3 * 1024 * 1024, evict: bool = True):
        self.ipfrag_time = ipfrag_time
        self.ipfrag_high_thresh = ipfrag_high_thresh
        self.ipfrag_low_thresh = ipfrag_low_thresh
        self.evict = evict
        self.mem = 0
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self._queues: dict[_Key, _Queue] = {}   # in LRU order
        self._timers: list[tuple[float, int, _Key, _Queue]] = []
        self._seq = 0
        self._expired: list[Packet] = []

    def __len__(self) -> int:
        return len(self._queues)

    # --- queue lifetime ----------------------------------------------------------------

    def _kill(self, key: _Key, q: _Queue) -> None:
        """inet_frag_kill(): unhash the queue and release its memory."""
        if self._queues.get(key) is q:
            del self._queues[key]
            self.mem -= q.mem

    def _fail(self, key: _Key, q: _Queue) -> None:
        self._kill(key, q)
        self.stats["ReasmFails"] += 1

    def _run_timers(self, now: float) -> None:
        """ip_expire() for every queue whose timer has fired by ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _deadline, _seq, key, q = heapq.heappop(timers)
            if self._queues.get(key) is not q:
                continue                      # already completed or killed
            self._fail(key, q)
            self.stats["ReasmTimeout"] += 1
            if q.first is not None:
                self._expired.append(q.first)

    def expire(self, now: float) -> list[Packet]:
        """Discard queues older than ipfrag_time; return their offset-0 fragments.

        Those are the datagrams the router could answer with ICMP time exceeded,
        code 1 (fragment reassembly time exceeded); queues that never got their
        first fragment are discarded silently.  Includes queues that timed out
        during earlier add() calls.
        """
        self._run_timers(now)
        out, self._expired = self._expired, []
        return out

    # --- ip_defrag() ----------------------------------------------------------------

    def add(self, pkt: Packet, now: float) -> Packet | None:
        """Feed one datagram; a non-fragment comes back as is, a fragment gives None
        until its datagram is complete, then the reassembled datagram (a new Packet
        whose ``frag_sizes`` lists the queued fragments' sizes in arrival order)."""
        if not pkt.mf and not pkt.frag:
            return pkt
        self._run_timers(now)
        self.stats["ReasmReqds"] += 1
        if self.mem > self.ipfrag_high_thresh:
            if not self.evict:                # inet_frag_find() returns NULL
                self.stats["ReasmFails"] += 1
                return None
            for old_key, old_q in list(self._queues.items()):    # inet_frag_evictor()
                if self.mem <= self.ipfrag_low_thresh:
                    break
                self._fail(old_key, old_q)
        key = (pkt.src, pkt.dst, pkt.proto, pkt.ipid)
        q = self._queues.pop(key, None)
        if q is None:                         # inet_frag_create(): timer starts now
            q = _Queue(now)
            self._seq += 1
            heapq.heappush(self._timers, (now + self.ipfrag_time, self._seq, key, q))
        self._queues[key] = q                 # most recently used last
        return self._queue(key, q, pkt)

    def _queue(self, key: _Key, q: _Queue, pkt: Packet) -> Packet | None:
        """ip_frag_queue()."""
        buf, off, ihl = pkt.buf, pkt.off, pkt.ihl
        offset = pkt.frag
        end = offset + pkt.tot_len - ihl
        if not pkt.mf:                        # the final fragment
            if end < q.length or (q.last_in and end != q.length):
                self._fail(key, q)
                return None
            q.last_in, q.length = True, end
        else:
            end &= ~7                         # non-last fragments are multiples of 8
            if end > q.length:
                if q.last_in:                 # data beyond the known end
                    self._fail(key, q)
                    return None
                q.length = end
        if end == offset:
            self._fail(key, q)
            return None
        verdict = q.insert(offset, end)
        if verdict == _DUP:
            self.stats["ReasmDuplicates"] += 1
            return None
        if verdict == _OVERLAP:
            self.stats["ReasmOverlaps"] += 1
            self._fail(key, q)
            return None
        payload = bytes(buf[off + ihl:off + ihl + end - offset])
        q.frags.append((offset, payload))
        fragsize = ihl + end - offset
        q.meat += end - offset
        q.mem += fragsize
        self.mem += fragsize
        q.ecn |= _ecn_bit(buf[off + 1])
        if offset == 0:                       # keep it as it came, for ICMP on expiry
            q.first = Packet.parse(bytearray(buf[off:off + pkt.tot_len]), 0, iif=pkt.iif, ts=pkt.ts)
        q.sizes.append(fragsize)
        q.max_size = max(q.max_size, fragsize)
        if buf[off + 6] << 8 & IP_DF:
            q.max_df_size = max(q.max_df_size, fragsize)
        if q.first is not None and q.last_in and q.meat == q.length:
            return self._reasm(key, q, pkt)
        return None

    def _reasm(self, key: _Key, q: _Queue, pkt: Packet) -> Packet | None:
        """ip_frag_reasm(): glue the fragments under the first one's header."""
        self._kill(key, q)
        first = q.first
        assert first is not None              # _queue() reassembles only once it is in
        ecn = q.ecn
        if ecn & 1 and ecn != 1:              # ip_frag_ecn_table: Not-ECT mixed with ECT/CE
            self.stats["ReasmFails"] += 1
            return None
        tot = first.ihl + q.length
        if tot > 65535:                       # "Oversized IP packet"
            self.stats["ReasmFails"] += 1
            return None
        hdr = bytearray(first.buf[:first.ihl])
        if ecn & 8:
            hdr[1] |= 3                       # INET_ECN_CE
        frag_off = IP_DF if q.max_df_size == q.max_size else 0
        struct.pack_into("!H", hdr, 2, tot)
        struct.pack_into("!H", hdr, 6, frag_off)
        hdr[10:12] = b"\0\0"
        struct.pack_into("!H", hdr, 10, checksum(hdr))
        q.frags.sort()
        data = hdr + b"".join(p for _o, p in q.frags)
        out = Packet.parse(data, 0, iif=pkt.iif, ts=pkt.ts)
        if out is None:                       # cannot happen with a valid first header
            self.stats["ReasmFails"] += 1
            return None
        out.frag_sizes = list(q.sizes)
        self.stats["ReasmOKs"] += 1
        return out


# --- output: ip_fragment() / ip_do_fragment() ---------------------------------------------


def _options_fragment(hdr: bytearray) -> None:
    """ip_options_fragment(): NOOP out options without the copied flag (ihl kept)."""
    i, end = 20, len(hdr)
    while i < end:
        kind = hdr[i]
        if kind == 0:                         # IPOPT_END
            return
        if kind == 1:                         # IPOPT_NOOP
            i += 1
            continue
        if i + 1 >= end:
            return
        size = hdr[i + 1]
        if size < 2 or i + size > end:
            return
        if not kind & 0x80:
            hdr[i:i + size] = b"\x01" * size
        i += size


def refragment(pkt: Packet, mtu: int | None = None) -> list[bytes]:
    """Cut a datagram for output the way ip_fragment()/ip_do_fragment() would.

    The fragment size is ``max(pkt.frag_sizes)`` for a reassembled datagram
    (frag_max_size) and/or ``mtu``, whichever is smaller; a datagram that fits
    in it is returned whole, as ``[bytes]``.  Data per fragment is a multiple
    of 8 except in the last one; the header is copied, non-copied options are
    NOOPed from the second fragment on (ihl does not change).  No piece carries
    DF: a reassembled DF datagram whose fragments each fit leaves through
    ip_do_fragment()'s fast path, whose ip_fraglist_init()/ip_fraglist_prepare()
    write frag_off from the offset and MF alone (checked against Linux 6.18);
    one whose fragments do not fit gets fragmentation needed instead.  A fragment
    that is cut again keeps its offset and, if it had it, MF on its last piece.

    Returns ``[]`` when the kernel would answer ICMP fragmentation needed
    (ip_exceeds_mtu()/ip_fragment()): DF set and either the datagram exceeds
    ``mtu`` and was not reassembled, or one of its original fragments exceeds
    ``mtu``.  The caller sends the ICMP error with the next-hop MTU.  Also []
    if ``mtu`` leaves no room for 8 bytes of data.

    Not modelled: the fast path re-emits exactly the original fragment
    boundaries (in offset order); this model cuts at ``max(frag_sizes)``, which
    gives the same pieces when the sender cut equal fragments.
    """
    data = pkt.ip_bytes()
    hlen = pkt.ihl
    df = bool(data[6] & 0x40)
    fmax = max(pkt.frag_sizes) if pkt.frag_sizes else 0
    if df and mtu is not None and (fmax > mtu or (not fmax and len(data) > mtu)):
        return []
    sizes = [s for s in (mtu, fmax) if s]
    size = min(sizes) if sizes else len(data)
    if len(data) <= size:
        return [data]
    room = size - hlen                        # data space; full pieces are cut to & ~7
    if room < 8:
        return []
    hdr = bytearray(data[:hlen])
    payload = memoryview(data)[hlen:]
    start, not_last = pkt.frag, pkt.mf
    flags = 0                                 # see above: never DF on the pieces
    out, ptr, left = [], 0, len(payload)
    while left > 0:
        n = left if left <= room else room & ~7
        fo = (start + ptr) >> 3 | flags | (IP_MF if n < left or not_last else 0)
        struct.pack_into("!H", hdr, 2, hlen + n)
        struct.pack_into("!H", hdr, 6, fo)
        hdr[10:12] = b"\0\0"
        struct.pack_into("!H", hdr, 10, checksum(hdr))
        out.append(bytes(hdr) + payload[ptr:ptr + n])
        if ptr == 0:
            _options_fragment(hdr)
        ptr += n
        left -= n
    return out


__all__ = ["Defrag", "STAT_NAMES", "refragment"]
