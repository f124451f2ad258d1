"""Engine benchmark: throughput, new connections, memory, CPython gc, conntrack gc.

Run from the repository root::

    .venv/bin/python -m bench.engine            # full run, a few minutes
    .venv/bin/python -m bench.engine --quick    # smaller sizes, under a minute
    .venv/bin/python -m bench.engine --json     # the same figures as one JSON object
    .venv/bin/python -m bench.engine --profile  # plus cProfile hotspots of the hot paths
    .venv/bin/python -m bench.engine --one-build  # only the build this process runs

Both builds are measured in the same run: this process runs the compiled engine (when
scripts/setup.sh built it), then the whole benchmark again in a child with NATTRACK_PURE=1,
and the report ends with the two side by side.

It prints figures next to their targets and never fails on a missed target:
it is a measuring instrument, not a test.  Progress goes to stderr.  See
bench/README.md for what each figure means.

Figures 3-5 (one table of a million entries) run in a child process, so the
memory measured is not blurred by what figures 1-2 allocated and freed.
"""
from __future__ import annotations

import argparse
import cProfile
import fcntl
import gc
import io
import json
import os
import platform
import pstats
import struct
import subprocess
import sys
import time
import tracemalloc

import nattrack
from nattrack.conntrack.core import NF_INET_PRE_ROUTING, ConntrackTable, tune_gc
from nattrack.conntrack.proto_tcp import TCP_CONNTRACK_ESTABLISHED
from nattrack.netfilter.rulesfile import parse_rules, to_nft
from nattrack.nat.bysource import nat_net
from nattrack.ipv4.stack import Router
from nattrack.packet.checksum import checksum, pseudo_header_sum
from nattrack.packet.ipv4 import Packet
from nattrack.packet.pcapio import ip_offset, read_capture
from nattrack.replay import ManualClock

from .make_mix import IFACES, ROUTES, RULES, T0, cached_mix

perf = time.perf_counter
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIVE_LOCK = "/tmp/nattrack-live.lock"      # held by all live work on this machine
PUBLIC = 0xCB007101                     # 203.0.113.1, the router's wan address
SEED = 42

TARGETS = {
    "throughput_pps": (">=", 300_000, "pkt/s"),
    "new_tcp_per_s": (">=", 100_000, "conn/s"),
    "new_udp_per_s": (">=", 100_000, "conn/s"),
    "bytes_per_entry": ("<=", 300, "B"),          # UDP entries (RSS growth)
    "tcp_bytes_per_entry": ("<=", 500, "B"),      # ESTABLISHED TCP entries (RSS growth)
    "gc_max_pause_ms": ("<=", 10, "ms"),
    "ctgc_max_slice_ms": ("<=", 10, "ms"),
    "ctgc_idle_slice_ms": ("<=", 10, "ms"),
}

SIZES = {
    # name: (full, quick)
    "mix": ((2000, 2000, 500), (300, 300, 100)),      # tcp connections, udp pairs, pings
    "repeats": (5, 3),
    "new": (100_000, 20_000),
    "table": (1_000_000, 200_000),
    "stream": (200_000, 50_000),
    "traced": (100_000, 50_000),
    "churn": (1_500_000, 150_000),        # cap on new flows waiting for a gen1 collection
}


