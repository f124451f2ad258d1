"""nft syntax for the rules model: the parser and the writer back to nft.

An ``nft -f`` file (or ``nft list ruleset`` output, or the ``add table/chain/
rule`` commands iptables-restore-translate prints) is read into the SAME
Ruleset the iptables parser builds (iptables.py): tables of chains of Rules.  An
nft table is keyed ``"FAMILY NAME"`` (``"ip nat"``, ``"inet filter"``);
``Ruleset.bases`` says which chains are base chains (type, hook, priority),
and the engine runs every base chain of a hook in priority order, as
nf_hook_slow() does over a hook's entries.

Supported (families ip and inet, IPv4 traffic)::

    flush ruleset
    table FAMILY NAME { chain ... set ... }        add table|chain|rule ...
    chain NAME { type nat|filter hook HOOK priority P; policy accept|drop; RULES }
        P: a number or raw, mangle, dstnat, filter, security, srcnat [+|- N]
        (a filter chain at raw priority, before conntrack: prerouting or output)
    set NAME { type ipv4_addr|inet_service|inet_proto; [flags interval;] elements = { ... } }

    iifname|oifname|iif|oif [!=] "NAME"   ("eth*" is a prefix)
    ip saddr|daddr [!=] ADDR[/LEN] | A-B | { ... } | @set
    ip protocol | meta l4proto [!=] NAME|NUMBER|{ ... }
    tcp|udp sport|dport [!=] PORT | P-Q | { ... } | @set
    tcp flags F[,F] | tcp flags & (F|F) ==|!= F | tcp flags F / F,F
    icmp type [!=] NAME|NUMBER|{ ... } [icmp code N]
    ct state [!=] LIST   ct status [!=] expected|seen-reply|assured|confirmed|snat|dnat
    ct direction [!=] original|reply     meta nfproto ipv4 (inet)
    counter [packets N bytes M]   log [prefix "TEXT"]   comment "TEXT"
    accept | drop | return | jump CHAIN | goto CHAIN
    reject [with icmp|icmpx [type] NAME | with tcp reset]    notrack (raw priority)
    ct helper NAME { type "ftp" protocol tcp; [l3proto ip;] }  (an object in the table)
    ct helper set "NAME"     (a filter chain after conntrack: input, forward, output)
    masquerade [to :P[-Q]] [random|fully-random|persistent[,...]]
    snat|dnat [ip] to [ADDR[-ADDR]][:PORT[-PORT]] [random|fully-random|persistent[,...]]

Refused with the line and the token (the engine does not model them):
filter chains on postrouting (or prerouting above raw priority), jumps and reject in
raw-priority chains, other families, maps, verdict maps, ``define`` (docs/nftables.md).
"""
from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..conntrack.conn import (IPS_ASSURED, IPS_CONFIRMED, IPS_DST_NAT, IPS_DYING,
                              IPS_EXPECTED, IPS_SEEN_REPLY, IPS_SRC_NAT, IP_CT_IS_REPLY)
from ..conntrack.tuple import int2ip
from ..conntrack.uapi import NF_IP_PRI_CONNTRACK
from ..nat.range import (NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM,
                         NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)
from ..packet.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from .ruleset import Ruleset
from .xtables import (BUILTIN_CHAINS, CT_HELPERS, ICMP_ANY, NAT_HOOKS, STATE_BITS, AddrMatch,
                      CommentMatch, IcmpMatch, IfaceMatch, PortRange, Rule, RulesError, StateMatch,
                      TcpUdpMatch, parse_ip, proto_name)

__all__ = ["parse_nft", "write_nft", "to_iptables", "from_iptables", "NamedSet", "SetMatch",
           "TcpFlagsMatch", "CtStatusMatch", "CtDirectionMatch", "PRIORITY_NAMES"]

PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
                  "srcnat": 100}
_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
_CHAIN_HOOKS = {"nat": ("prerouting", "input", "output", "postrouting"),
                "filter": ("input", "forward", "output")}
# iptables' nat chains' priorities (NF_IP_PRI_NAT_DST / _SRC) and filter's.
_IPT_PRIORITY = {("nat", "PREROUTING"): -100, ("nat", "OUTPUT"): -100,
                 ("nat", "INPUT"): 100, ("nat", "POSTROUTING"): 100,
                 ("raw", "PREROUTING"): -300, ("raw", "OUTPUT"): -300}
_TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20,
              "ecn": 0x40, "cwr": 0x80}
_CT_STATUS = {"expected": IPS_EXPECTED, "seen-reply": IPS_SEEN_REPLY, "assured": IPS_ASSURED,
              "confirmed": IPS_CONFIRMED, "snat": IPS_SRC_NAT, "dnat": IPS_DST_NAT,
              "dying": IPS_DYING}
# nft's icmp_type symbols (src/proto.c icmp_type_tbl).
_ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4,
               "redirect": 5, "echo-request": 8, "router-advertisement": 9,
               "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
               "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
               "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18}
_ICMP_TYPE_NAMES = {v: k for k, v in _ICMP_TYPES.items()}
_L4_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "gre": 47, "esp": 50, "ah": 51, "sctp": 132,
             "udplite": 136, "dccp": 33, "icmpv6": 58}
_NAT_FLAGS = {"random": NF_NAT_RANGE_PROTO_RANDOM, "fully-random": NF_NAT_RANGE_PROTO_RANDOM_FULLY,
              "persistent": NF_NAT_RANGE_PERSISTENT}
_SET_TYPES = {"ipv4_addr": ("ip saddr", "ip daddr"),
              "inet_service": ("tcp sport", "tcp dport", "udp sport", "udp dport"),
              "inet_proto": ("meta l4proto",), "icmp_type": ("icmp type",)}
# `typeof EXPR` -> the set type it names.
_SET_TYPEOF = {key: stype for stype, keys in _SET_TYPES.items() for key in keys} | {
    "ip protocol": "inet_proto"}
_KEY_ORDER = ("ip saddr", "ip daddr", "meta l4proto", "tcp sport", "tcp dport", "udp sport",
              "udp dport", "icmp type")


# --- the nft-only matches (xtables.py compiles them through .predicate()) ------------------


@dataclass(frozen=True)
class NamedSet:
    """A named set: ``set NAME { type ...; flags ...; elements = { ... } }``."""
    type: str
    elements: tuple          # ((lo, hi), ...) ints
    interval: bool = False


@dataclass(frozen=True)
class SetMatch:
    """``KEY [!=] { ... }`` or ``KEY [!=] @name`` or a lone range ``A-B``:
    the value lies in one of the (lo, hi) elements (nft_lookup / nft_range)."""
    key: str                 # one of _KEY_ORDER
    elements: tuple
    invert: bool = False
    name: str | None = None  # the named set, None for an anonymous one

    def predicate(self):
        els, inv = self.elements, self.invert
        get = _GETTERS[self.key]
        l4 = self.key.split()[0] in ("tcp", "udp", "icmp")

        def pred(p, c, i, o):
            if l4 and (not p.l4ok or p.frag):
                return False
            v = get(p)
            return any(lo <= v <= hi for lo, hi in els) != inv
        return pred

    def iptables(self) -> str:
        raise ValueError(f"'{self.key} {_set_text(self)}' has no one-rule iptables form "
                         "nattrack reads (iptables would need one rule per element)")


@dataclass(frozen=True)
class TcpFlagsMatch:
    """``tcp flags``: ``(flags & mask) == value`` (or ``!=``); ``any`` = ``(flags & mask) != 0``."""
    mask: int
    value: int
    any: bool = False
    invert: bool = False

    def predicate(self):
        mask, value, anyf, inv = self.mask, self.value, self.any, self.invert
        if anyf:
            return lambda p, c, i, o: p.l4ok and not p.frag and bool(p.tcpflags & mask) != inv
        return lambda p, c, i, o: p.l4ok and not p.frag and ((p.tcpflags & mask) == value) != inv

    def iptables(self) -> str:
        if self.any:
            raise ValueError(f"'tcp flags {_flags_text(self.mask)}' (any of) has no iptables "
                             "form nattrack reads")
        return (f"{'! ' if self.invert else ''}--tcp-flags {_flags_text(self.mask).upper()} "
                f"{(_flags_text(self.value) or 'NONE').upper()}")


