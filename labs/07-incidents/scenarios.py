"""Lab 07's incidents: production conntrack faults on topologies/incidents.py, the fixes a
student submits as data, and how the grader checks them -- on recorded traffic (the
engine) and in the live lab (the kernel forwards, as root, through the lab service).

An incident is a story in three acts, the same live and offline:

1. the node r runs healthy (``rules/healthy.rules``) and traffic flows;
2. the incident happens (``scenarios/NAME.rules`` replace r's rules, ``scenarios/NAME.toml``
   ``[break]`` sets sysctls and takes hosts down) -- conntrack's table is *not* flushed,
   which is the point of most incidents;
3. the student's fix is applied (``NAME.toml``: sysctls and ``[[delete]]`` entries, which
   the grader turns into ``conntrack -D``; ``NAME.rules``: r's rules, in iptables-save or
   nft syntax, as ``scenarios/NAME.nft`` writes them), and the traffic
   after it must show the fix worked.

Nothing a student writes is executed (the mechanism, shared with lab 06, is
nattrack.exercises.scenarios): rules are parsed by nattrack's parser first and loaded with
``iptables-restore`` or ``nft -f``; every other knob is checked and applied as an argv.

Command line (the lab's Makefile uses it)::

    python scenarios.py list
    sudo python scenarios.py break NAME          # the running lab: acts 1 and 2
    sudo python scenarios.py fix NAME [--dir D]  # acts 1-3 with D/NAME.* (default student/)
    python scenarios.py replay NAME [--dir D]    # the recorded traffic through the engine
    (--syntax nft: the incident's rules from scenarios/NAME.nft, the nft variant)
"""
from __future__ import annotations

import ipaddress
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nattrack.exercises.scenarios import (KnobError, View, check_diagnosis, check_keys, check_rules,
                                     check_sysctls, command_line, flush_tables, frames,
                                     kernel_stat, lab_client, load_rules_live, load_toml, recorded,
                                     python_mode, require_root, run, run_command, scenario_files,
                                     sent_view, set_sysctls_live, submission_texts, table_list,
                                     udp_ask)

LAB = Path(__file__).resolve().parent
SCENARIOS = ("stale-udp", "table-full", "new-rule", "invalid-rst", "snat-race", "dns-race",
             "ftp-helper")
LIVE = ("stale-udp", "new-rule", "invalid-rst", "snat-race", "ftp-helper", "dns-race",
        "table-full")
# The kernel's nf_conntrack_max is one number for the whole machine, read-only inside a
# network namespace: table-full is staged with nattrack's router forwarding (python mode),
# whose table has a limit of its own.  Every other incident: kernel mode (lab.toml).
LIVE_MODES = {"table-full": "python"}

# topologies/incidents.py, as far as the knobs are concerned.
ROUTER = "r"
ROUTER_IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-svc": "10.1.0.1/24", "ntr-wan": "203.0.113.1/24"}
LAN, SVC, WAN = "ntr-lan", "ntr-svc", "ntr-wan"
PUBLIC = "203.0.113.1"
HOSTS = {"h1": ("nth1-eth0", "10.0.0.10"), "h2": ("nth2-eth0", "10.0.0.11"),
         "be1": ("ntbe1-eth0", "10.1.0.11"), "be2": ("ntbe2-eth0", "10.1.0.12"),
         "srv": ("ntsrv-eth0", "203.0.113.10")}
GATEWAY = {"h1": "10.0.0.1", "h2": "10.0.0.1", "be1": "10.1.0.1", "be2": "10.1.0.1"}
PRIVATE = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("10.1.0.0/24"))
PROTOS = {"udp": 17, "tcp": 6}
TABLES = ("raw", "nat", "filter")      # raw: -j CT --helper ftp (ftp-helper)


@dataclass
class Config:
    """Knobs: r's rules and sysctls, hosts taken down, conntrack entries to delete."""
    rules: str = ""
    sysctl: dict[str, int] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)
    delete: list[dict] = field(default_factory=list)
    diagnosis: str = ""


# --- reading and checking knobs -------------------------------------------------------------

def _check_delete(item, where: str) -> dict:
    """One ``[[delete]]`` table: the original-direction tuple ``conntrack -D`` selects by."""
    if not isinstance(item, dict) or item.get("proto") not in PROTOS:
        raise KnobError(f"{where}: delete: expected {{proto = \"udp\", dst = \"203.0.113.1\", "
                        f"dport = 53}} (proto udp or tcp; src, dst, sport, dport optional)")
    unknown = set(item) - {"proto", "src", "dst", "sport", "dport"}
    if unknown:
        raise KnobError(f"{where}: delete: unknown key {sorted(unknown)[0]!r} (proto, src, "
                        f"dst, sport, dport)")
    for key in ("src", "dst"):
        if key in item:
            try:
                ipaddress.IPv4Address(item[key])
            except (ValueError, TypeError):
                raise KnobError(f"{where}: delete {key} = {item[key]!r}: expected an IPv4 "
                                f"address") from None
    for key in ("sport", "dport"):
        value = item.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise KnobError(f"{where}: delete {key} = {item[key]!r}: expected a port 1-65535")
    return dict(item)


def parse_knobs(data: dict, where: str) -> Config:
    check_keys(data, where, ("sysctl", "delete"), ("down", "title", "symptom", "try", "break",
                                                   "incident", "break_at", "fix_at"))
    cfg = Config(sysctl=check_sysctls(data, where, "node"),
                 delete=[_check_delete(d, where) for d in table_list(data, "delete")],
                 diagnosis=check_diagnosis(data, where))
    for host in data.get("down") or []:
        if host not in HOSTS:
            raise KnobError(f"{where}: down {host!r}: one of {', '.join(HOSTS)}")
        cfg.down.append(host)
    return cfg


def healthy() -> str:
    return (LAB / "rules" / "healthy.rules").read_text()