def size(name: str, quick: bool):
    full, small = SIZES[name]
    return small if quick else full


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the environment -------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nattrack"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def kernel_nf_conn_size() -> int | None:
    """objsize of the nf_conntrack slab cache (needs root to read /proc/slabinfo)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == "nf_conntrack":
                    return int(parts[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- frame builders (raw IPv4, no link header) -----------------------------------------

_IP = struct.Struct("!BBHHHBBHII")


def _ip_header(src: int, dst: int, proto: int, l4len: int) -> bytes:
    hdr = _IP.pack(0x45, 0, 20 + l4len, 0, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def udp_datagram(src: int, dst: int, sport: int, dport: int, payload: bytes = bytes(40)) -> bytearray:
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = checksum(udp, pseudo_header_sum(src, dst, 17, ulen)) or 0xFFFF
    return bytearray(_ip_header(src, dst, 17, ulen) + udp[:6] + struct.pack("!H", c) + udp[8:])


# A Linux SYN's options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
_SYN_OPTS = bytes((2, 4, 0x05, 0xB4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7))


def tcp_segment(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
                opts: bytes = b"", win: int = 502) -> bytearray:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags, win, 0, 0) + opts
    c = checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp)))
    return bytearray(_ip_header(src, dst, 6, len(tcp)) + tcp[:16] + struct.pack("!H", c) + tcp[18:])


def tcp_syn(src: int, dst: int, sport: int, dport: int, seq: int = 12345) -> bytearray:
    return tcp_segment(src, dst, sport, dport, seq, 0, 0x02, _SYN_OPTS, 64240)


def lan_host(n: int) -> int:
    """10.0.0.0/16 hosts, skipping .0/.1 (the router is 10.0.0.1)."""
    n += 2
    return 0x0A000000 | (n >> 8 & 0xFF) << 8 | (n & 0xFF) if n < 65535 else 0x0A010000 | (n & 0xFFFF)


def server(n: int) -> int:
    """198.18.0.0/15 (RFC 2544 benchmarking), skipping .0."""
    return 0xC6120000 + 1 + n


def new_router(sysctl: dict | None = None, seed: int = SEED) -> tuple[Router, ManualClock]:
    clock = ManualClock(T0)
    return Router(IFACES, ROUTES, parse_rules(RULES), sysctl, clock, seed=seed), clock


def timed_gc_collect() -> float:
    t = perf()
    gc.collect()
    return perf() - t


def prepare_gc() -> None:
    """What the router does before it runs: everything alive now is frozen."""
    gc.collect()
    tune_gc()


# --- profiling helper ----------------------------------------------------------------------

def profile_lines(fn, top: int = 22) -> list[str]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime")
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"{'tottime%':>8} {'cumtime':>8} {'calls':>9}  function (file:line)"]
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in rows:
        short = fname.replace(ROOT + os.sep, "")
        lines.append(f"{100 * tt / total:7.1f}% {ct:8.3f} {nc:9d}  {func} ({short}:{line})")
    return lines


# --- figure 1: throughput of a realistic mix -----------------------------------------------

def load_mix(quick: bool):
    tcp, udp, ping = size("mix", quick)
    path = cached_mix(tcp, udp, ping, progress=progress)
    frames = []
    for f in read_capture(path):
        off = ip_offset(f)
        if off is not None:
            frames.append((f.ts, f.iface, bytes(f.data), off))
    return path, frames


def bench_throughput(quick: bool, do_profile: bool) -> dict:
    path, frames = load_mix(quick)
    n = len(frames)
    repeats = size("repeats", quick)
    progress(f"figure 1: {n} frames from {path}")

    # An untimed pass checks the mix and records each reply's un-NATed destination,
    # so the conntrack-only variant can run without NAT and still match the replies.
    router, clock = new_router()
    invalid = dropped = 0
    protos = {6: 0, 17: 0, 1: 0}
    unnat: dict[int, int] = {}
    for k, (ts, iif, data, off) in enumerate(frames):
        clock.t = ts
        pkt = Packet.parse(bytearray(data), off, iif, ts)
        protos[pkt.proto] = protos.get(pkt.proto, 0) + 1
        v = router.receive(pkt)
        invalid += pkt.ct is None
        dropped += v.dropped is not None
        if iif == "wan" and pkt.ct is not None:
            unnat[k] = pkt.dst
    entries = router.ct.count
    ct_frames = []
    for k, (ts, iif, data, off) in enumerate(frames):
        if k in unnat:
            buf = bytearray(data)
            Packet.parse(buf, off, iif, ts).set_addr(False, unnat[k])
            data = bytes(buf)
        ct_frames.append((ts, iif, data, off))
    del router

    def copies(src):
        return [(ts, iif, bytearray(d), off) for ts, iif, d, off in src]

    def run_parse():
        fr = copies(frames)
        parse = Packet.parse
        prepare_gc()
        t = perf()
        for ts, iif, buf, off in fr:
            parse(buf, off, iif, ts)
        return perf() - t

    def run_ct_only():
        clock = ManualClock(T0)
        table = ConntrackTable(clock, None, seed=SEED)
        pkts = [Packet.parse(buf, off, iif, ts) for ts, iif, buf, off in copies(ct_frames)]
        ct_in, confirm = table.conntrack_in, table.confirm
        prepare_gc()
        t = perf()
        for p in pkts:
            clock.t = p.ts
            ct_in(p, NF_INET_PRE_ROUTING)
            confirm(p)
        return perf() - t

    def run_receive_only():
        router, clock = new_router()
        pkts = [Packet.parse(buf, off, iif, ts) for ts, iif, buf, off in copies(frames)]
        receive = router.receive
        prepare_gc()
        t = perf()
        for p in pkts:
            clock.t = p.ts
            receive(p)
        return perf() - t

    def full_loop(router, clock, fr):
        parse, receive = Packet.parse, router.receive
        for ts, iif, buf, off in fr:
            clock.t = ts
            receive(parse(buf, off, iif, ts))

    def run_full():
        router, clock = new_router()
        fr = copies(frames)
        prepare_gc()
        t = perf()
        full_loop(router, clock, fr)
        return perf() - t

    res = {"frames": n, "mix": {"tcp": protos.get(6, 0), "udp": protos.get(17, 0), "icmp": protos.get(1, 0)},
           "entries_after": entries, "invalid": invalid, "dropped": dropped, "repeats": repeats}
    for name, fn in (("parse", run_parse), ("ct_only", run_ct_only), ("receive_only", run_receive_only),
                     ("full", run_full)):
        times = []
        for _ in range(repeats):
            times.append(fn())
        times.sort()
        res[name] = {"best_pps": n / times[0], "median_pps": n / times[len(times) // 2],
                     "us_per_pkt": times[0] / n * 1e6}
        progress(f"figure 1: {name}: {n / times[0]:,.0f} pkt/s (best of {repeats})")
    if do_profile:
        router, clock = new_router()
        fr = copies(frames)
        prepare_gc()
        res["profile"] = profile_lines(lambda: full_loop(router, clock, fr))
    return res


# --- figure 1, the kernel's: the same router in a network namespace ------------------------

# The sender, run in namespace a: n datagrams of one established flow, and the CPU time that
# cost (veth hands a frame to the peer in the sender's context, so every namespace's work on
# it up to the drop is billed to the sender).
_KERNEL_SENDER = """
import json, resource, socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.0.0.2", 40000))
s.connect(("198.18.0.2", 53))
data = bytes(40)
for _ in range(1000):
    s.send(data)
