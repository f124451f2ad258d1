"""How a notebook step runs, shared by the live and the replay backend.

:class:`Driver` builds each ``send`` action's datagram (sequence and acknowledgment
numbers kept per connection, replies addressed from the tracker's reply tuple); the
helpers read a step's tables and events: the flow's entry, its TCP transition, the
entries and events of the scenario's own flows; ``check_sysctl`` checks a setting.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..conntrack import show
from ..conntrack.sysctl import DEFAULTS, Sysctl
from ..conntrack.tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, ip2int
from ..lab.craft import build
from ..packet.ipv4 import TH_ACK, TH_FIN, TH_RST, TH_SYN, Packet
from . import scenarios as sc
from .session import PacketPair, SessionError, Transition

PROTO_NUM = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}
CLIENT_ISN, SERVER_ISN = 1_000_000, 5_000_000


def flow_orig(flow: sc.Flow) -> dict:
    """The original tuple the flow's first packet creates (``conn_json`` keys)."""
    src, dst = sc.NODES[flow.client], flow.to[0]
    if flow.proto == "icmp":
        return {"src": src, "dst": dst, "type": 8, "code": 0, "id": flow.cport}
    return {"src": src, "dst": dst, "sport": flow.cport, "dport": flow.to[1]}


def find_entry(table: list[dict] | None, proto: str, orig: dict) -> dict | None:
    for e in table or ():
        if e.get("proto") == proto and all(e["orig"].get(k) == v for k, v in orig.items()):
            return e
    return None


def tcp_flag_name(flags: int, payload: int) -> str:
    if flags & TH_RST:
        return "RST"
    if flags & TH_SYN:
        return "SYN-ACK" if flags & TH_ACK else "SYN"
    if flags & TH_FIN:
        return "FIN"
    return "data" if payload else "ACK"


def _tup(proto: str, t: dict) -> tuple:
    return (PROTO_NUM[proto], ip2int(t["src"]), t.get("sport"), ip2int(t["dst"]), t.get("dport"))


def transition(flow: sc.Flow | None, before: list[dict], after: list[dict],
               packets: list[PacketPair], events: Sequence[str] = ()) -> Transition | None:
    """What the step did to the flow's TCP entry: the state it left and the state it
    reached (from the table before, the step's events and the table after: an entry a
    RST destroyed still shows its last state), with the direction and flags of the
    step's last packet of that connection."""
    if flow is None or flow.proto != "tcp":
        return None
    orig = flow_orig(flow)
    old, new = find_entry(before, "tcp", orig), find_entry(after, "tcp", orig)
    states = [old["state"] if old else "NONE"]
    tuples = (old["orig"], old["reply"]) if old else None
    for line in events:
        try:
            p = show.parse_conntrack_line(line)
        except (ValueError, IndexError, KeyError):
            continue
        if p["proto"] == IPPROTO_TCP and all(p["orig"].get(k) == v for k, v in orig.items()):
            states.append(p["state"])
            tuples = (p["orig"], p["reply"])
    if new is not None:
        states.append(new["state"])
        tuples = (new["orig"], new["reply"])
    if tuples is None:
        return None
    seq = [st for i, st in enumerate(states) if i == 0 or st != states[i - 1]]
    o, r = _tup("tcp", tuples[0]), _tup("tcp", tuples[1])
    last = None
    for pp in packets:
        pkt = Packet.parse(bytearray(pp.before))
        if pkt is None or not pkt.l4ok or pkt.proto != IPPROTO_TCP:
            continue
        t = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if t == o:
            last = ("ORIGINAL", pkt)
        elif t == r:
            last = ("REPLY", pkt)
    if last is None:
        return None
    direction, pkt = last
    return Transition(seq[-2] if len(seq) > 1 else seq[-1], seq[-1], direction,
                      tcp_flag_name(pkt.tcpflags, pkt.payload_len))


def step_flow(scenario: sc.Scenario, step: sc.Step) -> sc.Flow | None:
    for a in step.actions:
        if "flow" in a:
            return scenario.flows[a["flow"]]
    return None


def _mine(scenario: sc.Scenario, proto: str, orig: dict) -> bool:
    return any(find_entry([{"proto": proto, "orig": orig}], f.proto, flow_orig(f))
               for f in scenario.flows.values())