def scenario(name: str, syntax: str = "iptables") -> tuple[Config, dict]:
    """(the incident's knobs, its description) of incident NAME; its rules from
    scenarios/NAME.rules, or NAME.nft (the same rules in nft syntax: the nft variant)."""
    meta, rules, where = scenario_files(LAB, name, SCENARIOS, "incident", syntax)
    cfg = parse_knobs(meta.get("break", {}), f"scenarios/{name}.toml [break]")
    cfg.rules = check_rules(rules, where, TABLES)
    return cfg, meta


def fix_from_texts(name: str, toml_text: str | None, rules_text: str | None) -> Config:
    """The student's fix for NAME from the texts of NAME.toml and NAME.rules."""
    cfg = Config()
    if toml_text is not None:
        cfg = parse_knobs(load_toml(toml_text, f"{name}.toml"), f"{name}.toml")
        if cfg.down:
            raise KnobError(f"{name}.toml: down: a fix cannot take hosts down")
    if rules_text is not None and rules_text.strip():
        cfg.rules = check_rules(rules_text, f"{name}.rules", TABLES)
    return cfg


def fix_from_dir(name: str, folder: Path) -> Config:
    return fix_from_texts(name, *submission_texts(folder, name))


def _matches(item: dict, orig) -> bool:
    """Does an entry's original tuple match a ``[[delete]]`` item (conntrack -D's filter)?"""
    from nattrack.conntrack.tuple import ip2int
    return (orig.proto == PROTOS[item["proto"]]
            and ("src" not in item or orig.src == ip2int(item["src"]))
            and ("dst" not in item or orig.dst == ip2int(item["dst"]))
            and ("sport" not in item or orig.sport == item["sport"])
            and ("dport" not in item or orig.dport == item["dport"]))


# --- the recorded traffic through the engine --------------------------------------------------

def capture_path(name: str) -> Path:
    return LAB / "data" / f"{name}.pcapng"


@dataclass
class Outcome:
    """What the node did with the incident's recorded traffic (times from the capture's start)."""
    sent: list = field(default_factory=list)        # (oif, View) of everything r sent
    dropped: list = field(default_factory=list)     # (t, summary, reason)
    log: list = field(default_factory=list)         # the engine's kernel log lines
    stats: dict = field(default_factory=dict)       # conntrack -S totals
    races: list = field(default_factory=list)       # what each CPU's packet did at confirm

    def out(self, iface: str, after: float = 0.0) -> list:
        return [p for oif, p in self.sent if oif == iface and p.ts >= after]


def replay(name: str, fix: Config | None, capture: Path | None = None,
           syntax: str = "iptables") -> Outcome:
    """The incident's recorded traffic (frames as they reach r) through nattrack's engine:
    healthy until ``break_at``, broken from then on, with ``fix`` applied at ``fix_at``
    (seconds from the capture's first frame).  Frames recorded in the same microsecond
    run on two CPUs of r at once (nattrack.conntrack.cpus.race), confirmed in capture order."""
    from nattrack.conntrack.cpus import race
    from nattrack.netfilter.rulesfile import parse_rules
    from nattrack.ipv4.stack import Router
    from nattrack.packet.ipv4 import Packet

    broken, meta = scenario(name, syntax)
    acts = [(float(meta.get("break_at", 0)), broken, f"scenarios/{name}.rules")]
    if fix is not None:
        acts.append((float(meta.get("fix_at", 0)), fix, f"{name}.rules"))
    clock_now = [0.0]
    router = Router(dict(ROUTER_IFACES), {}, parse_rules(healthy(), "rules/healthy.rules"),
                    {}, lambda: clock_now[0], seed=7)
    down: set[str] = set()
    asked: dict = {}              # (client, its port, query type) -> (backend, port) r chose
    refused = False               # ftp-helper: a PORT left r that srv's server refuses
    out = Outcome()
    got = frames(capture or capture_path(name))
    t0 = got[0][0].ts if got else 0.0
    at_once: dict[float, list] = {}                 # the same microsecond: CPUs in parallel
    for frame, off in got:
        at_once.setdefault(round(frame.ts, 6), []).append((frame, off))
    for ts, group in at_once.items():
        rel = ts - t0
        while acts and rel >= acts[0][0]:
            _at, cfg, where = acts.pop(0)
            _apply_engine(router, cfg, where)
            down.update(cfg.down)
        router.ct.run_gc_until(ts, lambda t: clock_now.__setitem__(0, t))
        clock_now[0] = ts
        bufs = [bytearray(f.data) for f, _off in group]
        if name == "dns-race":
            for buf, (f, off) in zip(bufs, group):
                if f.iface == SVC:
                    _answer_from_queried(buf, off, asked)
        pkts = [Packet.parse(buf, off, iif=f.iface, ts=f.ts) for buf, (f, off) in zip(bufs, group)]
        pkts = [p for p in pkts if p is not None
                and not any(str(ipaddress.ip_address(p.src)) == HOSTS[h][1] for h in down)]
        summaries = [p.summary() for p in pkts]
        if len(pkts) > 1:
            lanes = race(router, pkts)
            out.races += [lane.describe() for lane in lanes]
            verdicts = [lane.verdict for lane in lanes]
        else:
            verdicts = [router.receive(p) for p in pkts]
        for summary, v in zip(summaries, verdicts):
            if v is None:
                continue
            if v.dropped:
                out.dropped.append((rel, summary, v.dropped))
            for s in v.sent:
                view = sent_view(s.data, rel)
                out.sent.append((s.oif, view))
                if s.oif == SVC and view.proto == 17:       # where r sent this query
                    asked[(view.src, view.sport, view.word.rstrip("?"))] = (view.dst, view.dport)
                if s.oif == WAN and view.word == "PORT" and not _port_accepted(view.data):
                    refused = True
        if refused:         # srv's server answered 500 and the client gave up: no more
            break           # of the recorded (working) conversation happens
    out.log = list(router.ct.log)
    out.stats = dict(router.ct.stats)
    return out


