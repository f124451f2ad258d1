"""``nattrack conntrack``, ``diff``, ``sysctl``, ``trace`` and ``capture``: the live lab's
tables, the way conntrack-tools and sysctl show them.

The same functions serve ``nattrack ...`` (through the lab service, as any user in
the nattrack group) and ``mininet> ct ...`` (in the process that owns the net):
both hand in a :class:`~nattrack.lab.api.ConntrackAPI`.

Output is the real tool's, byte for byte: entries on stdout, the
``conntrack v1.4.7 (conntrack-tools): N flow entries have been shown.`` summary
on stderr (nattrack.conntrack.show), ``-D`` exits 1 when it deleted nothing.
With ``--kernel`` the real ``conntrack`` runs in the router's namespace instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import TextIO

from ..conntrack import show
from ..conntrack.sysctl import DEFAULTS, PREFIX
from ..lab import LabError
from ..lab.ctargs import CtRequest, CtUsageError, line_matches, parse, router_filters

FLUSHED = show.TOOL + "connection tracking table has been emptied."
# conntrack-tools 1.4.7's lines for the expect table (checked on 6.18).
EXPECT_LIST_SUMMARY = show.TOOL + "{n} expectations have been shown."
EXPECT_EVENT_SUMMARY = show.TOOL + "{n} expectation events have been shown."
EXPECT_FLUSHED = show.TOOL + "expectation table has been emptied."
EXPECT_STATS = ("expect_new", "expect_create", "expect_delete")

CONNTRACK_HELP = """\
usage: nattrack conntrack COMMAND [FILTERS] [OPTIONS]

The live lab's connection table, as conntrack-tools shows it.

commands:  -L list   -E events (Ctrl-C ends)   -S statistics   -C count
           -F flush  -D delete (with filters)
           -L expect, -E expect, -C expect, -F expect, -S expect: the expectation table
           (what helpers such as ftp expect; -E expect takes -o timestamp)
filters:   -p PROTO   -s/--src ADDR   -d/--dst ADDR   (original direction)
           --sport PORT  --dport PORT  (after -p tcp|udp)   --state STATE (after -p tcp)
           -u/--status ASSURED|UNREPLIED|...   -r/--reply-src ADDR  -q/--reply-dst ADDR
           -n/--src-nat [ADDR]   -g/--dst-nat [ADDR]
options:   -o extended,timestamp,id   -e NEW,UPDATE,DESTROY (with -E)
           --kernel      the router kernel's table (the real conntrack, in its namespace)
           --router NAME another NAT router of the topology (default: the primary one)
           --json        JSON lines instead (-L and -E, Python tracker)
