"""Make data/tcp.pcapng: TCP connections in many states, as the basic router saw them arrive.

Run from the repository: .venv/bin/python labs/02-tcp-states/data/make_data.py
"""
import os

from nattrack.exercises.story import H1, H2, Story, TcpConn

st = Story()

# A: the client closes first: ESTABLISHED, FIN_WAIT, LAST_ACK, TIME_WAIT.
a = TcpConn(st, H1, 40001)
a.handshake(0.0)
a.out(0.010, "PA", b"GET / HTTP/1.0\r\n\r\n")
a.back(0.020, "PA", b"HTTP/1.0 200 OK\r\n\r\nhello")
a.out(0.030, "A")
a.out(0.040, "FA")
a.back(0.041, "A")
a.back(0.042, "FA")
a.out(0.043, "A")

# B: the server closes first: CLOSE_WAIT, LAST_ACK, TIME_WAIT.
b = TcpConn(st, H1, 40002, isn_c=20000, isn_s=90000)
b.handshake(1.0)
b.back(1.010, "FA")
b.out(1.011, "A")
b.out(1.020, "FA")
b.back(1.021, "A")

# C: a SYN to a closed port answered by RST-ACK: the entry dies at once.
c = TcpConn(st, H1, 40003, dport=9)
c.out(2.0, "S", window=64240)
c.back(2.001, "RA", seq=0)

# D: an established connection reset by the server: CLOSE.
d = TcpConn(st, H2, 40004, isn_c=300, isn_s=700)
d.handshake(3.0)
d.back(3.010, "RA")

# E: a connection still open at the end (ESTABLISHED, ASSURED), with a stray SYN (IGNORE)
# and a retransmitted SYN-ACK from the server.
e = TcpConn(st, H2, 40005, isn_c=111, isn_s=222)
e.handshake(4.0)
e.out(4.010, "PA", b"ping")
e.back(4.020, "A")
e.out(4.030, "S", seq=999999, window=64240)

# F: a SYN that is never answered (SYN_SENT) and its retransmission.
f = TcpConn(st, H1, 40006)
f.out(5.0, "S", window=64240)
f.out(6.0, "S", seq=1000, window=64240)

# G: mid-stream pickup: an ACK with data from a connection the router never saw open.
g = TcpConn(st, H1, 40007, isn_c=5555, isn_s=7777)
g.out(7.0, "PA", b"late")
g.back(7.001, "A")

# H: a stray FIN with no connection (INVALID: no entry).
h = TcpConn(st, H2, 40008)
h.out(8.0, "F", seq=77)

# I: handshake, then the client stays in SYN_RECV side: SYN, SYN-ACK, no final ACK.
i = TcpConn(st, H2, 40009, isn_c=42, isn_s=4242)
i.out(9.0, "S", window=64240)
i.back(9.001, "SA")

st.write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp.pcapng"))