def scope_table(scenario: sc.Scenario, table: list[dict]) -> list[dict]:
    """The entries of the scenario's own flows: other notebooks on the same lab have
    theirs (each scenario has its own ports)."""
    return [e for e in table if _mine(scenario, e.get("proto", ""), e.get("orig") or {})]


def scope_events(scenario: sc.Scenario, lines: list[str]) -> list[str]:
    """The ``conntrack -E`` lines about the scenario's own flows."""
    out = []
    for line in lines:
        try:
            p = show.parse_conntrack_line(line)
        except (KeyError, ValueError, IndexError):
            continue
        if _mine(scenario, p.get("proto_name", ""), p["orig"]):
            out.append(line)
    return out


def check_sysctl(key: str, value) -> tuple[str, int]:
    """A conntrack setting by its kernel name (short names accepted), a whole number."""
    try:
        probe = Sysctl({})
        probe.set(key, value)
        full = key if key.startswith("net.") else "net.netfilter." + key
        return full, int(probe.get_full(full))
    except Exception as exc:                           # noqa: BLE001 -- SysctlError, ValueError
        raise SessionError(f"{key}={value}: {exc}") from None


def default_sysctl(key: str) -> int:
    return int(DEFAULTS[Sysctl.short(key)])


# --- building each step's packets -------------------------------------------------------------

class Driver:
    """Plays both ends of the scenario's flows: what to send, from which node."""

    def __init__(self, scenario: sc.Scenario, reply_of) -> None:
        self.scenario = scenario
        self.reply_of = reply_of                  # (proto, orig dict) -> reply tuple dict
        self.tcp: dict[str, dict] = {}
        self.count: dict[str, int] = {}
        self.ipid = 0x1000

    def packet(self, action: dict) -> tuple[str, bytes]:
        """(node, datagram) for one ``send`` action."""
        flow: sc.Flow = self.scenario.flows[action["flow"]]
        side = action.get("side", "client")
        self.ipid += 1
        kind = action["send"]
        if side == "client":
            node = flow.client
            src, dst = sc.NODES[flow.client], flow.to[0]
            sport, dport = flow.cport, flow.to[1]
        else:
            node = flow.server
            reply = self.reply_of(flow.proto, flow_orig(flow))
            if reply is None:
                raise SessionError(f"{flow.server} cannot answer: the tracker has no entry for "
                                   f"{flow.client}:{flow.cport} (run the scenario's earlier steps)")
            src, dst, sport, dport = reply["src"], reply["dst"], reply["sport"], reply["dport"]
        ttl = action.get("ttl", 64)
        if kind == "ping":
            n = self.count[action["flow"]] = self.count.get(action["flow"], 0) + 1
            return node, build("icmp", src, dst, ipid=self.ipid, ttl=ttl, icmp_type=8,
                               icmp_id=flow.cport, icmp_seq=n, payload=b"nattrack ping")
        data = action.get("data", "").encode()
        if kind == "udp":
            return node, build("udp", src, dst, sport, dport, payload=data, ipid=self.ipid, ttl=ttl)
        if kind == "icmp-error":
            # A router further on reports on the datagram as it left ours (translated):
            # the quote is its IP header and first 8 bytes, from the reply tuple's view.
            quoted = build(flow.proto, dst, src, dport, sport, ipid=self.ipid - 1, ttl=1,
                           payload=b"")[:28]
            return node, build("icmp", src, dst, ipid=self.ipid, icmp_type=action["type"],
                               icmp_code=action.get("code", 0), payload=quoted)
        st = self.tcp.setdefault(action["flow"], {"client": CLIENT_ISN, "server": SERVER_ISN,
                                                  "fin": {"client": False, "server": False}})
        flags = action["flags"]
        other = "server" if side == "client" else "client"
        seq = st[side] + action.get("seq_offset", 0)
        ack = st[other]
        if action.get("ack_fin") is False and st["fin"][other]:
            ack -= 1                              # the FIN crossed: not acknowledged yet
        if "A" not in flags.upper():
            ack = 0
        pkt = build("tcp", src, dst, sport, dport, flags, seq, ack, payload=data,
                    ipid=self.ipid, ttl=ttl)
        st[side] += len(data) + ("S" in flags) + ("F" in flags)
        if "F" in flags:
            st["fin"][side] = True
        return node, pkt
