"""The connection object, its status bits and the per-packet ctinfo.

Models struct nf_conn (include/net/netfilter/nf_conntrack.h) and the enums of
include/uapi/linux/netfilter/nf_conntrack_common.h.

A Conn holds no reference to anything that refers back to it (no cycles), so
CPython frees it by reference counting alone and the cyclic garbage collector
never has to walk a million of them (see nattrack.conntrack.core.tune_gc).
"""
from __future__ import annotations

from typing import Any

from .tuple import Tuple

# The kernel's tick rate (CONFIG_HZ of Debian's and this CI's kernels).  Deadlines
# are kept in jiffies so that remaining times floor to the same integer seconds
# conntrack(8) prints.
HZ = 250


def jiffies(seconds: float) -> int:
    """The tick count at a clock reading in seconds."""
    return int(seconds * HZ)


# enum ip_conntrack_status: bit numbers and masks.
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_SEQ_ADJUST = 1 << 6
IPS_SRC_NAT_DONE = 1 << 7
IPS_DST_NAT_DONE = 1 << 8
IPS_DYING = 1 << 9
IPS_FIXED_TIMEOUT = 1 << 10
IPS_TEMPLATE = 1 << 11
IPS_NAT_CLASH = 1 << 12          # in-kernel alias of IPS_UNTRACKED
IPS_HELPER = 1 << 13
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_NAT_DONE_MASK = IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE

STATUS_NAMES = {
    IPS_EXPECTED: "EXPECTED", IPS_SEEN_REPLY: "SEEN_REPLY", IPS_ASSURED: "ASSURED",
    IPS_CONFIRMED: "CONFIRMED", IPS_SRC_NAT: "SRC_NAT", IPS_DST_NAT: "DST_NAT",
    IPS_SEQ_ADJUST: "SEQ_ADJUST", IPS_SRC_NAT_DONE: "SRC_NAT_DONE",
    IPS_DST_NAT_DONE: "DST_NAT_DONE", IPS_DYING: "DYING", IPS_FIXED_TIMEOUT: "FIXED_TIMEOUT",
    IPS_TEMPLATE: "TEMPLATE", IPS_NAT_CLASH: "NAT_CLASH", IPS_HELPER: "HELPER",
    IPS_OFFLOAD: "OFFLOAD", IPS_HW_OFFLOAD: "HW_OFFLOAD",
}

# enum ip_conntrack_info.  A packet without a conntrack is INVALID (ct is None).
IP_CT_ESTABLISHED = 0
IP_CT_RELATED = 1
IP_CT_NEW = 2
IP_CT_ESTABLISHED_REPLY = 3      # == IP_CT_IS_REPLY
IP_CT_RELATED_REPLY = 4
IP_CT_IS_REPLY = 3
IP_CT_UNTRACKED = 7              # notrack (raw table): no conntrack, and not INVALID either
CTINFO_NAMES = {0: "ESTABLISHED", 1: "RELATED", 2: "NEW", 3: "ESTABLISHED_REPLY",
                4: "RELATED_REPLY", 7: "UNTRACKED", None: "INVALID"}

# enum ip_conntrack_dir
IP_CT_DIR_ORIGINAL = 0
IP_CT_DIR_REPLY = 1

# NF_CT_STATE_* bits used by -m conntrack --ctstate / -m state --state.
CTSTATE_INVALID = 1 << 0
CTSTATE_UNTRACKED = 1 << 6


# NF_CT_STATE_BIT(ctinfo) by ctinfo: ESTABLISHED=2, RELATED=4, NEW=8 (either direction);
# IP_CT_UNTRACKED gives NF_CT_STATE_UNTRACKED_BIT (xt_conntrack, nft_ct_get_eval()).
_STATE_BITS = (2, 4, 8, 2, 4, 0, 0, CTSTATE_UNTRACKED)


def ctstate_bit(ctinfo: int | None) -> int:
    """NF_CT_STATE_BIT(ctinfo): ESTABLISHED=2, RELATED=4, NEW=8; INVALID=1; UNTRACKED=64."""
    if ctinfo is None:
        return CTSTATE_INVALID
    return _STATE_BITS[ctinfo]


def ctinfo_dir(ctinfo: int) -> int:
    return IP_CT_DIR_REPLY if ctinfo >= IP_CT_IS_REPLY else IP_CT_DIR_ORIGINAL


# Event bits (enum ip_conntrack_events), cached per packet and delivered at once.
IPCT_NEW = 1 << 0
IPCT_RELATED = 1 << 1
IPCT_DESTROY = 1 << 2
IPCT_REPLY = 1 << 3
IPCT_ASSURED = 1 << 4
IPCT_PROTOINFO = 1 << 5
IPCT_NATSEQADJ = 1 << 8
IPCT_MARK = 1 << 10


class Conn:
    """struct nf_conn: two tuples, status, an absolute deadline and protocol state.

    ``timeout`` is an absolute deadline in jiffies on the table's clock once the
    entry is confirmed; while unconfirmed it holds the relative value that
    confirmation adds ``now`` to (__nf_ct_refresh_acct / __nf_conntrack_confirm).
    """
    __slots__ = ("orig", "reply", "status", "timeout", "proto", "mark", "ident",
                 "nat_oif", "ecache", "counters")

    def __init__(self, orig: Tuple, reply: Tuple, ident: int | None = None) -> None:
        self.orig = orig
        self.reply = reply
        self.status = 0
        self.timeout = 0
        self.proto: Any = None   # TcpState (TCP), stream_ts in jiffies (UDP), GreState (GRE)
        self.mark = 0
        self.ident = ident       # an id given from outside (parsed output), else derived
        self.nat_oif: str | None = None  # MASQUERADE: the output interface recorded at set-up
        self.ecache = 0          # events cached for the packet being processed
        self.counters: list[int] | None = None  # [orig packets, orig bytes, reply packets, reply bytes]

    @property
    def id(self) -> int:
        """What `conntrack -o id` prints: like nf_ct_get_id(), a hash of the object's address."""
        if self.ident is not None:
            return self.ident
        return hash((id(self), 0x6E66)) & 0xFFFFFFFF

    def tuple(self, direction: int) -> Tuple:
        return self.reply if direction else self.orig

    def is_confirmed(self) -> bool:
        return bool(self.status & IPS_CONFIRMED)

    def remaining(self, now_j: int) -> int:
        """nf_ct_expires() / HZ: whole seconds left at jiffies now_j, never negative."""
        if not self.status & IPS_CONFIRMED:
            return self.timeout // HZ
        return max(0, self.timeout - now_j) // HZ

    def is_expired(self, now_j: int) -> bool:
        """nf_ct_is_expired(): the deadline has been reached."""
        return self.timeout - now_j <= 0

    def status_names(self) -> list[str]:
        return [name for bit, name in STATUS_NAMES.items() if self.status & bit]

    def __repr__(self) -> str:
        return f"<Conn {self.orig!r} -> {self.reply!r} status={'|'.join(self.status_names())}>"
