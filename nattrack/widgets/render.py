"""HTML views of conntrack tables, events and packets: pure functions returning strings.

Every function here returns one self-contained, well-formed fragment (a single
``<div>`` with its own ``<style>``; no JavaScript, no external CSS or fonts) that
a notebook widget can put into an ``ipywidgets.HTML`` as it is.  Every value that
comes from outside (lines, addresses, labels) goes through :func:`esc`, and the
same input always gives the same bytes.

What a fragment shows is also written, machine-readable, as ``data-*``
attributes of its root element (see :func:`data_attrs`, read back with
:func:`widget_state`); the attributes each view sets are listed in
:mod:`nattrack.widgets.views`.

Classes that tests and widgets rely on: ``nt-new`` (a row added since the
previous table), ``nt-changed`` (a cell or field that changed), ``nt-hl`` (a row
the caller asked to highlight), ``nt-differ`` (a row on which the two trackers
disagree), ``nt-ev-new``/``-update``/``-destroy``.

Colours are translucent tints over the notebook's own background and text
colours (JupyterLab's ``--jp-*`` variables, else VS Code's ``--vscode-*``), so the
same markup reads in light and dark themes.
"""
from __future__ import annotations

import html
import re
import struct
from html.parser import HTMLParser
from typing import Any, Iterable, Mapping

from ..conntrack.show import format_timestamp, parse_conntrack_line
from ..conntrack.tuple import int2ip
from ..lab.diff import diff_tables, flow_text
from ..packet.ipv4 import ICMP_QUERY_TYPES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Packet

# Colours shared with the SVG views (mid-tones: readable on white and on near-black).
GREEN, BLUE, ORANGE, RED, GREY = "#2f9e44", "#3b7dd8", "#e8590c", "#e03131", "#868e96"
# The theme's text and background: JupyterLab / Notebook 7, else VS Code, else the page's.
FG = "var(--jp-content-font-color1,var(--vscode-editor-foreground,inherit))"
BG = "var(--jp-layout-color0,var(--vscode-editor-background,#fff))"

# One stylesheet for every HTML view; class names carry an ``nt-`` prefix so that
# they cannot clash with the notebook's own.
STYLE = (
    ".nt{font-family:var(--jp-code-font-family,monospace);font-size:12px;"
    "color:" + FG + ";line-height:1.35}"
    ".nt .nt-title{font-family:var(--jp-ui-font-family,sans-serif);font-weight:bold;"
    "font-size:13px;margin:2px 0 4px}"
    ".nt table{border-collapse:collapse;margin:2px 0}"
    ".nt caption{text-align:left;font-weight:bold;padding:2px 0}"
    ".nt th,.nt td{border:1px solid rgba(128,128,128,.45);padding:1px 6px;text-align:left;"
    "white-space:nowrap}"
    ".nt th{background:rgba(128,128,128,.18)}"
    ".nt .nt-new{background:rgba(47,158,68,.22)}"
    ".nt .nt-hl{outline:2px solid " + BLUE + ";outline-offset:-2px}"
    ".nt .nt-changed{background:rgba(250,176,5,.38);font-weight:bold}"
    ".nt .nt-differ{background:rgba(224,49,49,.20)}"
    ".nt .nt-missing{color:" + GREY + "}"
    ".nt .nt-sides{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}"
    ".nt .nt-ev-new{color:" + GREEN + "}"
    ".nt .nt-ev-update{color:" + BLUE + "}"
    ".nt .nt-ev-destroy{color:" + RED + "}"
    ".nt .nt-note{color:" + GREY + "}"
    ".nt .nt-state{font-weight:bold}"
    ".nt .nt-summary{white-space:nowrap}"
    ".nt .nt-err{color:" + RED + "}"
    ".nt-mode{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:bold;"
    "font-family:var(--jp-ui-font-family,sans-serif);color:#fff}"
    ".nt-mode-live{background:" + GREEN + "}.nt-mode-replay{background:" + BLUE + "}"
)

