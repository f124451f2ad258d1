"""The notebooks' data source: one :class:`Session` API, a live and a replay backend.

    from nattrack.notebook import open_session
    s = open_session("01-tcp-states")            # live if a lab answers, else replay
    r = s.run("handshake", "SYN")                # -> StepResult
    r.transition, r.table, r.kernel_table, r.events, r.packets[0].after
    s.advance(30); s.table(); s.events()

Tables are lists of dicts in the JSON form of ``nattrack.conntrack.show.conn_json``
(what ``nattrack conntrack -L --json`` prints), remaining timeouts as of ``s.now()``;
events are ``conntrack -E`` lines.  The kernel's side comes from the router's own
conntrack (live) or from the recording (replay).

This module is the interface only: the types and the :class:`Session` every backend
implements.  ``open_session`` (the package) picks a backend: :mod:`.live` or :mod:`.recorded`;
what both do to run a step is in :mod:`.steps` and :mod:`.engine`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..conntrack.sysctl import DEFAULTS
from . import scenarios as sc

MODE_ENV = "NATTRACK_NOTEBOOK_MODE"


class SessionError(Exception):
    """A problem to report in one line (what is wrong and what to do)."""


@dataclass
class PacketPair:
    """One datagram at the router: as it came in (``before``, on ``iface_in``) and as it
    left (``after`` on ``iface_out``; None when it did not leave).  A packet the router
    sent itself (an ICMP error) has ``iface_in`` None and ``before`` equal to ``after``."""
    iface_in: str | None
    before: bytes
    iface_out: str | None
    after: bytes | None
    verdict: str                    # "forwarded", "dropped", "delivered", "sent by the router"
    t: float = 0.0                  # when the router saw it (epoch seconds)
    ctinfo: str = ""                # conntrack's verdict: NEW, ESTABLISHED, RELATED (_REPLY), INVALID

    def to_json(self) -> dict:
        return {"iface_in": self.iface_in, "before": self.before.hex(), "iface_out": self.iface_out,
                "after": self.after.hex() if self.after is not None else None,
                "verdict": self.verdict, "t": self.t, "ctinfo": self.ctinfo}

    @classmethod
    def from_json(cls, d: dict) -> "PacketPair":
        return cls(d["iface_in"], bytes.fromhex(d["before"]), d["iface_out"],
                   bytes.fromhex(d["after"]) if d["after"] is not None else None,
                   d["verdict"], d.get("t", 0.0), d.get("ctinfo", ""))


@dataclass
class Transition:
    """The tracker entry's TCP state before and after the step's last packet of the flow."""
    old_state: str
    new_state: str
    direction: str                  # "ORIGINAL" | "REPLY"
    flag: str                       # "SYN", "SYN-ACK", "ACK", "FIN", "RST", "data"

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class StepResult:
    step: str
    packets: list[PacketPair] = field(default_factory=list)
    transition: Transition | None = None
    table: list[dict] = field(default_factory=list)
    kernel_table: list[dict] | None = None
    events: list[str] = field(default_factory=list)
    kernel_events: list[str] = field(default_factory=list)
    scenario: str = ""
    t: float = 0.0                  # the session clock when the step was over
    before: list[dict] = field(default_factory=list)   # the tracker's table as the step began
    notes: list[str] = field(default_factory=list)     # what the session had to put back first
    frames: list[Any] = field(default_factory=list, repr=False)   # live: the capture (record)


# --- the API ---------------------------------------------------------------------------------

class Session:
    """What every backend offers (see the module docstring)."""

    mode = ""
    label = ""

    why_not_live = ""               # replay sessions: why this is not live (one line)
    on_progress: Callable[[str], None] | None = None   # a panel's status line while a step waits

    def progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)

    def __init__(self, notebook: str) -> None:
        self.notebook = notebook
        self._scenarios = sc.notebook_scenarios(notebook)
        self.current: sc.Scenario | None = None
        self.next_index = 0
        self.results: list[StepResult] = []

    # -- scenarios ------------------------------------------------------------------------
    def scenarios(self) -> list[sc.Scenario]:
        return list(self._scenarios)

    def scenario(self, name: str | sc.Scenario) -> sc.Scenario:
        if isinstance(name, sc.Scenario):
            return name
        for s in self._scenarios:
            if s.name == name:
                return s
        raise SessionError(f"{self.notebook} has no scenario {name!r}: scenarios are "
                           f"{', '.join(s.name for s in self._scenarios)}")

    def run(self, scenario: str | sc.Scenario, step: str | None = None) -> StepResult:
        """Perform ``step`` of ``scenario`` (default: its next step).  Steps before it that
        have not run yet run first; running an earlier step again, or another scenario,
        starts the scenario over from a reset."""
        scn = self.scenario(scenario)
        if step is None:
            if self.current is not scn or self.next_index >= len(scn.steps):
                index = 0
            else:
                index = self.next_index
        else:
            try:
                index = scn.index(step.name if isinstance(step, sc.Step) else step)
            except KeyError as exc:
                raise SessionError(str(exc.args[0])) from None
        if self.current is not scn or index < self.next_index:
            self._start(scn)
            self.current, self.next_index = scn, 0
        result = None
        while self.next_index <= index:
            st = scn.steps[self.next_index]
            result = self._step(scn, st)
            result.scenario = scn.name
            self.results.append(result)
            self.next_index += 1
        assert result is not None                  # index >= next_index: one step ran at least
        return result

    def run_all(self, scenario: str | sc.Scenario) -> list[StepResult]:
        scn = self.scenario(scenario)
        self._start(scn)
        self.current, self.next_index = scn, 0
        return [self.run(scn, st.name) for st in scn.steps]

    def reset(self) -> None:
        """Live: flush both tables; replay: rewind to before the first step."""
        self.current, self.next_index = None, 0
        self._reset()

    # -- backends implement -------------------------------------------------------------------
    def _start(self, scenario: sc.Scenario) -> None:
        raise NotImplementedError

    def _step(self, scenario: sc.Scenario, step: sc.Step) -> StepResult:
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError

    def table(self) -> list[dict]:
        raise NotImplementedError

    def kernel_table(self) -> list[dict] | None:
        raise NotImplementedError

    def events(self) -> list[str]:
        raise NotImplementedError

    def kernel_events(self) -> list[str]:
        raise NotImplementedError

    def kernel_table_now(self) -> list[dict] | None:
        """The kernel's table as of now (replay: the recording, its timers run down)."""
        return self.kernel_table()

    def now(self) -> float:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def set_sysctl(self, key: str, value: int) -> int:
        raise NotImplementedError

    def sysctl_values(self) -> dict[str, int]:
        """The tracker's settings in force (short kernel names), for the narration."""
        return dict(DEFAULTS)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.notebook} {self.mode}: {self.label}>"