time.sleep(0.2)
ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(n):
    s.send(data)
ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
print(json.dumps({"n": n, "cpu_s": cpu, "wall_s": t1 - t0}))
"""

_DROP_ALL = "table ip bench {\n chain pre {\n  type filter hook prerouting priority -300; policy drop;\n }\n}\n"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _in_ns(ns: str, *cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True,
                          text=True, input=stdin).stdout


def kernel_router_cost(quick: bool) -> dict:
    """The kernel's cost per packet of figure 1's router path, measured in this run.

    Namespaces a (10.0.0.2) -- r (lan 10.0.0.1/16, wan 203.0.113.1/24, the same rules as
    nft, default route via b) -- b (203.0.113.254, drops everything at raw PREROUTING).
    a sends one established UDP flow as fast as it can; the sender's CPU per datagram is
    measured twice: with r forwarding (conntrack, NAT, filter, routing, TTL, out to b) and
    with r dropping everything at raw PREROUTING (before conntrack).  The difference is what
    r's path (and b's receive up to its drop) costs the kernel per packet.
    """
    if os.geteuid() != 0:
        return {"error": "needs root (network namespaces)"}
    n = 200_000 if quick else 1_000_000
    progress(f"figure 1 (kernel): waiting for {LIVE_LOCK}")
    with open(LIVE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # other live work (labs, tests) would blur it
        return _kernel_router_cost(n)


def _kernel_router_cost(n: int) -> dict:
    pre = f"ntbe{os.getpid() % 100000}"
    a, r, b = f"{pre}a", f"{pre}r", f"{pre}b"
    made: list[str] = []
    try:
        for ns in (a, r, b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", f"{pre}x", "netns", a, "type", "veth", "peer", "name", "lan", "netns", r)
        _ip("link", "add", f"{pre}y", "netns", b, "type", "veth", "peer", "name", "wan", "netns", r)
        for ns, dev, addr in ((a, f"{pre}x", "10.0.0.2/16"), (r, "lan", "10.0.0.1/16"),
                              (r, "wan", "203.0.113.1/24"), (b, f"{pre}y", "203.0.113.254/24")):
            _in_ns(ns, "ip", "addr", "add", addr, "dev", dev)
            _in_ns(ns, "ip", "link", "set", dev, "up")
        _in_ns(a, "ip", "route", "add", "default", "via", "10.0.0.1")
        _in_ns(r, "ip", "route", "add", "default", "via", "203.0.113.254")
        _in_ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _in_ns(r, "nft", "-f", "-", stdin=to_nft(parse_rules(RULES)))
        _in_ns(b, "nft", "-f", "-", stdin=_DROP_ALL)

        def send() -> dict:
            return json.loads(_in_ns(a, sys.executable, "-c", _KERNEL_SENDER, str(n)))

        best_fwd = min((send() for _ in range(3)), key=lambda x: x["cpu_s"])
        forwarded = int(_in_ns(r, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").strip() or 0)
        _in_ns(r, "nft", "-f", "-", stdin=_DROP_ALL)
        best_drop = min((send() for _ in range(3)), key=lambda x: x["cpu_s"])
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return {"error": f"kernel measurement failed: {err.strip().splitlines()[-1] if err.strip() else exc}"}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    us = (best_fwd["cpu_s"] - best_drop["cpu_s"]) / n * 1e6
    return {"n": n, "entries": forwarded, "sender_us_forwarded": best_fwd["cpu_s"] / n * 1e6,
            "sender_us_dropped_at_r": best_drop["cpu_s"] / n * 1e6, "router_us_per_pkt": us,
            "router_pps": 1e6 / us if us > 0 else None}


# --- figure 2: new connections per second ---------------------------------------------------

def bench_new(quick: bool, do_profile: bool) -> dict:
    n = size("new", quick)
    repeats = max(1, size("repeats", quick) - 2)
    sysctl = {"nf_conntrack_max": 4 * n + 1000}
    res = {"n": n, "repeats": repeats}

    # Distinct tuples: 250 ports per LAN host, one server per host, so every reply tuple
    # is unique and MASQUERADE keeps the port (lookup miss, unique tuple, insert).
    def distinct(builder, dport):
        return [builder(lan_host(k // 250), server(k // 250), 20000 + k % 250, dport) for k in range(n)]

    def run(frames_fn, setup=None):
        router, clock = new_router(sysctl)
        if setup:
            setup(router, clock)
        fr = frames_fn()
        parse, receive = Packet.parse, router.receive
        prepare_gc()
        found0 = router.ct.stats["found"]
        t = perf()
        for buf in fr:
            receive(parse(buf, 0, "lan", T0))
        dt = perf() - t
        return dt, router, router.ct.stats["found"] - found0

    for name, builder, dport in (("tcp", tcp_syn, 443), ("udp", udp_datagram, 53)):
        times = []
        for _ in range(repeats):
            dt, router, _f = run(lambda b=builder, d=dport: distinct(b, d))
            times.append(dt)
        times.sort()
        res[name] = {"best_per_s": n / times[0], "median_per_s": n / times[len(times) // 2],
                     "us_per_conn": times[0] / n * 1e6, "entries": router.ct.count}
        progress(f"figure 2: new {name}: {n / times[0]:,.0f} conn/s")

    # Clash: host A holds 20,000 ports (scattered over 1024-65535, as ephemeral ports
    # are) towards each of a few servers; host B opens flows with the same (port,
    # server, dport), so MASQUERADE's first choice is always taken and
    # nf_nat_l4proto_unique_tuple searches.  Up to 62% of the 64,512 ports end up
    # used, as on a busy NAT with one public address.
    per_server = 20_000
    a_host = lan_host(0)

    def clash_port(k):
        return 1024 + (k % per_server) * 7919 % 64512

    def b_host(k):
        # One second host per server: each (host, port) is new to nat_bysource, so no
        # flow can reuse another's mapping (find_appropriate_src) and all search.
        return lan_host(1 + k // per_server)

    def clash_flows(b):
        return [tcp_syn(b_host(k) if b else a_host, server(k // per_server), clash_port(k), 443)
                for k in range(n)]

    def setup(router, clock):
        for buf in clash_flows(False):
            router.receive(Packet.parse(buf, 0, "lan", T0))

    times, found = [], 0
    for _ in range(repeats):
        dt, router, found = run(lambda: clash_flows(True), setup)
        times.append(dt)
    times.sort()
    b_conns = [ct for ct in router.ct.conns(reap=False) if ct.orig.src != a_host]
    moved = sum(1 for ct in b_conns if ct.reply.dport != ct.orig.sport)
    res["tcp_clash"] = {"best_per_s": n / times[0], "us_per_conn": times[0] / n * 1e6,
                        "entries": router.ct.count, "ports_moved": moved, "dropped": n - len(b_conns),
                        "taken_candidates_per_conn": found / n}
    progress(f"figure 2: new tcp with port clash: {n / times[0]:,.0f} conn/s")
    if do_profile:
        router, clock = new_router(sysctl)
        fr = distinct(tcp_syn, 443)
        prepare_gc()
        res["profile"] = profile_lines(lambda: [router.receive(Packet.parse(b, 0, "lan", T0)) for b in fr])
    return res


# --- figures 3-5: one big table (child process) -----------------------------------------------

def big_flow(k: int) -> tuple[int, int, int]:
    """Client, server and client port of UDP flow k (distinct reply tuples)."""
    return lan_host(k // 250), server(k // 250), 20000 + k % 250


def deep_size_estimate(table: ConntrackTable, sample: int = 20000) -> dict:
    """Per-entry bytes from sys.getsizeof (rounded to pymalloc's 16-byte classes), no tracemalloc.

    Objects shared between entries (small ints, the public address, ...) are
    counted once per sample and so amortise to ~0; containers are measured whole.
    """
    def rsz(o) -> int:
        s = sys.getsizeof(o)
        return (s + 15) & ~15 if s <= 512 else s

    n = table.count
    seen: set[int] = set()
    parts = {"Conn": 0, "tuples": 0, "ints/floats in tuples and Conn": 0, "protocol state": 0,
             "nat_bysource keys": 0}
    conns = []
    for ct in table.conns(reap=False):
        conns.append(ct)
        if len(conns) >= sample:
            break

    def own(o, part):
        if id(o) in seen or o is None or o is True or o is False:
            return
        if isinstance(o, int) and -5 <= o <= 256:
            return
        seen.add(id(o))
        parts[part] += rsz(o)

    slots = [x for c in type(conns[0]).__mro__ for x in getattr(c, "__slots__", ())
             if x not in ("orig", "reply", "proto", "counters")] if conns else []
    for ct in conns:
        own(ct, "Conn")
        for t in (ct.orig, ct.reply):
            own(t, "tuples")
            for v in t:
                own(v, "ints/floats in tuples and Conn")
        for slot in slots:
            v = getattr(ct, slot, None)
            if isinstance(v, (int, float)):
                own(v, "ints/floats in tuples and Conn")
        p = ct.proto
        if isinstance(p, (int, float)):
            own(p, "protocol state")
        elif p is not None:
            own(p, "protocol state")
            for v in getattr(p, "__dict__", {}).values():
                own(v, "protocol state")
        if getattr(ct, "counters", None) is not None:
            own(ct.counters, "protocol state")
    m = len(conns) or 1
    per = {k: v / m for k, v in parts.items()}
    bysource = nat_net(table).bysource
    keys = [k for k in bysource.keys()][:sample]
    per["nat_bysource keys"] = sum(rsz(k) for k in keys) / max(1, len(keys)) * len(bysource) / max(1, n)
    per["hash dict (2 keys/entry)"] = sys.getsizeof(table.hash) / max(1, n)
    per["nat_bysource dict"] = sys.getsizeof(bysource) / max(1, n)
    blist = sys.getsizeof(table.buckets) + sum(rsz(b) for b in table.buckets if b is not None)
    per["bucket lists"] = blist / max(1, n)
    per = {k: round(v, 1) for k, v in per.items()}
    return {"total": round(sum(per.values()), 1), "parts": per}


def child_big(n: int, stream: int, churn_cap: int) -> dict:
    """Figures 3, 4 and 5 on one table of n entries, in a fresh process."""
    res: dict = {"n": n}
    sysctl = {"nf_conntrack_max": 2 * n + 2 * stream}
    router, clock = new_router(sysctl)
    table = router.ct
    parse, receive = Packet.parse, router.receive
    gc.collect()

    # -- figure 3: build through the real path, with CPython's default gc -------------
    pauses: list[tuple[int, float]] = []
    start = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            start[0] = perf()
        else:
            pauses.append((info["generation"], perf() - start[0]))

    gc.callbacks.append(on_gc)
    rss0 = rss_bytes()
    t_build = perf()
    chunk = 20000
    for base in range(0, n, chunk):
        bufs = []
        for k in range(base, min(n, base + chunk)):
            c, s, p = big_flow(k)
            bufs.append(udp_datagram(c, s, p, 53))
        for buf in bufs:
            receive(parse(buf, 0, "lan", T0))
        del bufs
        if base // chunk % 10 == 0:
            progress(f"figure 3: {base + chunk:,} / {n:,} entries")
    t_build = perf() - t_build
    gc.callbacks.remove(on_gc)
    rss1 = rss_bytes()
    res["fig3"] = {
        "entries": table.count, "rss_before": rss0, "rss_after": rss1,
        "bytes_per_entry_rss": (rss1 - rss0) / max(1, table.count),
        "build_s": t_build, "build_per_s": table.count / t_build,
        "buckets": table.nbuckets, "kernel_objsize": kernel_nf_conn_size(),
        "default_gc_pauses": len(pauses),
        "default_gc_max_pause_ms": max((d for _, d in pauses), default=0) * 1e3,
        "default_gc_total_ms": sum(d for _, d in pauses) * 1e3,
        "default_gc_full": sum(1 for g, _ in pauses if g == 2),
    }
    progress("figure 3: sizing the structures (sys.getsizeof)")
    res["fig3"]["sizeof"] = deep_size_estimate(table)

    # -- figure 4: tune_gc, then a stream of packets ------------------------------------------
    progress(f"figure 4: building a stream of {stream:,} packets")
    bufs = []
    new_base = n + 250 * 300                      # other hosts: new flows
    for j in range(stream):
        r = j % 8
        k = (j * 7919) % n
        c, s, p = big_flow(k)
        if r < 4:                                  # a reply on an existing flow
            bufs.append(("wan", udp_datagram(s, PUBLIC, 53, p, bytes(120))))
        elif r < 6:                                # the client again
            bufs.append(("lan", udp_datagram(c, s, p, 53)))
        else:                                      # a new flow
            c, s, p = big_flow(new_base + j)
            bufs.append(("lan", udp_datagram(c, s, p, 53)))
    # The clock stays at T0: every entry keeps the same deadline (for figure 5).
    t = perf()
    tune_gc()
    tune_first_ms = (perf() - t) * 1e3
    pauses.clear()
    before = table.count
    gc.callbacks.append(on_gc)
    t = perf()
    for iif, buf in bufs:
        receive(parse(buf, 0, iif, T0))
    t_stream = perf() - t
    gc.callbacks.remove(on_gc)
    del bufs
    tuned = list(pauses)
    new_flows = table.count - before
    t = perf()
    tune_gc()
    tune_again_ms = (perf() - t) * 1e3

    # Sustained churn: new flows until the first automatic collection of generation 1
    # or 2 (with threshold0 x threshold1 young survivors it walks them all).
    progress(f"figure 4: new flows until the first gen1 collection (at most {churn_cap:,})")
    pauses.clear()
    churn_base = new_base + stream
    first_churn_client = big_flow(churn_base)[0]     # client addresses grow with the flow number
    churned, t_churn = 0, 0.0
    gc.callbacks.append(on_gc)
    while churned < churn_cap and not any(g >= 1 for g, _ in pauses):
        bufs = []
        for j in range(churned, min(churn_cap, churned + 10000)):
            c, s, p = big_flow(churn_base + j)
            bufs.append(udp_datagram(c, s, p, 53))
        t = perf()
        for buf in bufs:
            receive(parse(buf, 0, "lan", T0))
        t_churn += perf() - t
        churned += len(bufs)
    gc.callbacks.remove(on_gc)
    del bufs
    churn = list(pauses)
    gen1 = [d for g, d in churn if g >= 1]
    # Back to the figure's table: the churn flows go.
    for ct in [ct for ct in table.conns(reap=False) if ct.orig.src >= first_churn_client]:
        table.kill(ct)
    gc.collect()
    gc.unfreeze()
    tracked = sum(len(gc.get_objects(g)) for g in range(3))
    full_ms = timed_gc_collect() * 1e3
    full2_ms = timed_gc_collect() * 1e3
    res["fig4"] = {
        "entries": table.count, "stream": stream, "new_flows": new_flows,
        "stream_pps": stream / t_stream,
        "pauses": len(tuned), "max_pause_ms": max((d for _, d in tuned), default=0) * 1e3,
        "total_pause_ms": sum(d for _, d in tuned) * 1e3,
        "by_generation": {str(g): sum(1 for x, _ in tuned if x == g) for g in range(3)},
        "tune_gc_first_ms": tune_first_ms, "tune_gc_again_ms": tune_again_ms,
        "churn_flows": churned, "churn_pps": churned / max(t_churn, 1e-9), "churn_pauses": len(churn),
        "churn_gen0_max_ms": max((d for g, d in churn if g == 0), default=0) * 1e3,
        "churn_gen1_ms": max(gen1) * 1e3 if gen1 else None,
        "tracked_objects": tracked, "full_collect_unfrozen_ms": min(full_ms, full2_ms),
    }
    progress(f"figure 4: max tuned pause {res['fig4']['max_pause_ms']:.2f} ms; gen1 under churn "
             f"{res['fig4']['churn_gen1_ms']} ms; unfrozen full collection "
             f"{res['fig4']['full_collect_unfrozen_ms']:.0f} ms")

    # -- figure 5: conntrack gc_worker slices --------------------------------------------------
    tune_gc()
    deadline_j = max(ct.timeout for ct in table.conns(reap=False))
    first_j = min(ct.timeout for ct in table.conns(reap=False))
    progress(f"figure 5: {table.count:,} entries, deadlines {first_j}..{deadline_j} jiffies")
    # A whole pass at a moment nothing has expired.
    clock.set(T0 + 10.0)
    table.gc_next_bucket = 0
    idle = []
    while True:
        t = perf()
        table.gc_worker()
        idle.append(perf() - t)
        if table.gc_next_bucket == 0:
            break
    # Everything expires at once: slices until the table is empty.
    clock.set((deadline_j + 1) / table.hz)
    slices = []
    cap = 10 * table.count // 64 + 10000
    while table.count and len(slices) < cap:
        t = perf()
        table.gc_worker()
        slices.append(perf() - t)
    srt = sorted(slices)
    res["fig5"] = {
        "idle_slices": len(idle), "idle_max_ms": max(idle) * 1e3, "idle_mean_ms": sum(idle) / len(idle) * 1e3,
        "idle_pass_ms": sum(idle) * 1e3,
        "slices": len(slices), "max_ms": srt[-1] * 1e3 if srt else 0,
        "p99_ms": srt[int(len(srt) * 0.99)] * 1e3 if srt else 0,
        "mean_ms": sum(slices) / max(1, len(slices)) * 1e3, "total_ms": sum(slices) * 1e3,
        "left": table.count, "per_slice_limit": 64000 // table.hz,
    }
    progress(f"figure 5: {len(slices)} slices, max {res['fig5']['max_ms']:.2f} ms")
    return res


def _traced_build(n: int, frames_of) -> tuple[float, list, int]:
    """Bytes per entry that tracemalloc sees n entries keep, and the top allocating lines."""
    router, clock = new_router({"nf_conntrack_max": 2 * n})
    parse, receive = Packet.parse, router.receive
    bufs = [f for k in range(n) for f in frames_of(k)]
    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.get_traced_memory()[0]
    snap0 = tracemalloc.take_snapshot()
    for iif, buf in bufs:
        receive(parse(buf, 0, iif, T0))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    count = max(1, router.ct.count)
    top = []
    for st in snap1.compare_to(snap0, "lineno")[:10]:
        fr = st.traceback[0]
        top.append({"where": f"{fr.filename.replace(ROOT + os.sep, '')}:{fr.lineno}",
                    "bytes_per_entry": round(st.size_diff / count, 1),
                    "blocks_per_entry": round(st.count_diff / count, 2)})
    return traced / count, top, router.ct.count


def child_traced(n: int) -> dict:
    """Figure 3 cross-check: tracemalloc's count of what n entries keep, and where;
    the same for ESTABLISHED TCP entries (handshake through the router)."""
    def udp(k):
        c, s, p = big_flow(k)
        return [("lan", udp_datagram(c, s, p, 53))]

    def tcp(k):
        c, s, p = big_flow(k)
        return [("lan", tcp_segment(c, s, p, 443, 1000, 0, 0x02, _SYN_OPTS, 64240)),
                ("wan", tcp_segment(s, PUBLIC, 443, p, 5000, 1001, 0x12, _SYN_OPTS, 65160)),
                ("lan", tcp_segment(c, s, p, 443, 1001, 5001, 0x10, b"", 502))]

    udp_b, top, count = _traced_build(n, udp)
    tcp_b, tcp_top, tcp_count = _traced_build(n, tcp)
    return {"n": count, "bytes_per_entry": udp_b, "top": top,
            "tcp_n": tcp_count, "tcp_bytes_per_entry": tcp_b, "tcp_top": tcp_top}


def child_tcp(n: int) -> dict:
    """Figure 3 for ESTABLISHED TCP entries: the RSS growth of n handshakes (SYN, SYN-ACK,
    ACK) through the router, frames made a chunk at a time so they do not blur the figure."""
    router, clock = new_router({"nf_conntrack_max": 2 * n})
    parse, receive = Packet.parse, router.receive
    prepare_gc()
    rss0 = rss_bytes()
    chunk = 20000
    for base in range(0, n, chunk):
        bufs = []
        for k in range(base, min(n, base + chunk)):
            c, s, p = big_flow(k)
            bufs += [("lan", tcp_segment(c, s, p, 443, 1000, 0, 0x02, _SYN_OPTS, 64240)),
                     ("wan", tcp_segment(s, PUBLIC, 443, p, 5000, 1001, 0x12, _SYN_OPTS, 65160)),
                     ("lan", tcp_segment(c, s, p, 443, 1001, 5001, 0x10, b"", 502))]
        for iif, buf in bufs:
            receive(parse(buf, 0, iif, T0))
        del bufs
        if base // chunk % 10 == 0:
            progress(f"figure 3 (TCP): {base + chunk:,} / {n:,} entries")
    gc.collect()
    rss1 = rss_bytes()
    count = router.ct.count
    established = sum(1 for ct in router.ct.conns(reap=False)
                      if ct.proto is not None and ct.proto.state == TCP_CONNTRACK_ESTABLISHED)
    return {"entries": count, "established": established, "rss_before": rss0, "rss_after": rss1,
            "bytes_per_entry_rss": (rss1 - rss0) / max(1, count)}


def run_child(kind: str, *args) -> dict:
    cmd = [sys.executable, "-m", "bench.engine", "--child", kind, *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"child {kind} exited with {proc.returncode}"}
    return json.loads(proc.stdout)


def pure_build_run(args) -> dict:
    """The whole benchmark again on the pure Python (NATTRACK_PURE=1), as JSON."""
    progress("the same on the pure-Python build (NATTRACK_PURE=1), in a child process")
    cmd = [sys.executable, "-m", "bench.engine", "--one-build", "--json", "--no-kernel"]
    cmd += ["--quick"] * args.quick + ["--profile"] * args.profile
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, NATTRACK_PURE="1"))
    if proc.returncode != 0:
        return {"error": f"the pure build's run exited with {proc.returncode}"}
    return json.loads(proc.stdout)


def both_builds(data: dict, pure: dict | None) -> list[str]:
    """The summary's figures of this build beside the pure build's, with their ratio."""
    L = ["", f"Both builds, same run (this one: {data['header']['build']})"]
    if pure is None:
        L.append("  the compiled build is not running here: the figures above are the pure Python's")
        return L
    if "error" in pure:
        L.append(f"  pure build: {pure['error']}")
        return L
    theirs = {s["metric"]: s["measured"] for s in pure["summary"]}
    L.append(f"  {'figure':<34}{'compiled':>14}{'pure':>14}{'compiled/pure':>15}")
    for s in data["summary"]:
        ours, other = s["measured"], theirs.get(s["metric"])
        ratio = f"{ours / other:.2f}x" if ours and other else "n/a"
        shown = [f"{v:,.1f}" if isinstance(v, float) and v < 100 else f"{v:,.0f}" if v is not None else "n/a"
                 for v in (ours, other)]
        L.append(f"  {s['metric']:<34}{shown[0]:>14}{shown[1]:>14}{ratio:>15}")
    f1, p1 = data["figures"]["1"], pure["figures"]["1"]
    for name in ("parse", "ct_only", "receive_only", "full"):
        L.append(f"  {'us per packet, ' + name:<34}{f1[name]['us_per_pkt']:>14.2f}"
                 f"{p1[name]['us_per_pkt']:>14.2f}{f1[name]['us_per_pkt'] / p1[name]['us_per_pkt']:>14.2f}x")
    if "profile" in p1:
        L.append("")
        L.append("cProfile of the pure build, figure 1 (full path), sorted by own time:")
        L.extend("  " + x for x in p1["profile"])
    return L


# --- report ----------------------------------------------------------------------------------------

def met(key: str, value) -> str:
    if value is None:
        return "n/a"
    op, target, _unit = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return "yes" if ok else "NO"


def fmt_target(key: str) -> str:
    op, target, unit = TARGETS[key]
    return f"{op} {target:,} {unit}"


def build_report(args, header: dict, f1: dict, f2: dict, big: dict, traced: dict) -> tuple[list[str], dict]:
    L: list[str] = []
    summary = []

    def line(label: str, value: str, target: str = "") -> None:
        L.append(f"  {label:<58} {value:>22}   {('target ' + target) if target else ''}".rstrip())

    def row(fig, key, label, value, shown):
        summary.append({"figure": fig, "metric": label, "measured": value, "shown": shown,
                        "target": fmt_target(key) if key else "-", "met": met(key, value) if key else "-"})

    L.append("nattrack engine benchmark" + (" (--quick)" if args.quick else ""))
    for k in ("cpu", "python", "platform", "nattrack", "build", "date"):
        L.append(f"  {k + ':':<10} {header[k]}")
    L.append("")

    # 1
    L.append(f"1. Engine throughput: a capture of {f1['frames']:,} frames "
             f"(tcp {f1['mix']['tcp']:,}, udp {f1['mix']['udp']:,}, icmp {f1['mix']['icmp']:,}); "
             f"best of {f1['repeats']}")
    L.append(f"   mix check: {f1['invalid']} INVALID, {f1['dropped']} dropped, "
             f"{f1['entries_after']:,} entries left (TIME_WAIT etc.)")
    full = f1["full"]
    line("parse + Router.receive (MASQUERADE, filter)", f"{full['best_pps']:,.0f} pkt/s",
         fmt_target("throughput_pps"))
    line("  same, median run", f"{full['median_pps']:,.0f} pkt/s")
    line("Packet.parse only", f"{f1['parse']['best_pps']:,.0f} pkt/s")
    line("conntrack_in + confirm only (pre-parsed, no NAT)", f"{f1['ct_only']['best_pps']:,.0f} pkt/s")
    line("Router.receive only (pre-parsed)", f"{f1['receive_only']['best_pps']:,.0f} pkt/s")
    p_us, c_us = f1["parse"]["us_per_pkt"], f1["ct_only"]["us_per_pkt"]
    r_us, full_us = f1["receive_only"]["us_per_pkt"], full["us_per_pkt"]
    line("where a packet's time goes (us)",
         f"{full_us:.2f} total")
    line(f"  parse {p_us:.2f} | conntrack {c_us:.2f} | NAT+filter+route+rewrite {max(0.0, r_us - c_us):.2f}",
         f"{100 * p_us / full_us:.0f}% | {100 * c_us / full_us:.0f}% | {100 * max(0, r_us - c_us) / full_us:.0f}%")
    k = f1.get("kernel", {})
    if k.get("router_pps"):
        line(f"the kernel, same run: r's path for one UDP flow (veth, {k['n']:,} datagrams)",
             f"{k['router_pps']:,.0f} pkt/s")
        line(f"  sender CPU per datagram: forwarded {k['sender_us_forwarded']:.2f} us, dropped at r "
             f"{k['sender_us_dropped_at_r']:.2f} us; r's path", f"{k['router_us_per_pkt']:.2f} us")
        line("  ratio ours / kernel (time per packet)", f"{full_us / k['router_us_per_pkt']:.1f}x")
    else:
        line("the kernel, same run", k.get("error", "n/a"))
    row(1, "throughput_pps", "throughput (parse + receive)", full["best_pps"], f"{full['best_pps']:,.0f} pkt/s")
    L.append("")

    # 2
    L.append(f"2. New connections through Router.receive: {f2['n']:,} distinct first packets, "
             f"best of {f2['repeats']}")
    line("TCP SYNs", f"{f2['tcp']['best_per_s']:,.0f} conn/s", fmt_target("new_tcp_per_s"))
    line("UDP first packets", f"{f2['udp']['best_per_s']:,.0f} conn/s", fmt_target("new_udp_per_s"))
    cl = f2["tcp_clash"]
    line("TCP SYNs, every source port already taken (search)", f"{cl['best_per_s']:,.0f} conn/s")
    line(f"  ports moved {cl['ports_moved']:,}/{f2['n']:,}, dropped {cl['dropped']:,}; "
         "taken ports tried per conn", f"{cl['taken_candidates_per_conn']:.2f}")
    row(2, "new_tcp_per_s", "new TCP conns/s", f2["tcp"]["best_per_s"], f"{f2['tcp']['best_per_s']:,.0f}/s")
    row(2, "new_udp_per_s", "new UDP conns/s", f2["udp"]["best_per_s"], f"{f2['udp']['best_per_s']:,.0f}/s")
    row(2, None, "new TCP conns/s, port clash", cl["best_per_s"], f"{cl['best_per_s']:,.0f}/s")
    L.append("")

    # 3
    if "error" in big:
        L.append(f"3-5. {big['error']}")
    else:
        f3 = big["fig3"]
        kern = f3["kernel_objsize"]
        bpe = f3["bytes_per_entry_rss"]
        L.append(f"3. Memory per entry at {f3['entries']:,} entries (UDP first packets through "
                 f"Router.receive: conntrack_in + MASQUERADE + confirm; {f3['buckets']:,} buckets)")
        line("RSS growth / entries", f"{bpe:,.0f} B", fmt_target("bytes_per_entry"))
        tcp = big.get("tcp", {})
        tcp_bpe = tcp.get("bytes_per_entry_rss")
        if tcp_bpe is not None:
            line(f"  ESTABLISHED TCP entries ({tcp['established']:,} of {tcp['entries']:,}), RSS growth",
                 f"{tcp_bpe:,.0f} B", fmt_target("tcp_bytes_per_entry"))
        else:
            line("  ESTABLISHED TCP entries", tcp.get("error", "n/a"))
        line("sys.getsizeof estimate (no tracemalloc)", f"{f3['sizeof']['total']:,.0f} B")
        for part, v in f3["sizeof"]["parts"].items():
            line(f"  {part}", f"{v:,.0f} B")
        if traced and "error" not in traced:
            line(f"tracemalloc at {traced['n']:,} entries", f"{traced['bytes_per_entry']:,.0f} B")
            for t in traced["top"][:8]:
                line(f"  {t['where']}", f"{t['bytes_per_entry']:,.0f} B")
            line(f"tracemalloc, ESTABLISHED TCP entries ({traced['tcp_n']:,})",
                 f"{traced['tcp_bytes_per_entry']:,.0f} B")
            for t in traced["tcp_top"][:6]:
                line(f"  {t['where']}", f"{t['bytes_per_entry']:,.0f} B")
        line("kernel nf_conn (slabinfo objsize)", f"{kern} B" if kern else "n/a")
        line("ratio ours / kernel (UDP)", f"{bpe / kern:.2f}x" if kern else "n/a")
        if tcp_bpe is not None:
            line("ratio ours / kernel (TCP)", f"{tcp_bpe / kern:.2f}x" if kern else "n/a")
        line("build rate at scale (includes frame crafting)", f"{f3['build_per_s']:,.0f} conn/s")
        line("default gc while growing: collections / full / max pause",
             f"{f3['default_gc_pauses']} / {f3['default_gc_full']} / {f3['default_gc_max_pause_ms']:,.0f} ms")
        row(3, "bytes_per_entry", "bytes per UDP entry (RSS)", bpe, f"{bpe:,.0f} B")
        row(3, "tcp_bytes_per_entry", "bytes per TCP entry (RSS)", tcp_bpe,
            f"{tcp_bpe:,.0f} B" if tcp_bpe is not None else "n/a")
        L.append("")

        # 4
        f4 = big["fig4"]
        L.append(f"4. CPython gc with {f4['entries']:,} entries after tune_gc(): {f4['stream']:,} packets "
                 f"({f4['new_flows']:,} new flows) at {f4['stream_pps']:,.0f} pkt/s")
        line("automatic collections (gen0/gen1/gen2)",
             f"{f4['pauses']} ({f4['by_generation']['0']}/{f4['by_generation']['1']}/{f4['by_generation']['2']})")
        line("max automatic pause", f"{f4['max_pause_ms']:.2f} ms", fmt_target("gc_max_pause_ms"))
        line("total automatic pause", f"{f4['total_pause_ms']:.1f} ms")
        line("tune_gc() itself, first call (full collect + freeze)", f"{f4['tune_gc_first_ms']:,.0f} ms")
        line("tune_gc() again after the stream (collect young + freeze)", f"{f4['tune_gc_again_ms']:.1f} ms",
             fmt_target("gc_max_pause_ms"))
        g1 = f4["churn_gen1_ms"]
        line(f"sustained churn: {f4['churn_flows']:,} new flows, {f4['churn_pauses']} collections, max gen0",
             f"{f4['churn_gen0_max_ms']:.2f} ms")
        line("  first automatic gen1 collection under churn",
             f"{g1:,.0f} ms" if g1 is not None else "none within cap", fmt_target("gc_max_pause_ms"))
        line(f"without tune_gc: full gc.collect(), {f4['tracked_objects']:,} objects",
             f"{f4['full_collect_unfrozen_ms']:,.0f} ms")
        row(4, "gc_max_pause_ms", "max CPython gc pause (stream)", f4["max_pause_ms"], f"{f4['max_pause_ms']:.2f} ms")
        row(4, "gc_max_pause_ms", "tune_gc() re-freeze pause", f4["tune_gc_again_ms"], f"{f4['tune_gc_again_ms']:.1f} ms")
        row(4, "gc_max_pause_ms", "gen1 pause under churn", g1, f"{g1:,.0f} ms" if g1 is not None else "none")
        L.append("")

        # 5
        f5 = big["fig5"]
        L.append(f"5. conntrack gc_worker with {f4['entries']:,} entries expiring at once "
                 f"({f5['per_slice_limit']} reaped per slice at most)")
        line("max slice while reaping", f"{f5['max_ms']:.2f} ms", fmt_target("ctgc_max_slice_ms"))
        line("  p99 / mean slice", f"{f5['p99_ms']:.2f} / {f5['mean_ms']:.2f} ms")
        line("  slices to reap everything / total time",
             f"{f5['slices']:,} / {f5['total_ms']:,.0f} ms")
        if f5["left"]:
            line("  entries left (slice cap reached)", f"{f5['left']:,}")
        line("max slice when nothing has expired", f"{f5['idle_max_ms']:.2f} ms", fmt_target("ctgc_idle_slice_ms"))
        line(f"  mean slice / whole pass ({f5['idle_slices']} slices)",
             f"{f5['idle_mean_ms']:.2f} / {f5['idle_pass_ms']:,.0f} ms")
        row(5, "ctgc_max_slice_ms", "max gc_worker slice (reaping)", f5["max_ms"], f"{f5['max_ms']:.2f} ms")
        row(5, "ctgc_idle_slice_ms", "max gc_worker slice (idle)", f5["idle_max_ms"], f"{f5['idle_max_ms']:.2f} ms")
        L.append("")

    L.append("Summary")
    L.append(f"  {'fig':<4}{'figure':<34}{'measured':>16}   {'target':<22}{'met'}")
    for s in summary:
        L.append(f"  {s['figure']:<4}{s['metric']:<34}{s['shown']:>16}   {s['target']:<22}{s['met']}")
    for name, f in (("figure 1 (full path)", f1), ("figure 2 (new TCP)", f2)):
        if "profile" in f:
            L.append("")
            L.append(f"cProfile, {name}, sorted by own time:")
            L.extend("  " + x for x in f["profile"])
    data = {"header": header, "figures": {"1": f1, "2": f2, "3-5": big, "3-tracemalloc": traced},
            "summary": [{k: v for k, v in s.items() if k != "shown"} for s in summary], "text": L}
    return L, data


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--profile", action="store_true", help="add cProfile hotspots of figures 1 and 2")
    ap.add_argument("--no-kernel", action="store_true",
                    help=f"skip the kernel's figure (it needs root and waits for {LIVE_LOCK})")
    ap.add_argument("--one-build", action="store_true",
                    help="measure only the build this process runs (no NATTRACK_PURE=1 child)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "big":
            out = child_big(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "tcp":
            out = child_tcp(int(rest[0]))
        else:
            out = child_traced(int(rest[0]))
        out["build"] = nattrack.BUILD
        json.dump(out, sys.stdout)
        return
    header = {"cpu": cpu_model(), "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
              "platform": platform.platform(), "nattrack": f"git {git_rev()}", "build": nattrack.BUILD,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    t0 = perf()
    f1 = bench_throughput(args.quick, args.profile)
    f2 = bench_new(args.quick, args.profile)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    n, stream = size("table", args.quick), size("stream", args.quick)
    progress(f"figures 3-5: child process, {n:,} entries")
    big = run_child("big", n, stream, size("churn", args.quick))
    progress(f"figure 3: ESTABLISHED TCP entries (child process), {n:,} entries")
    big["tcp"] = run_child("tcp", n)
    progress("figure 3: tracemalloc cross-check (child process)")
    traced = run_child("traced", size("traced", args.quick))
    progress("figure 1: the kernel's router path in network namespaces")
    f1["kernel"] = {"error": "not measured (--no-kernel)"} if args.no_kernel else kernel_router_cost(args.quick)
    header["elapsed_s"] = round(perf() - t0, 1)
    # A source edited during the run makes a child fall back to the pure Python: say so.
    others = {c.get("build") for c in (big, big.get("tcp", {}), traced) if c.get("build") != nattrack.BUILD}
    if others - {None}:
        header["build"] += f"; WARNING: child processes ran {', '.join(sorted(others - {None}))}"
    lines, data = build_report(args, header, f1, f2, big, traced)
    if not args.one_build:
        pure = pure_build_run(args) if nattrack.compiled_loaded() else None
        lines += both_builds(data, pure)
        data["pure"] = pure
    if args.json:
        print(json.dumps(data, indent=1, default=str))
    else:
        print("\n".join(lines))
        print(f"\n(elapsed {header['elapsed_s']} s)")


if __name__ == "__main__":
    main()
