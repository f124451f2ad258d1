"""Network address translation on top of conntrack.

Models net/netfilter/nf_nat_core.c (Linux 6.x): nf_nat_setup_info(),
get_unique_tuple(), find_appropriate_src(), find_best_ips_proto(),
nf_nat_l4proto_unique_tuple(), nf_nat_packet(), nf_nat_inet_fn(), and
nf_nat_masquerade_ipv4() of nf_nat_masquerade.c.

Theory of operation
-------------------
NAT decides once per connection and direction of manipulation: the first
packet (NEW, or an ICMP error RELATED to it) runs the nat chain of its hook;
the first SNAT/DNAT/MASQUERADE rule that matches sets up a binding, and if
none does a *null binding* is installed (which still makes the connection's
reply tuple unique).  A binding only ever changes the entry's REPLY tuple:
"what would an answer to the rewritten packet look like".  Every later packet
of the connection is then rewritten without consulting any rule, so that it
looks like the inverse of the other direction's tuple.

Hooks: DNAT and un-SNAT of replies at PRE_ROUTING / LOCAL_OUT (DST manip),
SNAT/MASQUERADE and un-DNAT of replies at POST_ROUTING / LOCAL_IN (SRC manip).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from ..conntrack.conn import (IP_CT_DIR_ORIGINAL, IP_CT_IS_REPLY, IP_CT_NEW, IP_CT_RELATED,
                              IP_CT_RELATED_REPLY, IPS_DST_NAT, IPS_DST_NAT_DONE, IPS_DYING,
                              IPS_FIXED_TIMEOUT, IPS_NAT_MASK, IPS_SEQ_ADJUST, IPS_SRC_NAT, IPS_SRC_NAT_DONE,
                              Conn)
from ..conntrack.core import (NF_ACCEPT, NF_DROP, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
                              NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING)
from ..conntrack.proto_tcp import TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_TIME_WAIT
from ..conntrack.tuple import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PORT_PROTOS, Tuple, invert_tuple
from .bysource import nat_net
from .proto import nf_nat_icmp_reply_translation, nf_nat_ipv4_manip_pkt, nf_nat_manip_to_inverse
from .range import (NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM,
                    NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED, NatRange)

if TYPE_CHECKING:
    from ..conntrack.core import ConntrackTable
    from ..packet.ipv4 import Packet

NF_NAT_MANIP_SRC, NF_NAT_MANIP_DST = 0, 1
NF_NAT_RANGE_PROTO_RANDOM_ALL = NF_NAT_RANGE_PROTO_RANDOM | NF_NAT_RANGE_PROTO_RANDOM_FULLY
NF_NAT_MAX_ATTEMPTS = 128
NF_NAT_HARDER_THRESH = NF_NAT_MAX_ATTEMPTS // 4
ALLOW_CLASH = (IPPROTO_ICMP, IPPROTO_UDP, 136)              # l4proto->allow_clash

# The iptables nat chain that each hook runs.
NAT_CHAIN = {NF_INET_PRE_ROUTING: "PREROUTING", NF_INET_LOCAL_OUT: "OUTPUT",
             NF_INET_POST_ROUTING: "POSTROUTING", NF_INET_LOCAL_IN: "INPUT"}


class NatRule(Protocol):
    """What the NAT hook reads of the rule the nat chain chose (nattrack.netfilter's Rule)."""
    @property
    def target(self) -> str: ...
    @property
    def nat_range(self) -> NatRange | None: ...


class NatRules(Protocol):
    """The rule set as the NAT hook asks it (nattrack.netfilter, a layer above this one)."""
    def first_match(self, table: str, chain: str, pkt: Packet, ctinfo: int | None,
                    iif: str | None, oif: str | None) -> NatRule | None: ...


def hook2manip(hook: int) -> int:
    """HOOK2MANIP(): POST_ROUTING and LOCAL_IN change the source, the others the destination."""
    return NF_NAT_MANIP_SRC if hook in (NF_INET_POST_ROUTING, NF_INET_LOCAL_IN) else NF_NAT_MANIP_DST


# hook2manip() of each hook number, for the per-packet path.
HOOK2MANIP = tuple(hook2manip(hook) for hook in range(NF_INET_POST_ROUTING + 1))


def nf_nat_initialized(ct: Conn, manip: int) -> bool:
    return bool(ct.status & (IPS_SRC_NAT_DONE if manip == NF_NAT_MANIP_SRC else IPS_DST_NAT_DONE))


# --- jhash2, for the deterministic choice of an address from a range ------------------

def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def jhash2(words: list[int], initval: int) -> int:
    """jhash2() of include/linux/jhash.h over 32-bit words."""
    M = 0xFFFFFFFF
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & M
    k = list(words)
    while len(k) > 3:
        a = (a + k[0]) & M
        b = (b + k[1]) & M
        c = (c + k[2]) & M
        a = (a - c) & M; a ^= _rol32(c, 4); c = (c + b) & M       # __jhash_mix
        b = (b - a) & M; b ^= _rol32(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= _rol32(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= _rol32(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= _rol32(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= _rol32(b, 4); b = (b + a) & M
        k = k[3:]
    if not k:
        return c
    if len(k) == 3:
        c = (c + k[2]) & M
    if len(k) >= 2:
        b = (b + k[1]) & M
    a = (a + k[0]) & M
    c ^= b; c = (c - _rol32(b, 14)) & M                             # __jhash_final
    a ^= c; a = (a - _rol32(c, 11)) & M
    b ^= a; b = (b - _rol32(a, 25)) & M
    c ^= b; c = (c - _rol32(b, 16)) & M
    a ^= c; a = (a - _rol32(c, 4)) & M
    b ^= a; b = (b - _rol32(a, 14)) & M
    c ^= b; c = (c - _rol32(b, 24)) & M
    return c


def _raw32(addr: int) -> int:
    """An IPv4 address as the kernel's little-endian CPU reads its network-order bytes."""
    return int.from_bytes(addr.to_bytes(4, "big"), "little")


# --- range tests -----------------------------------------------------------------------

def l4proto_in_range(t: Tuple, manip: int, lo: int, hi: int) -> bool:
    if t.proto == IPPROTO_ICMP:
        return lo <= t.sport <= hi
    if t.proto in PORT_PROTOS:
        port = t.sport if manip == NF_NAT_MANIP_SRC else t.dport
        return lo <= port <= hi
    return True


def nf_in_range(t: Tuple, rng: NatRange) -> bool:
    """nf_in_range(): the source fits the range (SRC manip only)."""
    if rng.flags & NF_NAT_RANGE_MAP_IPS and not rng.min_ip <= t.src <= rng.max_ip:
        return False
    if not rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
        return True
    return l4proto_in_range(t, NF_NAT_MANIP_SRC, rng.min_port, rng.max_port)


# --- uniqueness ------------------------------------------------------------------------

def nf_nat_used_tuple(table: ConntrackTable, t: Tuple, ct: Conn) -> bool:
    """nf_nat_used_tuple(): would the reply to t collide with another entry?"""
    reply = invert_tuple(t)
    return reply is None or table.tuple_taken(reply, ct)


def nf_nat_used_tuple_new(table: ConntrackTable, t: Tuple, ct: Conn) -> bool:
    """nf_nat_used_tuple_new(): like used_tuple, but for protocols that allow clash
    resolution an un-NATed flow that is our exact reverse is no clash (two first
    packets crossing each other)."""
    if not nf_nat_used_tuple(table, t, ct):
        return False
    if t.proto not in ALLOW_CLASH:
        return True
    reply = invert_tuple(t)
    found = table.find(t) or (table.find(reply) if reply is not None else None)
    if found is None:
        return False                     # the clashing entry went away
    other = found[0]
    if other.status & (IPS_NAT_MASK | IPS_SEQ_ADJUST):
        return True
    return other.orig != ct.reply


def _nf_nat_used_tuple_harder(table: ConntrackTable, t: Tuple, ct: Conn, attempts_left: int) -> bool:
    """nf_nat_used_tuple_harder(): in the last tries for a new TCP SYN, evict a
    SNATed entry in TIME_WAIT or later whose sequence numbers the new SYN is past."""
    reply = invert_tuple(t)
    assert reply is not None             # a NAT candidate inverts as the entry it is for does
    if (attempts_left > NF_NAT_HARDER_THRESH or t.proto != IPPROTO_TCP
            or ct.proto is None or ct.proto.state != TCP_CONNTRACK_SYN_SENT
            # 4589725502871e (v6.5): before it, a used port is simply taken
            or not table.profile.snat_evicts_closing):
        return table.tuple_taken(reply, ct)
    found = table.find(reply)
    if found is None:
        return False
    other, direction = found
    if direction == IP_CT_DIR_ORIGINAL or other is ct:
        return True
    if (other.proto.state < TCP_CONNTRACK_TIME_WAIT or other.status & (IPS_FIXED_TIMEOUT | IPS_DYING)
            or not other.status & IPS_SRC_NAT):
        return True
    advanced = ((ct.proto.seen[0].td_end - other.proto.seen[0].td_end) & 0xFFFFFFFF)
    if not 0 < advanced < 0x80000000:
        return True
    return not table.kill(other)


# --- choosing the new tuple ---------------------------------------------------------------

def find_appropriate_src(table: ConntrackTable, t: Tuple, rng: NatRange) -> Tuple | None:
    """find_appropriate_src(): reuse the mapping of another flow from the same source
    address, port and protocol (endpoint-independent mapping)."""
    for other in nat_net(table).same_source(t):
        src_part = invert_tuple(other.reply)
        if src_part is None:
            continue
        result = Tuple(src_part.src, t.dst, t.proto, src_part.sport, t.dport)
        if nf_in_range(result, rng):
            return result
    return None


def find_best_ips_proto(t: Tuple, rng: NatRange, manip: int) -> Tuple:
    """find_best_ips_proto(): a single address, or jhash of the source (and
    destination unless --persistent) scaled into the address range."""
    if not rng.flags & NF_NAT_RANGE_MAP_IPS:
        return t
    if rng.min_ip == rng.max_ip:
        chosen = rng.min_ip
    else:
        initval = 0 if rng.flags & NF_NAT_RANGE_PERSISTENT else _raw32(t.dst)
        j = jhash2([_raw32(t.src), 0, 0, 0], initval)
        dist = (rng.max_ip - rng.min_ip + 1) & 0xFFFFFFFF
        chosen = rng.min_ip + ((j * dist) >> 32)            # reciprocal_scale()
    return t._replace(src=chosen) if manip == NF_NAT_MANIP_SRC else t._replace(dst=chosen)


def nf_nat_l4proto_unique_tuple(table: ConntrackTable, t: Tuple, rng: NatRange, manip: int, ct: Conn) -> Tuple:
    """nf_nat_l4proto_unique_tuple(): search a free port or ICMP id.

    At most 248 candidates (rounds of 128, 64, 32, 16, 8 from fresh random
    offsets); if none is free the last candidate stays and the clash is found
    at confirm time, where the packet is dropped.
    """
    proto = t.proto
    specified = rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED
    if proto == IPPROTO_ICMP:
        lo, size = (rng.min_port, rng.max_port - rng.min_port + 1) if specified else (0, 65536)
        is_src_key = True
    elif proto in PORT_PROTOS:
        is_src_key = manip == NF_NAT_MANIP_SRC
        key = t.sport if is_src_key else t.dport
        if specified:
            lo, size = rng.min_port, rng.max_port - rng.min_port + 1
        elif manip == NF_NAT_MANIP_DST:
            return t                                     # no range: DNAT keeps the port
        elif key < 512:
            lo, size = 1, 511
        elif key < 1024:
            lo, size = 600, 424
        else:
            lo, size = 1024, 64512
    else:
        return t
    if (rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL or manip != NF_NAT_MANIP_DST
            # 0f1ae2821fa4 (v6.8): before it, DNAT also started at a random offset
            or not table.profile.dnat_range_from_start):
        off = table.rng.getrandbits(16)
    else:
        off = 0
    attempts = min(size, NF_NAT_MAX_ATTEMPTS)
    while True:
        for i in range(attempts):
            key = lo + off % size
            cand = t._replace(sport=key) if is_src_key else t._replace(dport=key)
            if not _nf_nat_used_tuple_harder(table, cand, ct, attempts - i):
                return cand
            off = (off + 1) & 0xFFFF
        if attempts >= size or attempts < 16:
            return cand
        attempts //= 2
        off = table.rng.getrandbits(16)


def forced_range(k: Tuple, manip: int) -> NatRange:
    """The kernel's own choice as a one-point range, as ctnetlink builds one from CTA_NAT_SRC
    or CTA_NAT_DST (nfnetlink_parse_nat_setup()): ``k`` is the tuple the connection's first
    packet had when the real kernel sent it (kernel mode's shadow, recorded sessions)."""
    if manip == NF_NAT_MANIP_SRC:
        if k.proto in PORT_PROTOS or k.proto == IPPROTO_ICMP:
            return NatRange(k.src, k.src, k.sport, k.sport, NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED)
        return NatRange(k.src, k.src, 0, 0, NF_NAT_RANGE_MAP_IPS)
    if k.proto in PORT_PROTOS:
        return NatRange(k.dst, k.dst, k.dport, k.dport, NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED)
    return NatRange(k.dst, k.dst, 0, 0, NF_NAT_RANGE_MAP_IPS)


def range_point(t: Tuple, rng: NatRange, manip: int) -> Tuple:
    """What get_unique_tuple() comes to for a one-point range: t with the range's address
    and, if given, port (or ICMP id) in the part ``manip`` changes."""
    port = rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED
    if manip == NF_NAT_MANIP_SRC:
        return t._replace(src=rng.min_ip, sport=rng.min_port) if port else t._replace(src=rng.min_ip)
    return t._replace(dst=rng.min_ip, dport=rng.min_port) if port else t._replace(dst=rng.min_ip)


def get_unique_tuple(table: ConntrackTable, orig: Tuple, rng: NatRange, ct: Conn, manip: int) -> Tuple:
    """get_unique_tuple(): the tuple this connection will have after NAT."""
    random_all = rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL
    if manip == NF_NAT_MANIP_SRC and not random_all:
        if nf_in_range(orig, rng):
            if not nf_nat_used_tuple_new(table, orig, ct):
                return orig                              # 1. keep it as it is
        else:
            t = find_appropriate_src(table, orig, rng)   # 2. reuse this source's mapping
            if t is not None and not nf_nat_used_tuple(table, t, ct):
                return t
    t = find_best_ips_proto(orig, rng, manip)            # 3. the address
    return nat_port_choice(table, t, rng, manip, ct)     # 4. and 5. the port


def nat_port_choice(table: ConntrackTable, t: Tuple, rng: NatRange, manip: int, ct: Conn) -> Tuple:
    """get_unique_tuple()'s last steps, once the address is chosen (lab 4 replaces them):
    keep the port (or ICMP id) if it is free and in the range, else search one
    (nf_nat_l4proto_unique_tuple()); with a random flag always search."""
    if not rng.flags & NF_NAT_RANGE_PROTO_RANDOM_ALL:    # 4. keep the port if free
        if rng.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            if (l4proto_in_range(t, manip, rng.min_port, rng.max_port)
                    and (rng.min_port == rng.max_port or not nf_nat_used_tuple(table, t, ct))):
                return t
        elif not nf_nat_used_tuple(table, t, ct):
            return t
    return nf_nat_l4proto_unique_tuple(table, t, rng, manip, ct)   # 5. search


def nf_nat_setup_info(table: ConntrackTable, ct: Conn, rng: NatRange, manip: int) -> int:
    """nf_nat_setup_info(): bind an unconfirmed entry; only its reply tuple changes.

    A connection in ``nat_forced(table)`` (kernel mode) is bound to the kernel's choice, a
    one-point range (forced_range()) as ctnetlink passes one.  get_unique_tuple() of such a
    range comes to its point; the search it may run on the way (a random draw, `found`
    counts) was the kernel's own, so the point is taken directly (range_point()).
    """
    if ct.is_confirmed():
        return NF_ACCEPT
    net = nat_net(table)
    curr = invert_tuple(ct.reply)
    assert curr is not None              # an entry's tuples invert: init_conntrack checked
    k = net.forced.get(ct.orig) if net.forced else None
    if k is not None:
        new = range_point(curr, forced_range(k, manip), manip)
    else:
        new = get_unique_tuple(table, curr, rng, ct, manip)
    if new != curr:
        reply = invert_tuple(new)
        assert reply is not None         # new differs from curr in addresses and ports only
        ct.reply = reply                                 # nf_conntrack_alter_reply()
        ct.status |= IPS_SRC_NAT if manip == NF_NAT_MANIP_SRC else IPS_DST_NAT
    if manip == NF_NAT_MANIP_SRC:
        net.add(ct)                                      # into nf_nat_bysource
        ct.status |= IPS_SRC_NAT_DONE
    else:
        ct.status |= IPS_DST_NAT_DONE
    return NF_ACCEPT


def nf_nat_alloc_null_binding(table: ConntrackTable, ct: Conn, hook: int) -> int:
    """__nf_nat_alloc_null_binding(): map to the current address, ports free to move."""
    manip = hook2manip(hook)
    if manip == NF_NAT_MANIP_DST and ct.orig.proto != IPPROTO_ICMP and not ct.is_confirmed():
        # What get_unique_tuple() comes to for this range: the address stays, and
        # without a port range a DST manip never moves a port, taken or not; only
        # the uniqueness check (and its `found` count) is left to do.
        table.tuple_taken(ct.reply, ct)      # nf_nat_used_tuple() of the current tuple
        ct.status |= IPS_DST_NAT_DONE
        return NF_ACCEPT
    ip = ct.reply.dst if manip == NF_NAT_MANIP_SRC else ct.reply.src
    return nf_nat_setup_info(table, ct, NatRange(ip, ip, 0, 0, NF_NAT_RANGE_MAP_IPS), manip)


def nf_nat_masquerade_ipv4(table: ConntrackTable, ct: Conn, rng: NatRange, oif: str | None, newsrc: int | None) -> int:
    """nf_nat_masquerade_ipv4(): SNAT to the output interface's address, remembering the interface."""
    if ct.orig.src == 0:
        return NF_ACCEPT                 # locally generated from 0.0.0.0: not masqueraded
    if not newsrc:
        table.log.append(f"{oif} ate my IP address")
        return NF_DROP
    ct.nat_oif = oif
    newrange = NatRange(newsrc, newsrc, rng.min_port, rng.max_port, rng.flags | NF_NAT_RANGE_MAP_IPS)
    return nf_nat_setup_info(table, ct, newrange, NF_NAT_MANIP_SRC)


# --- per packet -------------------------------------------------------------------------

def nf_nat_packet(ct: Conn, ctinfo: int, hook: int, pkt: Packet) -> int:
    """nf_nat_packet(): rewrite pkt to look like the inverse of the other direction."""
    manip = HOOK2MANIP[hook]
    statusbit = IPS_SRC_NAT if manip == NF_NAT_MANIP_SRC else IPS_DST_NAT
    if ctinfo >= IP_CT_IS_REPLY:
        statusbit ^= IPS_NAT_MASK        # a reply undoes the other side's manipulation
        other = ct.orig
    else:
        other = ct.reply
    if ct.status & statusbit:
        nf_nat_manip_to_inverse(pkt, other, manip)
    return NF_ACCEPT


def nf_nat_ipv4_fn(table: ConntrackTable, ruleset: NatRules | None, pkt: Packet, hook: int, oif: str | None,
                   masq_source: Callable[[str | None, int], int | None]) -> int:
    """nf_nat_ipv4_fn() + nf_nat_inet_fn(): the NAT hook.

    ``masq_source(oif, daddr)`` answers which address MASQUERADE uses
    (inet_select_addr on the output interface), or None if it has none.
    """
    ct, ctinfo = pkt.ct, pkt.ctinfo
    if ct is None:
        return NF_ACCEPT                 # INVALID packets are never translated
    assert ctinfo is not None            # conntrack_in sets pkt.ct and pkt.ctinfo together
    if ctinfo in (IP_CT_RELATED, IP_CT_RELATED_REPLY) and pkt.proto == IPPROTO_ICMP:
        return NF_ACCEPT if nf_nat_icmp_reply_translation(pkt, ct, ctinfo, hook, hook2manip(hook)) else NF_DROP
    manip = HOOK2MANIP[hook]
    if ctinfo in (IP_CT_NEW, IP_CT_RELATED, IP_CT_RELATED_REPLY) and not nf_nat_initialized(ct, manip):
        # The first packet in this direction of manipulation: the rules decide, once.
        rule = ruleset.first_match("nat", NAT_CHAIN[hook], pkt, ctinfo, pkt.iif, oif) if ruleset else None
        if rule is not None and rule.nat_range is not None:   # an ACCEPT maps nothing: null binding
            if rule.target == "MASQUERADE":
                verdict = nf_nat_masquerade_ipv4(table, ct, rule.nat_range, oif, masq_source(oif, pkt.dst))
            else:
                verdict = nf_nat_setup_info(table, ct, rule.nat_range, manip)
            if verdict != NF_ACCEPT:
                return verdict
        if not nf_nat_initialized(ct, manip):
            nf_nat_alloc_null_binding(table, ct, hook)
    elif _oif_changed(ct, ctinfo, hook, oif):
        table.kill(ct)
        return NF_DROP
    return nf_nat_packet(ct, ctinfo, hook, pkt)


def _oif_changed(ct: Conn, ctinfo: int, hook: int, oif: str | None) -> bool:
    """nf_nat_oif_changed(): a masqueraded flow now leaves by another interface."""
    return (ct.nat_oif is not None and hook == NF_INET_POST_ROUTING
            and ctinfo < IP_CT_IS_REPLY and ct.nat_oif != oif)
