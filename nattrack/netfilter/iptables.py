"""The iptables-restore parser and printer: a subset of iptables-save syntax (userspace).

One file is loaded unchanged into the real kernel (``iptables-restore < FILE``)
and parsed here for the Python router, so this parser accepts only what
iptables-restore 1.8 accepts *and* what nattrack implements; everything else
raises RulesError naming the file, the line and the offending token.  Nothing
is ever silently ignored.

Supported (tables ``*nat``, ``*filter`` and ``*raw``, each closed by ``COMMIT``)::

    :CHAIN POLICY [pkts:bytes]      built-in chain policy (counters optional)
    :NAME - [0:0]                   user-defined chain (declared before use)
    [pkts:bytes] -A CHAIN ...       a rule (counters optional)

    -s/-d ADDR[/LEN|/MASK]   -i/-o IFACE[+]   -p tcp|udp|icmp|all|NAME|NUMBER
    --sport/--dport P[:Q]    (after -p tcp|udp, or -m tcp|udp)
    -m icmp --icmp-type any|TYPE[/CODE]|NAME
    -m conntrack --ctstate LIST    -m state --state LIST
        (LIST of NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED)
    -m comment --comment TEXT
    !  before -s -d -i -o -p --sport --dport --icmp-type --ctstate --state
    -j ACCEPT | DROP | RETURN | USERCHAIN
    -j NOTRACK | CT --notrack      (raw table, PREROUTING and OUTPUT: no user chains)
    -j CT --helper ftp             (raw table: a new entry gets the FTP helper, docs/helpers.md)
    -j MASQUERADE [--to-ports P[-Q]] [--random] [--random-fully]
    -j SNAT --to-source [IP[-IP]][:P[-Q]] [--random] [--random-fully] [--persistent]
    -j DNAT --to-destination [IP[-IP]][:P[-Q]] [--random] [--persistent]

Arguments are split like iptables-restore splits them (add_param_to_argv() in
iptables/xshared.c), not like a shell: only double quotes group, a backslash
escapes the next character only inside them, a closing quote ends the
argument and single quotes are ordinary characters.  (shlex differs on each of
these points, and a file must mean the same thing to both parsers.)

``parse_iptables()`` builds a Ruleset of xtables Rules from the text, with the checks
iptables-restore and the kernel's table check (translate_table()) make;
``write_iptables()`` writes an iptables rule set back for ``iptables-restore``.
"""
from __future__ import annotations

import re
import socket
from typing import Any

from ..nat.range import (NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM,
                         NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)
from ..packet.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from .ruleset import Ruleset
from .xtables import (BUILTIN_CHAINS, BUILTIN_TARGETS, CT_HELPERS, ICMP_ANY, NAT_HOOKS, STATE_BITS,
                      AddrMatch, CommentMatch, IcmpMatch, IfaceMatch, Match, PortRange, Rule,
                      RulesError, StateMatch, TcpUdpMatch, parse_ip)

__all__ = ["parse_iptables", "write_iptables"]

_POLICIES = {"nat": ("ACCEPT",), "filter": ("ACCEPT", "DROP"), "raw": ("ACCEPT", "DROP")}
_TARGETS = {
    "nat": ("ACCEPT", "RETURN", "SNAT", "DNAT", "MASQUERADE"),
    "filter": ("ACCEPT", "DROP", "RETURN"),
    "raw": ("ACCEPT", "DROP", "NOTRACK", "CT"),      # CT --notrack only
}
# Chain names that would clash with a target (xtables: "chain name may not clash
# with target name") or that nattrack would read as a target.
_RESERVED_CHAIN_NAMES = frozenset(BUILTIN_TARGETS + ("QUEUE",)
                                  + BUILTIN_CHAINS["nat"] + BUILTIN_CHAINS["filter"])
_XT_EXTENSION_MAXNAMELEN = 29
_IFNAMSIZ = 16

