"""Kernel mode: the real kernel routes and translates, the Python tracker shadows it.

The namespace's kernel gets the same rules file (``iptables-restore``, or ``nft -f``
for an nft file: its tables replace the ones it names and the ones loaded before),
``ip_forward=1`` and the ``--sysctl`` settings; one extra rule,
``-t mangle -A PREROUTING -m conntrack ! --ctstate UNTRACKED`` (it changes
nothing), makes sure the kernel tracks even when the rules alone would not.

One AF_PACKET socket bound to *all* interfaces sees every frame twice, in the
kernel's own order: the ingress copy is queued to the socket (in
__netif_receive_skb_core) before the kernel routes it, so the translated copy
that leaves (dev_queue_xmit_nit, ``PACKET_OUTGOING``) always comes later in the
same queue.  Ingress frames feed a :class:`Router` whose output is thrown away.
The socket is read in batches (batch.py: one ``recvmmsg`` takes every frame waiting,
up to RX_BATCH, into fixed slots; ``sll_ifindex`` says which interface): an egress
copy is parsed where it landed, an ingress frame copied out once for the engine.
With ``NATTRACK_NO_BATCH=1`` (or no recvmmsg) it reads one frame per call.

Learning the kernel's NAT choices.  A datagram whose tuple is not in the
shadow's table may create a connection, and the shadow must bind it to the
port the kernel chose, not to one of its own.  Such a datagram is *held*
(FIFO) until its translated copy leaves the kernel -- matched on what NAT does
not change: protocol, IP id, total length and the L4 bytes after the ports
(TCP sequence numbers, UDP length and payload, ICMP type/code/sequence and
payload) -- or until 50 ms have passed (the kernel dropped it or delivered it
locally).  The shadow then processes it with ``nat_forced(table)[orig] =
<tuple that left>``, which ``nattrack.nat.core.nf_nat_setup_info`` binds to (a
one-point range, as ctnetlink passes) instead of searching: the
address/port part that manipulation changes comes from the kernel's packet.
When no copy left (the datagram waits in the kernel's ARP queue, or was
answered locally), the kernel's table is asked instead (``conntrack -G``, at
most 20 times a second).

Datagrams of known connections are processed at once, unless something is
held: then they queue behind it, so the shadow sees everything in the
kernel's order.  An outgoing IPv4
frame that matches no ingress frame is counted: ``shadow_missed`` (the kernel
forwarded something the shadow never got: a full socket buffer) or
``kernel_originated`` (the kernel's own packets: RSTs, ICMP errors, echo replies),
which the shadow runs through its LOCAL_OUT path as the kernel did (except echo
replies and ICMP errors, which the engine makes itself: icmp_echo(), icmp_send()).  Within a second of a socket overflow
every unexplained copy counts as missed: a masqueraded packet the shadow lost
would look like one of the kernel's own.  ``shadow_missed`` is therefore a lower
bound: when the socket drops BOTH copies of a datagram nothing shows it was ever
there; ``socket_drops`` (frames the packet socket dropped) says how much worse it
may be, and a shadow whose socket dropped frames may disagree with the kernel
until the affected connections end (nothing resynchronises them).

What it knows it missed, per flow (the ``missed`` verb, read by ``nattrack diff``): a
hole in a direction's TCP sequence numbers that opens while the socket is dropping
frames, and the unmatched copies above, attributed to the entry they belong to.  A
flow with such losses that differs from the kernel's is put down to them, not to the
trackers' transitions.  Below the lab's link rate (topo.py, tbf) the shadow loses
nothing: bench/README.md, figure 6.

Rules change like the kernel's (``replace_rules``): iptables-restore (or ``nft -f``, the
nft tables replaced) in the namespace, then the shadow's tables swapped under the
lock; both connection tables stay.

The kernel's conntrack table is flushed when the shadow starts (it starts
empty too) and when it stops (entries must not outlive the rules that made them).
"""
from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import time
from collections import deque