TABLE_COLUMNS = ("proto", "timeout", "state", "original", "reply", "flags")
# Flags worth showing from a conn_json dict's status list (the ones conntrack -L prints).
_SHOWN_STATUS = ("OFFLOAD", "HW_OFFLOAD")
# What conntrack -L prints after the table (on stderr, but often pasted along).
_SUMMARY_RE = re.compile(r"^conntrack v\S+ \(conntrack-tools\)|flow entries have been shown")


def esc(value: Any) -> str:
    """html.escape of str(value); None becomes the empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def _cls(*names: str | None) -> str:
    present = [n for n in names if n]
    return f' class="{esc(" ".join(present))}"' if present else ""


def attr_value(value: Any) -> str:
    """How a state value is written into a ``data-*`` attribute: lists joined by
    commas, booleans as ``true``/``false``, None as the empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def data_attrs(state: Mapping[str, Any]) -> str:
    """`` data-key="value"`` for every key (``_`` becomes ``-``), escaped."""
    return "".join(f' data-{k.replace("_", "-")}="{esc(attr_value(v))}"'
                   for k, v in state.items())


class _RootAttrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.attrs is None:
            self.attrs = {k: v or "" for k, v in attrs}


def widget_state(markup: str) -> dict[str, str]:
    """The ``data-*`` attributes of a fragment's root element (what a view shows),
    without the ``data-`` prefix: what a test reads from a notebook's stored widget
    state (the ``value`` of an ``HTMLModel``)."""
    p = _RootAttrs()
    p.feed(markup)
    return {k[5:]: v for k, v in (p.attrs or {}).items() if k.startswith("data-")}


def _title(title: str | None) -> str:
    return f'<div class="nt-title">{esc(title)}</div>' if title else ""


def _wrap(kind: str, body: str, state: Mapping[str, Any] | None = None,
          title: str | None = None) -> str:
    return (f'<div class="nt nt-{kind}"{data_attrs(state or {})}><style>{STYLE}</style>'
            f"{_title(title)}{body}</div>")


# --------------------------------------------------------------------------- entries

def _endpoint(t: Mapping[str, Any], side: str) -> str:
    addr = t.get(side, "?")
    if "sport" in t or "dport" in t:
        return f"{addr}:{t.get('sport' if side == 'src' else 'dport', '?')}"
    if "id" in t:                                   # ICMP: id with the source, type with dst
        return (f"{addr} id {t['id']}" if side == "src"
                else f"{addr} type {t.get('type')} code {t.get('code')}")
    return str(addr)


def tuple_text(t: Mapping[str, Any]) -> str:
    """``src:sport -> dst:dport`` (ICMP: ``src id N -> dst type T code C``)."""
    if not t:
        return ""
    return f"{_endpoint(t, 'src')} -> {_endpoint(t, 'dst')}"


def is_summary_line(line: str) -> bool:
    """True for the ``conntrack v1.4.7 (conntrack-tools): N flow entries ...`` line."""
    return bool(_SUMMARY_RE.search(line))


def _parse_line(line: str) -> dict[str, Any]:
    try:
        return parse_conntrack_line(line)
    except (ValueError, IndexError):
        raise ValueError(f"not a conntrack -L/-E line: {line.strip()[:80]!r} (give "
                         f"`conntrack -L` lines or nattrack.conntrack.show.conn_json dicts)"
                         ) from None


