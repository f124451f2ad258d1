"""Text and JSON views of conntrack entries, events and statistics.

Models three formatters whose output students put next to ours, byte for byte:

* libnetfilter_conntrack ``src/conntrack/snprintf_default.c`` (what ``conntrack -L``
  and ``conntrack -E`` print), plus conntrack-tools 1.4.7 ``src/conntrack.c``
  (the ``-o timestamp`` prefix, ``[USERSPACE]``, ``-S``, ``-C`` and the summaries);
* the kernel's ``ct_seq_show()`` (``/proc/net/nf_conntrack``) and ``ct_cpu_seq_show()``
  (``/proc/net/stat/nf_conntrack``), net/netfilter/nf_conntrack_standalone.c;
* which attributes ctnetlink puts into a dump or an event
  (net/netfilter/nf_conntrack_netlink.c), since the tool prints only what it gets.

Every ``format_*`` function returns text without a trailing newline, except
``format_proc_stat`` which returns a whole file.  ``parse_conntrack_line`` reads
the real tool's lines (and ours) back into comparable dicts.

Facts checked against conntrack-tools 1.4.7 on Linux 6.18 that the reference
(docs kernel-conntrack.md) does not state:

* ``conntrack -S`` keeps a trailing space after the last ``name=value``;
* ``-o timestamp`` is ``printf("[%-.8ld.%-.6ld]\\t", tv_sec, tv_usec)``;
* ``[DESTROY]`` events carry ``packets= bytes=`` when accounting is on,
  ``[NEW]``/``[UPDATE]`` never do; events print ``mark=``/``zone=`` only if non-zero;
* ``[USERSPACE] portid=N`` may be followed by ``progname=NAME``;
* GRE prints ``srckey=0x0 dstkey=0x0``; /proc adds ``timeout=30, stream_timeout=180``
  after the remaining time; protocols without a tracker print as ``unknown``.
"""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

from .conn import (HZ, IPS_ASSURED, IPS_CONFIRMED, IPS_HW_OFFLOAD, IPS_OFFLOAD, IPS_SEEN_REPLY,
                   STATUS_NAMES, Conn)
from .proto_tcp import TCP_CONNTRACK_NAMES
from .tuple import IPPROTO_ICMP, IPPROTO_TCP, PORT_PROTOS, PROTO_NAMES, Tuple, int2ip, ip2int

IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
# __snprintf_proto(): protocols printed with ports, ICMP-style keys, GRE keys.
ICMP_PROTOS = frozenset((IPPROTO_ICMP, IPPROTO_ICMPV6))
UNKNOWN_PROTO = "unknown"                              # __proto2str() / l4proto_name()
# Per-protocol state names printed after the timeout (TCP only in nattrack).
STATE_NAMES = {IPPROTO_TCP: TCP_CONNTRACK_NAMES}
# gre_print_conntrack(): nf_conntrack_gre_timeout / _timeout_stream defaults.
GRE_PROC_TIMEOUTS = (30, 180)

L3_PREFIX = "ipv4     2 "                               # "%-8s %u " of AF_INET
EVENT_KINDS = ("NEW", "UPDATE", "DESTROY")
PROC_USE = 2                                            # the reader holds one reference

TOOL = "conntrack v1.4.7 (conntrack-tools): "
LIST_SUMMARY = TOOL + "{n} flow entries have been shown."
EVENT_SUMMARY = TOOL + "{n} flow events have been shown."
DELETE_SUMMARY = TOOL + "{n} flow entries have been deleted."

# nfct_stats_cb(): CTA_STATS_* in attribute order, the ones current kernels send.
STATS_NAMES = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
               "search_restart", "clash_resolve", "chaintoolong")
# ct_cpu_seq_show(): header and the stats key behind each column (None = always 0,
# "entries" = the namespace's entry count); "" marks the two double-space gaps.
PROC_STAT_HEADER = ("entries  clashres found new invalid ignore delete chainlength insert "
                    "insert_failed drop early_drop icmp_error  expect_new expect_create "
                    "expect_delete search_restart")
