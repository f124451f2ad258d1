"""The connection table and the per-packet entry point.

Models net/netfilter/nf_conntrack_core.c: nf_conntrack_in() (here conntrack_in),
resolve_normal_ct(), init_conntrack(), __nf_conntrack_confirm() (confirm),
nf_ct_delete()/nf_ct_kill() (kill), early_drop(), gc_worker() and
nf_conntrack_tuple_taken().

Rules this module keeps
-----------------------
* Time is the injected clock, read as jiffies (``int(seconds * hz)``) exactly
  like the kernel's u32 ``nfct_time_stamp``, so remaining timeouts print the
  same integer seconds as ``conntrack -L``.
* A new entry hangs off its packet (``pkt.ct``) until confirm() puts both of
  its tuples in ``self.hash``; a packet dropped before that leaves no trace.
* An entry whose deadline has passed is invisible at once: every lookup that
  meets it reaps it (with its DESTROY event), and gc_worker() sweeps the rest
  in slices, bucket by bucket, as the kernel's worker does.
* Events are cached on the entry (``ct.ecache``) and delivered when a packet
  of that entry passes the confirm hook; a plain timeout refresh sends none.
* Nothing here refers back to the packet or the table from a Conn, so no
  reference cycles exist and CPython frees entries by reference counting.
"""
from __future__ import annotations

import gc
import random
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence, TypeVar

from . import proto_generic, proto_gre, proto_icmp, proto_tcp, proto_udp, seqadj
from .expect import ExpectTable
from .helper_ftp import HELPERS, FtpMaster
from .conn import (HZ, IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW, IP_CT_RELATED,
                   IP_CT_RELATED_REPLY,
                   IPCT_DESTROY, IPCT_NEW, IPCT_RELATED, IPS_ASSURED, IPS_CONFIRMED, IPS_DYING,
                   IPS_EXPECTED, IPS_FIXED_TIMEOUT, IPS_NAT_CLASH, IPS_NAT_DONE_MASK, IPS_SEEN_REPLY,
                   IPS_SEQ_ADJUST, IPCT_REPLY, Conn)
from .profile import NEWEST, KernelProfile
from .sysctl import Sysctl
from .tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Tuple, get_tuple, interned, invert_tuple
# The verdicts and hooks (uapi.py), re-exported: nat, netfilter and the tests import them from here.
from .uapi import NF_ACCEPT as NF_ACCEPT, NF_DROP as NF_DROP, REPEAT
from .uapi import (NF_INET_FORWARD as NF_INET_FORWARD, NF_INET_LOCAL_IN as NF_INET_LOCAL_IN,
                   NF_INET_LOCAL_OUT as NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING as NF_INET_POST_ROUTING,
                   NF_INET_PRE_ROUTING as NF_INET_PRE_ROUTING)

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet

HOOK_NAMES = ["PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING"]

# gc_worker constants (seconds; GC_SCAN_EXPIRED_MAX is per slice)
GC_SCAN_INTERVAL_MAX = 60
GC_SCAN_INTERVAL_MIN = 1
GC_SCAN_INTERVAL_CLAMP = 300
GC_SCAN_INITIAL_COUNT = 100
# The kernel ends a slice after 10 ms of CPU; a model with an injected clock
# cannot measure that, so a slice ends after this many buckets instead.
GC_SCAN_BUCKETS_PER_SLICE = 1024
NF_CT_EVICTION_RANGE = 8

STAT_NAMES = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
              "search_restart", "clash_resolve", "chaintoolong")

# Trackers without .allow_clash in 6.18: a confirm clash always drops their packet.
# (ICMP gains it in 7.0; UDP, UDP-Lite, GRE and the generic tracker have it.)
IPPROTO_SCTP = 132
CLASH_NOT_ALLOWED = frozenset({IPPROTO_TCP, IPPROTO_ICMP, IPPROTO_SCTP})

PROTO_HANDLERS = {
    IPPROTO_TCP: proto_tcp.tcp_packet,
    IPPROTO_UDP: proto_udp.udp_packet,
    IPPROTO_ICMP: proto_icmp.icmp_packet,
    proto_gre.IPPROTO_GRE: proto_gre.gre_packet,
}

# listener(kind "NEW" | "UPDATE" | "DESTROY", ct, table, event bits)
EventListener = Callable[[str, Conn, "ConntrackTable", int], None]
_Side = TypeVar("_Side")                 # what a side table keeps per entry


