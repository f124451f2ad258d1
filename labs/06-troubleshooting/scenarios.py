"""Lab 06's scenarios: broken configurations of topologies/trouble.py, the fixes a student
submits as data, and how the grader applies both -- to recorded traffic (the engine)
and to the live lab (as root, through the lab service).

A configuration is a set of knobs:

* ``rules``: the router r's rules (iptables-save subset, ``*nat`` and ``*filter``; or nft
  syntax, tables of nat and filter chains: the lab's nft variant, ``student/nft/``);
* ``sysctl``: settings of r (``net.ipv4.ip_forward``, ``net.netfilter.nf_conntrack_*``);
* ``offload``: ``{iface, rx|tx|tso|gso|gro = "on"|"off"}`` on a lab host's interface;
* ``route``: ``{node, dest, via}``: ``ip route replace DEST via VIA`` in a host.

Every scenario starts from the healthy baseline, applies its own ``[break]`` knobs
(``scenarios/NAME.toml``, rules ``scenarios/NAME.rules``), then the student's
``NAME.toml`` and ``NAME.rules`` (a submission's files; the rules only when given).
Nothing a student writes is executed (the mechanism, shared with lab 07, is
nattrack.exercises.scenarios): the rules are parsed by nattrack's own parser first (an option
it does not know is an error naming the line) and loaded with ``iptables-restore`` (nft
syntax: ``nft -f``); every other knob is checked against a short list and applied as an argv.

Command line (the lab's Makefile uses it)::

    python scenarios.py list
    sudo python scenarios.py break NAME [--syntax nft]  # the running lab gets scenario NAME
    sudo python scenarios.py fix NAME [--dir DIR]  # ... plus DIR/NAME.toml, DIR/NAME.rules (default student/)
    python scenarios.py replay NAME [--dir DIR]    # the recorded traffic through the engine
"""
from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nattrack.exercises.scenarios import (KnobError, check_diagnosis, check_keys, check_rules,
                                     check_sysctls, command_line, flush_tables, frames,
                                     kernel_stat, lab_client, load_rules_live, load_toml, recorded,
                                     require_root, run, run_command, scenario_files, sent_view,
                                     set_sysctls_live, submission_texts, table_list, udp_ask)

LAB = Path(__file__).resolve().parent
SCENARIOS = ("no-masquerade", "forwarding-off", "filter-drops-replies", "asymmetric-route",
             "offload-checksums", "invalid-leak")

# topologies/trouble.py, as far as the knobs are concerned.
ROUTER = "r"
ROUTER_IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
LAN, WAN = "ntr-lan", "ntr-wan"
PUBLIC = "203.0.113.1"
LAN_NET = ipaddress.ip_network("10.0.0.0/24")
HOSTS = {"h1": ("nth1-eth0", "10.0.0.10"), "h2": ("nth2-eth0", "10.0.0.11"),
         "web": ("ntweb-eth0", "10.0.0.20"), "srv": ("ntsrv-eth0", "203.0.113.10")}
BEHIND_USERSPACE_BRIDGE = {"h2"}          # its frames reach r exactly as its veth left them
GATEWAYS = {"10.0.0.1": "r", "10.0.0.2": "r2"}
OFFLOADS = ("rx", "tx", "tso", "gso", "gro")
SYSCTL_OK = ("net.ipv4.ip_forward",)
BASELINE_ROUTES = {"h1": {"default": "10.0.0.1"}, "h2": {"default": "10.0.0.1"},
                   "web": {"default": "10.0.0.1"}}


@dataclass
class Config:
    rules: str = ""
    sysctl: dict[str, int] = field(default_factory=dict)
    offload: dict[str, dict[str, str]] = field(default_factory=dict)    # iface -> {feature: on/off}
    routes: dict[str, dict[str, str]] = field(default_factory=dict)     # node -> {dest: via}
    diagnosis: str = ""

    def then(self, other: "Config") -> "Config":
        """This configuration with ``other``'s knobs applied on top."""
        out = Config(other.rules or self.rules, {**self.sysctl, **other.sysctl},
                     {k: dict(v) for k, v in self.offload.items()},
                     {k: dict(v) for k, v in self.routes.items()}, other.diagnosis)
        for iface, feats in other.offload.items():
            out.offload.setdefault(iface, {}).update(feats)
        for node, rts in other.routes.items():
            out.routes.setdefault(node, {}).update(rts)
        return out

    @property
    def ip_forward(self) -> bool:
        return bool(self.sysctl.get("net.ipv4.ip_forward", 1))

    def conntrack_sysctls(self) -> dict[str, int]:
        return {k: v for k, v in self.sysctl.items() if k.startswith("net.netfilter.")}