# libxt_icmp's icmp_codes table: name -> (type, min code, max code).
_ICMP_NAMES = {
    "echo-reply": (0, 0, 255), "pong": (0, 0, 255),
    "destination-unreachable": (3, 0, 255),
    "network-unreachable": (3, 0, 0), "host-unreachable": (3, 1, 1),
    "protocol-unreachable": (3, 2, 2), "port-unreachable": (3, 3, 3),
    "fragmentation-needed": (3, 4, 4), "source-route-failed": (3, 5, 5),
    "network-unknown": (3, 6, 6), "host-unknown": (3, 7, 7),
    "network-prohibited": (3, 9, 9), "host-prohibited": (3, 10, 10),
    "tos-network-unreachable": (3, 11, 11), "tos-host-unreachable": (3, 12, 12),
    "communication-prohibited": (3, 13, 13), "host-precedence-violation": (3, 14, 14),
    "precedence-cutoff": (3, 15, 15),
    "source-quench": (4, 0, 255),
    "redirect": (5, 0, 255), "network-redirect": (5, 0, 0), "host-redirect": (5, 1, 1),
    "tos-network-redirect": (5, 2, 2), "tos-host-redirect": (5, 3, 3),
    "echo-request": (8, 0, 255), "ping": (8, 0, 255),
    "router-advertisement": (9, 0, 255), "router-solicitation": (10, 0, 255),
    "time-exceeded": (11, 0, 255), "ttl-exceeded": (11, 0, 255),
    "ttl-zero-during-transit": (11, 0, 0), "ttl-zero-during-reassembly": (11, 1, 1),
    "parameter-problem": (12, 0, 255), "ip-header-bad": (12, 0, 0),
    "required-option-missing": (12, 1, 1),
    "timestamp-request": (13, 0, 255), "timestamp-reply": (14, 0, 255),
    "address-mask-request": (17, 0, 255), "address-mask-reply": (18, 0, 255),
}

# xtables_chain_protos plus a few common names; others via getprotobyname().
_PROTO_NUMBERS = {"all": 0, "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
                  "icmpv6": 58, "sctp": 132, "udplite": 136, "dccp": 33, "mh": 135}


def parse_iptables(text: str, filename: str = "<rules>") -> Ruleset:
    """Parse iptables-save text; raise RulesError on anything unsupported."""
    return _Parser(filename).parse(text)


def write_iptables(rs: Ruleset, canonical: bool = False) -> str:
    """Text for ``iptables-restore``: each table, its chains, rules and COMMIT.

    Rules are written as they appeared in the file (``Rule.text``, without
    counters), so what the kernel loads is exactly what was parsed here;
    ``canonical=True`` writes them as iptables-save would instead.
    """
    out: list[str] = []
    for table, chains in rs.tables.items():
        out.append(f"*{table}")
        for chain in chains:
            policy = rs.policies[table].get(chain, "-")
            out.append(f":{chain} {policy} [0:0]")
        for rules in chains.values():
            out.extend(str(r) if canonical or not r.text else r.text for r in rules)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _split(line: str) -> list[str]:
    """Split a rule line like add_param_to_argv() of iptables-restore."""
    tokens: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in line:
        if quoted:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
                tokens.append("".join(buf))     # a closing quote ends the argument
                buf = []
            else:
                buf.append(ch)
        elif ch == '"':
            quoted = True
        elif ch in " \t\n":
            if buf:
                tokens.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if quoted:
        raise ValueError("unterminated double quote")
    if buf:
        tokens.append("".join(buf))
    return tokens



# --- the parser -------------------------------------------------------------------------------

# Option spellings -> canonical name.
_CORE_OPTS = {
    "-s": "-s", "--source": "-s", "--src": "-s",
    "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-i": "-i", "--in-interface": "-i",
    "-o": "-o", "--out-interface": "-o",
    "-p": "-p", "--protocol": "-p",
    "-m": "-m", "--match": "-m",
    "-j": "-j", "--jump": "-j",
}
_PORT_OPTS = {"--sport": "--sport", "--source-port": "--sport",
              "--dport": "--dport", "--destination-port": "--dport"}
_MODULE_OPTS = {
    "tcp": _PORT_OPTS,
    "udp": _PORT_OPTS,
    "icmp": {"--icmp-type": "--icmp-type"},
    "conntrack": {"--ctstate": "--ctstate"},
    "state": {"--state": "--state"},
    "comment": {"--comment": "--comment"},
}
_TARGET_OPTS = {
    "MASQUERADE": ("--to-ports", "--random", "--random-fully"),
    "SNAT": ("--to-source", "--random", "--random-fully", "--persistent"),
    "DNAT": ("--to-destination", "--random", "--persistent"),
    "CT": ("--notrack", "--helper"),
}
_NEGATABLE = {"-s", "-d", "-i", "-o", "-p", "--sport", "--dport", "--icmp-type", "--ctstate",
              "--state"}
