"""Make the scenarios' recorded traffic: what reaches the router r of topologies/trouble.py
on ntr-lan and ntr-wan in a healthy network (the replies are addressed to r's public
address, as after MASQUERADE), one pcapng per scenario.

The frames h2 sends carry the checksum its veth leaves to tx offload (only the
pseudo-header sum, as the user-space bridge u passes it on) in offload-checksums.pcapng;
the grader completes them only when a fix turns h2's tx offload off.

Run: python labs/06-troubleshooting/data/make_captures.py   (writes next to this file)
"""
import sys
from pathlib import Path

from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from nattrack.exercises.scenarios import write_captures
from nattrack.packet.checksum import ones_sum, pseudo_header_sum

T0 = 1767225600.0          # 2026-01-01 00:00:00 UTC
PUB, SRV = "203.0.113.1", "203.0.113.10"
H1, H2, WEB = "10.0.0.10", "10.0.0.11", "10.0.0.20"
R_LAN_MAC, R_WAN_MAC = "02:00:00:00:00:01", "02:00:00:00:01:01"
MAC = {H1: "02:00:00:00:00:0a", H2: "02:00:00:00:00:0b", WEB: "02:00:00:00:00:14",
       SRV: "02:00:00:00:01:0a"}


def lan(src, pkt):
    return "ntr-lan", Ether(src=MAC[src], dst=R_LAN_MAC) / pkt


def wan(pkt):
    return "ntr-wan", Ether(src=MAC[SRV], dst=R_WAN_MAC) / pkt


def tcp_session(client, cport, server_addr, sport, to_server, to_client, c0, s0):
    """A whole HTTP exchange: handshake, GET, answer, the client closes first.
    ``to_server(pkt)``/``to_client(pkt)`` place each packet on the interface it reaches r by."""
    req = b"GET / HTTP/1.0\r\n\r\n"
    body = b"HTTP/1.0 200 OK\r\n\r\nhello from the lab\n"
    c, s = c0, s0
    yield 0.000, to_server(TCP(sport=cport, dport=sport, flags="S", seq=c, window=64240))
    yield 0.001, to_client(TCP(sport=sport, dport=cport, flags="SA", seq=s, ack=c + 1, window=65160))
    yield 0.002, to_server(TCP(sport=cport, dport=sport, flags="A", seq=c + 1, ack=s + 1, window=502))
    yield 0.003, to_server(TCP(sport=cport, dport=sport, flags="PA", seq=c + 1, ack=s + 1, window=502) / req)
    yield 0.004, to_client(TCP(sport=sport, dport=cport, flags="PA", seq=s + 1, ack=c + 1 + len(req), window=509) / body)
    c2, s2 = c + 1 + len(req), s + 1 + len(body)
    yield 0.005, to_server(TCP(sport=cport, dport=sport, flags="FA", seq=c2, ack=s2, window=502))
    yield 0.006, to_client(TCP(sport=sport, dport=cport, flags="FA", seq=s2, ack=c2 + 1, window=509))
    yield 0.007, to_server(TCP(sport=cport, dport=sport, flags="A", seq=c2 + 1, ack=s2 + 1, window=502))


def outbound(host, base_port, with_strays=False):
    """``host`` pings srv, asks the UDP echo service, fetches a page; srv answers to PUB."""
    out = lambda l4: lan(host, IP(src=host, dst=SRV) / l4)          # noqa: E731
    back = lambda l4: wan(IP(src=SRV, dst=PUB) / l4)                # noqa: E731
    yield 0.0, *out(ICMP(type=8, id=0x0600 + base_port % 256, seq=1) / (b"x" * 56))
    yield 0.001, *back(ICMP(type=0, id=0x0600 + base_port % 256, seq=1) / (b"x" * 56))
    yield 1.0, *out(UDP(sport=base_port, dport=7) / b"question\n")
    yield 1.001, *back(UDP(sport=7, dport=base_port) / b"srv: question\n")
    for t, (iface, frame) in tcp_session(host, base_port + 1, SRV, 80, out, back, 1000, 5000):
        yield 2.0 + t, iface, frame
    # Someone outside tries a new connection to a private address: the filter stops it.
    yield 3.0, *wan(IP(src=SRV, dst=H1) / TCP(sport=4444, dport=22, flags="S", seq=9))
    if with_strays:
        # Segments that belong to no connection: a late FIN and a late RST+ACK.  conntrack
        # calls them INVALID, so NAT never touches them.
        yield 4.0, *out(TCP(sport=base_port + 2, dport=80, flags="FA", seq=77, ack=88))
        yield 4.5, *out(TCP(sport=base_port + 3, dport=80, flags="R", seq=99))


def port_forward():
    """srv opens 203.0.113.1:8080, which r forwards to web:80; web answers through r."""
    to_web = lambda l4: wan(IP(src=SRV, dst=PUB) / l4)                          # noqa: E731
    from_web = lambda l4: lan(WEB, IP(src=WEB, dst=SRV) / l4)                     # noqa: E731

    def to_server(l4):
        l4 = l4.copy()
        l4.dport = 8080
        return to_web(l4)

    def to_client(l4):
        return from_web(l4)
    for t, (iface, frame) in tcp_session(SRV, 50000, PUB, 80, to_server, to_client, 3000, 7000):
        yield t, iface, frame


def offloaded(frame):
    """The frame as h2's veth leaves it with tx checksum offload: the L4 checksum field holds
    only the pseudo-header sum (the NIC -- here nobody -- would finish it)."""
    data = bytearray(raw(frame))
    ip = IP(data[14:])
    if ip.proto not in (6, 17):
        return data
    l4 = 14 + ip.ihl * 4
    at = l4 + (16 if ip.proto == 6 else 6)
    length = ip.len - ip.ihl * 4
    src = int.from_bytes(bytes(map(int, ip.src.split("."))), "big")
    dst = int.from_bytes(bytes(map(int, ip.dst.split("."))), "big")
    partial = ones_sum(b"", pseudo_header_sum(src, dst, ip.proto, length))
    data[at], data[at + 1] = partial >> 8, partial & 0xFF
    return data


STORIES = {
    "no-masquerade": lambda: outbound(H1, 41000),
    "forwarding-off": lambda: outbound(H1, 41100),
    "filter-drops-replies": lambda: outbound(H1, 41200),
    "asymmetric-route": port_forward,
    "offload-checksums": lambda: outbound(H2, 42000),
    "invalid-leak": lambda: outbound(H1, 41300, with_strays=True),
}


def frame_bytes(name, frame):
    """What r receives: h2's frames in offload-checksums as its veth leaves them."""
    if name == "offload-checksums" and frame[IP].src == H2:
        return bytes(offloaded(frame))
    return bytes(frame)


if __name__ == "__main__":
    write_captures(sys.argv[1:], Path(__file__).resolve().parent, STORIES,
                   ("ntr-lan", "ntr-wan"), T0, frame_bytes)