def baseline() -> Config:
    return Config((LAB / "rules" / "healthy.rules").read_text(), {"net.ipv4.ip_forward": 1},
                  {HOSTS[h][0]: {"tx": "off"} for h in BEHIND_USERSPACE_BRIDGE},
                  {n: dict(r) for n, r in BASELINE_ROUTES.items()})


# --- reading and checking knobs -------------------------------------------------------------

def _iface_node(iface: str) -> str:
    for node, (name, _addr) in HOSTS.items():
        if name == iface:
            return node
    raise KnobError(f"offload iface {iface!r}: not a host interface of the lab "
                    f"({', '.join(n for n, _ in HOSTS.values())})")


def parse_knobs(data: dict, where: str) -> Config:
    check_keys(data, where, ("sysctl", "offload", "route"), ("title", "symptom", "try", "break"))
    cfg = Config(sysctl=check_sysctls(data, where, "router", SYSCTL_OK),
                 diagnosis=check_diagnosis(data, where))
    for item in table_list(data, "offload"):
        if not isinstance(item, dict) or "iface" not in item:
            raise KnobError(f"{where}: offload: expected {{iface = \"nth2-eth0\", tx = \"off\"}}")
        try:
            _iface_node(item["iface"])
        except KnobError as exc:
            raise KnobError(f"{where}: {exc}") from None
        feats = {k: v for k, v in item.items() if k not in ("iface", "node")}
        for feat, state in feats.items():
            if feat not in OFFLOADS or state not in ("on", "off"):
                raise KnobError(f"{where}: offload {feat} = {state!r}: features are "
                                f"{', '.join(OFFLOADS)}, each \"on\" or \"off\"")
        cfg.offload.setdefault(item["iface"], {}).update(feats)
    for item in table_list(data, "route"):
        if not isinstance(item, dict) or set(item) != {"node", "dest", "via"}:
            raise KnobError(f"{where}: route: expected {{node = \"web\", dest = \"default\", "
                            f"via = \"10.0.0.1\"}}")
        node, dest, via = item["node"], item["dest"], item["via"]
        if node not in BASELINE_ROUTES:
            raise KnobError(f"{where}: route node {node!r}: one of {', '.join(BASELINE_ROUTES)}")
        if dest != "default":
            try:
                dest = str(ipaddress.ip_network(dest))
            except ValueError:
                raise KnobError(f"{where}: route dest {dest!r}: \"default\" or NET/LEN") from None
        if via not in GATEWAYS:
            raise KnobError(f"{where}: route via {via!r}: the gateways on the LAN are "
                            f"{', '.join(GATEWAYS)}")
        cfg.routes.setdefault(node, {})[dest] = via
    return cfg


def scenario(name: str, syntax: str = "iptables") -> tuple[Config, dict]:
    """(the broken configuration's knobs, the scenario's description) of scenario NAME; its
    rules from scenarios/NAME.rules, or NAME.nft (the same rules in nft syntax)."""
    meta, rules, where = scenario_files(LAB, name, SCENARIOS, "scenario", syntax)
    cfg = parse_knobs(meta.get("break", {}), f"scenarios/{name}.toml [break]")
    cfg.rules = check_rules(rules, where)
    return cfg, meta


def fix_from_texts(name: str, toml_text: str | None, rules_text: str | None) -> Config:
    """The student's fix for NAME from the texts of NAME.toml and NAME.rules."""
    cfg = Config()
    if toml_text is not None:
        cfg = parse_knobs(load_toml(toml_text, f"{name}.toml"), f"{name}.toml")
    if rules_text is not None and rules_text.strip():
        cfg.rules = check_rules(rules_text, f"{name}.rules")
    return cfg


def fix_from_dir(name: str, folder: Path) -> Config:
    return fix_from_texts(name, *submission_texts(folder, name))


def effective(name: str, fix: Config | None, syntax: str = "iptables") -> Config:
    broken, _meta = scenario(name, syntax)
    cfg = baseline().then(broken)
    return cfg.then(fix) if fix is not None else cfg


# --- the recorded traffic through the engine --------------------------------------------------

