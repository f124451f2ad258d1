"""Make the incidents' recorded traffic: what reaches the node r of topologies/incidents.py
on ntr-lan, ntr-svc and ntr-wan, one pcapng per incident (the grader replays it through
the engine, healthy until the incident's break_at, broken after, with the student's fix
from fix_at: scenarios/NAME.toml).  Answers are recorded only where the healthy network
(or the fixed one) gets them: after be1 is gone nobody answers as be1.

Run: python labs/07-incidents/data/make_captures.py   (writes next to this file)
"""
import sys
from pathlib import Path

from scapy.all import IP, TCP, UDP, Ether

from nattrack.packet.pcapio import PcapngWriter

T0 = 1767225600.0          # 2026-01-01 00:00:00 UTC
PUB, SRV = "203.0.113.1", "203.0.113.10"
H1, H2, BE1, BE2 = "10.0.0.10", "10.0.0.11", "10.1.0.11", "10.1.0.12"
MAC = {H1: "02:00:00:00:00:0a", H2: "02:00:00:00:00:0b", BE1: "02:00:00:00:02:0b",
       BE2: "02:00:00:00:02:0c", SRV: "02:00:00:00:01:0a"}
R_MAC = {"ntr-lan": "02:00:00:00:00:01", "ntr-svc": "02:00:00:00:02:01",
         "ntr-wan": "02:00:00:00:01:01"}
IFACE = {H1: "ntr-lan", H2: "ntr-lan", BE1: "ntr-svc", BE2: "ntr-svc", SRV: "ntr-wan"}


def frame(src, dst, l4):
    """(iface, frame) of a packet from ``src`` as it reaches r."""
    return IFACE[src], Ether(src=MAC[src], dst=R_MAC[IFACE[src]]) / IP(src=src, dst=dst) / l4


def stale_udp():
    """srv asks the service from port 5353 every second: be1 answers until it is gone
    (t=5); the queries go on (t=10-12) and after the fix (t=20-22)."""
    for t in (0, 1, 2):
        yield t, *frame(SRV, PUB, UDP(sport=5353, dport=53) / b"query\n")
        yield t + 0.001, *frame(BE1, SRV, UDP(sport=7, dport=5353) / b"203.0.113.10:5353 query\n")
    for t in (10, 11, 12, 20, 21, 22):
        yield t, *frame(SRV, PUB, UDP(sport=5353, dport=53) / b"query\n")


def new_rule():
    """h2 (port 6000) and h1 (port 6001) keep a UDP flow to srv's echo service; the DROP for
    h2 arrives at t=5, the fix at t=15.  srv answers what reached it in a fixed network."""
    for t in (0, 1, 2, 10, 11, 12, 20, 21, 22):
        for host, port in ((H2, 6000), (H1, 6001)):
            if t >= 20 and host == H2:
                yield t, *frame(host, SRV, UDP(sport=port, dport=7) / b"beat\n")
                continue
            yield t, *frame(host, SRV, UDP(sport=port, dport=7) / b"beat\n")
            yield t + 0.001, *frame(SRV, PUB, UDP(sport=7, dport=port) / b"203.0.113.1 beat\n")


def handshake(client, server_seen, cport, sport, t, c=1000, s=5000, via=None):
    """SYN, SYN-ACK, ACK of client:cport -> server:sport; ``via``: where the server's
    answer comes from and goes to (its own address, the client's address as it sees it)."""
    answer_from, answer_to = via or (server_seen, client)
    yield t, *frame(client, server_seen, TCP(sport=cport, dport=sport, flags="S", seq=c, window=64240))
    yield t + 0.001, *frame(answer_from, answer_to, TCP(sport=sport, dport=cport, flags="SA", seq=s,
                                                        ack=c + 1, window=65160))
    yield t + 0.002, *frame(client, server_seen, TCP(sport=cport, dport=sport, flags="A", seq=c + 1,
                                                     ack=s + 1, window=502))


def table_full():
    """h1 opens 40 connections to srv:80 and leaves them open (ESTABLISHED entries live
    5 days by default); a minute later it opens one more and fetches a page."""
    for i in range(40):
        yield from handshake(H1, SRV, 45100 + i, 80, 0.1 * i, via=(SRV, PUB))
    req, body = b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhello\n"
    yield from handshake(H1, SRV, 45000, 80, 60.0, via=(SRV, PUB))
    yield 60.003, *frame(H1, SRV, TCP(sport=45000, dport=80, flags="PA", seq=1001, ack=5001) / req)
    yield 60.004, *frame(SRV, PUB, TCP(sport=80, dport=45000, flags="PA", seq=5001,
                                      ack=1001 + len(req)) / body)


def invalid_rst():
    """srv downloads from the service (DNAT to be1:80); in the middle be1 sends a segment
    far beyond srv's window (a late retransmission after a window probe, say): conntrack
    calls it INVALID.  Then the download goes on and ends."""
    yield from handshake(SRV, PUB, 50000, 80, 0.0, c=3000, s=7000, via=(BE1, SRV))
    req = b"GET /big HTTP/1.0\r\n\r\n"
    yield 0.003, *frame(SRV, PUB, TCP(sport=50000, dport=80, flags="PA", seq=3001, ack=7001) / req)
    c, s = 3001 + len(req), 7001
    for i in range(3):
        yield 0.010 + i * 0.01, *frame(BE1, SRV, TCP(sport=80, dport=50000, flags="A", seq=s, ack=c)
                                       / (b"x" * 1000))
        s += 1000
        yield 0.011 + i * 0.01, *frame(SRV, PUB, TCP(sport=50000, dport=80, flags="A", seq=c, ack=s,
                                                    window=502))
    yield 0.050, *frame(BE1, SRV, TCP(sport=80, dport=50000, flags="A", seq=s + 50_000_000, ack=c)
                        / (b"y" * 1000))
    yield 0.060, *frame(BE1, SRV, TCP(sport=80, dport=50000, flags="FA", seq=s, ack=c))
    yield 0.061, *frame(SRV, PUB, TCP(sport=50000, dport=80, flags="FA", seq=c, ack=s + 1))
    yield 0.062, *frame(BE1, SRV, TCP(sport=80, dport=50000, flags="A", seq=s + 1, ack=c + 1))


def snat_race():
    """h1 and h2 both start a UDP flow to srv's echo service from the same source port, in
    the same microsecond (two CPUs of r handle them at once), five times: the pairs race
    to confirm their entries.  Answers depend on the ports r picks: none are recorded."""
    for i in range(5):
        for host in (H1, H2):
            yield float(i), *frame(host, SRV, UDP(sport=33000 + i, dport=7) / b"hello\n")


STORIES = {"stale-udp": stale_udp, "table-full": table_full, "new-rule": new_rule,
           "invalid-rst": invalid_rst, "snat-race": snat_race}


def write(name: str, folder: Path) -> Path:
    path = folder / f"{name}.pcapng"
    with PcapngWriter(str(path)) as w:
        for iface in R_MAC:
            w.add_interface(iface)
        for t, iface, pkt in sorted(STORIES[name](), key=lambda x: x[0]):
            w.write(T0 + t, iface, bytes(pkt))
    return path


def main(argv):
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parent
    for name in STORIES:
        print(write(name, folder))


if __name__ == "__main__":
    main(sys.argv[1:])