PROC_STAT_COLUMNS = ("entries", "", "clash_resolve", "found", None, "invalid", None, None,
                     "chaintoolong", "insert", "insert_failed", "drop", "early_drop", "error",
                     "", "expect_new", "expect_create", "expect_delete", "search_restart")

# __snprintf_proto(): the keys of a printed tuple, per protocol family.
ADDR_KEYS = ("src", "dst")
PORT_KEYS = ADDR_KEYS + ("sport", "dport")
ICMP_KEYS = ADDR_KEYS + ("type", "code", "id")
GRE_KEYS = ADDR_KEYS + ("srckey", "dstkey")
# __snprintf_status_assured(): at most one of these, first match wins.
ASSURED_CLASS = ((IPS_HW_OFFLOAD, "HW_OFFLOAD"), (IPS_OFFLOAD, "OFFLOAD"), (IPS_ASSURED, "ASSURED"))


# --------------------------------------------------------------------------- pieces

def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, UNKNOWN_PROTO)


def remaining(ct: Conn, now: int) -> int:
    """nf_ct_expires(ct) / HZ: whole seconds left at jiffies ``now``, never negative."""
    return ct.remaining(now)


def state_name(ct: Conn) -> str | None:
    names = STATE_NAMES.get(ct.orig.proto)
    if names is None:
        return None
    state = getattr(ct.proto, "state", 0)
    return names[state] if 0 <= state < len(names) else names[0]


def tuple_keys(proto: int) -> tuple[str, ...]:
    if proto in PORT_PROTOS:
        return PORT_KEYS
    if proto in ICMP_PROTOS:
        return ICMP_KEYS
    return GRE_KEYS if proto == IPPROTO_GRE else ADDR_KEYS


def tuple_fields(t: Tuple) -> dict[str, Any]:
    """The tuple as the printed key=value pairs (addresses as dotted quads)."""
    vals = {"src": int2ip(t.src), "dst": int2ip(t.dst), "sport": t.sport, "dport": t.dport,
            "type": t.dport >> 8, "code": t.dport & 0xFF, "id": t.sport,
            "srckey": t.sport, "dstkey": t.dport}
    return {k: vals[k] for k in tuple_keys(t.proto)}


def format_tuple(t: Tuple) -> str:
    return " ".join(f"{k}={hex(v) if k.endswith('key') else v}"
                    for k, v in tuple_fields(t).items())


def _counters(ct: Conn, direction: int) -> list[str]:
    if ct.counters is None:
        return []
    return [f"packets={ct.counters[2 * direction]} bytes={ct.counters[2 * direction + 1]}"]


def _assured_flag(status: int) -> list[str]:
    for bit, name in ASSURED_CLASS:
        if status & bit:
            return [f"[{name}]"]
    return []


def _body(ct: Conn, timeout: int | None, state: str | None, counters: bool) -> list[str]:
    """Fields from the L4 name to the ASSURED-class flag, shared by every format."""
    proto = ct.orig.proto
    out = [f"{proto_name(proto):<8} {proto}"]
    if timeout is not None:
        out.append(str(timeout))
    if state is not None:
        out.append(state)
    out.append(format_tuple(ct.orig))
    if counters:
        out += _counters(ct, 0)
    if not ct.status & IPS_SEEN_REPLY:
        out.append("[UNREPLIED]")
    out.append(format_tuple(ct.reply))
    if counters:
        out += _counters(ct, 1)
    return out + _assured_flag(ct.status)


def _gre_proc(ct: Conn) -> list[str]:
    t, st = (getattr(ct.proto, "timeout", None), getattr(ct.proto, "stream_timeout", None))
    t = GRE_PROC_TIMEOUTS[0] if t is None else int(t)
    st = GRE_PROC_TIMEOUTS[1] if st is None else int(st)
    return [f"timeout={t}, stream_timeout={st}"]


# --------------------------------------------------------------------------- lines

