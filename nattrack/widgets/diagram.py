"""SVG views: the TCP conntrack state machine and a timeout countdown chart.

The state diagram is drawn from the transition table itself
(:data:`nattrack.conntrack.proto_tcp.TCP_CONNTRACKS`, the kernel's
``tcp_conntracks[dir][index][state]``): every arrow's label is the table's
cells that take it (``ORIG SYN``, ``REPLY SYN-ACK``; no prefix: either
direction); cells that say sIV (INVALID) or sIG (ignore) are not transitions.
Only the layout is fixed here, chosen for a projector:

* the usual life of a connection, NONE → SYN_SENT → SYN_RECV → ESTABLISHED →
  FIN_WAIT → CLOSE_WAIT → LAST_ACK → TIME_WAIT, in bold (``nt-main``);
* rarer table transitions thin and dimmed (``nt-minor``): simultaneous open via
  SYN_SENT2, a connection picked up mid-stream, FIN before the handshake
  completed, a SYN reopening a TIME_WAIT entry;
* the RST cells (every state --RST--> CLOSE) collapsed into one note, and the
  cells that keep the state (ACKs within ESTABLISHED...) left out;
* the transition just taken in red (``nt-highlight``); if it is one of the
  hidden ones, or one of tcp_packet()'s special cases that is no table cell,
  it is drawn for the occasion (``nt-extra``).

The root ``<svg>`` carries ``data-state``, ``data-prev``, ``data-transition``
(``PREV>STATE``), ``data-dir``, ``data-flag``, ``data-cell`` (what the table says
for that packet: a state, ``INVALID`` or ``IGNORE``) and ``data-in-table``.
Every drawn arrow is a ``<g class="nt-edge">`` with ``data-from``, ``data-to``
and ``data-label``; nodes are ``nt-node`` (``nt-current`` when filled) with
``data-state``.  Timeline rows are ``nt-bar`` (``nt-destroyed`` for the DESTROY
markers).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..conntrack.conn import HZ
from ..conntrack.proto_tcp import (INDEX_NAMES, TCP_CONNTRACK_IGNORE, TCP_CONNTRACK_MAX,
                                   TCP_CONNTRACK_NAMES, TCP_CONNTRACKS, TIMEOUT_SYSCTL)
from ..conntrack.sysctl import DEFAULTS as SYSCTL_DEFAULTS
from .render import BG, BLUE, FG, GREEN, GREY, ORANGE, RED, data_attrs, esc, normalize_entries

DIR_NAMES = ("ORIGINAL", "REPLY")
DIR_SHORT = {"ORIGINAL": "ORIG", "REPLY": "REPLY"}
HL = RED

SVG_STYLE = (
    ".nt{font-family:var(--jp-code-font-family,monospace);"
    "color:" + FG + "}"
    ".nt text{fill:currentColor;font-family:var(--jp-code-font-family,monospace)}"
    ".nt-node rect{fill:" + BG + ";stroke:currentColor;stroke-width:1.6}"
    ".nt-node text{font-size:16px;font-weight:bold;text-anchor:middle;"
    "dominant-baseline:central}"
    ".nt-node.nt-dim{opacity:.62}.nt-node.nt-dim rect{stroke-dasharray:5 3}"
    ".nt-node.nt-current{opacity:1}.nt-node.nt-current rect{stroke-dasharray:none}"
    ".nt-node.nt-current rect{fill:#ffd43b;stroke:#e67700;stroke-width:3.5}"
    ".nt-node.nt-current text{fill:#000}"
    ".nt-node text.nt-timeout{font-size:12px;font-weight:normal;opacity:.75}"
    ".nt-node.nt-prev rect{stroke:" + HL + ";stroke-width:2.5}"
    ".nt-edge path{fill:none;stroke:currentColor}"
    ".nt-edge text{font-size:14px;text-anchor:middle;dominant-baseline:central}"
    ".nt-edge .nt-bg{fill:" + BG + ";stroke:none;opacity:.85}"
    ".nt-main path{stroke-width:2.6}"
    ".nt-main text{font-weight:bold}"
    ".nt-minor{opacity:.5}.nt-minor path{stroke-width:1.3;stroke-dasharray:6 4}"
    ".nt-minor text{font-size:13px}"
    ".nt-expire path{stroke:" + GREY + ";stroke-width:1.5;stroke-dasharray:2 4}"
    ".nt-expire text{fill:" + GREY + ";font-size:12px}"
    ".nt-edge.nt-highlight{opacity:1}"
    ".nt-edge.nt-highlight path{stroke:" + HL + ";stroke-width:4.5;stroke-dasharray:none}"
    ".nt-edge.nt-highlight text{fill:" + HL + ";font-weight:bold;font-size:16px}"
    ".nt-gone rect{fill:none;stroke:" + GREY + ";stroke-dasharray:3 3}"
    ".nt-gone text{fill:" + GREY + ";font-size:13px;text-anchor:middle;dominant-baseline:central}"
    ".nt-rst rect{fill:none;stroke:currentColor;stroke-width:1;stroke-dasharray:4 3;opacity:.6}"
    ".nt-rst text{font-size:13px;dominant-baseline:central}"
    ".nt-note{font-size:13px;opacity:.8}"
    ".nt-caption{font-size:19px;font-weight:bold}"
    ".nt-caption-hl{fill:" + HL + "!important}"
    # timeline
    ".nt-bar text{font-size:13px;dominant-baseline:central}"
    ".nt-bar rect.nt-track{fill:rgba(128,128,128,.15)}"
    ".nt-bar rect.nt-fill{fill:" + BLUE + "}"
    ".nt-bar.nt-est rect.nt-fill{fill:" + GREEN + "}"
    ".nt-bar.nt-closing rect.nt-fill{fill:" + ORANGE + "}"
    ".nt-bar.nt-ended rect.nt-fill{fill:" + GREY + "}"
    ".nt-bar .nt-st{font-weight:bold}"
    ".nt-bar.nt-destroyed text{fill:" + GREY + "}"
    ".nt-bar.nt-destroyed .nt-mark{fill:" + RED + ";font-weight:bold}"
    ".nt-axis{stroke:currentColor;opacity:.5}"
    ".nt-tick{font-size:11px;text-anchor:middle;opacity:.8}"
)

# --------------------------------------------------------------------------- layout

NODE_W, NODE_H = 136, 46
WIDTH, HEIGHT = 1060, 600
X = (90, 370, 660, 960)
Y = (140, 262, 390, 505)
NODE_POS = {
    "NONE": (X[0], Y[0]), "SYN_SENT": (X[1], Y[0]), "SYN_RECV": (X[2], Y[0]),
    "ESTABLISHED": (X[3], Y[0]),
    "SYN_SENT2": ((X[1] + X[2]) / 2, Y[1]),
    "FIN_WAIT": (X[3], Y[2]), "CLOSE_WAIT": (X[2], Y[2]), "LAST_ACK": (X[1], Y[2]),
    "TIME_WAIT": (X[0], Y[2]),
    "CLOSE": (X[1], Y[3]),
}
GONE_POS = (X[0], Y[3])                 # the entry's end: timeout, then DESTROY
RST_POS = (X[2] + 40, Y[3])             # the collapsed RST note

# (old, new) -> kind; every other table transition is hidden unless highlighted.
MAIN = {("NONE", "SYN_SENT"), ("SYN_SENT", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT"), ("FIN_WAIT", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
        ("FIN_WAIT", "LAST_ACK"), ("LAST_ACK", "TIME_WAIT")}
MINOR = {("SYN_SENT", "SYN_SENT2"), ("SYN_SENT2", "SYN_RECV"), ("NONE", "ESTABLISHED"),
         ("SYN_RECV", "FIN_WAIT"), ("TIME_WAIT", "SYN_SENT")}
# What the minor edges mean, after their flags.
MINOR_WHY = {("SYN_SENT", "SYN_SENT2"): "simultaneous open",
             ("NONE", "ESTABLISHED"): "picked up mid-stream",
             ("TIME_WAIT", "SYN_SENT"): "reopen"}


def _side(name: str, side: str, shift: float = 0) -> tuple[float, float]:
    """A point on node ``name``'s border: side l/r/t/b, moved ``shift`` along it."""
    x, y = GONE_POS if name == "GONE" else NODE_POS[name]
    return {"l": (x - NODE_W / 2, y + shift), "r": (x + NODE_W / 2, y + shift),
            "t": (x + shift, y - NODE_H / 2), "b": (x + shift, y + NODE_H / 2)}[side]