@dataclass(frozen=True)
class CtStatusMatch:
    """``ct status``: a mask of IPS_* bits; no match without a connection."""
    mask: int
    invert: bool = False

    def predicate(self):
        mask, inv = self.mask, self.invert
        return lambda p, c, i, o: p.ct is not None and bool(p.ct.status & mask) != inv

    def iptables(self) -> str:
        names = ",".join(n.upper().replace("-", "_") for n, b in _CT_STATUS.items()
                         if self.mask & b)
        return f"-m conntrack {'! ' if self.invert else ''}--ctstatus {names}"


@dataclass(frozen=True)
class CtDirectionMatch:
    """``ct direction original|reply``; no match without a connection."""
    reply: bool
    invert: bool = False

    def predicate(self):
        want = self.reply != self.invert
        return lambda p, c, i, o: p.ct is not None and (c is not None and c >= IP_CT_IS_REPLY) == want

    def iptables(self) -> str:
        reply = self.reply != self.invert
        return f"-m conntrack --ctdir {'REPLY' if reply else 'ORIGINAL'}"


_GETTERS = {"ip saddr": lambda p: p.src, "ip daddr": lambda p: p.dst,
            "meta l4proto": lambda p: p.proto,
            "tcp sport": lambda p: p.sport, "tcp dport": lambda p: p.dport,
            "udp sport": lambda p: p.sport, "udp dport": lambda p: p.dport,
            "icmp type": lambda p: p.itype}
_EXTRA_ORDER = (SetMatch, TcpFlagsMatch, CtStatusMatch, CtDirectionMatch)


# --- tokens --------------------------------------------------------------------------------

_TOKEN = re.compile(r"""(?P<nl>\n)|(?P<ws>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<str>"[^"\n]*")
    |(?P<op>!=|==|[{};,()|&=])|(?P<word>[^\s{};,()|&"#=!]+)|(?P<bad>.)""", re.X)


@dataclass
class _Tok:
    kind: str        # word, str, op, nl (a newline or ';'), eof
    value: str
    line: int


def _tokenize(text: str, filename: str) -> list[_Tok]:
    toks, line = [], 1
    for m in _TOKEN.finditer(text):
        kind, value = m.lastgroup, m.group()
        if kind == "bad":
            raise RulesError(filename, line, f"unexpected character {value!r}", value)
        if kind == "nl":
            toks.append(_Tok("nl", value, line))
            line += 1
        elif kind == "op" and value == ";":
            toks.append(_Tok("nl", value, line))
        elif kind == "str":
            toks.append(_Tok("str", value[1:-1], line))
        elif kind in ("op", "word"):
            toks.append(_Tok(kind, value, line))
    toks.append(_Tok("eof", "end of file", line))
    return toks


# --- the parser ----------------------------------------------------------------------------


class _Table:
    def __init__(self, family: str, name: str) -> None:
        self.family, self.name, self.key = family, name, f"{family} {name}"
        self.chains: dict[str, list] = {}       # name -> [(tokens, line, text)]
        self.bases: dict[str, tuple[str, str, int]] = {}
        self.policies: dict[str, str] = {}
        self.sets: dict[str, NamedSet] = {}
        self.ct_helpers: dict[str, str] = {}     # ct helper object name -> helper type


class _Tokens:
    """A cursor over tokens, for the file's parser and each rule's builder alike."""
    filename: str
    toks: list[_Tok]
    i: int

    def error(self, message: str, tok: _Tok | None = None) -> RulesError:
        tok = tok or self.peek()
        return RulesError(self.filename, tok.line, message, tok.value)

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def word(self, what: str) -> _Tok:
        tok = self.next()
        if tok.kind not in ("word", "str"):
            raise self.error(f"expected {what}, got {tok.value!r}", tok)
        return tok