@dataclass
class Outcome:
    """What the router did with the scenario's recorded traffic."""
    sent: list = field(default_factory=list)        # (oif, Packet) of everything r sent
    dropped: list = field(default_factory=list)     # (Packet summary, reason)
    not_reaching_r: int = 0                         # frames a host's route sent elsewhere
    table: list = field(default_factory=list)       # conntrack -L JSON of r's table
    invalid: int = 0

    def out(self, iface: str) -> list:
        return [p for oif, p in self.sent if oif == iface]

    def leaked(self) -> list:
        """Packets that left the public side with a private source address."""
        return [p for p in self.out(WAN) if ipaddress.ip_address(p.src) in LAN_NET]

    def delivered_to(self, addr: str) -> list:
        return [p for p in self.out(LAN) if p.dst == ipaddress.ip_address(addr)]


def _gateway(cfg: Config, node: str, dst: str) -> str | None:
    """The gateway NODE's routes pick for DST (None: on-link)."""
    d = ipaddress.ip_address(dst)
    if d in LAN_NET:
        return None
    best, via = -1, None
    for dest, gw in cfg.routes.get(node, {}).items():
        net = ipaddress.ip_network("0.0.0.0/0" if dest == "default" else dest)
        if d in net and net.prefixlen > best:
            best, via = net.prefixlen, gw
    return via


def _finish_l4_checksum(buf: bytearray, off: int) -> None:
    """What the sender's kernel does with tx offload off: a full L4 checksum."""
    from nattrack.packet.checksum import checksum, pseudo_header_sum
    from nattrack.packet.ipv4 import Packet
    pkt = Packet.parse(buf, off)
    if pkt is None or pkt.proto not in (6, 17) or pkt.frag:
        return
    at = pkt.l4 + (16 if pkt.proto == 6 else 6)
    buf[at:at + 2] = b"\0\0"
    c = checksum(memoryview(buf)[pkt.l4:pkt.l4 + pkt.l4len],
                 pseudo_header_sum(pkt.src, pkt.dst, pkt.proto, pkt.l4len))
    if pkt.proto == 17 and c == 0:
        c = 0xFFFF
    buf[at], buf[at + 1] = c >> 8, c & 0xFF


def capture_path(name: str) -> Path:
    return LAB / "data" / f"{name}.pcapng"


def replay(name: str, cfg: Config, capture: Path | None = None) -> Outcome:
    """The scenario's recorded traffic (frames as they would reach r's interfaces) through
    nattrack's engine configured by ``cfg``.  The host knobs act on the frames first: a
    LAN host's route decides whether its frame reaches r at all, and the tx offload of a
    host behind the user-space bridge whether its checksums arrive finished."""
    from nattrack.conntrack import show
    from nattrack.netfilter.rulesfile import parse_rules
    from nattrack.ipv4.stack import Router
    from nattrack.packet.ipv4 import Packet

    clock_now = [0.0]
    router = Router(dict(ROUTER_IFACES), {}, parse_rules(cfg.rules, f"{name}.rules"),
                    cfg.conntrack_sysctls(), lambda: clock_now[0], seed=6,
                    ip_forward=cfg.ip_forward)
    by_addr = {addr: node for node, (_i, addr) in HOSTS.items()}
    out = Outcome()
    for frame, off in frames(capture or capture_path(name)):
        buf = bytearray(frame.data)
        head = Packet.parse(bytearray(buf), off)
        if head is None:
            continue
        src = str(ipaddress.ip_address(head.src))
        node = by_addr.get(src)
        if frame.iface == LAN and node is not None:
            gw = _gateway(cfg, node, str(ipaddress.ip_address(head.dst)))
            if gw is not None and GATEWAYS[gw] != ROUTER:
                out.not_reaching_r += 1
                continue
            if node in BEHIND_USERSPACE_BRIDGE and cfg.offload.get(HOSTS[node][0], {}).get("tx") == "off":
                _finish_l4_checksum(buf, off)
        router.ct.run_gc_until(frame.ts, lambda t: clock_now.__setitem__(0, t))
        clock_now[0] = frame.ts
        pkt = Packet.parse(buf, off, iif=frame.iface, ts=frame.ts)
        summary = pkt.summary()
        v = router.receive(pkt)
        if v.dropped:
            out.dropped.append((summary, v.dropped))
        for s in v.sent:
            out.sent.append((s.oif, sent_view(s.data)))
    now_j = router.ct.jiffies()
    out.table = [show.conn_json(ct, now_j) for ct in router.ct.conns()]
    out.invalid = router.ct.stats.get("invalid", 0)
    return out


# --- what a fixed network does with the recorded traffic -------------------------------------

CLIENT = {"offload-checksums": "h2"}                  # whose traffic the outbound scenarios carry


