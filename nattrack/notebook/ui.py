"""The notebooks' panels: a Session's scenarios wired to the views of nattrack.widgets.

A notebook cell stays one or two lines::

    from nattrack.notebook import open_session, ui
    s = open_session("01-tcp-states", MODE); ui.banner(s)
    p = ui.stepper(s, "handshake"); p          # buttons, one per step, for the class
    p.run_all()                                 # ... and every step from code (headless runs)

:class:`Stepper` shows, after each step: the step's explanation, the TCP state
diagram with the transition just taken (TCP scenarios), the tracker's table, the
kernel's table beside it (when the lab or the recording has the kernel's side), the
step's packets before and after the router, the events (``conntrack -E``) of both,
and the path so far (a :class:`StepLog`).  :func:`timeouts_panel` adds a countdown
chart and time controls; :func:`live_table` follows the tracker's table on its own.

Buttons call the same methods as code.  Views are only ever updated by setting widget
values; background refresh uses :class:`nattrack.widgets.Updater`, which starts no
thread under grading (NATTRACK_GRADING / NBGRADER_EXECUTION).  Every panel's views
are flushed at the end of a call, so a headless run stores their final values.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

import ipywidgets as widgets

from ..conntrack.tuple import Tuple, invert_tuple
from ..lab import LabError
from ..packet.ipv4 import ICMP_ERROR_TYPES
from ..widgets import (ComparisonView, ConntrackTableView, EventLogView, ModeBanner, PacketView,
                       StateDiagramView, TimelineView, Updater, grading_mode, step_buttons)
from ..widgets.render import _wrap, esc
from . import narrate as nar
from . import scenarios as sc
from .session import Session, SessionError, StepResult, rules_syntax
from .session import set_syntax as set_syntax  # ui.set_syntax("nft"): for the class
from .steps import find_entry, flow_orig, scope_events, scope_table, step_flow

IFACE_SIDE = {"ntr-lan": "LAN side", "ntr-wan": "WAN side"}


def _side(iface: str | None) -> str:
    return f"{iface} ({IFACE_SIDE[iface]})" if iface in IFACE_SIDE else str(iface)


def packet_labels(pp) -> tuple[str, str]:
    """Column titles of the before/after view for one PacketPair."""
    if pp.iface_in is None:
        return f"sent by the router on {_side(pp.iface_out)}", "(as sent)"
    after = f"out on {_side(pp.iface_out)}" if pp.after is not None else f"{pp.verdict}"
    return f"in on {_side(pp.iface_in)}", after


def _json_tuple(proto: str, t: dict) -> Tuple | None:
    try:
        if proto == "icmp":
            return Tuple.icmp(t["src"], t["dst"], t.get("type", 0), t.get("code", 0), t.get("id", 0))
        return Tuple.make(t["src"], t["dst"], proto, t.get("sport", 0), t.get("dport", 0))
    except (KeyError, ValueError):
        return None


def step_entries(res: StepResult, before: list[dict] | None = None) -> list[dict]:
    """Every entry the step's packets could have belonged to: the tables before and
    after the step and the entries its events name (one created and destroyed within
    the step, like a SYN answered by a RST, is in no table)."""
    from ..conntrack.show import parse_conntrack_line
    out = list(before or []) + list(res.table or [])
    for line in res.events:
        try:
            p = parse_conntrack_line(line)
        except (KeyError, ValueError, IndexError):
            continue
        out.append({"proto": p["proto_name"], "orig": p["orig"], "reply": p["reply"]})
    return out


def ctstates(res: StepResult, before: list[dict] | None = None) -> list[str]:
    """Each packet of the step as ``-m conntrack --ctstate`` names it (NEW, ESTABLISHED,
    RELATED, INVALID): conntrack's own verdict on it, ``PacketPair.ctinfo`` (which the
    replay engine and the live session's mirror compute, nf_conntrack_in()), with
    ``_REPLY`` folded (the match has no direction); for a packet without one, the
    guess of :func:`guess_ctstates`."""
    guess: list[str] | None = None
    out = []
    for i, pp in enumerate(res.packets):
        if pp.ctinfo:
            out.append(pp.ctinfo.removesuffix("_REPLY"))
            continue
        if guess is None:
            guess = guess_ctstates(res, before)
        out.append(guess[i])
    return out


def guess_ctstates(res: StepResult, before: list[dict] | None = None) -> list[str]:
    """Each packet's --ctstate ("" when the tables cannot tell), read from the entries
    around the step the way nf_conntrack_in() decides:

    * an ICMP error whose quoted packet, inverted, is an entry's tuple is RELATED
      (icmp_error(), nf_conntrack_icmpv4_error()); so is the router's own error about
      a packet of an entry: icmp_send() attaches that entry to it (nf_ct_attach() in
      icmp_glue_bits());
    * a packet on an entry's reply tuple, or on its original tuple once a reply was
      seen, is ESTABLISHED; on the original tuple before any reply, NEW;
    * a packet that crossed the router with no entry was INVALID: it got none, and so
      no NAT either (a dropped one may be INVALID or an unconfirmed NEW: "").
    """
    from ..conntrack.tuple import get_tuple
    from ..packet.ipv4 import IPPROTO_ICMP, Packet
    entries = step_entries(res, before)
    where: dict[Tuple | None, tuple[str, int]] = {}
    for i, e in enumerate(entries):
        proto = e.get("proto", "")
        where.setdefault(_json_tuple(proto, e["orig"]), ("ORIGINAL", i))
        where.setdefault(_json_tuple(proto, e["reply"]), ("REPLY", i))
    replied = {i for i, e in enumerate(before or []) if not e.get("unreplied", True)}
    out = []
    for pp in res.packets:
        p = Packet.parse(bytearray(pp.before))
        if p is None:
            out.append("")
            continue
        if p.proto == IPPROTO_ICMP and p.itype in ICMP_ERROR_TYPES:
            inner = p.embedded_packet()
            t = get_tuple(inner) if inner is not None and inner.l4ok else None
            inv = invert_tuple(t) if t is not None else None
            own = pp.iface_in is None and t in where
            out.append("RELATED" if (inv is not None and inv in where) or own else "")
            continue
        found = where.get(get_tuple(p))
        if found is not None:
            direction, i = found
            if direction == "REPLY":
                replied.add(i)
                out.append("ESTABLISHED")
            else:
                out.append("ESTABLISHED" if i in replied else "NEW")
        elif pp.verdict == "forwarded" and p.proto in (6, 17):
            out.append("INVALID")
        else:
            out.append("")
    return out


def _end_of(lines: list[str], block: list[str]) -> int:
    """Where ``block`` (a step's events) ends in ``lines`` (all the session's events):
    what came after it, while the step was being drawn, is left for the next refresh."""
    n = len(block)
    for k in range(len(lines) - n, -1, -1) if n else ():
        if lines[k:k + n] == block:
            return k + n
    return len(lines)


def packet_title(i: int, pp, how: str = "") -> str:
    from ..packet.ipv4 import Packet
    p = Packet.parse(bytearray(pp.before))
    what = p.summary() if p is not None else f"{len(pp.before)} bytes"
    return f"{i + 1}. {what} [{pp.verdict}{', ' + how if how else ''}]"


def banner(session: Session) -> ModeBanner:
    """The mode this notebook runs in (live lab or recording), for its first cell."""
    b = ModeBanner()
    why = getattr(session, "why_not_live", "") if session.mode == "replay" else ""
    b.update(session.mode, f"{session.label}. Not live: {why}" if why else session.label)
    b.flush()
    return b


def _flush(views: Iterable[Any]) -> None:
    for v in views:
        if v is not None and hasattr(v, "flush"):
            v.flush()


class StepLog:
    """The steps run so far and the transition each one made, as a small table.

    Its root element carries ``data-view="steps"``, ``data-scenario``, ``data-steps``
    (names, comma-separated), ``data-transitions`` (``OLD>NEW`` per TCP step),
    ``data-states`` (the entry's state after each step, ``-`` when there is none),
    ``data-verdicts`` (every packet's verdict, ``;`` between steps); each row has
    ``data-step``, ``data-transition``, ``data-dir``, ``data-flag``.
    """

    def __init__(self, scenario: sc.Scenario) -> None:
        self.scenario = scenario
        self.rows: list[dict] = []
        self.widget = widgets.HTML(value="")
        self._draw()

    def clear(self) -> None:
        self.rows = []
        self._draw()

    def add(self, res: StepResult, state: str | None, before: list[dict] | None = None) -> None:
        tr = res.transition
        how = ctstates(res, before)
        self.rows.append({"step": res.step, "transition": f"{tr.old_state}>{tr.new_state}" if tr
                          else "", "dir": tr.direction if tr else "", "flag": tr.flag if tr else "",
                          "state": state or "-",
                          "verdicts": ",".join(p.verdict + (f" {h}" if h else "")
                                               for p, h in zip(res.packets, how)),
                          "ct": ",".join(h for h in how if h)})
        self._draw()

    @property
    def state(self) -> dict:
        return {"view": "steps", "scenario": self.scenario.name,
                "steps": [r["step"] for r in self.rows],
                "transitions": [r["transition"] for r in self.rows if r["transition"]],
                "states": [r["state"] for r in self.rows],
                "verdicts": ";".join(r["verdicts"] for r in self.rows),
                "ct": ";".join(r["ct"] for r in self.rows)}

    def _draw(self) -> None:
        rows = ["<tr><th>step</th><th>packet</th><th>transition</th><th>state after</th>"
                "<th>packets at the router</th></tr>"]
        for r in self.rows:
            arrow = r["transition"].replace(">", " → ") if r["transition"] else ""
            packet = " ".join(x for x in (r["dir"].lower(), r["flag"]) if x)
            rows.append(f'<tr data-step="{esc(r["step"])}" data-transition="{esc(r["transition"])}"'
                        f' data-dir="{esc(r["dir"])}" data-flag="{esc(r["flag"])}"'
                        f' data-ct="{esc(r["ct"])}">'
                        f'<td>{esc(r["step"])}</td><td>{esc(packet)}</td><td>{esc(arrow)}</td>'
                        f'<td>{esc(r["state"])}</td><td>{esc(r["verdicts"])}</td></tr>')
        body = "<table>" + "".join(rows) + "</table>" if self.rows else \
            '<div class="nt-note">no step yet: press a button</div>'
        self.widget.value = _wrap("steps", body, self.state, "steps so far")

    def flush(self) -> None:
        pass


class Stepper:
    """One scenario of a notebook, step by step: buttons and views.

    ``run(step)`` (or the step's button) performs a step and the steps before it that
    have not run yet; ``run_all()`` starts over and runs every step; ``reset()``
    empties the tables (live) or rewinds the recording (replay).
    """

    def __init__(self, session: Session, scenario: str, *, diagram: bool | None = None,
                 timeline: bool = False, horizon: float = 30.0, packets: bool = True) -> None:
        self.session = session
        self.scenario = session.scenario(scenario)
        flows = self.scenario.flows.values()
        self.tcp = any(f.proto == "tcp" for f in flows) if diagram is None else diagram
        self.results: list[StepResult] = []
        self._packets: list = []
        # The event log has one writer at a time: a step (run, reset) holds this lock and
        # appends its own events; a background refresh appends the events that came
        # between steps, and skips while a step holds it (never the same line twice).
        self._ev_lock = threading.RLock()
        self._ev_seen = 0

        self.waited = 0.0                  # seconds let pass (+N s) since the last step
        self.diagram = StateDiagramView(timeouts=self._tcp_timeouts()) if self.tcp else None
        self.table = ConntrackTableView(title="nattrack's tracker: its connection table")
        self.compare = ComparisonView(title="the tracker and the router's kernel, entry by entry")
        self.packet = PacketView(title="the packet before and after the router") if packets else None
        self.events = EventLogView(title="tracker events (conntrack -E)")
        self.kernel_events = EventLogView(title="kernel events (conntrack -E in the router)")
        self.timeline = TimelineView(horizon=horizon, title="time left for each entry") \
            if timeline else None
        self.log = StepLog(self.scenario)
        for role, v in self._roles().items():          # how tests find each view
            v.widget.add_class(f"nattrack-role-{role}")

        self.explain = widgets.HTML(value=self._explain_html(None))
        self.status = widgets.HTML(value="")
        self.buttons, self.next_button, self.reset_button = step_buttons(
            self, [(st.name, st.title) for st in self.scenario.steps])
        self.picker = widgets.Dropdown(options=[], description="packet",
                                       layout=widgets.Layout(width="98%"))
        self.picker.observe(self._pick, names="value")
        self.widget = self._layout()
        self._kernel_side(None)

    # -- layout -------------------------------------------------------------------------------
    def _layout(self) -> widgets.Widget:
        head = widgets.HTML(value=f"<h3>{esc(self.scenario.title)}</h3>"
                            + (f"<p>{esc(self.scenario.intro)}</p>" if self.scenario.intro else ""))
        controls = widgets.HBox([self.next_button, *self.buttons, self.reset_button],
                                layout=widgets.Layout(flex_flow="row wrap"))
        for v in (self.table, self.compare, self.events, self.kernel_events):
            v.widget.layout = widgets.Layout(overflow="auto")
        tables = widgets.VBox([self.table.widget, self.compare.widget],
                              layout=widgets.Layout(flex="1 1 52%", min_width="380px"))
        if self.diagram is not None:
            self.diagram.widget.layout = widgets.Layout(flex="0 1 48%", min_width="380px")
            middle = widgets.HBox([self.diagram.widget, tables],
                                  layout=widgets.Layout(flex_flow="row wrap",
                                                        align_items="flex-start"))
        else:
            middle = tables
        parts: list[widgets.Widget] = [head, controls, self.status, self.explain, middle]
        if self.timeline is not None:
            parts.append(self.timeline.widget)
        if self.packet is not None:
            parts += [self.picker, self.packet.widget]
        for v in (self.events, self.kernel_events):
            v.widget.layout = widgets.Layout(flex="1 1 45%", min_width="380px", overflow="auto")
        parts += [widgets.HBox([self.events.widget, self.kernel_events.widget],
                               layout=widgets.Layout(flex_flow="row wrap")), self.log.widget]
        return widgets.VBox(parts)

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def _tcp_timeouts(self) -> dict[str, int]:
        """The scenario's TCP timeouts (sysctl names), shown under the diagram's states."""
        return {k.rsplit(".", 1)[-1]: int(v) for k, v in self.scenario.sysctls.items()
                if "tcp_timeout" in k}

    def _roles(self) -> dict[str, Any]:
        roles = {"diagram": self.diagram, "table": self.table, "compare": self.compare,
                 "packet": self.packet, "events": self.events,
                 "kernel-events": self.kernel_events, "timeline": self.timeline,
                 "steps": self.log}
        return {k: v for k, v in roles.items() if v is not None}

    def views(self) -> list[Any]:
        return [v for v in (self.diagram, self.table, self.compare, self.packet, self.events,
                            self.kernel_events, self.timeline, self.log) if v is not None]

    def _explain_html(self, step: sc.Step | None, story: nar.Narration | None = None,
                      expected: dict | None = None, notes: Iterable[str] = ()) -> str:
        """The step's text: what happened (computed, :mod:`.narrate`), then the script's
        expectation, marked when this run differs from it.  Its ``data-*`` say the same
        for tests: ``step``, ``flow``, ``present``, ``state``, ``flags``, ``timeout``,
        ``timeout-key``, ``expected``, ``differs``, ``end``, ``notes``."""
        if step is None:
            first = self.scenario.steps[0]
            return (f'<div class="nt" data-view="explain" data-step="" data-end="false">Press '
                    f'<b>next step</b> (or a step\'s button) to send the first packet: '
                    f'{esc(first.title)}.</div>')
        n = self.scenario.index(step.name) + 1
        last = n == len(self.scenario.steps)
        f = story.facts if story else {}
        diffs = nar.differences(f, expected)
        attrs = {"step": step.name, "flow": f.get("flow", ""),
                 "present": "true" if f.get("present") else "false",
                 "state": f.get("state", ""), "flags": " ".join(f.get("flags", ())),
                 "timeout": "" if f.get("timeout") is None else f["timeout"],
                 "timeout-key": f.get("timeout_key", ""),
                 "expected": nar.describe(expected) if expected else "",
                 "differs": "true" if diffs else "false", "end": "true" if last else "false",
                 "notes": " | ".join(notes)}
        html = "".join(f' data-{k}="{esc(v)}"' for k, v in attrs.items())
        body = [f"<b>Step {n}/{len(self.scenario.steps)}: {esc(step.title)}</b>"]
        for note in notes:
            body.append(f'<div class="nt-warn" style="color:#e67700">{esc(note)}</div>')
        if story:
            body.append("<div><b>What happened:</b><ul>"
                        + "".join(f"<li>{esc(x)}</li>" for x in story.lines) + "</ul></div>")
        body.append(f'<div class="nt-note"><b>Expected</b> (the script): {esc(step.explain)}</div>')
        if diffs:
            why = (f" You let {self.waited:g} s pass before this step." if self.waited else "")
            body.append(f'<div class="nt-differs" style="color:#c92a2a">This run differs from '
                        f'the script: expected {esc(nar.describe(expected or {}))}, here '
                        f'{esc(nar.describe(f))}.{esc(why)}</div>')
        if last:
            body.append('<div class="nt-end"><b>End of the scenario.</b> Press <b>reset</b> '
                        '(or a step\'s button) to start again.</div>')
        return f'<div class="nt" data-view="explain"{html}>' + "".join(body) + "</div>"

    def _kernel_side(self, kernel_table: list[dict] | None) -> None:
        show = kernel_table is not None
        self.compare.widget.layout.display = None if show else "none"
        self.kernel_events.widget.layout.display = None if show else "none"

    # -- actions ------------------------------------------------------------------------------
    def _controls(self) -> list:
        return [*self.buttons, self.next_button, self.reset_button]

    def _say(self, text: str) -> None:
        self.status.value = f'<span class="nt nt-note" data-note="{esc(text)}">{esc(text)}</span>'

    def _click(self, fn: Callable, *args) -> None:
        """A button: errors become one line in the panel, never a traceback; while the
        step waits (another notebook's turn), the status line says for what."""
        for b in self._controls():
            b.disabled = True
        self._say("working ...")
        self.session.on_progress = self._say
        try:
            note = fn(*args)
            if isinstance(note, str):
                self._say(note)
            else:
                self.status.value = ""
        except Exception as exc:                       # noqa: BLE001 -- shown, never raised
            self._error(exc)
        finally:
            self.session.on_progress = None
            for b in self._controls():
                b.disabled = False

    END = ("That was the last step: the scenario is over. Press reset (or a step's button) "
           "to start again.")

    def run(self, step: str | None = None) -> StepResult | str:
        """Perform ``step`` (default: the next one) and show it.  Steps before it that
        have not run yet run and show first; an earlier step, or this scenario after
        another one ran, starts the scenario over.  ``next step`` after the last one
        runs nothing and returns :attr:`END` (the panel's status shows it)."""
        names = [st.name for st in self.scenario.steps]
        ours = self.session.current is self.scenario
        done = self.session.next_index if ours else 0
        if step is None:
            if ours and done >= len(names) and self.results:
                return self.END
            target = done if done < len(names) else 0
        elif step in names:
            target = names.index(step)
        else:
            raise SessionError(f"scenario {self.scenario.name} has no step {step!r}: steps are "
                               f"{', '.join(names)}")
        with self._ev_lock:
            if not ours or target < done:
                if self.results or not ours:
                    self._clear()
                done = 0
            res = None
            for name in names[done:target + 1]:
                res = self.session.run(self.scenario, name)
                self._show(res)
            assert res is not None                    # target >= done: one step ran at least
            return res

    def _error(self, exc: Exception) -> str:
        """One line in the panel's status (and returned), never a traceback."""
        if isinstance(exc, (SessionError, LabError)):
            msg = str(exc)                             # already says what to do
        else:
            msg = f"{type(exc).__name__}: {exc} (press reset, or restart the kernel)"
        msg = (msg.strip().splitlines() or [type(exc).__name__])[0]
        self.status.value = (f'<span class="nt nt-err" data-error="{esc(msg)}" '
                             f'style="color:#c92a2a">{esc(msg)}</span>')
        return msg

    def run_all(self) -> list[StepResult]:
        """Start over and run every step, showing each (what the notebook's headless run
        does after the buttons).  A step the lab cannot run (SessionError, LabError) ends
        it with one line, in the panel's status and printed, not a traceback."""
        out: list[StepResult] = []
        try:
            self.reset()
            for st in self.scenario.steps:
                r = self.run(st.name)
                if isinstance(r, StepResult):         # (after a reset, never END)
                    out.append(r)
        except (SessionError, LabError) as exc:
            print(f"nattrack: {self.scenario.name}: {self._error(exc)}")
        return out

    def reset(self) -> None:
        """Empty the tables (live) or rewind the recording (replay), and the views."""
        with self._ev_lock:
            self.session.reset()
            self._clear()

    def _clear(self) -> None:
        self.results, self._packets = [], []
        self.waited = 0.0
        with self._ev_lock:
            self._ev_seen = len(self.session.events())
            self.events.clear()
            self.kernel_events.clear()
        self.table.update([])
        self.compare.update([], [])
        if self.diagram:
            self.diagram.update(None)
        if self.timeline:
            self.timeline.update([], self.session.now())
        self.picker.options = []
        if self.packet is not None:
            self.packet.clear()
        self.log.clear()
        self.explain.value = self._explain_html(None)
        _flush(self.views())

    def _show(self, res: StepResult) -> None:
        step = self.scenario.step(res.step)
        before = res.before
        self.results.append(res)
        flow = step_flow(self.scenario, step)
        entry = find_entry(res.table, flow.proto, flow_orig(flow)) if flow else None
        story = nar.narrate(self.scenario, step, res, before, self.results,
                            self.session.sysctl_values(), self.waited)
        scripted = nar.scripted(self.session.notebook, self.scenario.name)
        expected = scripted[self.scenario.index(step.name)] if scripted else None
        self.explain.value = self._explain_html(step, story, expected, res.notes)
        self.waited = 0.0
        self.table.update(res.table, highlight=entry)
        self.compare.update(res.table, res.kernel_table or [])
        self._kernel_side(res.kernel_table)
        with self._ev_lock:                 # the step's events, and none of them again later
            self.events.append(res.events)
            self._ev_seen = _end_of(self.session.events(), res.events)
            self.kernel_events.append(res.kernel_events)
        state = (entry or {}).get("state")
        if self.diagram is not None:
            tr = res.transition
            if tr is not None:
                self.diagram.update(tr.new_state, tr.old_state, tr.direction, tr.flag)
            elif entry is not None and entry.get("state"):
                self.diagram.update(entry["state"])
        if self.timeline is not None:
            self.timeline.update(res.table, res.t or self.session.now())
        if self.packet is not None:
            self._packets = list(res.packets)
            opts = [(packet_title(i, pp, how), i)
                    for i, (pp, how) in enumerate(zip(self._packets, ctstates(res, before)))]
            self.picker.options = opts
            if opts:
                if self.picker.value == opts[-1][1]:
                    self._pick({"new": opts[-1][1]})
                self.picker.value = opts[-1][1]          # the step's last packet
        self.log.add(res, state or ("-" if entry is None else "present"), before)
        _flush(self.views())

    def _pick(self, change) -> None:
        i = change["new"]
        if i is None or not 0 <= i < len(self._packets) or self.packet is None:
            return
        pp = self._packets[i]
        before_label, after_label = packet_labels(pp)
        if pp.iface_in is None:                          # the router's own: one column
            self.packet.update(pp.before, None, before_label)
        else:
            self.packet.update(pp.before, pp.after, before_label, after_label)

    def stop(self) -> None:
        for v in self.views():
            if hasattr(v, "stop"):
                v.stop()


def stepper(session: Session, scenario: str, **kw) -> Stepper:
    """A :class:`Stepper` for one scenario of the session's notebook."""
    return Stepper(session, scenario, **kw)


# --- timeouts ------------------------------------------------------------------------------------

class TimeoutsPanel(Stepper):
    """A Stepper with the countdown chart, the scenario's timeouts (tracker and kernel
    set to the same values by the session) and time controls.  In live mode an
    :class:`Updater` redraws the chart twice a second while time passes (not under
    grading); ``watch(seconds)`` lets time pass in steps and redraws after each."""

    def __init__(self, session: Session, scenario: str, horizon: float = 30.0,
                 interval: float = 0.5, **kw) -> None:
        super().__init__(session, scenario, timeline=True, horizon=horizon, **kw)
        self.sysctl_view = widgets.HTML(value=self._sysctl_html({}))
        self.sysctl_view.add_class("nattrack-role-sysctls")
        self.time_buttons = []
        for secs in (1, 5, 10, 30):
            b = widgets.Button(description=f"+{secs} s", layout=widgets.Layout(width="auto"))
            b.on_click(lambda _b, s=secs: self._click(self.watch, s))
            self.time_buttons.append(b)
        self._kev_seen = 0
        self.clock = widgets.HTML(value="")
        self.widget.children = (self.widget.children[:2]
                                + (self.sysctl_view, widgets.HBox(self.time_buttons), self.clock)
                                + self.widget.children[2:])
        self.updater: Updater | None = None
        if session.mode == "live":
            self._ticks = 0
            self.updater = Updater(self._tick, interval, name="nattrack-timeouts")

    def _sysctl_html(self, applied: dict[str, int]) -> str:
        want = self.scenario.sysctls
        rows = "".join(f'<tr data-key="{esc(k)}" data-value="{esc(v)}" data-applied='
                       f'"{esc(applied.get(k, ""))}"><td>{esc(k)}</td><td>{esc(v)} s</td>'
                       f'<td>{"tracker = kernel" if k in applied else "set at the first step"}'
                       f'</td></tr>' for k, v in want.items())
        state = {"view": "sysctls", "keys": list(want), "applied": len(applied)}
        body = ("<table><tr><th>setting (kernel name)</th><th>value</th><th></th></tr>"
                + rows + "</table>") if want else '<div class="nt-note">default timeouts</div>'
        return _wrap("sysctls", body, state, "timeouts in this scenario")

    def refresh(self, wait: bool = True, kernel: bool = True) -> None:
        """Redraw every view that time changes, together: the chart, the table, the
        kernel's table beside it, and the events that came since the last step or
        refresh (any thread; ``wait=False``, the background one, leaves all of it to a
        step that is running); nothing while the session runs another scenario."""
        if self.session.current is not self.scenario:
            return
        if not self._ev_lock.acquire(blocking=wait):
            return
        try:
            table = scope_table(self.scenario, self.session.table())
            now = self.session.now()
            if self.timeline is not None:
                self.timeline.update(table, now)
            self.table.update(table)
            if kernel:
                k = self.session.kernel_table_now()
                if k is not None:
                    self.compare.update(table, scope_table(self.scenario, k))
            evs = self.session.events()
            if len(evs) > self._ev_seen:
                self.events.append(scope_events(self.scenario, evs[self._ev_seen:]))
            self._ev_seen = len(evs)
            kevs = self.session.kernel_events()
            if len(kevs) > self._kev_seen:
                self.kernel_events.append(scope_events(self.scenario, kevs[self._kev_seen:]))
            self._kev_seen = len(kevs)
            _flush([self.timeline, self.table, self.compare, self.events, self.kernel_events])
            self.clock.value = self._clock_html(table)          # drawn last: all views agree
        finally:
            self._ev_lock.release()

    def _tick(self) -> None:
        """The background refresh: the kernel's table (a conntrack -L in the router)
        every fourth time."""
        self._ticks += 1
        self.refresh(wait=False, kernel=self._ticks % 4 == 0)

    def _clock_html(self, table: list[dict]) -> str:
        """One line under the buttons: time let pass since the last step, and what
        is left of the scenario's entry (``data-waited``, ``data-left``)."""
        left = [e.get("timeout") for e in table if e.get("timeout") is not None]
        text = (f"{self.waited:g} s passed since the last step; "
                + (f"time left: {', '.join(f'{x} s' for x in left)}" if left
                   else "no entry left in the table")) if self.waited else ""
        return (f'<div class="nt nt-note" data-view="clock" data-waited="{self.waited:g}" '
                f'data-left="{",".join(str(x) for x in left)}">{esc(text)}</div>')

    def watch(self, seconds: float, step: float = 1.0) -> None:
        """Let ``seconds`` pass in ``step``s, redrawing after each (replay: the recorded
        clock moves on and the gc worker runs; live: real time)."""
        left = float(seconds)
        while left > 1e-9:
            d = min(step, left)
            self.session.advance(d)
            self.waited += d
            left -= d
            self.refresh(kernel=left <= 1e-9 or self.session.mode == "replay")
            if self.session.mode == "replay" and not grading_mode():
                time.sleep(0.05)                   # a visible countdown, not a jump
        _flush(self.views())

    def _controls(self) -> list:
        return [*super()._controls(), *getattr(self, "time_buttons", ())]

    def _show(self, res: StepResult) -> None:
        super()._show(res)
        applied = {k: v for k, v in self.scenario.sysctls.items()}
        self.sysctl_view.value = self._sysctl_html(applied)
        self._kev_seen = len(self.session.kernel_events())
        self.clock.value = self._clock_html(res.table)

    def _clear(self) -> None:
        super()._clear()
        self._kev_seen = len(self.session.kernel_events())
        if hasattr(self, "clock"):
            self.clock.value = self._clock_html([])

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()
        super().stop()


def timeouts_panel(session: Session, scenario: str, **kw) -> TimeoutsPanel:
    return TimeoutsPanel(session, scenario, **kw)


# --- the table on its own ------------------------------------------------------------------------

class LiveTable:
    """The tracker's table (and the kernel's beside it), refreshed by an Updater every
    ``interval`` seconds (the kernel's, which costs a ``conntrack -L`` in the router,
    every ``kernel_every`` refreshes): traffic from anywhere (a terminal's ``nattrack
    lab exec``) shows up.  Replay and grading: one snapshot, no thread."""

    def __init__(self, session: Session, interval: float = 0.25, kernel_every: int = 4) -> None:
        self.session = session
        self.kernel_every = max(1, int(kernel_every))
        self.refreshes = 0
        self.table = ConntrackTableView(title="nattrack's tracker, live")
        self.compare = ComparisonView(title="tracker and kernel")
        self.refresh()                          # the first picture before the cell ends
        _flush([self.table, self.compare])
        # Only a live table follows anything: a replay session's table() reaps and emits
        # DESTROY on an engine that is not thread-safe, so it is never called from a
        # thread while buttons run steps; grading starts no thread either (the Updater).
        self.updater: Updater | None = None
        parts = [self.table.widget, self.compare.widget]
        if session.mode == "live":
            self.updater = Updater(self.refresh, interval, name="nattrack-live-table")
            parts.insert(0, self.updater.widget)
        self.widget = widgets.VBox(parts)

    def refresh(self) -> None:
        table = self.session.table()
        self.table.update(table)
        self.refreshes += 1
        if self.session.mode == "live" and (self.refreshes - 1) % self.kernel_every:
            return
        kernel = self.session.kernel_table()
        self.compare.widget.layout.display = None if kernel is not None else "none"
        if kernel is not None:
            self.compare.update(table, kernel)

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()
        self.table.stop()
        self.compare.stop()


def live_table(session: Session, interval: float = 0.25) -> LiveTable:
    return LiveTable(session, interval)


# --- small things ----------------------------------------------------------------------------------

def show_rules(name: str, syntax: str | None = None) -> widgets.HTML:
    """examples/rules/<name>.rules as the notebook shows it (comments greyed), or its nft
    twin <name>.nft when the class uses nft (``syntax``, else rules_syntax())."""
    from ..lab import RULES_DIR
    syntax = syntax or rules_syntax()
    path = RULES_DIR / f"{name}.{'nft' if syntax == 'nft' else 'rules'}"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SessionError(f"no rules file {path}: known are "
                           f"{', '.join(sorted(p.stem for p in RULES_DIR.glob('*.rules')))}"
                           ) from None
    body = "\n".join(f'<span class="nt-note">{esc(ln)}</span>' if ln.startswith("#") else esc(ln)
                     for ln in lines)
    return widgets.HTML(value=_wrap("rules", f"<pre>{body}</pre>",
                                    {"view": "rules", "name": name, "syntax": syntax},
                                    f"{path.name}"))


def rule_command(table: str, rule: str, syntax: str | None = None) -> str:
    """One iptables rule (``-A CHAIN ...`` of ``table``) as the command that adds it, in
    the class's syntax: ``iptables -t nat -A ...`` or ``nft add rule ip nat CHAIN ...``
    (the chain of the nft form `nattrack rules translate` writes)."""
    from dataclasses import replace

    from ..netfilter.nft import from_iptables, rule_text
    from ..netfilter.rulesfile import parse_rules
    from ..netfilter.xtables import RulesError
    try:
        rs = parse_rules(f"*{table}\n{rule}\nCOMMIT\n", "the rule")
    except RulesError as exc:
        raise SessionError(str(exc)) from None
    if (syntax or rules_syntax()) != "nft":
        return f"iptables -t {table} {rule}"
    (r,) = [x for x in from_iptables(rs).rules()]
    return f"nft add rule {r.table} {r.chain} {rule_text(replace(r, counter=False))}"


def show_rule(table: str, rule: str, syntax: str | None = None) -> widgets.HTML:
    """One rule as the command that adds it, in the class's syntax (rule_command())."""
    cmd = rule_command(table, rule, syntax)
    return widgets.HTML(value=_wrap("rules", f"<pre>{esc(cmd)}</pre>",
                                    {"view": "rule", "syntax": syntax or rules_syntax()}, ""))


def close(session: Session) -> None:
    """Stop every view and background refresh of this kernel, then close the session."""
    from ..widgets import stop_all
    stop_all()
    session.close()