class _Parser(_Tokens):
    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines = text.split("\n")
        self.toks = _tokenize(text, filename)
        self.i = 0
        self.tables: dict[str, _Table] = {}


    def expect(self, value: str) -> _Tok:
        tok = self.next()
        if tok.value != value:
            raise self.error(f"expected {value!r}, got {tok.value!r}", tok)
        return tok

    def skip_nl(self) -> None:
        while self.peek().kind == "nl":
            self.i += 1

    def end_statement(self) -> None:
        tok = self.peek()
        if tok.kind == "nl":
            self.i += 1
        elif tok.value != "}" and tok.kind != "eof":
            raise self.error(f"unexpected {tok.value!r} (expected the end of the line)", tok)

    # --- structure ---
    def parse(self) -> Ruleset:
        while True:
            self.skip_nl()
            tok = self.next()
            if tok.kind == "eof":
                break
            if tok.value == "flush":
                self.expect("ruleset")
            elif tok.value == "table":
                t = self.table_header()
                if self.peek().value == "{":
                    self.table_body(t)
            elif tok.value == "add":
                self.add_command()
            else:
                raise self.error(f"unsupported command {tok.value!r} (nattrack reads: table, "
                                 "flush ruleset, add table|chain|rule)", tok)
            self.end_statement()
        return self.build()

    def table_header(self) -> _Table:
        fam = self.word("a family")
        if fam.value not in ("ip", "inet"):
            raise self.error(f"unsupported family {fam.value!r} (nattrack supports: ip, inet)", fam)
        name = self.word("a table name")
        key = f"{fam.value} {name.value}"
        return self.tables.setdefault(key, _Table(fam.value, name.value))

    def table_body(self, t: _Table) -> None:
        for tok in self.block_items(f"table {t.key}"):
            if tok.value == "chain":
                name = self.chain_name(t)
                self.expect("{")
                self.chain_body(t, name)
            elif tok.value == "set":
                self.set_def(t)
            elif tok.value == "ct":
                self.ct_helper_def(t)
            else:
                raise self.error(f"unsupported {tok.value!r} in a table (nattrack supports: "
                                 "chain, set, ct helper)", tok)
            self.end_statement()

    def chain_name(self, t: _Table) -> str:
        tok = self.word("a chain name")
        if tok.value in ("ACCEPT", "DROP", "RETURN", "SNAT", "DNAT", "MASQUERADE", "REJECT"):
            raise self.error(f"chain name {tok.value!r} clashes with an iptables target", tok)
        t.chains.setdefault(tok.value, [])
        return tok.value

    def chain_body(self, t: _Table, chain: str) -> None:
        while True:
            self.skip_nl()
            tok = self.peek()
            if tok.value == "}":
                self.next()
                return
            if tok.kind == "eof":
                raise self.error(f"'}}' expected: chain {chain} is not closed", tok)
            if tok.value in ("type", "policy"):
                self.chain_spec(t, chain)
            else:
                self.rule_tokens(t, chain)

    def chain_spec(self, t: _Table, chain: str) -> None:
        """``type T hook H priority P;`` and/or ``policy P;`` (nft_chain_validate)."""
        while self.peek().value in ("type", "policy"):
            tok = self.next()
            if tok.value == "type":
                kind = self.word("a chain type")
                if kind.value not in _CHAIN_HOOKS:
                    raise self.error(f"unsupported chain type {kind.value!r} (nattrack supports: "
                                     "nat, filter)", kind)
                self.expect("hook")
                hook = self.word("a hook")
                if hook.value not in _HOOKS:
                    raise self.error(f"unknown hook {hook.value!r} ({', '.join(_HOOKS)})", hook)
                raw_hook = kind.value == "filter" and hook.value == "prerouting"
                if hook.value not in _CHAIN_HOOKS[kind.value] and not raw_hook:
                    why = ("nat chains cannot sit on forward" if kind.value == "nat" else
                           "the engine filters on input, forward and output only")
                    raise self.error(f"{kind.value} chain on hook {hook.value}: {why}", hook)
                self.expect("priority")
                prio = self.priority()
                if prio <= NF_IP_PRI_CONNTRACK and (
                        kind.value != "filter" or hook.value not in ("prerouting", "output")):
                    raise self.error(f"priority {prio} runs before conntrack (-200): nattrack "
                                     "models filter chains there (raw) on prerouting and output "
                                     "only", tok)
                if raw_hook and prio > NF_IP_PRI_CONNTRACK:
                    raise self.error("filter chain on hook prerouting: the engine filters there "
                                     "only before conntrack (priority raw)", hook)
                t.bases[chain] = (kind.value, hook.value.upper(), prio)
                t.policies.setdefault(chain, "ACCEPT")
            else:
                pol = self.word("accept or drop")
                if pol.value not in ("accept", "drop"):
                    raise self.error(f"unknown policy {pol.value!r} (accept or drop)", pol)
                if chain not in t.bases:
                    raise self.error("a policy needs a base chain: give 'type ... hook ... "
                                     "priority ...;' first", pol)
                if pol.value == "drop" and t.bases[chain][0] == "nat":
                    raise self.error("policy drop in a nat chain: filter in a filter chain", pol)
                t.policies[chain] = pol.value.upper()
            self.end_statement()
            self.skip_nl()

    def priority(self) -> int:
        tok = self.word("a priority")
        v = tok.value
        if re.fullmatch(r"-?\d+", v):
            return int(v)
        if v not in PRIORITY_NAMES:
            raise self.error(f"unknown priority {v!r} (a number or "
                             f"{', '.join(PRIORITY_NAMES)})", tok)
        prio = PRIORITY_NAMES[v]
        nxt = self.peek()
        if nxt.kind == "word" and re.fullmatch(r"[+-]\d*", nxt.value):
            self.next()
            sign, digits = nxt.value[0], nxt.value[1:]
            if not digits:
                digits = self.word("a number").value
            if not digits.isdigit():
                raise self.error(f"bad priority offset {digits!r}", nxt)
            prio += int(digits) if sign == "+" else -int(digits)
        return prio

    def block_items(self, what: str):
        """``{ ... }``: yield the token that starts each item, up to the closing brace."""
        self.expect("{")
        while True:
            self.skip_nl()
            tok = self.next()
            if tok.value == "}":
                return
            if tok.kind == "eof":
                raise self.error(f"'}}' expected: {what} is not closed", tok)
            yield tok

    def ct_helper_def(self, t: _Table) -> None:
        """``ct helper NAME { type "ftp" protocol tcp; l3proto ip; }`` (nft_ct_helper_obj_init())."""
        if self.word("'helper'").value != "helper":
            raise self.error("only 'ct helper' objects are supported in a table", self.toks[self.i - 1])
        name = self.word("a ct helper name")
        htype = None
        for tok in self.block_items(f"ct helper {name.value}"):
            if tok.value == "type":
                ht = self.word("a helper type")
                if ht.value not in CT_HELPERS:
                    raise self.error(f"ct helper type {ht.value!r}: nattrack models only "
                                     + ", ".join(CT_HELPERS), ht)
                if self.word("'protocol'").value != "protocol" or self.word("tcp").value != "tcp":
                    raise self.error(f"ct helper {name.value}: the {ht.value} helper needs "
                                     "'protocol tcp'", ht)
                htype = ht.value
            elif tok.value == "l3proto":
                l3 = self.word("ip or inet")
                if l3.value not in ("ip", "inet"):
                    raise self.error(f"l3proto {l3.value!r}: nattrack models IPv4 (ip, inet)", l3)
            else:
                raise self.error(f"unsupported {tok.value!r} in a ct helper (type, l3proto)", tok)
        if htype is None:
            raise self.error(f"ct helper {name.value} has no 'type'", name)
        t.ct_helpers[name.value] = htype

    def set_def(self, t: _Table) -> None:
        name = self.word("a set name")
        stype, interval, elements = None, False, None
        for tok in self.block_items(f"set {name.value}"):
            if tok.value == "type":
                st = self.word("a set type")
                if st.value not in _SET_TYPES:
                    raise self.error(f"unsupported set type {st.value!r} (nattrack supports: "
                                     f"{', '.join(_SET_TYPES)})", st)
                stype = st.value
            elif tok.value == "flags":
                while True:
                    fl = self.word("a set flag")
                    if fl.value == "interval":
                        interval = True
                    elif fl.value != "constant":
                        raise self.error(f"unsupported set flag {fl.value!r} (interval, "
                                         "constant)", fl)
                    if self.peek().value != ",":
                        break
                    self.next()
            elif tok.value == "typeof":
                # `typeof EXPR`: the type of that expression (nft 0.9.4+; what nft list
                # ruleset prints back for a set declared with typeof).
                words = [self.word("an expression").value]
                while self.peek().kind == "word" and " ".join(words) not in _SET_TYPEOF:
                    words.append(self.next().value)
                expr = " ".join(words)
                if expr not in _SET_TYPEOF:
                    raise self.error(f"unsupported 'typeof {expr}' (nattrack supports: "
                                     f"{', '.join(_SET_TYPEOF)})", tok)
                stype = _SET_TYPEOF[expr]
            elif tok.value == "auto-merge":
                pass                            # merges adjacent intervals: the same set
            elif tok.value == "elements":
                self.expect("=")
                self.expect("{")
                elements = self.set_elements(tok)
            else:
                raise self.error(f"unsupported {tok.value!r} in a set (type, typeof, flags, "
                                 "auto-merge, elements)", tok)
            self.end_statement()
        if stype is None:
            raise self.error(f"set {name.value} has no type", name)
        key = _SET_TYPES[stype][0]
        els = tuple(self.element(e, key) for e in (elements or ()))
        for lo, hi in els:
            if lo != hi and not interval:
                raise self.error(f"set {name.value}: a range needs 'flags interval'", name)
        t.sets[name.value] = NamedSet(stype, tuple(sorted(set(els))), interval)

    def set_elements(self, opener: _Tok) -> list[_Tok]:
        """The tokens of ``{ a, b, ... }`` after the ``{``."""
        out: list[_Tok] = []
        while True:
            self.skip_nl()
            tok = self.next()
            if tok.value == "}":
                return out
            if tok.kind == "eof":
                raise self.error("'{' not closed", opener)
            if tok.kind not in ("word", "str"):
                raise self.error(f"unexpected {tok.value!r} in a set", tok)
            out.append(tok)
            self.skip_nl()
            if self.peek().value == ",":
                self.next()

    def add_command(self) -> None:
        what = self.word("table, chain or rule")
        if what.value == "table":
            self.table_header()
            return
        if what.value not in ("chain", "rule"):
            raise self.error(f"unsupported 'add {what.value}' (nattrack reads: add table, "
                             "add chain, add rule)", what)
        fam, name = self.peek(), self.toks[self.i + 1]
        if f"{fam.value} {name.value}" not in self.tables:
            raise self.error(f"no table {fam.value} {name.value} (add it first)", name)
        t = self.table_header()
        if what.value == "chain":
            chain = self.chain_name(t)
            if self.peek().value == "{":
                self.next()
                self.chain_body(t, chain)
            return
        tok = self.word("a chain name")
        if tok.value not in t.chains:
            raise self.error(f"no chain {tok.value!r} in table {t.key}", tok)
        self.rule_tokens(t, tok.value)

    def rule_tokens(self, t: _Table, chain: str) -> None:
        """Collect one rule's tokens; rules are built once every chain and set is known."""
        first = self.peek()
        toks = []
        depth = 0
        while True:
            tok = self.peek()
            if tok.kind == "eof" or (depth == 0 and (tok.kind == "nl" or tok.value == "}")):
                break
            if tok.kind == "nl":          # a newline inside { } elements
                self.next()
                continue
            depth += {"{": 1, "}": -1}.get(tok.value, 0) if tok.kind == "op" else 0
            toks.append(self.next())
        text = re.sub(r" (?=[,)])|(?<=\() ", "", " ".join(_tok_text(x) for x in toks))
        t.chains[chain].append((toks, first.line, text))

    # --- second pass: the rules ---
    def build(self) -> Ruleset:
        tables, policies, bases, sets = {}, {}, {}, {}
        for key, t in self.tables.items():
            if not t.chains and not t.sets:
                continue
            chains = {}
            for chain, raw in t.chains.items():
                chains[chain] = [_RuleBuilder(self, t, chain, toks, line, text).build()
                                 for toks, line, text in raw]
            tables[key], policies[key], bases[key] = chains, dict(t.policies), dict(t.bases)
            if t.sets:
                sets[key] = dict(t.sets)
            self.check_table(t, chains)
        return Ruleset(tables, policies, self.filename, bases, sets)

    def check_table(self, t: _Table, chains: dict[str, list[Rule]]) -> None:
        """Jump loops and NAT statements outside their hooks (nft_chain_validate())."""
        def walk(chain: str, kind: str, hook: str, path: list[str]) -> None:
            for rule in chains[chain]:
                hooks = NAT_HOOKS.get(rule.target)
                if hooks and (kind != "nat" or hook not in hooks):
                    where = f"a {kind} chain on {hook.lower()}"
                    raise RulesError(self.filename, rule.line,
                                     f"{rule.target.lower()} in {where}: it is only valid in "
                                     f"nat chains on {', '.join(h.lower() for h in hooks)}",
                                     rule.target.lower())
                if rule.target in ("DROP", "REJECT") and kind == "nat":
                    word = rule.target.lower()
                    raise RulesError(self.filename, rule.line, f"{word} in a nat chain: the "
                                     "engine's NAT hook does not filter (use a filter chain)",
                                     word)
                if rule.target in chains and rule.target not in ("ACCEPT", "DROP", "RETURN",
                                                                 "REJECT"):
                    if rule.target in path:
                        loop = " -> ".join(path[path.index(rule.target):] + [rule.target])
                        raise RulesError(self.filename, rule.line, f"jump loop {loop} (the "
                                         "kernel refuses it)", rule.target)
                    walk(rule.target, kind, hook, path + [rule.target])

        for chain, (kind, hook, prio) in t.bases.items():
            if prio <= NF_IP_PRI_CONNTRACK:
                for rule in chains[chain]:     # Ruleset.raw() walks one chain, no jumps
                    if rule.target not in ("", "ACCEPT", "DROP"):
                        word = "jump" if rule.target not in ("RETURN", "REJECT") else \
                            rule.target.lower()
                        raise RulesError(self.filename, rule.line, f"{word} in a raw-priority "
                                         "chain: nattrack runs those as one chain of "
                                         "accept, drop and notrack", word)
                continue
            walk(chain, kind, hook, [chain])

    def resolve_set(self, t: _Table, tok: _Tok, key: str) -> tuple[tuple, str]:
        name = tok.value[1:]
        s = t.sets.get(name)
        if s is None:
            raise self.error(f"no set {name!r} in table {t.key}", tok)
        if key not in _SET_TYPES[s.type]:
            raise self.error(f"set {name} holds {s.type}, not values for '{key}'", tok)
        return s.elements, name

    def element(self, tok: _Tok, key: str) -> tuple[int, int]:
        """One element or range of a set, or the value of a comparison, as (lo, hi)."""
        v = tok.value
        if key in ("ip saddr", "ip daddr"):
            if "/" in v:
                addr, _, plen = v.partition("/")
                ip = parse_ip(addr)
                if ip is None or not plen.isdigit() or int(plen) > 32:
                    raise self.error(f"malformed prefix {v!r} (A.B.C.D/LEN)", tok)
                mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
                if ip & mask != ip:
                    raise self.error(f"prefix {v!r} has host bits set", tok)
                return ip, ip | (~mask & 0xFFFFFFFF)
            lo_s, dash, hi_s = v.partition("-")
            lo, hi = parse_ip(lo_s), (parse_ip(hi_s) if dash else parse_ip(lo_s))
            if lo is None or hi is None:
                raise self.error(f"malformed address {v!r} (A.B.C.D, A.B.C.D/LEN or A-B; host "
                                 "names are not resolved)", tok)
        elif key == "meta l4proto":
            lo = hi = self.proto_number(tok)
        elif key == "icmp type":
            lo = hi = self.icmp_type(tok)
        else:
            proto = key.split()[0]
            lo_s, dash, hi_s = v.partition("-")
            lo = self.port(lo_s, proto, tok)
            hi = self.port(hi_s, proto, tok) if dash else lo
        if lo > hi:
            raise self.error(f"empty range {v!r} (first above last)", tok)
        return lo, hi

    def port(self, s: str, proto: str, tok: _Tok) -> int:
        if s.isdigit() and int(s) <= 65535:
            return int(s)
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", s or "-"):
            try:
                return socket.getservbyname(s, proto)
            except OSError:
                pass
        raise self.error(f"invalid port {s!r} in {tok.value!r}", tok)

    def proto_number(self, tok: _Tok) -> int:
        v = tok.value.lower()
        if v.isdigit() and int(v) <= 255:
            return int(v)
        if v in _L4_NAMES:
            return _L4_NAMES[v]
        raise self.error(f"unknown protocol {tok.value!r} (tcp, udp, icmp, ... or a number)",
                         tok)

    def icmp_type(self, tok: _Tok) -> int:
        v = tok.value.lower()
        if v.isdigit() and int(v) <= 255:
            return int(v)
        if v in _ICMP_TYPES:
            return _ICMP_TYPES[v]
        raise self.error(f"unknown ICMP type {tok.value!r} (a number or a name such as "
                         "echo-request)", tok)


