"""``nft monitor trace`` lines for one packet through nattrack's engine.

The kernel (net/netfilter/nf_tables_trace.c, nft_trace_notify()) reports every base
chain a traced packet enters, every rule that matched it with its verdict, and the
chain's policy when no rule decided; nft (src/trace.c, netlink_events_trace_cb())
prints them::

    trace id 7f87dd6c ip filter FORWARD packet: iif "r-priv" oif "r-pub" ether saddr ...
    trace id 7f87dd6c ip filter FORWARD rule jump sub (verdict jump sub)
    trace id 7f87dd6c ip filter sub rule tcp dport 80 accept (verdict accept)
    trace id 7f87dd6c ip nat POSTROUTING policy accept

The packet line comes once per base chain, before its first event, and is decoded from
the header bytes the kernel sends (link header, the IP header, at most 20 bytes from
the transport header): fields as nft 1.0.6 orders and filters them, bytes it has no
field for as ``@th,OFFSET,BITS 0x..``.  nft 1.1 prints a UDP header's ``udp checksum``
where 1.0.6 leaves it out, an ICMP code as a number, and no raw bytes past a header it
decodes (checked with Debian 13's nft 1.1.3 against the same kernel): ``nft=(1, 1)``
(the live router passes :func:`installed_nft`, the version of this machine's nft).
nft with a kernel that reports the
connection prints a ``conntrack: ct direction ... ct state ... ct status ... ct id ...``
line before it: ``conntrack=True`` adds that line.  Rule handles are those ``nft -a
list ruleset`` shows after ``nft -f`` of the rule set's nft form (:func:`handles`;
``show_handles=True`` prints them as ``nft -a monitor trace`` does), and
rules print as nft lists them (``counter packets 0 bytes 0``: nft prints the values its
cache held when the monitor started).  Trace ids are random in the kernel; here each
packet gets one of its own.

:func:`trace_receive` runs one received datagram through a :class:`~.stack.Router`
with its rule set seen through :class:`TracedRuleset`, which answers exactly as the
rule set does and writes the lines of each base chain the engine runs (the nat chains
only for a connection's first packet, as nf_nat_inet_fn()).
"""
from __future__ import annotations

import functools
import random
import re
import shutil
import socket
import struct
import subprocess

from ..conntrack.conn import IP_CT_IS_REPLY, ctstate_bit
from ..conntrack.tuple import int2ip
from .nft import (
    _CT_STATUS,
    _ICMP_TYPE_NAMES,
    _TCP_FLAGS,
    SetMatch,
    from_iptables,
    rule_text,
)
from .ruleset import Ruleset
from .xtables import proto_name

__all__ = ["NftTrace", "TracedRuleset", "handles", "installed_nft", "listed_rule",
           "nft_version", "trace_receive"]

TRANSPORT_HSIZE = 20        # NFT_TRACETYPE_TRANSPORT_HSIZE
# nft's dscp_type and ecn_type symbols (src/proto.c).
_DSCP = {0x00: "cs0", 0x08: "cs1", 0x0a: "af11", 0x0c: "af12", 0x0e: "af13", 0x10: "cs2",
         0x12: "af21", 0x14: "af22", 0x16: "af23", 0x18: "cs3", 0x1a: "af31", 0x1c: "af32",
         0x1e: "af33", 0x20: "cs4", 0x22: "af41", 0x24: "af42", 0x26: "af43", 0x28: "cs5",
         0x2c: "va", 0x2e: "ef", 0x30: "cs6", 0x38: "cs7"}
_ECN = ("not-ect", "ect1", "ect0", "ce")
# nft's icmp_code_type symbols: any ICMP type's code is named from this one table.
_ICMP_CODES = {0: "net-unreachable", 1: "host-unreachable", 2: "prot-unreachable",
               3: "port-unreachable", 4: "frag-needed", 9: "net-prohibited",
               10: "host-prohibited", 13: "admin-prohibited"}
_STATE_NAMES = {1: "invalid", 2: "established", 4: "related", 8: "new", 64: "untracked"}
NFT_1_0 = (1, 0)            # Debian 12's nft 1.0.6: how the lines print unless told otherwise
# Kernels before this report a chain's end and a `return` as NFT_TRACETYPE_RETURN events
# ("verdict continue" / "verdict return", nf_tables_core.c __nft_trace_verdict() as in
# 6.1); seen on Debian 12's 6.1, not on 6.12 or 6.18 (6.5: a guess between the two).
QUIET_CHAIN_END_SINCE = (6, 5)


