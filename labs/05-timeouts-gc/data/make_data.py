"""Make the lab's captures, as the basic router saw the packets arrive:

  gc.pcapng    short-lived flows of every kind, then a long quiet time: when do they go?
  full.pcapng  100 TCP connections (10 of them closing) fill a table of 100, then UDP
               flows knock (replay it with nf_conntrack_max=100, nf_conntrack_buckets=2)

Run from the repository: .venv/bin/python labs/05-timeouts-gc/data/make_data.py
"""
import os

from nattrack.exercises.story import (H1, H2, ICMP, IP, ROUTER_WAN, SERVER, Story, TcpConn, udp_back,
                                 udp_out)

HERE = os.path.dirname(os.path.abspath(__file__))

gc = Story()
gc.lan(0.0, IP(src=H1, dst=SERVER) / ICMP(type=8, id=1, seq=1))
gc.wan(0.001, IP(src=SERVER, dst=ROUTER_WAN) / ICMP(type=0, id=1, seq=1))
for i in range(6):
    udp_out(gc, 0.5 + i, H1, 42000 + i, 9999)                  # unreplied, one a second
udp_out(gc, 1.0, H2, 42100, 53)
udp_back(gc, 1.001, 53, 42100)
udp_out(gc, 4.0, H2, 42100, 53)                                # a stream now
udp_back(gc, 4.001, 53, 42100)
c = TcpConn(gc, H1, 40000)
c.handshake(2.0)
c.out(2.1, "FA")
c.back(2.101, "FA")
c.out(2.102, "A")                                              # TIME_WAIT
TcpConn(gc, H2, 40001).out(3.0, "S", window=64240)            # SYN_SENT, never answered
for i in range(40):                                            # a burst just before a scan:
    udp_out(gc, 55.0 + i / 10, H1, 44000 + i, 9999)            # the next scan comes sooner
gc.lan(150.0, IP(src=H2, dst=SERVER) / ICMP(type=8, id=2, seq=1))
gc.write(os.path.join(HERE, "gc.pcapng"))

full = Story()
t = 0.0
conns = []
for i in range(100):
    host = H1 if i % 2 else H2
    c = TcpConn(full, host, 30000 + i, isn_c=1000 + i, isn_s=50000 + i)
    c.handshake(t)
    conns.append(c)
    t += 0.01
for c in conns[20:30]:                                        # 10 connections close
    c.out(t, "FA")
    c.back(t + 0.001, "FA")
    c.out(t + 0.002, "A")
    t += 0.01
udp_out(full, 2.0, H1, 43000, 9999)                            # the table is full of ASSURED
for i in range(6):                                             # after the gc made room
    udp_out(full, 70.0 + i / 10, H1, 43001 + i, 9999)
udp_out(full, 71.0, H2, 43100, 9999)                           # full again: early drop
udp_out(full, 71.1, H2, 43101, 9999)
full.write(os.path.join(HERE, "full.pcapng"))
