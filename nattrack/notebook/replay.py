"""The replay backend: a recorded lab run, no lab needed.

``notebooks/recordings/<notebook>/<scenario>.json`` (written by ``nattrack record``)
holds, per step, the datagrams on both sides of the router, the tracker's and the
kernel's table and events; ``<scenario>.pcapng`` the same frames for Wireshark.

The kernel's side is shown as recorded.  The tracker's side is computed again: the
recorded ingress datagrams go through the engine (a :class:`~nattrack.netfilter.stack.Router`
on a :class:`~nattrack.replay.ManualClock`) at their recorded times, each bound to the
NAT choice the kernel made (``table.nat_forced``, as the shadow tracker does), so
``advance()`` makes timeouts run down and the gc worker reap for real.  The tests check
that this recomputation gives the recorded tables and events.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..conntrack import show
from ..conntrack.conn import CTINFO_NAMES, IPCT_PROTOINFO
from ..conntrack.core import get_tuple
from ..lab import REPO_ROOT, RULES_DIR
from ..netfilter.rules import Ruleset
from ..netfilter.stack import Router
from ..conntrack.tuple import IPPROTO_ICMP
from ..packet.ipv4 import ICMP_QUERY_TYPES, Packet
from ..replay import ManualClock
from . import scenarios as sc
from .session import (PacketPair, Session, SessionError, StepResult, check_sysctl, step_flow,
                      transition)

RECORDINGS = REPO_ROOT / "notebooks" / "recordings"
FORMAT = 1


def recordings_dir(base: str | os.PathLike | None = None) -> Path:
    if base is not None:
        return Path(base)
    env = os.environ.get("NATTRACK_RECORDINGS")
    return Path(env) if env else RECORDINGS


def load_recording(base: Path, notebook: str, scenario: str) -> dict:
    path = base / notebook / f"{scenario}.json"
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise SessionError(f"no recording {path}: record it with `sudo nattrack record "
                           f"{notebook} --out {base}`") from None
    except ValueError as exc:
        raise SessionError(f"{path} is not a recording ({exc}): record it again") from None
    if rec.get("format") != FORMAT:
        raise SessionError(f"{path}: recording format {rec.get('format')}, expected {FORMAT}: "
                           f"record it again with `sudo nattrack record {notebook}`")
    return rec


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
        self.router = Router(rec["router"]["ifaces"], rec["router"].get("routes") or {},
                             Ruleset.parse(text), sysctls, self.clock, seed=1,
                             local_stack=not answers_seen)
        self.events: list[str] = []
        self.router.ct.listeners.append(self._on_event)

    def _on_event(self, kind, ct, table, bits) -> None:
        now_j = table.jiffies()
        self.events.append(show.format_event(
            kind, ct, now_j, destroy_timeout=ct.remaining(now_j) if kind == "DESTROY" else None,
            protoinfo=bool(bits & IPCT_PROTOINFO)))

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
        forced = self.router.ct.nat_forced
        if pp.iface_in is None:                  # the router's own (an ICMP error, a RST)
            pkt = Packet.parse(bytearray(pp.before), 0, None, t)
            if pkt is None:
                return "INVALID"
            attached = self._attached(pkt)
            tup = get_tuple(pkt)
            new = tup is not None and tup not in self.router.ct.hash
            if new:
                forced[tup] = tup
            try:
                self.router.send_local(pkt)
            finally:
                if new:
                    forced.pop(tup, None)
            pp.ctinfo = attached or _ctinfo(pkt)
            return pp.ctinfo
        pkt = Packet.parse(bytearray(pp.before), 0, pp.iface_in, t)
        if pkt is None:
            return "INVALID"
        orig = get_tuple(pkt)
        after = Packet.parse(bytearray(pp.after), 0) if pp.after else None
        if orig is not None and after is not None:
            forced[orig] = get_tuple(after)
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
        return [show.conn_json(ct, now_j) for ct in listing]


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


class ReplaySession(Session):
    mode = "replay"

    def __init__(self, notebook: str, recordings: str | os.PathLike | None = None) -> None:
        super().__init__(notebook)
        self.base = recordings_dir(recordings)
        self.recs: dict[str, dict] = {}
        found = [s.name for s in self._scenarios if (self.base / notebook / f"{s.name}.json").exists()]
        first = self._rec(found[0] if found else self._scenarios[0].name)
        day = str(first.get("recorded", ""))[:10]
        kernel = ".".join(str(first.get("kernel", "?")).split(".")[:2])
        self.label = (f"Replay of a recorded lab run (recorded {day} on Linux {kernel}): "
                      f"no lab needed")
        self.overrides: dict[str, int] = {}
        self.engine: Engine | None = None
        self.rec: dict | None = None
        self.offset = 0.0
        self._clock0 = float(first["t0"])
        self._kernel_table: list[dict] | None = [] if first.get("lab_mode") == "kernel" else None
        self._kernel_at = 0.0
        self._kernel_events: list[str] = []
        self._events_before: list[str] = []
        self.last_table: list[dict] = []

    def _rec(self, scenario: str) -> dict:
        if scenario not in self.recs:
            self.recs[scenario] = load_recording(self.base, self.notebook, scenario)
        return self.recs[scenario]

    def recording(self, scenario: str) -> dict:
        """The recorded run of one scenario (the JSON written by ``nattrack record``)."""
        return self._rec(self.scenario(scenario).name)

    # -- scenario life -------------------------------------------------------------------------
    def _start(self, scenario: sc.Scenario) -> None:
        if scenario.simulated:
            if self.engine is not None:
                self._events_before = self.events()
            self.engine = simulation(scenario, self.now(), self.overrides)
            self.rec, self.offset, self.last_table = None, 0.0, []
            self._kernel_table = None
            from .live import Driver
            self.driver = Driver(scenario, self._engine_reply)
            return
        rec = self._rec(scenario.name)
        names = [s.name for s in scenario.steps]
        got = [s["name"] for s in rec["steps"]]
        if got != names:
            raise SessionError(f"the recording of {self.notebook}/{scenario.name} has steps "
                               f"{got}, the scenario {names}: record it again")
        if self.engine is not None:
            self._events_before = self.events()
        self.rec = rec
        self.engine = Engine(rec, self.overrides)
        self.offset = 0.0
        self.last_table: list[dict] = []
        self._kernel_table = [] if rec.get("lab_mode") == "kernel" else None

    def _reset(self) -> None:
        if self.engine is not None:
            self._events_before = self.events()
        self.engine, self.rec, self.offset = None, None, 0.0
        self.last_table = []
        self._kernel_events = []
        self._kernel_table = [] if self._kernel_table is not None else None

    def _engine_reply(self, proto: str, orig: dict) -> dict | None:
        from .session import find_entry
        e = find_entry(self.engine.table(), proto, orig)
        return e["reply"] if e else None

    def _step(self, scenario: sc.Scenario, step: sc.Step) -> StepResult:
        if scenario.simulated:
            r = simulate_step(self.engine, scenario, step, self.driver, self.last_table)
            self.last_table = r.table
            return r
        rs = self.rec["steps"][scenario.index(step.name)]
        eng = self.engine
        n0 = len(eng.events)
        before = eng.table()                  # as the step begins: time may have passed (advance)
        pairs = [PacketPair.from_json(p) for p in rs["packets"]]
        for pp in pairs:
            pp.t += self.offset               # when this replay's router sees it
            eng.feed(pp, pp.t)
        eng.until(rs["t"] + self.offset)
        table = eng.table()
        self._kernel_table = rs.get("kernel_table")
        self._kernel_at = self.now()
        self._kernel_events.extend(rs.get("kernel_events") or [])
        tr = transition(step_flow(scenario, step), before, table, pairs, eng.events[n0:])
        self.last_table = table
        return StepResult(step.name, pairs, tr, table,
                          self._kernel_table, eng.events[n0:], list(rs.get("kernel_events") or []),
                          t=self.now(), before=before)

    # -- views ------------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        return self.engine.table() if self.engine else []

    def kernel_table(self) -> list[dict] | None:
        return self._kernel_table

    def kernel_table_now(self) -> list[dict] | None:
        """The kernel's table as recorded at the end of the step, its timers run down
        by the time let pass since (``advance``): entries at zero are gone."""
        if self._kernel_table is None:
            return None
        age = int(max(0.0, self.now() - self._kernel_at))
        return [dict(e, timeout=e["timeout"] - age) for e in self._kernel_table
                if e.get("timeout") is None or e["timeout"] - age > 0]

    def events(self) -> list[str]:
        return self._events_before + (list(self.engine.events) if self.engine else [])

    def kernel_events(self) -> list[str]:
        return list(self._kernel_events)

    def now(self) -> float:
        return self.engine.clock() if self.engine else self._clock0 + self.offset

    def advance(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.offset += seconds
        if self.engine is not None:
            self.engine.until(self.engine.clock() + seconds)

    def sysctl_values(self) -> dict[str, int]:
        if self.engine is not None:
            return dict(self.engine.router.ct.sysctl)
        return {**super().sysctl_values(), **{k.rsplit(".", 1)[-1]: v
                                              for k, v in self.overrides.items()}}

    def set_sysctl(self, key: str, value: int) -> int:
        full, number = check_sysctl(key, value)
        self.overrides[full] = number
        if self.engine is not None:
            self.engine.router.ct.sysctl.set(full, number)
        return number