def _port_accepted(command: str) -> bool:
    """Would srv's vsftpd accept this PORT command from the node's public address?  It
    accepts only the control connection's own peer address (port_promiscuous=NO)."""
    return command.startswith("PORT " + PUBLIC.replace(".", ",") + ",")


def _answer_from_queried(buf: bytearray, off: int, asked: dict) -> None:
    """dns-race: a recorded answer comes from the resolver instance r sent its query to
    (the recording's answers came from one instance; which one gets a query is r's random
    DNAT choice, different with another rule set).  Rewrites the frame's UDP source port
    in place; its UDP checksum becomes 0 (none, as IPv4 allows)."""
    from nattrack.packet.ipv4 import Packet
    pkt = Packet.parse(bytearray(buf), off)
    if pkt is None or pkt.proto != 17:
        return
    view = View(pkt)
    backend = asked.get((view.dst, view.dport, view.word))
    if backend is not None and backend[0] == view.src:
        buf[pkt.l4:pkt.l4 + 2] = backend[1].to_bytes(2, "big")
        buf[pkt.l4 + 6:pkt.l4 + 8] = b"\0\0"


def _apply_engine(router, cfg: Config, where: str) -> None:
    """What apply_live does to the kernel, done to the engine: rules, sysctls, deletions."""
    from nattrack.netfilter.rulesfile import parse_rules
    if cfg.rules:
        router.ruleset = parse_rules(cfg.rules, where)
    for key, value in cfg.sysctl.items():
        router.ct.sysctl.set(key, value)
    for item in cfg.delete:
        for ct in [c for c in router.ct.conns() if _matches(item, c.orig)]:
            router.ct.kill(ct)


# --- what a fixed node does with the recorded traffic ------------------------------------------

def check_offline(name: str, o: Outcome) -> list[str]:
    """What is still wrong after the fix, one sentence each (empty: fixed)."""
    _cfg, meta = scenario(name)
    fix_at = float(meta.get("fix_at", 0))
    rec = [(i, p) for i, p in recorded(capture_path(name)) if p.ts >= fix_at]
    problems = []
    leaked = [p for p in o.out(WAN) if any(p.src in net for net in PRIVATE)]
    if leaked:
        problems.append(f"packets leave ntr-wan with a private source address ({leaked[0]}"
                        + (f" and {len(leaked) - 1} more" if len(leaked) > 1 else "")
                        + "): the client answers them with RST")
    if name == "stale-udp":
        asked = [p for i, p in rec if i == WAN and p.dport == 53]
        to_be2 = [p for p in o.out(SVC, fix_at) if str(p.dst) == HOSTS["be2"][1]]
        to_be1 = [p for p in o.out(SVC, fix_at) if str(p.dst) == HOSTS["be1"][1]]
        if len(to_be2) < len(asked):
            problems.append(f"srv's {len(asked)} queries after the fix should reach the new "
                            f"backend be2; {len(to_be2)} did, {len(to_be1)} still went to "
                            f"be1, which is gone")
    elif name == "new-rule":
        h2 = [p for p in o.out(WAN, fix_at) if p.sport == 6000]
        h1 = [p for p in o.out(WAN, fix_at) if p.sport == 6001]
        if h2:
            problems.append(f"h2's flow still crosses r after the fix ({len(h2)} packets, "
                            f"e.g. {h2[0]}): the new DROP rule does not reach it yet")
        asked = [p for i, p in rec if i == LAN and str(p.src) == HOSTS["h1"][1]]
        if len(h1) < len(asked):
            problems.append(f"h1's {len(asked)} packets after the fix should still reach "
                            f"srv; {len(h1)} did")
    elif name == "table-full":
        syn = [p for p in o.out(WAN) if p.proto == 6 and p.sport == 45000 and p.tcpflags & 0x02]
        back = [p for p in o.out(LAN) if p.proto == 6 and p.dport == 45000]
        full = sum(1 for line in o.log if "table full" in line)
        if not syn:
            problems.append(f"h1's new connection (port 45000) never leaves r: "
                            f"\"nf_conntrack: table full, dropping packet\" {full} times")
        elif not back:
            problems.append("srv's answers to h1's new connection never reach h1")
    elif name == "invalid-rst":
        answers = [p for i, p in rec if i == SVC and str(p.src) == HOSTS["be1"][1]
                   and p.tcpflags & 0x01]
        back = [p for p in o.out(WAN) if str(p.src) == PUBLIC and p.sport == 80
                and p.tcpflags & 0x01]
        if len(back) < len(answers):
            problems.append("be1's FIN never reaches srv as 203.0.113.1:80")
    elif name == "dns-race":
        problems += _slow_lookups(rec, o)
    elif name == "ftp-helper":
        port = [p for p in o.out(WAN) if p.word == "PORT"]
        if port and not _port_accepted(port[0].data):
            problems.append(f"h1's '{port[0].data}' left r unchanged: srv's server accepts a "
                            f"PORT only for the control connection's address {PUBLIC} (500 "
                            f"Illegal PORT command)")
        got = "".join(p.data for p in o.out(LAN) if p.sport == 20 and p.proto == 6)
        if "hello from srv" not in got:
            problems.append("srv's data connection (from port 20 to 203.0.113.1:40000) never "
                            "reaches h1: the download fails")
    elif name == "snat-race":
        asked = [p for i, p in rec if i == LAN]
        left = [p for p in o.out(WAN) if str(p.src) == PUBLIC and p.dport == 7]
        if len(left) < len(asked):
            problems.append(f"{len(asked) - len(left)} of the {len(asked)} first datagrams "
                            f"never leave r (conntrack -S: insert_failed="
                            f"{o.stats.get('insert_failed', 0)}, drop={o.stats.get('drop', 0)})")
    return problems


