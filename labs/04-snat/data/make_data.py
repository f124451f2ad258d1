"""Make data/snat.pcapng: three private hosts behind one public address (the clash
topology) reusing source ports, as the router saw the packets arrive.

Run from the repository: .venv/bin/python labs/04-snat/data/make_data.py
"""
import os

from nattrack.exercises.story import H1, H2, H3, ROUTER_WAN, SERVER, Story, TcpConn, udp_back, udp_out

st = Story()
# h1 keeps its port; h2 wants the same one towards the same server: it must move.
udp_out(st, 0.0, H1, 41000, 53, b"q1")
udp_back(st, 0.001, 53, 41000, b"a1")
udp_out(st, 0.1, H2, 41000, 53, b"q2")
# h1 again from 41000 to another port: the same mapping is reused.
udp_out(st, 0.2, H1, 41000, 123, b"ntp")
# h3's UDP must use 5000-5003: four flows fill the range, the fifth finds no port.
for i, sport in enumerate((41000, 5001, 5002, 41001, 41002)):
    udp_out(st, 1.0 + i / 10, H3, sport, 7, b"h3-%d" % i)
# Privileged ports: 700 stays in 600-1023, 100 in 1-511.
for t, host, sport in ((2.0, H1, 700), (2.1, H2, 700), (2.2, H1, 100), (2.3, H2, 100)):
    TcpConn(st, host, sport).out(t, "S", window=64240)
# A whole TCP exchange whose port stays: every header is rewritten both ways.
c = TcpConn(st, H1, 40000, isn_c=100, isn_s=900)
c.handshake(3.0)
c.out(3.01, "PA", b"GET / HTTP/1.0\r\n\r\n")
c.back(3.02, "PA", b"HTTP/1.0 200 OK\r\n\r\n")
c.out(3.03, "FA")
c.back(3.04, "FA")
c.out(3.05, "A")
# A ping: the ICMP id is rewritten like a port when it clashes.
from nattrack.exercises.story import ICMP, IP  # noqa: E402
st.lan(4.0, IP(src=H1, dst=SERVER) / ICMP(type=8, id=77, seq=1))
st.lan(4.1, IP(src=H2, dst=SERVER) / ICMP(type=8, id=77, seq=1))
st.wan(4.2, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=77, seq=1))
st.write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "snat.pcapng"))