from ..conntrack import show
from ..conntrack.conn import IPS_SEQ_ADJUST
from ..conntrack.core import get_tuple
from ..conntrack.sysctl import PREFIX
from ..conntrack.tuple import (IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PORT_PROTOS, PROTO_NAMES, Tuple,
                               int2ip, invert_tuple)
from ..nat.bysource import nat_forced
from ..netfilter.rulesfile import is_nft, nat_helper_modules, to_iptables_restore, to_nft
from ..ipv4.stack import Router
from ..packet.ipv4 import ICMP_ERROR_TYPES, ICMP_QUERY_TYPES, Packet
from .batch import RxBatch, SingleRx, mmsg_problem
from .dataplane import BATCH, PACKET_OUTGOING, RX_BATCH, RX_SLOT, VNET_F_NEEDS_CSUM, Dataplane, Port
from .quiet import (VNET_LEN, NamespaceChanges, empty_table, finish_checksum, packet_drops,
                    packet_socket, run)

log = logging.getLogger("nattrack.router")

HOLD_S = 0.05                   # how long a first packet waits for the kernel's copy
LOOKUPS_PER_S = 20              # conntrack -G calls when no copy came (rate limit)
RECENT_MAX = 8192               # ingress datagrams remembered until their copy leaves
STALE_S = 0.5                   # a copy this late belongs to no datagram processed at once
FORCE_TRACKING = ["PREROUTING", "-m", "conntrack", "!", "--ctstate", "UNTRACKED"]
PACKET_HOST, PACKET_BROADCAST = 0, 1



def load_nat_helpers(rules_text: str | None) -> None:
    """Load what rules that attach a helper need (nat_helper_modules(): nf_nat_ftp), or
    the kernel would leave the private address in PORT unrewritten while the shadow
    rewrites it.  Without modprobe, nothing to do."""
    for module in nat_helper_modules(rules_text or ""):
        try:
            run(["modprobe", "-q", module], check=False)
        except OSError:
            pass


# --- matching the ingress and egress copies of one datagram -------------------------------------

def nat_invariant_key(pkt: Packet) -> tuple:
    """What NAT leaves alone: protocol, IP id, total length, fragment offset and the L4
    bytes past ports and checksum (the first 16 of the payload; for an ICMP error, the
    quoted datagram's length, id and protocol)."""
    buf, l4 = pkt.buf, pkt.l4
    end = pkt.off + pkt.tot_len
    proto = pkt.proto
    if pkt.frag:
        sig = bytes(buf[l4:min(end, l4 + 16)])
    elif proto == IPPROTO_TCP:
        sig = bytes(buf[l4 + 4:min(end, l4 + 16)])                 # seq, ack, offset, flags, window
    elif proto == IPPROTO_UDP:
        sig = bytes(buf[l4 + 4:min(end, l4 + 6)]) + bytes(buf[l4 + 8:min(end, l4 + 24)])
    elif proto == IPPROTO_ICMP and pkt.itype in ICMP_QUERY_TYPES:
        sig = bytes(buf[l4:min(end, l4 + 2)]) + bytes(buf[l4 + 6:min(end, l4 + 24)])
    elif proto == IPPROTO_ICMP:                 # an error: NAT rewrites the quoted header too
        sig = (bytes(buf[l4:min(end, l4 + 2)]) + bytes(buf[l4 + 10:min(end, l4 + 14)])
               + bytes(buf[l4 + 17:min(end, l4 + 18)]))    # type, code; quoted length, id, proto
    else:
        sig = bytes(buf[l4:min(end, l4 + 16)])
    return (proto, pkt.ipid, pkt.tot_len, pkt.frag, sig)


def dnat_possible(rs) -> bool:
    """Could a rule of ``rs`` change a destination in PREROUTING (a rule in a nat
    PREROUTING chain: iptables' built-in one, or an nft nat base chain on the hook)?"""
    if rs is None:
        return False
    if rs.syntax == "nft":
        return any(rs.tables[t][c] for _p, t, c in rs.hooks.get(("nat", "PREROUTING"), ()))
    return bool(rs.tables.get("nat", {}).get("PREROUTING"))


