"""Replay captures through the engine as a router: no root, no network.

Packet timestamps drive the clock; between packets the conntrack gc worker
runs at the moments the kernel's would, so DESTROY events come when they
would have come.  The results are what the real tools would have printed in
the router: ``conntrack -E -o timestamp``, ``conntrack -L``, ``conntrack -S``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from .conntrack import show
from .conntrack.conn import IPCT_PROTOINFO, Conn
from .conntrack.core import ConntrackTable
from .conntrack.profile import get_profile
from .netfilter import rulesfile
from .netfilter.ruleset import Ruleset
from .ipv4.stack import Router, Verdict
from .packet.ipv4 import Packet
from .packet.pcapio import CaptureReader, PcapngWriter, ip_offset, merge_captures


class ManualClock:
    """An injectable clock that only moves when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def set(self, t: float) -> None:
        self.t = t


@dataclass
class ReplayResult:
    events: list[str] = field(default_factory=list)        # conntrack -E -o timestamp lines
    events_json: list[dict] = field(default_factory=list)
    table: list[str] = field(default_factory=list)          # conntrack -L lines
    table_json: list[dict] = field(default_factory=list)
    proc: list[str] = field(default_factory=list)            # /proc/net/nf_conntrack lines
    stats: dict = field(default_factory=dict)               # conntrack -S counters
    egress: list[tuple[float, str, bytes]] = field(default_factory=list)
    packets: int = 0
    skipped: int = 0                                         # frames that are not IPv4
    ip_hdr_errors: int = 0                                   # dropped by ip_rcv()
    dropped: int = 0
    truncated: list[str] = field(default_factory=list)       # captures cut short
    bad_checksums: int = 0                                   # sent with a wrong checksum (verify_egress)
    ruleset: Ruleset | None = None                           # the rules, with their counters
    log: list[str] = field(default_factory=list)


def event_recorder(events: list[str], events_json: list[dict], clock: Callable[[], float]):
    """A conntrack event listener that writes lines as `conntrack -E -o timestamp` would."""
    def listener(kind: str, ct: Conn, table: ConntrackTable, bits: int) -> None:
        now_j, ts = table.jiffies(), clock()
        destroy_timeout = ct.remaining(now_j) if kind == "DESTROY" else None
        protoinfo = bool(bits & IPCT_PROTOINFO)
        events.append(show.format_event(kind, ct, now_j, ts=ts, destroy_timeout=destroy_timeout,
                                        protoinfo=protoinfo, helper=table.helper_name(ct)))
        events_json.append(show.event_json(kind, ct, now_j, ts=ts, destroy_timeout=destroy_timeout))
    return listener


def load_rules(rules_text: str | None, path: str | None = None) -> Ruleset | None:
    if path is not None:
        return rulesfile.load_rules(path)
    if rules_text is not None:
        return rulesfile.parse_rules(rules_text)
    return None


