"""Recorded sessions (the notebooks' "replay" mode): a recorded lab run, no lab needed.

``notebooks/recordings/<notebook>/<scenario>.json`` (written by ``nattrack record``)
holds, per step, the datagrams on both sides of the router, the tracker's and the
kernel's table and events; ``<scenario>.pcapng`` the same frames for Wireshark.

The kernel's side is shown as recorded.  The tracker's side is computed again: the
recorded ingress datagrams go through the engine (:class:`.engine.Engine`: a
:class:`~nattrack.ipv4.stack.Router` on a :class:`~nattrack.replay.ManualClock`) at
their recorded times, each bound to the
NAT choice the kernel made (``nat_forced(table)``, as the shadow tracker does), so
``advance()`` makes timeouts run down and the gc worker reap for real.  The tests check
that this recomputation gives the recorded tables and events.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..lab import REPO_ROOT
from . import scenarios as sc
from .engine import Engine, simulate_step, simulation
from .session import PacketPair, Session, SessionError, StepResult
from .steps import Driver, check_sysctl, find_entry, step_flow, transition

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


class RecordedSession(Session):
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
        self.last_table = []
        self._kernel_table = [] if rec.get("lab_mode") == "kernel" else None

    def _reset(self) -> None:
        if self.engine is not None:
            self._events_before = self.events()
        self.engine, self.rec, self.offset = None, None, 0.0
        self.last_table = []
        self._kernel_events = []
        self._kernel_table = [] if self._kernel_table is not None else None

    def _engine_reply(self, proto: str, orig: dict) -> dict | None:
        e = find_entry(self.engine.table(), proto, orig) if self.engine is not None else None
        return e["reply"] if e else None

    def _step(self, scenario: sc.Scenario, step: sc.Step) -> StepResult:
        eng, rec = self.engine, self.rec
        assert eng is not None                       # run() started the scenario
        if scenario.simulated:
            r = simulate_step(eng, scenario, step, self.driver, self.last_table)
            self.last_table = r.table
            return r
        assert rec is not None
        rs = rec["steps"][scenario.index(step.name)]
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