_COMMANDS = {"-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
             "-X", "--delete-chain", "-F", "--flush", "-Z", "--zero", "-P", "--policy",
             "-E", "--rename-chain", "-L", "--list", "-S", "--list-rules"}
_FLAG_OPTS = {"--random": NF_NAT_RANGE_PROTO_RANDOM,
              "--random-fully": NF_NAT_RANGE_PROTO_RANDOM_FULLY,
              "--persistent": NF_NAT_RANGE_PERSISTENT}
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NUMBER = re.compile(r"\d{1,5}")


class _ModuleState:
    """A -m instance being parsed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[str, tuple] = {}


class _TableState:
    def __init__(self, name: str, lineno: int) -> None:
        self.name = name
        self.lineno = lineno
        self.policies = {chain: "ACCEPT" for chain in BUILTIN_CHAINS[name]}
        self.declared: set[str] = set()
        self.chains: dict[str, list[Rule]] = {chain: [] for chain in BUILTIN_CHAINS[name]}


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lineno = 0

    def error(self, message: str, token: str | None = None, lineno: int | None = None):
        return RulesError(self.filename, self.lineno if lineno is None else lineno, message, token)

    # --- file structure -----------------------------------------------------------------------

    def parse(self, text: str) -> Ruleset:
        tables: dict[str, dict[str, list[Rule]]] = {}
        policies: dict[str, dict[str, str]] = {}
        cur: _TableState | None = None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for self.lineno, line in enumerate(lines, 1):
            if "\r" in line:
                raise self.error("carriage return in line (CRLF line ending?): "
                                 "iptables-restore does not accept it")
            if line == "" or line.startswith("#"):
                continue
            if line.startswith("*"):
                if cur is not None:
                    raise self.error(f"COMMIT expected before {line.strip()!r} "
                                     f"(table {cur.name} opened at line {cur.lineno})")
                name = line[1:].strip()
                if name not in BUILTIN_CHAINS:
                    raise self.error(f"unsupported table {name!r} (nattrack supports: nat, filter, "
                                     "raw)",
                                     name)
                if name in tables:
                    raise self.error(f"table {name} given twice", name)
                cur = _TableState(name, self.lineno)
                continue
            if line == "COMMIT":
                if cur is None:
                    raise self.error("COMMIT outside a table", "COMMIT")
                self._commit(cur)
                tables[cur.name], policies[cur.name] = cur.chains, cur.policies
                cur = None
                continue
            if cur is None:
                raise self.error("line outside a table (a table starts with '*nat' or '*filter')",
                                 line.split()[0] if line.split() else line)
            if line.startswith(":"):
                self._chain_line(cur, line)
            else:
                self._rule_line(cur, line)
        if cur is not None:
            self.lineno = len(lines) + 1
            raise self.error(f"COMMIT expected at end of file "
                             f"(table {cur.name} opened at line {cur.lineno})")
        return Ruleset(tables, policies, self.filename)

    def _chain_line(self, t: _TableState, line: str) -> None:
        parts = line[1:].split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and not _COUNTERS.fullmatch(parts[2])):
            raise self.error(f"malformed chain line {line!r} "
                             "(expected ':CHAIN POLICY [packets:bytes]')")
        name, policy = parts[0], parts[1]
        if name in t.declared:
            raise self.error(f"chain {name} declared twice", name)
        builtins = BUILTIN_CHAINS[t.name]
        if name in builtins:
            if policy not in _POLICIES[t.name]:
                raise self.error(f"unsupported policy {policy!r} for {t.name} {name} (nattrack "
                                 f"supports: {', '.join(_POLICIES[t.name])})", policy)
            t.policies[name] = policy
        else:
            if policy != "-":
                raise self.error(f"{name!r} is not a built-in chain of table {t.name} "
                                 f"({', '.join(builtins)}); a user-defined chain is declared "
                                 f"':{name} - [0:0]'", name)
            self._check_chain_name(name)
            t.chains[name] = []
        t.declared.add(name)

    def _check_chain_name(self, name: str) -> None:
        if name.startswith(("-", "!")):
            raise self.error(f"chain name {name!r} may not start with '-' or '!'", name)
        if len(name) >= _XT_EXTENSION_MAXNAMELEN:
            raise self.error(f"chain name {name!r} too long (must be under "
                             f"{_XT_EXTENSION_MAXNAMELEN} chars)", name)
        if name in _RESERVED_CHAIN_NAMES:
            raise self.error(f"chain name {name!r} clashes with a target or built-in chain", name)

    def _commit(self, t: _TableState) -> None:
        """Kernel-side checks that need the whole table: jump loops, NAT target hooks."""
        reach: dict[str, set[str]] = {c: set() for c in t.chains}

        def walk(chain: str, hook: str, path: list[str]) -> None:
            for rule in t.chains[chain]:
                if rule.target in t.chains and rule.target not in BUILTIN_CHAINS[t.name]:
                    if rule.target in path:
                        loop = " -> ".join(path[path.index(rule.target):] + [rule.target])
                        raise self.error(f"jump loop {loop} (the kernel refuses it: "
                                         "Too many links)", rule.target, rule.line)
                    if hook not in reach[rule.target]:
                        reach[rule.target].add(hook)
                        walk(rule.target, hook, path + [rule.target])

        for hook in BUILTIN_CHAINS[t.name]:
            walk(hook, hook, [hook])
        for chain, rules in t.chains.items():
            if chain in BUILTIN_CHAINS[t.name]:
                continue
            for rule in rules:
                hooks = NAT_HOOKS.get(rule.target)
                bad = sorted(reach[chain] - set(hooks)) if hooks else []
                if hooks and bad:
                    raise self.error(f"{rule.target} in chain {chain} reached from {bad[0]}: "
                                     f"{rule.target} is only valid in nat "
                                     f"{', '.join(hooks)}", rule.target, rule.line)

    # --- rules --------------------------------------------------------------------------------

    def _rule_line(self, t: _TableState, line: str) -> None:
        try:
            tokens = _split(line)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        if not tokens:
            raise self.error("blank line with spaces: iptables-restore reads it as a rule "
                             "without a command")
        if _COUNTERS.fullmatch(tokens[0]):
            tokens = tokens[1:]
            rule_text = line.strip()[line.strip().index("]") + 1:].strip()
        else:
            rule_text = line.strip()
        if not tokens:
            raise self.error("counters without a rule")
        cmd = tokens[0]
        if cmd not in ("-A", "--append"):
            if cmd in _COMMANDS:
                raise self.error(f"unsupported command {cmd!r} (nattrack rule files only "
                                 "append rules with -A)", cmd)
            if cmd.startswith("#"):
                raise self.error("comments must start in column 1", cmd)
            raise self.error(f"expected '-A CHAIN', got {cmd!r}", cmd)
        if len(tokens) < 2:
            raise self.error("-A needs a chain name", cmd)
        chain = tokens[1]
        if chain not in t.chains:
            raise self.error(f"chain {chain!r} does not exist in table {t.name} (built-in: "
                             f"{', '.join(BUILTIN_CHAINS[t.name])}; declare a user chain "
                             f"with ':{chain} - [0:0]' before using it)", chain)
        rule = _RuleParser(self, t, chain, tokens[2:], rule_text).parse()
        t.chains[chain].append(rule)


class _RuleParser:
    """Parses the options of one -A line, in order, like iptables does."""

    def __init__(self, parser: _Parser, table: _TableState, chain: str, tokens: list[str],
                 text: str) -> None:
        self.p, self.t, self.chain, self.tokens, self.text = parser, table, chain, tokens, text
        self.f: dict[str, Any] = {}          # src, dst, iif, oif, proto, proto_invert
        self.modules: list[_ModuleState] = []
        self.target: str | None = None
        self.target_opts: dict[str, Any] = {}
        self.i = 0

    def error(self, message: str, token: str | None = None) -> RulesError:
        return self.p.error(message, token)

    def next_arg(self, opt: str) -> str:
        if self.i >= len(self.tokens):
            raise self.error(f"option {opt!r} requires an argument", opt)
        arg = self.tokens[self.i]
        self.i += 1
        return arg

    def supported(self) -> str:
        opts = ["-s", "-d", "-i", "-o", "-p", "-m", "-j"]
        for m in self.modules:
            opts += [o for o in _MODULE_OPTS[m.name] if o.startswith("--") and o not in opts]
        proto_mod = _PROTO_MODULE.get(self.f.get("proto", 0))
        if proto_mod:
            opts += [o for o in _MODULE_OPTS[proto_mod] if o not in opts]
        if self.target in _TARGET_OPTS:
            opts += _TARGET_OPTS[self.target]
        return ", ".join(opts)

    def parse(self) -> Rule:
        invert = False
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            self.i += 1
            if tok == "!":
                if invert:
                    raise self.error("'!' given twice", tok)
                invert = True
                continue
            opt = _CORE_OPTS.get(tok)
            owner = None
            if opt is None:
                owner, opt = self.find_owner(tok)
            if invert and opt not in _NEGATABLE:
                raise self.error(f"'!' is not supported before {tok!r} (nattrack negates: "
                                 f"{', '.join(sorted(_NEGATABLE))})", tok)
            if owner is None:
                self.core_option(tok, opt, invert)
            elif owner == "target":
                self.target_option(tok, opt)
            else:
                assert isinstance(owner, _ModuleState)
                self.module_option(owner, tok, opt, invert)
            invert = False
        if invert:
            raise self.error("'!' at the end of the rule", "!")
        return self.finish()

    def find_owner(self, tok: str) -> tuple[object, str]:
        if self.target in _TARGET_OPTS and tok in _TARGET_OPTS[self.target]:
            return "target", tok
        for m in reversed(self.modules):
            if tok in _MODULE_OPTS[m.name]:
                return m, _MODULE_OPTS[m.name][tok]
        proto_mod = _PROTO_MODULE.get(self.f.get("proto", 0))
        if proto_mod and tok in _MODULE_OPTS[proto_mod]:
            # iptables loads the protocol's match implicitly (-p tcp --dport 22).
            m = self.load_module(proto_mod, tok)
            return m, _MODULE_OPTS[proto_mod][tok]
        if tok.startswith("-"):
            hint = ""
            if tok in ("--sport", "--dport", "--source-port", "--destination-port"):
                hint = "; ports need '-p tcp' or '-p udp' first"
            elif tok == "--icmp-type":
                hint = "; --icmp-type needs '-p icmp' first"
            elif tok in ("--to-source", "--to-destination", "--to-ports", "--random",
                         "--random-fully", "--persistent"):
                hint = f"; it belongs after -j SNAT/DNAT/MASQUERADE (target here: " \
                       f"{self.target or 'none yet'})"
            raise self.error(f"unsupported option {tok!r} (nattrack supports: "
                             f"{self.supported()}){hint}", tok)
        raise self.error(f"unexpected argument {tok!r}", tok)

    def load_module(self, name: str, tok: str) -> _ModuleState:
        if name in ("tcp", "udp", "icmp") and any(m.name in ("tcp", "udp", "icmp")
                                                   for m in self.modules):
            raise self.error(f"match {name!r} loaded twice or together with another "
                             "protocol match", tok)
        m = _ModuleState(name)
        self.modules.append(m)
        return m

    # --- core options -------------------------------------------------------------------------

    def core_option(self, tok: str, opt: str, invert: bool) -> None:
        if opt == "-m":
            name = self.next_arg(tok)
            if name not in _MODULE_OPTS:
                raise self.error(f"unsupported match module {name!r} (nattrack supports: "
                                 f"{', '.join(_MODULE_OPTS)})", name)
            self.load_module(name, name)
            return
        if opt == "-j":
            if self.target is not None:
                raise self.error("multiple -j flags not allowed", tok)
            self.target = self.parse_target(self.next_arg(tok))
            return
        key = {"-s": "src", "-d": "dst", "-i": "iif", "-o": "oif", "-p": "proto"}[opt]
        if key in self.f:
            raise self.error(f"multiple {opt} flags not allowed", tok)
        arg = self.next_arg(tok)
        if opt in ("-s", "-d"):
            self.f[key] = self.parse_addr(arg, invert)
        elif opt in ("-i", "-o"):
            self.f[key] = self.parse_iface(opt, arg, invert)
        else:
            self.f["proto"] = self.parse_proto(arg, invert)
            self.f["proto_invert"] = invert

    def parse_target(self, name: str) -> str:
        t = self.t
        if name in t.chains and name not in BUILTIN_CHAINS[t.name]:
            if t.name == "raw":
                raise self.error("a jump in the raw table: nattrack runs its built-in chains "
                                 "only (accept, drop, NOTRACK)", name)
            return name
        if name in BUILTIN_CHAINS[t.name]:
            raise self.error(f"cannot jump to built-in chain {name!r}", name)
        if name not in _TARGETS[t.name]:
            if name == "DROP" and t.name == "nat":
                raise self.error("DROP in the nat table: the nat table is not intended for "
                                 "filtering (iptables refuses it)", name)
            if name in NAT_HOOKS:
                raise self.error(f"{name} is only valid in the nat table", name)
            users = [c for c in t.chains if c not in BUILTIN_CHAINS[t.name]]
            raise self.error(f"unsupported target {name!r} (nattrack supports in table "
                             f"{t.name}: {', '.join(_TARGETS[t.name])}, or a user chain declared "
                             f"above{': ' + ', '.join(users) if users else ''})", name)
        hooks = NAT_HOOKS.get(name)
        if hooks and self.chain in BUILTIN_CHAINS["nat"] and self.chain not in hooks:
            raise self.error(f"{name} is only valid in nat {', '.join(hooks)}, not in "
                             f"{self.chain}", name)
        return name

    def parse_addr(self, arg: str, invert: bool) -> AddrMatch | None:
        if "," in arg:
            raise self.error(f"address list {arg!r}: iptables expands it into several rules; "
                             "nattrack wants one address per rule", arg)
        addr, slash, mask_s = arg.partition("/")
        ip = parse_ip(addr)
        if ip is None:
            raise self.error(f"malformed address {arg!r} (expected a dotted quad "
                             "A.B.C.D[/LEN|/MASK]; host names are not resolved)", arg)
        if not slash:
            mask = 0xFFFFFFFF
        elif mask_s.isdigit() and len(mask_s) <= 2 and int(mask_s) <= 32:
            mask = (0xFFFFFFFF << (32 - int(mask_s))) & 0xFFFFFFFF
        else:
            m = parse_ip(mask_s)
            if m is None:
                raise self.error(f"malformed mask in {arg!r}", arg)
            mask = m
        if mask == 0:
            if invert:
                raise self.error(f"'! {arg}' would never match", arg)
            return None                         # iptables-save drops 0.0.0.0/0
        return AddrMatch(ip & mask, mask, invert)

    def parse_iface(self, opt: str, arg: str, invert: bool) -> IfaceMatch | None:
        if opt == "-i" and self.chain in ("OUTPUT", "POSTROUTING"):
            raise self.error(f"can't use -i with {self.chain} (no input interface there)", opt)
        if opt == "-o" and self.chain in ("PREROUTING", "INPUT"):
            raise self.error(f"can't use -o with {self.chain} (no output interface yet)", opt)
        if not arg or len(arg) >= _IFNAMSIZ:
            raise self.error(f"interface name {arg!r} must be 1 to {_IFNAMSIZ - 1} characters",
                             arg)
        wildcard = arg.endswith("+")
        name = arg[:-1] if wildcard else arg
        if "+" in name or "/" in name:
            raise self.error(f"malformed interface name {arg!r} ('+' is a wildcard only at "
                             "the end)", arg)
        if wildcard and not name and not invert:
            return None                         # "-i +" matches everything
        return IfaceMatch(name, wildcard, invert)

    def parse_proto(self, arg: str, invert: bool) -> int:
        low = arg.lower()
        if low.isdigit():
            num = int(low)
            if num > 255:
                raise self.error(f"protocol number {arg!r} out of range", arg)
        elif low in _PROTO_NUMBERS:
            num = _PROTO_NUMBERS[low]
        else:
            try:
                num = socket.getprotobyname(low)
            except OSError:
                raise self.error(f"unknown protocol {arg!r} (tcp, udp, icmp, all, a name from "
                                 "/etc/protocols or a number)", arg) from None
        if num == 0 and invert:
            raise self.error("'! -p all': rule would never match protocol", arg)
        return num

    # --- matches ------------------------------------------------------------------------------

    def module_option(self, m: _ModuleState, tok: str, opt: str, invert: bool) -> None:
        if opt in m.values:
            raise self.error(f"{m.name}: option {opt!r} can only be used once", tok)
        arg = self.next_arg(tok)
        if m.name in ("tcp", "udp"):
            proto_name = m.name
            m.values[opt] = (self.parse_ports(arg, proto_name, invert),)
        elif m.name == "icmp":
            m.values[opt] = (self.parse_icmp_type(arg, invert),)
        elif m.name in ("conntrack", "state"):
            m.values[opt] = (self.parse_states(m.name, arg), invert)
        else:
            m.values[opt] = (arg,)

    def parse_port(self, s: str, proto_name: str, arg: str) -> int:
        if _NUMBER.fullmatch(s) and int(s) <= 65535:
            return int(s)
        if s and not s.isdigit() and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", s):
            try:
                return socket.getservbyname(s, proto_name)
            except OSError:
                pass
        raise self.error(f"invalid port/service {s!r} in {arg!r}", arg)

    def parse_ports(self, arg: str, proto_name: str, invert: bool) -> PortRange | None:
        lo_s, colon, hi_s = arg.partition(":")
        lo = self.parse_port(lo_s, proto_name, arg) if lo_s or not colon else 0
        hi = (self.parse_port(hi_s, proto_name, arg) if hi_s else 65535) if colon else lo
        if lo > hi:
            raise self.error(f"invalid port range {arg!r} (min > max)", arg)
        if (lo, hi) == (0, 65535):
            if invert:
                raise self.error(f"'! {arg}' would never match", arg)
            return None                         # iptables-save omits the full range
        return PortRange(lo, hi, invert)

    def parse_icmp_type(self, arg: str, invert: bool) -> IcmpMatch:
        low = arg.lower()
        if low == "any":
            return IcmpMatch(ICMP_ANY, 0, 255, invert)
        if low in _ICMP_NAMES:
            t, lo, hi = _ICMP_NAMES[low]
            return IcmpMatch(t, lo, hi, invert)
        typ, slash, code = arg.partition("/")
        code_ok = not slash or (code.isdigit() and int(code) <= 255)
        if typ.isdigit() and int(typ) <= 255 and code_ok:
            if int(typ) == ICMP_ANY:
                return IcmpMatch(ICMP_ANY, 0, 255, invert)
            if slash:
                return IcmpMatch(int(typ), int(code), int(code), invert)
            return IcmpMatch(int(typ), 0, 255, invert)
        raise self.error(f"unknown ICMP type {arg!r} (a number 0-255, TYPE/CODE, 'any' or a "
                         "name such as echo-request)", arg)

    def parse_states(self, module: str, arg: str) -> int:
        mask = 0
        for name in arg.split(","):
            bit = STATE_BITS.get(name.upper())
            if bit is None:
                extra = (" (SNAT/DNAT need the connection's status, which nattrack's "
                         "match does not see)" if name.upper() in ("SNAT", "DNAT")
                         and module == "conntrack" else "")
                opt = "--ctstate" if module == "conntrack" else "--state"
                raise self.error(f"unsupported state {name!r} in '{opt} {arg}' (nattrack "
                                 f"supports: {', '.join(STATE_BITS)}){extra}", arg)
            mask |= bit
        return mask

    # --- targets ------------------------------------------------------------------------------

    def target_option(self, tok: str, opt: str) -> None:
        if opt in self.target_opts:
            raise self.error(f"{self.target}: option {opt!r} can only be used once", tok)
        if opt == "--notrack":
            self.target_opts[opt] = True
            return
        if opt == "--helper":
            name = self.next_arg(tok)
            if name not in CT_HELPERS:
                raise self.error(f"-j CT --helper {name!r}: nattrack models only "
                                 + ", ".join(CT_HELPERS), name)
            self.target_opts[opt] = name
            return
        if opt in _FLAG_OPTS:
            self.target_opts[opt] = True
            return
        arg = self.next_arg(tok)
        proto = self.f.get("proto", 0)
        proto_ok = proto in (IPPROTO_TCP, IPPROTO_UDP) and not self.f.get("proto_invert")
        if opt == "--to-ports":
            ips, ports = None, arg
        else:
            ip_s, colon, ports = arg.partition(":")
            if not colon:
                ports = None
            if not ip_s and ports is None:
                raise self.error(f"{opt} needs IP[-IP][:PORT[-PORT]]", tok)
            ips = None
            if ip_s:
                lo_s, dash, hi_s = ip_s.partition("-")
                lo = parse_ip(lo_s)
                hi = parse_ip(hi_s) if dash else lo
                if lo is None or hi is None:
                    raise self.error(f"bad IP address in {arg!r} (expected A.B.C.D[-A.B.C.D])",
                                     arg)
                if lo > hi:
                    raise self.error(f"empty IP range {ip_s!r} (first address above last)", arg)
                ips = (lo, hi)
        port_range = None
        if ports is not None:
            if not proto_ok:
                raise self.error("Need TCP or UDP with port specification ('-p tcp' or "
                                 "'-p udp' before -j)", arg)
            lo_s, dash, hi_s = ports.partition("-")
            if ":" in ports:
                raise self.error(f"invalid port:port syntax in {arg!r}: use a dash", arg)
            proto_name = _PROTO_MODULE[proto]
            lo = self.parse_port(lo_s, proto_name, arg)
            hi = self.parse_port(hi_s, proto_name, arg) if dash else lo
            if lo > hi:
                raise self.error(f"invalid port range {ports!r} (min > max)", arg)
            if lo == 0:
                raise self.error(f"port 0 in {arg!r} is not a usable NAT port", arg)
            port_range = (lo, hi)
        self.target_opts[opt] = (ips, port_range)

    def nat_range(self) -> NatRange | None:
        if self.target not in NAT_HOOKS:
            return None
        required = {"SNAT": "--to-source", "DNAT": "--to-destination"}.get(self.target)
        if required and required not in self.target_opts:
            raise self.error(f"{self.target}: option {required!r} must be specified",
                             self.target)
        ips, ports = self.target_opts.get(required or "--to-ports", (None, None))
        flags = 0
        for opt, flag in _FLAG_OPTS.items():
            if opt in self.target_opts:
                flags |= flag
        min_ip = max_ip = min_port = max_port = 0
        if ips is not None:
            min_ip, max_ip = ips
            flags |= NF_NAT_RANGE_MAP_IPS
        if ports is not None:
            min_port, max_port = ports
            flags |= NF_NAT_RANGE_PROTO_SPECIFIED
        return NatRange(min_ip, max_ip, min_port, max_port, flags)

    # --- the end of the line ------------------------------------------------------------------

    def finish(self) -> Rule:
        proto, pinv = self.f.get("proto", 0), self.f.get("proto_invert", False)
        matches: list[Match] = []
        for m in self.modules:
            if m.name in ("tcp", "udp", "icmp"):
                need = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}[m.name]
                if proto != need or pinv:
                    raise self.error(f"{m.name} match requires '-p {m.name}' "
                                     "(and not '! -p')", m.name)
            if m.name in ("tcp", "udp"):
                matches.append(TcpUdpMatch(proto, m.values.get("--sport", (None,))[0],
                                           m.values.get("--dport", (None,))[0]))
                continue
            opt = next(iter(_MODULE_OPTS[m.name]))
            if opt not in m.values:
                raise self.error(f"{m.name}: option {opt!r} must be specified", m.name)
            if m.name == "icmp":
                matches.append(m.values[opt][0])
            elif m.name in ("conntrack", "state"):
                mask, inv = m.values[opt]
                matches.append(StateMatch(mask, inv, m.name))
            else:
                matches.append(CommentMatch(m.values[opt][0]))
        # xt_CT's notrack_tg (-j NOTRACK, -j CT --notrack): mark, and the chain goes on.
        helper = self.target_opts.get("--helper", "") if self.target == "CT" else ""
        notrack = self.target == "NOTRACK" or (self.target == "CT" and not helper)
        if self.target == "CT" and ("--notrack" in self.target_opts) == bool(helper):
            raise self.error("-j CT: nattrack supports only --notrack or --helper ftp, one of them",
                             "CT")
        if helper and proto != IPPROTO_TCP:
            raise self.error(f"-j CT --helper {helper}: the helper is for TCP: add -p tcp", "CT")
        return Rule(self.t.name, self.chain, self.f.get("src"), self.f.get("dst"),
                    self.f.get("iif"), self.f.get("oif"), proto, pinv, tuple(matches),
                    "" if notrack or helper else self.target or "", self.nat_range(),
                    self.p.lineno, self.text, notrack=notrack, helper=helper)


_PROTO_MODULE = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp"}