def replay_captures(sources: Iterable[tuple[str | None, str]], ifaces: Mapping[str, str | list[str]],
                    routes: dict[str, str] | None = None, rules_text: str | None = None,
                    sysctls: Mapping[str, str | int] | None = None, now: float | None = None,
                    seed: int | None = None, rules_path: str | None = None,
                    on_packet: Callable[[Packet, Verdict, Router], None] | None = None,
                    write: str | None = None, verify_egress: bool = False,
                    listen: dict[str, set[int]] | None = None,
                    local_stack: bool = True, kernel: str | None = None) -> ReplayResult:
    """Run captures (``(iface or None, path)``, merged by time) through a Router.

    ``now`` is the moment the table is listed (default: the last packet).
    ``on_packet`` sees every datagram with its verdict (for step-by-step views).
    ``write`` saves every packet as it leaves, on its egress interface, to a pcapng.
    ``verify_egress`` checks the IP and TCP/UDP/ICMP checksums of every packet sent
    (``bad_checksums`` counts the wrong ones): what a plugged-in rewrite must get right.
    The router answers traffic to its own addresses as Linux does (``local_stack``: RSTs,
    ICMP port/protocol unreachable); ``listen`` names its open ports (``{"tcp": {22}}``).
    ``kernel`` names the kernel whose behaviour to follow where kernels differ
    (``6.1``, ``6.6``, ``6.12``, ``6.18``, ``running``; default the newest).
    """
    clock = ManualClock()
    router = Router(ifaces, routes, load_rules(rules_text, rules_path), sysctls, clock, seed=seed,
                    local_stack=local_stack, listen=listen, profile=get_profile(kernel))
    res = ReplayResult()
    table = router.ct
    table.listeners.append(event_recorder(res.events, res.events_json, clock))
    readers = [CaptureReader(path, iface=iface) for iface, path in sources]
    writer = PcapngWriter(write) if write else None
    try:
        for frame in merge_captures(readers):
            off = ip_offset(frame)
            if off is None:
                res.skipped += 1
                continue
            table.run_gc_until(frame.ts, clock.set)
            router.defrag.expire(frame.ts)
            pkt = Packet.parse(frame.data, off, iif=frame.iface, ts=frame.ts)
            if pkt is None:
                res.ip_hdr_errors += 1
                continue
            res.packets += 1
            l2 = bytes(frame.data[:off])
            v = router.receive(pkt, trace=on_packet is not None)
            if v.dropped:
                res.dropped += 1
            for sent in v.sent:
                if verify_egress and not checksums_ok(sent.data):
                    res.bad_checksums += 1
                res.egress.append((frame.ts, sent.oif, l2 + sent.data))
                if writer:
                    writer.write(frame.ts, sent.oif, l2 + sent.data)
            if on_packet:
                on_packet(pkt, v, router)
    finally:
        if writer:
            writer.close()
        for r in readers:
            r.close()
    res.truncated = [r.name for r in readers if r.truncated]
    end = now if now is not None else clock()
    if end > clock():
        table.run_gc_until(end, clock.set)
    clock.set(end)
    listing = list(table.conns())        # like the kernel's dump, reaps what has expired
    now_j = table.jiffies()
    res.table = [show.format_conn(ct, now_j, helper=table.helper_name(ct), use=table.use(ct))
                 for ct in listing]
    res.table_json = [show.conn_json(ct, now_j) for ct in listing]
    res.proc = [show.format_proc(ct, now_j) for ct in listing]
    res.stats = dict(table.stats)
    res.log = list(table.log)
    res.ruleset = router.ruleset
    return res


def checksums_ok(datagram: bytes) -> bool:
    """Do the IPv4 header checksum and (unfragmented) the L4 checksum verify?"""
    p = Packet.parse(bytearray(datagram), 0)          # None: bad header checksum
    return p is not None and (bool(p.frag) or p.mf or not p.l4ok or p.l4_checksum_ok())


def parse_kv_args(items: Iterable[str] | None, what: str) -> dict[str, str]:
    """``--route DEST=GW`` / ``--sysctl NAME=VALUE`` options as a dict; a
    ValueError naming the option where one is not KEY=VALUE."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_iface_args(items: Iterable[str]) -> dict[str, list[str]]:
    """``NAME=ADDR/PREFIX`` (repeatable, several addresses per interface allowed)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, cidr = item.partition("=")
        if not sep or "/" not in cidr:
            raise ValueError(f"--iface {item!r}: expected NAME=ADDR/PREFIX, e.g. eth0=10.0.0.1/24")
        out.setdefault(name, []).append(cidr)
    return out


def parse_listen_args(items: Iterable[str]) -> dict[str, set[int]]:
    """``PROTO:PORT[,PORT...]`` (repeatable): ports open on the router, e.g. ``tcp:22``."""
    out: dict[str, set[int]] = {}
    for item in items:
        proto, sep, ports = item.partition(":")
        try:
            if not sep or proto not in ("tcp", "udp"):
                raise ValueError
            numbers = {int(p) for p in ports.split(",")}
            if not all(1 <= n <= 65535 for n in numbers):
                raise ValueError
        except ValueError:
            raise ValueError(f"--listen {item!r}: expected tcp:PORT or udp:PORT (1-65535), "
                             "e.g. tcp:22 or udp:53,123") from None
        out.setdefault(proto, set()).update(numbers)
    return out


def parse_source_args(items: Iterable[str]) -> list[tuple[str | None, str]]:
    """A capture is ``PATH`` (pcapng: interface names inside) or ``IFACE=PATH``."""
    out: list[tuple[str | None, str]] = []
    for item in items:
        iface, sep, path = item.partition("=")
        if sep and not os.path.exists(item):
            out.append((iface, path))
        else:
            out.append((None, item))
    return out