LOOKUP_BUDGET = 2.0        # seconds: a lookup slower than this is the incident's symptom


def _slow_lookups(rec: list, o: Outcome) -> list[str]:
    """dns-race: each lookup (h1's A and AAAA queries from one port) must get both answers,
    from the service's address, within LOOKUP_BUDGET of its first query."""
    problems = []
    starts: dict[int, float] = {}
    for iface, p in rec:
        if iface == LAN and p.dport == 53:
            starts.setdefault(p.sport, p.ts)
    for port, t0 in starts.items():
        got: dict[str, float] = {}          # the first answer of each type
        for p in o.out(LAN):
            if p.dport == port and str(p.src) == PUBLIC and p.sport == 53:
                got.setdefault(p.word, p.ts - t0)
        slow = {q: got.get(q) for q in ("A", "AAAA") if got.get(q, 1e9) > LOOKUP_BUDGET}
        if slow:
            problems.append(f"h1's lookup from port {port} took "
                            + " and ".join(f"{q}: {'no answer' if t is None else f'{t:.1f} s'}"
                                           for q, t in slow.items())
                            + f" (conntrack -S: clash_resolve={o.stats.get('clash_resolve', 0)}, "
                              f"insert_failed={o.stats.get('insert_failed', 0)}; "
                              f"{len(o.dropped)} packets dropped)")
    return problems


# --- the live lab ---------------------------------------------------------------------------

_touched: set[str] = set()


def apply_live(lab, cfg: Config, fresh: bool = False) -> None:
    """Put configuration ``cfg`` on the running lab (a LabClient whose caller is root):
    r's rules and sysctls, hosts down, entries deleted.  Only ``fresh`` (act 1) brings
    every host up and empties the kernel's table: an incident keeps its entries."""
    require_root(lab, ROUTER, "staging an incident")
    if fresh:
        stop_fillers(lab)
        for node, (iface, _addr) in HOSTS.items():
            run(lab, node, ["ip", "link", "set", iface, "up"])
            if node in GATEWAY:         # a link taken down lost its default route
                run(lab, node, ["ip", "route", "replace", "default", "via", GATEWAY[node]])
    if cfg.rules:
        from nattrack.router.shadow import FORCE_TRACKING
        load_rules_live(lab, ROUTER, cfg.rules, FORCE_TRACKING)
    # act 1: what an earlier incident changed goes back to the kernel's default
    set_sysctls_live(lab, ROUTER, cfg.sysctl, _touched, restore=fresh)
    for host in cfg.down:
        run(lab, host, ["ip", "link", "set", HOSTS[host][0], "down"])
    python = bool(cfg.delete) and python_mode(lab)
    for item in cfg.delete:
        if python:                                # nattrack's table is the one that counts
            lab.delete(dict(item), router=ROUTER)
            continue
        argv = ["conntrack", "-D", "-p", item["proto"]]
        for key, opt in (("src", "--orig-src"), ("dst", "--orig-dst"),
                         ("sport", "--orig-port-src"), ("dport", "--orig-port-dst")):
            if key in item:
                argv += [opt, str(item[key])]
        run(lab, ROUTER, argv, ok=(0, 1))         # 1: no entry matched
    if fresh:
        flush_tables(lab)


# --- racing two first datagrams on two CPUs of r (snat-race) ------------------------------

# The sender, run in h1 and in h2 by `taskset -c CPU python -c`: in every round both wait at
# a barrier (two counters in a shared file), then send one frame each.  A frame sent on a
# veth is processed by r on the sending CPU, so the two run r's hooks at the same time.
# argv: iface role barrier-file frames-file pause
_SENDER = r"""
import mmap, os, socket, struct, sys, time
iface, role, shm, frames = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pause = float(sys.argv[5])
frames = [bytes.fromhex(x) for x in open(frames).read().split()]
m = mmap.mmap(os.open(shm, os.O_RDWR), 16)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
counter = struct.Struct("<Q")
mine, other = 8 * role, 8 * (1 - role)
for r, frame in enumerate(frames, 1):
    counter.pack_into(m, mine, r)
    while counter.unpack_from(m, other)[0] < r:
        pass
    s.send(frame)
    time.sleep(pause)
print("done", flush=True)
"""
RACE_ROUNDS = 150


def _udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int,
               payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP (checksum 0: none, as IPv4 allows)."""
    import struct
    from nattrack.packet.checksum import checksum
    total = 28 + len(payload)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                                ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed))
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    mac = lambda m: bytes.fromhex(m.replace(":", ""))          # noqa: E731
    return (mac(dst_mac) + mac(src_mac) + b"\x08\x00" + bytes(hdr)
            + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def _mac(lab, node: str, iface: str) -> str:
    return run(lab, node, ["cat", f"/sys/class/net/{iface}/address"]).stdout.strip()


def race_live(lab, base: int, rounds: int = RACE_ROUNDS) -> int:
    """h1 and h2 each send ``rounds`` first datagrams to srv's echo service, pairs with the
    same source port (base + round) in the same instant, pinned to two CPUs; returns how
    many r's kernel lost at confirm (conntrack -S insert_failed)."""
    import os
    import shutil
    import tempfile
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise KnobError(f"the race needs two CPUs; this process may use only CPU {cpus}")
    r_mac = _mac(lab, ROUTER, LAN)
    work = Path(tempfile.mkdtemp(prefix="nattrack-lab07-race-"))
    try:
        work.chmod(0o755)
        (work / "barrier").write_bytes(bytes(16))
        for host in ("h1", "h2"):
            iface, addr = HOSTS[host]
            mac = _mac(lab, host, iface)
            frames = [_udp_frame(mac, r_mac, addr, HOSTS["srv"][1], base + i, 7,
                                 f"{host} {base + i}\n".encode()) for i in range(rounds)]
            (work / f"{host}.hex").write_text("\n".join(f.hex() for f in frames) + "\n")
        before = kernel_stat(lab, "insert_failed")
        sessions = [lab.exec_session(host, ["taskset", "-c", str(cpus[role]), sys.executable,
                                            "-c", _SENDER, HOSTS[host][0], str(role),
                                            str(work / "barrier"), str(work / f"{host}.hex"),
                                            "0.002"], timeout=60)
                    for role, host in enumerate(("h1", "h2"))]
        try:
            for host, session in zip(("h1", "h2"), sessions):
                out = b"".join(data for stream, data in session if stream == "stdout")
                if b"done" not in out:
                    raise KnobError(f"the race's sender in {host} failed")
        finally:
            for session in sessions:
                session.close()
        time.sleep(0.3)
        return kernel_stat(lab, "insert_failed") - before
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- a lookup's A and AAAA queries racing on two CPUs of r (dns-race) ---------------------------

