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

from nattrack.exercises.scenarios import write_captures

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


DNS_PORT = 5300            # the resolver instance the recording's answers came from


def dns_race():
    """h1's resolver looks a name up four times (t=0, 10, 20, 30), each time from a new
    socket: the A and the AAAA query leave it in the same microsecond (two CPUs of r
    handle them at once).  The A answer comes at once, the AAAA answer (not cached: the
    instance asks upstream) 1.5 s later; glibc's resolver sends the AAAA query again
    after 5 s, answered at once.  The answers are recorded from instance 5300; the
    replay sends each one from the instance r sent its query to."""
    for i in range(4):
        t, port = 10.0 * i, 40000 + i
        for qtype in ("A", "AAAA"):
            yield t, *frame(H1, PUB, UDP(sport=port, dport=53) / f"{qtype}? www.example.\n".encode())
        yield t + 0.002, *frame(BE1, H1, UDP(sport=DNS_PORT, dport=port)
                                / b"A www.example. 192.0.2.80\n")
        yield t + 1.5, *frame(BE1, H1, UDP(sport=DNS_PORT, dport=port)
                              / b"AAAA www.example. 2001:db8::80\n")
        yield t + 5.0, *frame(H1, PUB, UDP(sport=port, dport=53) / b"AAAA? www.example.\n")
        yield t + 5.002, *frame(BE1, H1, UDP(sport=DNS_PORT, dport=port)
                                / b"AAAA www.example. 2001:db8::80\n")


class Control:
    """One TCP connection's segments as they reach r: ``c`` from the client (as it sent
    them), ``s`` from the server, whose ACKs count ``grow`` bytes more of the client's
    stream once r's FTP helper lengthened a command (nf_nat_ftp + sequence adjustment)."""

    def __init__(self, client, cport, server_seen, sport, server, client_seen, c=1000, s=5000):
        self.client, self.cport, self.server_seen, self.sport = client, cport, server_seen, sport
        self.server, self.client_seen = server, client_seen
        self.cseq, self.sseq, self.grow = c, s, 0

    def c(self, flags, data=b""):
        seg = TCP(sport=self.cport, dport=self.sport, flags=flags, seq=self.cseq,
                  ack=self.sseq if "A" in flags else 0, window=502)
        self.cseq += len(data) + ("S" in flags) + ("F" in flags)
        return frame(self.client, self.server_seen, seg / data if data else seg)

    def s(self, flags, data=b""):
        seg = TCP(sport=self.sport, dport=self.cport, flags=flags, seq=self.sseq,
                  ack=self.cseq + self.grow if "A" in flags else 0, window=510)
        self.sseq += len(data) + ("S" in flags) + ("F" in flags)
        return frame(self.server, self.client_seen, seg / data if data else seg)


FTP_DATA = b"hello from srv\n"


def ftp_helper():
    """h1 downloads data.bin from srv's FTP server in active mode (curl -P - --disable-eprt):
    PORT 10,0,0,10,156,64 names h1's own port 40000; r's FTP helper rewrites it to
    203,0,113,1 (2 bytes longer: srv's ACKs count them) and expects srv's data connection
    from port 20 to 203.0.113.1:40000.  Recorded as a working node delivers it."""
    ctl = Control(H1, 41000, SRV, 21, SRV, PUB)
    data = Control(SRV, 20, PUB, 40000, H1, SRV, c=9000, s=7000)
    steps = [ctl.c("S"), ctl.s("SA"), ctl.c("A"),
             ctl.s("PA", b"220 (vsFTPd 3.0.3)\r\n"), ctl.c("PA", b"USER anonymous\r\n"),
             ctl.s("PA", b"230 Login successful.\r\n"), ctl.c("PA", b"TYPE I\r\n"),
             ctl.s("PA", b"200 Switching to Binary mode.\r\n"),
             ctl.c("PA", b"PORT 10,0,0,10,156,64\r\n")]
    ctl.grow = len("203,0,113,1") - len("10,0,0,10")
    steps += [ctl.s("PA", b"200 PORT command successful. Consider using PASV.\r\n"),
              ctl.c("PA", b"RETR data.bin\r\n"),
              data.c("S"), data.s("SA"), data.c("A"),
              ctl.s("PA", b"150 Opening BINARY mode data connection for data.bin (15 bytes).\r\n"),
              data.c("PA", FTP_DATA), data.c("FA"), data.s("A"), data.s("FA"), data.c("A"),
              ctl.s("PA", b"226 Transfer complete.\r\n"), ctl.c("PA", b"QUIT\r\n"),
              ctl.s("PA", b"221 Goodbye.\r\n")]
    for i, (iface, pkt) in enumerate(steps):
        yield 0.001 * i, iface, pkt


STORIES = {"stale-udp": stale_udp, "table-full": table_full, "new-rule": new_rule,
           "invalid-rst": invalid_rst, "snat-race": snat_race, "dns-race": dns_race,
           "ftp-helper": ftp_helper}


if __name__ == "__main__":
    write_captures(sys.argv[1:], Path(__file__).resolve().parent, STORIES, tuple(R_MAC), T0)
