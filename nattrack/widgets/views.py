"""Live notebook views: core ipywidgets around the pure renderers.

Every view has ``widget`` (the ipywidgets widget to display: an
``ipywidgets.HTML`` whose value is one self-contained fragment) and ``state``
(a dict of what it shows now).  ``state`` is also written into the markup as
``data-*`` attributes of the fragment's root element (lists joined by commas,
booleans ``true``/``false``), so that a test can read it from a notebook's stored
widget state (nbclient ``store_widget_state=True``): the value of an
``HTMLModel`` goes through :func:`nattrack.widgets.widget_state`.  Attributes:

====================  =====================================================================
view (data-view)      attributes
====================  =====================================================================
ConntrackTableView    ``entries`` (count), ``flows`` (``proto src:sport > dst:dport`` each),
``table``             ``states``, ``new`` / ``changed`` / ``gone`` (flows since the last
                      render), ``highlight``; each ``<tr>`` has ``data-flow``,
                      ``data-state``, ``data-timeout``, ``data-orig``, ``data-reply``
                      (``a:p -> b:q``), ``data-flags``
StateDiagramView      ``state``, ``prev``, ``transition`` (``SYN_SENT>SYN_RECV``), ``dir``,
``diagram``           ``flag`` (the table row: SYN, SYN-ACK, FIN, ACK, RST, NONE), ``cell``
                      (what TCP_CONNTRACKS says: a state, INVALID or IGNORE),
                      ``in-table`` (false: one of tcp_packet's special cases),
                      ``timeouts`` (``STATE=seconds`` each, as shown under the states)
PacketView            ``changed`` (keys among ``src dst ttl ip_csum proto sport dport
``packet``            tcp_flags l4_csum type code id`` and ``inner_*``), ``before`` /
                      ``after`` (one-line summaries); each ``<tr>`` has ``data-field``
TimelineView          ``entries``, ``expired`` (at zero, not yet collected), ``destroyed``
``timeline``          (flows gone, newest last), ``flows``, ``now``, ``horizon``; each row
                      ``data-flow``, ``data-state``, ``data-remaining`` or ``data-destroyed``
EventLogView          ``events`` (total), ``shown``, ``new``, ``update``, ``destroy``
``events``            (counts), ``last`` (the newest line)
ComparisonView        ``flows``, ``agree``, ``differ`` (counts), ``same`` (true when all
``compare``           agree), ``differing`` (flows), ``python``, ``kernel`` (entries)
ModeBanner ``mode``   ``mode`` (live/replay), ``label``
====================  =====================================================================

Every view also sets ``data-renders`` (how many times it was drawn) and, once
stopped, ``data-stopped="true"``.

Threads (lab-kit-conventions §4): views may be updated from any thread; all they
do there is set ``widget.value``.  Renders are throttled per view: an update
within :data:`MIN_INTERVAL` of the last render is coalesced (only the newest
is drawn, by a timer at the end of the interval), so a view never draws more
than 1/MIN_INTERVAL times a second; the first update after a quiet spell is
drawn at once.  :class:`Updater` runs a refresh function on a background thread.
Under :func:`grading_mode` nothing starts a thread: views draw synchronously and
an Updater calls its function once (a static snapshot).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping

import ipywidgets as widgets

from .diagram import _svg, diagram_parts, timeline_parts
from .render import (_wrap, comparison_parts, esc, event_line, event_parts, highlights,
                     mode_banner_html, normalize_entries, packet_parts, table_parts,
                     widget_state)

MIN_INTERVAL = 0.2          # seconds between two renders of one view (at most 5 a second)
GRADING_VARS = ("NATTRACK_GRADING", "NBGRADER_EXECUTION")

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_ids = itertools.count(1)                 # SVG ids unique to each diagram view


def grading_mode() -> bool:
    """True when NATTRACK_GRADING or NBGRADER_EXECUTION is set (non-empty): views draw
    static snapshots and no background thread is started."""
    return any(os.environ.get(v) for v in GRADING_VARS)


def stop_all() -> None:
    """Stop every Updater and view still alive (the notebook's last cell, or a reset)."""
    for obj in list(_live):
        obj.stop()


class _View:
    """Throttled rendering into one ``widgets.HTML``; subclasses give ``_render()``,
    which returns (state, markup) from what their update methods stored."""

    kind = "view"

    def __init__(self, title: str | None = None, min_interval: float = MIN_INTERVAL) -> None:
        self.title = title
        self.min_interval = min_interval
        self.widget = widgets.HTML(value="")
        self.widget.add_class("nattrack-view")
        self.state: dict[str, Any] = {}
        self.renders = 0
        self.stopped = False
        self._lock = threading.RLock()
        self._drawn: tuple[dict[str, Any], str] = ({}, "")   # the last _render(), unstamped
        self._dirty = False
        self._last = -1e9
        self._timer: threading.Timer | None = None
        _live.add(self)
        self._draw()
        self._last = -1e9                   # the empty first drawing does not delay the next

    # --- what subclasses implement ---------------------------------------------------------
    def _render(self) -> tuple[dict[str, Any], str]:
        raise NotImplementedError

    # --- throttling ------------------------------------------------------------------------
    def _request(self) -> None:
        """Draw now, or at the end of the current interval (coalescing)."""
        with self._lock:
            if self.stopped:
                return
            self._dirty = True
            if grading_mode():
                self._draw()
                return
            wait = self._last + self.min_interval - time.monotonic()
            if wait <= 0 and self._timer is None:
                self._draw()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty and not self.stopped:
                self._draw()

    def _draw(self) -> None:
        with self._lock:
            self._dirty = False
            self._last = time.monotonic()
            self.renders += 1
            try:
                state, markup = self._render()
            except Exception as exc:  # noqa: BLE001 -- never into cell output from a timer
                state = {"view": self.kind, "error": f"{type(exc).__name__}: {exc}"}
                markup = _wrap(self.kind, f'<div class="nt-err">{esc(state["error"])}</div>',
                               state, self.title)
            self._drawn = (state, markup)
            self._stamp_drawn()

    def _stamp_drawn(self) -> None:
        state, markup = self._drawn
        state = dict(state, renders=self.renders)
        if self.stopped:
            state["stopped"] = True
        self.state = state
        self.widget.value = _stamp(markup, renders=self.renders, stopped=self.stopped)

    def flush(self) -> None:
        """Draw a pending (coalesced) update now."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._dirty:
                self._draw()

    def stop(self) -> None:
        """Draw what is pending, then ignore further updates.  The last drawing is only
        stamped "stopped", not rendered again: a render compares with the one before,
        and the table's new/changed/gone marks would be lost."""
        with self._lock:
            if self.stopped:
                return
            self.flush()
            self.stopped = True
            self.renders += 1
            self._stamp_drawn()
        _live.discard(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:   # display(view) shows its widget
        return self.widget._repr_mimebundle_(**kwargs)


def _stamp(markup: str, **extra: Any) -> str:
    """Add data-renders / data-stopped to the root element."""
    end = markup.index(">")
    if markup[end - 1] == "/":
        end -= 1
    attrs = f' data-renders="{extra["renders"]}"'
    if extra.get("stopped"):
        attrs += ' data-stopped="true"'
    return markup[:end] + attrs + markup[end:]


# --------------------------------------------------------------------------- the views

def step_buttons(panel: Any, steps: Iterable[tuple[str, str]]) -> tuple[list, Any, Any]:
    """A stepping panel's controls: one button per step (name, tooltip), "next step" and
    "reset".  Each click calls ``panel._click(panel.run, name)``, ``panel._click(panel.run)``
    or ``panel._click(panel.reset)``, looked up when clicked (the panel's wrapper turns an
    error into one line)."""
    buttons = []
    for name, title in steps:
        b = widgets.Button(description=name, tooltip=title, layout=widgets.Layout(width="auto"))
        b.on_click(lambda _b, name=name: panel._click(panel.run, name))
        buttons.append(b)
    next_button = widgets.Button(description="next step ▶", button_style="primary",
                                 layout=widgets.Layout(width="auto"))
    next_button.on_click(lambda _b: panel._click(panel.run))
    reset_button = widgets.Button(description="reset", button_style="warning",
                                  layout=widgets.Layout(width="auto"))
    reset_button.on_click(lambda _b: panel._click(panel.reset))
    return buttons, next_button, reset_button


class ConntrackTableView(_View):
    """The connection table (``conntrack -L`` lines or conn_json dicts); rows new since
    the last render are green, changed cells yellow, highlighted rows outlined."""

    kind = "table"

    def __init__(self, title: str | None = "connection table", **kw: Any) -> None:
        self._rows: list[dict[str, Any]] = []
        self._shown: list[dict[str, Any]] | None = None
        self._highlight: Any = None
        super().__init__(title, **kw)

    def update(self, entries: Iterable[str | Mapping[str, Any]] | None,
               highlight: Any = None) -> None:
        """``highlight``: a substring of a row (its -L line, flow or tuples), an entry,
        or a list of them."""
        rows = normalize_entries(entries)           # bad input raises here, in the caller
        highlight = highlights(highlight)
        with self._lock:
            self._rows, self._highlight = rows, highlight
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        state, body = table_parts(self._rows, self._shown, self._highlight)
        self._shown = self._rows
        return state, _wrap(self.kind, body, state, self.title)


class StateDiagramView(_View):
    """The TCP state diagram with the current state filled and the transition just
    taken in red.  For a new entry pass ``prev_state="NONE"``."""

    kind = "diagram"

    def __init__(self, title: str | None = None, timeouts: Mapping[str, int] | None = None,
                 **kw: Any) -> None:
        self._args: tuple[Any, Any, Any, Any] = (None, None, None, None)   # state, prev, dir, flag
        self._timeouts = dict(timeouts or {})
        self._uid = f"nt{next(_ids)}"
        diagram_parts(timeouts=self._timeouts)
        super().__init__(title, **kw)

    def set_timeouts(self, timeouts: Mapping[str, int]) -> None:
        """The timeouts shown under the states (sysctl names -> seconds, over the defaults),
        e.g. after the notebook shortened them."""
        diagram_parts(timeouts=timeouts)
        with self._lock:
            self._timeouts = dict(timeouts)
        self._request()

    def update(self, state: str | int | None, prev_state: str | int | None = None,
               direction: str | int | None = None, flag: str | int | None = None) -> None:
        diagram_parts(state, prev_state, direction, flag)     # validate in the caller
        with self._lock:
            self._args = (state, prev_state, direction, flag)
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        from .diagram import HEIGHT, WIDTH
        state, body = diagram_parts(*self._args, timeouts=self._timeouts, uid=self._uid)
        svg = _svg(WIDTH, HEIGHT, "tcp-states", body)
        return state, _wrap(self.kind, svg, state, self.title)


class PacketView(_View):
    """One datagram before and after the router, field by field, changes marked."""

    kind = "packet"

    def __init__(self, title: str | None = None, **kw: Any) -> None:
        self._args: tuple[Any, ...] | None = None
        super().__init__(title, **kw)

    def update(self, before: bytes, after: bytes | None = None,
               before_label: str = "h1 → r (LAN side)",
               after_label: str = "r → srv (WAN side)") -> None:
        packet_parts(before, after, before_label, after_label)   # validate in the caller
        with self._lock:
            self._args = (bytes(before), None if after is None else bytes(after),
                          before_label, after_label)
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        if self._args is None:
            state = {"view": self.kind, "changed": []}
            return state, _wrap(self.kind, '<div class="nt-note">no packet yet</div>', state,
                                self.title)
        state, body = packet_parts(*self._args)
        return state, _wrap(self.kind, body, state, self.title)

    def clear(self) -> None:
        """Back to "no packet yet" (a panel's reset)."""
        with self._lock:
            self._args = None
        self._request()


class TimelineView(_View):
    """Each entry's remaining timeout as a bar counting down; entries gone since the
    previous update become ``✕ DESTROY`` rows (the newest ``keep`` of them, each
    shown for ``horizon`` seconds)."""

    kind = "timeline"

    def __init__(self, horizon: float = 120, title: str | None = None, keep: int = 8,
                 **kw: Any) -> None:
        if horizon <= 0:
            raise ValueError("horizon must be positive (seconds on the chart's scale)")
        self.horizon, self.keep = float(horizon), keep
        self._rows: list[dict[str, Any]] = []
        self._now = 0.0
        self._gone: dict[str, float] = {}             # flow -> when it went
        self._flows: set[str] | None = None
        super().__init__(title, **kw)

    def update(self, entries: Iterable[str | Mapping[str, Any]] | None, now: float) -> None:
        """``entries``: ``conntrack -L`` lines or conn_json dicts whose timeouts are the
        remaining seconds as of ``now`` (seconds on any clock that moves on)."""
        from .diagram import timeline_entries_from_table
        rows = timeline_entries_from_table(normalize_entries(entries), now)
        with self._lock:
            flows = {r["label"] for r in rows}
            if self._flows is not None:
                for flow in self._flows - flows:
                    self._gone[flow] = now
            for flow in flows:
                self._gone.pop(flow, None)
            cutoff = now - self.horizon
            recent = sorted((t, f) for f, t in self._gone.items() if t >= cutoff)[-self.keep:]
            self._gone = {f: t for t, f in recent}
            self._flows, self._rows, self._now = flows, rows, now
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        gone = sorted(self._gone.items(), key=lambda kv: kv[1])
        state, body, height, width = timeline_parts(self._rows, self._now, self.horizon, gone)
        return state, _wrap(self.kind, _svg(width, height, "timeline", body), state, self.title)


class EventLogView(_View):
    """``conntrack -E`` lines, newest last, NEW/UPDATE/DESTROY coloured."""

    kind = "events"

    def __init__(self, limit: int = 50, title: str | None = None, **kw: Any) -> None:
        self.limit = limit
        self._lines: list[str] = []
        super().__init__(title, **kw)

    def append(self, lines: str | Iterable[str | Mapping[str, Any]]) -> None:
        """``conntrack -E`` lines (a string may hold several) or event_json dicts."""
        if isinstance(lines, (str, Mapping)):
            lines = [lines]
        new = []
        for item in lines:
            if isinstance(item, Mapping):
                new.append(event_line(item))
            else:
                new += [ln for ln in str(item).splitlines() if ln.strip()]
        if not new:
            return
        with self._lock:
            self._lines += new
        self._request()

    def clear(self) -> None:
        with self._lock:
            self._lines = []
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        state, body = event_parts(self._lines, self.limit)
        return state, _wrap(self.kind, body, state, self.title)


class ComparisonView(_View):
    """nattrack's table next to the kernel's, disagreements explained; remaining
    timeouts within ``tolerance`` seconds count as equal."""

    kind = "compare"

    def __init__(self, title: str | None = None, tolerance: int = 2,
                 titles: tuple[str, str] = ("nattrack (python)", "kernel"), **kw: Any) -> None:
        self.tolerance, self.titles = tolerance, titles
        self._sides: tuple[list[str], list[str]] = ([], [])
        super().__init__(title, **kw)

    def update(self, python_entries: Iterable[str | Mapping[str, Any]] | None,
               kernel_entries: Iterable[str | Mapping[str, Any]] | None) -> None:
        py = [e["line"] for e in normalize_entries(python_entries)]
        kern = [e["line"] for e in normalize_entries(kernel_entries)]
        with self._lock:
            self._sides = (py, kern)
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        state, body = comparison_parts(*self._sides, self.tolerance, self.titles)
        return state, _wrap(self.kind, body, state, self.title)


class ModeBanner(_View):
    """LIVE (the lab) or REPLAY (a recording), and what exactly."""

    kind = "mode"

    def __init__(self, **kw: Any) -> None:
        self._mode: tuple[str, str] | None = None
        super().__init__(None, **kw)

    def update(self, mode: str, label: str = "") -> None:
        mode_banner_html(mode, label)                 # validate in the caller
        with self._lock:
            self._mode = (mode, label)
        self._request()

    def _render(self) -> tuple[dict[str, Any], str]:
        if self._mode is None:
            state = {"view": "mode", "mode": None, "label": None}
            return state, _wrap("banner", "", state)
        markup = mode_banner_html(*self._mode)
        return widget_state(markup) | {"mode": self._mode[0], "label": self._mode[1]}, markup


# --------------------------------------------------------------------------- the updater

class Updater:
    """Call ``fn()`` every ``interval`` seconds on a background thread.

    ``fn`` should only set widget values (view updates do).  Exceptions are counted
    and shown in ``widget`` (a small HTML line, empty while all is well; once a call
    succeeds again it says so, no longer as an error), never raised or printed; the
    loop keeps going.  Calls are at least MIN_INTERVAL
    apart however small ``interval`` is.  Under :func:`grading_mode` no thread is
    started: ``fn`` is called once, synchronously (a static snapshot).
    """

    def __init__(self, fn: Callable[[], Any], interval: float = 0.5, *,
                 name: str = "nattrack-updater") -> None:
        if not callable(fn):
            raise TypeError("Updater needs a function to call")
        self.fn = fn
        self.interval = max(float(interval), MIN_INTERVAL)
        self.widget = widgets.HTML(value="")
        self.widget.add_class("nattrack-updater")
        self.calls = 0
        self.errors = 0
        self.last_error: str | None = None
        self._failing = False
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        _live.add(self)
        if grading_mode():
            self._call()
            self._stop.set()
        else:
            self.thread = threading.Thread(target=self._run, name=name, daemon=True)
            self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self._stop.is_set()

    def _call(self) -> None:
        try:
            self.fn()
            if self._failing:                        # working again (the lab came back)
                self._failing = False
                self.widget.value = (f'<span class="nt nt-note" data-errors="{self.errors}" '
                                     f'data-recovered="true" style="font-family:monospace;'
                                     f'font-size:11px">updating again after {self.errors} '
                                     f'failed update(s) (last: {esc(self.last_error)})</span>')
        except Exception as exc:  # noqa: BLE001 -- shown in the label, never raised
            self._failing = True
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.widget.value = (f'<span class="nt nt-err" data-errors="{self.errors}" '
                                 f'style="color:#e03131;font-family:monospace;font-size:11px">'
                                 f"update failed ({self.errors}x): {esc(self.last_error)}</span>")
        finally:
            self.calls += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            self._call()
            self._stop.wait(max(self.interval - (time.monotonic() - start), MIN_INTERVAL))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait for the current call to end."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        _live.discard(self)
