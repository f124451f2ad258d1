"""`nattrack rules translate`: a rules file from iptables-save syntax to nft and back.
`nattrack rules list`: the rules with each rule's packet and byte counters, as `nft list
ruleset` prints them, from the live lab's router or from a replay of captures."""
from __future__ import annotations

import sys
from dataclasses import replace


def translate(rs, to: str) -> str:
    """The text of rule set ``rs`` in syntax ``to``, checked by parsing it back: the
    result must give the same model (nft.from_iptables()/to_iptables() of ``rs``)."""
    from ..netfilter.nft import from_iptables, to_iptables
    from ..netfilter.iptables import write_iptables
    from ..netfilter.rulesfile import parse_rules, to_nft
    if to == "nft":
        text, want = to_nft(rs), from_iptables(rs)
    else:
        text, want = write_iptables(to_iptables(rs), canonical=True), to_iptables(rs)
    got = parse_rules(text, f"{rs.filename} (as {to})")
    if to == "iptables":                       # -m state and -m conntrack are one match
        got, want = (_conntrack_states(x) for x in (got, want))
    if got != want:
        raise ValueError(f"{rs.filename}: the {to} text does not read back as the same rules "
                         "(a nattrack bug: please report it with the file)")
    return text


def _conntrack_states(rs):
    from ..netfilter.ruleset import Ruleset
    from ..netfilter.xtables import StateMatch
    tables = {t: {c: [replace(r, matches=tuple(replace(m, module="conntrack")
                                               if isinstance(m, StateMatch) else m
                                               for m in r.matches)) for r in rules]
                  for c, rules in chains.items()} for t, chains in rs.tables.items()}
    return Ruleset(tables, rs.policies, rs.filename, rs.bases, rs.sets)


def cmd_translate(args) -> int:
    from ..netfilter.rulesfile import load_rules
    rs = load_rules(args.file)
    to = args.to or ("iptables" if rs.syntax == "nft" else "nft")
    try:
        text = translate(rs, to)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(args.file) else f"{args.file}: {msg}") from None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_list(args) -> int:
    if args.capture:
        text = _replayed_listing(args)
    else:
        if args.rules or args.iface:
            raise ValueError("rules list: --rules and --iface go with captures to replay "
                             "(without captures it asks the running lab's router)")
        from ..lab.client import LabClient
        text = LabClient().router_call("ruleset", {}, args.router)["text"]
    sys.stdout.write(text)
    return 0


def _replayed_listing(args) -> str:
    """Replay the captures through the engine with the rules file, as `nattrack replay`
    does, and list the rules with what each counted."""
    from ..netfilter.nft import write_nft
    from ..replay import parse_iface_args, parse_listen_args, parse_source_args, replay_captures
    from ..replay import parse_kv_args
    if not args.rules or not args.iface:
        raise ValueError("rules list CAPTURE...: give --rules FILE and the router's "
                         "interfaces (--iface NAME=ADDR/PREFIX, one per interface)")
    res = replay_captures(parse_source_args(args.capture), parse_iface_args(args.iface),
                          parse_kv_args(args.route, "--route"), sysctls=parse_kv_args(args.sysctl, "--sysctl"),
                          rules_path=args.rules, seed=args.seed,
                          listen=parse_listen_args(args.listen or ()), kernel=args.kernel)
    for name in res.truncated:
        print(f"nattrack: warning: {name} ends in a truncated record; replayed what was "
              "complete", file=sys.stderr)
    assert res.ruleset is not None          # loaded from rules_path
    return write_nft(res.ruleset, counters=True)


def register(sub) -> None:
    """Add the `rules` subcommand to the top-level parser."""
    p = sub.add_parser("rules", help="rules files: translate between iptables-save and nft "
                       "syntax; list the rules with their counters")
    rsub = p.add_subparsers(dest="rules_cmd", required=True)
    t = rsub.add_parser("translate", help="write a rules file in the other syntax",
                        description="Read FILE (iptables-save or nft syntax, told apart by its "
                        "first line) and write the same rules in the other syntax, or in the "
                        "one --to names.  The output is read back and must give the same rules.")
    t.add_argument("file", metavar="FILE")
    t.add_argument("--to", choices=("nft", "iptables"),
                   help="the syntax to write (default: the one FILE is not in)")
    t.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    t.set_defaults(func=cmd_translate)
    ls = rsub.add_parser("list", help="the rules with each rule's packet and byte counters",
                         description="Print the rules as `nft list ruleset` does, each counter "
                         "with the packets and bytes its rule matched (an iptables file in "
                         "its nft form, a counter on every rule).  Without CAPTURE: the "
                         "running lab's router (its engine's counts; in kernel mode `nft list "
                         "ruleset` in the router shows the kernel's).  With CAPTURE...: a "
                         "replay of them through the engine, as `nattrack replay` runs it.")
    ls.add_argument("capture", nargs="*", metavar="CAPTURE", help="PATH or IFACE=PATH to replay")
    ls.add_argument("--router", metavar="NAME", help="which router of the lab (default: the "
                    "primary one)")
    ls.add_argument("--rules", metavar="FILE", help="the rules file to replay with")
    ls.add_argument("--iface", action="append", metavar="NAME=ADDR/PREFIX",
                    help="a router interface for the replay (repeatable)")
    ls.add_argument("--route", action="append", metavar="DEST=IFACE",
                    help="a route for the replay, e.g. default=eth1")
    ls.add_argument("--sysctl", action="append", metavar="KEY=VALUE",
                    help="a conntrack setting for the replay")
    ls.add_argument("--listen", action="append", metavar="PROTO:PORT",
                    help="a port open on the router for the replay, e.g. tcp:22")
    ls.add_argument("--seed", type=int, help="seed for NAT's random choices")
    ls.add_argument("--kernel", metavar="VERSION", help="behave as this kernel where kernels "
                    "differ (see nattrack replay --help)")
    ls.set_defaults(func=cmd_list)