def format_conn(ct: Conn, now: int, *, extended: bool = False, show_id: bool = False,
                zone: int = 0, use: int = 1, helper: str | None = None) -> str:
    """One ``conntrack -L`` line (``-o extended`` / ``-o id`` optional); ``helper`` is the
    entry's helper name (ConntrackTable.helper_name()).

    ctnetlink_dump_info() sends neither timeout nor protocol state for an
    offloaded entry, so neither is printed then.
    """
    offloaded = bool(ct.status & IPS_OFFLOAD)
    out = [L3_PREFIX.rstrip()] if extended else []
    out += _body(ct, None if offloaded else remaining(ct, now),
                 None if offloaded else state_name(ct), True)
    out.append(f"mark={ct.mark}")
    if zone:
        out.append(f"zone={zone}")
    if helper:
        out.append(f"helper={helper}")
    out.append(f"use={use}")
    if show_id:
        out.append(f"id={ct.id}")
    return " ".join(out)


def format_proc(ct: Conn, now: int, *, zone: int = 0, use: int = PROC_USE) -> str:
    """One ``/proc/net/nf_conntrack`` line (ct_seq_show)."""
    offloaded = bool(ct.status & IPS_OFFLOAD)
    out = [L3_PREFIX.rstrip()]
    body = _body(ct, None if offloaded else remaining(ct, now), state_name(ct), True)
    if ct.orig.proto == IPPROTO_GRE:               # gre_print_conntrack()
        pos = 1 if offloaded else 2
        body[pos:pos] = _gre_proc(ct)
    out += body
    out += [f"mark={ct.mark}", f"zone={zone}", f"use={use}"]
    return " ".join(out)


def format_timestamp(ts: float) -> str:
    """conntrack -E -o timestamp: ``printf("[%-.8ld.%-.6ld]\\t", sec, usec)``."""
    sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
    return f"[{sec:08d}.{usec:06d}]\t"


def _event_timeout(kind: str, ct: Conn, now: int, destroy_timeout: int | None) -> int | None:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if kind != "DESTROY":
        return remaining(ct, now)
    # ctnetlink_dump_timeout(skip_zero=true): only an early kill has time left.
    return destroy_timeout if isinstance(destroy_timeout, int) and destroy_timeout else None


def format_event(kind: str, ct: Conn, now: int, *, ts: float | None = None,
                 destroy_timeout: int | None = None, userspace_portid: int | None = None,
                 userspace_progname: str | None = None, extended: bool = False,
                 show_id: bool = False, zone: int = 0, protoinfo: bool = True,
                 helper: str | None = None) -> str:
    """One ``conntrack -E`` line.

    What ctnetlink_conntrack_event() sends: NEW/UPDATE carry the remaining time and
    (when ``protoinfo``: the packet changed the TCP state) the state; DESTROY
    carries the time only when non-zero (the caller passes it for early kills),
    the state always, and the counters when accounting is on.  ``mark=`` and
    ``zone=`` only when non-zero; never ``use=``.
    """
    timeout = _event_timeout(kind, ct, now, destroy_timeout)
    destroy = kind == "DESTROY"
    out = [f"{'[' + kind + ']':>9}"]
    if extended:
        out.append(L3_PREFIX.rstrip())
    out += _body(ct, timeout, state_name(ct) if destroy or protoinfo else None, destroy)
    if ct.mark:
        out.append(f"mark={ct.mark}")
    if zone:
        out.append(f"zone={zone}")
    if helper and not destroy:                     # ctnetlink_dump_helpinfo(): not on DESTROY
        out.append(f"helper={helper}")
    if show_id:
        out.append(f"id={ct.id}")
    if userspace_portid is not None:
        out.append(f"[USERSPACE] portid={userspace_portid}")
        if userspace_progname:
            out.append(f"progname={userspace_progname}")
    line = " ".join(out)
    return line if ts is None else format_timestamp(ts) + line


# --------------------------------------------------------------------------- JSON

def _counters_json(c: list[int]) -> dict[str, dict[str, int]]:
    return {"orig": {"packets": c[0], "bytes": c[1]}, "reply": {"packets": c[2], "bytes": c[3]}}


def _json(ct: Conn, timeout: int | None, state: str | None) -> dict[str, Any]:
    proto = ct.orig.proto
    return {
        "proto": proto_name(proto), "protonum": proto, "timeout": timeout, "state": state,
        "orig": tuple_fields(ct.orig), "reply": tuple_fields(ct.reply),
        "status": ct.status_names(), "assured": bool(ct.status & IPS_ASSURED),
        "unreplied": not ct.status & IPS_SEEN_REPLY, "mark": ct.mark,
    }


