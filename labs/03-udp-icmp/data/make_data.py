"""Make the lab's captures, as the basic router saw the packets arrive:

  udp.pcapng     UDP only: a question and answer, a flow that becomes a stream (with a
                 reply exactly 2 s after the first packet), one-way flows
  ping.pcapng    ICMP queries only: echo, timestamp, an unsolicited echo reply
  errors.pcapng  ICMP errors about pings and TCP connections, one forged, one misaddressed,
                 one from the private side (RELATED in the original direction)

Run from the repository: .venv/bin/python labs/03-udp-icmp/data/make_data.py
"""
import os

from scapy.all import raw

from nattrack.exercises.story import (H1, H2, ICMP, IP, ROUTER_WAN, SERVER, TCP, Story, udp_back,
                                 udp_out)

HERE = os.path.dirname(os.path.abspath(__file__))
FAR = "198.51.100.1"          # a router beyond the server's link (errors come from it)


def quote(pkt):
    """The packet as it left the router (after MASQUERADE), to be quoted in an error."""
    return IP(raw(pkt))


udp = Story()
udp_out(udp, 0.000, H1, 41000, 53, b"query")
udp_back(udp, 0.002, 53, 41000, b"answer")
udp_out(udp, 1.000, H1, 41001, 7, b"one")                 # becomes a stream
udp_back(udp, 1.001, 7, 41001, b"one")
udp_out(udp, 2.500, H1, 41001, 7, b"two")                 # replied, 1.5 s old: not yet
udp_back(udp, 3.000, 7, 41001, b"two")                    # exactly 2 s old: still not
udp_out(udp, 3.500, H1, 41001, 7, b"three")               # 2.5 s old: a stream, ASSURED
udp_back(udp, 3.501, 7, 41001, b"three")
udp_out(udp, 4.000, H2, 41002, 9999, b"nobody home")     # never answered
udp_out(udp, 9.000, H2, 41002, 9999, b"again")           # refreshes, still UNREPLIED
udp_out(udp, 10.00, H1, 41003, 123, b"ntp")              # answered once, late
udp_back(udp, 13.00, 123, 41003, b"ntp")
udp.write(os.path.join(HERE, "udp.pcapng"))

ping = Story()
ping.lan(0.0, IP(src=H1, dst=SERVER) / ICMP(type=8, id=0x1234, seq=1) / (b"x" * 56))
ping.wan(0.001, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=0x1234, seq=1) / (b"x" * 56))
ping.lan(1.0, IP(src=H1, dst=SERVER) / ICMP(type=8, id=0x1234, seq=2) / (b"x" * 56))
ping.wan(1.001, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=0x1234, seq=2) / (b"x" * 56))
ping.lan(2.0, IP(src=H2, dst=SERVER) / ICMP(type=13, id=77, seq=1) / (b"\0" * 12))
ping.wan(2.001, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=14, id=77, seq=1) / (b"\0" * 12))
ping.wan(3.0, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=999, seq=1))   # nobody asked
ping.lan(4.0, IP(src=H2, dst=SERVER) / ICMP(type=17, id=78, seq=1) / (b"\0" * 4))
ping.lan(5.0, IP(src=H1, dst=SERVER) / ICMP(type=6, id=5, seq=1))            # no answer type
ping.write(os.path.join(HERE, "ping.pcapng"))

err = Story()
# A ping whose TTL runs out beyond the server's link: time exceeded quotes the echo request.
err.lan(0.0, IP(src=H1, dst="198.51.100.7", ttl=3) / ICMP(type=8, id=0x4321, seq=1))
err.wan(0.010, IP(src=FAR, dst=ROUTER_WAN) / ICMP(type=11, code=0) /
        quote(IP(src=ROUTER_WAN, dst="198.51.100.7", ttl=1) / ICMP(type=8, id=0x4321, seq=1)))
# A SYN to an unreachable host: host unreachable quotes the SYN.
err.lan(1.0, IP(src=H1, dst="198.51.100.8") / TCP(sport=40100, dport=80, flags="S", seq=1000))
err.wan(1.010, IP(src=FAR, dst=ROUTER_WAN) / ICMP(type=3, code=1) /
        quote(IP(src=ROUTER_WAN, dst="198.51.100.8", ttl=63) / TCP(sport=40100, dport=80, flags="S", seq=1000)))
# A forged error about a connection that does not exist: INVALID.
err.wan(2.0, IP(src=FAR, dst=ROUTER_WAN) / ICMP(type=3, code=3) /
        quote(IP(src=ROUTER_WAN, dst=SERVER) / TCP(sport=40999, dport=22, flags="S", seq=1)))
# An error about the SYN above, but addressed to someone else than the router: INVALID.
err.wan(3.0, IP(src=FAR, dst="203.0.113.50") / ICMP(type=3, code=1) /
        quote(IP(src=ROUTER_WAN, dst="198.51.100.8", ttl=63) / TCP(sport=40100, dport=80, flags="S", seq=1000)))
# The server opens nothing; h1 connects, the server answers, h1's stack rejects the answer
# with a port unreachable of its own: an error in the ORIGINAL direction (RELATED).
err.lan(4.0, IP(src=H1, dst=SERVER) / TCP(sport=40200, dport=80, flags="S", seq=5000))
err.wan(4.001, IP(src=SERVER, dst=ROUTER_WAN) / TCP(sport=80, dport=40200, flags="SA", seq=9000, ack=5001))
err.lan(4.002, IP(src=H1, dst=SERVER) / ICMP(type=3, code=3) /
        quote(IP(src=SERVER, dst=H1, ttl=63) / TCP(sport=80, dport=40200, flags="SA", seq=9000, ack=5001)))
# An error quoting an ICMP error: never related to anything.
err.wan(5.0, IP(src=FAR, dst=ROUTER_WAN) / ICMP(type=3, code=1) /
        quote(IP(src=ROUTER_WAN, dst=FAR) / ICMP(type=3, code=3) / (b"\0" * 8)))
err.write(os.path.join(HERE, "errors.pcapng"))