def _line(p: tuple[float, float], q: tuple[float, float]) -> str:
    return f"M {p[0]:.1f} {p[1]:.1f} L {q[0]:.1f} {q[1]:.1f}"


def _quad(p: tuple[float, float], c: tuple[float, float], q: tuple[float, float]) -> str:
    return f"M {p[0]:.1f} {p[1]:.1f} Q {c[0]:.1f} {c[1]:.1f} {q[0]:.1f} {q[1]:.1f}"


def _mid(p, q, dx=0.0, dy=0.0):
    return ((p[0] + q[0]) / 2 + dx, (p[1] + q[1]) / 2 + dy)


def _fixed_geometry(a: str, b: str) -> tuple[str, tuple[float, float]] | None:
    """Hand-placed path and label centre for the edges that are always drawn."""
    if (a, b) in {("NONE", "SYN_SENT"), ("SYN_SENT", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")}:
        p, q = _side(a, "r"), _side(b, "l")
        return _line(p, q), _mid(p, q, dy=-14)
    if (a, b) in {("FIN_WAIT", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                  ("LAST_ACK", "TIME_WAIT")}:
        p, q = _side(a, "l"), _side(b, "r")
        return _line(p, q), _mid(p, q, dy=-14)
    if (a, b) == ("ESTABLISHED", "FIN_WAIT"):
        p, q = _side(a, "b"), _side(b, "t")
        return _line(p, q), _mid(p, q, dx=26)
    if (a, b) == ("FIN_WAIT", "LAST_ACK"):            # under CLOSE_WAIT
        p, q = _side(a, "b", -30), _side(b, "b", 30)
        c = _mid(p, q, dy=110)
        return _quad(p, c, q), _mid(_mid(p, q), c)
    if (a, b) == ("SYN_SENT", "SYN_SENT2"):
        p, q = _side(a, "b", 20), _side(b, "l", -6)
        return _quad(p, (p[0], q[1]), q), (p[0] - 6, q[1] - 34)
    if (a, b) == ("SYN_SENT2", "SYN_RECV"):
        p, q = _side(a, "r", -6), _side(b, "b", -20)
        return _quad(p, (q[0], p[1]), q), (q[0] + 30, p[1] - 34)
    if (a, b) == ("NONE", "ESTABLISHED"):              # an arc over the first row
        p, q = _side(a, "t", 20), _side(b, "t", -20)
        c = _mid(p, q, dy=-120)
        return _quad(p, c, q), (_mid(p, q)[0], p[1] - 60)
    if (a, b) == ("SYN_RECV", "FIN_WAIT"):
        p, q = _side(a, "b", 40), _side(b, "l", -10)
        return _quad(p, (p[0] + 10, q[1] - 10), q), (p[0] + 92, q[1] - 86)
    if (a, b) == ("TIME_WAIT", "SYN_SENT"):
        p, q = _side(a, "t", 10), _side(b, "b", -40)
        return _quad(p, (p[0] + 20, q[1] + 30), q), (p[0] + 30, Y[1] - 10)
    return None


def _hits(path_pts: list[tuple[float, float]], avoid: Iterable[str]) -> int:
    """How many sampled points of a curve fall inside (a margin around) other nodes."""
    n = 0
    for name in avoid:
        x, y = NODE_POS[name]
        n += sum(1 for px, py in path_pts
                 if abs(px - x) < NODE_W / 2 + 6 and abs(py - y) < NODE_H / 2 + 6)
    return n


def _generic_geometry(a: str, b: str) -> tuple[str, tuple[float, float]]:
    """A curve between any two nodes (for highlighted hidden transitions), bent just
    enough to miss the other nodes."""
    (x1, y1), (x2, y2) = NODE_POS[a], NODE_POS[b]
    if a == b:                                      # a loop over the node's right end
        x0, y0 = x1 + NODE_W / 2 - 34, y1 - NODE_H / 2
        path = f"M {x0:.1f} {y0:.1f} C {x0 - 8:.1f} {y0 - 44:.1f} {x0 + 52:.1f} {y0 - 44:.1f} " \
               f"{x0 + 30:.1f} {y0:.1f}"
        return path, (x0 + 14, y0 - 46)
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    t = min((NODE_W / 2 + 3) / abs(ux) if ux else math.inf,
            (NODE_H / 2 + 3) / abs(uy) if uy else math.inf)
    p, q = (x1 + ux * t, y1 + uy * t), (x2 - ux * t, y2 - uy * t)
    others = [n for n in NODE_POS if n not in (a, b)]
    best = None
    for bend in (30, -30, 70, -70, 110, -110, 150, -150, 200, -200):
        c = _mid(p, q, -uy * bend, ux * bend)
        pts = [((1 - s) ** 2 * p[0] + 2 * (1 - s) * s * c[0] + s * s * q[0],
                (1 - s) ** 2 * p[1] + 2 * (1 - s) * s * c[1] + s * s * q[1])
               for s in (i / 40 for i in range(41))]
        hits = _hits(pts, others)
        if best is None or hits < best[0]:
            best = (hits, c)
        if not hits:
            break
    assert best is not None                   # the loop tried one bend at least
    c = best[1]
    return _quad(p, c, q), _mid(_mid(p, q), c)


# --------------------------------------------------------------------------- the table

def _state(value: int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        if not 0 <= value < len(TCP_CONNTRACK_NAMES):
            raise ValueError(f"unknown TCP conntrack state {value!r}")
        return TCP_CONNTRACK_NAMES[value]
    name = str(value).upper().replace(" ", "_")
    if name not in TCP_CONNTRACK_NAMES:
        raise ValueError(f"unknown TCP conntrack state {value!r} (one of "
                         f"{', '.join(TCP_CONNTRACK_NAMES)})")
    return name


def _direction(value: int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return DIR_NAMES[value]
    name = str(value).upper()
    name = {"ORIG": "ORIGINAL", "REPL": "REPLY"}.get(name, name)
    if name not in DIR_NAMES:
        raise ValueError(f"unknown direction {value!r} (ORIGINAL or REPLY)")
    return name


def flag_index(flag: str | int | None) -> str | None:
    """The table row a packet's flags select, as get_conntrack_index() picks it:
    RST before SYN (SYN-ACK with ACK), then FIN, then ACK; ``data`` is an ACK.

    Takes ``SYN``, ``SYN-ACK``, ``FIN``, ``FIN-ACK``, ``ACK``, ``data``, ``RST``,
    ``RST-ACK``, tcpdump letters (``S``, ``S.``, ``SA``, ``F.``, ``R``, ``P.``) or a
    TCP flags byte."""
    if flag is None:
        return None
    if isinstance(flag, int):
        bits = {n for bit, n in ((0x04, "RST"), (0x02, "SYN"), (0x01, "FIN"), (0x10, "ACK"))
                if flag & bit}
    else:
        text = str(flag).strip().upper()
        bits = set(text.replace("+", "-").replace("/", "-").replace(",", "-")
                   .replace(" ", "-").split("-"))
        if text and set(text) <= set("SAFRPUEC.") and not bits & {"ACK", "FIN", "SYN", "RST"}:
            letters = {"S": "SYN", "F": "FIN", "R": "RST", "A": "ACK", ".": "ACK", "P": "PSH"}
            bits = {letters.get(ch, ch) for ch in text}
        if "DATA" in bits or "PSH" in bits:
            bits.add("ACK")
        known = {"SYN", "ACK", "FIN", "RST", "NONE", "PSH", "DATA", "URG", "ECE", "CWR", "SYNACK"}
        if not bits or not bits <= known:
            raise ValueError(f"unknown TCP flags {flag!r} (SYN, SYN-ACK, ACK, FIN, RST, data)")
        if "SYNACK" in bits:
            bits |= {"SYN", "ACK"}
    if "RST" in bits:
        return "RST"
    if "SYN" in bits:
        return "SYN-ACK" if "ACK" in bits else "SYN"
    if "FIN" in bits:
        return "FIN"
    return "ACK" if "ACK" in bits else "NONE"


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


def table_cell(direction: str, flag: str, old: str) -> str:
    """``TCP_CONNTRACKS[dir][index][old]``: a state name, ``INVALID`` or ``IGNORE``."""
    new = TCP_CONNTRACKS[DIR_NAMES.index(direction)][INDEX_NAMES.index(flag)][
        TCP_CONNTRACK_NAMES.index(old)]
    if new == TCP_CONNTRACK_MAX:
        return "INVALID"
    if new == TCP_CONNTRACK_IGNORE:
        return "IGNORE"
    return TCP_CONNTRACK_NAMES[new]


def edge_label(by_dir: Mapping[str, list[str]]) -> str:
    """``ORIG SYN`` / ``REPLY SYN-ACK``; the same flags both ways need no direction."""
    dirs = [d for d in DIR_NAMES if by_dir.get(d)]
    if len(dirs) == 2 and by_dir["ORIGINAL"] == by_dir["REPLY"]:
        return ",".join(by_dir["ORIGINAL"])
    return " / ".join(f"{DIR_SHORT[d]} {','.join(by_dir[d])}" for d in dirs)


def _edges() -> dict[tuple[str, str], dict[str, list[str]]]:
    out: dict[tuple[str, str], dict[str, list[str]]] = {}
    for (d, a, b), flags in tcp_transitions().items():
        out.setdefault((a, b), {})[d] = flags
    return out


def edge_kind(a: str, b: str) -> str:
    """main, minor, rst (collapsed into the note), loop or other (both hidden)."""
    if (a, b) in MAIN:
        return "main"
    if (a, b) in MINOR:
        return "minor"
    if b == "CLOSE" and a != b and all(f == ["RST"] for f in _edges()[(a, b)].values()):
        return "rst"
    return "loop" if a == b else "other"


# --------------------------------------------------------------------------- the diagram

def _edge_svg(a: str, b: str, label: str, kind: str, highlight: bool,
              geometry: tuple[str, tuple[float, float]], uid: str) -> str:
    path, (lx, ly) = geometry
    cls = " ".join(filter(None, ("nt-edge", f"nt-{kind}", "nt-highlight" if highlight else None)))
    marker = f"{uid}-arrow-hl" if highlight else f"{uid}-arrow"
    w = 8.2 * len(label) + 10
    bg = (f'<rect class="nt-bg" x="{lx - w / 2:.1f}" y="{ly - 9:.1f}" width="{w:.1f}" '
          f'height="18" rx="3"/>')
    return (f'<g class="{cls}"{data_attrs({"from": a, "to": b, "label": label})}>'
            f"<title>{esc(f'{a} --{label}--> {b}')}</title>"
            f'<path d="{path}" marker-end="url(#{marker})"/>{bg}'
            f'<text x="{lx:.1f}" y="{ly:.1f}">{esc(label)}</text></g>')


def duration_text(seconds: int) -> str:
    """432000 -> ``5 d``, 7200 -> ``2 h``, 120 -> ``120 s`` (how long a state lasts)."""
    for unit, n in (("d", 86400), ("h", 3600)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds // n} {unit}"
    return f"{seconds} s"


def state_timeouts(timeouts: Mapping[str, int] | None = None) -> dict[str, int]:
    """State name -> timeout in seconds: the sysctl defaults (tcp_timeouts[] in
    nf_conntrack_proto_tcp.c), overridden by ``timeouts`` given under the kernel's
    names, with or without the ``net.netfilter.`` prefix."""
    settings = dict(SYSCTL_DEFAULTS)
    for key, value in (timeouts or {}).items():
        name = key.removeprefix("net.netfilter.")
        if name not in settings:
            raise ValueError(f"unknown setting {key!r} (e.g. "
                             f"net.netfilter.nf_conntrack_tcp_timeout_time_wait)")
        settings[name] = int(value)
    return {TCP_CONNTRACK_NAMES[st]: settings[name] for st, name in TIMEOUT_SYSCTL.items()
            if st < len(TCP_CONNTRACK_NAMES)}


def _node_svg(name: str, current: str | None, prev: str | None,
              timeouts: Mapping[str, int]) -> str:
    x, y = NODE_POS[name]
    cls = ["nt-node"]
    if name == "SYN_SENT2":
        cls.append("nt-dim")
    if name == current:
        cls.append("nt-current")
    elif name == prev:
        cls.append("nt-prev")
    if name in timeouts:
        label = (f'<text x="{x}" y="{y - 8}">{esc(name)}</text>'
                 f'<text class="nt-timeout" x="{x}" y="{y + 11}">'
                 f'{esc(duration_text(timeouts[name]))}</text>')
    else:
        label = f'<text x="{x}" y="{y}">{esc(name)}</text>'
    return (f'<g class="{" ".join(cls)}" data-state="{esc(name)}">'
            f'<rect x="{x - NODE_W / 2}" y="{y - NODE_H / 2}" width="{NODE_W}" '
            f'height="{NODE_H}" rx="10"/>{label}</g>')


def _defs(uid: str) -> str:
    """The arrowheads, under ids of their own: ids are global to the page, and a marker
    inside a hidden output (a closed Tab) would not draw for the others."""
    return ('<defs>'
            f'<marker id="{uid}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" '
            'markerHeight="5" orient="auto"><path d="M0 0 L10 5 L0 10 z" '
            'style="fill:currentColor"/></marker>'
            f'<marker id="{uid}-arrow-hl" viewBox="0 0 10 10" refX="8" refY="5" '
            'markerWidth="4.5" markerHeight="4.5" orient="auto">'
            f'<path d="M0 0 L10 5 L0 10 z" fill="{HL}"/></marker></defs>')


def diagram_parts(current: int | str | None = None, prev: int | str | None = None,
                  direction: int | str | None = None, flag: str | int | None = None,
                  timeouts: Mapping[str, int] | None = None, uid: str = "nt"
                  ) -> tuple[dict[str, Any], str]:
    """(state, SVG body) of :func:`state_diagram_svg`; ``uid`` prefixes the ids."""
    cur, old, d, f = _state(current), _state(prev), _direction(direction), flag_index(flag)
    durations = state_timeouts(timeouts)
    edges = _edges()
    hl = (old, cur) if old is not None and cur is not None else None
    cell = None if old is None or d is None or f is None else table_cell(d, f, old)
    if hl is None:
        in_table = None
    elif d is not None and f is not None:
        in_table = cell == cur
    else:
        in_table = any(b == cur and (d is None or dd == d) and (f is None or f in flags)
                       for (a, b), by in edges.items() if a == old for dd, flags in by.items())
    parts = [_defs(uid)]
    drawn_hl = False
    top: list[str] = []
    for (a, b), by_dir in edges.items():
        kind = edge_kind(a, b)
        is_hl = hl == (a, b)
        if kind not in ("main", "minor") and not is_hl:
            continue
        label = edge_label(by_dir)
        if (a, b) in MINOR_WHY:
            label += f" ({MINOR_WHY[(a, b)]})"
        if is_hl and d and f:
            label = f"{DIR_SHORT[d]} {f}"
        geo = _fixed_geometry(a, b) or _generic_geometry(a, b)
        svg = _edge_svg(a, b, label, kind if kind in ("main", "minor") else "extra", is_hl, geo,
                        uid)
        (top if is_hl else parts).append(svg)
        drawn_hl |= is_hl
    if hl is not None and not drawn_hl:            # a special case of tcp_packet: no cell
        label = " ".join(filter(None, (d and DIR_SHORT[d], f))) or "?"
        geo = _fixed_geometry(*hl) or _generic_geometry(*hl)
        top.append(_edge_svg(hl[0], hl[1], label, "extra", True, geo, uid))
    # the entry's end: timeouts lead to DESTROY
    gx, gy = GONE_POS
    parts.append(f'<g class="nt-gone"><rect x="{gx - NODE_W / 2}" y="{gy - NODE_H / 2}" '
                 f'width="{NODE_W}" height="{NODE_H}" rx="19"/>'
                 f'<text x="{gx}" y="{gy}">entry destroyed</text></g>')
    for name, side_a, side_b in (("TIME_WAIT", "b", "t"), ("CLOSE", "l", "r")):
        p, q = _side(name, side_a), _side("GONE", side_b)
        lab = _mid(p, q, dx=36 if side_a == "b" else 0, dy=0 if side_a == "b" else -13)
        parts.append(_edge_svg(name, "GONE", "timeout", "expire", False, (_line(p, q), lab),
                               uid))
    # the RST cells, collapsed
    rx, ry = RST_POS
    note = "any state --RST--> CLOSE"
    parts.append(f'<g class="nt-rst"><rect x="{rx - 10}" y="{ry - 17}" '
                 f'width="{8.1 * len(note) + 20:.0f}" height="34" rx="6"/>'
                 f'<text x="{rx}" y="{ry}">{esc(note)}</text></g>')
    p, q = (rx - 10, ry), _side("CLOSE", "r")
    parts.append(f'<g class="nt-edge nt-minor"><path d="{_line(p, q)}" '
                 f'marker-end="url(#{uid}-arrow)"/></g>')
    parts += top                                   # the highlight over everything else
    for name in TCP_CONNTRACK_NAMES:
        parts.append(_node_svg(name, cur, old, durations))
    # caption and legend
    if hl is not None:
        raw = str(flag) if isinstance(flag, str) else None
        given = f" ({raw})" if raw and raw.upper() != f else ""
        what = f"{old} → {cur}" + (f"  on {DIR_SHORT[d]} {f}{given}" if d and f else "")
        if in_table is False:
            what += ("  (no table cell: a special case of tcp_packet)" if cell != "IGNORE"
                     else "  (the table says: ignore)")
        caption = f'<text class="nt-caption nt-caption-hl" x="16" y="26">{esc(what)}</text>'
    elif cur is not None:
        caption = f'<text class="nt-caption" x="16" y="26">state: {esc(cur)}</text>'
    else:
        caption = '<text class="nt-caption" x="16" y="26">TCP conntrack states</text>'
    parts.append(caption)
    legend = ("bold: the usual path · dashed: rarer · ORIG/REPLY: the packet's direction "
              "(none: either)", "under each state: its timeout · not drawn: packets that "
              "keep the state (ACKs while ESTABLISHED, ...)")
    for i, line in enumerate(legend):
        parts.append(f'<text class="nt-note" x="16" y="{HEIGHT - 34 + 18 * i}">{esc(line)}'
                     f"</text>")
    state = {"view": "diagram", "state": cur, "prev": old,
             "transition": f"{old}>{cur}" if hl else None, "dir": d, "flag": f,
             "cell": cell, "in_table": in_table,
             "timeouts": [f"{k}={v}" for k, v in durations.items()]}
    return state, "".join(parts)


def state_diagram_svg(current: int | str | None = None, prev: int | str | None = None,
                      direction: int | str | None = None, flag: str | int | None = None,
                      timeouts: Mapping[str, int] | None = None) -> str:
    """The TCP conntrack state machine as SVG, drawn from TCP_CONNTRACKS.

    States may be numbers or names, ``direction`` 0/1 or "ORIGINAL"/"REPLY",
    ``flag`` as :func:`flag_index` reads it.  ``current`` is filled; with ``prev``
    the arrow prev -> current is highlighted (drawn if it is normally hidden; then
    with direction and flag its label is the packet that took it).  A transition
    that is no table cell is drawn and named as a special case of tcp_packet.
    Each state shows its timeout: ``timeouts`` (sysctl names) over the defaults.
    """
    state, body = diagram_parts(current, prev, direction, flag, timeouts)
    return _svg(WIDTH, HEIGHT, "tcp-states", body, state)


def _svg(width: int, height: float, kind: str, body: str,
         state: Mapping[str, Any] | None = None) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nt nt-{kind}"'
            f'{data_attrs(state or {})} width="{width}" height="{height:g}" '
            f'viewBox="0 0 {width} {height:g}" style="max-width:100%;height:auto">'
            f"<style>{SVG_STYLE}</style>{body}</svg>")


# --------------------------------------------------------------------------- timeline

_EST = {"ESTABLISHED", "ASSURED"}
_CLOSING = {"FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "SYN_RECV"}
_ENDED = {"TIME_WAIT", "CLOSE"}


def _short_tuple(orig: Mapping[str, Any], proto: Any) -> str:
    sport = orig.get("sport", orig.get("id"))
    dport = orig.get("dport")
    src = orig.get("src", "?") if sport is None else f"{orig.get('src', '?')}:{sport}"
    dst = orig.get("dst", "?") if dport is None else f"{orig.get('dst', '?')}:{dport}"
    return f"{proto} {src} > {dst}"


def timeline_entry(entry: Any) -> dict[str, Any]:
    """One timeline row: ``label``, ``deadline`` (seconds, on the caller's clock) and
    ``state`` from

    * a ``(label, deadline)`` or ``(label, deadline, state)`` tuple,
    * a mapping with ``deadline`` and either ``label`` or ``orig`` (+ ``proto``),
    * a :class:`nattrack.conntrack.conn.Conn` (deadline = its timeout in jiffies / HZ).
    """
    if isinstance(entry, tuple) and len(entry) in (2, 3):
        return {"label": str(entry[0]), "deadline": float(entry[1]),
                "state": entry[2] if len(entry) == 3 else None}
    if isinstance(entry, Mapping) and "deadline" in entry:
        label = entry.get("label")
        if label is None:
            label = _short_tuple(entry.get("orig") or {}, entry.get("proto", ""))
        return {"label": str(label), "deadline": float(entry["deadline"]),
                "state": entry.get("state")}
    if hasattr(entry, "orig") and hasattr(entry, "timeout"):
        from ..conntrack.show import proto_name, state_name, tuple_fields
        return {"label": _short_tuple(tuple_fields(entry.orig), proto_name(entry.orig.proto)),
                "deadline": entry.timeout / HZ, "state": state_name(entry)}
    raise TypeError(f"not a timeline entry: {entry!r} (give (label, deadline) pairs, "
                    f"Conn objects, or use timeline_entries_from_table for -L lines)")


def timeline_entries_from_table(lines_or_dicts: Iterable[Any],
                                now: float) -> list[dict[str, Any]]:
    """``conntrack -L`` lines / conn_json dicts (remaining timeouts as of ``now``) ->
    timeline rows (label = the flow as ``nattrack diff`` names it)."""
    return [{"label": e["flow"], "deadline": now + (e["timeout"] or 0),
             "state": e["state"] or _flags_state(e)}
            for e in normalize_entries(lines_or_dicts)]


def _flags_state(e: Mapping[str, Any]) -> str | None:
    flags = e["cells"]["flags"].split()
    return "UNREPLIED" if "UNREPLIED" in flags else ("ASSURED" if "ASSURED" in flags else None)


def _bar_class(state: str | None) -> str | None:
    if state in _EST:
        return "nt-est"
    if state in _CLOSING:
        return "nt-closing"
    return "nt-ended" if state in _ENDED else None


def _clip(label: str, n: int = 58) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def axis_ticks(horizon: float) -> list[float]:
    """0 and round steps (1, 2, 5, 10, 15, 30, 60 s, ...) up to ``horizon``, at most 7."""
    steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600]
    step = next((st for st in steps if horizon / st <= 6), horizon / 6)
    return [i * step for i in range(int(horizon / step + 1e-9) + 1)]


def timeline_parts(entries: Iterable[Any], now: float, horizon: float,
                   destroyed: Iterable[tuple[str, float]] = ()
                   ) -> tuple[dict[str, Any], str, int, int]:
    """(state, SVG body, height, width) of :func:`timeline_svg`."""
    if horizon <= 0:
        raise ValueError("horizon must be positive")
    rows = [timeline_entry(e) for e in entries]
    gone = list(destroyed)
    longest = max([len(r["label"]) for r in rows] + [len(g[0]) for g in gone] + [24])
    label_w = min(8 * longest + 14, 480)                # 13 px monospace, clipped past 60
    state_w, bar_w, row_h, top = 105, 340, 24, 14
    x0 = label_w + state_w
    n = len(rows) + len(gone)
    axis_y = top + row_h * max(n, 1) + 4
    parts = []
    for i, r in enumerate(rows):
        left = r["deadline"] - now
        expired = left <= 0
        w = 0.0 if expired else min(left, horizon) / horizon * bar_w
        y = top + i * row_h
        cls = " ".join(filter(None, ("nt-bar", _bar_class(r["state"]),
                                     "nt-expired" if expired else None)))
        shown = "expired, awaiting gc" if expired else f"{math.floor(left):.0f} s"
        if left > horizon:
            shown += " »"                           # off the scale
        attrs = data_attrs({"flow": r["label"], "state": r["state"],
                            "remaining": f"{max(left, 0):.1f}"})
        parts.append(f'<g class="{cls}"{attrs}>'
                     f'<text x="4" y="{y + row_h / 2}">{esc(_clip(r["label"]))}</text>'
                     f'<text class="nt-st" x="{label_w}" y="{y + row_h / 2}">'
                     f'{esc(r["state"] or "")}</text>'
                     f'<rect class="nt-track" x="{x0}" y="{y + 4}" width="{bar_w}" '
                     f'height="{row_h - 8}"/>'
                     f'<rect class="nt-fill" x="{x0}" y="{y + 4}" width="{w:.1f}" '
                     f'height="{row_h - 8}"/>'
                     f'<text x="{x0 + bar_w + 8}" y="{y + row_h / 2}">{esc(shown)}</text></g>')
    for j, (label, when) in enumerate(gone):
        y = top + (len(rows) + j) * row_h
        ago = max(0.0, now - when)
        attrs = data_attrs({"flow": label, "destroyed": f"{when:g}"})
        parts.append(f'<g class="nt-bar nt-destroyed"{attrs}>'
                     f'<text x="4" y="{y + row_h / 2}">{esc(_clip(label))}</text>'
                     f'<text class="nt-mark" x="{label_w}" y="{y + row_h / 2}">✕ DESTROY</text>'
                     f'<text x="{x0}" y="{y + row_h / 2}">'
                     f'{esc(f"gone {ago:.0f} s ago")}</text></g>')
    if not n:
        parts.append(f'<text class="nt-note" x="4" y="{top + row_h / 2 + 2}">no entries</text>')
    parts.append(f'<line class="nt-axis" x1="{x0}" y1="{axis_y}" x2="{x0 + bar_w}" '
                 f'y2="{axis_y}"/>')
    for tick in axis_ticks(horizon):
        x = x0 + tick / horizon * bar_w
        parts.append(f'<text class="nt-tick" x="{x:.1f}" y="{axis_y + 14}">'
                     f'{esc(f"{tick:g} s")}</text>')
    state = {"view": "timeline", "entries": len(rows),
             "expired": sum(1 for r in rows if r["deadline"] <= now),
             "destroyed": [label for label, _ in gone],
             "flows": [r["label"] for r in rows], "now": now, "horizon": horizon}
    return state, "".join(parts), axis_y + 24, x0 + bar_w + 160


def timeline_svg(entries: Iterable[Any], now: float, horizon: float,
                 destroyed: Iterable[tuple[str, float]] = ()) -> str:
    """A countdown chart: one bar per entry, as long as its remaining time (seconds)
    on a scale of ``horizon`` seconds (longer bars are clipped), coloured by state;
    expired entries (remaining <= 0, not yet collected) are ``nt-expired``.
    ``destroyed`` adds a ``✕ DESTROY`` row per (label, time it went)."""
    state, body, height, width = timeline_parts(entries, now, horizon, destroyed)
    return _svg(width, height, "timeline", body, state)