# The resolver stand-in, run in be1: one instance on each port of argv[2:] (the service's
# DNAT range).  It answers an A query at once and an AAAA query argv[1] seconds later, as
# a recursive resolver that has the A record cached but asks its upstream for the AAAA.
_RESOLVER = r"""
import selectors, socket, sys, threading
slow, sel = float(sys.argv[1]), selectors.DefaultSelector()
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        query, peer = s.recvfrom(2048)
        qtype, _, name = query.decode(errors="replace").strip().partition(" ")
        if qtype == "A?":
            s.sendto(f"A {name} 192.0.2.80\n".encode(), peer)
        elif qtype == "AAAA?":
            threading.Timer(slow, s.sendto, (f"AAAA {name} 2001:db8::80\n".encode(), peer)).start()
"""

# The lookups' sockets, run in h1: one UDP socket on each port argv[1] .. argv[1]+argv[2]-1
# (the raw senders' source ports) takes the answers.  At the end of stdin it waits up to
# argv[3] seconds more for answers still missing (a busy machine delays them; a lost one
# never comes), then prints, per port, how long after the A answer the AAAA answer came
# ("-": it did not).
_ANSWERS = r"""
import selectors, socket, sys, time
first, count, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sel, got, deadline = selectors.DefaultSelector(), {}, None
for port in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    sel.register(s, selectors.EVENT_READ, port)
sel.register(sys.stdin, selectors.EVENT_READ, None)
print("ready", flush=True)
while deadline is None or (time.monotonic() < deadline and len(got) < 2 * count):
    for key, _ in sel.select(None if deadline is None else 0.1):
        if key.data is not None:
            word = key.fileobj.recv(2048).split(b" ")[0].decode(errors="replace")
            got.setdefault((key.data, word), time.monotonic())
        elif not sys.stdin.readline():
            sel.unregister(sys.stdin)
            deadline = time.monotonic() + grace
for port in range(first, first + count):
    a, aaaa = got.get((port, "A")), got.get((port, "AAAA"))
    late = "-" if a is None or aaaa is None else f"{aaaa - a:.3f}"
    print(port, "-" if a is None else "A", late, flush=True)
"""
DNS_INSTANCES = (5300, 5301)     # the resolver instances of dns-race.rules' DNAT range
AAAA_DELAY = 1.5                 # seconds: past the one second of a losing clash entry
LOOKUPS = 100                    # lookups per batch, ...
LOOKUP_BATCHES = 3               # ... and batches: the budget for showing a loss


@dataclass
class Lookups:
    """h1's lookups in the live lab: which lost an answer, and r's clash_resolve count."""
    count: int = 0
    lost: list = field(default_factory=list)      # (port, what was missing)
    clash_resolve: int = 0


def _ready(session, node: str, what: str) -> None:
    """Wait for ``ready`` on a session's stdout; its error otherwise."""
    out, err = b"", b""
    for stream, data in session:
        out += data if stream == "stdout" else b""
        err += data if stream == "stderr" else b""
        if b"ready" in out:
            return
    last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    raise KnobError(f"{node}: {what} did not start ({last[0]})")


def lookups_live(lab, base: int, rounds: int = LOOKUPS, pause: float = 0.02) -> Lookups:
    """h1 looks a name up ``rounds`` times, each lookup from its own port (base + round):
    its A and AAAA queries leave h1 in the same instant from two senders pinned to two
    CPUs (a frame sent on a veth is processed by r on the sending CPU), as glibc sends
    them from one socket; be1's resolver instances answer the AAAA queries AAAA_DELAY
    late.  Returns which lookups lost an answer."""
    import os
    import shutil
    import tempfile
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise KnobError(f"the race needs two CPUs; this process may use only CPU {cpus}")
    iface, addr = HOSTS["h1"]
    r_mac, mac = _mac(lab, ROUTER, LAN), _mac(lab, "h1", iface)
    work = Path(tempfile.mkdtemp(prefix="nattrack-lab07-dns-"))
    sessions = []
    try:
        work.chmod(0o755)
        (work / "barrier").write_bytes(bytes(16))
        for qtype in ("A", "AAAA"):
            frames = [_udp_frame(mac, r_mac, addr, PUBLIC, base + i, 53,
                                 f"{qtype}? www.example.\n".encode()) for i in range(rounds)]
            (work / f"{qtype}.hex").write_text("\n".join(f.hex() for f in frames) + "\n")
        resolver = lab.exec_session("be1", [sys.executable, "-c", _RESOLVER, str(AAAA_DELAY),
                                            *map(str, DNS_INSTANCES)], timeout=120)
        sessions.append(resolver)
        _ready(resolver, "be1", "the resolver stand-in")
        answers = lab.exec_session("h1", [sys.executable, "-c", _ANSWERS, str(base),
                                          str(rounds), str(AAAA_DELAY + 2)],
                                   stdin=True, timeout=120)
        sessions.append(answers)
        _ready(answers, "h1", "the lookups' sockets")
        before = kernel_stat(lab, "clash_resolve")
        senders = [lab.exec_session("h1", ["taskset", "-c", str(cpus[role]), sys.executable,
                                           "-c", _SENDER, iface, str(role), str(work / "barrier"),
                                           str(work / f"{qtype}.hex"), str(pause)], timeout=60)
                   for role, qtype in enumerate(("A", "AAAA"))]
        sessions += senders
        for qtype, session in zip(("A", "AAAA"), senders):
            if b"done" not in b"".join(data for stream, data in session if stream == "stdout"):
                raise KnobError(f"h1: the sender of the {qtype} queries failed")
        time.sleep(0.3)
        got = Lookups(rounds, clash_resolve=kernel_stat(lab, "clash_resolve") - before)
        answers.close_stdin()
        out = b"".join(data for stream, data in answers if stream == "stdout").decode()
        for line in out.splitlines():
            if len(line.split()) == 3:
                port, a, late = line.split()
                if a == "-" or late == "-":
                    got.lost.append((int(port), "no answer" if a == "-" else "no AAAA answer"))
        return got
    finally:
        for session in sessions:        # the lab service ends a command whose caller left
            session.close()
        shutil.rmtree(work, ignore_errors=True)