def _forget_unconfirmed(side: dict[Conn, _Side]) -> None:
    """Drop what a side table holds for entries never confirmed: their packets were dropped
    (one packet is in flight at a time), and nothing else would ever free them."""
    for ct in [c for c in side if not c.status & IPS_CONFIRMED]:
        del side[ct]


def _can_merge(ct: Conn, loser: Conn, profile: KernelProfile) -> bool:
    """nf_ct_can_merge(): nf_ct_match() (both tuples equal) or nf_ct_match_reverse()
    (the loser is the same flow from its other end: both packets were NEW, 6.12+)."""
    same = ct.orig == loser.orig and ct.reply == loser.reply
    if not profile.clash_merge_reverse:
        # Before a4e6a1031e77 (6.12), __nf_ct_resolve_clash(): a winner without NAT done
        # merges whatever its tuples; no reverse match.
        return same or not ct.status & IPS_NAT_DONE_MASK
    return same or (ct.orig == loser.reply and ct.reply == loser.orig)


# gc_verdict()'s answers: what the gc worker does with one entry
GC_KEEP, GC_REAP, GC_EVICT = 0, 1, 2


def gc_verdict(ct: Conn, left: int, near_full: bool) -> int:
    """gc_worker()'s decision for one entry, ``left`` jiffies before its deadline: GC_REAP
    an expired one (nf_ct_is_expired()); near a full table (``near_full``: the table was
    full since the last run and holds 95% of nf_conntrack_max) GC_EVICT one that is not
    ASSURED or is a TCP connection that is closing (gc_worker_can_early_drop()); else GC_KEEP."""
    if left <= 0:
        return GC_REAP
    if near_full and (not ct.status & IPS_ASSURED or (
            ct.orig.proto == IPPROTO_TCP and proto_tcp.tcp_can_early_drop(ct.proto))):
        return GC_EVICT
    return GC_KEEP


class GcAverage:
    """gc_worker()'s running average of the time entries have left (gc_work's avg_timeout
    and count), which says when the next full scan starts.  A scan starts a new one."""

    __slots__ = ("hz", "avg", "count")

    def __init__(self, hz: int) -> None:
        self.hz = hz
        self.avg = GC_SCAN_INTERVAL_MAX * hz
        self.count = GC_SCAN_INITIAL_COUNT

    def add(self, left: int) -> None:
        """An entry the scan kept or evicted, ``left`` jiffies before its deadline, clamped
        to 1..300 s (a long-lived entry must not push the next run out for long)."""
        hz = self.hz
        left = min(max(left, GC_SCAN_INTERVAL_MIN * hz), GC_SCAN_INTERVAL_CLAMP * hz)
        self.count += 1
        self.avg += int((left - self.avg) / self.count)   # C division: truncates toward zero

    def next_run(self, elapsed: int) -> int:
        """Jiffies from the end of a scan that took ``elapsed`` (at least 1) to the next one:
        the average clamped to 1..60 s, less the time the scan took, at least 1."""
        avg = min(max(self.avg, GC_SCAN_INTERVAL_MIN * self.hz), GC_SCAN_INTERVAL_MAX * self.hz)
        return avg - elapsed if avg > elapsed else 1


def early_drop_choice(chains: Sequence[Sequence[Conn]], now_j: int) -> list[tuple[int, int, bool]]:
    """early_drop()'s decision over the new tuple's chain and the 7 after it: (chain,
    index, evict) for each entry to kill, in order.  Expired entries met are reaped
    (evict False); every live entry neither ASSURED nor dying is evicted; the walk
    stops after the first chain that evicted one."""
    actions: list[tuple[int, int, bool]] = []
    for c, chain in enumerate(chains):
        evicted = False
        for i, ct in enumerate(chain):
            if ct.timeout - now_j <= 0:
                actions.append((c, i, False))
            elif not ct.status & (IPS_ASSURED | IPS_DYING):
                actions.append((c, i, True))
                evicted = True
        if evicted:
            break
    return actions


