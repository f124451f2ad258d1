"""The rules file: a subset of iptables-save syntax that drives both routers.

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

Matching follows ip_packet_match() (ip_tables.c) and the xt_tcpudp, xt_icmp,
xt_conntrack/xt_state matches.  A tcp/udp/icmp match never matches a
non-first fragment, nor a packet whose L4 header could not be parsed
(``pkt.l4ok`` false): the kernel sets ``hotdrop`` for a truncated header and
drops the packet at once; here the rule simply does not match (conntrack has
already classified such a packet INVALID, which a stateful rule set drops).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..conntrack.conn import ctstate_bit
from ..conntrack.tuple import int2ip
from ..nat.range import (NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM,
                         NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)

__all__ = [
    "RulesError", "NatRange", "AddrMatch", "IfaceMatch", "PortRange", "TcpUdpMatch",
    "IcmpMatch", "StateMatch", "CommentMatch", "Rule", "Ruleset", "match",
    "NF_NAT_RANGE_MAP_IPS", "NF_NAT_RANGE_PROTO_SPECIFIED", "NF_NAT_RANGE_PROTO_RANDOM",
    "NF_NAT_RANGE_PERSISTENT", "NF_NAT_RANGE_PROTO_RANDOM_FULLY", "BUILTIN_CHAINS",
    "STATE_BITS", "is_nft",
]

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
NF_IP_PRI_CONNTRACK = -200      # a filter chain at or below runs before conntrack (raw)

# Built-in chains in the order iptables-save prints them.
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "raw": ("PREROUTING", "OUTPUT"),
}
# The conntrack helpers -j CT --helper / ct helper set may name (conntrack/helper_ftp.py).
CT_HELPERS = ("ftp",)
_POLICIES = {"nat": ("ACCEPT",), "filter": ("ACCEPT", "DROP"), "raw": ("ACCEPT", "DROP")}

# Where each NAT target may sit (the .hooks of xt_nat.c and xt_MASQUERADE.c).
_NAT_HOOKS = {
    "SNAT": ("POSTROUTING", "INPUT"),
    "DNAT": ("PREROUTING", "OUTPUT"),
    "MASQUERADE": ("POSTROUTING",),
}
_TARGETS = {
    "nat": ("ACCEPT", "RETURN", "SNAT", "DNAT", "MASQUERADE"),
    "filter": ("ACCEPT", "DROP", "RETURN"),
    "raw": ("ACCEPT", "DROP", "NOTRACK", "CT"),      # CT --notrack only
}
_ALL_TARGETS = ("ACCEPT", "DROP", "RETURN", "SNAT", "DNAT", "MASQUERADE", "REJECT")
# Chain names that would clash with a target (xtables: "chain name may not clash
# with target name") or that nattrack would read as a target.
_RESERVED_CHAIN_NAMES = frozenset(_ALL_TARGETS + ("QUEUE",)
                                  + BUILTIN_CHAINS["nat"] + BUILTIN_CHAINS["filter"])
_XT_EXTENSION_MAXNAMELEN = 29
_IFNAMSIZ = 16

# NF_CT_STATE_BIT() values (include/uapi/linux/netfilter/nf_conntrack_common.h),
# in the order libxt_conntrack prints them.
STATE_BITS = {"INVALID": 1 << 0, "NEW": 1 << 3, "RELATED": 1 << 2, "ESTABLISHED": 1 << 1,
              "UNTRACKED": 1 << 6}

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
ICMP_ANY = 0xFF

# xtables_chain_protos plus a few common names; others via getprotobyname().
_PROTO_NUMBERS = {"all": 0, "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
                  "icmpv6": 58, "sctp": 132, "udplite": 136, "dccp": 33, "mh": 135}
_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}


class RulesError(ValueError):
    """A rules file nattrack cannot (or the kernel would not) load.

    ``str(err)`` reads ``FILE:LINE: message``; ``filename``, ``lineno`` and
    ``token`` (the offending token, if one) are kept as attributes.
    """

    def __init__(self, filename: str, lineno: int, message: str, token: str | None = None):
        super().__init__(f"{filename}:{lineno}: {message}")
        self.filename, self.lineno, self.message, self.token = filename, lineno, message, token


# --- the data model -----------------------------------------------------------------


@dataclass(frozen=True)
class AddrMatch:
    """-s / -d: ``(addr & mask) == net``, inverted by ``!``; net is already masked."""
    net: int
    mask: int
    invert: bool = False

    def __str__(self) -> str:
        bits = bin(self.mask).count("1")
        contiguous = self.mask == ((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF)
        return f"{int2ip(self.net)}/{bits if contiguous else int2ip(self.mask)}"


@dataclass(frozen=True)
class IfaceMatch:
    """-i / -o: an interface name, or a name prefix when written with a trailing '+'."""
    name: str
    wildcard: bool = False
    invert: bool = False

    def __str__(self) -> str:
        return self.name + ("+" if self.wildcard else "")


@dataclass(frozen=True)
class PortRange:
    """--sport / --dport: lo <= port <= hi, inverted by ``!``."""
    lo: int
    hi: int
    invert: bool = False

    def __str__(self) -> str:
        return _range_str(self.lo, self.hi, ":")


@dataclass(frozen=True)
class TcpUdpMatch:
    """-m tcp / -m udp (xt_tcpudp); also loaded implicitly by --sport/--dport."""
    proto: int
    sport: PortRange | None = None
    dport: PortRange | None = None

    @property
    def module(self) -> str:
        return "tcp" if self.proto == IPPROTO_TCP else "udp"


@dataclass(frozen=True)
class IcmpMatch:
    """-m icmp --icmp-type: type (0xFF = any) and an inclusive code range."""
    type: int
    code_min: int = 0
    code_max: int = 255
    invert: bool = False

    def __str__(self) -> str:
        if self.type == ICMP_ANY:
            return "any"
        if (self.code_min, self.code_max) == (0, 255):
            return str(self.type)
        return f"{self.type}/{self.code_min}"


@dataclass(frozen=True)
class StateMatch:
    """-m conntrack --ctstate / -m state --state: a mask of NF_CT_STATE bits."""
    mask: int
    invert: bool = False
    module: str = "conntrack"

    @property
    def states(self) -> list[str]:
        return [name for name, bit in STATE_BITS.items() if self.mask & bit]


@dataclass(frozen=True)
class CommentMatch:
    """-m comment --comment TEXT: always matches."""
    text: str


Match = TcpUdpMatch | IcmpMatch | StateMatch | CommentMatch
Predicate = Callable[[object, "int | None", "str | None", "str | None"], bool]


@dataclass(frozen=True)
class Rule:
    """One ``-A`` line.

    The fixed ``ipt_ip`` part (addresses, interfaces, protocol) is kept in
    fields; the ``-m`` matches in ``matches``, in the order they were loaded
    (which is the order iptables-save prints them).  ``target`` is ACCEPT,
    DROP, RETURN, SNAT, DNAT, MASQUERADE, a user chain name, or "" for a rule
    without ``-j`` (it only counts).  ``line`` and ``text`` say where the rule
    came from and are not part of equality.
    """
    table: str
    chain: str
    src: AddrMatch | None = None
    dst: AddrMatch | None = None
    iif: IfaceMatch | None = None
    oif: IfaceMatch | None = None
    proto: int = 0                 # 0 = any protocol ("-p all")
    proto_invert: bool = False
    matches: tuple[Match, ...] = ()
    target: str = ""
    nat_range: NatRange | None = None
    line: int = field(default=0, compare=False)
    text: str = field(default="", compare=False)
    # nft only (nattrack.netfilter.nft): a `counter` statement, a `log prefix`,
    # and `goto` instead of `jump` (no return to the calling chain).
    counter: bool = False
    log: str | None = None
    goto: bool = False
    # nft `reject` (target REJECT): how it answers, in ipt_REJECT's names
    # (icmp-port-unreachable, ..., tcp-reset); stack.Router._reject sends it.
    reject_with: str = ""
    # nft `notrack` (a raw-priority chain): the packet is left untracked (IP_CT_UNTRACKED).
    notrack: bool = False
    # -j CT --helper NAME / nft `ct helper set`: the helper a new entry gets (docs/helpers.md).
    helper: str = ""
    _preds: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_preds", _compile(self))

    # Convenience views of the matches.
    def _first(self, kind: type) -> Match | None:
        return next((m for m in self.matches if isinstance(m, kind)), None)

    @property
    def sport(self) -> PortRange | None:
        m = self._first(TcpUdpMatch)
        return m.sport if m else None

    @property
    def dport(self) -> PortRange | None:
        m = self._first(TcpUdpMatch)
        return m.dport if m else None

    @property
    def icmp(self) -> IcmpMatch | None:
        return self._first(IcmpMatch)

    @property
    def states(self) -> tuple[StateMatch, ...]:
        return tuple(m for m in self.matches if isinstance(m, StateMatch))

    @property
    def comment(self) -> str | None:
        m = self._first(CommentMatch)
        return m.text if m else None

    def matches_packet(self, pkt, ctinfo: int | None, iif: str | None, oif: str | None) -> bool:
        for pred in self._preds:
            if not pred(pkt, ctinfo, iif, oif):
                return False
        return True

    def __str__(self) -> str:
        """The rule as iptables-save (1.8, nf_tables) prints it."""
        out = [f"-A {self.chain}"]
        for opt, m in (("-s", self.src), ("-d", self.dst), ("-i", self.iif), ("-o", self.oif)):
            if m is not None:
                out.append(f"{'! ' if m.invert else ''}{opt} {m}")
        if self.proto:
            out.append(f"{'! ' if self.proto_invert else ''}-p {_proto_name(self.proto)}")
        for m in self.matches:
            if isinstance(m, TcpUdpMatch):
                out.append(f"-m {m.module}")
                for opt, pr in (("--sport", m.sport), ("--dport", m.dport)):
                    if pr is not None:
                        out.append(f"{'! ' if pr.invert else ''}{opt} {pr}")
            elif isinstance(m, IcmpMatch):
                out.append(f"-m icmp {'! ' if m.invert else ''}--icmp-type {m}")
            elif isinstance(m, StateMatch):
                opt = "--ctstate" if m.module == "conntrack" else "--state"
                out.append(f"-m {m.module} {'! ' if m.invert else ''}{opt} {','.join(m.states)}")
            elif isinstance(m, CommentMatch):
                out.append(f"-m comment --comment {_save_string(m.text)}")
            else:
                out.append(m.iptables())        # an nft-only match (nft.py)
        if self.target:
            out.append(f"-j {self.target}")
        if self.reject_with:
            out.append(f"--reject-with {self.reject_with}")
        if self.notrack:
            out.append("-j CT --notrack")
        if self.helper:
            out.append(f"-j CT --helper {self.helper}")
        nr = self.nat_range
        if nr is not None:
            if self.target == "SNAT":
                out.append(f"--to-source {nr}")
            elif self.target == "DNAT":
                out.append(f"--to-destination {nr}")
            elif nr.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
                out.append(f"--to-ports {_range_str(nr.min_port, nr.max_port, '-')}")
            for flag, opt in ((NF_NAT_RANGE_PROTO_RANDOM, "--random"),
                              (NF_NAT_RANGE_PROTO_RANDOM_FULLY, "--random-fully"),
                              (NF_NAT_RANGE_PERSISTENT, "--persistent")):
                if nr.flags & flag:
                    out.append(opt)
        return " ".join(out)


# --- matching ---------------------------------------------------------------------------


def match(rule: Rule, pkt, ctinfo: int | None, iif: str | None, oif: str | None) -> bool:
    """Does ``pkt`` (a nattrack.packet.ipv4.Packet) match every condition of ``rule``?

    ``ctinfo`` is the packet's conntrack info, None for INVALID; ``iif``/``oif``
    are interface names or None where the hook has none (no input interface
    in OUTPUT/POSTROUTING, no output one in PREROUTING/INPUT): like the
    kernel's empty name, it never equals ``-i eth0`` and so does match
    ``! -i eth0``.
    """
    for pred in rule._preds:
        if not pred(pkt, ctinfo, iif, oif):
            return False
    return True


def _compile(rule: Rule) -> tuple[Predicate, ...]:
    """Turn a rule into a few closures, cheapest and most selective first."""
    preds: list[Predicate] = []
    if rule.proto:
        proto, pinv = rule.proto, rule.proto_invert
        preds.append(lambda p, c, i, o: (p.proto == proto) != pinv)
    if rule.src is not None:
        net, mask, sinv = rule.src.net, rule.src.mask, rule.src.invert
        preds.append(lambda p, c, i, o: ((p.src & mask) == net) != sinv)
    if rule.dst is not None:
        dnet, dmask, dinv = rule.dst.net, rule.dst.mask, rule.dst.invert
        preds.append(lambda p, c, i, o: ((p.dst & dmask) == dnet) != dinv)
    if rule.iif is not None:
        preds.append(_iface_pred(rule.iif, True))
    if rule.oif is not None:
        preds.append(_iface_pred(rule.oif, False))
    for m in rule.matches:
        if isinstance(m, TcpUdpMatch):
            preds.append(_ports_pred(m))
        elif isinstance(m, IcmpMatch):
            preds.append(_icmp_pred(m))
        elif isinstance(m, StateMatch):
            preds.append(_state_pred(m))
        elif hasattr(m, "predicate"):
            preds.append(m.predicate())     # an nft-only match (nft.py)
    return tuple(preds)


def _state_pred(m: StateMatch) -> Predicate:
    # conntrack_mt(): the packet's state bit against --ctstate's mask.  A
    # function of its own, so that each match's closure keeps its own mask.
    mask, inv = m.mask, m.invert
    return lambda p, c, i, o: bool(ctstate_bit(c) & mask) != inv


def _iface_pred(m: IfaceMatch, is_in: bool) -> Predicate:
    # ip_packet_match(): ifname_compare_aligned() against the device name, ""
    # where the hook has no such device.
    name, inv = m.name, m.invert
    if m.wildcard:
        if is_in:
            return lambda p, c, i, o: (i or "").startswith(name) != inv
        return lambda p, c, i, o: (o or "").startswith(name) != inv
    if is_in:
        return lambda p, c, i, o: ((i or "") == name) != inv
    return lambda p, c, i, o: ((o or "") == name) != inv


def _ports_pred(m: TcpUdpMatch) -> Predicate:
    # tcp_mt()/udp_mt(): a non-first fragment never matches (the inversion
    # applies to the port test only); a truncated header sets hotdrop.
    sp, dp = m.sport, m.dport
    if sp is None and dp is None:
        return lambda p, c, i, o: p.l4ok and not p.frag
    if dp is None:
        slo, shi, sinv = sp.lo, sp.hi, sp.invert
        return lambda p, c, i, o: p.l4ok and not p.frag and (slo <= p.sport <= shi) != sinv
    dlo, dhi, dinv = dp.lo, dp.hi, dp.invert
    if sp is None:
        return lambda p, c, i, o: p.l4ok and not p.frag and (dlo <= p.dport <= dhi) != dinv
    slo, shi, sinv = sp.lo, sp.hi, sp.invert
    return lambda p, c, i, o: (p.l4ok and not p.frag and (slo <= p.sport <= shi) != sinv
                               and (dlo <= p.dport <= dhi) != dinv)


def _icmp_pred(m: IcmpMatch) -> Predicate:
    # icmp_match() / icmp_type_code_match(): type 0xFF matches every type.
    t, lo, hi, inv = m.type, m.code_min, m.code_max, m.invert
    if t == ICMP_ANY:
        return lambda p, c, i, o: p.l4ok and not p.frag and not inv
    return lambda p, c, i, o: (p.l4ok and not p.frag
                               and (p.itype == t and lo <= p.icode <= hi) != inv)


# --- the rule set ------------------------------------------------------------------------

_JUMP, _RETURN, _NONE, _FINAL = range(4)


class Ruleset:
    """The parsed file: ``tables[table][chain] -> [Rule]`` and ``policies[table][chain]``.

    Every built-in chain of a table present in the file is in ``tables`` (maybe
    empty) and in ``policies`` (ACCEPT unless a ``:CHAIN POLICY`` line says
    otherwise: the policy of a fresh namespace); user chains are in
    ``tables`` only.  Tables appear in file order.
    """

    def __init__(self, tables: dict[str, dict[str, list[Rule]]] | None = None,
                 policies: dict[str, dict[str, str]] | None = None,
                 filename: str = "<rules>", bases: dict | None = None,
                 sets: dict | None = None) -> None:
        self.tables = tables if tables is not None else {}
        self.policies = policies if policies is not None else {}
        self.filename = filename
        # nft only: bases[table][chain] = (type, HOOK, priority) for each base
        # chain, sets[table][name] = nft.NamedSet.  Empty for iptables files.
        self.bases = bases if bases is not None else {}
        self.sets = sets if sets is not None else {}
        # (type, HOOK) -> [(priority, table, chain)], in the kernel's order
        # (nf_register_net_hook() sorts a hook's entries by priority).
        self.hooks: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        for table, chains in self.bases.items():
            for chain, (kind, hook, prio) in chains.items():
                if kind == "filter" and prio <= NF_IP_PRI_CONNTRACK:
                    kind = "raw"                 # runs before conntrack: raw()
                self.hooks.setdefault((kind, hook), []).append((prio, table, chain))
        if not self.bases and "raw" in self.tables:      # iptables' raw table (NF_IP_PRI_RAW)
            for chain in BUILTIN_CHAINS["raw"]:
                self.hooks[("raw", chain)] = [(-300, "raw", chain)]
        for entries in self.hooks.values():
            entries.sort(key=lambda e: e[0])
        # Does any rule attach a conntrack helper?  (Then the router asks raw_helper().)
        self.helpers = any(r.helper for chains in self.tables.values()
                           for rules in chains.values() for r in rules)
        self._helper_pending: tuple | None = None
        # (table, chain, index) -> [packets, bytes] each rule matched, as the kernel's
        # per-rule counters count (ipt_do_table()'s ADD_COUNTER, nft's `counter`).
        self.counters: dict[tuple[str, str, int], list[int]] = {}
        # table -> chain -> [(rule, predicates, kind, counter)], for first_match().
        self._compiled: dict[str, dict[str, list[tuple]]] = {}
        for table, chains in self.tables.items():
            comp = self._compiled[table] = {}
            for chain, rules in chains.items():
                comp[chain] = [(r, r._preds, _kind(r, chains),
                                self.counters.setdefault((table, chain, i), [0, 0]))
                               for i, r in enumerate(rules)]

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, filename: str = "<rules>") -> Ruleset:
        """Parse iptables-save or nft text (told apart by is_nft()); raise
        RulesError on anything unsupported."""
        if is_nft(text):
            from .nft import parse_nft
            return parse_nft(text, filename)
        return _Parser(filename).parse(text)

    @property
    def syntax(self) -> str:
        """"nft" for a rule set read from nft syntax, else "iptables"."""
        return "nft" if self.bases else "iptables"

    def to_nft(self) -> str:
        """The rule set as an ``nft -f`` file (nattrack.netfilter.nft.write_nft)."""
        from .nft import write_nft
        return write_nft(self)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ruleset:
        name = os.fspath(path)
        with open(name, encoding="utf-8", newline="") as f:
            return cls.parse(f.read(), name)

    # --- evaluation ------------------------------------------------------------------------

    match = staticmethod(match)

    def first_match(self, table: str, chain: str, pkt, ctinfo: int | None,
                    iif: str | None, oif: str | None) -> Rule | None:
        """The rule whose verdict applies to ``pkt`` in ``table``/``chain``, or None.

        Walks the chain in order, following jumps into user chains and coming
        back on RETURN or at their end (ipt_do_table()'s stack).  Returns the
        first matching rule with a final target (ACCEPT, DROP, SNAT, DNAT,
        MASQUERADE); None when the built-in chain runs out or RETURNs, i.e.
        when its policy applies.  Rules without a target are skipped, and a
        table missing from the file gives None.

        For an nft rule set, ``first_match("nat", HOOK, ...)`` runs the nat
        base chains on that hook in priority order like nf_nat_inet_fn(): an
        accept ends one chain only, the first NAT (or drop) rule wins.
        """
        if self.bases and (table, chain) in _HOOK_KINDS:
            found = None
            for _prio, tkey, base in self.hooks.get((table, chain), ()):
                rule = self._walk(tkey, base, pkt, ctinfo, iif, oif)
                if rule is not None and rule.target != "ACCEPT":
                    return rule
                found = found or rule
            return found
        return self._walk(table, chain, pkt, ctinfo, iif, oif)

    def _walk(self, table: str, chain: str, pkt, ctinfo: int | None,
              iif: str | None, oif: str | None) -> Rule | None:
        """ipt_do_table() / nft_do_chain() over one base chain: see first_match()."""
        chains = self._compiled.get(table)
        if chains is None:
            return None
        rules = chains.get(chain)
        if rules is None:
            raise KeyError(f"table {table} has no chain {chain!r}")
        stack: list[tuple[list, int]] = []
        i = 0
        while True:
            if i < len(rules):
                rule, preds, kind, count = rules[i]
                i += 1
                for pred in preds:
                    if not pred(pkt, ctinfo, iif, oif):
                        break
                else:
                    count[0] += 1
                    count[1] += pkt.tot_len
                    if rule.helper and (self._helper_pending is None
                                        or self._helper_pending[0] is not pkt):
                        self._helper_pending = (pkt, rule.helper)   # nft `ct helper set`
                    if kind == _FINAL:
                        return rule
                    if kind == _JUMP:
                        if not rule.goto:
                            stack.append((rules, i))
                        rules, i = chains[rule.target], 0
                    elif kind == _RETURN:
                        if not stack:
                            return None
                        rules, i = stack.pop()
            elif stack:
                rules, i = stack.pop()
            else:
                return None

    def raw(self, hook: str, pkt, iif: str | None, oif: str | None) -> tuple[bool, bool]:
        """(drop, notrack) for ``pkt`` in the raw-priority filter chains on ``hook``
        (PREROUTING, OUTPUT), which run before conntrack (NF_IP_PRI_RAW): the packet has
        no entry yet (ct state is invalid there).  A ``notrack`` rule marks the packet and
        the chain goes on; accept ends the chain, drop the packet.  No jumps (nft.py
        refuses them there)."""
        notrack = False
        for _prio, tkey, base in self.hooks.get(("raw", hook), ()):
            for rule, preds, _kind, count in self._compiled[tkey][base]:
                if all(pred(pkt, None, iif, oif) for pred in preds):
                    count[0] += 1
                    count[1] += pkt.tot_len
                    notrack = notrack or rule.notrack
                    if rule.target == "DROP":
                        return True, notrack
                    if rule.target == "ACCEPT":
                        break
            else:
                if self.policies[tkey][base] == "DROP":
                    return True, notrack
        return False, notrack

    def take_helper(self, pkt) -> str:
        """The helper an nft ``ct helper set`` gave ``pkt`` in the chains just walked ("")
        (nft_ct_helper_obj_eval(): the first one counts)."""
        pending, self._helper_pending = self._helper_pending, None
        return pending[1] if pending is not None and pending[0] is pkt else ""

    def raw_helper(self, hook: str, pkt, iif: str | None, oif: str | None) -> str:
        """The helper the raw chains on ``hook`` give a new entry of ``pkt`` ("" for none):
        the first matching ``-j CT --helper`` (xt_ct_target() leaves a packet that already
        has a template alone), walked as raw() walks."""
        for _prio, tkey, base in self.hooks.get(("raw", hook), ()):
            for rule, preds, _kind, _count in self._compiled[tkey][base]:
                if all(pred(pkt, None, iif, oif) for pred in preds):
                    if rule.helper or rule.notrack:
                        return rule.helper
                    if rule.target in ("ACCEPT", "DROP"):
                        break
        return ""

    def verdict(self, chain: str, pkt, ctinfo: int | None, iif: str | None,
                oif: str | None) -> str:
        """"ACCEPT", "DROP" or "REJECT" for ``pkt`` in filter ``chain`` (INPUT, FORWARD,
        OUTPUT): decide() without the rule."""
        return self.decide(chain, pkt, ctinfo, iif, oif)[0]

    def decide(self, chain: str, pkt, ctinfo: int | None, iif: str | None,
               oif: str | None) -> tuple[str, Rule | None]:
        """The verdict for ``pkt`` in filter ``chain`` and the rule that gave it (None
        when a policy did).

        The chain's policy applies when no rule decides; without a filter
        table everything is accepted.  An nft rule set runs every filter base
        chain on the hook, in priority order: accept ends one chain, a drop or
        reject (rule or policy) ends the packet.
        """
        if self.bases:
            for _prio, tkey, base in self.hooks.get(("filter", chain), ()):
                rule = self._walk(tkey, base, pkt, ctinfo, iif, oif)
                decided = rule.target if rule is not None else self.policies[tkey][base]
                if decided != "ACCEPT":
                    return decided, rule
            return "ACCEPT", None
        policies = self.policies.get("filter")
        if policies is None:
            return "ACCEPT", None
        if chain not in policies:
            raise KeyError(f"the filter table has no built-in chain {chain!r}")
        rule = self.first_match("filter", chain, pkt, ctinfo, iif, oif)
        return (rule.target, rule) if rule is not None else (policies[chain], None)

    # --- output ----------------------------------------------------------------------------

    def to_iptables_restore(self, canonical: bool = False) -> str:
        """Text for ``iptables-restore``: each table, its chains, rules and COMMIT.

        Rules are written as they appeared in the file (``Rule.text``, without
        counters), so what the kernel loads is exactly what was parsed here;
        ``canonical=True`` writes them as iptables-save would instead.  An nft
        rule set is translated first (nft.to_iptables(), an error where
        iptables has no equivalent).
        """
        if self.bases:
            from .nft import to_iptables
            return to_iptables(self).to_iptables_restore(canonical=True)
        out: list[str] = []
        for table, chains in self.tables.items():
            out.append(f"*{table}")
            for chain in chains:
                policy = self.policies[table].get(chain, "-")
                out.append(f":{chain} {policy} [0:0]")
            for rules in chains.values():
                out.extend(str(r) if canonical or not r.text else r.text for r in rules)
            out.append("COMMIT")
        return "\n".join(out) + "\n" if out else ""

    def rules(self) -> Iterable[Rule]:
        for chains in self.tables.values():
            for rules in chains.values():
                yield from rules

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ruleset):
            return NotImplemented
        return (self.tables == other.tables and self.policies == other.policies
                and self.bases == other.bases and self.sets == other.sets)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = sum(1 for _ in self.rules())
        return f"<Ruleset {self.filename} tables={list(self.tables)} rules={n}>"


# The (type, chain) pairs the engine asks for: nat/core.py and stack.py.
_HOOK_KINDS = {("nat", c) for c in BUILTIN_CHAINS["nat"]} | {
    ("filter", c) for c in BUILTIN_CHAINS["filter"]}


def is_nft(text: str) -> bool:
    """Is this rules text nft syntax?  Its first line that is not blank or a
    comment starts with ``table``, ``flush ruleset``, ``add`` or ``define``,
    or the file starts with an nft ``#!`` line; iptables-save text starts
    with ``*TABLE``."""
    if text.startswith("#!") and "nft" in text.split("\n", 1)[0]:
        return True
    for line in text.split("\n"):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        return words[0] in ("table", "add", "define") or words[:2] == ["flush", "ruleset"]
    return False


def _kind(rule: Rule, chains: dict) -> int:
    if rule.target == "RETURN":
        return _RETURN
    if not rule.target:
        return _NONE
    if rule.target in chains and rule.target not in _ALL_TARGETS:
        return _JUMP
    return _FINAL


# --- helpers ----------------------------------------------------------------------------------


def _range_str(lo: int, hi: int, sep: str) -> str:
    return str(lo) if lo == hi else f"{lo}{sep}{hi}"


def _save_string(value: str) -> str:
    """xtables_save_string(): bare if only [A-Za-z0-9_-], else double-quoted."""
    if value and re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return value
    return '"' + re.sub(r"([\"\\'])", r"\\\1", value) + '"'


_etc_protocols: dict[int, str] | None = None


def _proto_name(num: int) -> str:
    """Like iptables-save: the /etc/protocols name (getprotobynumber), else the number."""
    global _etc_protocols
    if _etc_protocols is None:
        _etc_protocols = {}
        try:
            with open("/etc/protocols", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split("#", 1)[0].split()
                    if len(parts) >= 2 and parts[1].isdigit():
                        _etc_protocols.setdefault(int(parts[1]), parts[0])
        except OSError:
            pass
    return _etc_protocols.get(num) or _PROTO_NAMES.get(num) or str(num)


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
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
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
                hooks = _NAT_HOOKS.get(rule.target)
                bad = sorted(reach[chain] - set(hooks)) if hooks else []
                if bad:
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
        self.f: dict = {}                    # src, dst, iif, oif, proto, proto_invert
        self.modules: list[_ModuleState] = []
        self.target: str | None = None
        self.target_opts: dict[str, object] = {}
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
        proto_mod = _PROTO_MODULE.get(self.f.get("proto"))
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
        proto_mod = _PROTO_MODULE.get(self.f.get("proto"))
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
            if name in _NAT_HOOKS:
                raise self.error(f"{name} is only valid in the nat table", name)
            users = [c for c in t.chains if c not in BUILTIN_CHAINS[t.name]]
            raise self.error(f"unsupported target {name!r} (nattrack supports in table "
                             f"{t.name}: {', '.join(_TARGETS[t.name])}, or a user chain declared "
                             f"above{': ' + ', '.join(users) if users else ''})", name)
        hooks = _NAT_HOOKS.get(name)
        if hooks and self.chain in BUILTIN_CHAINS["nat"] and self.chain not in hooks:
            raise self.error(f"{name} is only valid in nat {', '.join(hooks)}, not in "
                             f"{self.chain}", name)
        return name

    def parse_addr(self, arg: str, invert: bool) -> AddrMatch | None:
        if "," in arg:
            raise self.error(f"address list {arg!r}: iptables expands it into several rules; "
                             "nattrack wants one address per rule", arg)
        addr, slash, mask_s = arg.partition("/")
        ip = _parse_ip(addr)
        if ip is None:
            raise self.error(f"malformed address {arg!r} (expected a dotted quad "
                             "A.B.C.D[/LEN|/MASK]; host names are not resolved)", arg)
        if not slash:
            mask = 0xFFFFFFFF
        elif mask_s.isdigit() and len(mask_s) <= 2 and int(mask_s) <= 32:
            mask = (0xFFFFFFFF << (32 - int(mask_s))) & 0xFFFFFFFF
        else:
            m = _parse_ip(mask_s)
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
        proto = self.f.get("proto")
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
                lo = _parse_ip(lo_s)
                hi = _parse_ip(hi_s) if dash else lo
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
        if self.target not in _NAT_HOOKS:
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


def _parse_ip(s: str) -> int | None:
    """A strict dotted quad (no leading zeros, no short forms) as an int, or None."""
    if not _IPV4.fullmatch(s):
        return None
    a, b, c, d = (int(x) for x in s.split("."))
    return a << 24 | b << 16 | c << 8 | d