def lookups_until_lost(lab, base: int) -> Lookups:
    """Batches of LOOKUPS lookups until one loses an answer, at most LOOKUP_BATCHES (the
    broken rules lost 4 to 36 in a hundred in every batch measured; fixed rules
    lose none however long they run)."""
    total = Lookups()
    for batch in range(LOOKUP_BATCHES):
        got = lookups_live(lab, base + batch * LOOKUPS)
        total.count += got.count
        total.lost += got.lost
        total.clash_resolve += got.clash_resolve
        if total.lost:
            break
    return total


# --- a segment out of the window (invalid-rst) -------------------------------------------------

# srv's connection to the service, held open from a known port while be1 sends into it.
_HOLD = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(5)
s.connect(("203.0.113.1", 80))
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


# A quarter of the sequence space past be1's initial sequence number: beyond the right edge
# of any window srv can offer (at most 65535 << 14, just under 2^30): "SEQ is over upper
# bound", INVALID, whatever the ISN.  A fixed number such as 3,000,000,000 lands *below* the
# window for half the ISNs, where the kernel ignores the segment ("SEQ is under lower
# bound", NFCT_TCP_IGNORE: accepted and un-NATed) unless its ACK is out of range too: about
# one run in four showed no fault.
OUT_OF_WINDOW = 1 << 30


def out_of_window_live(lab) -> tuple[list[str], int]:
    """srv holds a connection to 203.0.113.1:80 (be1:80) from a port of its own; be1 sends
    an ACK with 8 bytes into it, its sequence number a quarter of the sequence space past
    be1's ISN (read from its SYN-ACK), far outside the window (hping3).  Returns (what left
    r towards srv from the backends' network, how many of those segments r received: 0
    means the test itself did not happen)."""
    import random
    port = random.randint(40000, 59999)     # not one a connection of an earlier round holds
    dump = lab.exec_session(ROUTER, ["tcpdump", "-S", "-nn", "-l", "-i", "any",
                                     f"tcp and src port 80 and dst port {port}"], timeout=30)
    hold = None
    out = b""
    try:
        it = iter(dump)
        for stream, data in it:                   # wait until tcpdump listens
            if stream == "stderr" and b"listening on" in data:
                break
        # Held well past the test (closing the session kills it): on a loaded machine hping3
        # may take seconds to start, and a connection gone by then shows no fault at all.
        hold = lab.exec_session("srv", [sys.executable, "-c", _HOLD, "30", str(port)], timeout=40)
        _ready(hold, "srv", "a connection to the service 203.0.113.1:80")
        isn = None
        for stream, data in it:                   # be1's SYN-ACK, as r received it
            out += data if stream == "stdout" else b""
            isn = re.search(rb"Flags \[S\.\], seq (\d+),", out)
            if isn:
                break
        if isn is None:
            raise KnobError("r saw no SYN-ACK from be1:80 for srv's connection")
        seq = (int(isn.group(1)) + OUT_OF_WINDOW) % (1 << 32)
        run(lab, "be1", ["hping3", "-c", "3", "-i", "u200000", "-A", "-d", "8", "-s", "80",
                         "-k", "-p", str(port), "-M", str(seq), "-L", "1", HOSTS["srv"][1]],
            ok=(0, 1))                       # 1: no answer, which is the point
        time.sleep(0.5)
        dump.signal("INT")
        for stream, data in it:
            out += data if stream == "stdout" else b""
    finally:
        dump.close()
        if hold is not None:
            hold.close()
    lines = [line for line in out.decode(errors="replace").splitlines()
             if f" seq {seq}:" in line]
    received = [line for line in lines if f" {SVC} In " in f" {line} "]
    leaked = [line for line in lines if f" {WAN} Out " in f" {line} "
              and f"{HOSTS['be1'][1]}.80 >" in line]
    return leaked, len(received)


# --- a table full of idle connections (table-full) ---------------------------------------------

FILL_MARK = "nattrack-lab07-fill"        # in the fillers' argv: pkill -f finds them
# h1 opens connections to srv's echo service until one gets no answer (the table is full),
# one line echoed on each, so that each entry is ESTABLISHED and ASSURED (early_drop may
# evict only entries that are not); a child of its own session holds them open and idle for
# argv[1] seconds after the script has said how many it opened.
_FILL = r"""
import os, socket, sys, time
hold, host, most = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
socks = []
for _ in range(most):
    try:
        s = socket.create_connection((host, 7), timeout=2)
        s.settimeout(2)
        s.sendall(b"x\n")
        if not s.recv(16):
            break
    except OSError:
        break
    socks.append(s)
if os.fork() == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    time.sleep(hold)
    os._exit(0)
print("ready", len(socks), flush=True)
"""
FILL_MOST = 200                          # more than a table of 32 holds, far less than 65536
FILL_HOLD = 600                          # seconds: `make run` leaves the incident on that long