class ConntrackTable:
    """One network namespace's conntrack state: table, settings, counters, gc.

    ``clock`` returns seconds (a float); replay and tests pass a settable one.
    """

    def __init__(self, clock: Callable[[], float], sysctl: Mapping[str, int | str] | None = None,
                 seed: int | None = None, profile: KernelProfile | None = None) -> None:
        self.clock = clock
        self.now_j = 0      # the clock in jiffies as conntrack_in read it for this packet
        self.profile = profile or NEWEST      # which kernel's behaviour (conntrack/profile.py)
        self.sysctl = sysctl if isinstance(sysctl, Sysctl) else Sysctl(sysctl)
        self.hz = hz = HZ
        self.rng = random.Random(seed)
        self.hash: dict[Tuple, Conn] = {}
        self.nbuckets = self.sysctl["nf_conntrack_buckets"]
        self.buckets: list[tuple[Conn, ...] | None] = [None] * self.nbuckets
        self.count = 0
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.listeners: list[EventListener] = []
        self.log: list[str] = []               # what the kernel would printk
        # What modules above conntrack keep per table (net_generic(): NAT's by-source hash,
        # nat/bysource.py), and what they ask to be told of each entry freed (nf_conntrack_free()
        # calls nat_hook->remove_nat_bysrc()): conntrack knows neither.
        self.pernet: dict[str, object] = {}
        self.destroy_hooks: list[Callable[[Conn], None]] = []
        # Helpers and expectations (expect.py, helper_ftp.py): kept beside the entries, so
        # an entry without a helper costs nothing.
        self.expect = ExpectTable(self)
        self.helpers: dict[Conn, FtpMaster] = {}      # entry -> its helper's state (nfct_help)
        self.masters: dict[Conn, Conn] = {}        # expected entry -> its master (ct->master)
        self.seqadj: dict[Conn, tuple[seqadj.SeqAdj, seqadj.SeqAdj]] = {}        # entry -> its nf_conn_seqadj (seqadj.py)
        # gc_worker state
        self.gc_next_bucket = 0
        self.gc_next_run: int | None = None     # jiffies; None until the clock is first read
        self.gc_average = GcAverage(hz)
        self.gc_start_time = 0
        self.gc_early_drop = False

    # --- time -------------------------------------------------------------------------

    def jiffies(self) -> int:
        return int(self.clock() * self.hz)

    def remaining(self, ct: Conn) -> int:
        """What conntrack -L prints: whole seconds left, never negative."""
        return ct.remaining(self.jiffies())

    def is_expired(self, ct: Conn) -> bool:
        return ct.is_expired(self.jiffies())

    def refresh(self, ct: Conn, seconds: int, pkt: Packet | None = None, direction: int = 0) -> None:
        """__nf_ct_refresh_acct(): the deadline becomes now + seconds (replaces, may
        shorten), and the packet is counted (nf_conntrack_acct).  Called for the packet
        conntrack_in() is tracking: "now" is the clock it read (``now_j``)."""
        if not ct.status & IPS_FIXED_TIMEOUT:
            extra = seconds * self.hz
            ct.timeout = self.now_j + extra if ct.status & IPS_CONFIRMED else extra
        if pkt is not None:
            self.acct(ct, pkt, direction)

    @staticmethod
    def acct(ct: Conn, pkt: Packet, direction: int) -> None:
        """nf_ct_acct_update(): packets and bytes (IP total length) per direction."""
        if ct.counters is not None:
            c = 2 * direction
            ct.counters[c] += 1
            ct.counters[c + 1] += pkt.tot_len

    # --- lookup -----------------------------------------------------------------------

    def find(self, t: Tuple) -> tuple[Conn, int] | None:
        """__nf_conntrack_find_get(): (ct, direction); an expired entry met is reaped."""
        ct = self.hash.get(t)
        if ct is None:
            return None
        if ct.timeout - self.jiffies() <= 0:
            self.kill(ct)
            return None
        return ct, (0 if ct.orig == t else 1)

    def tuple_taken(self, t: Tuple, ignored: Conn) -> bool:
        """nf_conntrack_tuple_taken(): is t a tuple of another live entry?  Counts `found`."""
        ct = self.hash.get(t)
        if ct is None or ct is ignored:
            return False
        if ct.timeout - self.jiffies() <= 0:
            self.kill(ct)
            return False
        if ct.orig == ignored.orig:
            return False          # the same flow: left to clash resolution at confirm
        self.stats["found"] += 1
        return True

    def conns(self, reap: bool = True) -> Iterator[Conn]:
        """Live confirmed entries, each once (a dump; expired ones met are reaped)."""
        now_j = self.jiffies()
        expired = []
        for t, ct in list(self.hash.items()):
            if ct.orig is not t and ct.orig != t:
                continue
            if ct.timeout - now_j <= 0:
                expired.append(ct)
                continue
            yield ct
        if reap:
            for ct in expired:
                self.kill(ct)

    # --- buckets (for early drop and the gc worker's walk) -------------------------------

    def _bucket(self, t: Tuple) -> int:
        return hash(t) % self.nbuckets

    def _bucket_add(self, ct: Conn) -> None:
        # A chain is a tuple: 48 bytes for one entry where a list takes 88, and chains
        # are short (about one entry per bucket at nf_conntrack_max) and rarely change.
        b = self._bucket(ct.orig)
        chain = self.buckets[b]
        self.buckets[b] = (ct,) if chain is None else chain + (ct,)

    def _bucket_del(self, ct: Conn) -> None:
        b = self._bucket(ct.orig)
        chain = self.buckets[b]
        if chain is not None:
            self.buckets[b] = tuple(other for other in chain if other is not ct) or None

    # --- the packet path ------------------------------------------------------------------

    def conntrack_in(self, pkt: Packet, hook: int) -> int:
        """nf_conntrack_in(): attach a conntrack and ctinfo to pkt (pkt.ct, pkt.ctinfo).

        Returns NF_ACCEPT or NF_DROP.  An INVALID packet is accepted with
        ``pkt.ct = None``: conntrack never drops invalid packets, the ruleset does.
        """
        pkt.ct = pkt.ctinfo = None
        if pkt.frag:                       # only whole datagrams are tracked
            self.stats["invalid"] += 1
            return NF_ACCEPT
        # The clock is read once per packet, like the kernel's nfct_time_stamp.
        self.now_j = now_j = int(self.clock() * self.hz)
        prerouting = hook == NF_INET_PRE_ROUTING
        if pkt.proto == IPPROTO_ICMP:
            kind, ct, ctinfo = proto_icmp.icmp_error(self, pkt, prerouting)
            if kind == "error":
                self.stats["error"] += 1
                return NF_ACCEPT
            if kind == "related":
                pkt.ct, pkt.ctinfo = ct, ctinfo
                return NF_ACCEPT
        handler = PROTO_HANDLERS.get(pkt.proto, proto_generic.generic_packet)
        while True:
            t = get_tuple(pkt)
            if t is None:
                self.stats["invalid"] += 1
                return NF_ACCEPT
            ct = self.hash.get(t)                  # __nf_conntrack_find_get(), as find()
            if ct is not None and ct.timeout - now_j <= 0:
                self.kill(ct)                      # an expired entry met is reaped
                ct = None
            if ct is None:
                new = self.init_conntrack(t, pkt)
                if new is None:
                    self.stats["invalid"] += 1
                    return NF_ACCEPT
                if not isinstance(new, Conn):      # NF_DROP: the table is full
                    self.stats["drop"] += 1
                    return NF_DROP
                ct = new
                direction = 0
            else:
                direction = 0 if ct.orig == t else 1
            # resolve_normal_ct(): the per-packet classification.
            if direction:
                ctinfo = IP_CT_ESTABLISHED_REPLY
            elif ct.status & IPS_SEEN_REPLY:
                ctinfo = IP_CT_ESTABLISHED
            elif ct.status & IPS_EXPECTED:
                ctinfo = IP_CT_RELATED
            else:
                ctinfo = IP_CT_NEW
            ret = handler(self, ct, pkt, ctinfo, direction, prerouting)
            if ret == REPEAT:
                continue                   # a SYN reopened a closed connection: start over
            if ret <= 0:
                self.stats["invalid"] += 1
                return NF_ACCEPT
            break
        if ctinfo == IP_CT_ESTABLISHED_REPLY and not ct.status & IPS_SEEN_REPLY:
            ct.status |= IPS_SEEN_REPLY
            ct.ecache |= IPCT_REPLY
        pkt.ct, pkt.ctinfo = ct, ctinfo
        return NF_ACCEPT

    def init_conntrack(self, t: Tuple, pkt: Packet) -> Conn | int | None:
        """init_conntrack(): a new, unconfirmed entry; None if no reply tuple exists,
        NF_DROP if the table is full and nothing could be evicted."""
        t = interned(t)
        reply = invert_tuple(t)
        if reply is None:
            return None
        limit = self.sysctl["nf_conntrack_max"]
        if limit and self.count + 1 > limit and not self.early_drop(t):
            self.gc_early_drop = True
            self.log.append("nf_conntrack: table full, dropping packet")
            return NF_DROP
        ct = Conn(t, reply)
        if self.sysctl["nf_conntrack_acct"]:
            ct.counters = [0, 0, 0, 0]
        if self.expect.items:
            exp = self.expect.find(t)
            if exp is not None:            # the entry is RELATED to the helper's master
                ct.status |= IPS_EXPECTED
                ct.mark = exp.master.mark
                _forget_unconfirmed(self.masters)
                self.masters[ct] = exp.master
                if exp.expectfn is not None:
                    exp.expectfn(self, ct, exp)    # NAT: nf_nat_follow_master()
        return ct

    def assign_helper(self, ct: Conn, name: str) -> None:
        """The CT target's template (__nf_ct_try_assign_helper()) or nft_ct_helper_obj_eval():
        a new, unconfirmed entry of the helper's protocol gets it; others are left alone."""
        if ct.status & IPS_CONFIRMED or ct in self.helpers or ct.orig.proto != IPPROTO_TCP:
            return
        _forget_unconfirmed(self.helpers)
        self.helpers[ct] = HELPERS[name]()

    def use(self, ct: Conn) -> int:
        """What `conntrack -L` prints after use=: the table's reference plus one held by
        each entry whose master it is (ct->master; seen on 6.18: a master with two live
        data connections shows use=3, an expectation adds none)."""
        if not self.masters:
            return 1
        return 1 + sum(1 for master in self.masters.values() if master is ct)

    def helper_name(self, ct: Conn) -> str | None:
        """What `conntrack -L` prints after helper=, if anything."""
        info = self.helpers.get(ct) if self.helpers else None
        return info.name if info is not None else None

    def confirm(self, pkt: Packet) -> int:
        """nf_conntrack_confirm() at POST_ROUTING / LOCAL_IN: insert a new entry, deliver events."""
        ct = pkt.ct
        if ct is None:
            return NF_ACCEPT
        assert pkt.ctinfo is not None      # conntrack_in sets pkt.ct and pkt.ctinfo together
        if self.helpers and pkt.ctinfo != IP_CT_RELATED_REPLY:
            info = self.helpers.get(ct)    # nf_confirm(): the helper sees the packet first
            if info is not None and info.help(self, ct, pkt, pkt.ctinfo) != NF_ACCEPT:
                return NF_DROP
        if ct.status & IPS_SEQ_ADJUST and pkt.ctinfo != IP_CT_RELATED_REPLY:
            seqadj.seq_adjust(self, ct, pkt, pkt.ctinfo)   # nf_confirm(): nf_ct_seq_adjust()
        if not ct.status & IPS_CONFIRMED:
            if pkt.ctinfo >= IP_CT_ESTABLISHED_REPLY:
                return NF_ACCEPT           # only original-direction packets confirm
            if ct.status & IPS_DYING:
                self.stats["insert_failed"] += 1
                return NF_DROP
            for t in (ct.orig, ct.reply):
                other = self.live(t)
                if other is not None:
                    break
            if other is not None:
                # Another CPU confirmed the same flow first (nattrack.conntrack.cpus).
                if self.resolve_clash(pkt, other) == NF_DROP:
                    return NF_DROP
                ct = pkt.ct                # the winner, or the loser in the reply direction
            else:
                ct.timeout += self.jiffies()
                self.hash[ct.orig] = ct
                self.hash[ct.reply] = ct
                self._bucket_add(ct)
                self.count += 1
                ct.status |= IPS_CONFIRMED
                ct.ecache |= IPCT_RELATED if ct.status & IPS_EXPECTED else IPCT_NEW
        if ct.ecache and not ct.status & IPS_DYING:
            self.deliver_cached_events(ct)
        return NF_ACCEPT

    def live(self, t: Tuple) -> Conn | None:
        """The confirmed entry holding tuple t (either direction); an expired one is reaped."""
        other = self.hash.get(t)
        if other is not None and self.is_expired(other):
            self.kill(other)
            return None
        return other

    def resolve_clash(self, pkt: Packet, winner: Conn) -> int:
        """nf_ct_resolve_clash() (nf_conntrack_core.c, 6.18): pkt's new entry lost the race
        to ``winner``, confirmed on another CPU since pkt's conntrack_in.

        * __nf_ct_resolve_clash(): if nf_ct_can_merge() (the same tuples both ways, or
          the same flow seen from its other end) pkt adopts the winner; the loser's bytes
          are added to it (nf_ct_acct_merge) and the loser is freed.  clash_resolve++.
        * nf_ct_resolve_clash_harder(): else, if nothing holds the loser's reply tuple,
          the loser is inserted in the reply direction only (its original tuple stays
          the winner's, `conntrack -L` does not show it), with IPS_NAT_CLASH |
          IPS_FIXED_TIMEOUT and one second to live, so replies to pkt's NAT come back.
          clash_resolve++.  If its reply tuple is held, that holder is tried for a merge.
        * Otherwise, and always for protocols without ``allow_clash`` (TCP, ICMP, SCTP),
          the packet is dropped: drop++ and insert_failed++.

        Older kernels (``self.profile``): no GRE clash support before 6.5, and before
        6.12 no reverse merge but a merge with any winner without NAT done.
        """
        loser = pkt.ct
        proto = loser.orig.proto
        # GRE's allow_clash came with d671fd82eaa9 (6.5): before, a GRE clash drops.
        allow_clash = proto not in CLASH_NOT_ALLOWED and (
            proto != proto_gre.IPPROTO_GRE or self.profile.gre_clash)
        if allow_clash:
            if _can_merge(winner, loser, self.profile):
                return self._adopt(pkt, winner)
            holder = self.live(loser.reply)
            if holder is not None:
                if _can_merge(holder, loser, self.profile):
                    return self._adopt(pkt, holder)
            else:
                loser.timeout = self.jiffies() + self.hz
                loser.status |= IPS_FIXED_TIMEOUT | IPS_NAT_CLASH | IPS_CONFIRMED
                self.hash[loser.reply] = loser     # the original direction is a fake add
                self._bucket_add(loser)
                self.count += 1
                self.stats["clash_resolve"] += 1
                return NF_ACCEPT
        self.stats["drop"] += 1
        self.stats["insert_failed"] += 1
        loser.status |= IPS_DYING                   # freed with its packet
        self._run_destroy_hooks(loser)
        pkt.ct = None
        return NF_DROP

    def _adopt(self, pkt: Packet, winner: Conn) -> int:
        """The merge of __nf_ct_resolve_clash(): pkt goes on with the winner's entry."""
        loser = pkt.ct
        assert pkt.ctinfo is not None      # confirm() has checked: set with pkt.ct
        if winner.counters is not None and loser.counters is not None:
            c = 2 * (pkt.ctinfo >= IP_CT_ESTABLISHED_REPLY)
            winner.counters[c] += 1                 # nf_ct_acct_merge(): one packet, its bytes
            winner.counters[c + 1] += loser.counters[c + 1]
        loser.status |= IPS_DYING
        self._run_destroy_hooks(loser)
        pkt.ct = winner                             # nf_ct_set(skb, ct, ctinfo): ctinfo stays
        self.stats["clash_resolve"] += 1
        return NF_ACCEPT

    # --- events ----------------------------------------------------------------------------

    def deliver_cached_events(self, ct: Conn) -> None:
        """nf_ct_deliver_cached_events(): one NEW or UPDATE message for all cached changes."""
        events, ct.ecache = ct.ecache, 0
        if not events or not self.listeners:
            return
        kind = "NEW" if events & (IPCT_NEW | IPCT_RELATED) else "UPDATE"
        for listener in self.listeners:
            listener(kind, ct, self, events)

    # --- deletion ----------------------------------------------------------------------------

    def kill(self, ct: Conn) -> bool:
        """nf_ct_delete(): unlink the entry and report DESTROY (once)."""
        if ct.status & IPS_DYING:
            return False
        ct.status |= IPS_DYING
        if ct.status & IPS_CONFIRMED:
            for listener in self.listeners:
                listener("DESTROY", ct, self, IPCT_DESTROY)
            if self.hash.get(ct.orig) is ct:
                del self.hash[ct.orig]
            if self.hash.get(ct.reply) is ct:
                del self.hash[ct.reply]
            self._bucket_del(ct)
            self.count -= 1
            self._run_destroy_hooks(ct)
        if self.helpers:
            self.helpers.pop(ct, None)
        if self.masters:
            self.masters.pop(ct, None)
        if self.seqadj:
            self.seqadj.pop(ct, None)
        if self.expect.items:
            self.expect.remove_for(ct)     # nf_ct_remove_expectations()
        return True

    def flush(self) -> int:
        """conntrack -F: delete every entry."""
        doomed = list(self.conns(reap=False))
        for ct in doomed:
            self.kill(ct)
        return len(doomed)

    def _run_destroy_hooks(self, ct: Conn) -> None:
        """nf_conntrack_free()'s call of nat_hook->remove_nat_bysrc(): each module above that
        registered in ``destroy_hooks`` forgets the entry."""
        for hook in self.destroy_hooks:
            hook(ct)

    # --- table full ---------------------------------------------------------------------------

    def early_drop(self, t: Tuple) -> bool:
        """early_drop(): evict every non-ASSURED entry of the first of 8 buckets that has one
        (early_drop_choice(), which lab 5 replaces); expired ones met are reaped in passing."""
        now_j = self.jiffies()
        b = self._bucket(t)
        chains = [self.buckets[(b + k) % self.nbuckets] or () for k in range(NF_CT_EVICTION_RANGE)]
        drops = 0
        for c, i, evict in early_drop_choice(chains, now_j):
            if self.kill(chains[c][i]) and evict:
                drops += 1
        if drops:
            self.stats["early_drop"] += drops
            return True
        return False

    # --- garbage collection --------------------------------------------------------------------

    def gc_worker(self) -> int:
        """One slice of gc_worker(): reap expired entries bucket by bucket.

        Returns the delay in jiffies until the next slice should run (0 = at
        once), and sets ``gc_next_run``.  The average remaining lifetime of
        what it saw decides when the next full pass starts (1 to 60 s).
        """
        now_j = self.jiffies()
        hz = self.hz
        i = self.gc_next_bucket
        max95 = 0
        if self.gc_early_drop:
            max95 = self.sysctl["nf_conntrack_max"] // 100 * 95
        if i == 0:
            self.gc_average = GcAverage(hz)
            self.gc_start_time = now_j
        average = self.gc_average
        expired_max = 64000 // hz
        expired_count = 0
        end = min(i + GC_SCAN_BUCKETS_PER_SLICE, self.nbuckets)
        buckets = self.buckets
        while i < end:
            chain = buckets[i]
            if chain:
                for ct in chain:
                    if expired_count > expired_max:
                        self.gc_next_bucket = i
                        over = now_j - self.gc_start_time >= GC_SCAN_INTERVAL_MAX * hz
                        return self._gc_schedule(0 if over else 1, now_j)
                    left = ct.timeout - now_j
                    verdict = gc_verdict(ct, left, 0 < max95 <= self.count)
                    if verdict == GC_REAP:
                        self.kill(ct)
                        expired_count += 1
                        continue
                    average.add(left)
                    if verdict == GC_EVICT:
                        self.kill(ct)      # gc early drop near a full table
                        expired_count += 1
            i += 1
        if i < self.nbuckets:
            # Slice over: the kernel reschedules at once and goes on where it stopped.
            self.gc_next_bucket = i
            return self._gc_schedule(0, now_j)
        self.gc_next_bucket = 0
        return self._gc_schedule(average.next_run(max(now_j - self.gc_start_time, 1)), now_j)

    def _gc_schedule(self, delay: int, now_j: int) -> int:
        if delay:
            self.gc_early_drop = False
        self.gc_next_run = now_j + delay
        return delay

    def run_gc_until(self, until: float, set_clock: Callable[[float], None]) -> None:
        """Run the gc worker at every moment it would have run up to ``until`` (replay).

        ``set_clock`` moves the injected clock, so DESTROY events carry the
        time the kernel's worker would have sent them.
        """
        until_j = int(until * self.hz)
        if self.gc_next_run is None:
            self.gc_next_run = until_j          # the worker starts with the first packet
        while self.gc_next_run <= until_j:
            set_clock(self.gc_next_run / self.hz)
            self.gc_worker()
        set_clock(until)


_GC_TUNED = False


def tune_gc() -> None:
    """Keep CPython's cyclic collector off a million long-lived entries.

    Entries have no reference cycles, so reference counting frees them; the
    cyclic collector would only walk them (about a second for a million).
    The first call collects once and freezes everything alive (moves it out of
    the collector's reach) and makes the older generations rare; later calls
    (the router makes them as the table grows) only freeze, which costs nothing.
    Measured with a million entries: young collections under 2 ms, no old ones.
    """
    global _GC_TUNED
    if not _GC_TUNED:
        gc.collect()
        gc.set_threshold(10_000, 1_000_000, 1_000_000)
        _GC_TUNED = True
    gc.freeze()
