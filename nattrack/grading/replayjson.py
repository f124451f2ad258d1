"""One replay request -> the dict ``nattrack replay --json`` prints (events, table, stats,
packets), plus ``proc`` (``/proc/net/nf_conntrack`` lines) and ``egress`` (each packet as it
left: ``[ts, iface, hex]``) and ``packets.bad_checksums_out`` (packets sent with a wrong checksum, counted when
``verify``).  The worker runs it with the submission plugged in
(``ctx.replay``), the grader with the reference engine (``ctx.reference_replay``).

A request: ``{"capture": PATH or [PATH or IFACE=PATH...], "iface": {NAME: CIDR or
[CIDR...]} or ["NAME=CIDR"...], "route": {DEST: "IFACE [via GW]"}, "rules": PATH or None,
"sysctl": {KEY: VALUE}, "now": EPOCH or None, "seed": INT or None}``.
"""
from __future__ import annotations

import inspect
from typing import Any


def normalise(req: dict) -> dict:
    """Check a request's shape (the grader's business: a lab test wrote it)."""
    from nattrack.replay import parse_iface_args
    caps = req.get("capture")
    caps = [caps] if isinstance(caps, str) else list(caps or [])
    if not caps:
        raise ValueError("replay needs a capture")
    iface = req.get("iface") or {}
    if isinstance(iface, (list, tuple)):
        iface = parse_iface_args(iface)
    if not iface:
        raise ValueError("replay needs the router's interfaces: iface={'lan': '10.0.0.1/24', ...}")
    return {"capture": [str(c) for c in caps], "iface": dict(iface),
            "route": dict(req.get("route") or {}),
            "rules": str(req["rules"]) if req.get("rules") else None,
            "sysctl": {str(k): v for k, v in (req.get("sysctl") or {}).items()},
            "now": req.get("now"), "seed": req.get("seed", 1)}


def replay_json(req: dict, verify: bool = False) -> dict:
    """``verify``: check the checksums of every packet sent (``packets.bad_checksums_out``),
    what a plugged-in rewrite must get right."""
    from nattrack.replay import parse_source_args, replay_captures
    r = normalise(req)
    kw: dict[str, Any] = {}
    if verify and "verify_egress" in inspect.signature(replay_captures).parameters:
        kw["verify_egress"] = True
    res = replay_captures(parse_source_args(r["capture"]), r["iface"], r["route"],
                          sysctls=r["sysctl"], now=r["now"], seed=r["seed"],
                          rules_path=r["rules"], **kw)
    return {"events": res.events_json, "table": res.table_json, "stats": res.stats,
            "proc": res.proc, "lines": {"events": res.events, "table": res.table},
            "egress": [[ts, oif, data.hex()] for ts, oif, data in res.egress],
            "packets": {"replayed": res.packets, "not_ipv4": res.skipped,
                        "ip_header_errors": res.ip_hdr_errors, "dropped": res.dropped,
                        "bad_checksums_out": getattr(res, "bad_checksums", 0)}}
