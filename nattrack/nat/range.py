"""NAT ranges: what a SNAT/DNAT/MASQUERADE target asks nf_nat_setup_info() for.

Models struct nf_nat_range2 and its flags (include/uapi/linux/netfilter/nf_nat.h),
IPv4 part.  NAT owns the type; the rule parsers above it build ranges.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..conntrack.tuple import int2ip

NF_NAT_RANGE_MAP_IPS = 0x01
NF_NAT_RANGE_PROTO_SPECIFIED = 0x02
NF_NAT_RANGE_PROTO_RANDOM = 0x04
NF_NAT_RANGE_PERSISTENT = 0x08
NF_NAT_RANGE_PROTO_RANDOM_FULLY = 0x10


@dataclass(frozen=True)
class NatRange:
    """struct nf_nat_range2 (IPv4 part): addresses and ports as host-order ints."""
    min_ip: int = 0
    max_ip: int = 0
    min_port: int = 0
    max_port: int = 0
    flags: int = 0

    def __str__(self) -> str:
        out = ""
        if self.flags & NF_NAT_RANGE_MAP_IPS:
            out = int2ip(self.min_ip)
            if self.max_ip != self.min_ip:
                out += "-" + int2ip(self.max_ip)
        if self.flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            ports = str(self.min_port) if self.min_port == self.max_port else f"{self.min_port}-{self.max_port}"
            out += f":{ports}"
        return out
