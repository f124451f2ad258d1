"""The live router's data path: AF_PACKET sockets, epoll, and the engine in between.

Python mode (:class:`PythonDataplane`): the namespace's kernel stays out of the
data path (quiet.py: ``ip_forward=0``, a raw-table DROP per interface, offloads
off; ARP is still the kernel's).  Each router interface has one AF_PACKET
socket; every IPv4 frame addressed to the interface's MAC goes through
``Router.receive()`` and what the engine sends leaves by the output
interface's socket inside a fresh Ethernet header.  The kernel's conntrack
table stays empty all along: that is the proof that nattrack did the work.

The loop (:meth:`Dataplane.run`) and what both modes share live in
:class:`Dataplane`: one lock around the engine (the data path holds it per
batch, control verbs per verb), housekeeping about every 100 ms, the trace and
capture taps the control socket switches on, and error counting: one bad frame
costs one ``router_errors`` count, never the loop.

Frames move in batches (batch.py): one ``recvmmsg`` reads every frame waiting
on a socket (up to RX_BATCH) into fixed slots, and what the engine sends is
copied into per-interface slots and leaves with one ``sendmmsg`` per interface
once the batch is done.  Nothing waits for a batch to fill: a lone frame is read,
forwarded and sent at once.  Per frame the hot loop does: one bytearray copy out
of its slot, the Ethernet checks, ``Packet.parse`` + ``Router.receive``, a dict
lookup for the next hop's prebuilt Ethernet header and a copy into a send slot.
Where recvmmsg/sendmmsg are unavailable (or ``NATTRACK_NO_BATCH=1``), the same
loop reads and sends one frame per system call (one log line says why).
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
import traceback
from typing import Callable

from ..conntrack.core import tune_gc
from ..conntrack.tuple import int2ip, ip2int
from ..netfilter.nfttrace import installed_nft, trace_receive
from ..netfilter.ruleset import Ruleset
from ..ipv4.route import inet_make_mask
from ..ipv4.stack import Router, Sent, Verdict
from ..packet.ipv4 import Packet
from ..packet.pcapio import PcapngWriter
from .batch import RxBatch, SingleRx, SingleTx, TxBatch, mmsg_problem
from .quiet import (VNET_LEN, VNET_ZERO, NamespaceChanges, finish_checksum, iface_info,
                    packet_drops, packet_socket)

log = logging.getLogger("nattrack.router")

ETH_P_IP = b"\x08\x00"
ETH_P_ARP = b"\x08\x06"
BROADCAST = b"\xff" * 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
VNET_F_NEEDS_CSUM = 1
BATCH = 256                      # frames per socket per round (then the others get a turn)
RX_BATCH = 64                    # frames per recvmmsg (the kernel takes up to 1024): a batch's
                                 # sends leave after its last frame, so this bounds their wait
TX_BATCH = 64                    # frames queued per interface before a sendmmsg
RX_SLOT = 65536 + VNET_LEN       # a whole GSO super-frame fits
HOUSEKEEPING_S = 0.1
ARP_RETRY_S = 0.25
ARP_QUEUE_S = 1.0
ARP_QUEUE_MAX = 256              # datagrams queued per unresolved next hop
HDR_CACHE_MAX = 65536
ERRORS_LOGGED = 10
_ARP = struct.Struct("!6s6s2sHHBBH6s4s6s4s")


class NetRatelimit:
    """net_ratelimit() (net/core/utils.c): at most ``burst`` messages every ``interval``
    seconds; the rest are counted and reported as "net_ratelimit: N callbacks suppressed"
    when the next interval opens, as ___ratelimit() does."""

    def __init__(self, interval: float = 5.0, burst: int = 10) -> None:
        self.interval, self.burst = interval, burst
        self.begin: float | None = None
        self.printed = self.missed = 0

    def lines(self, messages: list[str], now: float) -> list[str]:
        """The lines to print of ``messages`` (printk'd since the last call) at ``now``."""
        out: list[str] = []
        for text in messages:
            if self.begin is None or now - self.begin >= self.interval:
                if self.missed:
                    out.append(f"net_ratelimit: {self.missed} callbacks suppressed")
                self.begin, self.printed, self.missed = now, 0, 0
            if self.printed < self.burst:
                self.printed += 1
                out.append(text)
            else:
                self.missed += 1
        return out


class Capture:
    """The ``capture`` verb's pcapng: every frame in and out, per interface name."""

    def __init__(self, path: str, ifnames: list[str]) -> None:
        self.path = path
        self.packets = 0
        self.writer = PcapngWriter(path)
        for name in ifnames:
            self.writer.add_interface(name)

    def write(self, ts: float, ifname: str, data) -> None:
        self.writer.write(ts, ifname, data)
        self.packets += 1

    def close(self) -> None:
        self.writer.close()


class Port:
    """One router interface as the data path sees it."""

    def __init__(self, name: str, cidrs: list[str]) -> None:
        self.name = name
        self.cidrs = cidrs
        self.ifindex, self.mac, self.mtu = iface_info(name)
        self.addrs = []
        for c in cidrs:
            a, _, plen = c.partition("/")
            self.addrs.append((ip2int(a), int(plen)))
        self.sock: socket.socket | None = None
        self.neigh: dict[int, bytes] = {}          # IP -> MAC learned on this link
        self.hdr: dict[int, bytes] = {}            # final destination -> Ethernet header
        self.pending: dict[int, list] = {}         # next hop -> [first_ts, last_arp_ts, [data...]]
        self.tx: TxBatch | SingleTx | None = None  # frames queued for this interface's socket

    def on_link(self, addr: int) -> bool:
        return any((addr ^ a) & inet_make_mask(p) == 0 for a, p in self.addrs)

    def source_for(self, nexthop: int) -> int:
        for a, p in self.addrs:
            if (nexthop ^ a) & inet_make_mask(p) == 0:
                return a
        return self.addrs[0][0] if self.addrs else 0


class Dataplane:
    """What both modes share: the engine, its lock, the loop, counters and taps."""

    mode = "?"
    printk_prefix = "kernel"          # what the router's log calls the engine's printk lines

    def __init__(self, router: Router, ifaces: dict[str, list[str]],
                 changes: NamespaceChanges | None = None) -> None:
        self.router = router
        self.ifaces = ifaces
        self.changes = changes or NamespaceChanges()
        self.lock = threading.Lock()
        self.running = True
        self.started = time.time()
        self.counters: dict[str, int] = {
            "rx_frames": 0, "tx_frames": 0, "not_ipv4": 0, "not_for_us": 0, "runts": 0,
            "router_errors": 0, "tx_errors": 0, "socket_drops": 0,
        }
        self.tracers: list = []                     # control.Tracer objects
        self.capture: Capture | None = None
        self.ports: dict[str, Port] = {}
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._register(self._wake_r, self._drain_wake)
        self._errors_logged = 0
        self._gc_count = 0
        self._gc_at = 0.0
        self.ratelimit = NetRatelimit()

    # --- set-up / tear-down -----------------------------------------------------------------

    def setup(self) -> None:
        raise NotImplementedError

    def close(self) -> list[str]:
        """Close sockets and undo every namespace change; returns undo problems."""
        for port in self.ports.values():
            if port.sock is not None:
                port.sock.close()
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        self.ep.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        return self.changes.undo()

    def stop(self) -> None:
        """Ask the loop to end (signal handlers and the ``stop`` verb call this)."""
        self.running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _register(self, fd: int, handler: Callable[[], None]) -> None:
        self.ep.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # --- the loop ----------------------------------------------------------------------------

    def poll_timeout(self) -> float:
        return HOUSEKEEPING_S

    def run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        lock = self.lock
        clock = time.monotonic
        next_hk = clock() + HOUSEKEEPING_S
        while self.running:
            try:
                events = poll(self.poll_timeout())
            except InterruptedError:
                continue
            if events:
                with lock:
                    for fd, _mask_ in events:
                        try:
                            handlers[fd]()
                        except Exception as exc:       # noqa: BLE001 -- the loop must survive
                            self.frame_error(exc)
            now = clock()
            if now >= next_hk:
                next_hk = now + HOUSEKEEPING_S
                with lock:
                    try:
                        self.periodic(now)
                    except Exception as exc:           # noqa: BLE001
                        self.frame_error(exc)

    def periodic(self, now: float) -> None:
        """Every ~100 ms: the conntrack gc worker, fragment expiry, the engine's printk lines,
        gc tuning, drop counts."""
        self.router.housekeeping()
        self._printk(now)
        count = self.router.ct.count
        if count > self._gc_count + max(1000, self._gc_count // 4) and now - self._gc_at >= 3:
            tune_gc()
            self._gc_count, self._gc_at = count, now
        for port in self.ports.values():
            if port.sock is not None:
                self.counters["socket_drops"] += packet_drops(port.sock)

    def _printk(self, now: float) -> None:
        """The engine's printk lines ("nf_conntrack: table full, dropping packet") go to the
        router's log, rate-limited like the kernel's ("kernel:" in python mode, where the engine
        is the kernel; "shadow:" beside the real one); the engine's list is emptied, so a flood
        of drops cannot grow it."""
        messages = self.router.ct.log
        if messages:
            for line in self.ratelimit.lines(messages, now):
                log.warning("%s: %s", self.printk_prefix, line)
            messages.clear()

    def frame_error(self, exc: BaseException) -> None:
        self.counters["router_errors"] += 1
        if self._errors_logged < ERRORS_LOGGED:
            self._errors_logged += 1
            log.error("error while processing a frame (%d of at most %d logged):\n%s",
                      self._errors_logged, ERRORS_LOGGED, traceback.format_exc().rstrip())

    # --- the engine, with the trace tap ---------------------------------------------------------

    def receive(self, pkt: Packet) -> Verdict:
        """Router.receive(), with trace=True only for packets a trace client wants."""
        if not self.tracers:
            return self.router.receive(pkt)
        wanted = [t for t in self.tracers if t.matches(pkt, self.router.ct)]
        if not wanted:
            return self.router.receive(pkt)
        before, ts = pkt.summary(), pkt.ts
        # nft monitor trace's lines too (only here, for traced packets), as this machine's
        # nft prints them; the frame's MACs give the "ether saddr/daddr" the kernel shows.
        buf, off = pkt.buf, pkt.off
        ether = (bytes(buf[6:12]).hex(":"), bytes(buf[0:6]).hex(":")) if off >= 14 else None
        v, nft = trace_receive(self.router, pkt, ether=ether, nft=installed_nft())
        after = None
        for s in v.sent:
            if s.pkt is not None and s.pkt.iif is not None:
                after = s.pkt.summary()
                break
        rec = {"ts": ts, "steps": [list(s) for s in v.steps], "before": before, "after": after,
               "dropped": v.dropped, "nft": nft}
        for t in wanted:
            t.push(rec)
        if any(t.done for t in wanted):
            self.tracers = [t for t in self.tracers if not t.done]
        return v

    # --- what the control socket reads ----------------------------------------------------------

    def router_stats(self) -> dict:
        out = dict(self.router.counters)
        out.update(self.counters)
        out["defrag"] = dict(getattr(self.router.defrag, "stats", {}) or {})
        return out

    def hello(self) -> dict:
        return {"mode": self.mode, "ifaces": {k: list(v) for k, v in self.ifaces.items()},
                "pid": os.getpid(), "started": self.started}

    def set_kernel_sysctl(self, key: str, value) -> None:
        """Kernel mode mirrors conntrack settings into /proc/sys; python mode does not."""

    def missed(self) -> dict:
        """What the tracker knows it missed (the ``missed`` verb); python mode: the socket
        drops only (a frame python mode drops is lost for the flow, not just unseen)."""
        return {"mode": self.mode, "socket_drops": self.counters["socket_drops"], "flows": [],
                "unattributed": 0, "shadow_missed": 0}

    def replace_rules(self, new: Ruleset) -> list[str]:
        """Swap in the tables ``new`` names, as ``iptables-restore`` does (the kernel's
        xt_replace_table(): one table replaced whole, between two packets); the tables it
        does not name stay.  The connection table is not touched: established entries keep
        the NAT bindings they were given, only new connections meet the new rules.
        Call it under ``self.lock``.  Returns the names of the replaced tables."""
        self.router.ruleset = merge_rules(self.router.ruleset, new)
        return list(new.tables)


def merge_rules(old: Ruleset | None, new: Ruleset) -> Ruleset:
    """``old`` with each table ``new`` names replaced by ``new``'s (iptables-restore
    without --noflush flushes and refills only the tables in its input)."""
    if old is None or new.bases or old.bases:
        return new      # an nft rule set (issue 12) replaces the whole rule set
    tables = {t: c for t, c in old.tables.items() if t not in new.tables}
    policies = {t: p for t, p in old.policies.items() if t not in new.tables}
    tables.update(new.tables)
    policies.update(new.policies)
    return Ruleset(tables, policies, new.filename)


class PythonDataplane(Dataplane):
    """Python mode: nattrack forwards, the kernel only answers ARP."""

    mode = "python"

    def setup(self) -> None:
        ch = self.changes
        for name, cidrs in self.ifaces.items():            # a missing interface fails here
            for cidr in cidrs:
                ch.ensure_addr(name, cidr)
        ch.sysctl("net.ipv4.ip_forward", 0)
        for name in self.ifaces:
            ch.offloads_off(name)
            rule = ["PREROUTING", "-i", name, "-j", "DROP"]
            ch.iptables("raw", ["-I", *rule], ["-D", *rule])
        for name, cidrs in self.ifaces.items():
            port = Port(name, cidrs)
            self.router.ifaces[name].mtu = port.mtu
            port.sock = packet_socket(name)
            try:
                port.sock.setsockopt(263, PACKET_IGNORE_OUTGOING, 1)     # SOL_PACKET
                self._ignore_outgoing = True
            except OSError:
                self._ignore_outgoing = False
            self.ports[name] = port
            self._register(port.sock.fileno(), self._make_drain(port))
            log.info("python mode: %s ifindex %d mac %s mtu %d %s", name, port.ifindex,
                     port.mac.hex(":"), port.mtu, " ".join(cidrs))
        why = "NATTRACK_NO_BATCH=1" if os.environ.get("NATTRACK_NO_BATCH") == "1" else \
            mmsg_problem(next(iter(self.ports.values())).sock if self.ports else None)
        if why:
            log.info("python mode: one frame per system call (no recvmmsg/sendmmsg batches): %s", why)
        rx_kind, tx_kind = (SingleRx, SingleTx) if why else (RxBatch, TxBatch)
        self._rx = rx_kind(RX_BATCH, RX_SLOT)
        for port in self.ports.values():
            port.tx = tx_kind(TX_BATCH, port.mtu + 14 + VNET_LEN)
        # Destinations ip_route_input() never forwards: 0/8, 127/8 and multicast (tested
        # in the loop), the limited broadcast and each subnet's broadcast (this set).
        self._no_forward = {0xFFFFFFFF}
        for port in self.ports.values():
            for addr, plen in port.addrs:
                if plen < 31:
                    self._no_forward.add(addr | (~inet_make_mask(plen) & 0xFFFFFFFF))

    def _make_drain(self, port: Port) -> Callable[[], None]:
        return lambda: self._drain(port)

    # --- receive ------------------------------------------------------------------------------

    def _drain(self, port: Port) -> None:
        """Read what the socket has, a batch per system call (at most BATCH frames in
        all), forward it frame by frame, and after each batch send what the engine sent
        (one batch per output interface)."""
        sock = port.sock
        rx = self._rx
        view, slot, length = rx.view, rx.slot, rx.length
        name, mac, neigh = port.name, port.mac, port.neigh
        parse = Packet.parse
        receive = self.receive if self.tracers else self.router.receive
        ports = self.ports
        capture = self.capture
        check_outgoing = not self._ignore_outgoing
        no_forward = self._no_forward
        now = time.time()
        n = 0
        try:
            while n < BATCH:
                got = rx.recv(sock)
                if not got:
                    break
                for i in range(got):
                    if check_outgoing and rx.pkttype(i) == PACKET_OUTGOING:
                        continue
                    n += 1
                    try:
                        off = i * slot
                        size = length(i)
                        if view[off] & VNET_F_NEEDS_CSUM:
                            self._finish_checksum(view[off:off + size], size)
                        frame = bytearray(view[off + VNET_LEN:off + size])
                        size -= VNET_LEN
                        if capture is not None:
                            capture.write(now, name, frame)
                        if size < 34:
                            self.counters["runts"] += 1
                            continue
                        if frame[12] != 8 or frame[13] != 0:
                            self._other_frame(port, frame)
                            continue
                        if not frame.startswith(mac) and not self._broadcast_ok(port, frame):
                            continue
                        pkt = parse(frame, 14, name, now)
                        if pkt is None:
                            self.router.counters["ip_hdr_errors"] += 1
                            continue
                        d = pkt.dst
                        if d >= 0xE0000000 or d < 0x01000000 or d >> 24 == 127 or d in no_forward:
                            self._martian(pkt)
                            continue
                        if pkt.src not in neigh:
                            self._learn_ip(port, pkt.src, frame)
                        v = receive(pkt)
                        for s in v.sent:
                            out = ports[s.oif]
                            hdr = out.hdr.get(s.pkt.dst)
                            if hdr is None:
                                self._send_slow(out, s, now)
                                continue
                            tx = out.tx
                            if not tx.add(hdr, s.data):
                                self._flush(out)
                                if not tx.add(hdr, s.data):        # bigger than a slot
                                    self._send_frame(out, hdr + s.data)
                                    continue
                            if capture is not None:
                                capture.write(now, out.name, tx.frame(tx.queued - 1)[VNET_LEN:])
                    except Exception as exc:               # noqa: BLE001 -- one frame, not the loop
                        self.frame_error(exc)
                self._flush_all()
                if got < rx.count:      # the socket was empty: epoll says when more comes
                    break
        finally:
            self.counters["rx_frames"] += n
            self._flush_all()

    def _flush(self, port: Port) -> None:
        """Send the frames queued for ``port`` (one sendmmsg); count what went and what
        the kernel refused."""
        sent, refused = port.tx.flush(port.sock)
        c = self.counters
        c["tx_frames"] += sent
        if refused:
            c["tx_errors"] += refused

    def _flush_all(self) -> None:
        for port in self.ports.values():
            if port.tx.queued:
                self._flush(port)

    def _other_frame(self, port: Port, frame: bytearray) -> None:
        if frame[12:14] == ETH_P_ARP:
            self._arp_in(port, frame)
        else:
            self.counters["not_ipv4"] += 1

    def _martian(self, pkt: Packet) -> None:
        """Not for the engine: the kernel would not forward it (the Router models no
        martian or broadcast checks yet), so it is counted and dropped here."""
        self._count("martians")

    def _broadcast_ok(self, port: Port, frame: bytearray) -> bool:
        """A frame not for our MAC: only a broadcast to one of our own addresses goes on
        (the kernel forwards PACKET_HOST frames only, ip_forward())."""
        if frame.startswith(BROADCAST) and len(frame) >= 34:
            dst = struct.unpack_from("!I", frame, 30)[0]
            if dst in self.router.local:
                return True
        self.counters["not_for_us"] += 1
        return False

    # --- neighbours -----------------------------------------------------------------------------

    def _learn_ip(self, port: Port, ip: int, frame: bytearray) -> None:
        """A source address seen for the first time: its MAC if it is on the link
        (None marks an off-link source, so the check is not repeated per packet)."""
        if port.on_link(ip):
            self._learn(port, ip, bytes(frame[6:12]))
        else:
            port.neigh[ip] = None

    def _learn(self, port: Port, ip: int, mac: bytes) -> None:
        old = port.neigh.get(ip)
        if old == mac:
            return
        port.neigh[ip] = mac
        if old is not None:
            port.hdr.clear()
        pending = port.pending.pop(ip, None)
        if pending:
            hdr = VNET_ZERO + mac + port.mac + ETH_P_IP
            for data in pending[2]:
                self._send_frame(port, hdr + data)

    def _arp_in(self, port: Port, frame: bytearray) -> None:
        if len(frame) < 42:
            self.counters["runts"] += 1
            return
        (_dst, _src, _et, htype, ptype, hlen, plen, _op, sha, spa, _tha, _tpa) = _ARP.unpack_from(frame)
        self.counters["arp_in"] = self.counters.get("arp_in", 0) + 1
        if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
            return
        ip = struct.unpack("!I", spa)[0]
        if ip and port.on_link(ip):
            self._learn(port, ip, sha)

    def _kernel_neigh(self, port: Port, ip: int) -> bytes | None:
        """The kernel's neighbour table (/proc/net/arp), complete entries only."""
        want = int2ip(ip)
        try:
            with open("/proc/net/arp") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) >= 6 and cols[0] == want and cols[5] == port.name and int(cols[2], 16) & 2:
                        mac = bytes.fromhex(cols[3].replace(":", ""))
                        if mac != b"\0" * 6:
                            return mac
        except (OSError, ValueError):
            pass
        return None

    def _send_slow(self, port: Port, s: Sent, now: float) -> None:
        """First datagram to a destination: find the next hop's MAC, cache the header,
        or queue the datagram behind an ARP request."""
        dst = s.pkt.dst
        r = self.router.route(dst)
        nexthop = r.gateway if r is not None and r.gateway else dst
        mac = port.neigh.get(nexthop)
        if mac is None:
            mac = self._kernel_neigh(port, nexthop)
            if mac is not None:
                port.neigh[nexthop] = mac
        if mac is not None:
            hdr = VNET_ZERO + mac + port.mac + ETH_P_IP
            if len(port.hdr) >= HDR_CACHE_MAX:
                port.hdr.clear()
            port.hdr[dst] = hdr
            self._send_frame(port, hdr + s.data)
            return
        entry = port.pending.get(nexthop)
        if entry is None:
            entry = port.pending[nexthop] = [time.monotonic(), 0.0, []]
        if len(entry[2]) >= ARP_QUEUE_MAX:
            self._count("arp_queue_drops")
            return
        entry[2].append(s.data)
        self._count("arp_queued")
        if time.monotonic() - entry[1] >= ARP_RETRY_S:
            entry[1] = time.monotonic()
            self._arp_request(port, nexthop)

    def _arp_request(self, port: Port, ip: int) -> None:
        frame = _ARP.pack(BROADCAST, port.mac, ETH_P_ARP, 1, 0x0800, 6, 4, 1, port.mac,
                          struct.pack("!I", port.source_for(ip)), b"\0" * 6, struct.pack("!I", ip))
        self._send_frame(port, VNET_ZERO + frame)
        self._count("arp_requests")

    def _finish_checksum(self, buf, size: int) -> None:
        """A peer veth left the L4 checksum to offload: complete it in ``buf`` (the frame
        behind its virtio_net_hdr; rare path).  A GSO super-frame (the peer has tso/gso
        on) cannot be forwarded whole: counted, and said once in the log."""
        if buf[1]:
            self._count("gso_frames")
            if self.counters["gso_frames"] == 1:
                log.warning("GSO super-frames arrive (%d bytes): turn offloads off on the peers' "
                            "veths (ethtool -K IF tso off gso off tx off)", size - VNET_LEN)
        if finish_checksum(buf, size):
            self._count("csum_completed")

    def _send_frame(self, port: Port, frame: bytes) -> None:
        """Send one frame (virtio_net_hdr included) outside the hot loop, after what is
        queued for the same interface (so a flow's frames keep their order)."""
        if port.tx is not None and port.tx.queued:
            self._flush(port)
        try:
            port.sock.send(frame)
            self.counters["tx_frames"] += 1
        except OSError:
            self.counters["tx_errors"] += 1
            return
        if self.capture is not None:
            self.capture.write(time.time(), port.name, memoryview(frame)[VNET_LEN:])

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def periodic(self, now: float) -> None:
        super().periodic(now)
        for port in self.ports.values():
            if not port.pending:
                continue
            for ip, entry in list(port.pending.items()):
                if now - entry[0] >= ARP_QUEUE_S:
                    del port.pending[ip]
                    self._count("arp_queue_drops", len(entry[2]))
                    log.info("%s: no ARP answer from %s in %.0f s, %d datagram(s) dropped",
                             port.name, int2ip(ip), ARP_QUEUE_S, len(entry[2]))
                elif now - entry[1] >= ARP_RETRY_S:
                    mac = self._kernel_neigh(port, ip)
                    if mac is not None:
                        self._learn(port, ip, mac)
                    else:
                        entry[1] = now
                        self._arp_request(port, ip)


__all__ = ["Dataplane", "PythonDataplane", "Port", "Capture"]
