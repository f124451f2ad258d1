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
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

from ..conntrack import show
from ..conntrack.sysctl import DEFAULTS, Sysctl
from ..conntrack.tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from ..packet.ipv4 import TH_ACK, TH_FIN, TH_RST, TH_SYN, Packet
from . import scenarios as sc

MODE_ENV = "NATTRACK_NOTEBOOK_MODE"
PROTO_NUM = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}


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


# --- helpers shared by the backends ---------------------------------------------------------

def _ip(text: str) -> int:
    return struct.unpack("!I", socket.inet_aton(text))[0]


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
    return (PROTO_NUM[proto], _ip(t["src"]), t.get("sport"), _ip(t["dst"]), t.get("dport"))


def transition(flow: sc.Flow | None, before: list[dict], after: list[dict],
               packets: list[PacketPair], events: list[str] = ()) -> Transition | None:
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
        p = Packet.parse(bytearray(pp.before))
        if p is None or not p.l4ok or p.proto != IPPROTO_TCP:
            continue
        t = (p.proto, p.src, p.sport, p.dst, p.dport)
        if t == o:
            last = ("ORIGINAL", p)
        elif t == r:
            last = ("REPLY", p)
    if last is None:
        return None
    direction, p = last
    return Transition(seq[-2] if len(seq) > 1 else seq[-1], seq[-1], direction,
                      tcp_flag_name(p.tcpflags, p.payload_len))


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


# --- the API ---------------------------------------------------------------------------------

class Session:
    """What every backend offers (see the module docstring)."""

    mode = ""
    label = ""

    why_not_live = ""               # replay sessions: why this is not live (one line)
    on_progress = None              # a panel's status line while a step waits: fn(one line)

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


def _grading() -> bool:
    return any(os.environ.get(v) for v in GRADING_VARS)


def open_session(notebook: str, mode: str = "auto", *, client=None,
                 recordings: str | os.PathLike | None = None) -> Session:
    """``mode``: "auto" (live when a lab service answers and NATTRACK_NOTEBOOK_MODE is not
    "replay", else replay), "live" or "replay"; under grading (NATTRACK_GRADING or
    NBGRADER_EXECUTION set) always replay, the reason in ``why_not_live``.  ``client``: a
    LabClient (default: the lab socket); ``recordings``: where replay finds
    notebooks/recordings/."""
    if notebook not in sc.SCENARIOS:
        raise SessionError(f"no notebook {notebook!r}: known are {', '.join(sc.NOTEBOOKS)}")
    if mode not in ("auto", "live", "replay"):
        raise SessionError(f"mode {mode!r}: auto, live or replay")
    env = os.environ.get(MODE_ENV, "").strip().lower()
    why = 'mode="replay"'
    if _grading():
        # A grader executes the notebook: a recorded run is the same for every student and
        # needs no background thread (a live session reads the event streams in two).  This
        # wins over NATTRACK_NOTEBOOK_MODE and an explicit mode="live": a graded notebook
        # must still run, so it replays and says why.
        why = "a grading run (NATTRACK_GRADING or NBGRADER_EXECUTION is set)"
        if mode == "live" or (mode == "auto" and env == "live"):
            why += ": replay instead of the live lab"
        mode = "replay"
    elif mode == "auto" and env in ("live", "replay"):
        mode, why = env, f"{MODE_ENV}={env}"
    if mode in ("auto", "live"):
        from .live import LiveSession, NoLiveLab
        try:
            return LiveSession(notebook, client=client)
        except NoLiveLab as exc:
            if mode == "live":
                raise SessionError(str(exc)) from None
            why = str(exc)
    from .replay import ReplaySession
    s = ReplaySession(notebook, recordings=recordings)
    s.why_not_live = why
    return s
