"""Write the small recorded captures labs replay (each lab's ``data/make_data.py``).

A story is what arrives at the router ``r`` of the ``basic`` topology, packet by
packet, on its interfaces' own names: ``ntr-lan`` 10.0.0.0/24 (router 10.0.0.1, hosts
.10 .11 .12), ``ntr-wan`` 203.0.113.0/24 (router 203.0.113.1, server 203.0.113.10).
Replies are addressed to the router's public address, as after MASQUERADE, so a
capture replays with the live lab's own rules file::

    nattrack replay data/X.pcapng --iface ntr-lan=10.0.0.1/24 --iface ntr-wan=203.0.113.1/24 \\
        --rules examples/rules/basic.rules -E -L
"""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from ..packet.pcapio import PcapngWriter

T0 = 1767225600.0                       # 2026-01-01 00:00:00 UTC
H1, H2, H3 = "10.0.0.10", "10.0.0.11", "10.0.0.12"
ROUTER_LAN, ROUTER_WAN, SERVER = "10.0.0.1", "203.0.113.1", "203.0.113.10"
IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
_LAN_MAC = {H1: "02:00:00:00:00:0a", H2: "02:00:00:00:00:0b", H3: "02:00:00:00:00:0c"}
_ROUTER_LAN_MAC, _ROUTER_WAN_MAC = "02:00:00:00:00:01", "02:00:00:00:01:01"
_WAN_MAC = "02:00:00:00:01:0a"


class Story:
    """Frames in arrival order; ``t`` is seconds after T0."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, str, bytes]] = []

    def lan(self, t: float, pkt) -> None:
        src = pkt[IP].src
        self.frames.append((t, "ntr-lan", bytes(Ether(src=_LAN_MAC.get(src, "02:00:00:00:00:ff"),
                                                      dst=_ROUTER_LAN_MAC) / pkt)))

    def wan(self, t: float, pkt) -> None:
        self.frames.append((t, "ntr-wan", bytes(Ether(src=_WAN_MAC, dst=_ROUTER_WAN_MAC) / pkt)))

    def write(self, path: str) -> None:
        with PcapngWriter(path) as w:
            for name in IFACES:
                w.add_interface(name)
            for t, iface, frame in sorted(self.frames, key=lambda f: f[0]):
                w.write(T0 + t, iface, frame)


class TcpConn:
    """One TCP connection between a private host and the server, with sequence numbers
    kept right (``c`` client side, ``s`` server side)."""

    def __init__(self, story: Story, host: str, sport: int, dport: int = 80,
                 isn_c: int = 1000, isn_s: int = 5000) -> None:
        self.st, self.host, self.sport, self.dport = story, host, sport, dport
        self.c, self.s = isn_c, isn_s

    def out(self, t: float, flags: str, data: bytes = b"", seq: int | None = None,
            ack: int | None = None, window: int = 502) -> None:
        p = IP(src=self.host, dst=SERVER) / TCP(sport=self.sport, dport=self.dport, flags=flags,
                                                 seq=self.c if seq is None else seq,
                                                 ack=(self.s if ack is None else ack) if "A" in flags else 0,
                                                 window=window)
        self.st.lan(t, p / data if data else p)
        self.c += len(data) + ("S" in flags) + ("F" in flags)

    def back(self, t: float, flags: str, data: bytes = b"", seq: int | None = None,
             ack: int | None = None, window: int = 509) -> None:
        p = IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=self.dport, dport=self.sport, flags=flags,
                                                  seq=self.s if seq is None else seq,
                                                  ack=(self.c if ack is None else ack) if "A" in flags else 0,
                                                  window=window)
        self.st.wan(t, p / data if data else p)
        self.s += len(data) + ("S" in flags) + ("F" in flags)

    def handshake(self, t: float) -> None:
        self.out(t, "S", window=64240)
        self.back(t + 0.001, "SA", window=65160)
        self.out(t + 0.002, "A")


def udp_out(story: Story, t: float, host: str, sport: int, dport: int, data: bytes = b"q",
            dst: str = SERVER) -> None:
    story.lan(t, IP(src=host, dst=dst) / UDP(sport=sport, dport=dport) / data)


def udp_back(story: Story, t: float, sport: int, dport: int, data: bytes = b"a",
             src: str = SERVER) -> None:
    story.wan(t, IP(src=src, dst=ROUTER_WAN) / UDP(sport=sport, dport=dport) / data)


__all__ = ["Story", "TcpConn", "udp_out", "udp_back", "IFACES", "T0", "H1", "H2", "H3",
           "ROUTER_LAN", "ROUTER_WAN", "SERVER", "ICMP", "IP", "TCP", "UDP"]