def stop_fillers(lab) -> None:
    """End h1's idle connections of an earlier table-full, if any (their FINs cross r
    before the caller empties the tables)."""
    if run(lab, "h1", ["pkill", "-f", FILL_MARK], ok=(0, 1)).returncode == 0:
        time.sleep(1)


def fill_live(lab) -> int:
    """h1 fills r's table with idle connections to srv's echo service (kept open
    FILL_HOLD s); how many it opened."""
    res = run(lab, "h1", [sys.executable, "-c", _FILL, str(FILL_HOLD), HOSTS["srv"][1],
                          str(FILL_MOST), FILL_MARK])
    words = res.stdout.split()
    return int(words[1]) if words[:1] == ["ready"] else 0


def new_connection_live(lab) -> str | None:
    """h1 fetches http://srv/ with a new connection (curl, 3 s): None when srv answered,
    else what curl said."""
    res = lab.exec("h1", ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{HOSTS['srv'][1]}/"], timeout=20)
    if res.returncode == 0 and res.stdout.strip() == "200":
        return None
    return (res.stderr.strip().splitlines() or [f"HTTP {res.stdout.strip()}"])[-1]


def table_full_live(lab) -> dict:
    """Act 2 of table-full: h1 fills the table, then tries a new connection.  Returns how
    many idle connections it holds, what its new connection got and r's drop counter."""
    if not python_mode(lab):
        raise KnobError("table-full runs live with nattrack's router forwarding: the "
                        "kernel's nf_conntrack_max is one number for the whole machine. "
                        "Start the lab with `sudo make run INCIDENT=table-full` (python mode)")
    held = fill_live(lab)
    said = new_connection_live(lab)
    return {"fill": (held, said, lab.stats(ROUTER)["stats"].get("drop", 0))}


# --- active FTP from h1 to srv's vsftpd (ftp-helper) ------------------------------------------

FTP_FILE = b"hello from srv\n" * 64


def ftp_get_live(lab) -> tuple[bool, str]:
    """vsftpd on srv (nattrack.lab.ftp.FtpServer, started in srv's namespace), h1 downloads
    data.bin from it in active mode with a PORT command (curl -P - --disable-eprt).
    Returns (whether h1 got the file, the server's reply to the PORT command)."""
    import subprocess
    from nattrack.lab.ftp import FtpServer
    pid = lab.status()["nodes"]["srv"]["pid"]

    def popen(argv, **kw):
        return subprocess.Popen(["mnexec", "-a", str(pid), *argv], start_new_session=True, **kw)

    with FtpServer({"data.bin": FTP_FILE}, popen) as server:
        res = lab.exec("h1", ["curl", "-sS", "-m", "8", "-P", "-", "--disable-eprt",
                              f"ftp://{HOSTS['srv'][1]}/data.bin"], timeout=20)
        said = server.protocol()
    reply = next((said[i + 1] for i, line in enumerate(said[:-1]) if line.startswith("PORT")),
                 "no PORT command arrived")
    return res.returncode == 0 and res.stdout == FTP_FILE.decode(), reply


# Each live incident: the flows (node, server, port, source port) asked in every act.
FLOWS = {"stale-udp": [("srv", PUBLIC, 53, 5353)],
         "new-rule": [("h2", HOSTS["srv"][1], 7, 6000), ("h1", HOSTS["srv"][1], 7, 6001)]}


def _ask_all(lab, name: str) -> dict:
    return {(n, sp): udp_ask(lab, n, s, p, sp) for n, s, p, sp in FLOWS[name]}


def stage_live(lab, name: str, syntax: str = "iptables") -> dict:
    """Acts 1 and 2 in the running lab: healthy traffic, then the incident, the flows still
    running.  Returns what the flows got in the incident (None: no answer; snat-race: how
    many first datagrams r's kernel lost in the racing rounds; dns-race: h1's lookups)."""
    if name in ("snat-race", "invalid-rst", "ftp-helper", "dns-race", "table-full"):
        broken, _meta = scenario(name, syntax)
        apply_live(lab, Config(rules=healthy()), fresh=True)
        apply_live(lab, broken)
        if name == "table-full":
            return table_full_live(lab)
        if name == "invalid-rst":
            return {"leaked": out_of_window_live(lab)[0]}
        if name == "ftp-helper":
            return {"ftp": ftp_get_live(lab)}
        if name == "dns-race":
            return {"lookups": lookups_until_lost(lab, 40000)}
        return {"lost": race_live(lab, 20000)}
    broken, _meta = scenario(name, syntax)
    apply_live(lab, Config(rules=healthy()), fresh=True)
    before = _ask_all(lab, name)
    silent = [f"{n}:{sp}" for (n, sp), got in before.items() if got is None]
    if silent:
        raise KnobError(f"the healthy lab does not answer {', '.join(silent)}: is it the "
                        f"incidents topology in kernel mode?")
    apply_live(lab, broken)
    return _ask_all(lab, name)


def check_live(lab, name: str, fix: Config, syntax: str = "iptables") -> list[str]:
    """All three acts in the running lab; what is still wrong after the fix, one sentence
    each (empty: fixed)."""
    staged = stage_live(lab, name, syntax)
    if name == "table-full":
        try:
            return _table_full_fixed(lab, staged["fill"], fix)
        finally:
            stop_fillers(lab)
    apply_live(lab, fix)
    if name == "ftp-helper":
        got, said = ftp_get_live(lab)
        if not got:
            return ["h1's active FTP download from srv still fails after the fix (srv's "
                    f"server: {said or 'no reply'})"]
        return []
    if name == "dns-race":
        before, after = staged["lookups"], lookups_until_lost(lab, 50000)
        if not before.lost:
            raise KnobError(f"the incident did not happen: none of h1's {before.count} lookups "
                            f"lost an answer with scenarios/dns-race.rules (are r's two CPUs "
                            f"busy with other work?)")
        if after.lost:
            port, missing = after.lost[0]
            return [f"after the fix {len(after.lost)} of h1's {after.count} lookups still "
                    f"lost an answer (port {port}: {missing}; glibc would wait 5 s and ask "
                    f"again; {len(before.lost)} of {before.count} before the fix)"]
        return []
    if name == "snat-race":
        lost = race_live(lab, 30000)
        if lost:
            return [f"after the fix r's kernel still lost {lost} of {RACE_ROUNDS} racing first "
                    f"datagrams (insert_failed; {staged['lost']} before the fix)"]
        return []
    if name == "invalid-rst":
        leaked, received = out_of_window_live(lab)
        if not received:
            return ["be1's out-of-window segment never reached r (hping3 failed?)"]
        if leaked:
            return [f"a segment from the backends' network still leaves r to srv after the fix: "
                    f"{leaked[0]}"]
        return []
    got = _ask_all(lab, name)
    problems = []
    if name == "stale-udp":
        if got[("srv", 5353)] is None:
            entries = lab.kernel_list(proto="udp", dport=53)
            problems.append("srv's queries from port 5353 to 203.0.113.1:53 still get no "
                            "answer after the fix (r's kernel: "
                            + ("; ".join(entries) or "no entry") + ")")
    elif name == "new-rule":
        if got[("h2", 6000)] is not None:
            problems.append("h2's UDP flow (port 6000) to srv still gets answers after the "
                            "fix: the new DROP rule does not reach it")
        if got[("h1", 6001)] is None:
            problems.append("h1's UDP flow (port 6001) to srv no longer gets answers")
    return problems


def _table_full_fixed(lab, fill: tuple[int, str | None, int], fix: Config) -> list[str]:
    """Act 3 of table-full, the idle connections still open: the fix, then a new one."""
    held, said, drops = fill
    if said is None:
        raise KnobError(f"the incident did not happen: h1's new connection got through "
                        f"beside its {held} idle ones (is nf_conntrack_max 32?)")
    apply_live(lab, fix)
    said = new_connection_live(lab)
    if said is None:
        return []
    stats = lab.stats(ROUTER)
    why = ("; a new timeout applies to an entry from its next packet on, and idle entries "
           "send none" if any("timeout" in key for key in fix.sysctl) else "")
    return [f"after the fix h1's new connection to srv:80 still gets no answer ({said}) "
            f"while its {held} idle connections are open: r's table holds {stats['count']} "
            f"entries, conntrack -S drop={stats['stats'].get('drop', 0)} ({drops} before "
            f"the fix){why}"]


# --- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = command_line("scenarios.py", "lab 07's incidents", SCENARIOS, LAB / "student", argv)
    return run_command(_command, args)


def _command(args) -> int:
    if args.cmd == "list":
        for name in SCENARIOS:
            where = ("live (python mode) and offline" if LIVE_MODES.get(name) == "python"
                     else "live and offline" if name in LIVE else "offline")
            print(f"{name:12} {scenario(name)[1].get('title', '')} ({where})")
        return 0
    meta = scenario(args.name)[1]
    if args.cmd == "replay":
        fix = fix_from_dir(args.name, args.dir)
        o = replay(args.name, fix, syntax=args.syntax)
        for oif, pkt in o.sent:
            said = f"  {pkt.data!r}" if pkt.word in ("PORT", "EPRT") else ""
            print(f"{pkt.ts:7.3f} sent on {oif}: {pkt}{said}")
        for t, summary, why in o.dropped:
            print(f"{t:7.3f} dropped: {summary}: {why}")
        for line in o.races:
            print(f"race: {line}")
        for line in sorted(set(o.log)):
            print(f"kernel log: {line}")
        problems = check_offline(args.name, o)
        print("\n".join(problems) or f"{args.name}: fixed on the recorded traffic")
        return 0
    if args.cmd == "break":
        got = stage_live(lab_client(), args.name, args.syntax)
        print(f"{args.name}: the incident is on. {meta.get('symptom', '')}")
        for key, seen in got.items():
            if key == "leaked":
                print(f"  {len(seen)} segment(s) from 10.1.0.0/24 left r to srv"
                      + (f": {seen[0]}" if seen else ""))
            elif key == "ftp":
                print(f"  h1's active FTP download from srv: "
                      f"{'done' if seen[0] else 'failed'} (srv's server: {seen[1]})")
            elif key == "lookups":
                print(f"  {len(seen.lost)} of h1's {seen.count} lookups lost their AAAA answer "
                      f"(glibc's resolver would wait 5 s, then ask again); conntrack -S: "
                      f"clash_resolve +{seen.clash_resolve}")
            elif key == "fill":
                held, said, drops = seen
                print(f"  h1 holds {held} idle connections to srv; its new connection to "
                      f"srv:80: {said or 'answered'} (conntrack -S: drop={drops})")
            elif key == "lost":
                print(f"  {seen} of {RACE_ROUNDS} racing first datagrams lost at confirm "
                      f"(insert_failed)")
            else:
                print(f"  {key[0]} from port {key[1]}: {'answered' if seen else 'no answer'}")
        for t in meta.get("try", []):
            print(f"  try: {t}")
        return 0
    problems = check_live(lab_client(), args.name, fix_from_dir(args.name, args.dir), args.syntax)
    print("\n".join(problems) or f"{args.name}: fixed in the live lab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
