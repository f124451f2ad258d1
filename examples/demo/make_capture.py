"""Build the demo capture: a small home network's traffic as its router saw it arrive.

LAN "lan" 10.0.0.0/24 (router 10.0.0.1, hosts .10 and .11), uplink "wan"
203.0.113.0/24 (router 203.0.113.1, server 203.0.113.10).  Only what ARRIVES
at the router is recorded (the replies are addressed to the router's public
address, as after MASQUERADE).  Run: python examples/demo/make_capture.py OUT.pcapng
"""
import sys

from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from nattrack.packet.pcapio import PcapngWriter

T0 = 1767225600.0          # 2026-01-01 00:00:00 UTC
H1, H2, ROUTER_WAN, SERVER = "10.0.0.10", "10.0.0.11", "203.0.113.1", "203.0.113.10"
LAN = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:01")
LAN2 = Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:00:01")
WAN = Ether(src="02:00:00:00:01:0a", dst="02:00:00:00:01:01")


def story():
    """(seconds after T0, interface, frame) in the order they arrive."""
    yield 0.000, "lan", LAN / IP(src=H1, dst=SERVER) / ICMP(type=8, id=0x1234, seq=1) / (b"x" * 56)
    yield 0.001, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=0x1234, seq=1) / (b"x" * 56)
    # A UDP question and its answer, then another exchange 3 s later: the flow is a stream.
    yield 1.000, "lan", LAN / IP(src=H1, dst=SERVER) / UDP(sport=41000, dport=53) / b"query-1"
    yield 1.002, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / UDP(sport=53, dport=41000) / b"answer-1"
    yield 4.000, "lan", LAN / IP(src=H1, dst=SERVER) / UDP(sport=41000, dport=53) / b"query-2"
    yield 4.002, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / UDP(sport=53, dport=41000) / b"answer-2"
    # The second host uses the same source port to the same server: a port clash.
    yield 5.000, "lan", LAN2 / IP(src=H2, dst=SERVER) / UDP(sport=41000, dport=53) / b"query-3"
    # A web request: handshake, request, response, the client closes first.
    c, s = 1000, 5000
    yield 6.000, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40000, dport=80, flags="S", seq=c, window=64240)
    yield 6.001, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=80, dport=40000, flags="SA", seq=s, ack=c + 1, window=65160)
    yield 6.002, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40000, dport=80, flags="A", seq=c + 1, ack=s + 1, window=502)
    req = b"GET / HTTP/1.0\r\n\r\n"
    yield 6.003, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40000, dport=80, flags="PA", seq=c + 1, ack=s + 1, window=502) / req
    body = b"HTTP/1.0 200 OK\r\n\r\nhello"
    yield 6.004, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=80, dport=40000, flags="PA", seq=s + 1, ack=c + 1 + len(req), window=509) / body
    c2, s2 = c + 1 + len(req), s + 1 + len(body)
    yield 6.005, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40000, dport=80, flags="FA", seq=c2, ack=s2, window=502)
    yield 6.006, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=80, dport=40000, flags="A", seq=s2, ack=c2 + 1, window=509)
    yield 6.007, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=80, dport=40000, flags="FA", seq=s2, ack=c2 + 1, window=509)
    yield 6.008, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40000, dport=80, flags="A", seq=c2 + 1, ack=s2 + 1, window=502)
    # UDP to a closed port: the server's ICMP error quotes the translated datagram.
    probe = IP(src=H1, dst=SERVER) / UDP(sport=41002, dport=9999) / b"?"
    yield 7.000, "lan", LAN / probe
    quoted = IP(raw(IP(src=ROUTER_WAN, dst=SERVER, ttl=63) / UDP(sport=41002, dport=9999) / b"?"))
    yield 7.001, "wan", WAN / IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=3, code=3) / quoted
    # A stray FIN with no connection: INVALID, so NAT leaves it alone.
    yield 8.000, "lan", LAN / IP(src=H1, dst=SERVER) / TCP(sport=40001, dport=80, flags="F", seq=77)


def main(path: str) -> None:
    with PcapngWriter(path) as w:
        w.add_interface("lan")
        w.add_interface("wan")
        for t, iface, frame in story():
            w.write(T0 + t, iface, bytes(frame))


if __name__ == "__main__":
    main(sys.argv[1])