def check_offline(name: str, o: Outcome) -> list[str]:
    """What is still wrong after the fix, one sentence each (empty: fixed)."""
    problems = []
    rec = recorded(capture_path(name))
    bad_sum = [p for _oif, p in o.sent if not p.checksum_ok]
    if bad_sum:
        problems.append(f"r sends packets with a bad checksum ({bad_sum[0]}): the receiver's "
                        f"kernel drops them")
    leaked = o.leaked()
    if leaked:
        problems.append(f"packets leave ntr-wan with a private source address ({leaked[0]}"
                        + (f" and {len(leaked) - 1} more" if len(leaked) > 1 else "") + ")")
    if name == "asymmetric-route":
        answers = [p for iface, p in rec if iface == LAN and str(p.src) == HOSTS["web"][1]]
        # web's answers, un-DNATed; not the RSTs r's own stack sends for srv's segments
        # that reach it un-NATed (INVALID: r never saw web's SYN-ACK), as Linux does
        back = [p for p in o.out(WAN) if str(p.src) == PUBLIC and p.sport == 8080
                and not p.tcpflags & 0x04]
        if len(back) < len(answers):
            problems.append(f"web's {len(answers)} answers to srv should leave r as "
                            f"{PUBLIC}:8080; {len(back)} did"
                            + (f" ({o.not_reaching_r} never reached r: web sent them to "
                               f"another router)" if o.not_reaching_r else ""))
        return problems
    host = CLIENT.get(name, "h1")
    addr = HOSTS[host][1]
    wanted = {1: "ping", 17: "UDP echo", 6: "web (TCP)"}
    for proto, what in wanted.items():
        asked = [p for iface, p in rec if iface == LAN and str(p.src) == addr and p.proto == proto
                 and (proto != 6 or p.dport == 80 and p.tcpflags & 0x02)]
        if not asked:
            continue
        out = [p for p in o.out(WAN) if str(p.src) == PUBLIC and p.proto == proto]
        back = [p for p in o.delivered_to(addr) if p.proto == proto]
        answers = [p for iface, p in rec if iface == WAN and str(p.dst) == PUBLIC
                   and p.proto == proto]
        if not out:
            problems.append(f"{host}'s {what} never leaves r as {PUBLIC}")
        elif len(back) < len(answers):
            problems.append(f"srv's {len(answers)} {what} answer(s) should reach {host}; "
                            f"{len(back)} did")
    if name == "invalid-leak":
        let_out = [p for p in o.out(WAN) if p.proto == 6 and (p.tcpflags & 0x05)
                   and str(p.src) == addr]
        if let_out:
            problems.append(f"INVALID segments still cross r: {let_out[0]} (conntrack "
                            f"counted {o.invalid} INVALID packets)")
    intruder = [p for p in o.delivered_to(addr) if p.proto == 6 and p.dport == 22]
    if intruder:
        problems.append(f"the firewall lets a new connection from outside in ({intruder[0]})")
    return problems


def check_live(lab, name: str) -> list[str]:
    """What is still wrong in the live lab (configured already), one sentence each."""
    problems = []
    if name == "asymmetric-route":
        page = curl(lab, "srv", f"http://{PUBLIC}:8080/")
        if page is None or "hello from web" not in page:
            problems.append(f"srv cannot open http://{PUBLIC}:8080/ (web's page)")
        else:
            entry = [l for l in lab.kernel_list(proto="tcp", dport=8080) if "ASSURED" in l]
            if not entry:
                problems.append("r's kernel has no ASSURED entry for the port forward")
        return problems
    host = CLIENT.get(name, "h1")
    addr = HOSTS[host][1]
    page = curl(lab, host, "http://203.0.113.10/")
    if page is None:
        problems.append(f"{host} cannot fetch http://203.0.113.10/")
    elif f"you came from {PUBLIC}:" not in page:
        problems.append(f"srv saw {host} as {page.split('you came from ')[-1]}, not {PUBLIC}")
    else:
        kernel = [l for l in lab.kernel_list(proto="tcp", dport=80, src=addr) if "ASSURED" in l]
        if not kernel:
            problems.append(f"r's kernel has no ASSURED entry for {host}'s web request")
    seen = udp_ask(lab, host, "203.0.113.10")
    if seen is None:
        problems.append(f"{host}'s UDP question to srv's echo service (port 7) gets no answer")
    elif not seen.startswith(PUBLIC + ":"):
        problems.append(f"srv's echo service saw {host} as {seen}, not {PUBLIC}")
    if name == "invalid-leak":
        leaked, invalid = stray_segments(lab, host)
        if invalid == 0:
            problems.append("the stray segments did not reach r's conntrack (hping3 failed?)")
        if leaked:
            problems.append(f"srv received {len(leaked)} INVALID segment(s) with the private "
                            f"source {addr}: {leaked[0]}")
    return problems