def _tok_text(tok: _Tok) -> str:
    return f'"{tok.value}"' if tok.kind == "str" else tok.value


class _RuleBuilder(_Tokens):
    """Turns one rule's tokens into a Rule, in the model's canonical order."""

    def __init__(self, p: _Parser, t: _Table, chain: str, toks: list[_Tok], line: int,
                 text: str) -> None:
        self.p, self.t, self.chain, self.line, self.text = p, t, chain, line, text
        self.filename = p.filename
        self.toks = toks + [_Tok("eof", "end of the rule", line)]
        self.i = 0
        self.f: dict = {}
        self.ports: dict[str, PortRange | None] = {}   # "_any": a port match of 0-65535
        self.l4: str | None = None       # "tcp"/"udp"/"icmp" from a header match
        self.icmp: IcmpMatch | None = None
        self.states: list[StateMatch] = []
        self.extras: list = []
        self.comment: str | None = None
        self.counter = False
        self.log: str | None = None
        self.target = ""
        self.goto = False
        self.nat: NatRange | None = None
        self.reject_with = ""
        self.notrack = False
        self.helper = ""

    def negation(self) -> bool:
        if self.peek().value in ("!=", "=="):
            return self.next().value == "!="
        return False

    def once(self, key: str, tok: _Tok) -> None:
        if key in self.f:
            raise self.error(f"'{key}' given twice in one rule", tok)
        self.f[key] = None

    # --- values ---
    def values(self, key: str) -> tuple[tuple, str | None, _Tok]:
        """A value, a range, ``{ ... }`` or ``@set`` for ``key``: ((lo, hi), ...), set name."""
        tok = self.next()
        if tok.value == "{":
            els = []
            while True:
                e = self.next()
                if e.value == "}":
                    break
                if e.kind == "eof":
                    raise self.error("'{' not closed", tok)
                if e.kind not in ("word", "str"):
                    raise self.error(f"unexpected {e.value!r} in a set", e)
                els.append(self.p.element(e, key))
                if self.peek().value == ",":
                    self.next()
            if not els:
                raise self.error("empty set", tok)
            return tuple(sorted(set(els))), None, tok
        if tok.kind == "word" and tok.value.startswith("@"):
            named, name = self.p.resolve_set(self.t, tok, key)
            return named, name, tok
        if tok.kind == "word" and tok.value.startswith("$"):
            raise self.error(f"variables ({tok.value}) are not supported: write the value", tok)
        if tok.kind not in ("word", "str"):
            raise self.error(f"expected a value for '{key}', got {tok.value!r}", tok)
        return (self.p.element(tok, key),), None, tok

    def set_proto(self, num: int, invert: bool, tok: _Tok) -> None:
        if "proto" in self.f and (self.f["proto"], self.f.get("proto_invert")) != (num, invert):
            raise self.error(f"protocol {proto_name(num)} contradicts the rule's "
                             f"{proto_name(self.f['proto'])} match", tok)
        self.f["proto"], self.f["proto_invert"] = num, invert

    # --- the rule ---
    def build(self) -> Rule:
        while self.peek().kind != "eof":
            if self.target and self.peek().value != "comment":
                raise self.error(f"{self.peek().value!r} after the verdict "
                                 f"'{self.target.lower()}': a verdict ends the rule")
            tok = self.next()
            handler = getattr(self, "kw_" + tok.value.replace("-", "_"), None)
            if tok.kind != "word" or handler is None:
                raise self.error(f"unsupported {tok.value!r} (nattrack's nft subset: see "
                                 "docs/nftables.md)", tok)
            handler(tok)
        if not self.text:
            raise self.error("empty rule")
        matches: list = []
        if self.l4 in ("tcp", "udp") and self.ports:
            proto = self.f["proto"]
            matches.append(TcpUdpMatch(proto, self.ports.get("sport"), self.ports.get("dport")))
        if self.icmp is not None:
            matches.append(self.icmp)
        matches += self.states
        matches += sorted(self.extras, key=_extra_key)
        if self.comment is not None:
            matches.append(CommentMatch(self.comment))
        return Rule(self.t.key, self.chain, self.f.get("ip saddr"), self.f.get("ip daddr"),
                    self.f.get("iif"), self.f.get("oif"), self.f.get("proto", 0),
                    self.f.get("proto_invert", False), tuple(matches), self.target, self.nat,
                    self.line, self.text, counter=self.counter, log=self.log, goto=self.goto,
                    reject_with=self.reject_with, notrack=self.notrack, helper=self.helper)

    # interfaces
    def kw_iifname(self, tok: _Tok, out: bool = False) -> None:
        key = "oif" if out else "iif"
        self.once(key, tok)
        inv = self.negation()
        v = self.next()
        if v.value == "{":
            raise self.error("sets of interface names are not supported: one name per rule", v)
        if v.kind not in ("word", "str") or not v.value or len(v.value) >= 16:
            raise self.error(f"interface name {v.value!r} must be 1 to 15 characters", v)
        base = self.t.bases.get(self.chain)
        hook = base[1] if base else None
        if key == "iif" and hook in ("OUTPUT", "POSTROUTING") or \
                key == "oif" and hook in ("PREROUTING", "INPUT"):
            raise self.error(f"{tok.value} in a chain on {hook.lower()}: there is no "
                             f"{'input' if key == 'iif' else 'output'} interface there", tok)
        wildcard = v.value.endswith("*")
        name = v.value[:-1] if wildcard else v.value
        if "*" in name:
            raise self.error(f"malformed interface name {v.value!r} ('*' only at the end)", v)
        self.f[key] = IfaceMatch(name, wildcard, inv)

    kw_iif = kw_iifname

    def kw_oifname(self, tok: _Tok) -> None:
        self.kw_iifname(tok, out=True)

    kw_oif = kw_oifname

    def kw_meta(self, tok: _Tok) -> None:
        what = self.word("a meta key")
        if what.value in ("iifname", "iif"):
            return self.kw_iifname(what)
        if what.value in ("oifname", "oif"):
            return self.kw_oifname(what)
        if what.value == "l4proto":
            return self.l4proto(what)
        if what.value == "nfproto":
            # What `nft list ruleset` shows in inet before `reject with icmp` (the
            # dependency nft adds): every packet nattrack models is IPv4.
            self.once("nfproto", what)
            value = self.word("ipv4")
            if value.value != "ipv4" or self.t.family != "inet":
                raise self.error("only 'meta nfproto ipv4' in an inet table (nattrack models "
                                 "IPv4 traffic)", value)
            return None
        raise self.error(f"unsupported meta key {what.value!r} (l4proto, nfproto, iifname, "
                         "oifname, iif, oif)", what)

    def l4proto(self, tok: _Tok) -> None:
        self.once("l4proto", tok)
        inv = self.negation()
        els, name, vt = self.values("meta l4proto")
        if len(els) == 1 and name is None and els[0][0] == els[0][1]:
            if els[0][0] == 0 and inv:
                raise self.error("'!= 0' would match every packet's protocol", vt)
            self.set_proto(els[0][0], inv, vt)
        else:
            self.extras.append(SetMatch("meta l4proto", els, inv, name))

    def kw_ip(self, tok: _Tok) -> None:
        what = self.word("saddr, daddr or protocol")
        if what.value == "protocol":
            return self.l4proto(what)
        if what.value not in ("saddr", "daddr"):
            raise self.error(f"unsupported 'ip {what.value}' (saddr, daddr, protocol)", what)
        key = f"ip {what.value}"
        self.once(key, what)
        inv = self.negation()
        els, name, vt = self.values(key)
        if len(els) == 1 and name is None:
            lo, hi = els[0]
            size = hi - lo + 1
            if size & (size - 1) == 0 and lo % size == 0:     # a prefix
                mask = (0xFFFFFFFF << (size.bit_length() - 1)) & 0xFFFFFFFF
                if mask == 0:
                    if inv:
                        raise self.error(f"'!= {vt.value}' would never match", vt)
                    return
                self.f[key] = AddrMatch(lo, mask, inv)
                return
        self.extras.append(SetMatch(key, els, inv, name))

    def kw_tcp(self, tok: _Tok) -> None:
        what = self.word("sport, dport or flags")
        if what.value == "flags" and tok.value == "tcp":
            return self.tcp_flags(what)
        if what.value not in ("sport", "dport"):
            raise self.error(f"unsupported '{tok.value} {what.value}' (sport, dport"
                             f"{', flags' if tok.value == 'tcp' else ''})", what)
        self.header(tok)
        key = f"{tok.value} {what.value}"
        self.once(key, what)
        inv = self.negation()
        els, name, vt = self.values(key)
        if len(els) == 1 and name is None:
            lo, hi = els[0]
            if (lo, hi) == (0, 65535):
                if inv:
                    raise self.error(f"'!= {vt.value}' would never match", vt)
                self.ports.setdefault("_any", None)
                return
            self.ports[what.value] = PortRange(lo, hi, inv)
        else:
            self.extras.append(SetMatch(key, els, inv, name))

    kw_udp = kw_tcp

    def header(self, tok: _Tok) -> None:
        """A tcp/udp/icmp header match implies its protocol (nft's payload dependency)."""
        if self.l4 not in (None, tok.value):
            raise self.error(f"'{tok.value}' and '{self.l4}' in one rule never match together",
                             tok)
        self.l4 = tok.value
        self.set_proto(_L4_NAMES[tok.value], False, tok)

    def tcp_flags(self, tok: _Tok) -> None:
        self.header(_Tok("word", "tcp", tok.line))
        self.once("tcp flags", tok)
        if self.peek().value == "&":                  # tcp flags & (a|b) ==|!= c
            self.next()
            mask = self.flag_list(("|",), paren=True)
            op = self.next()
            if op.value not in ("==", "!="):
                raise self.error(f"expected == or != after the mask, got {op.value!r}", op)
            value = self.flag_list(("|", ","))
            if value & ~mask:
                raise self.error("the compared flags are not all in the mask", op)
            self.extras.append(TcpFlagsMatch(mask, value, False, op.value == "!="))
            return
        inv = self.negation()
        flags = self.flag_list((",", "|"))
        if self.peek().value == "/":                  # tcp flags syn / syn,ack
            self.next()
            mask = self.flag_list((",", "|"))
            if flags & ~mask:
                raise self.error("the compared flags are not all in the mask", tok)
            self.extras.append(TcpFlagsMatch(mask, flags, False, inv))
        elif inv:
            self.extras.append(TcpFlagsMatch(flags, 0, False, False))   # != f: none of f set
        else:
            self.extras.append(TcpFlagsMatch(flags, 0, True, False))

    def flag_list(self, seps: tuple[str, ...], paren: bool = False) -> int:
        if paren and self.peek().value == "(":
            self.next()
        else:
            paren = False
        bits = 0
        while True:
            tok = self.word("a TCP flag")
            for name in tok.value.split(","):
                if name not in _TCP_FLAGS:
                    raise self.error(f"unknown TCP flag {name!r} ({', '.join(_TCP_FLAGS)})", tok)
                bits |= _TCP_FLAGS[name]
            if self.peek().value in seps + (",",):
                self.next()
                continue
            break
        if paren:
            if self.next().value != ")":
                raise self.error("')' expected after the flag mask")
        return bits

    def kw_icmp(self, tok: _Tok) -> None:
        what = self.word("type or code")
        self.header(tok)
        if what.value == "code":
            if self.icmp is None or self.icmp.code_min != 0 or self.icmp.code_max != 255:
                raise self.error("'icmp code' needs one 'icmp type' before it", what)
            code = self.word("a code")
            if not code.value.isdigit() or int(code.value) > 255:
                raise self.error(f"bad ICMP code {code.value!r} (0-255)", code)
            c = int(code.value)
            self.icmp = IcmpMatch(self.icmp.type, c, c, self.icmp.invert)
            return
        if what.value != "type":
            raise self.error(f"unsupported 'icmp {what.value}' (type, code)", what)
        self.once("icmp type", what)
        inv = self.negation()
        els, name, vt = self.values("icmp type")
        if len(els) == 1 and name is None and els[0][0] == els[0][1]:
            if els[0][0] == ICMP_ANY:
                raise self.error("ICMP type 255 means 'any' to iptables: not a type here", vt)
            self.icmp = IcmpMatch(els[0][0], 0, 255, inv)
        else:
            self.extras.append(SetMatch("icmp type", els, inv, name))

    def kw_ct(self, tok: _Tok) -> None:
        what = self.word("state, status, direction or helper")
        self.once(f"ct {what.value}", what)
        if what.value == "helper":
            self.ct_helper_set(what)
            return
        inv = self.negation()
        if what.value == "state":
            mask = self.name_list(STATE_BITS, "ct state", upper=True)
            self.states.append(StateMatch(mask, inv, "conntrack"))
        elif what.value == "status":
            self.extras.append(CtStatusMatch(self.name_list(_CT_STATUS, "ct status"), inv))
        elif what.value == "direction":
            d = self.word("original or reply")
            if d.value not in ("original", "reply"):
                raise self.error(f"unknown direction {d.value!r} (original, reply)", d)
            self.extras.append(CtDirectionMatch(d.value == "reply", inv))
        else:
            raise self.error(f"unsupported 'ct {what.value}' (state, status, direction)", what)

    def ct_helper_set(self, what: _Tok) -> None:
        """``ct helper set "NAME"`` (nft_ct_helper_obj_eval()): a new entry gets the helper."""
        if self.word("'set'").value != "set":
            raise self.error("'ct helper' in a rule: only 'ct helper set \"NAME\"'", what)
        name = self.word("a ct helper name")
        if name.value not in self.t.ct_helpers:
            raise self.error(f"no ct helper {name.value!r} in table {self.t.key}: declare it, "
                             f"ct helper {name.value} {{ type \"ftp\" protocol tcp; }}", name)
        base = self.t.bases.get(self.chain)
        if base is not None and base[0] != "filter":
            raise self.error("'ct helper set' in a nat chain: nattrack applies it in filter "
                             "chains (input, forward, output)", name)
        if base is not None and base[2] <= NF_IP_PRI_CONNTRACK:
            raise self.error("'ct helper set' at raw priority: the packet has no conntrack entry "
                             "yet and the kernel does nothing; use a chain at priority filter",
                             name)
        self.helper = self.t.ct_helpers[name.value]

    def name_list(self, names: dict, what: str, upper: bool = False) -> int:
        toks = []
        if self.peek().value == "{":
            opener = self.next()
            while self.peek().value != "}":
                if self.peek().kind == "eof":
                    raise self.error("'{' not closed", opener)
                t = self.next()
                if t.value != ",":
                    toks.append(t)
            self.next()
        else:
            toks.append(self.word(f"a {what} value"))
            while self.peek().value == ",":
                self.next()
                toks.append(self.word(f"a {what} value"))
        mask = 0
        for t in toks:
            for n in t.value.split(","):
                bit = names.get(n.upper() if upper else n)
                if bit is None:
                    raise self.error(f"unknown {what} {n!r} ({', '.join(k.lower() for k in names)})",
                                     t)
                mask |= bit
        return mask

    # statements
    def kw_counter(self, tok: _Tok) -> None:
        if self.counter:
            raise self.error("'counter' given twice", tok)
        self.counter = True
        for word in ("packets", "bytes"):          # nft list ruleset shows the values
            if self.peek().value == word:
                self.next()
                if not self.word("a number").value.isdigit():
                    raise self.error(f"'{word}' needs a number")

    def kw_log(self, tok: _Tok) -> None:
        if self.log is not None:
            raise self.error("'log' given twice", tok)
        self.log = ""
        if self.peek().value == "prefix":
            self.next()
            self.log = self.word("a prefix string").value

    def kw_comment(self, tok: _Tok) -> None:
        self.comment = self.word("a comment string").value

    def kw_accept(self, tok: _Tok) -> None:
        self.target = "ACCEPT"

    def kw_drop(self, tok: _Tok) -> None:
        self.target = "DROP"

    def kw_return(self, tok: _Tok) -> None:
        self.target = "RETURN"

    def kw_jump(self, tok: _Tok) -> None:
        name = self.word("a chain name")
        if name.value not in self.t.chains:
            raise self.error(f"no chain {name.value!r} in table {self.t.key}", name)
        if name.value in self.t.bases:
            raise self.error(f"cannot {tok.value} to base chain {name.value!r}", name)
        self.target, self.goto = name.value, tok.value == "goto"

    kw_goto = kw_jump

    def kw_reject(self, tok: _Tok) -> None:
        """``reject [with icmp [type] NAME | icmpx [type] NAME | tcp reset]``; plain
        ``reject`` answers ICMP port unreachable (icmpx port-unreachable in inet), and
        ``with tcp reset`` implies ``meta l4proto tcp``, as nft's evaluation adds it."""
        self.target, how = "REJECT", "icmp-port-unreachable"
        if self.peek().value == "with":
            self.next()
            kind = self.word("icmp, icmpx or tcp")
            if kind.value == "tcp":
                if self.word("reset").value != "reset":
                    raise self.error("expected 'reset' after 'reject with tcp'", kind)
                self.set_proto(IPPROTO_TCP, False, kind)
                how = "tcp-reset"
            elif kind.value in ("icmp", "icmpx"):
                if self.peek().value == "type":
                    self.next()
                name = self.word("an ICMP unreachable name")
                names = _REJECT_ICMPX if kind.value == "icmpx" else _REJECT_ICMP
                if name.value not in names:
                    raise self.error(f"'reject with {kind.value} {name.value}' is not supported "
                                     f"(nattrack knows: {', '.join(names)})", name)
                how = names[name.value]
            else:
                raise self.error(f"'reject with {kind.value}' is not supported (icmp, icmpx "
                                 "or tcp reset)", kind)
        self.reject_with = how

    def kw_notrack(self, tok: _Tok) -> None:
        base = self.t.bases.get(self.chain)
        if base is None or base[2] > NF_IP_PRI_CONNTRACK:
            raise self.error("'notrack' outside a base chain at raw priority (-300): after "
                             "conntrack (-200) the packet already has its entry", tok)
        if self.notrack:
            raise self.error("'notrack' given twice", tok)
        self.notrack = True

    def kw_masquerade(self, tok: _Tok) -> None:
        self.nat_statement(tok, "MASQUERADE")

    def kw_snat(self, tok: _Tok) -> None:
        self.nat_statement(tok, tok.value.upper())

    kw_dnat = kw_snat

    def nat_statement(self, tok: _Tok, target: str) -> None:
        base = self.t.bases.get(self.chain)
        if base is not None and (base[0] != "nat" or base[1] not in NAT_HOOKS[target]):
            raise self.error(f"{tok.value} in a {base[0]} chain on {base[1].lower()}: it is "
                             f"only valid in nat chains on "
                             f"{', '.join(h.lower() for h in NAT_HOOKS[target])}", tok)
        flags, ips, ports = 0, None, None
        if target != "MASQUERADE":
            if self.peek().value == "ip":
                self.next()
            if self.next().value != "to":
                raise self.error(f"'{tok.value}' needs 'to ADDR[-ADDR][:PORT[-PORT]]'", tok)
        if target != "MASQUERADE" or self.peek().value == "to":
            if target == "MASQUERADE":
                self.next()
            arg = self.word("an address or :port")
            ip_s, colon, port_s = arg.value.partition(":")
            if target == "MASQUERADE" and ip_s:
                raise self.error(f"masquerade takes ports only ('to :P[-Q]'), got {arg.value!r}",
                                 arg)
            if ip_s:
                lo_s, dash, hi_s = ip_s.partition("-")
                lo, hi = parse_ip(lo_s), (parse_ip(hi_s) if dash else parse_ip(lo_s))
                if lo is None or hi is None or lo > hi:
                    raise self.error(f"bad address (range) in {arg.value!r}", arg)
                ips = (lo, hi)
            if colon:
                if self.f.get("proto") not in (IPPROTO_TCP, IPPROTO_UDP) or \
                        self.f.get("proto_invert"):
                    raise self.error("a NAT port needs a tcp or udp match in the rule "
                                     "(nft: 'transport protocol mapping is only valid after "
                                     "transport protocol match')", arg)
                lo_s, dash, hi_s = port_s.partition("-")
                proto = "tcp" if self.f["proto"] == IPPROTO_TCP else "udp"
                lo = self.p.port(lo_s, proto, arg)
                hi = self.p.port(hi_s, proto, arg) if dash else lo
                if lo > hi or lo == 0:
                    raise self.error(f"bad port range in {arg.value!r}", arg)
                ports = (lo, hi)
            if not ips and not ports:
                raise self.error(f"'{arg.value}' gives neither an address nor a port", arg)
        while self.peek().kind == "word" and self.peek().value.split(",")[0] in _NAT_FLAGS:
            ft = self.next()
            for name in ft.value.split(","):
                if name not in _NAT_FLAGS:
                    raise self.error(f"unknown NAT flag {name!r} ({', '.join(_NAT_FLAGS)})", ft)
                if name == "fully-random" and target == "DNAT":
                    raise self.error("dnat does not take fully-random", ft)
                flags |= _NAT_FLAGS[name]
            if self.peek().value == ",":
                self.next()
        if ips:
            flags |= NF_NAT_RANGE_MAP_IPS
        if ports:
            flags |= NF_NAT_RANGE_PROTO_SPECIFIED
        (min_ip, max_ip), (min_port, max_port) = ips or (0, 0), ports or (0, 0)
        self.nat = NatRange(min_ip, max_ip, min_port, max_port, flags)
        self.target = target