"""


def _insert_l3(line: str) -> str:
    """-o extended on an event line: ``[NEW] ipv4     2 tcp ...``."""
    for kind in show.EVENT_KINDS:
        tag = f"[{kind}]"
        i = line.find(tag)
        if i >= 0:
            j = i + len(tag)
            return line[:j] + " " + show.L3_PREFIX.rstrip() + line[j:]
    return line


def _keep(req: CtRequest, line: str) -> bool:
    if not (req.client_filters or req.event_mask):
        return True
    return line_matches(req, show.parse_conntrack_line(line))


def run_conntrack(req: CtRequest, api, out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if req.kernel:
        return _run_kernel(req, api, out, err)
    if req.table == "expect":
        return _run_expect(req, api, out, err)
    router = req.router
    filters = router_filters(req)
    cmd = req.command
    if cmd == "L":
        if req.json:
            rows = api.list_json(filters, router=router)
            for row in rows:
                out.write(json.dumps(row) + "\n")
            err.write(show.LIST_SUMMARY.format(n=len(rows)) + "\n")
            return 0
        lines = [l for l in api.list(filters, router=router, extended="extended" in req.output,
                                     show_id="id" in req.output) if _keep(req, l)]
        for line in lines:
            out.write(line + "\n")
        err.write(show.LIST_SUMMARY.format(n=len(lines)) + "\n")
        return 0
    if cmd == "E":
        events = api.events(filters, router=router, timestamp="timestamp" in req.output,
                            json=req.json)

        def render(ev):
            if req.json:
                return None if req.event_mask and ev.get("event") not in req.event_mask else json.dumps(ev)
            if not _keep(req, ev):
                return None
            return _insert_l3(ev) if "extended" in req.output else ev
        return _print_events(events, render, out, err)
    if cmd == "S":
        out.write(show.format_stats(api.stats(router=router)["stats"]) + "\n")
        return 0
    if cmd == "C":
        out.write(show.format_count(api.count(router=router)) + "\n")
        return 0
    if cmd == "F":
        api.flush(router=router)
        err.write(FLUSHED + "\n")
        return 0
    if cmd == "D":
        if req.client_filters:
            raise CtUsageError("-D with -r, -q, -n or -g: the Python tracker deletes by "
                               "-p -s -d --sport --dport --state -u only")
        lines = api.list(filters, router=router)
        n = api.delete(filters, router=router)
        for line in lines[:n] if n < len(lines) else lines:
            out.write(line + "\n")
        err.write(show.DELETE_SUMMARY.format(n=n) + "\n")
        return 0 if n else 1
    raise CtUsageError(f"unknown command {cmd!r}")


def _run_expect(req: CtRequest, api, out: TextIO, err: TextIO) -> int:
    """The Python tracker's expectation table, as ``conntrack ... expect`` shows it."""
    router, cmd = req.router, req.command
    if cmd == "L":
        lines = api.expect_list(router=router)
        out.write("".join(line + "\n" for line in lines))
        err.write(EXPECT_LIST_SUMMARY.format(n=len(lines)) + "\n")
        return 0
    if cmd == "E":
        events = api.expect_events(router=router, timestamp="timestamp" in req.output)
        return _print_events(events, lambda line: line, out, err, EXPECT_EVENT_SUMMARY)
    if cmd == "C":
        out.write(show.format_count(api.router_call("count", {"table": "expect"}, router)) + "\n")
        return 0
    if cmd == "F":
        api.router_call("flush", {"table": "expect"}, router)
        err.write(EXPECT_FLUSHED + "\n")
        return 0
    if cmd == "S":                      # conntrack -S expect: cpu=N then the three counters
        stats = api.stats(router=router)["expect"]
        out.write("cpu=0   \t" + "".join(f"{n}={stats[n]} " for n in EXPECT_STATS) + "\n")
        return 0
    raise CtUsageError(f"-{cmd} expect: not a command of the expect table")


def _print_events(events, render, out: TextIO, err: TextIO,
                  summary: str = show.EVENT_SUMMARY) -> int:
    """Print a live event stream (``render`` gives the line, or None to skip) until it
    ends or Ctrl-C, then conntrack's summary on stderr."""
    n = 0
    try:
        for ev in events:
            line = render(ev)
            if line is None:
                continue
            out.write(line + "\n")
            out.flush()
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        events.close()
    err.write(summary.format(n=n) + "\n")
    return 0


def _run_kernel(req: CtRequest, api, out: TextIO, err: TextIO) -> int:
    if req.json:
        raise CtUsageError("--json is for the Python tracker; the kernel's conntrack prints text")
    if req.command == "E":
        summary = EXPECT_EVENT_SUMMARY if req.table == "expect" else show.EVENT_SUMMARY
        return _print_events(api.kernel_events(req, router=req.router), lambda line: line, out,
                             err, summary)
    res = api.kernel_conntrack(req, router=req.router)
    out.write(res["stdout"])
    err.write(res["stderr"])
    return int(res["rc"])


# --- diff ----------------------------------------------------------------------------------

