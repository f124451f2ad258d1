"""A router's interfaces and routes: the longest-prefix lookup and the source address.

Models the part of net/ipv4/route.c and fib_frontend.c a router needs: fib_lookup()
(the longest matching prefix), inet_select_addr() (the address an answer leaves from)
and inet_make_mask() (include/linux/inetdevice.h).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..conntrack.tuple import ip2int


@dataclass
class Interface:
    name: str
    addrs: list[tuple[int, int]]          # (address, prefix length)
    mtu: int = 1500


@dataclass
class Route:
    net: int
    plen: int
    iface: str
    gateway: int | None = None
    mask: int = 0

    def __post_init__(self) -> None:
        self.mask = inet_make_mask(self.plen)


def inet_make_mask(plen: int) -> int:
    """inet_make_mask() (include/linux/inetdevice.h): the netmask of a prefix length."""
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def parse_cidr(text: str) -> tuple[int, int]:
    addr, _, plen = text.partition("/")
    return ip2int(addr), int(plen or 32)


def fib_lookup(routes: list[Route], daddr: int) -> Route | None:
    """fib_lookup(): the longest matching prefix (``routes`` sorted longest first)."""
    for r in routes:
        if daddr & r.mask == r.net:
            return r
    return None


def inet_select_addr(routes: list[Route], iface: Interface | None, daddr: int) -> int | None:
    """inet_select_addr(): the interface address on the next hop's subnet, else its first."""
    if iface is None or not iface.addrs:
        return None
    r = fib_lookup(routes, daddr)
    nexthop = r.gateway if r is not None and r.gateway else daddr
    for addr, plen in iface.addrs:
        if nexthop & inet_make_mask(plen) == addr & inet_make_mask(plen):
            return addr
    return iface.addrs[0][0]


def is_broadcast(ifaces, addr: int) -> bool:
    """The limited broadcast, or the directed broadcast of a subnet of ``ifaces``
    (prefixes shorter than /31 have one)."""
    return addr == 0xFFFFFFFF or any(
        plen < 31 and addr | inet_make_mask(plen) == 0xFFFFFFFF
        and addr & inet_make_mask(plen) == a & inet_make_mask(plen)
        for i in ifaces for a, plen in i.addrs)
