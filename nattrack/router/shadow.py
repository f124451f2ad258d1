"""Kernel mode: the real kernel routes and translates, the Python tracker shadows it.

The namespace's kernel gets the same rules file (``iptables-restore``),
``ip_forward=1`` and the ``--sysctl`` settings; one extra rule,
``-t mangle -A PREROUTING -m conntrack ! --ctstate UNTRACKED`` (it changes
nothing), makes sure the kernel tracks even when the rules alone would not.

One AF_PACKET socket bound to *all* interfaces sees every frame twice, in the
kernel's own order: the ingress copy is queued to the socket (in
__netif_receive_skb_core) before the kernel routes it, so the translated copy
that leaves (dev_queue_xmit_nit, ``PACKET_OUTGOING``) always comes later in the
same queue.  Ingress frames feed a :class:`Router` whose output is thrown away.

Learning the kernel's NAT choices.  A datagram whose tuple is not in the
shadow's table may create a connection, and the shadow must bind it to the
port the kernel chose, not to one of its own.  Such a datagram is *held*
(FIFO) until its translated copy leaves the kernel -- matched on what NAT does
not change: protocol, IP id, total length and the L4 bytes after the ports
(TCP sequence numbers, UDP length and payload, ICMP type/code/sequence and
payload) -- or until 50 ms have passed (the kernel dropped it or delivered it
locally).  The shadow then processes it with ``table.nat_forced[orig] =
<tuple that left>``, which :func:`forced_get_unique_tuple` (wrapped around
``nattrack.nat.core.get_unique_tuple``) returns instead of searching: the
address/port part that manipulation changes comes from the kernel's packet.

Datagrams of known connections are processed at once.  An outgoing IPv4
frame that matches no ingress frame is counted: ``shadow_missed`` (the kernel
forwarded something the shadow never got: a full socket buffer) or
``kernel_originated`` (the kernel's own packets: echo replies, RSTs, ICMP errors).
"""
from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque

from ..conntrack.core import get_tuple
from ..conntrack.sysctl import PREFIX
from ..conntrack.tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Tuple, invert_tuple
from ..nat import core as nat_core
from ..netfilter.stack import Router
from ..packet.checksum import ones_sum, pseudo_header_sum
from ..packet.ipv4 import ICMP_QUERY_TYPES, Packet
from .dataplane import BATCH, PACKET_OUTGOING, Dataplane, Port
from .quiet import NamespaceChanges, packet_drops, packet_socket

log = logging.getLogger("nattrack.router")

HOLD_S = 0.05                   # how long a first packet waits for the kernel's copy
RECENT_MAX = 8192               # ingress signatures remembered for the missed-packet check
PACKET_AUXDATA = 8
TP_STATUS_CSUMNOTREADY = 1 << 3
FORCE_TRACKING = ["PREROUTING", "-m", "conntrack", "!", "--ctstate", "UNTRACKED"]
_AUX = struct.Struct("IIIHHHH")
PACKET_HOST, PACKET_BROADCAST = 0, 1

# --- the NAT hook -----------------------------------------------------------------------------

_original_get_unique_tuple = nat_core.get_unique_tuple


def forced_get_unique_tuple(table, orig: Tuple, rng, ct, manip: int) -> Tuple:
    """get_unique_tuple(), except that a connection listed in ``table.nat_forced``
    (ct.orig -> the tuple its first packet had when it left the kernel) takes the
    kernel's choice for the part ``manip`` changes.

    This is the hook nat/core.py would need (see the report): consult
    ``table.nat_forced.get(ct.orig)`` first; SRC manip takes src and sport from it,
    DST manip dst and dport (ICMP: only the id, on the source side, moves).
    """
    forced = getattr(table, "nat_forced", None)
    if forced:
        k = forced.get(ct.orig)
        if k is not None:
            if manip == nat_core.NF_NAT_MANIP_SRC:
                if orig.proto in nat_core.PORT_PROTOS or orig.proto == IPPROTO_ICMP:
                    return orig._replace(src=k.src, sport=k.sport)
                return orig._replace(src=k.src)
            if orig.proto in nat_core.PORT_PROTOS:
                return orig._replace(dst=k.dst, dport=k.dport)
            return orig._replace(dst=k.dst)
    return _original_get_unique_tuple(table, orig, rng, ct, manip)


def install_nat_hook() -> None:
    """Monkeypatch the engine's get_unique_tuple (module global looked up at call time
    by nf_nat_setup_info); tables without ``nat_forced`` are unaffected."""
    nat_core.get_unique_tuple = forced_get_unique_tuple


# --- matching the ingress and egress copies of one datagram -------------------------------------