def run_diff(api, router: str | None = None, tolerance: int = 2,
             out: TextIO | None = None) -> int:
    from ..lab.diff import format_expect_rows, format_rows
    out = out or sys.stdout
    rows = api.diff(router=router, tolerance=tolerance)
    expected = api.diff_expect(router=router, tolerance=tolerance)
    try:
        mode = api.router_hello(router=router).get("mode")
    except LabError:
        mode = None
    if mode == "python":
        out.write("note: python mode: nattrack forwards and the router's kernel stays out of "
                  "the data path, so the kernel's table stays empty; `lab up --mode kernel` "
                  "compares the two trackers on the same packets\n")
    for line in format_rows(rows) + format_expect_rows(expected):
        out.write(line + "\n")
    return 0 if all(r.agree for r in rows + expected) else 1


# --- trace ---------------------------------------------------------------------------------

def format_trace(n: int, t: dict) -> list[str]:
    ts = t.get("ts")
    when = datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f") if ts else "-"
    lines = [f"#{n} {when}  {t.get('before') or ''}"]
    for hook, note in t.get("steps") or []:
        lines.append(f"    {hook:<13} {note}")
    if t.get("dropped"):
        lines.append(f"    {'dropped':<13} {t['dropped']}")
    elif t.get("after"):
        lines.append(f"    {'sent':<13} {t['after']}")
    return lines


def format_nft(t: dict) -> list[str]:
    """The packet's ``nft monitor trace`` lines (nattrack.netfilter.nfttrace), which the
    router sends with each trace; a router that does not is named in one line."""
    if "nft" not in t:
        raise LabError("this router sends no nft trace lines (router/dataplane.py must trace "
                       "with nattrack.netfilter.nfttrace.trace_receive): use the default format")
    return list(t["nft"])


TRACE_FORMATS = ("steps", "nft")