def conn_json(ct: Conn, now: int, *, zone: int = 0, use: int = 1) -> dict[str, Any]:
    """The data of a ``conntrack -L`` line as a JSON-able dict (stable key order)."""
    offloaded = bool(ct.status & IPS_OFFLOAD)
    d = _json(ct, None if offloaded else remaining(ct, now), None if offloaded else state_name(ct))
    d.update(zone=zone, use=use, id=ct.id)
    if ct.counters is not None:
        d["counters"] = _counters_json(ct.counters)
    return d


def event_json(kind: str, ct: Conn, now: int, *, ts: float | None = None,
               destroy_timeout: int | None = None, userspace_portid: int | None = None,
               zone: int = 0) -> dict[str, Any]:
    """The data of a ``conntrack -E`` line as a JSON-able dict (stable key order)."""
    timeout = _event_timeout(kind, ct, now, destroy_timeout)
    d = {"event": kind, "ts": ts, **_json(ct, timeout, state_name(ct))}
    d.update(zone=zone, id=ct.id)
    if kind == "DESTROY" and ct.counters is not None:
        d["counters"] = _counters_json(ct.counters)
    if userspace_portid is not None:
        d["userspace_portid"] = userspace_portid
    return d


# --------------------------------------------------------------------------- statistics

def format_stats(stats: Mapping[str, int], cpu: int = 0) -> str:
    """One ``conntrack -S`` line: ``cpu=%-4u\\t`` then ``name=%u `` per counter.

    The real tool keeps the space after the last counter (printf per attribute).
    """
    return f"cpu={cpu:<4}\t" + "".join(f"{n}={stats.get(n, 0)} " for n in STATS_NAMES)


def format_proc_stat(stats: Mapping[str, int] | Iterable[Mapping[str, int]], entries: int) -> str:
    """``/proc/net/stat/nf_conntrack``: the header and one ``%08x`` row per CPU.

    ``stats`` is one dict (one CPU) or a sequence of dicts (one per CPU).
    """
    rows = [stats] if isinstance(stats, Mapping) else list(stats)
    lines = [PROC_STAT_HEADER]
    for st in rows:
        vals = {**st, "entries": entries}
        cells = ["" if col == "" else f"{(vals.get(col, 0) if col else 0):08x}"
                 for col in PROC_STAT_COLUMNS]
        lines.append(" ".join(cells))
    return "\n".join(lines) + "\n"


def format_count(n: int) -> str:
    """``conntrack -C``: the entry count alone."""
    return str(n)


# --------------------------------------------------------------------------- parsing

_TS_RE = re.compile(r"^\[(\d+)\.(\d+)\]\t")
_NUM_RE = re.compile(r"^\d+$")
_FLAGS = {"[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]", "[USERSPACE]"}
_INT_KEYS = {"secmark", "delta-time", "portid", "zone-orig", "zone-reply"}


def _value(key: str, val: str) -> Any:
    if key in ("src", "dst"):
        return val
    if key.endswith("key") and val.startswith("0x"):
        return int(val, 16)
    return int(val) if _NUM_RE.match(val) else val


