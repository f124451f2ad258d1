"""`nattrack rules translate`: a rules file from iptables-save syntax to nft and back."""
from __future__ import annotations

import sys
from dataclasses import replace


def translate(rs, to: str) -> str:
    """The text of rule set ``rs`` in syntax ``to``, checked by parsing it back: the
    result must give the same model (nft.from_iptables()/to_iptables() of ``rs``)."""
    from ..netfilter.nft import from_iptables, to_iptables
    from ..netfilter.rules import Ruleset
    if to == "nft":
        text, want = rs.to_nft(), from_iptables(rs)
    else:
        text, want = to_iptables(rs).to_iptables_restore(canonical=True), to_iptables(rs)
    got = Ruleset.parse(text, f"{rs.filename} (as {to})")
    if to == "iptables":                       # -m state and -m conntrack are one match
        got, want = (_conntrack_states(x) for x in (got, want))
    if got != want:
        raise ValueError(f"{rs.filename}: the {to} text does not read back as the same rules "
                         "(a nattrack bug: please report it with the file)")
    return text


def _conntrack_states(rs):
    from ..netfilter.rules import Ruleset, StateMatch
    tables = {t: {c: [replace(r, matches=tuple(replace(m, module="conntrack")
                                               if isinstance(m, StateMatch) else m
                                               for m in r.matches)) for r in rules]
                  for c, rules in chains.items()} for t, chains in rs.tables.items()}
    return Ruleset(tables, rs.policies, rs.filename, rs.bases, rs.sets)


def cmd_translate(args) -> int:
    from ..netfilter.rules import Ruleset
    rs = Ruleset.load(args.file)
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


def register(sub) -> None:
    """Add the `rules` subcommand to the top-level parser."""
    p = sub.add_parser("rules", help="rules files: translate between iptables-save and nft "
                       "syntax")
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