def run_trace(api, filters: dict, count: int | None = None, router: str | None = None,
              as_json: bool = False, out: TextIO | None = None, fmt: str = "steps") -> int:
    """Print each traced packet: its path through the hooks (``steps``) or the lines
    ``nft monitor trace`` prints for it (``nft``); ``as_json``: the whole record."""
    out = out or sys.stdout
    if fmt not in TRACE_FORMATS:
        raise LabError(f"unknown trace format {fmt!r}: choose steps or nft")
    n = 0
    traces = api.trace(filters, count=count, router=router)
    try:
        for t in traces:
            n += 1
            if as_json:
                out.write(json.dumps(t) + "\n")
            elif fmt == "nft":
                out.write("".join(line + "\n" for line in format_nft(t)))
            else:
                out.write("\n".join(format_trace(n, t)) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        traces.close()
    return 0


def parse_filters(argv: list[str]) -> CtRequest:
    """conntrack's filter options alone (for trace): -p -s -d --sport --dport --state ..."""
    return parse(["-L", *argv])


# --- sysctl --------------------------------------------------------------------------------

def run_sysctl(api, items: list[str], kernel: bool = False, router: str | None = None,
               show_all: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if show_all:
        items = [PREFIX + k for k in DEFAULTS]
    if not items:
        raise ValueError("sysctl needs KEY or KEY=VALUE (kernel names, e.g. "
                         "net.netfilter.nf_conntrack_udp_timeout=10), or -a")
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        full = key if key.startswith(PREFIX) else PREFIX + key
        try:
            got = api.sysctl(full, value.strip() if sep else None, kernel=kernel, router=router)
        except LabError as exc:
            if show_all and kernel:
                continue                  # a setting this kernel does not have
            raise exc
        out.write(f"{full} = {got}\n")
    return 0


# --- capture -------------------------------------------------------------------------------

def run_capture(client, path: str, duration: float | None = None, router: str | None = None,
                err: TextIO | None = None) -> int:
    err = err or sys.stderr
    t0 = time.monotonic()

    def started():
        what = f"for {duration:g} s" if duration else "until Ctrl-C"
        err.write(f"nattrack: capturing the router's both sides {what}\n")
        err.flush()

    res = client.capture(path, duration=duration, router=router, started=started)
    err.write(f"nattrack: {res.get('packets')} packets ({res.get('bytes')} bytes, "
              f"{time.monotonic() - t0:.1f} s) written to {path}\n")
    return 0


# --- the command line ----------------------------------------------------------------------

def _client():
    from ..lab.client import LabClient
    return LabClient()


def _guard(fn):
    def wrapped(args):
        try:
            return fn(args)
        except LabError as exc:
            print(f"nattrack: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    return wrapped


def conntrack_main(argv: list[str]) -> int:
    """``nattrack conntrack ...`` (parsed like conntrack-tools, not by argparse)."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(CONNTRACK_HELP)
        return 0 if argv else 2
    try:
        req = parse(argv)
    except CtUsageError as exc:
        print(f"nattrack: conntrack: {exc}", file=sys.stderr)
        return 2
    return _guard(lambda _a: run_conntrack(req, _client()))(None)


def register(sub) -> None:
    """Add diff, sysctl, trace, capture (and conntrack, for --help) to the main parser."""
    c = sub.add_parser("conntrack", add_help=False,
                       help="the live lab's table as conntrack -L/-E/-S/-C/-F/-D shows it")
    c.set_defaults(func=lambda a: conntrack_main(["--help"]))

    d = sub.add_parser("diff", help="the Python tracker's table next to the kernel's, "
                                    "each disagreement explained")
    d.add_argument("--router", help="which NAT router (default: the topology's primary)")
    d.add_argument("--tolerance", type=int, default=2, metavar="S",
                   help="timeouts may differ this much (the tables are read one after the other)")
    d.set_defaults(func=_guard(lambda a: run_diff(_client(), a.router, a.tolerance)))

    s = sub.add_parser("sysctl", help="read or set the tracker's settings (kernel names)")
    s.add_argument("items", nargs="*", metavar="KEY[=VALUE]")
    s.add_argument("-a", "--all", action="store_true", help="every conntrack setting")
    s.add_argument("--kernel", action="store_true",
                   help="the router namespace's own settings instead of the tracker's")
    s.add_argument("--router")
    s.set_defaults(func=_guard(lambda a: run_sysctl(_client(), a.items, a.kernel, a.router,
                                                    a.all)))

    t = sub.add_parser("trace", help="each packet's path through the hooks, live",
                       description="Print each matching packet's path through the router's "
                       "hooks. Filters are conntrack's: -p PROTO -s ADDR -d ADDR --sport P "
                       "--dport P --state S.")
    t.add_argument("-c", "--count", type=int, help="stop after N packets")
    t.add_argument("--router")
    t.add_argument("--json", action="store_true", help="one JSON object per packet")
    t.add_argument("--format", choices=TRACE_FORMATS, default="steps",
                   help="steps: the path through the hooks (default); nft: the lines "
                   "`nft monitor trace` prints for the packet (rule handles as `nft -a list "
                   "ruleset` numbers the rule set's nft form)")
    t.set_defaults(func=None)

    cap = sub.add_parser("capture", help="record the router's both sides to a pcapng file")
    cap.add_argument("-w", "--write", required=True, metavar="FILE.pcapng")
    cap.add_argument("-G", "--duration", type=float, metavar="SECONDS",
                     help="stop after this long (default: at Ctrl-C)")
    cap.add_argument("--router")
    cap.set_defaults(func=_guard(lambda a: run_capture(_client(), a.write, a.duration,
                                                        a.router)))


def trace_main(argv: list[str]) -> int:
    """``nattrack trace [-c N] [--router R] [--json] [--format steps|nft] [filters]``."""
    p = argparse.ArgumentParser(prog="nattrack trace", add_help=True)
    p.add_argument("-c", "--count", type=int)
    p.add_argument("--router")
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=TRACE_FORMATS, default="steps")
    args, rest = p.parse_known_args(argv)
    try:
        req = parse_filters(rest)
    except CtUsageError as exc:
        print(f"nattrack: trace: {exc}", file=sys.stderr)
        return 2
    return _guard(lambda _a: run_trace(_client(), router_filters(req), args.count,
                                       args.router or req.router, args.json,
                                       fmt=args.format))(None)