def stray_segments(lab, host: str) -> tuple[list[str], int]:
    """``host`` sends two TCP segments of no connection (FIN, RST) to srv while srv listens
    for private sources; (what srv saw, how many INVALID packets r's kernel counted)."""
    before = kernel_stat(lab, "invalid")
    s = lab.exec_session("srv", ["tcpdump", "-nn", "-l", "-i", HOSTS["srv"][0],
                                 "tcp and src net 10.0.0.0/24"], timeout=20)
    lines: list[str] = []
    try:
        it = iter(s)
        for stream, data in it:                   # wait until tcpdump listens
            if stream == "stderr" and b"listening on" in data:
                break
        for flag in ("-F", "-R"):
            lab.exec(host, ["hping3", "-c", "1", flag, "-p", "80", "203.0.113.10"], timeout=10)
        time.sleep(0.5)
        s.signal("INT")
        for stream, data in it:
            if stream == "stdout":
                lines += data.decode(errors="replace").splitlines()
    finally:
        s.close()
    return [l for l in lines if l.strip()], kernel_stat(lab, "invalid") - before


# --- the live lab ---------------------------------------------------------------------------

_touched: dict[str, set] = {"sysctl": set(), "offload": set()}


def apply_live(lab, cfg: Config) -> None:
    """Put the running lab (a LabClient whose caller is root) in configuration ``cfg``:
    r's rules and sysctls, the hosts' offloads and routes; both tables start empty.
    What an earlier configuration changed and this one does not mention goes back to the
    lab's state: conntrack settings to their defaults, offloads off."""
    from nattrack.router.shadow import FORCE_TRACKING
    require_root(lab, ROUTER, "applying a scenario")
    load_rules_live(lab, ROUTER, cfg.rules, FORCE_TRACKING)
    set_sysctls_live(lab, ROUTER, cfg.sysctl, _touched["sysctl"])
    offload = {iface: dict.fromkeys(OFFLOADS, "off") for iface in _touched["offload"]}
    for iface, feats in cfg.offload.items():
        offload.setdefault(iface, {}).update(feats)
    for iface, feats in offload.items():
        for feat, state in sorted(feats.items()):      # one by one: veths refuse some
            res = lab.exec(_iface_node(iface), ["ethtool", "-K", iface, feat, state], timeout=20)
            if res.returncode != 0 and feat in cfg.offload.get(iface, {}):
                raise KnobError(f"ethtool -K {iface} {feat} {state}: "
                                f"{(res.stderr or res.stdout).strip()}")
    _touched["offload"].update(cfg.offload)
    for node, rts in cfg.routes.items():
        for dest, via in rts.items():
            run(lab, node, ["ip", "route", "replace", dest, "via", via])
    flush_tables(lab)


def curl(lab, node: str, url: str) -> str | None:
    """The page ``node`` gets from ``url`` within 3 s, or None."""
    res = lab.exec(node, ["curl", "-s", "-m", "3", url], timeout=10)
    return res.stdout.strip() if res.returncode == 0 and "you came from" in res.stdout else None


# --- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = command_line("scenarios.py", "lab 06's broken set-ups", SCENARIOS, LAB / "student", argv)
    return run_command(_command, args)


def _command(args) -> int:
    if args.cmd == "list":
        for name in SCENARIOS:
            print(f"{name:22} {scenario(name)[1].get('title', '')}")
        return 0
    fix = fix_from_dir(args.name, args.dir) if args.cmd != "break" else None
    cfg = effective(args.name, fix, args.syntax)
    if args.cmd == "replay":
        o = replay(args.name, cfg)
        for oif, pkt in o.sent:
            print(f"sent on {oif}: {pkt}{'' if pkt.checksum_ok else '  (bad checksum)'}")
        for summary, why in o.dropped:
            print(f"dropped: {summary}: {why}")
        if o.not_reaching_r:
            print(f"{o.not_reaching_r} frame(s) went to another router (the hosts' routes)")
        return 0
    apply_live(lab_client(), cfg)
    meta = scenario(args.name)[1]
    if args.cmd == "break":
        print(f"{args.name}: broken. {meta.get('symptom', '')}")
    else:
        print(f"{args.name}: broken, then your {args.dir}/{args.name}.* applied; "
              f"was: {meta.get('symptom', '')}")
    for t in meta.get("try", []):
        print(f"  try: {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