def nft_version(argv=("nft",)) -> tuple[int, int]:
    """(major, minor) of ``argv --version`` ("nftables v1.1.3 ..."); 1.0 when that nft is
    missing or says something else."""
    if shutil.which(argv[0]) is None:
        return NFT_1_0
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return NFT_1_0
    m = re.search(r"v(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else NFT_1_0


@functools.cache
def installed_nft() -> tuple[int, int]:
    """This machine's nft version, read once (the live router's trace lines follow it)."""
    return nft_version()
_FLAG_NAMES = {bit: name for name, bit in _TCP_FLAGS.items()}


# --- the rule set as nft holds it ------------------------------------------------------------

def nft_form(rs: Ruleset) -> Ruleset:
    """The rule set the kernel would hold after ``nft -f`` of ``rulesfile.to_nft(rs)``."""
    return from_iptables(rs) if not rs.bases else rs


def handles(rs: Ruleset) -> dict[tuple[str, str], list[int]]:
    """(table, chain) -> the handle of each of its rules, as ``nft -a list ruleset`` numbers
    them after ``nft -f``: one counter per table (nf_tables_alloc_handle()), given out in
    the order nft sends the objects (nft_cmd_expand(): the chains, the objects -- one ct
    helper per helper type the table's rules set, as write_nft() writes them -- the named
    sets, then the rules chain by chain; an anonymous set ``{ a, b }`` takes a handle
    before its rule)."""
    out: dict[tuple[str, str], list[int]] = {}
    for table, chains in rs.tables.items():
        helpers = {getattr(r, "helper", None) for rules in chains.values() for r in rules} - {None, ""}
        n = len(chains) + len(helpers) + len(rs.sets.get(table, {}))
        for chain, rules in chains.items():
            hs = out[(table, chain)] = []
            for rule in rules:
                n += sum(1 for m in rule.matches
                         if isinstance(m, SetMatch) and not m.name and len(m.elements) > 1)
                n += 1
                hs.append(n)
    return out


def listed_rule(rule, family: str = "ip") -> str:
    """The rule as ``nft list ruleset`` prints it (a counter with its values)."""
    words, out, quoted = rule_text(rule, family).split(" "), [], False
    for w in words:
        if w == "counter" and not quoted and rule.counter:
            w = "counter packets 0 bytes 0"
        quoted ^= w.count('"') % 2 == 1
        out.append(w)
    return " ".join(out)


# --- the packet line -------------------------------------------------------------------------

def _raw(base: str, offset: int, data: bytes) -> str:
    return f"@{base},{offset * 8},{len(data) * 8} 0x{int.from_bytes(data, 'big'):x}"


def _transport(proto: int, th: bytes, nft: tuple[int, int] = NFT_1_0) -> list[str] | None:
    """The transport header's fields as ``nft`` (its version) prints them; None for a
    protocol it does not decode (then ``ip protocol`` stays and every byte is raw)."""
    if proto == socket.IPPROTO_TCP and len(th) >= 20:
        sport, dport, flags, win = struct.unpack_from("!HH8xxBH", th)
        name = _FLAG_NAMES.get(flags, f"0x{flags:x}")
        return [f"tcp sport {sport}", f"tcp dport {dport}", f"tcp flags == {name}",
                f"tcp window {win}"]
    if proto == socket.IPPROTO_UDP and len(th) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", th)
        out = [f"udp sport {sport}", f"udp dport {dport}", f"udp length {length}"]
        if nft >= (1, 1):                   # the checksum, and nothing past the header
            return out + [f"udp checksum {struct.unpack_from('!H', th, 6)[0]}"]
        return out + ([_raw("th", 8, th[8:])] if len(th) > 8 else [])
    if proto == socket.IPPROTO_ICMP and len(th) >= 8:
        itype, code, _csum, ident, seq = struct.unpack_from("!BBHHH", th)
        code_text = code if nft >= (1, 1) else _ICMP_CODES.get(code, code)   # 1.1: a number
        out = [f"icmp type {_ICMP_TYPE_NAMES.get(itype, itype)}", f"icmp code {code_text}",
               f"icmp id {ident}", f"icmp sequence {seq}"]
        if nft >= (1, 1):
            return out
        return out + ([_raw("th", 8, th[8:])] if len(th) > 8 else [])
    return None


def packet_fields(pkt, iif: str | None, oif: str | None,
                  ether: tuple[str, str] | None = None, nft: tuple[int, int] = NFT_1_0) -> str:
    """What follows ``packet:``: the devices, the link header when the packet came in on
    Ethernet, the IP header and the start of the transport header."""
    out = []
    if iif:
        out.append(f'iif "{iif}"')
    if oif:
        out.append(f'oif "{oif}"')
    if ether:
        out += [f"ether saddr {ether[0]}", f"ether daddr {ether[1]}"]
    buf, off = pkt.buf, pkt.off
    tos, tot_len, ipid, _frag, ttl = struct.unpack_from("!xBHHHB", buf, off)
    out += [f"ip saddr {int2ip(pkt.src)}", f"ip daddr {int2ip(pkt.dst)}",
            f"ip dscp {_DSCP.get(tos >> 2, f'0x{tos >> 2:02x}')}", f"ip ecn {_ECN[tos & 3]}",
            f"ip ttl {ttl}", f"ip id {ipid}"]
    th = b"" if pkt.frag else bytes(buf[pkt.l4:off + min(tot_len, pkt.ihl + TRANSPORT_HSIZE)])
    fields = _transport(pkt.proto, th, nft)
    if fields is None:
        out.append(f"ip protocol {proto_name(pkt.proto)}")
    out.append(f"ip length {tot_len}")
    if fields is None:
        fields = [_raw("th", 0, th)] if th else []
    return " ".join(out + fields) + " "


def conntrack_fields(pkt, ctinfo: int | None) -> str | None:
    """nft >= 1.1's ``conntrack:`` line (trace_print_ct()); None without a connection."""
    ct = pkt.ct
    if ct is None or ctinfo is None:
        return None
    out = [f"ct direction {'reply' if ctinfo >= IP_CT_IS_REPLY else 'original'}",
           f"ct state {_STATE_NAMES[ctstate_bit(ctinfo)]}"]
    status = ",".join(n for n, b in _CT_STATUS.items() if ct.status & b)
    if status:
        out.append(f"ct status {status}")
    out.append(f"ct id {ct.id}")
    return " ".join(out) + " "


# --- one packet's trace ----------------------------------------------------------------------

class NftTrace:
    """The lines one packet writes to ``nft monitor trace``.

    ``ruleset`` is the engine's rule set (either syntax: an iptables one is traced in its
    nft form).  Call :meth:`hook` as each hook runs the rule set on the packet; the lines
    collect in ``lines``."""

    def __init__(self, ruleset: Ruleset, trace_id: int | None = None,
                 ether: tuple[str, str] | None = None, conntrack: bool = False,
                 show_handles: bool = False, nft: tuple[int, int] = NFT_1_0,
                 chain_end_events: bool = False) -> None:
        self.rs = nft_form(ruleset)
        self.handles = handles(self.rs)
        self.id = random.getrandbits(32) if trace_id is None else trace_id
        self.ether, self.conntrack, self.show_handles = ether, conntrack, show_handles
        self.nft, self.chain_end_events = nft, chain_end_events
        self.lines: list[str] = []

    def _head(self, table: str, chain: str) -> str:
        return f"trace id {self.id:08x} {table} {chain} "

    def hook(self, kind: str, hook: str, pkt, ctinfo: int | None, iif: str | None,
             oif: str | None) -> None:
        """The base chains of type ``kind`` ("nat", "filter", or "raw": filter chains
        before conntrack) on ``hook`` ("FORWARD", ...) run on ``pkt``, in priority order:
        for filter until one drops, for nat until one sets up a binding
        (Ruleset.decide() / first_match() / raw())."""
        for _prio, table, chain in self.rs.hooks.get((kind, hook), ()):
            head = self._head(table, chain)
            if self.conntrack:
                ct = conntrack_fields(pkt, ctinfo)
                if ct is not None:
                    self.lines.append(head + "conntrack: " + ct)
            fields = packet_fields(pkt, iif, oif, self.ether, self.nft)
            self.lines.append(head + "packet: " + fields)
            decided = self._chain(table, chain, pkt, ctinfo, iif, oif)
            if decided is None:
                policy = self.rs.policies[table][chain].lower()
                self.lines.append(head + f"policy {policy} ")
                decided = policy
            if decided == "drop" or kind == "nat" and decided == "nat":
                return

    def _chain(self, table: str, base: str, pkt, ctinfo, iif, oif) -> str | None:
        """nft_do_chain(): "accept", "drop", "nat" (a NAT statement: verdict accept), or
        None when the base chain runs out (its policy applies)."""
        chains = self.rs.tables[table]
        family = table.split()[0]
        stack: list[tuple[str, int]] = []
        chain, i = base, 0
        while True:
            rules = chains[chain]
            if i >= len(rules):
                if self.chain_end_events:       # 6.1: the end of every chain is an event
                    self.lines.append(self._head(table, chain) + "verdict continue ")
                if not stack:
                    return None
                chain, i = stack.pop()          # the end of a jumped-to chain: no event
                continue
            rule, handle = rules[i], self.handles[(table, chain)][i]
            i += 1
            if not rule.matches_packet(pkt, ctinfo, iif, oif):
                continue
            t = rule.target
            if t in ("ACCEPT", "DROP", "REJECT", "SNAT", "DNAT", "MASQUERADE"):
                verdict = "drop" if t in ("DROP", "REJECT") else "accept"   # reject: NF_DROP
            elif t == "RETURN":
                verdict = "return"
            elif t:
                verdict = f"{'goto' if rule.goto else 'jump'} {t}"
            else:
                verdict = "continue"
            text = listed_rule(rule, family) + (f" # handle {handle}" if self.show_handles else "")
            if verdict == "return" and self.chain_end_events:      # 6.1: a RETURN event
                self.lines.append(self._head(table, chain) + "verdict return ")
            else:
                self.lines.append(self._head(table, chain) + f"rule {text} (verdict {verdict})")
            if verdict in ("accept", "drop"):
                return "nat" if t in ("SNAT", "DNAT", "MASQUERADE") else verdict
            if verdict == "return":
                if not stack:
                    return None
                chain, i = stack.pop()
            elif t and verdict != "continue":
                if not rule.goto:
                    stack.append((chain, i))
                chain, i = t, 0


class TracedRuleset:
    """A rule set that answers as ``ruleset`` does and writes ``trace``'s lines for the one
    packet being traced (the router's own answers are other packets, untraced as in the
    kernel, where nftrace is set on the received skb only)."""

    def __init__(self, ruleset: Ruleset, trace: NftTrace) -> None:
        self._rs, self._trace, self._pkt = ruleset, trace, None

    def __getattr__(self, name):
        return getattr(self._rs, name)

    def _mine(self, pkt) -> bool:
        if self._pkt is None and pkt.iif is not None:
            self._pkt = pkt
        return pkt is self._pkt

    def verdict(self, chain, pkt, ctinfo, iif, oif):
        if self._mine(pkt):
            self._trace.hook("filter", chain, pkt, ctinfo, iif, oif)
        return self._rs.verdict(chain, pkt, ctinfo, iif, oif)

    def decide(self, chain, pkt, ctinfo, iif, oif):
        if self._mine(pkt):
            self._trace.hook("filter", chain, pkt, ctinfo, iif, oif)
        return self._rs.decide(chain, pkt, ctinfo, iif, oif)

    def raw(self, hook, pkt, iif, oif):
        if self._mine(pkt):                 # before conntrack: no entry, ct state invalid
            self._trace.hook("raw", hook, pkt, None, iif, oif)
        return self._rs.raw(hook, pkt, iif, oif)

    def first_match(self, table, chain, pkt, ctinfo, iif, oif):
        if table == "nat" and self._mine(pkt):
            self._trace.hook("nat", chain, pkt, ctinfo, iif, oif)
        return self._rs.first_match(table, chain, pkt, ctinfo, iif, oif)


def trace_receive(router, pkt, ether: tuple[str, str] | None = None,
                  trace_id: int | None = None, conntrack: bool = False,
                  show_handles: bool = False, nft: tuple[int, int] = NFT_1_0):
    """``router.receive(pkt, trace=True)`` with the nft trace of ``pkt``: returns the
    Verdict and the lines.  ``ether`` is the frame's (source, destination) MAC; ``nft``
    the (major, minor) version of nft whose printing to follow.  The events are those of
    the router's kernel profile (``router.ct.profile``)."""
    saved = router.ruleset
    if saved is None:
        return router.receive(pkt, trace=True), []
    chain_end_events = router.ct.profile.version < QUIET_CHAIN_END_SINCE
    trace = NftTrace(saved, trace_id, ether, conntrack, show_handles, nft, chain_end_events)
    traced = router.ruleset = TracedRuleset(saved, trace)
    try:
        v = router.receive(pkt, trace=True)
    finally:
        if router.ruleset is traced:        # not if new rules were loaded meanwhile
            router.ruleset = saved
    return v, trace.lines