def parse_conntrack_line(line: str) -> dict[str, Any]:
    """Parse a ``conntrack -L``/``-E`` (any ``-o``) or ``/proc/net/nf_conntrack`` line.

    Returns kind (event name or None), ts (float or None), l3 ("ipv4" or None),
    proto (number), proto_name, timeout (int or None), state (or None), orig and
    reply (tuple dicts as ``tuple_fields`` gives them), flags (set of bracketed
    names without brackets: UNREPLIED, ASSURED, OFFLOAD, HW_OFFLOAD, USERSPACE),
    mark, use, zone, id (None when absent), counters ([orig packets, orig bytes,
    reply packets, reply bytes] or None) and extras (every other field: portid,
    progname, secmark, helper, delta-time, GRE ``timeout``/``stream_timeout``...).
    """
    line = line.rstrip("\n")
    res: dict[str, Any] = {"kind": None, "ts": None, "l3": None, "proto": None,
                           "proto_name": None, "timeout": None, "state": None,
                           "orig": {}, "reply": {}, "flags": set(), "mark": None,
                           "use": None, "zone": None, "id": None, "counters": None,
                           "extras": {}}
    m = _TS_RE.match(line)
    if m:
        res["ts"] = int(m.group(1)) + int(m.group(2)) / 1_000_000
        line = line[m.end():]
    if " progname=" in line:                       # the name runs to the end of the line
        line, res["extras"]["progname"] = line.split(" progname=", 1)
    toks = line.split()
    if toks and toks[0].startswith("[") and toks[0][1:-1] in EVENT_KINDS:
        res["kind"] = toks.pop(0)[1:-1]
    if toks and toks[0] in ("ipv4", "ipv6"):
        res["l3"] = toks[0]
        del toks[:2]
    res["proto_name"], res["proto"] = toks[0], int(toks[1])
    del toks[:2]
    keys = tuple_keys(res["proto"])
    if toks and _NUM_RE.match(toks[0]):
        res["timeout"] = int(toks.pop(0))
    while toks and toks[0].startswith(("timeout=", "stream_timeout=")):   # GRE in /proc
        key, _, val = toks.pop(0).rstrip(",").partition("=")
        res["extras"][key] = int(val)
    if toks and "=" not in toks[0] and not toks[0].startswith("["):
        res["state"] = toks.pop(0)
    cur: dict[str, Any] | None = None
    counters: list[int] = []
    for tok in toks:
        if tok in _FLAGS:
            res["flags"].add(tok[1:-1])
            cur = None
            continue
        key, _, val = tok.partition("=")
        if key == "src":
            cur = res["reply"] if res["orig"] else res["orig"]
        if cur is not None and key in keys and key not in cur:
            cur[key] = _value(key, val)
            continue
        cur = None
        if key in ("packets", "bytes"):
            counters.append(int(val))
        elif key in ("mark", "use", "zone", "id"):
            res[key] = int(val)
        else:
            res["extras"][key] = int(val) if key in _INT_KEYS and _NUM_RE.match(val) else val
    if counters:
        res["counters"] = counters
    return res


def conn_from_parsed(p: Mapping[str, Any], now: int) -> Conn:
    """Build the Conn a parsed line describes (for differential tests).

    The timeout becomes ``now + seconds + 0.5 s`` (in jiffies) so that formatting at ``now``
    prints the same whole number; the TCP state becomes a stand-in ``proto``.
    """
    def tup(d: Mapping[str, Any]) -> Tuple:
        proto = p["proto"]
        if proto in ICMP_PROTOS:
            return Tuple(ip2int(d["src"]), ip2int(d["dst"]), proto, d["id"],
                         d["type"] << 8 | d["code"])
        if proto == IPPROTO_GRE:
            return Tuple(ip2int(d["src"]), ip2int(d["dst"]), proto, d["srckey"], d["dstkey"])
        return Tuple(ip2int(d["src"]), ip2int(d["dst"]), proto, d.get("sport", 0),
                     d.get("dport", 0))

    ct = Conn(tup(p["orig"]), tup(p["reply"]), p["id"] or 0)
    names = {n: b for b, n in STATUS_NAMES.items()}
    for flag in p["flags"]:
        ct.status |= names.get(flag, 0)
    if "UNREPLIED" not in p["flags"]:
        ct.status |= IPS_SEEN_REPLY
    if "HW_OFFLOAD" in p["flags"] and p["timeout"] is None and not p["kind"]:
        ct.status |= IPS_OFFLOAD                   # the kernel sets both; -L hid the time
    ct.status |= IPS_CONFIRMED
    ct.timeout = now + ((p["timeout"] or 0) * HZ) + HZ // 2
    ct.mark = p["mark"] or 0
    if p["counters"] is not None:
        ct.counters = list(p["counters"])
    if p["state"] is not None and p["proto"] in STATE_NAMES:
        ct.proto = SimpleNamespace(state=STATE_NAMES[p["proto"]].index(p["state"]))
    return ct
