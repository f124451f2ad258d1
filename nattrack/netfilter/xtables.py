"""The rule model and its matching: what the kernel holds of an iptables rule.

Models ip_tables.c (the ``struct ipt_ip`` part of a rule and ip_packet_match()) and the
xt matches nattrack implements (xt_tcpudp, xt_icmp, xt_conntrack/xt_state, xt_comment),
with the targets' names and the hooks each NAT target may sit on.  Both parsers build
these rules, ``iptables.py`` from iptables-restore text and ``nft.py`` from nft text;
``ruleset.py`` walks them.  ``str(rule)`` is the rule as iptables-save prints it.

Matching follows ip_packet_match() (ip_tables.c) and the xt_tcpudp, xt_icmp,
xt_conntrack/xt_state matches.  A tcp/udp/icmp match never matches a
non-first fragment, nor a packet whose L4 header could not be parsed
(``pkt.l4ok`` false): the kernel sets ``hotdrop`` for a truncated header and
drops the packet at once; here the rule simply does not match (conntrack has
already classified such a packet INVALID, which a stateful rule set drops).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar

from ..conntrack.conn import ctstate_bit
from ..conntrack.tuple import int2ip
from ..nat.range import (NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM,
                         NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)
from ..packet.ipv4 import IPPROTO_TCP

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet

__all__ = [
    "RulesError", "AddrMatch", "IfaceMatch", "PortRange", "TcpUdpMatch", "IcmpMatch",
    "StateMatch", "CommentMatch", "Rule", "match", "BUILTIN_CHAINS", "BUILTIN_TARGETS",
    "NAT_HOOKS", "CT_HELPERS", "STATE_BITS", "ICMP_ANY", "parse_ip", "proto_name",
]

# Built-in chains in the order iptables-save prints them.
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "raw": ("PREROUTING", "OUTPUT"),
}
# The conntrack helpers -j CT --helper / ct helper set may name (conntrack/helper_ftp.py).
CT_HELPERS = ("ftp",)

# Where each NAT target may sit (the .hooks of xt_nat.c and xt_MASQUERADE.c; nft's
# nft_nat_validate() and nft_masq_validate() allow the same).
NAT_HOOKS = {
    "SNAT": ("POSTROUTING", "INPUT"),
    "DNAT": ("PREROUTING", "OUTPUT"),
    "MASQUERADE": ("POSTROUTING",),
}
# The targets a rule's verdict can name; any other target is a user chain.
BUILTIN_TARGETS = ("ACCEPT", "DROP", "RETURN", "SNAT", "DNAT", "MASQUERADE", "REJECT")

# NF_CT_STATE_BIT() values (include/uapi/linux/netfilter/nf_conntrack_common.h),
# in the order libxt_conntrack prints them.
STATE_BITS = {"INVALID": 1 << 0, "NEW": 1 << 3, "RELATED": 1 << 2, "ESTABLISHED": 1 << 1,
              "UNTRACKED": 1 << 6}
ICMP_ANY = 0xFF                 # --icmp-type any (xt_icmp's type 0xFF)

_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


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
Predicate = Callable[["Packet", "int | None", "str | None", "str | None"], bool]
M = TypeVar("M", TcpUdpMatch, IcmpMatch, StateMatch, CommentMatch)


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
    def _first(self, kind: type[M]) -> M | None:
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
        for opt, ip in (("-s", self.src), ("-d", self.dst), ("-i", self.iif), ("-o", self.oif)):
            if ip is not None:
                out.append(f"{'! ' if ip.invert else ''}{opt} {ip}")
        if self.proto:
            out.append(f"{'! ' if self.proto_invert else ''}-p {proto_name(self.proto)}")
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
    if dp is None:
        if sp is None:
            return lambda p, c, i, o: p.l4ok and not p.frag
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


# --- helpers ----------------------------------------------------------------------------------


def _range_str(lo: int, hi: int, sep: str) -> str:
    return str(lo) if lo == hi else f"{lo}{sep}{hi}"


def _save_string(value: str) -> str:
    """xtables_save_string(): bare if only [A-Za-z0-9_-], else double-quoted."""
    if value and re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return value
    return '"' + re.sub(r"([\"\\'])", r"\\\1", value) + '"'


_etc_protocols: dict[int, str] | None = None


def proto_name(num: int) -> str:
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


def parse_ip(s: str) -> int | None:
    """A strict dotted quad (no leading zeros, no short forms) as an int, or None: what
    both parsers accept as an address."""
    if not _IPV4.fullmatch(s):
        return None
    a, b, c, d = (int(x) for x in s.split("."))
    return a << 24 | b << 16 | c << 8 | d
