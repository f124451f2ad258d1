"""The `nattrack` command line.

Each subcommand is a thin layer over the engine; errors are one line that
says what is wrong and what to do, with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..conntrack import show
from ..conntrack.sysctl import SysctlError
from ..netfilter.xtables import RulesError
from ..lab import LabError
from ..packet.pcapio import CaptureError
from ..replay import parse_kv_args


def cmd_replay(args) -> int:
    from ..replay import parse_iface_args, parse_listen_args, parse_source_args, replay_captures
    from .steps import StepPrinter

    if not args.iface:
        raise ValueError("replay needs the router's interfaces: --iface NAME=ADDR/PREFIX (one per interface)")
    ifaces = parse_iface_args(args.iface)
    routes = parse_kv_args(args.route, "--route")
    sysctls = parse_kv_args(args.sysctl, "--sysctl")
    printer = StepPrinter(sys.stdout) if args.steps else None
    if args.plugin:
        from ..exercises.plugin import install_spec
        install_spec(args.plugin)
    res = replay_captures(parse_source_args(args.capture), ifaces, routes, sysctls=sysctls,
                          now=args.now, seed=args.seed, rules_path=args.rules,
                          on_packet=printer, write=args.write, verify_egress=bool(args.plugin),
                          listen=parse_listen_args(args.listen or ()), kernel=args.kernel)
    for name in res.truncated:
        print(f"nattrack: warning: {name} ends in a truncated record; replayed what was complete",
              file=sys.stderr)
    if args.proc:
        for line in res.proc:
            print(line)
    show_all = not (args.events or args.list or args.stats or args.proc)
    if args.json:
        out: dict[str, object] = {}
        if args.events or show_all:
            out["events"] = res.events_json
        if args.list or show_all:
            out["table"] = res.table_json
        if args.stats or show_all:
            out["stats"] = res.stats
        packets = {"replayed": res.packets, "not_ipv4": res.skipped,
                   "ip_header_errors": res.ip_hdr_errors, "dropped": res.dropped}
        if args.plugin:
            packets["bad_checksums_out"] = res.bad_checksums
        out["packets"] = packets
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    if args.events or show_all:
        for line in res.events:
            print(line)
        print(show.EVENT_SUMMARY.format(n=len(res.events)), file=sys.stderr)
    if args.list or show_all:
        for line in res.table:
            print(line)
        print(show.LIST_SUMMARY.format(n=len(res.table)), file=sys.stderr)
    if args.stats or show_all:
        print(show.format_stats(res.stats))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nattrack", description="Linux connection tracking and NAT, "
                                "reproduced in Python for teaching")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("replay", help="run captures through the engine as a router (no root needed)",
                       description="Replay pcap/pcapng captures through the conntrack+NAT engine. "
                       "A capture is PATH (pcapng: the ingress interface is each packet's interface "
                       "name) or IFACE=PATH (one capture per interface).")
    r.add_argument("capture", nargs="+", help="PATH or IFACE=PATH")
    r.add_argument("--iface", action="append", metavar="NAME=ADDR/PREFIX",
                   help="a router interface (repeatable)")
    r.add_argument("--route", action="append", metavar="DEST=IFACE",
                   help="a route besides the connected subnets, e.g. default=eth1 "
                        "or 198.51.100.0/24='eth1 via 203.0.113.254'")
    r.add_argument("--rules", metavar="FILE", help="NAT and filter rules (iptables-save syntax)")
    r.add_argument("--sysctl", action="append", metavar="KEY=VALUE",
                   help="a conntrack setting, e.g. net.netfilter.nf_conntrack_udp_timeout=10")
    r.add_argument("-E", "--events", action="store_true", help="events as `conntrack -E -o timestamp`")
    r.add_argument("-L", "--list", action="store_true", help="the table after the last packet")
    r.add_argument("-S", "--stats", action="store_true", help="the counters, as `conntrack -S`")
    r.add_argument("--proc", action="store_true", help="the table as /proc/net/nf_conntrack shows it")
    r.add_argument("--json", action="store_true", help="the same data as JSON")
    r.add_argument("--now", type=float, metavar="EPOCH", help="list remaining timeouts as of this time")
    r.add_argument("-w", "--write", metavar="OUT.pcapng", help="every packet as it leaves, after NAT")
    r.add_argument("--steps", action="store_true",
                   help="after each packet, show its path through the hooks and the table")
    r.add_argument("--seed", type=int, help="seed for NAT's random port choice (reproducible runs)")
    r.add_argument("--listen", action="append", metavar="PROTO:PORT",
                   help="a port open on the router itself, e.g. tcp:22 or udp:53,123 (repeatable): "
                        "a SYN there gets a SYN-ACK, a datagram no port unreachable")
    r.add_argument("--kernel", metavar="VERSION",
                   help="behave as this kernel where kernels differ: 6.1, 6.6, 6.12, 6.18 or "
                        "running (default: the newest, 6.18; see docs/kernel-profiles.md)")
    r.add_argument("--plugin", metavar="LAB_DIR=SUBMISSION_DIR",
                   help="plug a lab submission's pieces into the engine in place of the reference "
                        "(runs the submission's code in this process); sent packets' checksums "
                        "are verified (JSON: packets.bad_checksums_out)")
    r.set_defaults(func=cmd_replay)

    # The live lab (nattrack/cli/lab.py, nattrack/cli/conntrack.py).
    from . import conntrack as _ct, lab as _lab
    _lab.register(sub)
    _ct.register(sub)
    _lab.doctor_register(sub)

    # Notebooks (issue 4) and grading (issue 5): one module each, one register() each.
    from . import grade as _grade, notebook as _notebook, record as _record
    _notebook.register(sub)
    _record.register(sub)
    _grade.register(sub)

    from . import rules as _rules      # issue 12: nft syntax
    _rules.register(sub)

    d = sub.add_parser("demo", help="the same short exchange through the basic lab in python "
                       "and in kernel mode, with both tables after every step (root)")
    d.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args) -> int:
    from ..lab.demo import main as demo_main
    return demo_main()


# Commands that parse their own options like the tools they imitate (conntrack's
# getopt order rules, trace's conntrack filters), before argparse sees them.
def _own_parsers():
    from . import conntrack as _ct
    return {"conntrack": _ct.conntrack_main, "trace": _ct.trace_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own = _own_parsers()
    if argv and argv[0] in own:
        return own[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:                    # `nattrack ... | head`: not an error
        return 0
    except (ValueError, OSError, RulesError, SysctlError, CaptureError, LabError) as exc:
        print(f"nattrack: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
