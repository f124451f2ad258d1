"""The tracker of a notebook step: the router model on a manual clock.

A replay session feeds it the recorded datagrams, each bound to the NAT choice it was
seen leaving with; a live session mirrors the router with it (conntrack's verdict on
each packet, which the tables cannot show); a simulated scenario runs on it alone.
"""
from __future__ import annotations

import os

from ..conntrack import show
from ..conntrack.conn import CTINFO_NAMES, IPCT_PROTOINFO
from ..conntrack.profile import profile_for_release
from ..conntrack.tuple import IPPROTO_ICMP, get_tuple
from ..lab import RULES_DIR
from ..nat.bysource import nat_forced
from ..netfilter.rulesfile import parse_rules
from ..ipv4.stack import Router
from ..packet.ipv4 import ICMP_QUERY_TYPES, Packet
from ..replay import ManualClock
from . import scenarios as sc
from .session import PacketPair, StepResult
from .steps import check_sysctl, step_flow, transition


def _ctinfo(pkt: Packet) -> str:
    return CTINFO_NAMES[pkt.ctinfo if pkt.ct is not None else None]


class Engine:
    """The tracker of a replayed scenario: the router model on a manual clock.

    ``answers_seen``: the router's own answers (RSTs, ICMP errors) come in the recording or
    the live mirror's feed and go through LOCAL_OUT from there (:meth:`feed`), so the
    model's stack must not answer as well (each would count twice, as in kernel mode's
    shadow).  Without them (a simulation, no kernel) its stack answers, as Linux's does."""

    def __init__(self, rec: dict, overrides: dict[str, int], answers_seen: bool = True) -> None:
        text = rec.get("rules_text")
        if text is None:
            text = (RULES_DIR / f"{rec['rules']}.rules").read_text()
        sysctls = {**overrides, **rec.get("sysctls", {})}      # the scenario's own win, as live
        self.clock = ManualClock(rec["t0"])
        # Where kernels differ, behave as the kernel that was recorded (live: this one).
        profile = profile_for_release(rec.get("kernel") or os.uname().release)
        self.router = Router(rec["router"]["ifaces"], rec["router"].get("routes") or {},
                             parse_rules(text), sysctls, self.clock, seed=1,
                             local_stack=not answers_seen, profile=profile)
        self.events: list[str] = []
        self.router.ct.listeners.append(self._on_event)

    def _on_event(self, kind, ct, table, bits) -> None:
        now_j = table.jiffies()
        self.events.append(show.format_event(
            kind, ct, now_j, destroy_timeout=ct.remaining(now_j) if kind == "DESTROY" else None,
            protoinfo=bool(bits & IPCT_PROTOINFO), helper=table.helper_name(ct)))

    def until(self, t: float) -> None:
        """Time passes until ``t``: the gc worker runs when the kernel's would."""
        if t > self.clock():
            self.router.ct.run_gc_until(t, self.clock.set)
            self.clock.set(t)

    def feed(self, pp: PacketPair, t: float, simulate: bool = False) -> str:
        """One recorded datagram, bound to the NAT choice it was seen leaving with.
        Sets ``pp.ctinfo``, conntrack's verdict on it (NEW, ESTABLISHED, RELATED...,
        INVALID) and, for a datagram that did not leave, ``pp.verdict`` (why)."""
        self.until(t)
        self.router.defrag.expire(t)
        forced = nat_forced(self.router.ct)
        if pp.iface_in is None:                  # the router's own (an ICMP error, a RST)
            pkt = Packet.parse(bytearray(pp.before), 0, None, t)
            if pkt is None:
                return "INVALID"
            attached = self._attached(pkt)
            tup = get_tuple(pkt)
            new = tup if tup is not None and tup not in self.router.ct.hash else None
            if new is not None:
                forced[new] = new
            try:
                self.router.send_local(pkt)
            finally:
                if new is not None:
                    forced.pop(new, None)
            pp.ctinfo = attached or _ctinfo(pkt)
            return pp.ctinfo
        pkt = Packet.parse(bytearray(pp.before), 0, pp.iface_in, t)
        if pkt is None:
            return "INVALID"
        orig = get_tuple(pkt)
        after = Packet.parse(bytearray(pp.after), 0) if pp.after else None
        left = get_tuple(after) if after is not None else None
        if orig is not None and left is not None:     # (nat_forced reads a None as no entry)
            forced[orig] = left
        delivered = self.router.counters["delivered"]
        try:
            v = self.router.receive(pkt)
        finally:
            if orig is not None:
                forced.pop(orig, None)
        # (what the router sends back about a datagram delivered to it is its answer)
        answered = self.router.counters["delivered"] > delivered
        if simulate and v.sent and not answered:  # no lab: the engine's own output
            pp.iface_out, pp.after, pp.verdict = v.sent[0].oif, v.sent[0].data, "forwarded"
        elif pp.after is None:
            pp.verdict = f"dropped: {v.dropped}" if v.dropped else "delivered to the router"
        pp.ctinfo = _ctinfo(pkt)
        return pp.ctinfo

    def _attached(self, pkt: Packet) -> str | None:
        """The kernel's own ICMP error carries the entry of the packet it is about:
        icmp_glue_bits() calls nf_ct_attach(), which makes it RELATED_REPLY to a packet
        of the original direction (RELATED to a reply), before conntrack sees it."""
        if pkt.proto != IPPROTO_ICMP or pkt.itype in ICMP_QUERY_TYPES:
            return None
        inner = pkt.embedded_packet()
        t = get_tuple(inner) if inner is not None and inner.l4ok else None
        ct = self.router.ct.hash.get(t) if t is not None else None
        if ct is None or self.router.ct.is_expired(ct):
            return None
        return "RELATED_REPLY" if ct.orig == t else "RELATED"

    def table(self) -> list[dict]:
        listing = list(self.router.ct.conns())         # reaps the expired, as a dump does
        now_j = self.router.ct.jiffies()
        return [show.conn_json(ct, now_j, use=self.router.ct.use(ct)) for ct in listing]


def simulation(scenario: sc.Scenario, t0: float, overrides: dict[str, int]) -> Engine:
    """The engine alone, for a scenario the kernel cannot show (``Scenario.simulated``)."""
    return Engine({"rules": scenario.rules,
                   "rules_text": (RULES_DIR / f"{scenario.rules}.rules").read_text(),
                   "sysctls": {check_sysctl(k, v)[0]: v for k, v in scenario.sysctls.items()},
                   "t0": t0, "router": {"ifaces": sc.ROUTER_IFACES, "routes": sc.ROUTER_ROUTES}},
                  overrides, answers_seen=False)


def simulate_step(engine: Engine, scenario: sc.Scenario, step: sc.Step, driver,
                  last_table: list[dict]) -> StepResult:
    """Run a step's actions on the engine alone: each datagram enters the router on the
    side its node is on; waits move the clock."""
    n0 = len(engine.events)
    before = engine.table()                   # reaps what expired meanwhile (DESTROY is the step's)
    pairs = []
    for a in step.actions:
        if "send" in a:
            node, data = driver.packet(a)
            iface = "ntr-wan" if node == "srv" else "ntr-lan"
            pp = PacketPair(iface, data, None, None, "", engine.clock())
            engine.feed(pp, engine.clock(), simulate=True)
            pairs.append(pp)
        elif "wait" in a:
            engine.until(engine.clock() + float(a["wait"]))
    table = engine.table()
    events = engine.events[n0:]
    return StepResult(step.name, pairs, transition(step_flow(scenario, step), before, table,
                                                   pairs, events),
                      table, None, events, [], t=engine.clock(), before=before)