class Held:
    """A datagram waiting its turn in the shadow: an ingress one (``out=False``) waits for
    its copy to leave the kernel, a kernel-originated one (``out=True``) only for those
    ahead of it.  ``egress`` is the tuple it left with; ``local`` marks an ingress
    datagram the kernel answered itself (no copy will leave)."""
    __slots__ = ("pkt", "deadline", "egress", "out", "local", "done")

    def __init__(self, pkt: Packet, deadline: float, out: bool = False) -> None:
        self.pkt, self.deadline, self.out = pkt, deadline, out
        self.egress = None
        self.local = False
        self.done = False                    # processed (a copy coming later is stale)

    def ready(self, now: float) -> bool:
        return self.out or self.local or self.egress is not None or self.deadline <= now


class ShadowDataplane(Dataplane):
    """Kernel mode: sniff, shadow, and learn the kernel's NAT choices."""

    mode = "kernel"
    printk_prefix = "shadow"          # the kernel prints its own lines (dmesg)

    def __init__(self, router: Router, ifaces: dict[str, list[str]], rules_text: str | None,
                 kernel_sysctls: dict[str, str], routes: dict[str, str] | None = None,
                 changes: NamespaceChanges | None = None) -> None:
        super().__init__(router, ifaces, changes)
        self.rules_text = rules_text
        self.kernel_sysctls = kernel_sysctls
        self.routes = routes or {}
        self.held: deque[Held] = deque()
        # Ingress datagrams not yet seen leaving, per NAT-invariant key, oldest first: a
        # Held, or the time a datagram processed at once arrived.
        self.inflight: dict[tuple, deque] = {}
        self.inflight_order: deque[tuple] = deque()          # (key, item), for forgetting
        self.sock: socket.socket | None = None
        self.counters.update(held=0, held_matched=0, hold_timeouts=0, late_copies=0, kernel_lookups=0,
                             shadow_missed=0, kernel_originated=0, shadow_disagrees=0,
                             csum_completed=0)
        self._lookup_window, self._lookups = 0.0, 0
        self._lossy_until = 0.0        # after socket drops, an unexplained copy counts as missed
        # What the shadow knows it missed, per direction of a flow (the tuple an ingress
        # datagram had, or an egress copy's): TCP sequence holes seen while the socket
        # was dropping, and copies that left the kernel without their ingress twin.
        self.seq_next: dict[Tuple, list] = {}          # tuple -> [next seq, largest segment]
        self.missed_by_tuple: dict[Tuple, int] = {}
        self._pruned_at = 0.0
        self._dnat_possible = dnat_possible(router.ruleset)

    # --- set-up -----------------------------------------------------------------------------

    def setup(self) -> None:
        ch = self.changes
        for name, cidrs in self.ifaces.items():
            for cidr in cidrs:
                ch.ensure_addr(name, cidr)
            ch.offloads_off(name)
        for dest, via in self.routes.items():
            iface, _, gw = via.partition(" via ")
            ch.ensure_route(dest, iface.strip(), gw.strip() or None)
        load_nat_helpers(self.rules_text)
        if self.rules_text and is_nft(self.rules_text):
            ch.nft_load(self.rules_text, self.router.ruleset.tables)
        elif self.rules_text:
            ch.iptables_restore(self.rules_text)
        ch.iptables("mangle", ["-A", *FORCE_TRACKING], ["-D", *FORCE_TRACKING])
        for key, value in self.kernel_sysctls.items():     # nf_conntrack is loaded by now
            ch.sysctl(key, value)
        for name, cidrs in self.ifaces.items():
            port = Port(name, cidrs)
            self.router.ifaces[name].mtu = port.mtu
            self.ports[name] = port
        self.sock = packet_socket(None)                    # listening before the kernel forwards
        self._register(self.sock.fileno(), self._drain)
        why = "NATTRACK_NO_BATCH=1" if os.environ.get("NATTRACK_NO_BATCH") == "1" else mmsg_problem(self.sock)
        if why:
            log.info("kernel mode: the shadow reads one frame per system call (no recvmmsg): %s", why)
        self._rx = (SingleRx if why else RxBatch)(RX_BATCH, RX_SLOT)
        self._port_by_index = {port.ifindex: port for port in self.ports.values()}
        run(["conntrack", "-F"], check=False)              # both tables start empty
        ch.sysctl("net.ipv4.ip_forward", 1)
        log.info("kernel mode: shadowing %s", ", ".join(self.ports))

    def close(self) -> list[str]:
        """Undo, then flush the kernel's table: what the rules made must not outlive them."""
        if self.sock is not None:
            self.sock.close()
        problems = super().close()
        run(["conntrack", "-F"], check=False)
        return problems

    def set_kernel_sysctl(self, key: str, value) -> None:
        full = key if "." in key else PREFIX + key
        self.changes.sysctl(full, value)

    def replace_rules(self, new) -> list[str]:
        """The kernel's tables first (``iptables-restore`` in this namespace: all or
        nothing, a refusal raises SetupError and changes nothing), then the shadow's, under
        the lock.  What the socket already holds is shadowed first, under the old rules
        the kernel applied to it."""
        self._catch_up()
        old = self.router.ruleset
        if new.syntax == "nft":
            if old is not None and old.syntax == "iptables":   # the legacy backend keeps them
                self.changes.iptables_restore("".join(empty_table(t) for t in old.tables))
            self.changes.nft_load(to_nft(new), new.tables)
        else:
            if old is not None and old.syntax == "nft":
                self.changes.nft_load("", ())
            self.changes.iptables_restore(to_iptables_restore(new))
        # A restore naming mangle, or an nft file's own `flush ruleset`, took FORCE_TRACKING
        # away; setup's journal entry deletes it again at the end.
        if run(["iptables", "-w", "-t", "mangle", "-C", *FORCE_TRACKING], check=False).returncode:
            run(["iptables", "-w", "-t", "mangle", "-A", *FORCE_TRACKING])
        tables = super().replace_rules(new)
        rs = self.router.ruleset
        self.rules_text = to_nft(rs) if rs.syntax == "nft" else to_iptables_restore(rs)
        load_nat_helpers(self.rules_text)
        self._dnat_possible = dnat_possible(rs)
        return tables

    def _catch_up(self, rounds: int = 64) -> None:
        """Read what the socket holds now (the data path is paused: we hold the lock)."""
        for _ in range(rounds):
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                break
            self._drain()

    # --- the loop's work -----------------------------------------------------------------------

    def poll_timeout(self) -> float:
        return 0.01 if self.held else super().poll_timeout()

    def _drain(self) -> None:
        """Read what the socket holds, a batch per system call (recvmmsg; at most BATCH
        frames a round), and sort each frame: ingress, egress, or not ours.  An egress
        copy is parsed in its slot (only its NAT-invariant key and tuple are kept); an
        ingress frame is copied out, since the engine keeps and rewrites its buffer."""
        sock, rx = self.sock, self._rx
        view, slot, length, pkttype, ifindex = rx.view, rx.slot, rx.length, rx.pkttype, rx.ifindex
        by_index = self._port_by_index
        capture = self.capture
        counters = self.counters
        now = time.time()
        n = 0
        try:
            while n < BATCH:
                got = rx.recv(sock)
                if not got:
                    break
                for i in range(got):
                    port = by_index.get(ifindex(i))
                    if port is None:
                        continue
                    n += 1
                    try:
                        off = i * slot
                        size = length(i)
                        if view[off] & VNET_F_NEEDS_CSUM and finish_checksum(view[off:off + size], size):
                            counters["csum_completed"] += 1     # left to offload by a veth peer
                        frame = view[off + VNET_LEN:off + size]
                        size -= VNET_LEN
                        if capture is not None:
                            capture.write(now, port.name, frame)
                        kind = pkttype(i)
                        if size < 34:
                            counters["runts"] += 1
                        elif frame[12] != 8 or frame[13] != 0:
                            counters["not_ipv4"] += 1
                        elif kind == PACKET_OUTGOING:
                            self._egress(port, frame)
                        elif kind in (PACKET_HOST, PACKET_BROADCAST):
                            self._ingress(port, bytearray(frame), now, kind)
                        else:
                            counters["not_for_us"] += 1
                    except Exception as exc:               # noqa: BLE001
                        self.frame_error(exc)
                if got < rx.count:          # the socket is empty: epoll says when more comes
                    break
        finally:
            counters["rx_frames"] += n
        if n >= BATCH:                                     # busy: did the socket overflow?
            self._check_drops(now)
        if self.held:
            self._release(time.time())

    def _check_drops(self, now: float) -> None:
        drops = packet_drops(self.sock)
        if drops:
            self.counters["socket_drops"] += drops
            self._lossy_until = now + 1.0

    def _ingress(self, port: Port, frame: bytearray, now: float, pkttype: int) -> None:
        pkt = Packet.parse(frame, 14, port.name, now)
        if pkt is None:
            self.router.counters["ip_hdr_errors"] += 1
            return
        if pkttype == PACKET_BROADCAST and pkt.dst not in self.router.local:
            self.counters["not_for_us"] += 1
            return
        if pkt.proto == IPPROTO_TCP and pkt.l4ok:
            self._seq_check(pkt, now)
        key = nat_invariant_key(pkt)
        if self.held or self._may_be_new(pkt):
            h = Held(pkt, now + HOLD_S)
            self.held.append(h)
            self._inflight(key, h)
            self.counters["held"] += 1
            return
        v = self.receive(pkt)
        if pkt.ct is not None and pkt.ct.status & IPS_SEQ_ADJUST and v.sent and v.sent[0].pkt:
            # nf_nat_ftp lengthened a payload, nf_ct_seqadj moves this connection's sequence
            # numbers: the kernel's copy carries them as the engine's output does.
            key = nat_invariant_key(v.sent[0].pkt)
        self._inflight(key, now)

    def _seq_check(self, pkt: Packet, now: float) -> None:
        """A hole in one direction's TCP sequence numbers, while the socket is dropping
        frames, is segments the kernel forwarded and the shadow never saw (a sender
        never skips sequence space).  Counted in segments of the largest size seen."""
        t = Tuple(pkt.src, pkt.dst, IPPROTO_TCP, pkt.sport, pkt.dport)
        flags = pkt.tcpflags
        length = pkt.payload_len + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)
        st = self.seq_next.get(t)
        if st is None or flags & 0x02:
            self.seq_next[t] = [(pkt.seq + length) & 0xFFFFFFFF, max(length, 1)]
            return
        ahead = (pkt.seq - st[0]) & 0xFFFFFFFF
        if ahead >= 0x40000000:                     # behind: a retransmission or keepalive
            end = (pkt.seq + length - st[0]) & 0xFFFFFFFF
            if 0 < end < 0x40000000:
                st[0] = (pkt.seq + length) & 0xFFFFFFFF
            return
        if length > st[1]:
            st[1] = length
        if ahead:
            self._check_drops(now)
            if self._lossy_until >= now:
                lost = -(-ahead // st[1])
                self.missed_by_tuple[t] = self.missed_by_tuple.get(t, 0) + lost
        st[0] = (pkt.seq + length) & 0xFFFFFFFF

    def missed(self) -> dict:
        """Per flow (its ``conntrack -L`` line), the packets the shadow knows it missed;
        and the socket's drops, which may hide more (both copies of a datagram lost)."""
        table = self.router.ct
        now_j = table.jiffies()
        per_ct: dict[int, list] = {}
        unattributed = 0
        for t, n in self.missed_by_tuple.items():
            ct = table.hash.get(t) or table.hash.get(invert_tuple(t))
            if ct is None:
                unattributed += n
                continue
            entry = per_ct.setdefault(id(ct), [ct, 0])
            entry[1] += n
        flows = [{"line": show.format_conn(ct, now_j), "missed": n} for ct, n in per_ct.values()]
        out = super().missed()
        out.update(flows=flows, unattributed=unattributed,
                   shadow_missed=self.counters["shadow_missed"])
        return out

    def _prune(self, now: float) -> None:
        """Forget the sequence state and counts of flows the table no longer has."""
        if now - self._pruned_at < 5.0:
            return
        self._pruned_at = now
        hashed = self.router.ct.hash
        for t in [t for t in self.seq_next if t not in hashed]:
            del self.seq_next[t]
        for t in [t for t in self.missed_by_tuple
                  if t not in hashed and invert_tuple(t) not in hashed]:
            del self.missed_by_tuple[t]

    def _may_be_new(self, pkt: Packet) -> bool:
        """Could conntrack create an entry (and NAT bind it) for this datagram?"""
        if pkt.frag or pkt.mf:
            return False
        if pkt.proto == IPPROTO_ICMP and pkt.itype not in ICMP_QUERY_TYPES:
            return False                               # errors are RELATED, never new
        if pkt.dst in self.router.local and not self._dnat_possible:
            return False                               # delivered here, no copy will leave
        if pkt.proto == IPPROTO_TCP and pkt.tcpflags & 0x12 == 0x02:
            return True                                # a SYN may reopen an old entry anew
        t = get_tuple(pkt)
        if t is None:
            return False
        ct = self.router.ct.hash.get(t)
        return ct is None or self.router.ct.is_expired(ct)

    def _inflight(self, key: tuple, item) -> None:
        q = self.inflight.get(key)
        if q is None:
            q = self.inflight[key] = deque()
        q.append(item)
        order = self.inflight_order
        order.append((key, item))
        if len(order) > RECENT_MAX:                    # forget the oldest (never seen leaving)
            old, old_item = order.popleft()
            oq = self.inflight.get(old)
            if oq and oq[0] is old_item:
                oq.popleft()
                if not oq:
                    del self.inflight[old]

    def _egress(self, port: Port, frame: memoryview) -> None:
        """A copy leaving the kernel (``frame`` is a view of its receive slot: a packet
        kept past this call is parsed again from a copy)."""
        pkt = Packet.parse(frame, 14, None, 0.0)
        if pkt is None:
            return
        key = nat_invariant_key(pkt)
        q = self.inflight.get(key)
        matched = False
        if q:
            # The copy belongs to the oldest datagram with this key still expected out
            # (the kernel keeps the order); stale ones (dropped or kept by the kernel) go.
            now = time.time()
            while q and not matched:
                item = q.popleft()
                if isinstance(item, Held):
                    if not item.done:
                        item.egress = get_tuple(pkt)
                        self.counters["held_matched"] += 1
                        matched = True
                    elif now - item.deadline + HOLD_S < STALE_S:
                        self.counters["late_copies"] += 1     # it waited for ARP, say
                        matched = True
                elif now - item < STALE_S:
                    matched = True
            if not q:
                del self.inflight[key]
        if matched:
            return
        if pkt.src in self.router.local and self._lossy_until < time.time():
            # The kernel's own packet (a RST, an ICMP error, its own traffic): the shadow
            # runs it through LOCAL_OUT too, in its place in the queue.  Echo replies
            # excepted: the engine's icmp_echo() already answered the request; and ICMP
            # errors: the engine's icmp_send() made its own (with the offending packet's
            # entry attached, nf_ct_attach(), as the kernel does); the kernel's copy, which
            # carries an entry too, is ignored by nf_conntrack_in() and never confirmed.
            self.counters["kernel_originated"] += 1
            if pkt.proto == IPPROTO_ICMP and (pkt.itype == 0 or pkt.itype in ICMP_ERROR_TYPES):
                return
            pkt = Packet.parse(bytearray(frame), 14, None, 0.0)    # kept: off the slot
            t = get_tuple(pkt)
            answered = invert_tuple(t) if t is not None else None
            for h in self.held:                       # the request it answers was delivered here
                if not h.out and h.egress is None and answered is not None and get_tuple(h.pkt) == answered:
                    h.local = True
            if self.held:
                self.held.append(Held(pkt, 0.0, out=True))
            else:
                self._local_out(pkt)
        else:
            self.counters["shadow_missed"] += 1
            t = get_tuple(pkt)
            if t is not None:
                self.missed_by_tuple[t] = self.missed_by_tuple.get(t, 0) + 1
            if self.counters["shadow_missed"] <= 10:
                log.info("left the kernel, never seen arriving: %s", pkt.summary())

    def _local_out(self, pkt: Packet) -> None:
        """A packet the kernel itself sent, through the shadow's LOCAL_OUT.  A new connection
        keeps the tuple it left with (the kernel's NAT choice for it is not visible)."""
        t = get_tuple(pkt)
        forced = nat_forced(self.router.ct)
        new = t is not None and t not in self.router.ct.hash
        if new:
            forced[t] = t
        try:
            self.router.send_local(pkt)
        finally:
            if new:
                forced.pop(t, None)

    def _kernel_choice(self, t: Tuple) -> Tuple | None:
        """The tuple a datagram of a new connection left the kernel with, read from the
        kernel's own table (``conntrack -G``) when no copy was seen leaving (the datagram
        waits for ARP, or was delivered locally).  Rate-limited; None if unknown."""
        now = time.monotonic()
        if now - self._lookup_window >= 1.0:
            self._lookup_window, self._lookups = now, 0
        if self._lookups >= LOOKUPS_PER_S:
            return None
        self._lookups += 1
        self.counters["kernel_lookups"] += 1
        name = PROTO_NAMES.get(t.proto)
        if name is None:
            return None
        cmd = ["conntrack", "-G", "-p", name, "-s", int2ip(t.src), "-d", int2ip(t.dst)]
        if t.proto == IPPROTO_ICMP:
            cmd += ["--icmp-type", str(t.dport >> 8), "--icmp-code", str(t.dport & 255),
                    "--icmp-id", str(t.sport)]
        elif t.proto in PORT_PROTOS:
            cmd += ["--sport", str(t.sport), "--dport", str(t.dport)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            return None
        for line in p.stdout.splitlines():
            if line.strip():
                try:
                    reply = show.conn_from_parsed(show.parse_conntrack_line(line), 0).reply
                except (KeyError, ValueError, IndexError):
                    return None
                return invert_tuple(reply)
        return None

    def _release(self, now: float) -> None:
        """Process held datagrams from the head while they are ready: matched ones, kernel
        packets, locally answered ones, and those whose wait is over."""
        held = self.held
        forced = nat_forced(self.router.ct)
        while held and held[0].ready(now):
            h = held.popleft()
            if h.out:
                try:
                    self._local_out(h.pkt)
                except Exception as exc:               # noqa: BLE001
                    self.frame_error(exc)
                continue
            h.done = True
            orig = get_tuple(h.pkt)
            choice = h.egress
            if choice is None and not h.local and orig is not None:
                self.counters["hold_timeouts"] += 1
                if orig not in self.router.ct.hash:
                    choice = self._kernel_choice(orig)
            if choice is not None and orig is not None:
                forced[orig] = choice
            try:
                v = self.receive(h.pkt)
                if h.egress is not None and not v.sent:
                    self.counters["shadow_disagrees"] += 1
                    if self.counters["shadow_disagrees"] <= 10:
                        log.info("the kernel forwarded %s, the shadow did not (%s)",
                                 h.pkt.summary(), v.dropped)
            except Exception as exc:                   # noqa: BLE001
                self.frame_error(exc)
            finally:
                if orig is not None:
                    forced.pop(orig, None)

    def periodic(self, now: float) -> None:
        super().periodic(now)
        if self.held:
            self._release(time.time())
        if self.sock is not None:
            self._check_drops(time.time())
        self._prune(time.time())


__all__ = ["ShadowDataplane", "nat_invariant_key"]