def _extra_key(m) -> tuple:
    kind = _EXTRA_ORDER.index(type(m))
    return (kind, _KEY_ORDER.index(m.key) if isinstance(m, SetMatch) else 0)


def parse_nft(text: str, filename: str = "<rules>") -> Ruleset:
    """Parse an nft ruleset (``nft -f`` input or ``nft list ruleset`` output)."""
    return _Parser(text, filename).parse()


# --- the writer ----------------------------------------------------------------------------


def _addr_range_text(lo: int, hi: int) -> str:
    size = hi - lo + 1
    if lo == hi:
        return int2ip(lo)
    if size & (size - 1) == 0 and lo % size == 0:
        return f"{int2ip(lo)}/{33 - size.bit_length()}"
    return f"{int2ip(lo)}-{int2ip(hi)}"


def _element_text(key: str, lo: int, hi: int) -> str:
    if key.startswith("ip "):
        return _addr_range_text(lo, hi)
    if key == "icmp type":
        return _ICMP_TYPE_NAMES.get(lo, str(lo))
    if key == "meta l4proto":
        return {v: k for k, v in _L4_NAMES.items()}.get(lo, str(lo))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _set_text(m: SetMatch) -> str:
    if m.name:
        return "@" + m.name
    els = [_element_text(m.key, lo, hi) for lo, hi in m.elements]
    return els[0] if len(els) == 1 else "{ " + ", ".join(els) + " }"