# widgets.views.GRADING_VARS, read here without importing ipywidgets (a session needs none)
GRADING_VARS = ("NATTRACK_GRADING", "NBGRADER_EXECUTION")


def grading_run() -> bool:
    """A grader executes the notebook (NATTRACK_GRADING or NBGRADER_EXECUTION is set)."""
    return any(os.environ.get(v) for v in GRADING_VARS)


# The syntax rules are shown in: a teacher sets NATTRACK_RULES_SYNTAX once for the class
# (nft or iptables), or a notebook calls set_syntax(); iptables by default.
SYNTAX_ENV = "NATTRACK_RULES_SYNTAX"
SYNTAXES = ("iptables", "nft")
_chosen_syntax: list[str] = []


def set_syntax(syntax: str | None) -> None:
    """Show rules in ``syntax`` ("iptables" or "nft") from now on in this kernel; None goes
    back to $NATTRACK_RULES_SYNTAX (else iptables)."""
    if syntax is not None and syntax not in SYNTAXES:
        raise SessionError(f"syntax {syntax!r}: iptables or nft")
    _chosen_syntax[:] = [syntax] if syntax else []


def rules_syntax() -> str:
    """"iptables" or "nft": set_syntax()'s choice, else $NATTRACK_RULES_SYNTAX, else iptables."""
    if _chosen_syntax:
        return _chosen_syntax[0]
    env = os.environ.get(SYNTAX_ENV, "").strip().lower()
    if env and env not in SYNTAXES:
        raise SessionError(f"{SYNTAX_ENV}={env}: iptables or nft")
    return env or "iptables"
