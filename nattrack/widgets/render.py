"""HTML views of conntrack tables, events and packets: pure functions returning strings.

Every function here returns one self-contained, well-formed fragment (a single
``<div>`` with its own ``<style>``; no JavaScript, no external CSS or fonts) that
a notebook widget can put into an ``ipywidgets.HTML`` as it is.  Every value that
comes from outside (lines, addresses, labels) goes through :func:`esc`, and the
same input always gives the same bytes.

Classes that tests and widgets rely on: ``nt-new`` (a row added since the
previous table), ``nt-changed`` (a cell or field that changed), ``nt-differ``
(a row on which the two trackers disagree), ``nt-ev-new``/``-update``/``-destroy``.
"""
from __future__ import annotations

import html
import re
import struct
from typing import Any, Iterable, Mapping

from ..conntrack.show import parse_conntrack_line
from ..lab.diff import diff_tables, flow_text
from ..packet.ipv4 import ICMP_QUERY_TYPES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Packet

# One stylesheet for every HTML view; class names carry an ``nt-`` prefix so that
# they cannot clash with the notebook's own.
STYLE = (
    ".nt{font-family:monospace;font-size:12px}"
    ".nt table{border-collapse:collapse;margin:2px}"
    ".nt th,.nt td{border:1px solid #bbb;padding:1px 6px;text-align:left;white-space:nowrap}"
    ".nt th{background:#eee}"
    ".nt .nt-new{background:#e3f6e3}"
    ".nt .nt-changed{background:#fff0a8;font-weight:bold}"
    ".nt .nt-differ{background:#fde2e2}"
    ".nt .nt-missing{color:#999}"
    ".nt .nt-sides{display:flex;gap:12px;align-items:flex-start}"
    ".nt .nt-ev-new{color:#1a7f1a}"
    ".nt .nt-ev-update{color:#1f5fbf}"
    ".nt .nt-ev-destroy{color:#b22222}"
    ".nt .nt-note{color:#555}"
)

TABLE_COLUMNS = ("proto", "timeout", "state", "original", "reply", "flags")
# Flags worth showing from a conn_json dict's status list (the ones conntrack -L prints).
_SHOWN_STATUS = ("OFFLOAD", "HW_OFFLOAD")


