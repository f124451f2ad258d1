"""SVG views: the TCP conntrack state machine and a timeout countdown chart.

The state diagram is drawn from the transition table itself
(:data:`nattrack.conntrack.proto_tcp.TCP_CONNTRACKS`): one edge per
(direction, old state, new state) with the flag indexes that take it; cells that
say sIV (INVALID) or sIG (ignore) are not transitions and are left out.  Only the
node positions are fixed here.

Classes: ``nt-node`` (``nt-current`` when filled), ``nt-edge`` with ``nt-orig`` /
``nt-reply`` (``nt-loop`` for a self-loop, ``nt-highlight`` for the transition just
taken); every edge carries ``data-dir``, ``data-from``, ``data-to`` and
``data-flags``.  Timeline bars are ``nt-bar`` (``nt-expired`` once at zero).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..conntrack.conn import HZ
from ..conntrack.proto_tcp import (INDEX_NAMES, TCP_CONNTRACK_MAX, TCP_CONNTRACK_NAMES,
                                   TCP_CONNTRACKS)
from .render import esc, normalize_entry

DIR_NAMES = ("ORIGINAL", "REPLY")

SVG_STYLE = (
    ".nt text{font-family:monospace;font-size:10px}"
    ".nt-node rect{fill:#fff;stroke:#333;stroke-width:1.5}"
    ".nt-node.nt-current rect{fill:#ffd54f;stroke:#000;stroke-width:2.5}"
    ".nt-node text{font-size:11px;font-weight:bold;text-anchor:middle}"
    ".nt-edge path{fill:none;stroke-width:1.2}"
    ".nt-edge text{font-size:8px;text-anchor:middle}"
    ".nt-orig path{stroke:#1f5fbf}.nt-orig text{fill:#1f5fbf}"
    ".nt-reply path{stroke:#d2691e;stroke-dasharray:5 3}.nt-reply text{fill:#d2691e}"
    ".nt-edge.nt-highlight path{stroke:#d00000;stroke-width:3.5;stroke-dasharray:none}"
    ".nt-edge.nt-highlight text{fill:#d00000;font-weight:bold;font-size:10px}"
    ".nt-bar rect{fill:#4c9be8}.nt-bar.nt-expired rect{fill:#ccc}"
    ".nt-bar.nt-expired text{fill:#999}.nt-axis{stroke:#666}"
)

# Fixed layout (centres), read left to right: the handshake on top, the close below.
NODE_POS = {
    "NONE": (70, 60), "SYN_SENT": (240, 60), "SYN_RECV": (430, 60),
    "ESTABLISHED": (620, 60), "SYN_SENT2": (240, 210), "FIN_WAIT": (620, 210),
    "CLOSE_WAIT": (800, 210), "LAST_ACK": (620, 360), "TIME_WAIT": (430, 360),
    "CLOSE": (240, 360),
}
NODE_W, NODE_H = 110, 26
WIDTH, HEIGHT = 890, 450


def _svg(width: int, height: int, kind: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nt nt-{kind}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f"<style>{SVG_STYLE}</style>{body}</svg>")


def _state(value: int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return TCP_CONNTRACK_NAMES[value]
    name = str(value).upper()
    if name not in TCP_CONNTRACK_NAMES:
        raise ValueError(f"unknown TCP conntrack state {value!r}")
    return name


def _direction(value: int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return DIR_NAMES[value]
    name = str(value).upper()
    if name not in DIR_NAMES:
        raise ValueError(f"unknown direction {value!r}")
    return name


def tcp_transitions() -> dict[tuple[str, str, str], list[str]]:
    """(direction, old state, new state) -> flag index names, from TCP_CONNTRACKS.

    sIV and sIG cells are skipped; order is the table's (direction, index, state).
    """
    out: dict[tuple[str, str, str], list[str]] = {}
    for d, rows in enumerate(TCP_CONNTRACKS):
        for index, row in enumerate(rows):
            for old, new in enumerate(row):
                if new >= TCP_CONNTRACK_MAX:
                    continue
                key = (DIR_NAMES[d], TCP_CONNTRACK_NAMES[old], TCP_CONNTRACK_NAMES[new])
                out.setdefault(key, []).append(INDEX_NAMES[index])
    return out


def _edge_geometry(d: str, a: str, b: str) -> tuple[str, float, float]:
    """An SVG path from a to b and where its label goes."""
    (x1, y1), (x2, y2) = NODE_POS[a], NODE_POS[b]
    if a == b:                                     # self-loop: above (ORIGINAL) or below
        sign = -1 if d == "ORIGINAL" else 1
        y0 = y1 + sign * NODE_H / 2
        ty = y0 + sign * 22
        path = (f"M {x1 - 12} {y0} C {x1 - 22} {ty + sign * 6} {x1 + 22} {ty + sign * 6} "
                f"{x1 + 12} {y0}")
        return path, x1, ty + sign * 8 + (3 if sign > 0 else 0)
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    # Bend each edge to its left; the two directions of one pair get different bends.
    bend = 18 if d == "ORIGINAL" else 36
    nx, ny = -uy, ux

    def border(x: float, y: float, sx: float) -> tuple[float, float]:
        # step from the centre along the edge until the node's box is left
        t = min((NODE_W / 2 + 2) / abs(ux) if ux else math.inf,
                (NODE_H / 2 + 2) / abs(uy) if uy else math.inf)
        return x + sx * ux * t, y + sx * uy * t

    sx1, sy1 = border(x1, y1, 1)
    sx2, sy2 = border(x2, y2, -1)
    mx, my = (sx1 + sx2) / 2 + nx * bend, (sy1 + sy2) / 2 + ny * bend
    path = f"M {sx1:.1f} {sy1:.1f} Q {mx:.1f} {my:.1f} {sx2:.1f} {sy2:.1f}"
    # the curve's midpoint is halfway between the chord's midpoint and the control point
    lx, ly = (sx1 + sx2) / 4 + mx / 2, (sy1 + sy2) / 4 + my / 2
    return path, lx, ly + 3


def state_diagram_svg(highlight_from: int | str | None = None,
                      highlight_to: int | str | None = None,
                      current: int | str | None = None,
                      direction: int | str | None = None) -> str:
    """The TCP conntrack state machine as SVG, drawn from TCP_CONNTRACKS.

    States may be given as numbers or names, ``direction`` as 0/1 or
    "ORIGINAL"/"REPLY" (None: the edge in either direction is highlighted).
    ORIGINAL edges are solid blue, REPLY edges dashed orange; ``current`` is
    filled and the edge highlight_from -> highlight_to carries ``nt-highlight``.
    A transition the table does not have (one of tcp_packet's special cases)
    is named in a note under the diagram.
    """
    hf, ht, cur, hd = (_state(highlight_from), _state(highlight_to), _state(current),
                       _direction(direction))
    edges = tcp_transitions()
    parts = ['<defs>'
             '<marker id="nt-arrow-orig" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="#1f5fbf"/></marker>'
             '<marker id="nt-arrow-reply" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="#d2691e"/></marker>'
             '<marker id="nt-arrow-hl" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" '
             'markerHeight="5" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="#d00000"/></marker>'
             '</defs>']
    found = False
    highlighted = []
    for (d, a, b), flags in edges.items():
        hl = hf is not None and (a, b) == (hf, ht) and hd in (None, d)
        found |= hl
        kind = "orig" if d == "ORIGINAL" else "reply"
        cls = " ".join(filter(None, ("nt-edge", f"nt-{kind}", "nt-loop" if a == b else None,
                                     "nt-highlight" if hl else None)))
        path, lx, ly = _edge_geometry(d, a, b)
        marker = "nt-arrow-hl" if hl else f"nt-arrow-{kind}"
        label = ",".join(flags)
        g = (f'<g class="{cls}" data-dir="{esc(d)}" data-from="{esc(a)}" data-to="{esc(b)}" '
             f'data-flags="{esc(label)}"><title>{esc(f"{d}: {a} --{label}--> {b}")}</title>'
             f'<path d="{path}" marker-end="url(#{marker})"/>'
             f'<text x="{lx:.1f}" y="{ly:.1f}">{esc(label)}</text></g>')
        (highlighted if hl else parts).append(g)
    parts += highlighted                         # drawn last, so on top
    for name in TCP_CONNTRACK_NAMES:
        x, y = NODE_POS[name]
        cls = "nt-node nt-current" if name == cur else "nt-node"
        parts.append(f'<g class="{cls}" data-state="{esc(name)}">'
                     f'<rect x="{x - NODE_W / 2}" y="{y - NODE_H / 2}" width="{NODE_W}" '
                     f'height="{NODE_H}" rx="8"/><text x="{x}" y="{y + 4}">{esc(name)}</text></g>')
    notes = ["ORIGINAL: solid blue   REPLY: dashed orange   (sIV/sIG cells are not drawn)"]
    if hf is not None and ht is not None and not found:
        notes.append(f"{hf} -> {ht}{'' if hd is None else ' (' + hd + ')'}: not in the table "
                     f"(a special case of tcp_packet)")
    for i, note in enumerate(notes):
        parts.append(f'<text class="nt-note" x="10" y="{HEIGHT - 22 + 14 * i}">{esc(note)}</text>')
    return _svg(WIDTH, HEIGHT + 14 * (len(notes) - 1), "tcp-states", "".join(parts))


# --------------------------------------------------------------------------- timeline

def _short_tuple(orig: Mapping[str, Any], proto: Any) -> str:
    sport = orig.get("sport", orig.get("id"))
    dport = orig.get("dport")
    src = orig.get("src", "?") if sport is None else f"{orig.get('src', '?')}:{sport}"
    dst = orig.get("dst", "?") if dport is None else f"{orig.get('dst', '?')}:{dport}"
    return f"{proto} {src}>{dst}"


def timeline_entry(entry: Any) -> tuple[str, float]:
    """(label, deadline in seconds) from one timeline entry, which may be

    * a ``(label, deadline)`` pair,
    * a mapping with ``deadline`` and either ``label`` or ``orig`` (+ ``proto``),
    * a :class:`nattrack.conntrack.conn.Conn` (deadline = its timeout in jiffies / HZ).
    """
    if isinstance(entry, tuple) and len(entry) == 2:
        return str(entry[0]), float(entry[1])
    if isinstance(entry, Mapping):
        label = entry.get("label")
        if label is None:
            label = _short_tuple(entry.get("orig") or {}, entry.get("proto", ""))
        return str(label), float(entry["deadline"])
    if hasattr(entry, "orig") and hasattr(entry, "timeout"):
        from ..conntrack.show import proto_name, tuple_fields
        return (_short_tuple(tuple_fields(entry.orig), proto_name(entry.orig.proto)),
                entry.timeout / HZ)
    raise TypeError(f"not a timeline entry: {entry!r}")


def timeline_svg(entries: Iterable[Any], now: float, horizon: float) -> str:
    """A countdown chart: one bar per entry, as long as its remaining time (seconds)
    on a scale of ``horizon`` seconds (longer bars are clipped); expired entries
    (remaining <= 0) are greyed (``nt-expired``)."""
    if horizon <= 0:
        raise ValueError("horizon must be positive")
    label_w, bar_w, row_h, top = 300, 420, 18, 20
    items = [timeline_entry(e) for e in entries]
    height = top + row_h * len(items) + 24
    parts = []
    for i, (label, deadline) in enumerate(items):
        left = deadline - now
        expired = left <= 0
        w = 0.0 if expired else min(left, horizon) / horizon * bar_w
        y = top + i * row_h
        cls = "nt-bar nt-expired" if expired else "nt-bar"
        shown = "expired" if expired else f"{left:.0f} s"
        parts.append(f'<g class="{cls}" data-remaining="{max(left, 0):.1f}">'
                     f'<text x="4" y="{y + 12}">{esc(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{esc(shown)}</text></g>')
    axis_y = top + row_h * len(items) + 4
    parts.append(f'<line class="nt-axis" x1="{label_w}" y1="{axis_y}" x2="{label_w + bar_w}" '
                 f'y2="{axis_y}"/>')
    for frac in (0, 0.25, 0.5, 0.75, 1):
        x = label_w + frac * bar_w
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}">{esc(f"{horizon * frac:g}s")}</text>')
    return _svg(label_w + bar_w + 60, height, "timeline", "".join(parts))


def timeline_entries_from_table(lines_or_dicts: Iterable[Any],
                                now: float) -> list[tuple[str, float]]:
    """``conntrack -L`` lines / conn_json dicts (remaining timeouts as of ``now``) ->
    (label, deadline) pairs for :func:`timeline_svg`."""
    out = []
    for item in lines_or_dicts:
        if isinstance(item, str) and not item.strip():
            continue
        e = normalize_entry(item)
        cells = e["cells"]
        out.append((f"{cells['proto'].split()[0]} {cells['original']}",
                    now + (e["timeout"] or 0)))
    return out
