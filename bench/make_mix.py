"""Craft the benchmark's traffic mix with scapy: what a NAT router sees arrive.

A LAN (``lan``, 10.0.0.0/16, router 10.0.0.1) behind an uplink (``wan``,
203.0.113.0/24, router 203.0.113.1, default gateway 203.0.113.254); servers
live in the benchmarking range 198.18.0.0/15 (RFC 2544).

The mix (sizes are parameters): TCP connections (handshake with MSS/SACK/
timestamp/window-scale options and a timestamp option on every later segment,
as Linux stacks send them; N request/response rounds -- client data, server ACK,
server data, client ACK -- and a FIN close initiated by the client), UDP
request/response pairs and pings.  Flows start a few milliseconds apart and
last tens of milliseconds, so dozens are open at once and their packets
interleave.  Replies are addressed to the router's public address with the
port the client used: every client port / ICMP id is unique in the mix, so
MASQUERADE keeps it and the replies match.

Building with scapy costs ~0.4 ms a frame, so the capture is written once and
cached (see cached_mix); run ``python -m bench.make_mix OUT.pcapng`` to write
one by hand.
"""
from __future__ import annotations

import heapq
import os
import random
import sys
import tempfile

LAN_NET, ROUTER_LAN = "10.0.0.0/16", "10.0.0.1"
ROUTER_WAN, GATEWAY = "203.0.113.1", "203.0.113.254"
IFACES = {"lan": "10.0.0.1/16", "wan": "203.0.113.1/24"}
ROUTES = {"default": "wan via 203.0.113.254"}

RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.0.0.0/16 -o wan -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i lan -o wan -j ACCEPT
COMMIT
"""

T0 = 1767225600.0          # 2026-01-01 00:00:00 UTC
VERSION = 2                # bump when the mix changes (invalidates caches)


def _mac(n: int) -> str:
    return "02:00:%02x:%02x:%02x:%02x" % (n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255)


def _flows(tcp: int, udp: int, ping: int, rounds: int, seed: int):
    """Yield (t, seq-in-flow, iface, scapy frame builder args) lazily, per flow."""
    from scapy.all import ICMP, IP, TCP, UDP, Ether

    rng = random.Random(seed)
    lan_eth = {}
    wan_eth = Ether(src=_mac(0x0A), dst=_mac(0x01))

    def lan(h: int):
        e = lan_eth.get(h)
        if e is None:
            e = lan_eth[h] = Ether(src=_mac(0x1000 + h), dst=_mac(0x01))
        return e

    hosts = [f"10.0.{h >> 8}.{h & 255}" for h in range(10, 10 + 200)]
    servers = [f"198.18.{s >> 8}.{s & 255}" for s in range(1, 1 + 300)]
    span = max(tcp, udp, ping, 1) * 0.002                # all flows start within this window
    out = []

    def tcp_flow(i: int):
        hi = rng.randrange(len(hosts))
        h, srv = hosts[hi], rng.choice(servers)
        sport, dport = 10000 + i, rng.choice((443, 443, 443, 80, 22))
        t = T0 + rng.uniform(0, span)
        rtt = rng.uniform(0.0005, 0.004)
        c, s = rng.getrandbits(32), rng.getrandbits(32)
        E, W = lan(hi), wan_eth
        C = IP(src=h, dst=srv)
        S = IP(src=srv, dst=ROUTER_WAN)
        M = 0xFFFFFFFF
        # Linux stacks: MSS, SACK permitted, timestamps and window scale on the SYNs,
        # then a timestamp option on every segment (doff 32).
        tc, ts_ = rng.getrandbits(31), rng.getrandbits(31)

        def copt(syn=False):
            if syn:
                return [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (tc + int((t - T0) * 1000), 0)),
                        ("NOP", None), ("WScale", 7)]
            return [("NOP", None), ("NOP", None), ("Timestamp", (tc + int((t - T0) * 1000), ts_))]

        def sopt(syn=False):
            if syn:
                return [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (ts_, tc)), ("NOP", None), ("WScale", 7)]
            return [("NOP", None), ("NOP", None), ("Timestamp", (ts_ + int((t - T0) * 1000), tc))]

        def cl(flags, seq, ack, data=b"", syn=False):
            return (t, "lan", E / C / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack,
                                          window=64240 if syn else 502, options=copt(syn)) / data)

        def sv(flags, seq, ack, data=b"", syn=False):
            return (t, "wan", W / S / TCP(sport=dport, dport=sport, flags=flags, seq=seq, ack=ack,
                                          window=65160 if syn else 509, options=sopt(syn)) / data)

        pk = [cl("S", c, 0, syn=True)]
        t += rtt
        pk.append(sv("SA", s, (c + 1) & M, syn=True))
        c, s = (c + 1) & M, (s + 1) & M
        t += 0.0001
        pk.append(cl("A", c, s))
        for _ in range(rounds):
            req = rng.randrange(80, 600)
            t += rng.uniform(0.0001, 0.002)
            pk.append(cl("PA", c, s, bytes(req)))
            c = (c + req) & M
            t += rtt
            pk.append(sv("A", s, c))
            resp = rng.randrange(200, 1400)
            t += rng.uniform(0.0001, 0.001)
            pk.append(sv("PA", s, c, bytes(resp)))
            s = (s + resp) & M
            t += 0.0001
            pk.append(cl("A", c, s))
        t += rng.uniform(0.0001, 0.002)
        pk.append(cl("FA", c, s))
        t += rtt
        pk.append(sv("A", s, (c + 1) & M))
        t += 0.0001
        pk.append(sv("FA", s, (c + 1) & M))
        t += rtt
        pk.append(cl("A", (c + 1) & M, (s + 1) & M))
        return pk

    def udp_flow(i: int):
        hi = rng.randrange(len(hosts))
        h, srv = hosts[hi], rng.choice(servers)
        sport, dport = 20000 + i, rng.choice((53, 53, 123, 443))
        t = T0 + rng.uniform(0, span)
        q, a = bytes(rng.randrange(30, 80)), bytes(rng.randrange(60, 500))
        return [(t, "lan", lan(hi) / IP(src=h, dst=srv) / UDP(sport=sport, dport=dport) / q),
                (t + rng.uniform(0.0005, 0.02), "wan",
                 wan_eth / IP(src=srv, dst=ROUTER_WAN) / UDP(sport=dport, dport=sport) / a)]

    def ping_flow(i: int):
        hi = rng.randrange(len(hosts))
        h, srv = hosts[hi], rng.choice(servers)
        ident = 1000 + i
        t = T0 + rng.uniform(0, span)
        data = bytes(56)
        return [(t, "lan", lan(hi) / IP(src=h, dst=srv) / ICMP(type=8, id=ident, seq=1) / data),
                (t + rng.uniform(0.0005, 0.02), "wan",
                 wan_eth / IP(src=srv, dst=ROUTER_WAN) / ICMP(type=0, id=ident, seq=1) / data)]

    for i in range(tcp):
        out.append(tcp_flow(i))
    for i in range(udp):
        out.append(udp_flow(i))
    for i in range(ping):
        out.append(ping_flow(i))
    # Merge the flows by time (each flow's own packets are already in order).
    return heapq.merge(*out, key=lambda p: p[0])


def build_mix(path: str, tcp: int = 2000, udp: int = 2000, ping: int = 500, rounds: int = 10,
              seed: int = 1, progress=None) -> int:
    """Write the mix to ``path`` (pcapng, interfaces lan and wan); returns the frame count."""
    from nattrack.packet.pcapio import PcapngWriter

    n = 0
    total = tcp * (3 + 4 * rounds + 4) + 2 * udp + 2 * ping
    tmp = path + ".part"
    with PcapngWriter(tmp) as w:
        w.add_interface("lan")
        w.add_interface("wan")
        for t, iface, frame in _flows(tcp, udp, ping, rounds, seed):
            w.write(t, iface, bytes(frame))
            n += 1
            if progress and n % 5000 == 0:
                progress(f"crafting the mix with scapy: {n}/{total} frames")
    os.replace(tmp, path)
    return n


def cache_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), "nattrack-bench")
    os.makedirs(d, exist_ok=True)
    return d


def cached_mix(tcp: int = 2000, udp: int = 2000, ping: int = 500, rounds: int = 10, seed: int = 1,
               progress=None) -> str:
    """The path of the mix with these parameters, crafted on first use."""
    name = f"mix-v{VERSION}-t{tcp}-u{udp}-p{ping}-r{rounds}-s{seed}.pcapng"
    path = os.path.join(cache_dir(), name)
    if not os.path.exists(path):
        build_mix(path, tcp, udp, ping, rounds, seed, progress)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.make_mix OUT.pcapng")
    print(build_mix(sys.argv[1], progress=lambda m: print(m, file=sys.stderr)), "frames")