def normalize_entry(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    """A ``conntrack -L`` line, a parse_conntrack_line dict or a conn_json dict -> one
    dict with ``key`` (proto and original tuple: what identifies the entry), ``flow``
    (``proto src:sport > dst:dport``, as ``nattrack diff`` names flows), ``cells``
    (TABLE_COLUMNS -> text), ``timeout`` (int or None), ``state`` (or None),
    ``orig``/``reply`` (tuple dicts) and ``line`` (the ``-L`` text)."""
    if isinstance(entry, Mapping) and "cells" in entry and "key" in entry:
        return dict(entry)                           # normalized already
    p = _parse_line(entry) if isinstance(entry, str) else entry
    if not isinstance(p, Mapping) or "orig" not in p:
        raise ValueError(f"not a conntrack entry: {str(entry)[:80]!r} (give `conntrack -L` "
                         f"lines or nattrack.conntrack.show.conn_json dicts)")
    if "protonum" in p:                              # conn_json
        proto_name, proto = p["proto"], p["protonum"]
        flags = {"UNREPLIED"} if p.get("unreplied") else set()
        if p.get("assured"):
            flags.add("ASSURED")
        flags.update(s for s in p.get("status", ()) if s in _SHOWN_STATUS)
    else:                                            # parse_conntrack_line
        proto_name, proto = p.get("proto_name"), p.get("proto")
        flags = set(p.get("flags") or ())
    orig, reply = p.get("orig") or {}, p.get("reply") or {}
    if p.get("mark"):
        flags.add(f"mark={p['mark']}")
    cells = {"proto": f"{proto_name} {proto}",
             "timeout": "" if p.get("timeout") is None else str(p["timeout"]),
             "state": p.get("state") or "",
             "original": tuple_text(orig), "reply": tuple_text(reply),
             "flags": " ".join(sorted(flags))}
    key = (proto,) + tuple(sorted((k, str(v)) for k, v in orig.items()))
    flow = flow_text({"proto_name": proto_name, "orig": orig})
    line = entry if isinstance(entry, str) else entry_line(p)
    return {"key": key, "flow": flow, "cells": cells, "timeout": p.get("timeout"),
            "state": p.get("state"), "orig": orig, "reply": reply,
            "line": line.strip(), "proto": proto_name}


def entry_line(p: Mapping[str, Any], use: bool = True) -> str:
    """A conn_json dict (or a parse_conntrack_line dict) as its ``conntrack -L`` line
    (without counters), so that both forms go through the same comparison."""
    if "protonum" in p:
        proto_name, proto = p["proto"], p["protonum"]
        unreplied, assured = p.get("unreplied"), p.get("assured")
    else:
        proto_name, proto = p.get("proto_name"), p.get("proto")
        unreplied, assured = ("UNREPLIED" in p.get("flags", ())), ("ASSURED" in p.get("flags", ()))
    out = [f"{proto_name:<8} {proto}"]
    if p.get("timeout") is not None:
        out.append(str(p["timeout"]))
    if p.get("state"):
        out.append(str(p["state"]))
    out += [f"{k}={v}" for k, v in (p.get("orig") or {}).items()]
    if unreplied:
        out.append("[UNREPLIED]")
    out += [f"{k}={v}" for k, v in (p.get("reply") or {}).items()]
    if assured:
        out.append("[ASSURED]")
    out.append(f"mark={p.get('mark') or 0}")
    if use:
        out.append(f"use={p.get('use') or 1}")
    return " ".join(out)


def event_line(e: Mapping[str, Any]) -> str:
    """An event_json dict as its ``conntrack -E`` line (``-o timestamp`` when it has one)."""
    kind = f"[{e.get('event', '?')}]"
    body = entry_line(e, use=False)
    if not e.get("mark"):                           # -E prints mark= only when non-zero
        body = body.removesuffix(" mark=0")
    line = f"{kind:>9} {body}"
    return line if e.get("ts") is None else format_timestamp(e["ts"]) + line


def normalize_entries(items: Iterable[str | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """normalize_entry over a table; blank lines and conntrack's summary line are skipped."""
    out = []
    if isinstance(items, str):
        items = items.splitlines()
    elif isinstance(items, Mapping):
        items = [items]
    for item in items or ():
        if isinstance(item, str):
            if not item.strip() or is_summary_line(item):
                continue
        out.append(normalize_entry(item))
    return out


_entries = normalize_entries


def _header(columns: Iterable[str]) -> str:
    return "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"


def _row(cells: Mapping[str, str], row_class: str | None = None,
         changed: Iterable[str] = (), attrs: str = "") -> str:
    changed = set(changed)
    tds = "".join(f"<td{_cls('nt-changed' if c in changed else None, 'nt-col-' + c)}>"
                  f"{esc(cells.get(c, ''))}</td>" for c in TABLE_COLUMNS)
    return f"<tr{_cls(row_class)}{attrs}>{tds}</tr>"


def _row_attrs(e: Mapping[str, Any]) -> str:
    c = e["cells"]
    return data_attrs({"flow": e["flow"], "state": c["state"], "timeout": c["timeout"],
                       "orig": c["original"], "reply": c["reply"], "flags": c["flags"]})


def highlights(highlight: Any) -> list[Any]:
    """``highlight`` as a list of substrings and normalized entries (raises ValueError
    for what is neither, before anything is drawn)."""
    items = [] if highlight is None else (list(highlight) if isinstance(highlight, (list, tuple))
                                          else [highlight])
    return [h if isinstance(h, str) and not parse_like(h) else normalize_entry(h)
            for h in items]


def _matches(e: Mapping[str, Any], highlight: Any) -> bool:
    """Does entry ``e`` match ``highlight``: a substring of its -L line / flow / tuples,
    or an entry (line or dict) with the same original tuple."""
    if isinstance(highlight, str):
        return any(highlight in s for s in (e["line"], e["flow"], e["cells"]["original"],
                                            e["cells"]["reply"]))
    return highlight["key"] == e["key"]


def parse_like(text: str) -> bool:
    """A whole ``conntrack -L`` line rather than a fragment of one."""
    return bool(re.match(r"^\s*(\[\w+\]\s+)?(ipv4\s+2\s+)?[a-z]+\s+\d+\s", text))


def table_parts(rows: list[dict[str, Any]], before: list[dict[str, Any]] | None,
                highlight: Any = None) -> tuple[dict[str, Any], str]:
    """(state, table markup) of conntrack_table_html, from normalized entries."""
    prev = None if before is None else {e["key"]: e for e in before}
    hls = highlights(highlight)
    out = [_header(TABLE_COLUMNS)]
    new, changed_flows, hl_flows = [], [], []
    for e in rows:
        hl = any(_matches(e, h) for h in hls)
        if hl:
            hl_flows.append(e["flow"])
        changed: list[str] = []
        cls = None
        if prev is not None and e["key"] not in prev:
            cls = "nt-new"
            new.append(e["flow"])
        elif prev is not None:
            old = prev[e["key"]]["cells"]
            changed = [c for c in TABLE_COLUMNS if e["cells"][c] != old[c]]
            if any(c != "timeout" for c in changed):
                changed_flows.append(e["flow"])
        out.append(_row(e["cells"], " ".join(filter(None, (cls, "nt-hl" if hl else None)))
                        or None, changed, _row_attrs(e)))
    gone = [] if prev is None else [p["flow"] for k, p in prev.items()
                                    if k not in {e["key"] for e in rows}]
    state = {"view": "table", "entries": len(rows),
             "states": [e["state"] or "" for e in rows],
             "flows": [e["flow"] for e in rows], "new": new, "changed": changed_flows,
             "gone": gone, "highlight": hl_flows}
    note = f'<div class="nt-note">{len(rows)} flow entries</div>'
    return state, "<table>" + "".join(out) + "</table>" + note


def conntrack_table_html(lines_or_dicts: Iterable[str | Mapping[str, Any]],
                         previous: Iterable[str | Mapping[str, Any]] | None = None,
                         highlight: Any = None, title: str | None = None) -> str:
    """A table of conntrack entries (``conntrack -L`` lines or conn_json dicts).

    With ``previous`` (the table one step earlier, in either form), rows whose entry
    was not there get class ``nt-new`` and cells whose text changed ``nt-changed``.
    ``highlight`` (a substring of a row's line or tuples, an entry, or a list of
    them) outlines the matching rows (``nt-hl``).  Each row carries ``data-flow``,
    ``data-state``, ``data-timeout``, ``data-orig``, ``data-reply``, ``data-flags``.
    """
    state, body = table_parts(_entries(lines_or_dicts),
                              None if previous is None else _entries(previous), highlight)
    return _wrap("table", body, state, title)


# --------------------------------------------------------------------------- packets

def _u16(buf: bytes | bytearray | memoryview, at: int) -> int:
    return struct.unpack_from("!H", buf, at)[0]


_TCP_FLAG_NAMES = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"),
                   (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR"))


def packet_fields(p: Packet, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, name, value) of the header fields NAT can touch, in header order.

    Keys are what ``data-changed`` lists: ``src dst ttl ip_csum proto sport dport
    tcp_flags l4_csum`` (ICMP: ``type code id l4_csum``; a fragment: ``frag``); the
    header quoted in an ICMP error repeats them with an ``inner_`` prefix.
    """
    buf = p.buf
    kp = "inner_" if prefix else ""
    out = [(kp + "src", prefix + "IP src", int2ip(p.src)), (kp + "dst", prefix + "IP dst", int2ip(p.dst))]
    if not prefix:
        out += [("ttl", "IP ttl", str(p.ttl)),
                ("ip_csum", "IP checksum", f"0x{_u16(buf, p.off + 10):04x}")]
    out.append((kp + "proto", prefix + "IP proto", str(p.proto)))
    have = p.l4len
    if p.frag:
        return out + [(kp + "frag", prefix + "fragment offset", str(p.frag))]
    if p.proto in (IPPROTO_TCP, IPPROTO_UDP) and have >= 4:
        name = "TCP" if p.proto == IPPROTO_TCP else "UDP"
        out += [(kp + "sport", f"{prefix}{name} sport", str(p.sport)),
                (kp + "dport", f"{prefix}{name} dport", str(p.dport))]
        if p.proto == IPPROTO_TCP and not prefix and have >= 14:
            flags = "-".join(n for bit, n in _TCP_FLAG_NAMES if p.tcpflags & bit) or "none"
            out.append(("tcp_flags", "TCP flags", flags))
        csum_at = 16 if p.proto == IPPROTO_TCP else 6
        if not prefix and have >= csum_at + 2:
            out.append(("l4_csum", f"{name} checksum", f"0x{_u16(buf, p.l4 + csum_at):04x}"))
    elif p.proto == IPPROTO_ICMP and have >= 8:
        out += [(kp + "type", prefix + "ICMP type", str(p.itype)),
                (kp + "code", prefix + "ICMP code", str(p.icode))]
        if p.itype in ICMP_QUERY_TYPES:
            out.append((kp + "id", prefix + "ICMP id", str(p.sport)))
        if not prefix:
            out.append(("l4_csum", "ICMP checksum", f"0x{_u16(buf, p.l4 + 2):04x}"))
            inner = p.embedded_packet()
            if inner is not None:                    # an ICMP error: NAT rewrites the quote too
                out += packet_fields(inner, "inner ")
    return out


def _parse(data: bytes, which: str) -> Packet:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{which}: expected the IPv4 datagram as bytes, got "
                         f"{type(data).__name__}")
    p = Packet.parse(bytearray(data))
    if p is None:
        raise ValueError(f"{which}: not a valid IPv4 datagram (give the IP header onwards, "
                         f"without the Ethernet header)")
    return p


def packet_parts(before: bytes, after: bytes | None, before_label: str = "before",
                 after_label: str = "after") -> tuple[dict[str, Any], str]:
    """(state, markup) of packet_before_after_html."""
    pb = _parse(before, before_label)
    pa = None if after is None else _parse(after, after_label)
    fb = {k: (name, v) for k, name, v in packet_fields(pb)}
    fa = {} if pa is None else {k: (name, v) for k, name, v in packet_fields(pa)}
    keys = list(fb) + [k for k in fa if k not in fb]
    heads = ("field", before_label) + (() if pa is None else (after_label,))
    rows = [_header(heads)]
    changed = []
    for k in keys:
        name = (fb.get(k) or fa[k])[0]
        vb = fb[k][1] if k in fb else "-"
        if pa is None:
            rows.append(f'<tr data-field="{esc(k)}"><td>{esc(name)}</td><td>{esc(vb)}</td></tr>')
            continue
        va = fa[k][1] if k in fa else "-"
        if vb != va:
            changed.append(k)
        rows.append(f'<tr{_cls("nt-changed" if vb != va else None)} data-field="{esc(k)}">'
                    f"<td>{esc(name)}</td><td>{esc(vb)}</td><td>{esc(va)}</td></tr>")
    summaries = [(before_label, pb.summary())] + ([] if pa is None else
                                                 [(after_label, pa.summary())])
    lines = "".join(f'<div class="nt-summary"><b>{esc(label)}</b>: {esc(text)}</div>'
                    for label, text in summaries)
    names = {k: (fb.get(k) or fa[k])[0] for k in changed}
    note = ("" if pa is None else '<div class="nt-note">changed: '
            + (esc(", ".join(names[k] for k in changed)) or "nothing") + "</div>")
    state = {"view": "packet", "changed": changed, "before": pb.summary(),
             "after": None if pa is None else pa.summary()}
    return state, lines + "<table>" + "".join(rows) + "</table>" + note


def packet_before_after_html(before: bytes, after: bytes | None,
                             before_label: str = "before", after_label: str = "after",
                             title: str | None = None) -> str:
    """Two IPv4 datagrams side by side, field by field; changed fields marked
    ``nt-changed`` and listed by key in ``data-changed`` (see :func:`packet_fields`).
    ``after`` None shows one packet alone.

    Raises ValueError if either is not an IPv4 datagram ip_rcv() would accept.
    """
    state, body = packet_parts(before, after, before_label, after_label)
    return _wrap("packet", body, state, title)


# --------------------------------------------------------------------------- events

_KIND_RE = re.compile(r"\[(NEW|UPDATE|DESTROY)\]")


def event_kind(line: str) -> str | None:
    """NEW, UPDATE or DESTROY from a ``conntrack -E`` line (None if none)."""
    m = _KIND_RE.search(line)
    return m.group(1) if m else None


def event_parts(lines: list[str], limit: int = 50) -> tuple[dict[str, Any], str]:
    """(state, markup) of event_log_html, from lines already stripped of blanks."""
    shown = lines[max(0, len(lines) - max(0, limit)):] if limit > 0 else []
    out = []
    for line in shown:
        kind = event_kind(line)
        out.append(f"<div{_cls('nt-event', kind and 'nt-ev-' + kind.lower())}>{esc(line)}</div>")
    kinds = [event_kind(ln) for ln in lines]
    state = {"view": "events", "events": len(lines), "shown": len(shown),
             "new": kinds.count("NEW"), "update": kinds.count("UPDATE"),
             "destroy": kinds.count("DESTROY"), "last": lines[-1] if lines else None}
    note = f'<div class="nt-note">last {len(shown)} of {len(lines)} events</div>'
    return state, "".join(out) + note


def event_log_html(lines: Iterable[str], limit: int = 50, title: str | None = None) -> str:
    """The last ``limit`` ``conntrack -E`` lines, coloured by event kind."""
    lines = [ln.rstrip("\n") for ln in lines if ln.strip()]
    state, body = event_parts(lines, limit)
    return _wrap("events", body, state, title)


# --------------------------------------------------------------------------- kernel vs python

def _diff_cells(a: dict[str, Any], b: dict[str, Any], tolerance: int) -> list[str]:
    """The columns whose text differs, timeouts within ``tolerance`` s counting as equal."""
    out = []
    for c in TABLE_COLUMNS:
        if c == "timeout" and a["timeout"] is not None and b["timeout"] is not None:
            if abs(a["timeout"] - b["timeout"]) > tolerance:
                out.append(c)
        elif a["cells"][c] != b["cells"][c]:
            out.append(c)
    return out


def _side_table(title: str, entries: list[dict[str, Any] | None],
                changed: list[list[str]], differ: list[bool]) -> str:
    out = [f"<caption>{esc(title)}</caption>", _header(TABLE_COLUMNS)]
    for e, ch, bad in zip(entries, changed, differ):
        if e is None:
            cells = dict.fromkeys(TABLE_COLUMNS, "")
            cells["original"] = "(no entry)"
            out.append(_row(cells, "nt-differ nt-missing"))
        else:
            out.append(_row(e["cells"], "nt-differ" if bad else None, ch, _row_attrs(e)))
    return "<table>" + "".join(out) + "</table>"


def _lines(items: Iterable[str | Mapping[str, Any]]) -> list[str]:
    return [e["line"] for e in _entries(items)]


def comparison_parts(python_lines: Iterable[str | Mapping[str, Any]],
                     kernel_lines: Iterable[str | Mapping[str, Any]], tolerance: int = 1,
                     titles: tuple[str, str] = ("nattrack (python)", "kernel")
                     ) -> tuple[dict[str, Any], str]:
    """(state, markup) of kernel_comparison_html."""
    rows = diff_tables(_lines(python_lines), _lines(kernel_lines), tolerance)
    py = [None if r.python is None else normalize_entry(r.python) for r in rows]
    kern = [None if r.kernel is None else normalize_entry(r.kernel) for r in rows]
    changed = [_diff_cells(a, b, tolerance) if a and b else [] for a, b in zip(py, kern)]
    differ = [not r.agree for r in rows]
    sides = (f'<div class="nt-sides">{_side_table(titles[0], py, changed, differ)}'
             f'{_side_table(titles[1], kern, changed, differ)}</div>')
    problems = [f"<li>{esc(flow_text(r.python or r.kernel or {}))}: {esc(p)}</li>"
                for r in rows for p in r.problems]
    same = sum(1 for r in rows if r.agree)
    summary = (f'<div class="nt-note">{len(rows)} flow(s): {same} agree, '
               f'{len(rows) - same} differ</div>')
    plist = f'<ul class="nt-problems">{"".join(problems)}</ul>' if problems else ""
    state = {"view": "compare", "flows": len(rows), "agree": same,
             "differ": len(rows) - same, "same": same == len(rows),
             "differing": [flow_text(r.python or r.kernel or {}) for r in rows if not r.agree],
             "python": sum(1 for e in py if e), "kernel": sum(1 for e in kern if e)}
    return state, sides + plist + summary


def kernel_comparison_html(python_lines: Iterable[str | Mapping[str, Any]],
                           kernel_lines: Iterable[str | Mapping[str, Any]],
                           tolerance: int = 1, title: str | None = None) -> str:
    """nattrack's table next to the kernel's, rows paired by original tuple, with one
    line per disagreement (explanations from :mod:`nattrack.lab.diff`); remaining
    timeouts within ``tolerance`` seconds count as equal.  Either side may be
    ``conntrack -L`` lines or conn_json dicts."""
    state, body = comparison_parts(python_lines, kernel_lines, tolerance)
    return _wrap("compare", body, state, title)


# --------------------------------------------------------------------------- mode banner

MODE_TEXT = {"live": "LIVE", "replay": "REPLAY"}


def mode_banner_html(mode: str, label: str = "") -> str:
    """The badge saying where the data comes from: the live lab or a recording."""
    if mode not in MODE_TEXT:
        raise ValueError(f"mode must be 'live' or 'replay', not {mode!r}")
    body = (f'<span class="nt-mode nt-mode-{mode}">{MODE_TEXT[mode]}</span> '
            f"<span>{esc(label)}</span>")
    return _wrap("banner", body, {"view": "mode", "mode": mode, "label": label})