def nat_invariant_key(pkt: Packet) -> tuple:
    """What NAT leaves alone: protocol, IP id, total length, fragment offset and the L4
    bytes past ports and checksum (the first 16 of the payload)."""
    buf, l4 = pkt.buf, pkt.l4
    end = pkt.off + pkt.tot_len
    proto = pkt.proto
    if pkt.frag:
        sig = bytes(buf[l4:min(end, l4 + 16)])
    elif proto == IPPROTO_TCP:
        sig = bytes(buf[l4 + 4:min(end, l4 + 16)])                 # seq, ack, offset, flags, window
    elif proto == IPPROTO_UDP:
        sig = bytes(buf[l4 + 4:min(end, l4 + 6)]) + bytes(buf[l4 + 8:min(end, l4 + 24)])
    elif proto == IPPROTO_ICMP:
        sig = bytes(buf[l4:min(end, l4 + 2)]) + bytes(buf[l4 + 6:min(end, l4 + 24)])
    else:
        sig = bytes(buf[l4:min(end, l4 + 16)])
    return (proto, pkt.ipid, pkt.tot_len, pkt.frag, sig)


def complete_checksum(frame: bytearray) -> None:
    """Finish a TCP/UDP checksum left to offload (TP_STATUS_CSUMNOTREADY): the field holds
    only the pseudo-header sum, as a peer veth with tx checksumming on sends it."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return
    ihl = (frame[14] & 15) * 4
    tot = struct.unpack_from("!H", frame, 16)[0]
    proto = frame[23]
    l4 = 14 + ihl
    end = min(14 + tot, len(frame))
    at = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}.get(proto)
    if at is None or end - l4 < at + 2:
        return
    src, dst = struct.unpack_from("!II", frame, 26)
    frame[l4 + at:l4 + at + 2] = b"\0\0"
    c = 0xFFFF - ones_sum(memoryview(frame)[l4:end], pseudo_header_sum(src, dst, proto, end - l4))
    if c == 0 and proto == IPPROTO_UDP:
        c = 0xFFFF
    struct.pack_into("!H", frame, l4 + at, c)


class Held:
    __slots__ = ("pkt", "key", "deadline", "egress")

    def __init__(self, pkt: Packet, key: tuple, deadline: float) -> None:
        self.pkt, self.key, self.deadline, self.egress = pkt, key, deadline, None


class ShadowDataplane(Dataplane):
    """Kernel mode: sniff, shadow, and learn the kernel's NAT choices."""

    mode = "kernel"

    def __init__(self, router: Router, ifaces: dict[str, list[str]], rules_text: str | None,
                 kernel_sysctls: dict[str, str], routes: dict[str, str] | None = None,
                 changes: NamespaceChanges | None = None) -> None:
        super().__init__(router, ifaces, changes)
        self.rules_text = rules_text
        self.kernel_sysctls = kernel_sysctls
        self.routes = routes or {}
        self.held: deque[Held] = deque()
        self.awaiting: dict[tuple, deque[Held]] = {}
        self.recent: dict[tuple, int] = {}
        self.recent_order: deque[tuple] = deque()
        self.by_name: dict[str, Port] = {}
        self.sock: socket.socket | None = None
        self.counters.update(held=0, held_matched=0, hold_timeouts=0, shadow_missed=0,
                             kernel_originated=0, shadow_disagrees=0, csum_completed=0)
        router.ct.nat_forced = {}
        install_nat_hook()
        nat = (router.ruleset.tables.get("nat", {}) if router.ruleset is not None else {})
        self._dnat_possible = bool(nat.get("PREROUTING"))

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
        for key, value in self.kernel_sysctls.items():
            ch.sysctl(key, value)
        if self.rules_text:
            ch.iptables_restore(self.rules_text)
        ch.iptables("mangle", ["-A", *FORCE_TRACKING], ["-D", *FORCE_TRACKING])
        ch.sysctl("net.ipv4.ip_forward", 1)
        for name, cidrs in self.ifaces.items():
            port = Port(name, cidrs)
            self.router.ifaces[name].mtu = port.mtu
            self.ports[name] = port
        self.sock = packet_socket(None)
        self.sock.setsockopt(263, PACKET_AUXDATA, 1)                 # SOL_PACKET
        self._register(self.sock.fileno(), self._drain)
        self._rbuf = bytearray(65536 + 64)
        log.info("kernel mode: shadowing %s", ", ".join(self.ports))

    def close(self) -> list[str]:
        if self.sock is not None:
            self.sock.close()
        return super().close()

    def set_kernel_sysctl(self, key: str, value) -> None:
        full = key if "." in key else PREFIX + key
        self.changes.sysctl(full, value)

    # --- the loop's work -----------------------------------------------------------------------

    def poll_timeout(self) -> float:
        return 0.01 if self.held else super().poll_timeout()

    def _drain(self) -> None:
        sock, rbuf = self.sock, self._rbuf
        ports = self.ports
        now = time.time()
        n = 0
        try:
            while n < BATCH:
                try:
                    size, anc, _flags, addr = sock.recvmsg_into([rbuf], 64)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                port = ports.get(addr[0])
                if port is None:
                    continue
                n += 1
                frame = rbuf[:size]
                try:
                    for level, kind, data in anc:
                        if level == 263 and kind == PACKET_AUXDATA and len(data) >= 4:
                            if struct.unpack_from("I", data)[0] & TP_STATUS_CSUMNOTREADY:
                                complete_checksum(frame)
                                self.counters["csum_completed"] += 1
                    if self.capture is not None:
                        self.capture.write(now, port.name, frame)
                    if size < 34:
                        self.counters["runts"] += 1
                    elif frame[12] != 8 or frame[13] != 0:
                        self.counters["not_ipv4"] += 1
                    elif addr[2] == PACKET_OUTGOING:
                        self._egress(port, frame)
                    elif addr[2] in (PACKET_HOST, PACKET_BROADCAST):
                        self._ingress(port, frame, now, addr[2])
                    else:
                        self.counters["not_for_us"] += 1
                except Exception as exc:               # noqa: BLE001
                    self.frame_error(exc)
        finally:
            self.counters["rx_frames"] += n
        if self.held:
            self._release(time.monotonic())

    def _ingress(self, port: Port, frame: bytearray, now: float, pkttype: int) -> None:
        pkt = Packet.parse(frame, 14, port.name, now)
        if pkt is None:
            self.router.counters["ip_hdr_errors"] += 1
            return
        if pkttype == PACKET_BROADCAST and pkt.dst not in self.router.local:
            self.counters["not_for_us"] += 1
            return
        key = nat_invariant_key(pkt)
        self._remember(key)
        if self.held or self._may_be_new(pkt):
            h = Held(pkt, key, time.monotonic() + HOLD_S)
            self.held.append(h)
            self.awaiting.setdefault(key, deque()).append(h)
            self.counters["held"] += 1
            return
        self.receive(pkt)

    def _may_be_new(self, pkt: Packet) -> bool:
        """Could conntrack create an entry (and NAT bind it) for this datagram?"""
        if pkt.frag or pkt.mf:
            return False
        if pkt.proto == IPPROTO_ICMP and pkt.itype not in ICMP_QUERY_TYPES:
            return False                               # errors are RELATED, never new
        if pkt.dst in self.router.local and not self._dnat_possible:
            return False                               # delivered here, no copy will leave
        t = get_tuple(pkt)
        return t is not None and t not in self.router.ct.hash

    def _remember(self, key: tuple) -> None:
        recent = self.recent
        recent[key] = recent.get(key, 0) + 1
        self.recent_order.append(key)
        if len(self.recent_order) > RECENT_MAX:
            old = self.recent_order.popleft()
            left = recent.get(old, 0) - 1
            if left > 0:
                recent[old] = left
            else:
                recent.pop(old, None)

    def _egress(self, port: Port, frame: bytearray) -> None:
        pkt = Packet.parse(frame, 14, None, 0.0)
        if pkt is None:
            return
        key = nat_invariant_key(pkt)
        waiting = self.awaiting.get(key)
        if waiting:
            h = waiting.popleft()
            if not waiting:
                del self.awaiting[key]
            h.egress = get_tuple(pkt)
            self.counters["held_matched"] += 1
        count = self.recent.get(key)
        if count:
            if count > 1:
                self.recent[key] = count - 1
            else:
                del self.recent[key]
            return
        if pkt.src in self.router.local:
            self.counters["kernel_originated"] += 1
        else:
            self.counters["shadow_missed"] += 1

    def _release(self, now: float) -> None:
        """Process held datagrams from the head: matched ones, and those whose wait is over."""
        held = self.held
        forced = self.router.ct.nat_forced
        while held:
            h = held[0]
            if h.egress is None and h.deadline > now:
                break
            held.popleft()
            if h.egress is None:
                self.counters["hold_timeouts"] += 1
                q = self.awaiting.get(h.key)
                if q is not None:
                    try:
                        q.remove(h)
                    except ValueError:
                        pass
                    if not q:
                        del self.awaiting[h.key]
            orig = get_tuple(h.pkt)
            if h.egress is not None and orig is not None:
                forced[orig] = h.egress
            try:
                v = self.receive(h.pkt)
                if h.egress is not None and not v.sent:
                    self.counters["shadow_disagrees"] += 1
                    log.info("kernel forwarded %s, the shadow did not (%s)", h.pkt.summary(), v.dropped)
            except Exception as exc:                   # noqa: BLE001
                self.frame_error(exc)
            finally:
                if orig is not None:
                    forced.pop(orig, None)

    def periodic(self, now: float) -> None:
        super().periodic(now)
        if self.held:
            self._release(now)
        if self.sock is not None:
            self.counters["socket_drops"] += packet_drops(self.sock)


__all__ = ["ShadowDataplane", "forced_get_unique_tuple", "install_nat_hook", "nat_invariant_key",
           "complete_checksum"]