def _flags_text(bits: int) -> str:
    return ",".join(n for n, b in _TCP_FLAGS.items() if bits & b)


def _quote(s: str) -> str:
    if '"' in s or "\n" in s:
        raise ValueError(f"{s!r}: nft strings cannot hold a double quote or a newline")
    return f'"{s}"'


def rule_text(rule: Rule, family: str = "ip", counts: Sequence[int] | None = None) -> str:
    """One rule in nft syntax (the statements, without 'add rule'); ``counts`` (packets,
    bytes) go after its ``counter`` as `nft list ruleset` prints them."""
    out = []
    neg = lambda inv: "!= " if inv else ""    # noqa: E731
    for kw, im in (("iifname", rule.iif), ("oifname", rule.oif)):
        if im is not None:
            out.append(f"{kw} {neg(im.invert)}{_quote(im.name + ('*' if im.wildcard else ''))}")
    for kw, a in (("ip saddr", rule.src), ("ip daddr", rule.dst)):
        if a is not None:
            bits = bin(a.mask).count("1")
            if a.mask != (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF:
                raise ValueError(f"non-contiguous mask {int2ip(a.mask)} has no nft form here")
            out.append(f"{kw} {neg(a.invert)}{a}" if bits < 32 else
                       f"{kw} {neg(a.invert)}{int2ip(a.net)}")
    sets = [m for m in rule.matches if isinstance(m, SetMatch)]
    for sm in sets:
        if sm.key.startswith("ip "):
            out.append(f"{sm.key} {neg(sm.invert)}{_set_text(sm)}")
    implied = rule.reject_with == "tcp-reset" or any(
        isinstance(m, (TcpUdpMatch, IcmpMatch, TcpFlagsMatch))
        or isinstance(m, SetMatch) and m.key.split()[0] in ("tcp", "udp", "icmp")
        for m in rule.matches)
    if rule.proto and not (implied and not rule.proto_invert):
        kw = "ip protocol" if family == "ip" else "meta l4proto"
        out.append(f"{kw} {neg(rule.proto_invert)}{proto_name(rule.proto)}")
    for m in rule.matches:
        if isinstance(m, TcpUdpMatch):
            for kw, pr in (("sport", m.sport), ("dport", m.dport)):
                if pr is not None:
                    out.append(f"{m.module} {kw} {neg(pr.invert)}"
                               f"{pr.lo if pr.lo == pr.hi else f'{pr.lo}-{pr.hi}'}")
        elif isinstance(m, IcmpMatch):
            if m.type == ICMP_ANY:
                continue                       # any type: the protocol match says it
            name = _ICMP_TYPE_NAMES.get(m.type, str(m.type))
            out.append(f"icmp type {neg(m.invert)}{name}")
            if (m.code_min, m.code_max) != (0, 255):
                if m.code_min != m.code_max or m.invert:
                    raise ValueError(f"ICMP code range {m.code_min}-{m.code_max} has no nft "
                                     "form here")
                out.append(f"icmp code {m.code_min}")
        elif isinstance(m, StateMatch):
            states = sorted((b, n.lower()) for n, b in STATE_BITS.items() if m.mask & b)
            out.append(f"ct state {neg(m.invert)}{','.join(n for _b, n in states)}")  # nft's order
        elif isinstance(m, SetMatch) and not m.key.startswith("ip "):
            out.append(f"{m.key} {neg(m.invert)}{_set_text(m)}")
        elif isinstance(m, TcpFlagsMatch):
            if m.any:
                out.append(f"tcp flags {_flags_text(m.mask)}")
            else:
                mask = "|".join(_flags_text(m.mask).split(","))
                val = "|".join(_flags_text(m.value).split(",")) or "0x0"
                out.append(f"tcp flags & ({mask}) {'!=' if m.invert else '=='} {val}")
        elif isinstance(m, CtStatusMatch):
            names = ",".join(n for n, b in _CT_STATUS.items() if m.mask & b)
            out.append(f"ct status {neg(m.invert)}{names}")
        elif isinstance(m, CtDirectionMatch):
            out.append(f"ct direction {neg(m.invert)}{'reply' if m.reply else 'original'}")
    if rule.counter:
        out.append("counter" if counts is None else f"counter packets {counts[0]} bytes {counts[1]}")
    if rule.log is not None:
        out.append(f"log prefix {_quote(rule.log)}" if rule.log else "log")
    if rule.notrack:
        out.append("notrack")
    if rule.helper:                     # write_nft() declares an object named as the type
        out.append(f"ct helper set {_quote(rule.helper)}")
    t, nr = rule.target, rule.nat_range
    if t in ("SNAT", "DNAT", "MASQUERADE"):
        assert nr is not None           # both parsers give every NAT target a range
        stmt = t.lower() + (" ip" if family == "inet" and t != "MASQUERADE" else "")
        if nr.flags & (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED):
            stmt += f" to {nr}"
        flags = [n for n, b in _NAT_FLAGS.items() if nr.flags & b]
        out.append(stmt + (" " + ",".join(flags) if flags else ""))
    elif t == "REJECT":
        out.append(_reject_text(rule.reject_with, family))
    elif t in ("ACCEPT", "DROP", "RETURN"):
        out.append(t.lower())
    elif t:
        out.append(f"{'goto' if rule.goto else 'jump'} {t}")
    comment = rule.comment
    if comment is not None:
        out.append(f"comment {_quote(comment)}")
    return " ".join(out)


# nft's reject names (icmp_code_type, icmpx_code_type) -> ipt_REJECT's --reject-with.
_REJECT_ICMP = {"net-unreachable": "icmp-net-unreachable",
                "host-unreachable": "icmp-host-unreachable",
                "prot-unreachable": "icmp-proto-unreachable",
                "port-unreachable": "icmp-port-unreachable",
                "net-prohibited": "icmp-net-prohibited",
                "host-prohibited": "icmp-host-prohibited",
                "admin-prohibited": "icmp-admin-prohibited"}
# NFT_REJECT_ICMPX_* -> the IPv4 code nft_reject_icmp_code() gives.
_REJECT_ICMPX = {"no-route": "icmp-net-unreachable", "port-unreachable": "icmp-port-unreachable",
                 "host-unreachable": "icmp-host-unreachable",
                 "admin-prohibited": "icmp-admin-prohibited"}


def _reject_text(how: str, family: str) -> str:
    """The reject statement as `nft list ruleset` prints it."""
    if how == "tcp-reset":
        return "reject with tcp reset"
    if how == "icmp-port-unreachable":
        return "reject"
    if family == "inet":
        name = next((n for n, h in _REJECT_ICMPX.items() if h == how), None)
        if name is not None:
            return f"reject with icmpx {name}"
    return "reject with icmp " + next(n for n, h in _REJECT_ICMP.items() if h == how)


def write_nft(rs: Ruleset, counters: bool = False) -> str:
    """The rule set as an ``nft -f`` file; an iptables one is translated first.  With
    ``counters``: as `nft list ruleset` prints it, each ``counter`` with the packets and
    bytes the engine counted for its rule (Ruleset.counters)."""
    counts = rs.counters
    if not rs.bases:
        if not counters:
            _refuse_ct_helper_target(rs)
        counts = {(f"ip {t}", c, i): v for (t, c, i), v in counts.items()}
        rs = from_iptables(rs)
    out = []
    for key, chains in rs.tables.items():
        family = key.split()[0]
        out.append(f"table {key} {{")
        for name, s in rs.sets.get(key, {}).items():
            out.append(f"\tset {name} {{")
            out.append(f"\t\ttype {s.type}")
            if s.interval:
                out.append("\t\tflags interval")
            key0 = _SET_TYPES[s.type][0]
            if s.elements:
                out.append("\t\telements = { " + ", ".join(
                    _element_text(key0, lo, hi) for lo, hi in s.elements) + " }")
            out.append("\t}")
        for htype in sorted({r.helper for rules in chains.values() for r in rules if r.helper}):
            out += [f"\tct helper {htype} {{", f'\t\ttype "{htype}" protocol tcp',
                    "\t\tl3proto ip", "\t}"]
        for chain, rules in chains.items():
            out.append(f"\tchain {chain} {{")
            base = rs.bases[key].get(chain)
            if base is not None:
                kind, hook, prio = base
                out.append(f"\t\ttype {kind} hook {hook.lower()} priority {prio}; "
                           f"policy {rs.policies[key][chain].lower()};")
            out.extend("\t\t" + rule_text(r, family, tuple(counts.get((key, chain, i), (0, 0)))
                                           if counters else None)
                       for i, r in enumerate(rules))
            out.append("\t}")
        out.append("}")
    return "\n".join(out) + "\n" if out else ""


# --- between the two syntaxes ----------------------------------------------------------------


def _refuse_ct_helper_target(rs: Ruleset) -> None:
    """``-j CT --helper`` has no nft form to translate to (iptables-translate comments it
    out): the raw table runs before conntrack, where nft's ``ct helper set`` does nothing.
    (A listing, write_nft(counters=True), still shows the rule as it stands.)"""
    for rules in rs.tables.get("raw", {}).values():
        for r in rules:
            if r.helper:
                raise RulesError(rs.filename or "<rules>", r.line,
                                 "-j CT --helper has no nft translation (iptables-translate "
                                 "refuses it too): in nft, declare 'ct helper NAME { type "
                                 "\"ftp\" protocol tcp; }' and 'ct helper set \"NAME\"' in a "
                                 "chain after conntrack (priority filter)", "CT")


def from_iptables(rs: Ruleset) -> Ruleset:
    """An iptables rule set as iptables-restore-translate writes it: tables ``ip nat`` and
    ``ip filter``, built-in chains as base chains at iptables' priorities, and a
    counter on every rule (iptables always counts)."""
    if rs.bases:
        return rs
    tables, policies, bases = {}, {}, {}
    for table, chains in rs.tables.items():
        key = f"ip {table}"
        tables[key] = {c: [replace(r, table=key, counter=True, matches=tuple(
            replace(m, module="conntrack") if isinstance(m, StateMatch) else m
            for m in r.matches)) for r in rules] for c, rules in chains.items()}
        bases[key] = {c: ("filter" if table == "raw" else table, c,
                          _IPT_PRIORITY.get((table, c), 0)) for c in BUILTIN_CHAINS[table]}
        policies[key] = dict(rs.policies[table])
    return Ruleset(tables, policies, rs.filename, bases, {})


def to_iptables(rs: Ruleset) -> Ruleset:
    """An nft rule set in iptables' shape: each base chain becomes its type's built-in
    chain; an error where iptables (or nattrack's iptables parser) has no equivalent."""
    if not rs.bases:
        return rs
    tables: dict[str, dict[str, list[Rule]]] = {}
    policies: dict[str, dict[str, str]] = {}
    owner: dict[tuple[str, str], str] = {}      # (type, chain) -> the nft table it came from
    for key, chains in rs.tables.items():
        if rs.sets.get(key):
            raise ValueError(f"table {key}: named sets have no iptables form nattrack reads")
        kinds = {c: "raw" if b[2] <= NF_IP_PRI_CONNTRACK else b[0]
                 for c, b in rs.bases[key].items()}
        for c in chains:
            if c not in kinds:
                users = {b[0] for ch, b in rs.bases[key].items() if any(
                    r.target == c for r in _reachable(chains, ch))}
                if len(users) != 1:
                    raise ValueError(f"chain {c} of table {key} is reached from "
                                     f"{'both nat and filter chains' if users else 'no base chain'}")
                kinds[c] = users.pop()
        for c, rules in chains.items():
            kind = kinds[c]
            base = rs.bases[key].get(c)
            name = base[1] if base else c
            if base:
                std = _IPT_PRIORITY.get((kind, name), 0)
                if base[2] != std:
                    raise ValueError(f"chain {c} of table {key}: priority {base[2]} (iptables' "
                                     f"{kind} {name} is {std})")
            if (kind, name) in owner:
                raise ValueError(f"{kind} {name}: chains in both {owner[kind, name]} and {key}; "
                                 "iptables has one chain per hook and name")
            owner[kind, name] = key
            t = tables.setdefault(kind, {ch: [] for ch in BUILTIN_CHAINS[kind]})
            policies.setdefault(kind, {ch: "ACCEPT" for ch in BUILTIN_CHAINS[kind]})
            if base:
                policies[kind][name] = rs.policies[key][c]
            out = t.setdefault(name, [])
            for r in rules:
                if r.log is not None:
                    raise ValueError(f"line {r.line}: 'log' has no iptables form nattrack reads")
                if r.goto:
                    raise ValueError(f"line {r.line}: 'goto' has no iptables form nattrack reads")
                if r.target == "REJECT":
                    raise ValueError(f"line {r.line}: 'reject' has no iptables form nattrack "
                                     "reads (-j REJECT is not in its iptables subset)")
                if r.helper:
                    raise ValueError(f"line {r.line}: 'ct helper set' has no iptables form: "
                                     "iptables attaches a helper in the raw table "
                                     "(-j CT --helper)")
                if r.notrack and r.target:
                    raise ValueError(f"line {r.line}: 'notrack {r.target.lower()}' is two "
                                     "iptables rules (-j CT --notrack, then the verdict)")
                for m in r.matches:
                    if hasattr(m, "iptables"):
                        m.iptables()           # raises where there is no form at all
                out.append(replace(r, table=kind, chain=name, counter=False, text=""))
    return Ruleset(tables, policies, rs.filename)


def _reachable(chains: dict, start: str, seen: set | None = None) -> list[Rule]:
    seen = seen if seen is not None else set()
    if start in seen:
        return []
    seen.add(start)
    out = list(chains[start])
    for r in chains[start]:
        if r.target in chains:
            out += _reachable(chains, r.target, seen)
    return out
