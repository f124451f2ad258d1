"""The live backend: the classroom lab, through the lab service, as an ordinary user.

Each step's packets are built here (:func:`nattrack.lab.craft.build`, sequence and
acknowledgment numbers kept per connection, replies addressed from the tracker's
reply tuple) and sent from their node by the service's ``exec`` (a raw socket: the
service gives every exec CAP_NET_RAW).  While a step runs, the router's both sides
are captured (the ``capture`` verb); the tracker's and the kernel's ``conntrack -E``
streams are read all along by two threads; after the step both tables are listed.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from ..conntrack import show
from ..conntrack.tuple import ip2int
from ..lab import LabError, rpc
from ..lab.craft import SEND_SNIPPET
from ..packet.ipv4 import Packet
from ..packet.pcapio import CaptureReader, ip_offset
from . import scenarios as sc
from .engine import Engine, simulate_step, simulation
from .session import PacketPair, Session, SessionError, StepResult
from .steps import (Driver, check_sysctl, default_sysctl, find_entry, flow_orig, scope_events,
                    scope_table, step_flow, transition)

SETTLE_S = 0.15              # after a step's last packet: the router's answers, the shadow
CAPTURE_START_S, CAPTURE_END_S = 5.0, 15.0    # the capture verb's start, and end after a step
# The router records one capture at a time: another notebook's step holds it for about a
# second, so a step waits this long for its turn, then says so in one line.
CAPTURE_BUSY_S = 8.0
BUSY = "a capture is already running"


SCENARIO_SYSCTLS = {check_sysctl(k, v)[0] for scns in sc.SCENARIOS.values() for x in scns
                    if not x.simulated for k, v in x.sysctls.items()}


class _Busy(Exception):
    """The router's capture is another session's right now."""


class NoLiveLab(SessionError):
    """No classroom lab answers (the message says what to run)."""


START_HINT = ("start the classroom lab with `sudo nattrack notebook` (or `sudo nattrack lab up "
              "--topo classroom --mode kernel`)")


# --- the router's both sides -------------------------------------------------------------------

def pair_frames(frames: list, router_addrs: set[int]) -> list[PacketPair]:
    """Match each datagram that came in with its copy that left (on what NAT leaves alone,
    as the shadow tracker does); what the router sent itself stands alone."""
    from ..router.shadow import nat_invariant_key
    pairs: list[PacketPair] = []
    waiting: dict[tuple, list[PacketPair]] = {}
    for frame in frames:
        off = ip_offset(frame)
        if off is None:
            continue
        data = bytes(frame.data[off:])
        pkt = Packet.parse(bytearray(data))
        if pkt is None:
            continue
        data = data[:pkt.tot_len]
        if pkt.dst >> 28 == 0xE or pkt.dst == 0xFFFFFFFF:
            continue                              # a host's multicast chatter (IGMP reports)
        key = nat_invariant_key(pkt)
        q = waiting.get(key)
        if q and q[0].iface_in != frame.iface:
            pp = q.pop(0)
            pp.iface_out, pp.after, pp.verdict = frame.iface, data, "forwarded"
            continue
        if pkt.src in router_addrs:
            pairs.append(PacketPair(None, data, frame.iface, data, "sent by the router", frame.ts))
            continue
        pp = PacketPair(frame.iface, data, None, None,
                        "delivered" if pkt.dst in router_addrs else "dropped", frame.ts)
        pairs.append(pp)
        waiting.setdefault(key, []).append(pp)
    return pairs


class _Pump(threading.Thread):
    """Reads one event stream of the lab service into a list until stopped."""

    WHOSE = {"conntrack": "the tracker's", "kernel_conntrack": "the kernel's"}

    def __init__(self, path: Path, verb: str, args: dict, key: str) -> None:
        super().__init__(daemon=True, name=f"nattrack-notebook-{key}")
        self.path, self.verb, self.args, self.key = path, verb, args, key
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: str | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with rpc.Conn(self.path, 10.0, what="lab service") as c:
                c.send({"verb": self.verb, "args": self.args})
                c.settimeout(0.2)
                self.ready.set()
                while not self.stopping.is_set():
                    try:
                        msg = c.recv()
                    except rpc.Timeout:
                        continue
                    if msg is None:
                        break
                    if not msg.get("ok"):
                        self.error = msg.get("error")
                        break
                    if self.key in msg:
                        with self.lock:
                            self.lines.append(msg[self.key])
        except (LabError, OSError) as exc:
            self.error = str(exc)
        finally:
            self.ready.set()

    def failure(self) -> str | None:
        """Why this stream no longer delivers events (one line), None while it does."""
        what = f"{self.WHOSE.get(self.verb, self.verb)} event stream (conntrack -E)"
        if self.error:
            return f"{what} failed: {self.error}"
        if not self.ready.is_set():
            return f"{what} did not start"
        if not self.is_alive() and not self.stopping.is_set():
            return f"{what} ended: the lab service closed it"
        return None

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def clear(self) -> None:
        with self.lock:
            self.lines.clear()


def _parse_kernel(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        try:
            p = show.parse_conntrack_line(line)
            ct = show.conn_from_parsed(p, 0)
        except (KeyError, ValueError, IndexError):
            continue
        d = show.conn_json(ct, 0)
        d["id"] = p["id"]
        out.append(d)
    return out


# --- the session ----------------------------------------------------------------------------------

class LiveSession(Session):
    mode = "live"

    def __init__(self, notebook: str, client=None) -> None:
        super().__init__(notebook)
        from ..lab.client import LabClient, NoLab
        self.client = client or LabClient()
        try:
            hello = self.client.hello()
            status = self.client.status()
        except NoLab as exc:
            raise NoLiveLab(f"no lab is running: {START_HINT}") from exc
        except LabError as exc:                   # e.g. permission denied: what to do is in it
            raise NoLiveLab(f"the lab service cannot be used: {exc}") from exc
        if hello.get("topo") != sc.TOPOLOGY:
            raise NoLiveLab(f"the running lab is {hello.get('topo')!r}, the notebooks need "
                            f"{sc.TOPOLOGY!r}: stop it (`sudo nattrack lab down`), then {START_HINT}")
        self.lab_mode = hello.get("mode")
        self.kernel_mode = self.lab_mode == "kernel"
        self.router_addrs = {ip2int(c.split("/")[0]) for c in sc.ROUTER_IFACES.values()}
        rules = ((status.get("routers") or {}).get(sc.ROUTER_NODE) or {}).get("rules") or ""
        self.rules = Path(rules).stem
        self.label = (f"Live lab: {sc.TOPOLOGY} topology, {self.lab_mode} mode "
                      + ("(the kernel NATs, nattrack shadows it)" if self.kernel_mode else
                         "(nattrack's router NATs; the kernel's table stays empty)"))
        self.sysctls: dict[str, int] = {}
        self._pumps: list[_Pump] = []
        try:
            self._start_pumps()
        except SessionError as exc:
            raise NoLiveLab(str(exc)) from None
        self.last_table: list[dict] = []
        self.driver: Driver | None = None
        self.mirror = None
        self.sim: Engine | None = None          # a simulated scenario's engine

    # -- streams -----------------------------------------------------------------------------
    def _start_pumps(self) -> None:
        path = self.client.path
        self.py_events = _Pump(path, "conntrack", {"verb": "events", "args": {}}, "event")
        pumps = [self.py_events]
        self.k_events = None
        if self.kernel_mode:
            self.k_events = _Pump(path, "kernel_conntrack", {"request": {"command": "E"}}, "line")
            pumps.append(self.k_events)
        for p in pumps:
            p.start()
        for p in pumps:
            p.ready.wait(5)
        self._pumps = pumps
        time.sleep(0.2)                       # the router has registered the listener
        try:
            self._check_pumps()
        except SessionError:
            self._stop_pumps()
            raise

    def _check_pumps(self) -> None:
        """A stream that failed is a SessionError: a step without events would show
        tables that change for no reason."""
        for p in self._pumps:
            why = p.failure()
            if why:
                raise SessionError(f"{why}; restart the notebook's kernel (is the lab up? "
                                   f"`nattrack lab status`)")

    def _stop_pumps(self) -> None:
        for p in self._pumps:
            p.stopping.set()
        for p in self._pumps:
            p.join(2)
        self._pumps = []

    def _quiet(self, timeout: float = 1.5) -> None:
        """Wait until no new event came for 0.1 s (events travel asynchronously)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = sum(len(p.lines) for p in self._pumps)
            if n == last:
                return
            last = n
            time.sleep(0.1)

    # -- scenario life ---------------------------------------------------------------------------
    def _start(self, scenario: sc.Scenario) -> None:
        self.sim = None
        if scenario.simulated:                    # the engine alone (see Scenario.simulated)
            self.sim = simulation(scenario, time.time(), {})
            self.driver = Driver(scenario, self._reply_of)
            self.last_table = []
            return
        self.sysctls = {}
        self._ensure(scenario)
        self.sysctls = {check_sysctl(k, v)[0]: int(v) for k, v in scenario.sysctls.items()}
        self._scenario = scenario
        self._reset()
        self.driver = Driver(scenario, self._reply_of)
        self.mirror = self._mirror(scenario)

    def _ensure(self, scenario: sc.Scenario) -> list[str]:
        """What the scenario declares (its rules file, its settings and the defaults of
        the settings other scenarios change) put back where the lab no longer has it --
        another notebook on the same lab may have changed it: one line each."""
        notes = []
        try:
            status = self.client.status()
        except LabError as exc:
            raise SessionError(f"the lab service does not answer ({exc}): is the lab up? "
                               f"`nattrack lab status`") from None
        rules = ((status.get("routers") or {}).get(sc.ROUTER_NODE) or {}).get("rules") or ""
        self.rules = Path(rules).stem
        if scenario.rules != self.rules:
            # as iptables-restore does: entries, NAT bindings and event streams stay
            self.client.load_rules(scenario.rules, router=sc.ROUTER_NODE)
            notes.append(f"the router had the rules {self.rules or '?'}.rules (another notebook "
                         f"loaded them): loaded {scenario.rules}.rules again")
            self.rules = scenario.rules
        wanted = {check_sysctl(k, v)[0]: int(v) for k, v in scenario.sysctls.items()}
        for key in sorted(SCENARIO_SYSCTLS | set(wanted)):
            value = wanted.get(key, default_sysctl(key))
            now = self.client.sysctl(key, router=sc.ROUTER_NODE)
            if now != value:
                self.set_sysctl(key, value)
                if self.current is scenario:
                    notes.append(f"{key.rsplit('.', 1)[-1]} was {now} (another notebook set "
                                 f"it): set back to {value}")
        return notes

    def _reconnect(self) -> list[str]:
        """Event streams that ended (the router or the lab restarted) are opened again:
        one line saying so; a SessionError when that fails too."""
        why = next((p.failure() for p in self._pumps if p.failure()), None)
        if why is None:
            return []
        try:
            self._stop_pumps()
            self._start_pumps()
        except Exception as exc:                 # noqa: BLE001 -- reported in one line
            raise SessionError(f"{why}; reconnecting failed ({exc}): restart the notebook's "
                               f"kernel (is the lab up? `nattrack lab status`)") from None
        return [f"{why}: reconnected"]

    def _reply_of(self, proto: str, orig: dict) -> dict | None:
        e = find_entry(self.table(), proto, orig)
        return e["reply"] if e else None

    def _reset(self) -> None:
        self.sim = None
        scenario = getattr(self, "_scenario", None) or self.current
        if scenario is not None and not scenario.simulated:
            self._delete_flows(scenario)
        self._quiet()
        for p in self._pumps:
            p.clear()
        self.last_table = []
        self.driver = Driver(self.current, self._reply_of) if self.current else None
        self.mirror = self._mirror(self.current) if self.current else None

    def _delete_flows(self, scenario: sc.Scenario) -> None:
        """Delete this scenario's entries from both tables, and only those: other
        notebooks on the same lab keep theirs (each scenario has its own ports)."""
        for flow in scenario.flows.values():
            o = flow_orig(flow)
            filters = {"proto": flow.proto, "src": o["src"]}
            if flow.proto != "icmp":
                filters["sport"] = o["sport"]
            try:
                self.client.delete(filters, router=sc.ROUTER_NODE)
                if self.kernel_mode:
                    self.client.kernel_conntrack({"command": "D", "filters": filters},
                                                 router=sc.ROUTER_NODE)
            except LabError as exc:
                raise SessionError(f"clearing the entries of {flow.client}:{flow.cport} "
                                   f"failed: {exc}") from None

    def _mirror(self, scenario: sc.Scenario):
        """The engine fed with what the router saw: conntrack's verdict on each packet
        (NEW, ESTABLISHED, RELATED, INVALID), which the tables cannot show."""
        from ..lab import RULES_DIR
        try:
            text = (RULES_DIR / f"{scenario.rules}.rules").read_text()
        except OSError:
            return None                   # a copy of the package without examples/: no verdicts
        return Engine({"rules": scenario.rules, "rules_text": text, "sysctls": dict(self.sysctls),
                       "t0": time.time(),
                       "router": {"ifaces": sc.ROUTER_IFACES, "routes": sc.ROUTER_ROUTES}}, {})

    def _step(self, scenario: sc.Scenario, step: sc.Step) -> StepResult:
        if self.sim is not None:
            r = simulate_step(self.sim, scenario, step, self.driver, self.last_table)
            self.last_table = r.table
            return r
        notes = self._reconnect()
        notes += self._ensure(scenario)
        self._check_pumps()
        if self.driver is None or self.driver.scenario is not scenario:
            self.driver = Driver(scenario, self._reply_of)
        ev0 = len(self.py_events.lines)
        kev0 = len(self.k_events.lines) if self.k_events else 0
        before = scope_table(scenario, self.table())   # as the step begins (time may have passed)
        frames = self._capture(lambda: self._actions(step))
        pairs = pair_frames(frames, self.router_addrs)
        table = scope_table(scenario, self.table())
        kernel = self.kernel_table()
        self._quiet()
        self._check_pumps()                       # the events of this step are all there
        self.last_table = table
        if self.mirror is not None:
            for pp in pairs:
                self.mirror.feed(pp, pp.t)
        events = scope_events(scenario, self.py_events.snapshot()[ev0:])
        res = StepResult(step.name, pairs, transition(step_flow(scenario, step), before, table,
                                                      pairs, events),
                         table, None if kernel is None else scope_table(scenario, kernel), events,
                         scope_events(scenario, self.k_events.snapshot()[kev0:])
                         if self.k_events else [], t=self.now(), before=before, notes=notes)
        res.frames = frames
        return res

    def _actions(self, step: sc.Step) -> None:
        for a in step.actions:
            if "send" in a:
                assert self.driver is not None        # _start() made it
                node, pkt = self.driver.packet(a)
                r = self.client.exec(node, ["python3", "-c", SEND_SNIPPET, pkt.hex()], timeout=20)
                if r.returncode != 0:
                    raise SessionError(f"sending from {node} failed: {r.stderr.strip()}")
            elif "wait" in a:
                time.sleep(float(a["wait"]))
            elif "sysctl" in a:
                for k, v in a["sysctl"].items():
                    self.set_sysctl(k, v)
        time.sleep(SETTLE_S)

    def _capture(self, body) -> list:
        """Run ``body()`` while the router's both sides are recorded; the frames.  The
        router records one capture at a time: while another notebook's step holds it,
        wait for the turn (up to CAPTURE_BUSY_S), then say so in one line."""
        deadline = time.monotonic() + CAPTURE_BUSY_S
        while True:
            try:
                return self._capture_once(body)
            except _Busy:
                if time.monotonic() > deadline:
                    raise SessionError(f"another notebook's step has held the router's capture "
                                       f"for {CAPTURE_BUSY_S:g} s (one step captures at a "
                                       f"time): press the button again") from None
                self.progress("waiting for another notebook's step to finish ...")
                time.sleep(0.3)

    def _capture_once(self, body) -> list:
        started, done = threading.Event(), threading.Event()
        fd, path = tempfile.mkstemp(prefix="nattrack-step-", suffix=".pcapng")
        os.close(fd)
        box: dict = {}

        def capture():
            try:
                box["res"] = self.client.capture(path, router=sc.ROUTER_NODE,
                                                 started=started.set, stop=done.is_set)
            except BaseException as exc:       # noqa: BLE001 -- reported below
                box["err"] = exc
                started.set()

        t = threading.Thread(target=capture, daemon=True, name="nattrack-notebook-capture")
        t.start()
        try:
            if not started.wait(CAPTURE_START_S) or not t.is_alive():
                if "err" in box:
                    if BUSY in str(box["err"]):
                        raise _Busy()
                    raise SessionError(f"capture failed: {box['err']}")
                raise SessionError(f"the capture did not start within {CAPTURE_START_S:g} s, "
                                   f"so the step was not run: try again; if it persists, "
                                   f"restart the lab (`sudo nattrack notebook`)")
            body()
        finally:
            done.set()
            t.join(CAPTURE_END_S)
        try:
            if t.is_alive():
                raise SessionError(f"the capture did not end within {CAPTURE_END_S:g} s after "
                                   f"the step: its packets are not shown; restart the lab "
                                   f"(`sudo nattrack notebook`)")
            if "err" in box:
                raise SessionError(f"capture failed: {box['err']}")
            reader = CaptureReader(path)
            try:
                return list(reader)
            finally:
                reader.close()
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- views ---------------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        if self.sim is not None:
            return self.sim.table()
        return self.client.list_json(router=sc.ROUTER_NODE)

    def kernel_table(self) -> list[dict] | None:
        if not self.kernel_mode or self.sim is not None:
            return None
        return _parse_kernel(self.client.kernel_list(router=sc.ROUTER_NODE))

    def events(self) -> list[str]:
        return self.py_events.snapshot() + (list(self.sim.events) if self.sim is not None else [])

    def kernel_events(self) -> list[str]:
        return self.k_events.snapshot() if self.k_events else []

    def now(self) -> float:
        return time.time()

    def sysctl_values(self) -> dict[str, int]:
        if self.sim is not None:
            return dict(self.sim.router.ct.sysctl)
        return {**super().sysctl_values(),
                **{k.rsplit(".", 1)[-1]: v for k, v in self.sysctls.items()}}

    def advance(self, seconds: float) -> None:
        time.sleep(max(0.0, float(seconds)))
        if self.sim is not None:
            self.sim.until(self.sim.clock() + max(0.0, float(seconds)))

    def set_sysctl(self, key: str, value: int) -> int:
        full, number = check_sysctl(key, value)
        if self.sim is not None:
            self.sim.router.ct.sysctl.set(full, number)
            return number
        try:
            got = self.client.sysctl(full, number, router=sc.ROUTER_NODE)
        except LabError as exc:
            raise SessionError(f"{full}={number}: {exc}") from None
        self.sysctls[full] = number
        if self.mirror is not None:
            self.mirror.router.ct.sysctl.set(full, number)
        return got

    def close(self) -> None:
        """Stop reading events; settings this session changed go back to their defaults."""
        self._stop_pumps()
        for key in list(self.sysctls):
            try:
                self.client.sysctl(key, default_sysctl(key), router=sc.ROUTER_NODE)
            except LabError:
                pass
        self.sysctls = {}
