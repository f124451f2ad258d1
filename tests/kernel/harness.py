"""Kernel oracle: run crafted packets through the real nf_conntrack/nf_nat.

A :class:`KernelLab` builds a small network out of namespaces, all named with a
prefix unique to the lab (``ntk<pid>x<n>-``), so parallel runs and leftovers of
dead runs never clash::

    priv1 (10.0.0.2/24) --+
                          +-- br0 [switch ns] -- r-priv (10.0.0.1/24) [router] r-pub (203.0.113.1/24) -- pub (203.0.113.2/24)
    priv2 (10.0.0.3/24) --+

Every host's interface is ``eth0``.  Every interface has a fixed MAC address
(:data:`MACS`), offloads are off on every veth (captured checksums are the
real ones), IPv6 is disabled everywhere (no stray router solicitations in
the captures) and all neighbour entries are static, so no ARP happens during
a scenario.  The router forwards (``ip_forward=1``, ``rp_filter=0``, no
redirects), has a default route via pub, loads ``rules_text`` with
``iptables-restore`` and always has connection tracking active (one rule without
a target, ``-t mangle -A PREROUTING -m conntrack ! --ctstate UNTRACKED``, is added
after the ruleset for that: it changes nothing but makes the kernel track).  With
``quiet_hosts`` the hosts' own kernels drop every incoming IP packet in their
raw table, so they never answer crafted packets; frames are still sent by
the per-host agents (``agent.py`` beside this file, raw AF_PACKET sockets).

Recording (:meth:`KernelLab.start_recording` / :meth:`KernelLab.stop_recording`,
or :meth:`KernelLab.run_scenario`) runs, in the router namespace,
``conntrack -E -o timestamp`` and four ``tcpdump`` (r-priv / r-pub, ingress
/ egress), then lists the table (``conntrack -L``) and the statistics
(``conntrack -S``) at the end and returns a :class:`Recording`.  When the rules
attach a helper it also records ``conntrack -E expect -o timestamp`` and lists
``conntrack -L expect`` at the end.

Teardown (context exit, also after exceptions and KeyboardInterrupt, and at
interpreter exit as a fallback) stops every process the lab started and
deletes all of its namespaces, which removes the bridge and the veths.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import netns_tools
from nattrack.netfilter.rulesfile import is_nft
from netns_tools import kill_netns_pids, list_netns

AGENT = Path(__file__).with_name("agent.py")

# ----------------------------------------------------------------------------------------
# Addresses of the lab.

PRIV1, PRIV2, PUB = "10.0.0.2", "10.0.0.3", "203.0.113.2"
ROUTER_PRIV, ROUTER_PUB = "10.0.0.1", "203.0.113.1"
HOST_ADDR = {"priv1": PRIV1, "priv2": PRIV2, "pub": PUB}
IFACES = {"r-priv": "10.0.0.1/24", "r-pub": "203.0.113.1/24"}
ROUTES = {"default": "r-pub"}

# Fixed MAC addresses, so frames can be crafted at layer 2 and captures are repeatable.
MACS = {
    "priv1": "02:00:00:00:00:02",     # priv1 eth0
    "priv2": "02:00:00:00:00:03",     # priv2 eth0
    "pub": "02:00:00:00:01:02",       # pub eth0
    "r-priv": "02:00:00:00:00:01",
    "r-pub": "02:00:00:00:01:01",
    "br0": "02:00:00:00:fe:00",
    "sw-priv1": "02:00:00:00:fe:02",
    "sw-priv2": "02:00:00:00:fe:03",
    "sw-r": "02:00:00:00:fe:01",
}
# The router interface each host is attached to (the destination MAC of crafted frames).
HOST_GATEWAY_IF = {"priv1": "r-priv", "priv2": "r-priv", "pub": "r-pub"}
HOSTS = ("priv1", "priv2", "pub")
NAMESPACES = ("sw", "priv1", "priv2", "rtr", "pub")

STAT_KEYS = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
             "search_restart", "clash_resolve", "chaintoolong")

# Debian package providing each external tool (for a clear "install X" message).
TOOLS = {"ip": "iproute2", "conntrack": "conntrack", "iptables-restore": "iptables",
         "tcpdump": "tcpdump", "ethtool": "ethtool", "iptables": "iptables", "nft": "nftables"}

PREFIX_RE = re.compile(r"^ntk(\d+)x\d+-")
_counter = itertools.count()
_live_labs: "set[KernelLab]" = set()
_live_lock = threading.Lock()


class LabError(RuntimeError):
    """A command of the lab failed."""


def missing_tools() -> dict[str, str]:
    """Tools the harness needs that are not on PATH, mapped to their Debian package."""
    return {tool: pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None}


# ----------------------------------------------------------------------------------------
# Scenario building blocks (scenarios.py holds the data).

PacketLike = Any    # a scapy packet (IP layer, or a full Ether frame), bytes, or a list of them


@dataclasses.dataclass(frozen=True)
class Send:
    """Send ``packet`` from ``host`` (priv1, priv2, pub).

    ``packet`` is an IP-layer scapy packet (wrapped in Ethernet from the host's
    MAC to the router's), a complete ``Ether`` frame, raw frame bytes, a list of
    those (sent back to back, e.g. fragments), or a callable ``f(lab) -> packet``
    evaluated when the step runs (to use values only the kernel knows, such as a
    randomly chosen NAT port: see :meth:`KernelLab.mapped_key`).
    """
    host: str
    packet: Union[PacketLike, Callable[["KernelLab"], PacketLike]]
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Conntrack:
    """Run ``conntrack ARGS`` in the router in the middle of a scenario (e.g. ``-L``)."""
    args: tuple[str, ...]
    note: str = ""


Step = Union[Send, Sleep, Conntrack]


@dataclasses.dataclass(frozen=True)
class Expect:
    """What the *kernel* must show for a scenario (a sanity check of the scenario).

    * ``events``: regular expressions that must match event lines in this order
      (a subsequence; the ``[ts]\\t`` prefix is stripped before matching);
    * ``no_events``: regular expressions no event line may match;
    * ``table``: regular expressions that must each match some ``-L`` line;
    * ``table_count``: exact number of ``-L`` lines (None = not checked);
    * ``stats``: exact values of statistics counters (deltas over the scenario);
    * ``egress``: (iface, regex) pairs, each must match the :func:`summarize` text of a
      frame that left the router on that interface; ``no_egress`` must match none;
    * ``checks``: functions called with the :class:`Recording` that assert more.
    """
    events: tuple[str, ...] = ()
    no_events: tuple[str, ...] = ()
    table: tuple[str, ...] = ()
    table_count: int | None = None
    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    egress: tuple[tuple[str, str], ...] = ()
    no_egress: tuple[tuple[str, str], ...] = ()
    checks: tuple[Callable[["Recording"], None], ...] = ()   # extra assertions on the recording


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    rules: str
    steps: tuple[Step, ...]
    sysctls: dict[str, str] = dataclasses.field(default_factory=dict)
    expect: Expect = Expect()
    # The kernel picks NAT ports/ids at random here (compare classes, not numbers).
    random_ports: bool = False
    # Non-empty: the engine cannot be expected to agree, for this reason (e.g. a crafted
    # reply addressed to a port only the kernel's random choice knows).
    diff_xfail: str = ""
    public_extra: tuple[str, ...] = ()
    gap: float = 0.03          # pause after each Send, keeps the ingress order unambiguous
    # Ports open on the router while the scenario runs ("tcp:22", "udp:53"): a process in
    # the router namespace binds them (TCP: listens), as a lab's SSH or DNS server would.
    listen: tuple[str, ...] = ()


@dataclasses.dataclass
class Recording:
    """Everything the kernel showed during one scenario."""
    name: str
    pcaps: dict[tuple[str, str], Path]     # (iface, "in"/"out") -> pcap path
    events: list[str]                      # `conntrack -E -o timestamp` lines
    table: list[str]                       # `conntrack -L` lines (no summary)
    listed_at: float                       # epoch just before `conntrack -L`
    stats: dict[str, int]                  # `conntrack -S` summed over CPUs, delta over the scenario
    stats_total: dict[str, int]            # same, absolute values at the end
    rules_text: str
    sysctls: dict[str, str]
    started_at: float
    workdir: Path
    log: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (epoch, step)
    problems: list[str] = dataclasses.field(default_factory=list)  # recorder trouble
    listen: tuple[str, ...] = ()           # the scenario's open router ports ("tcp:22")
    # (table, chain, index) -> (packets, bytes) each rule counted during the scenario
    rule_counters: dict[tuple[str, str, int], tuple[int, int]] = dataclasses.field(
        default_factory=dict)
    # Rules with a helper: `conntrack -E expect -o timestamp` lines and, at the end (right
    # after `-L`), `conntrack -L expect` lines; None without a helper (not recorded).
    expect_events: list[str] | None = None
    expect_table: list[str] | None = None

    def frames(self, iface: str, direction: str) -> list[tuple[float, bytes]]:
        return read_pcap(self.pcaps[(iface, direction)])

    def summaries(self, iface: str, direction: str) -> list[str]:
        return [summarize(f) for _, f in self.frames(iface, direction)]

    def events_stripped(self) -> list[str]:
        return [strip_timestamp(e) for e in self.events]

    def describe(self) -> str:
        out = [f"== kernel recording {self.name} ({self.workdir})", "-- events:"]
        out += [f"   {e}" for e in self.events]
        out.append(f"-- table (listed at {self.listed_at:.6f}):")
        out += [f"   {t}" for t in self.table]
        out.append(f"-- stats: {self.stats}")
        for (iface, d) in sorted(self.pcaps):
            out.append(f"-- {iface} {d}:")
            out += [f"   {ts:.6f} {s}" for ts, s in
                    ((ts, summarize(f)) for ts, f in self.frames(iface, d))]
        return "\n".join(out)


def strip_timestamp(line: str) -> str:
    """`[1700000000.123456]\\t    [NEW] ...` -> `    [NEW] ...`."""
    m = re.match(r"^\[\d+\.\d+\]\t", line)
    return line[m.end():] if m else line


def parse_stats(text: str) -> dict[str, int]:
    """Sum the per-CPU lines of `conntrack -S`."""
    total = {k: 0 for k in STAT_KEYS}
    for line in text.splitlines():
        for tok in line.split():
            if "=" not in tok:
                continue
            k, _, v = tok.partition("=")
            if k == "cpu" or not v.isdigit():
                continue
            total[k] = total.get(k, 0) + int(v)
    return total


# ----------------------------------------------------------------------------------------
# pcap helpers.

def read_pcap(path: Path | str) -> list[tuple[float, bytes]]:
    from scapy.utils import RawPcapReader
    out = []
    if not Path(path).exists() or Path(path).stat().st_size == 0:
        return out
    with RawPcapReader(str(path)) as rd:
        for data, meta in rd:
            if hasattr(meta, "tshigh"):          # pcapng
                ts = ((meta.tshigh << 32) | meta.tslow) / (meta.tsresol or 1_000_000)
            else:
                ts = meta.sec + meta.usec / 1_000_000
            out.append((ts, bytes(data)))
    return out


def summarize(frame: bytes) -> str:
    """A one-line, tcpdump-like description of an Ethernet frame (for diffs and expectations).

    ``tcp 203.0.113.1:40000 > 203.0.113.2:80 [S] seq=1000 ack=0 len=0 ipid=1``;
    ``udp 10.0.0.2:41000 > 203.0.113.2:5353 len=5 ipid=7``;
    ``icmp 10.0.0.2 > 203.0.113.2 type=8 code=0 id=4242 seq=1 ipid=3``;
    ICMP errors add ``[inner: <summary of the embedded packet>]``; fragments show
    ``frag off=N mf=1``.  ``badsum`` is appended when an IP/L4 checksum is wrong.
    """
    from scapy.layers.l2 import Ether
    pkt = Ether(frame)
    from scapy.layers.inet import IP
    if IP not in pkt:
        return f"non-ip type=0x{pkt.type:04x}" if hasattr(pkt, "type") else "non-ip"
    return _summarize_ip(pkt[IP], frame_bytes=bytes(pkt[IP]))


def _summarize_ip(ip, frame_bytes: bytes | None = None, inner: bool = False) -> str:
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror, ICMPerror
    bad = "" if inner else _bad_checksums(frame_bytes if frame_bytes is not None else bytes(ip))
    if ip.frag or ip.flags.MF:
        s = f"ip {ip.src} > {ip.dst} proto={ip.proto} frag off={ip.frag * 8} mf={int(bool(ip.flags.MF))} ipid={ip.id}"
        if ip.frag == 0 and ip.proto == 17 and len(bytes(ip.payload)) >= 4:
            raw = bytes(ip.payload)
            s += f" sport={int.from_bytes(raw[0:2], 'big')} dport={int.from_bytes(raw[2:4], 'big')}"
        return s + bad
    l4 = ip.payload
    if isinstance(l4, (TCP, TCPerror)):
        flags = str(l4.flags) if not inner else ""
        s = f"tcp {ip.src}:{l4.sport} > {ip.dst}:{l4.dport}"
        if not inner:
            s += f" [{flags}] seq={l4.seq} ack={l4.ack} len={len(bytes(l4.payload))}"
    elif isinstance(l4, (UDP, UDPerror)):
        s = f"udp {ip.src}:{l4.sport} > {ip.dst}:{l4.dport}"
        if not inner:
            s += f" len={len(bytes(l4.payload))}"
    elif isinstance(l4, (ICMP, ICMPerror)):
        s = f"icmp {ip.src} > {ip.dst} type={l4.type} code={l4.code}"
        if l4.type in (0, 8, 13, 14, 15, 16, 17, 18):
            s += f" id={l4.id} seq={l4.seq}"
        emb = l4.payload
        if not inner and isinstance(emb, (IP, IPerror)):
            s += f" [inner: {_summarize_ip(emb, inner=True)}]"
    else:
        s = f"ip {ip.src} > {ip.dst} proto={ip.proto}"
    if not inner:
        s += f" ipid={ip.id}"
    return s + bad


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum_errors(ipbytes: bytes) -> list[str]:
    """Names of the checksums that are wrong in an IPv4 datagram ('ip', 'tcp', 'udp', 'icmp')."""
    errs = []
    if len(ipbytes) < 20:
        return ["short"]
    ihl = (ipbytes[0] & 0x0F) * 4
    if _ones_sum(ipbytes[:ihl]) != 0xFFFF:
        errs.append("ip")
    total = int.from_bytes(ipbytes[2:4], "big")
    frag = int.from_bytes(ipbytes[6:8], "big")
    if frag & 0x3FFF:             # a fragment: L4 checksum covers the whole datagram
        return errs
    proto = ipbytes[9]
    l4 = ipbytes[ihl:total]
    pseudo = ipbytes[12:20] + bytes([0, proto]) + len(l4).to_bytes(2, "big")
    if proto == 6 and len(l4) >= 20:
        if _ones_sum(pseudo + l4) != 0xFFFF:
            errs.append("tcp")
    elif proto == 17 and len(l4) >= 8:
        if l4[6:8] != b"\0\0" and _ones_sum(pseudo + l4) != 0xFFFF:
            errs.append("udp")
    elif proto == 1 and len(l4) >= 4:
        if _ones_sum(l4) != 0xFFFF:
            errs.append("icmp")
    return errs


def _bad_checksums(ipbytes: bytes) -> str:
    """' badsum(ip,tcp)' when a checksum in the IP datagram is wrong, else ''."""
    errs = checksum_errors(ipbytes)
    return f" badsum({','.join(errs)})" if errs else ""


# ----------------------------------------------------------------------------------------
# Small process helpers.

class _LineReader:
    """Line reader on a pipe with a timeout (no buffering surprises with select)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


class _Agent:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.reader = _LineReader(proc.stdout.fileno())
        self.lock = threading.Lock()

    def command(self, line: str, timeout: float = 5.0) -> str:
        with self.lock:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
            ans = self.reader.readline(timeout)
        if ans is None:
            raise LabError(f"agent pid {self.proc.pid} did not answer {line[:40]!r}")
        return ans


def _run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    return p


def cleanup_stale(log: Callable[[str], None] | None = None) -> list[str]:
    """Delete namespaces left behind by *dead* harness runs (prefix ``ntk<pid>x<n>-`` with
    a pid that no longer exists), after stopping the processes still inside them."""
    return netns_tools.cleanup_stale(PREFIX_RE, log)


_sigterm_prev: list = []


def _on_sigterm(signum, frame):  # noqa: ARG001
    # Unwind like an exception so every live lab's context exit tears it down.
    raise SystemExit(128 + signum)


def _hook_sigterm() -> None:
    """While labs are live, SIGTERM (e.g. a CI timeout) unwinds instead of killing
    the process outright, so namespaces and recorders are still cleaned up."""
    if _sigterm_prev or threading.current_thread() is not threading.main_thread():
        return
    prev = signal.getsignal(signal.SIGTERM)
    if prev in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_prev.append(prev)


def _unhook_sigterm() -> None:
    if _sigterm_prev and not _live_labs and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_prev.pop())


