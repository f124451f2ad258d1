"""Each step's text, written from what the tracker did with the step's packets.

A panel never tells the scripted story as if it had happened: :func:`narrate` reads
the tables before and after the step, its events and its packets, and says what
changed -- the entry's state and flags, which timeout the packet set and why (the
order of choices is tcp_packet()'s and nf_conntrack_udp_packet()'s), what became of
an entry that had expired meanwhile.  The scenario's own text is shown beside it
as the *expectation*; :func:`scripted` computes what the scripted run gives
(the recording replayed) and :func:`differences` says where this run differs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ..conntrack import show
from ..conntrack.sysctl import DEFAULTS
from ..packet.ipv4 import TH_ACK, TH_FIN, TH_RST, TH_SYN, Packet
from . import scenarios as sc
from .session import StepResult
from .steps import PROTO_NUM, _tup, find_entry, flow_orig, tcp_flag_name

# who is who, for the sentences
WHO = {**{ip: node for node, ip in sc.NODES.items()},
       **{cidr.split("/")[0]: "the router" for cidr in sc.ROUTER_IFACES.values()}}
UNACK = "nf_conntrack_tcp_timeout_unacknowledged"
RETRANS = "nf_conntrack_tcp_timeout_max_retrans"
SLACK = 1.5                 # seconds: a listing floors, and is taken a moment after the packet


@dataclass
class Narration:
    """What a step did, in sentences (``lines``), and as data (``facts``: the
    entry of the step's main flow after it, for views, tests and comparisons)."""
    lines: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def flows_of(scenario: sc.Scenario, step: sc.Step) -> list[str]:
    """The flows the step's actions touch, in order; a step of waits alone is about
    the scenario's only flow (if it has one)."""
    names = []
    for a in step.actions:
        if "flow" in a and a["flow"] not in names:
            names.append(a["flow"])
    if not names and len(scenario.flows) == 1:
        names = list(scenario.flows)
    return names


def _flow_label(e: dict) -> str:
    """The flow as the table view names it (``proto src:sport > dst:dport``)."""
    from ..widgets.render import normalize_entry
    return normalize_entry(e)["flow"]


def _flags(e: dict | None) -> list[str]:
    if e is None:
        return []
    return [f for f, on in (("UNREPLIED", e.get("unreplied")), ("ASSURED", e.get("assured"))) if on]


def _state(e: dict | None) -> str:
    if e is None:
        return "no entry"
    return e.get("state") or "an entry"


def summary(e: dict | None, timeout_key: str = "") -> dict:
    """What a comparison looks at: present, state, flags, the timeout's setting."""
    return {"present": e is not None, "state": (e or {}).get("state") or "",
            "flags": _flags(e), "timeout_key": timeout_key}


# --- which timeout, and why --------------------------------------------------------------

def _tcp_packets(results: list[StepResult], e: dict):
    """(direction, Packet) for every TCP packet of entry ``e`` in ``results``."""
    o, r = _tup("tcp", e["orig"]), _tup("tcp", e["reply"])
    for res in results:
        for pp in res.packets:
            p = Packet.parse(bytearray(pp.before))
            if p is None or not p.l4ok or p.proto != PROTO_NUM["tcp"]:
                continue
            t = (p.proto, p.src, p.sport, p.dst, p.dport)
            if t in (o, r):
                yield (0 if t == o else 1), p


def unacknowledged(results: list[StepResult], e: dict) -> str:
    """Who has sent data (or SYN, FIN) the other side has not acknowledged yet, by
    the sequence numbers of the packets so far ("" when nobody): the kernel's
    IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED (tcp_in_window())."""
    end: list[Any] = [None, None]                  # per direction: int, or None before any
    acked: list[Any] = [None, None]
    for d, p in _tcp_packets(results, e):
        e_ = p.seq + p.payload_len + bool(p.tcpflags & TH_SYN) + bool(p.tcpflags & TH_FIN)
        if p.payload_len or p.tcpflags & (TH_SYN | TH_FIN):
            end[d] = e_ if end[d] is None else max(end[d], e_)
        if p.tcpflags & TH_ACK:
            acked[1 - d] = p.ack if acked[1 - d] is None else max(acked[1 - d], p.ack)
        if p.tcpflags & TH_RST:
            end, acked = [None, None], [None, None]
    for d in (0, 1):
        if end[d] is not None and (acked[d] is None or acked[d] < end[d]):
            side = e["orig"]["src"] if d == 0 else e["reply"]["src"]
            return WHO.get(side, side)
    return ""


def timeout_choice(e: dict, sysctl: dict, flag: str, unacked: str,
                   elapsed: float) -> tuple[str, int, str] | None:
    """(setting, seconds, why) of the timeout the step's last packet of entry ``e``
    set, checked against the remaining time the table shows ``elapsed`` seconds
    after that packet; None when no setting gives that number (the packet did not
    renew the timer)."""
    left = e.get("timeout")
    if left is None:
        return None
    proto, cands = e["proto"], []
    if proto == "tcp":
        st = (e.get("state") or "").lower()
        own = f"nf_conntrack_tcp_timeout_{st}"
        t_own = sysctl.get(own, 0)
        if flag == "RST":
            cands.append(("nf_conntrack_tcp_timeout_close", "a RST ends the connection"))
        if unacked and t_own > sysctl[UNACK]:
            cands.append((UNACK, f"data {unacked} sent is not acknowledged yet, and "
                                 f"{st.upper()}'s own timeout ({own}, {t_own} s) is longer"))
        if e.get("unreplied") and st == "established" and t_own > sysctl[UNACK]:
            cands.append((UNACK, "picked up in the middle, no reply seen yet"))
        cands.append((own, f"the timeout of {st.upper()}"))
        if t_own > sysctl[RETRANS]:
            cands.append((RETRANS, "retransmissions, or a zero window"))
    elif proto == "udp":
        if e.get("unreplied"):
            cands.append(("nf_conntrack_udp_timeout", "no reply seen yet"))
        else:
            cands.append(("nf_conntrack_udp_timeout_stream", "a reply was seen and the flow "
                          "is more than 2 s old: a stream"))
            cands.append(("nf_conntrack_udp_timeout", "a reply was seen, but within 2 s of "
                          "the first packet: not a stream (yet)"))
    elif proto == "icmp":
        cands.append(("nf_conntrack_icmp_timeout", "that is the timeout of ICMP entries"))
    else:
        cands.append(("nf_conntrack_generic_timeout", "a protocol without a tracker of its own"))
    for key, why in cands:
        t = sysctl.get(key)
        if t is not None and t - elapsed - SLACK <= left <= t - elapsed + 0.5:
            return key, t, why
    return None


# --- packets and events --------------------------------------------------------------------

def packet_line(pp) -> str:
    p = Packet.parse(bytearray(pp.before))
    if p is None:
        return f"{len(pp.before)} bytes that are not an IPv4 datagram: {pp.verdict}"
    src, dst = _addr(p.src), _addr(p.dst)
    if p.proto == PROTO_NUM["tcp"]:
        what = f"TCP {tcp_flag_name(p.tcpflags, p.payload_len)}"
        if p.payload_len:
            what += f" ({p.payload_len} bytes)"
    elif p.proto == PROTO_NUM["udp"]:
        what = f"UDP ({p.payload_len} bytes)"
    elif p.proto == PROTO_NUM["icmp"]:
        what = {0: "ICMP echo reply", 8: "ICMP echo request", 3: "ICMP destination unreachable",
                11: "ICMP time exceeded"}.get(p.itype, f"ICMP type {p.itype}")
    else:
        what = f"protocol {p.proto}"
    who = f"{WHO.get(src, src)} → {WHO.get(dst, dst)}"
    ct = pp.ctinfo.replace("_REPLY", " (reply direction)") if pp.ctinfo else ""
    return f"{who}: {what}" + (f"; conntrack: {ct}" if ct else "") + f"; {pp.verdict}"


def _addr(n: int) -> str:
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _events_of(events: list[str], e: dict) -> list[str]:
    """The kinds (NEW, UPDATE, DESTROY) of the events about entry ``e``'s flow."""
    out = []
    for line in events:
        try:
            p = show.parse_conntrack_line(line)
        except (KeyError, ValueError, IndexError):
            continue
        if p.get("proto_name") == e["proto"] and all(
                p["orig"].get(k) == v for k, v in e["orig"].items() if k in ("src", "dst", "sport", "dport")):
            out.append(p["kind"])
    return out


# --- the step ------------------------------------------------------------------------------------

def narrate(scenario: sc.Scenario, step: sc.Step, res: StepResult, before: list[dict],
            history: list[StepResult], sysctl: dict | None = None,
            waited: float = 0.0) -> Narration:
    """The step's sentences and facts.  ``before``: the table as the step began;
    ``history``: this scenario's results so far, ``res`` last; ``sysctl``: the
    settings in force (short names); ``waited``: seconds the student let pass
    since the step before (the +N s buttons)."""
    sysctl = {**DEFAULTS, **(sysctl or {})}
    out = Narration()
    for pp in res.packets:
        out.lines.append(packet_line(pp))
    if not res.packets:
        waits = sum(float(a["wait"]) for a in step.actions if "wait" in a)
        out.lines.append(f"No packet: {waits:g} s passed." if waits else "No packet.")
    main = None
    for name in flows_of(scenario, step):
        flow = scenario.flows[name]
        orig = flow_orig(flow)
        b, a = find_entry(before, flow.proto, orig), find_entry(res.table, flow.proto, orig)
        facts = _entry_story(out.lines, flow, orig, b, a, res, history, sysctl, waited)
        if main is None:
            main = facts
    gone = [e for e in before if find_entry(res.table, e["proto"], e["orig"]) is None
            and not any(find_entry([e], scenario.flows[n].proto, flow_orig(scenario.flows[n]))
                        for n in flows_of(scenario, step))]
    for e in gone:
        kinds = _events_of(res.events, e)
        out.lines.append(f"Gone from the table: {_flow_label(e)}"
                         + (" ([DESTROY])." if "DESTROY" in kinds else "."))
    out.facts = main or summary(None)
    return out


def _entry_story(lines: list[str], flow: sc.Flow, orig: dict, b: dict | None, a: dict | None,
                 res: StepResult, history: list[StepResult], sysctl: dict,
                 waited: float) -> dict:
    ref = a or b
    kinds = _events_of(res.events, ref) if ref else []
    label = _flow_label(ref) if ref else f"{flow.proto} {orig['src']}:{orig.get('sport', orig.get('id'))}"
    renewed = b is not None and a is not None and b.get("id") is not None and a.get("id") != b.get("id")
    prior = history[-2].table if len(history) > 1 and history[-1] is res else []
    if b is None and a is not None and find_entry(prior, flow.proto, orig) is not None:
        renewed = True                 # it was there after the step before, and expired since
        b = None
    if renewed and a is not None:
        lines.append(f"The old entry of {label} was gone before this packet: its timeout had "
                     f"run out" + (f" (you let {waited:g} s pass)" if waited else "")
                     + f", so this packet created a new one: {_state(a)} {_flag_text(a)}".rstrip()
                     + ".")
    elif b is None and a is not None:
        lines.append(f"A new entry for {label}: {_state(a)} {_flag_text(a)}".rstrip() + ".")
    elif b is not None and a is not None:
        if a.get("state"):
            move = (f"{b.get('state')} → {a.get('state')}" if b.get("state") != a.get("state")
                    else f"stays {a.get('state')}") + _flag_change(b, a, "; ")
        else:
            move = _flag_change(b, a, "") or "its flags stay as they were"
        lines.append(f"The entry of {label}: {move}.")
    elif b is not None:
        if res.packets:
            why = "this step's packets ended it"
        else:
            why = "its timeout ran out" + (
                "; [DESTROY] came when garbage collection met it" if "DESTROY" in kinds else
                "; its [DESTROY] event comes when garbage collection meets it")
        lines.append(f"The entry of {label} is gone from the table: {why}.")
    else:
        cts = {pp.ctinfo for pp in res.packets}
        if "DESTROY" in kinds and "NEW" in kinds:
            lines.append(f"An entry for {label} was created and destroyed within the step "
                         f"([NEW] then [DESTROY]): it never shows in a listing.")
        elif "INVALID" in cts:
            lines.append("No entry: conntrack found the packet INVALID, so it gets no entry "
                         "and no NAT.")
        elif any(pp.verdict.startswith("dropped") for pp in res.packets):
            lines.append("No entry: the packet was dropped before its entry was confirmed, "
                         "so the table never shows it.")
        else:
            lines.append(f"No entry for {label}.")
    key = ""
    if a is not None:
        mine = [pp for pp in res.packets if _belongs(pp, a)]
        if mine:
            last = Packet.parse(bytearray(mine[-1].before))
            flag = tcp_flag_name(last.tcpflags, last.payload_len) if last and last.proto == 6 else ""
            elapsed = max(0.0, (res.t or 0) - (mine[-1].t or res.t or 0))
            unacked = unacknowledged(history, a) if a["proto"] == "tcp" else ""
            choice = timeout_choice(a, sysctl, flag, unacked, elapsed)
            was = f" (it was {b['timeout']} s)" if b is not None and not renewed and \
                b.get("timeout") is not None else ""
            if choice:
                key, secs, why = choice
                lines.append(f"Timeout: {a['timeout']} s left{was}: {key} = {secs} s, "
                             f"because {why}.")
            else:
                lines.append(f"Timeout: {a['timeout']} s left{was}; this packet did not "
                             f"renew it.")
        elif a.get("timeout") is not None:
            lines.append(f"No packet of this entry: its timer runs on, {a['timeout']} s left.")
    return summary(a, key) | {"flow": _flow_label(a) if a else "", "timeout": (a or {}).get("timeout"),
                              "prev": _state(b) if b else "-"}


def _belongs(pp, e: dict) -> bool:
    p = Packet.parse(bytearray(pp.before))
    if p is None or not p.l4ok or p.proto != PROTO_NUM.get(e["proto"]):
        return False
    if e["proto"] == "icmp":
        return p.itype in (0, 8) and p.sport == e["orig"].get("id")
    t = (p.proto, p.src, p.sport, p.dst, p.dport)
    return t in (_tup(e["proto"], e["orig"]), _tup(e["proto"], e["reply"]))


def _flag_text(e: dict) -> str:
    return " ".join(f"[{f}]" for f in _flags(e))


def _flag_change(b: dict, a: dict, lead: str) -> str:
    fb, fa = set(_flags(b)), set(_flags(a))
    parts = [f"[{f}] is gone" for f in ("UNREPLIED", "ASSURED") if f in fb - fa]
    parts += [f"now [{f}]" for f in ("UNREPLIED", "ASSURED") if f in fa - fb]
    return (lead + ", ".join(parts)) if parts else ""


# --- the expectation -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def scripted(notebook: str, scenario: str) -> tuple[dict, ...] | None:
    """The facts of each step of the scripted run (the recording replayed, or the
    engine alone for a simulated scenario); None without a recording."""
    from .recorded import RecordedSession
    from .session import SessionError
    try:
        s = RecordedSession(notebook)
        scn = s.scenario(scenario)
        s._start(scn)
        s.current, s.next_index = scn, 0
        out, hist = [], []
        for st in scn.steps:
            r = s.run(scn, st.name)
            hist.append(r)
            out.append(narrate(scn, st, r, r.before, hist, s.sysctl_values()).facts)
        return tuple(out)
    except (SessionError, OSError, KeyError, ValueError):
        return None


def describe(f: dict) -> str:
    if not f.get("present"):
        return "no entry"
    flags = " ".join(f"[{x}]" for x in f.get("flags", ()))
    return " ".join(x for x in (f.get("state") or "an entry", flags,
                                f"timeout from {f['timeout_key']}" if f.get("timeout_key") else "")
                    if x)


def differences(actual: dict, expected: dict | None) -> list[str]:
    """What differs between this run's facts and the scripted run's (field names)."""
    if expected is None:
        return []
    keys = ("present", "state", "flags", "timeout_key")
    return [k for k in keys if actual.get(k) != expected.get(k)
            and not (k == "timeout_key" and not (actual.get(k) and expected.get(k)))]