def esc(value: Any) -> str:
    """html.escape of str(value); None becomes the empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def _cls(*names: str | None) -> str:
    names = [n for n in names if n]
    return f' class="{esc(" ".join(names))}"' if names else ""


def _wrap(kind: str, body: str) -> str:
    return f'<div class="nt nt-{kind}"><style>{STYLE}</style>{body}</div>'


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


def normalize_entry(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    """A ``conntrack -L`` line, a parse_conntrack_line dict or a conn_json dict -> one
    dict with ``key`` (proto and original tuple: what identifies the entry), ``cells``
    (TABLE_COLUMNS -> text) and ``timeout`` (int or None)."""
    p = parse_conntrack_line(entry) if isinstance(entry, str) else entry
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
    return {"key": key, "cells": cells, "timeout": p.get("timeout")}


def _entries(items: Iterable[str | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for item in items or ():
        if isinstance(item, str) and not item.strip():
            continue
        out.append(normalize_entry(item))
    return out


def _header(columns: Iterable[str]) -> str:
    return "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"


def _row(cells: Mapping[str, str], row_class: str | None = None,
         changed: Iterable[str] = ()) -> str:
    changed = set(changed)
    tds = "".join(f"<td{_cls('nt-changed' if c in changed else None, 'nt-col-' + c)}>"
                  f"{esc(cells.get(c, ''))}</td>" for c in TABLE_COLUMNS)
    return f"<tr{_cls(row_class)}>{tds}</tr>"


def conntrack_table_html(lines_or_dicts: Iterable[str | Mapping[str, Any]],
                         previous: Iterable[str | Mapping[str, Any]] | None = None) -> str:
    """A table of conntrack entries (``conntrack -L`` lines or conn_json dicts).

    With ``previous`` (the table one step earlier, in either form), rows whose entry
    was not there get class ``nt-new`` and cells whose text changed ``nt-changed``.
    """
    rows = _entries(lines_or_dicts)
    before = None if previous is None else {e["key"]: e for e in _entries(previous)}
    out = [_header(TABLE_COLUMNS)]
    for e in rows:
        if before is None:
            out.append(_row(e["cells"]))
        elif e["key"] not in before:
            out.append(_row(e["cells"], "nt-new"))
        else:
            old = before[e["key"]]["cells"]
            out.append(_row(e["cells"], changed=[c for c in TABLE_COLUMNS
                                                 if e["cells"][c] != old[c]]))
    note = f'<div class="nt-note">{len(rows)} flow entries</div>'
    return _wrap("table", "<table>" + "".join(out) + "</table>" + note)


# --------------------------------------------------------------------------- packets

def _u16(buf: bytes, at: int) -> int:
    return struct.unpack_from("!H", buf, at)[0]


def _ip(addr: int) -> str:
    return f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}"


def packet_fields(p: Packet, prefix: str = "") -> list[tuple[str, str]]:
    """(name, value) of the header fields NAT can touch, in header order."""
    buf = p.buf
    out = [(prefix + "IP src", _ip(p.src)), (prefix + "IP dst", _ip(p.dst))]
    if not prefix:
        out += [("IP ttl", str(p.ttl)), ("IP checksum", f"0x{_u16(buf, p.off + 10):04x}")]
    out.append((prefix + "IP proto", str(p.proto)))
    have = p.l4len
    if p.frag:
        return out + [(prefix + "fragment offset", str(p.frag))]
    if p.proto in (IPPROTO_TCP, IPPROTO_UDP) and have >= 4:
        name = "TCP" if p.proto == IPPROTO_TCP else "UDP"
        out += [(f"{prefix}{name} sport", str(p.sport)), (f"{prefix}{name} dport", str(p.dport))]
        csum_at = 16 if p.proto == IPPROTO_TCP else 6
        if not prefix and have >= csum_at + 2:
            out.append((f"{name} checksum", f"0x{_u16(buf, p.l4 + csum_at):04x}"))
    elif p.proto == IPPROTO_ICMP and have >= 8:
        out += [(prefix + "ICMP type", str(p.itype)), (prefix + "ICMP code", str(p.icode))]
        if p.itype in ICMP_QUERY_TYPES:
            out.append((prefix + "ICMP id", str(p.sport)))
        if not prefix:
            out.append(("ICMP checksum", f"0x{_u16(buf, p.l4 + 2):04x}"))
            inner = p.embedded_packet()
            if inner is not None:                    # an ICMP error: NAT rewrites the quote too
                out += packet_fields(inner, "inner ")
    return out


def _parse(data: bytes, which: str) -> Packet:
    p = Packet.parse(bytearray(data))
    if p is None:
        raise ValueError(f"{which}: not a valid IPv4 datagram")
    return p


def packet_before_after_html(before: bytes, after: bytes) -> str:
    """Two IPv4 datagrams side by side, field by field; changed fields marked ``nt-changed``.

    Raises ValueError if either is not an IPv4 datagram ip_rcv() would accept.
    """
    pb, pa = _parse(before, "before"), _parse(after, "after")
    fb, fa = dict(packet_fields(pb)), dict(packet_fields(pa))
    names = list(fb) + [n for n in fa if n not in fb]
    rows = [_header(("field", "before", "after"))]
    for name in names:
        vb, va = fb.get(name, "-"), fa.get(name, "-")
        cls = "nt-changed" if vb != va else None
        rows.append(f"<tr{_cls(cls)}><td>{esc(name)}</td><td>{esc(vb)}</td>"
                    f"<td>{esc(va)}</td></tr>")
    caption = (f"<caption>{esc(pb.summary())}<br/>{esc(pa.summary())}</caption>")
    return _wrap("packet", "<table>" + caption + "".join(rows) + "</table>")


# --------------------------------------------------------------------------- events

_KIND_RE = re.compile(r"\[(NEW|UPDATE|DESTROY)\]")


def event_log_html(lines: Iterable[str], limit: int = 50) -> str:
    """The last ``limit`` ``conntrack -E`` lines, coloured by event kind."""
    lines = [ln.rstrip("\n") for ln in lines if ln.strip()]
    shown = lines[max(0, len(lines) - max(0, limit)):] if limit > 0 else []
    out = []
    for line in shown:
        m = _KIND_RE.search(line)
        cls = f"nt-ev-{m.group(1).lower()}" if m else None
        out.append(f"<div{_cls('nt-event', cls)}>{esc(line)}</div>")
    note = f'<div class="nt-note">last {len(shown)} of {len(lines)} events</div>'
    return _wrap("events", "".join(out) + note)


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
            out.append(_row(e["cells"], "nt-differ" if bad else None, ch))
    return "<table>" + "".join(out) + "</table>"


def kernel_comparison_html(python_lines: Iterable[str], kernel_lines: Iterable[str],
                           tolerance: int = 1) -> str:
    """nattrack's table next to the kernel's, rows paired by original tuple, with one
    line per disagreement (explanations from :mod:`nattrack.lab.diff`); remaining
    timeouts within ``tolerance`` seconds count as equal."""
    rows = diff_tables([ln for ln in python_lines if ln.strip()],
                       [ln for ln in kernel_lines if ln.strip()], tolerance)
    py = [None if r.python is None else normalize_entry(r.python) for r in rows]
    kern = [None if r.kernel is None else normalize_entry(r.kernel) for r in rows]
    changed = [_diff_cells(a, b, tolerance) if a and b else [] for a, b in zip(py, kern)]
    differ = [not r.agree for r in rows]
    sides = (f'<div class="nt-sides">{_side_table("nattrack (python)", py, changed, differ)}'
             f'{_side_table("kernel", kern, changed, differ)}</div>')
    problems = [f"<li>{esc(flow_text(r.python or r.kernel))}: {esc(p)}</li>"
                for r in rows for p in r.problems]
    same = sum(1 for r in rows if r.agree)
    summary = (f'<div class="nt-note">{len(rows)} flow(s): {same} agree, '
               f'{len(rows) - same} differ</div>')
    plist = f'<ul class="nt-problems">{"".join(problems)}</ul>' if problems else ""
    return _wrap("compare", sides + plist + summary)