@atexit.register
def _teardown_all() -> None:
    with _live_lock:
        labs = list(_live_labs)
    for lab in labs:
        lab.close()


# ----------------------------------------------------------------------------------------
# The lab.

class KernelLab:
    """Namespaces + bridge + router with real conntrack/NAT; see the module docstring."""

    def __init__(self, rules_text: str, sysctls: dict[str, str] | None = None,
                 quiet_hosts: bool = True, public_extra: Iterable[str] = (),
                 workdir: str | Path | None = None, keep_workdir: bool = True):
        self.rules_text = rules_text
        self.helpers = "helper" in rules_text      # -j CT --helper / ct helper: record expect
        self.base_sysctls = dict(sysctls or {})
        self.quiet_hosts = quiet_hosts
        self.public_extra = tuple(public_extra)
        self.prefix = f"ntk{os.getpid()}x{next(_counter)}-"
        # Recordings point into the workdir, so by default it outlives the lab; with
        # keep_workdir=False a workdir the lab made itself is removed at teardown.
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=self.prefix))
        self.keep_workdir = keep_workdir or not self._own_workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen] = []
        self.started_pids: list[int] = []          # every process ever started (for checks)
        self._agents: dict[str, _Agent] = {}
        self._ns_created: list[str] = []
        self._sysctl_saved: dict[str, str] = {}     # key -> original value (router)
        self._current_sysctls: dict[str, str] = {}
        self._rec: dict[str, Any] | None = None
        self._closed = False
        self.sysctls = dict(self.base_sysctls)

    # -- names --------------------------------------------------------------------------

    def ns(self, short: str) -> str:
        """Full namespace name for 'sw', 'priv1', 'priv2', 'rtr'/'router', 'pub'."""
        if short == "router":
            short = "rtr"
        if short not in NAMESPACES:
            raise KeyError(short)
        return self.prefix + short

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(s) for s in NAMESPACES]

    @property
    def pids(self) -> list[int]:
        """Process ids of every process the lab started (agents, recorders)."""
        return [p.pid for p in self._procs]

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> "KernelLab":
        with _live_lock:
            _live_labs.add(self)
        _hook_sigterm()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- command helpers ----------------------------------------------------------------

    def exec(self, short: str, *cmd: str, check: bool = True, input: str | None = None,
             timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside one of the lab's namespaces."""
        return _run(["ip", "netns", "exec", self.ns(short), *cmd], check=check, input=input,
                    timeout=timeout)

    def _ip(self, short: str, *args: str) -> None:
        _run(["ip", "-n", self.ns(short), *args])

    def _ip_batch(self, short: str, lines: list[str]) -> None:
        _run(["ip", "-n", self.ns(short), "-batch", "-"], input="\n".join(lines) + "\n")

    def conntrack(self, *args: str, check: bool = True) -> str:
        """Run ``conntrack ARGS`` in the router namespace; returns its standard output."""
        return self.exec("rtr", "conntrack", *args, check=check).stdout

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    def _spawn(self, short: str, cmd: Sequence[str], **kw) -> subprocess.Popen:
        full = ["ip", "netns", "exec", self.ns(short), *cmd]
        # Own session: a Ctrl-C at the terminal reaches only the test process, whose
        # teardown then stops these in order.
        p = subprocess.Popen(full, start_new_session=True, **kw)
        self._procs.append(p)
        self.started_pids.append(p.pid)
        return p

    # -- build ----------------------------------------------------------------------------

    def _build(self) -> None:
        for short in NAMESPACES:
            name = self.ns(short)
            _run(["ip", "netns", "add", name])
            self._ns_created.append(name)
        # Base sysctls of every namespace: no IPv6 (no RS/ND/MLD noise), lo up.
        for short in NAMESPACES:
            self.write_sysctls(short, {
                "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
        self.exec("sw", "sh", "-c",
                  "for f in /proc/sys/net/bridge/bridge-nf-call-*; do "
                  "[ -w \"$f\" ] && echo 0 > \"$f\"; done; true")
        self.write_sysctls("rtr", {
            "net.ipv4.ip_forward": "1", "net.ipv4.conf.all.send_redirects": "0",
            "net.ipv4.conf.default.send_redirects": "0",
            "net.ipv4.conf.all.accept_redirects": "0"})

        # veth pairs, created inside the namespaces (names never touch the root ns).
        links = [
            ("sw", "sw-priv1", MACS["sw-priv1"], "priv1", "eth0", MACS["priv1"]),
            ("sw", "sw-priv2", MACS["sw-priv2"], "priv2", "eth0", MACS["priv2"]),
            ("sw", "sw-r", MACS["sw-r"], "rtr", "r-priv", MACS["r-priv"]),
            ("rtr", "r-pub", MACS["r-pub"], "pub", "eth0", MACS["pub"]),
        ]
        for a_ns, a_if, a_mac, b_ns, b_if, b_mac in links:
            _run(["ip", "-n", self.ns(a_ns), "link", "add", a_if, "address", a_mac, "type",
                  "veth", "peer", "name", b_if, "address", b_mac, "netns", self.ns(b_ns)])
        self._ip_batch("sw", [
            f"link add br0 address {MACS['br0']} type bridge stp_state 0 forward_delay 0 "
            "mcast_snooping 0",
            "link set sw-priv1 master br0", "link set sw-priv2 master br0",
            "link set sw-r master br0",
            "link set lo up", "link set br0 up", "link set sw-priv1 up", "link set sw-priv2 up",
            "link set sw-r up",
        ])
        for short, ifs in (("sw", ["sw-priv1", "sw-priv2", "sw-r"]), ("priv1", ["eth0"]),
                           ("priv2", ["eth0"]), ("rtr", ["r-priv", "r-pub"]), ("pub", ["eth0"])):
            for ifname in ifs:
                self.exec(short, "ethtool", "-K", ifname, "rx", "off", "tx", "off", "tso", "off",
                          "gso", "off", "gro", "off", check=False)
        for host, addr, other in (("priv1", PRIV1, "priv2"), ("priv2", PRIV2, "priv1")):
            self._ip_batch(host, [
                "link set lo up", f"addr add {addr}/24 dev eth0", "link set eth0 up",
                f"route add default via {ROUTER_PRIV} dev eth0",
                f"neigh replace {ROUTER_PRIV} lladdr {MACS['r-priv']} dev eth0 nud permanent",
                f"neigh replace {HOST_ADDR[other]} lladdr {MACS[other]} dev eth0 nud permanent",
            ])
        self._ip_batch("pub", [
            "link set lo up", f"addr add {PUB}/24 dev eth0",
            *[f"addr add {a}/32 dev eth0" for a in self.public_extra],
            "link set eth0 up",
            f"route add default via {ROUTER_PUB} dev eth0",
            f"neigh replace {ROUTER_PUB} lladdr {MACS['r-pub']} dev eth0 nud permanent",
        ])
        self._ip_batch("rtr", [
            "link set lo up",
            f"addr add {IFACES['r-priv']} dev r-priv", f"addr add {IFACES['r-pub']} dev r-pub",
            "link set r-priv up", "link set r-pub up",
            f"route add default via {PUB} dev r-pub",
            f"neigh replace {PRIV1} lladdr {MACS['priv1']} dev r-priv nud permanent",
            f"neigh replace {PRIV2} lladdr {MACS['priv2']} dev r-priv nud permanent",
            f"neigh replace {PUB} lladdr {MACS['pub']} dev r-pub nud permanent",
            *[f"neigh replace {a} lladdr {MACS['pub']} dev r-pub nud permanent"
              for a in self.public_extra],
        ])
        if self.quiet_hosts:
            for host in HOSTS:
                self.exec(host, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-j", "DROP")
        # A helper's NAT half (nf_nat_ftp) is a module of its own where the kernel is built
        # with modules (Debian's): xt_CT's xt_ct_set_helper() loads only the conntrack half
        # (nf_conntrack_helper_try_module_get()), so without this FTP through NAT is never
        # rewritten.  Built in (this project's 6.18), it is a no-op.
        if self.helpers and shutil.which("modprobe"):
            _run(["modprobe", "-q", "nf_nat_ftp"], check=False)
        # Router ruleset, and conntrack forced active whatever the ruleset says.
        if is_nft(self.rules_text):                 # issue 12: the nft form of a ruleset
            self.exec("rtr", "nft", "-f", "-", input=self.rules_text)
        else:
            self.exec("rtr", "iptables-restore", "-w", input=self.rules_text)
        self.exec("rtr", "iptables", "-w", "-t", "mangle", "-A", "PREROUTING",
                  "-m", "conntrack", "!", "--ctstate", "UNTRACKED")
        self.set_sysctls(self.base_sysctls)
        self.conntrack("-F", check=False)
        for host in HOSTS:
            self._start_agent(host)

    def _start_agent(self, host: str) -> None:
        p = self._spawn(host, [sys.executable, str(AGENT), "eth0"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=open(self.workdir / f"agent-{host}.err", "wb"))
        agent = _Agent(p)
        line = agent.reader.readline(10.0)
        if line != "ready":
            raise LabError(f"agent in {host} did not start (got {line!r}); see "
                           f"{self.workdir / f'agent-{host}.err'}")
        self._agents[host] = agent

    # -- sysctls --------------------------------------------------------------------------

    def set_sysctls(self, sysctls: dict[str, str]) -> None:
        """Set router sysctls (kernel names, e.g. ``net.netfilter.nf_conntrack_udp_timeout``);
        keys set by an earlier call but absent now go back to their original values."""
        wanted = {**self.base_sysctls, **sysctls}
        for key in list(self._current_sysctls):
            if key not in wanted and key in self._sysctl_saved:
                self._write_sysctl(key, self._sysctl_saved[key])
                del self._current_sysctls[key]
        for key, value in wanted.items():
            if key not in self._sysctl_saved:
                self._sysctl_saved[key] = self._read_sysctl(key)
            if self._current_sysctls.get(key) != str(value):
                self._write_sysctl(key, str(value))
                self._current_sysctls[key] = str(value)
        self.sysctls = dict(wanted)

    def _read_sysctl(self, key: str) -> str:
        return self.read_sysctl("rtr", key)

    def _write_sysctl(self, key: str, value: str) -> None:
        self.write_sysctls("rtr", {key: value})

    @staticmethod
    def _sysctl_path(key: str) -> str:
        return "/proc/sys/" + key.replace(".", "/")

    def read_sysctl(self, short: str, key: str) -> str:
        """A sysctl (kernel name) as seen in one of the lab's namespaces."""
        return self.exec(short, "cat", self._sysctl_path(key)).stdout.strip()

    def write_sysctls(self, short: str, values: dict[str, str]) -> None:
        """Write sysctls in a namespace (no procps needed: plain writes to /proc/sys)."""
        args: list[str] = []
        for key, value in values.items():
            args += [self._sysctl_path(key), str(value)]
        self.exec(short, "sh", "-ec", 'while [ $# -gt 0 ]; do printf "%s\n" "$2" > "$1"; '
                  'shift 2; done', "sh", *args)

    # -- sending --------------------------------------------------------------------------

    def frame(self, host: str, pkt: PacketLike) -> bytes:
        """Ethernet frame bytes for ``pkt`` sent by ``host`` to its gateway (the router)."""
        if isinstance(pkt, (bytes, bytearray)):
            return bytes(pkt)
        from scapy.layers.l2 import Ether
        if isinstance(pkt, Ether):
            return bytes(pkt)
        return bytes(Ether(src=MACS[host], dst=MACS[HOST_GATEWAY_IF[host]]) / pkt)

    def send(self, host: str, frame: PacketLike) -> None:
        """Send one frame (bytes, an Ether packet, or an IP packet wrapped for you) from
        ``host``; a list sends several back to back."""
        if host not in self._agents:
            raise KeyError(f"unknown host {host!r} (hosts: {', '.join(HOSTS)})")
        frames = frame if isinstance(frame, (list, tuple)) else [frame]
        for f in frames:
            data = self.frame(host, f)
            ans = self._agents[host].command(data.hex())
            if not ans.startswith("ok"):
                raise LabError(f"agent {host}: {ans}")

    def mapped_key(self, proto: str, src: str, sport: int, dst: str | None = None,
                   dport: int | None = None) -> int:
        """The translated source port (ICMP: id) the kernel gave the connection with this
        original source, read from ``conntrack -L`` (reply tuple's dport / id)."""
        args = ["-L", "-p", proto, "--orig-src", src]
        if dst:
            args += ["--orig-dst", dst]
        out = self.conntrack(*args, check=False)
        for line in out.splitlines():
            keys = re.findall(r"(sport|dport|id|type)=(\d+)", line)
            if proto == "icmp":
                ids = [int(v) for k, v in keys if k == "id"]
                if len(ids) >= 2 and ids[0] == sport:
                    return ids[1]
            else:
                sp = [int(v) for k, v in keys if k == "sport"]
                dp = [int(v) for k, v in keys if k == "dport"]
                if len(sp) >= 2 and sp[0] == sport and (dport is None or dp[0] == dport):
                    return dp[1]
        raise LabError(f"no {proto} entry from {src}:{sport} in\n{out}")

    # -- recording ------------------------------------------------------------------------

    def flush(self) -> None:
        self.conntrack("-F", check=False)

    def stats(self) -> dict[str, int]:
        return parse_stats(self.conntrack("-S"))

    def start_recording(self, name: str) -> None:
        if self._rec is not None:
            raise LabError("a recording is already running")
        d = self.workdir / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        rec: dict[str, Any] = {"name": name, "dir": d, "procs": [], "pcaps": {}, "log": []}
        self._rec = rec
        # tcpdumps
        for iface in ("r-priv", "r-pub"):
            for direction in ("in", "out"):
                path = d / f"{iface}-{direction}.pcap"
                err = d / f"tcpdump-{iface}-{direction}.err"
                p = self._spawn("rtr", ["tcpdump", "-i", iface, "-Q", direction, "-U",
                                        "--immediate-mode", "-s", "0", "-n", "-Z", "root",
                                        "-w", str(path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(err, "wb"))
                rec["procs"].append(p)
                rec["pcaps"][(iface, direction)] = path
                rec.setdefault("tcpdump_err", []).append((p, err))
        ev_out, ev_err = d / "events.txt", d / "events.err"
        p = self._spawn("rtr", ["conntrack", "-E", "-o", "timestamp"],
                        stdin=subprocess.DEVNULL, stdout=open(ev_out, "wb"),
                        stderr=open(ev_err, "wb"))
        rec["procs"].append(p)
        rec["events_proc"], rec["events_out"], rec["events_err"] = p, ev_out, ev_err
        listeners = [p]
        if self.helpers:
            exp_out, exp_err = d / "expect-events.txt", d / "expect-events.err"
            p = self._spawn("rtr", ["conntrack", "-E", "expect", "-o", "timestamp"],
                            stdin=subprocess.DEVNULL, stdout=open(exp_out, "wb"),
                            stderr=open(exp_err, "wb"))
            rec["procs"].append(p)
            rec["expect_out"], rec["expect_err"] = exp_out, exp_err
            listeners.append(p)
        # Wait until every recorder listens.
        deadline = time.monotonic() + 10.0
        pending = list(rec["tcpdump_err"])
        while pending:
            pending = [(p, e) for p, e in pending if b"listening on" not in e.read_bytes()]
            for p, e in pending:
                if p.poll() is not None:
                    raise LabError(f"tcpdump exited: {e.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise LabError("tcpdump did not start listening")
            if pending:
                time.sleep(0.01)
        for p in listeners:
            while not self._netlink_listening(p.pid):
                if p.poll() is not None:
                    raise LabError(f"{' '.join(p.args[4:])} exited (status {p.returncode})")
                if time.monotonic() > deadline:
                    raise LabError(f"{' '.join(p.args[4:])} did not start listening")
                time.sleep(0.01)
        rec["stats_before"] = self.stats()
        rec["counters_before"] = self.rule_counters()
        rec["started_at"] = time.time()

    def rule_counters(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        """(table, chain, index) -> (packets, bytes) of every nat, filter and raw rule, as the
        kernel counts them: ``iptables-save -c``, or ``nft list ruleset`` for an nft rule
        set (its rules with a ``counter``; the nft form of an iptables rule set names its
        tables nat and filter and its chains as iptables does, so the keys agree)."""
        out: dict[tuple[str, str, int], tuple[int, int]] = {}
        if is_nft(self.rules_text):
            table = chain = None
            idx = 0
            for line in self.exec("rtr", "nft", "list", "ruleset").stdout.splitlines():
                words = line.split()
                if words[:1] == ["table"]:
                    table = words[2]
                elif words[:1] == ["chain"]:
                    chain, idx = words[1], 0
                elif table in ("nat", "filter", "raw") and (m := re.search(
                        r"counter packets (\d+) bytes (\d+)", line)):
                    out[(table, chain, idx)] = (int(m.group(1)), int(m.group(2)))
                    idx += 1
            return out
        for table in ("nat", "filter", "raw"):
            idx_of: dict[str, int] = {}
            text = self.exec("rtr", "iptables-save", "-c", "-t", table, check=False).stdout
            for m in re.finditer(r"(?m)^\[(\d+):(\d+)\] -A (\S+)", text):
                i = idx_of[m.group(3)] = idx_of.get(m.group(3), -1) + 1
                out[(table, m.group(3), i)] = (int(m.group(1)), int(m.group(2)))
        return out

    @staticmethod
    def _netlink_listening(pid: int) -> bool:
        """True once process ``pid`` has a NETLINK_NETFILTER socket subscribed to groups."""
        try:
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            with open(f"/proc/{pid}/net/netlink") as fh:
                next(fh)
                for line in fh:
                    f = line.split()
                    # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
                    if len(f) >= 10 and f[1] == "12" and int(f[3], 16) != 0 and f[9] in inodes:
                        return True
        except (OSError, StopIteration, ValueError):
            return False
        return False

    def log(self, text: str) -> None:
        if self._rec is not None:
            self._rec["log"].append((time.time(), text))

    def stop_recording(self, settle: float = 0.25) -> Recording:
        rec = self._rec
        if rec is None:
            raise LabError("no recording running")
        try:
            time.sleep(settle)                      # let the last packets through
            listed_at = time.time()
            table_out = self.conntrack("-L")
            expect_out = self.conntrack("-L", "expect") if self.helpers else None
            stats_after = self.stats()
            counters_after = self.rule_counters()
            time.sleep(0.2)                         # events of the listing (reaped entries)
        finally:
            self._rec = None
            died = [p for p in rec["procs"] if p.poll() is not None]
            for p in rec["procs"]:
                self._stop_proc(p, signal.SIGINT)
        problems = [f"recorder exited early: {' '.join(map(str, p.args[4:]))} "
                    f"(status {p.returncode})" for p in died]
        events = [line for line in rec["events_out"].read_text(errors="replace").splitlines()
                  if line.strip() and "flow events have been shown" not in line]
        err = rec["events_err"].read_text(errors="replace")
        m = re.search(r"(\d+) flow events have been shown", err)
        if not m or int(m.group(1)) != len(events):
            problems.append(f"conntrack -E: {len(events)} lines read but it said: {err.strip()!r}")
        if "ENOBUFS" in err:        # its socket overflowed: events were lost
            problems.append("conntrack -E lost events (ENOBUFS): it could not read fast enough")
        for p, errfile in rec["tcpdump_err"]:
            m = re.search(r"(\d+) packets? dropped by kernel", errfile.read_text(errors="replace"))
            if m and int(m.group(1)):
                problems.append(f"tcpdump {' '.join(map(str, p.args[4:8]))}: "
                                f"{m.group(1)} packets dropped by kernel")
        table = [line for line in table_out.splitlines()
                 if line.strip() and "flow entries have been shown" not in line]
        expect_events = expect_table = None
        if expect_out is not None:
            expect_table = [line for line in expect_out.splitlines() if line.strip()]
            expect_events = [line for line in rec["expect_out"].read_text(
                errors="replace").splitlines() if line.strip()]
            err = rec["expect_err"].read_text(errors="replace")
            m = re.search(r"(\d+) expectation events have been shown", err)
            if not m or int(m.group(1)) != len(expect_events):
                problems.append(f"conntrack -E expect: {len(expect_events)} lines read but it "
                                f"said: {err.strip()!r}")
        stats = {k: stats_after.get(k, 0) - rec["stats_before"].get(k, 0)
                 for k in set(stats_after) | set(rec["stats_before"])}
        before = rec["counters_before"]
        counters = {k: (n - before.get(k, (0, 0))[0], b - before.get(k, (0, 0))[1])
                    for k, (n, b) in counters_after.items()}
        return Recording(name=rec["name"], pcaps=dict(rec["pcaps"]), events=events, table=table,
                         listed_at=listed_at, stats=stats, stats_total=stats_after,
                         rules_text=self.rules_text, sysctls=dict(self.sysctls),
                         started_at=rec["started_at"], workdir=rec["dir"], log=rec["log"],
                         problems=problems, rule_counters=counters,
                         expect_events=expect_events, expect_table=expect_table)

    def _stop_proc(self, p: subprocess.Popen, sig: int = signal.SIGTERM,
                   timeout: float = 3.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        if p in self._procs:
            self._procs.remove(p)

    # -- scenarios ------------------------------------------------------------------------

    def run_steps(self, steps: Iterable[Step], gap: float = 0.03) -> None:
        for step in steps:
            if isinstance(step, Send):
                pkt = step.packet(self) if callable(step.packet) else step.packet
                self.log(f"send {step.host}: {step.note}")
                self.send(step.host, pkt)
                if gap:
                    time.sleep(gap)
            elif isinstance(step, Sleep):
                self.log(f"sleep {step.seconds}: {step.note}")
                time.sleep(step.seconds)
            elif isinstance(step, Conntrack):
                self.log(f"conntrack {' '.join(step.args)}")
                self.conntrack(*step.args, check=False)
            else:
                raise TypeError(f"unknown step {step!r}")

    def run_scenario(self, scenario: Scenario) -> Recording:
        """Flush, set the scenario's sysctls, record while running its steps."""
        if scenario.rules != self.rules_text:
            raise LabError(f"scenario {scenario.name} needs other rules than this lab's")
        self.set_sysctls(scenario.sysctls)
        self.flush()
        listener = self.start_listeners(scenario.listen) if scenario.listen else None
        try:
            self.start_recording(scenario.name)
            try:
                self.run_steps(scenario.steps, gap=scenario.gap)
            except BaseException:
                if self._rec is not None:
                    self.stop_recording(settle=0)
                raise
            rec = self.stop_recording()
        finally:
            if listener is not None:
                self._stop_proc(listener)
        rec.listen = tuple(scenario.listen)
        return rec

    def start_listeners(self, specs: Iterable[str]) -> subprocess.Popen:
        """Open ``PROTO:PORT`` sockets in the router namespace (TCP ones listen); the
        process holds them until stopped (:meth:`_stop_proc`)."""
        p = self._spawn("rtr", [sys.executable, "-c", _LISTENER, *specs], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = _LineReader(p.stdout.fileno()).readline(10.0)
        if line != "ready":
            self._stop_proc(p)
            raise LabError(f"router listeners {' '.join(specs)} did not start: "
                           f"{p.stderr.read().decode(errors='replace').strip() or line!r}")
        return p

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        old = None
        if threading.current_thread() is threading.main_thread():
            try:
                old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish teardown first
            except ValueError:
                old = None
        try:
            for agent in list(self._agents.values()):
                try:
                    agent.proc.stdin.close()
                except OSError:
                    pass
            for p in list(self._procs):
                try:
                    self._stop_proc(p, signal.SIGTERM, timeout=2.0)
                except Exception:      # noqa: BLE001 -- keep tearing down
                    pass
            for p in list(self._procs):
                try:
                    p.kill()
                except OSError:
                    pass
            self._agents.clear()
            self._rec = None
            existing = set(list_netns())
            for name in reversed(self._ns_created):
                if name in existing:
                    kill_netns_pids(name)
                    _run(["ip", "netns", "del", name], check=False)
            # Anything with our prefix that slipped through (e.g. created before a crash).
            for name in list_netns():
                if name.startswith(self.prefix):
                    kill_netns_pids(name)
                    _run(["ip", "netns", "del", name], check=False)
            if self._own_workdir and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            with _live_lock:
                _live_labs.discard(self)
            _unhook_sigterm()
            if old is not None:
                signal.signal(signal.SIGINT, old)


# The router's open ports (Scenario.listen): bound on all addresses, held until killed.
_LISTENER = """
import socket, sys
held = []
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen(8)
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


# ----------------------------------------------------------------------------------------
# Checking a recording against a scenario's expectations.

def check_expectations(expect: Expect, rec: Recording) -> list[str]:
    """Problems found comparing the kernel's recording with ``expect`` (empty = all good)."""
    problems: list[str] = [f"recording: {p}" for p in rec.problems]
    events = rec.events_stripped()
    i = 0
    for pat in expect.events:
        rx = re.compile(pat)
        while i < len(events) and not rx.search(events[i]):
            i += 1
        if i == len(events):
            problems.append(f"no event (in order) matching {pat!r}")
            break
        i += 1
    for pat in expect.no_events:
        hits = [e for e in events if re.search(pat, e)]
        if hits:
            problems.append(f"event matching {pat!r} not expected: {hits[0]}")
    for pat in expect.table:
        if not any(re.search(pat, line) for line in rec.table):
            problems.append(f"no table line matching {pat!r}")
    if expect.table_count is not None and len(rec.table) != expect.table_count:
        problems.append(f"table has {len(rec.table)} entries, expected {expect.table_count}")
    for key, value in expect.stats.items():
        if rec.stats.get(key) != value:
            problems.append(f"stats {key}={rec.stats.get(key)}, expected {value}")
    summaries: dict[str, list[str]] = {}
    for iface, pat in (*expect.egress, *expect.no_egress):
        if iface not in summaries:
            summaries[iface] = rec.summaries(iface, "out")
    for iface, pat in expect.egress:
        if not any(re.search(pat, s) for s in summaries[iface]):
            problems.append(f"nothing left {iface} matching {pat!r}")
    for iface, pat in expect.no_egress:
        hits = [s for s in summaries[iface] if re.search(pat, s)]
        if hits:
            problems.append(f"{iface} sent {hits[0]!r}, matching {pat!r}")
    for iface in ("r-priv", "r-pub"):
        for direction in ("in", "out"):
            for s in rec.summaries(iface, direction):
                if "badsum" in s:
                    problems.append(f"bad checksum captured on {iface} {direction}: {s}")
    for check in expect.checks:
        try:
            check(rec)
        except AssertionError as exc:
            problems.append(f"check {check.__name__} failed: {exc}")
    return problems
