"""Python mode, live: nattrack forwards between two namespaces, the kernel stays out.

One topology and one router process for the whole module (tests run in file
order and build on each other's traffic); the last test stops the router and
checks that the namespace is back as it was, then that nothing is left.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from nattrack.packet.pcapio import CaptureReader

from .conftest import (MASQ_RULES, PYTHON, TCP_CLIENT, UDP_CLIENT, RouterProc, Server, client_py,
                       kernel_conntrack, table_lines)
from .netns import CLIENT, ROUTER_WAN, SERVER, list_netns

RULES = MASQ_RULES.format(masq_opts="")


@pytest.fixture(scope="module")
def server(topo, workdir):
    s = Server(topo, workdir)
    yield s
    s.close()


@pytest.fixture(scope="module")
def router(topo, workdir, server):
    # Like a Mininet router node: forwarding on.  Python mode must turn it off and,
    # when it stops, back on.
    topo.exec(topo.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    r = RouterProc(topo, workdir, "python", RULES,
                   {"net.netfilter.nf_conntrack_udp_timeout": "40"})
    yield r
    r.kill()


def _line(lines: list[str], *needles: str) -> str:
    hits = [l for l in lines if all(n in l for n in needles)]
    assert hits, f"no entry with {needles} in:\n" + "\n".join(lines)
    return hits[0]


def test_ready_and_hello(router):
    hello = router.call("hello")
    assert hello["mode"] == "python"
    assert hello["ifaces"] == {"r-lan": ["10.0.0.1/24"], "r-wan": ["203.0.113.1/24"]}
    assert hello["pid"] == router.proc.pid
    assert router.call("sysctl", {"key": "net.netfilter.nf_conntrack_udp_timeout"}) == 40
    assert router.ready_after < 15


def test_kernel_is_out_of_the_data_path(topo, router):
    r = topo.router
    assert topo.exec(r, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    raw = topo.exec(r, "iptables", "-w", "-t", "raw", "-S", "PREROUTING").stdout
    assert "-A PREROUTING -i r-lan -j DROP" in raw and "-A PREROUTING -i r-wan -j DROP" in raw


def test_ping_through_and_to_the_router(topo, router):
    p = topo.exec(topo.client, "ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER, check=False)
    assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
    line = _line(table_lines(router, proto="icmp", dst=SERVER), f"src={CLIENT}")
    assert f"src={SERVER} dst={ROUTER_WAN} type=0 code=0" in line
    # The router's own address answers (the engine's LOCAL_IN + icmp_echo, not the kernel).
    p = topo.exec(topo.client, "ping", "-c", "1", "-W", "2", "10.0.0.1", check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_udp_request_response_with_events(topo, router, server):
    ev = router.stream("events", {"filters": {"proto": "udp"}, "timestamp": True})
    try:
        time.sleep(0.3)                                 # the subscription is in place
        client_py(topo, UDP_CLIENT.format(sport=41000, count=3))
        events = ev.read(2, timeout=5)
    finally:
        ev.close()
    assert (ROUTER_WAN, 41000) in server.peers("udp")   # MASQUERADE; the port was free, so kept
    assert all(e["ok"] for e in events)
    lines = [e["event"] for e in events]
    assert "[NEW] udp      17 40 src=10.0.0.10 dst=203.0.113.10 sport=41000 dport=5000 [UNREPLIED] " \
           "src=203.0.113.10 dst=203.0.113.1 sport=5000 dport=41000" in lines[0]
    assert "[UPDATE] udp" in lines[1] and "[UNREPLIED]" not in lines[1]
    assert lines[0].startswith("[")                     # -o timestamp
    line = _line(table_lines(router, proto="udp", sport=41000), "dport=5000")
    assert "[UNREPLIED]" not in line and f"dst={ROUTER_WAN} sport=5000 dport=41000" in line


def test_tcp_with_curl(topo, router, server):
    p = topo.exec(topo.client, "curl", "-s", "--max-time", "5", f"http://{SERVER}:8080/", check=False)
    assert p.returncode == 0 and p.stdout == "hello from the server\n", p.stdout + p.stderr
    assert any(ip == ROUTER_WAN for ip, _ in server.peers("tcp"))


def test_tcp_closed_by_each_side_and_one_open(topo, router, server):
    hold = topo.popen(topo.client, PYTHON, "-c", TCP_CLIENT.format(sport=42003, mode="ECHO", lines=12, gap=0.25),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client_py(topo, TCP_CLIENT.format(sport=42001, mode="CLOSE-SERVER", lines=0, gap=0))
        client_py(topo, TCP_CLIENT.format(sport=42002, mode="CLOSE-CLIENT", lines=2, gap=0))
        time.sleep(0.3)
        lines = table_lines(router, proto="tcp")
        est = _line(lines, "sport=42003 dport=8080")
        assert " ESTABLISHED " in est and "[ASSURED]" in est and f"dst={ROUTER_WAN} sport=8080 dport=42003" in est
        for sport in (42001, 42002):
            done = _line(lines, f"sport={sport} dport=8080")
            assert " TIME_WAIT " in done and "[ASSURED]" in done, done
            assert (ROUTER_WAN, sport) in server.peers("tcp")
        out, err = hold.communicate(timeout=15)
        assert hold.returncode == 0 and out.strip() == "ok", out + err
        assert " TIME_WAIT " in _line(table_lines(router, proto="tcp", sport=42003), "dport=8080")
    finally:
        if hold.poll() is None:
            hold.kill()


def test_trace_and_capture(topo, router, workdir):
    tr = router.stream("trace", {"filters": {"proto": "icmp", "dst": SERVER}, "count": 2})
    cap = str(workdir / "cap.pcapng")
    try:
        time.sleep(0.3)
        assert router.call("capture", {"action": "start", "path": cap}) == cap
        topo.exec(topo.client, "ping", "-c", "1", "-W", "2", SERVER, check=False)
        stopped = router.call("capture", {"action": "stop"})
        traces = tr.read(3, timeout=5)       # the request and the reply; then the stream ends
    finally:
        tr.close()
    assert len(traces) == 2, traces
    req, rep = traces[0]["trace"], traces[1]["trace"]
    assert req["before"].startswith(f"{CLIENT} > {SERVER}: icmp type 8")
    assert req["after"].startswith(f"{ROUTER_WAN} > {SERVER}: icmp type 8")
    assert rep["after"].startswith(f"{SERVER} > {CLIENT}: icmp type 0") and rep["dropped"] is None
    hooks = [h for h, _ in req["steps"]]
    assert hooks[0] == "received" and "PRE_ROUTING" in hooks and "POST_ROUTING" in hooks
    assert stopped["path"] == cap and stopped["packets"] >= 4
    with CaptureReader(cap) as rd:
        ifaces = {f.iface for f in rd}
    assert ifaces == {"r-lan", "r-wan"}


def test_checksums_left_to_a_peers_offload_are_completed(topo, router, server):
    # A Mininet host keeps tx checksumming on unless told: its TCP segments cross the
    # veth with only the pseudo-header sum in the checksum field.
    topo.exec(topo.client, "ethtool", "-K", "eth0", "tx", "on", check=False)
    try:
        before = router.call("stats")["router"].get("csum_completed", 0)
        client_py(topo, TCP_CLIENT.format(sport=42020, mode="ECHO", lines=2, gap=0))
        assert router.call("stats")["router"]["csum_completed"] > before
    finally:
        topo.exec(topo.client, "ethtool", "-K", "eth0", "tx", "off", check=False)


def test_the_kernel_table_stays_empty(topo, router):
    assert router.call("count") >= 5
    assert kernel_conntrack(topo, "-C").strip() == "0"
    assert kernel_conntrack(topo, "-L").strip() == ""


MALFORMED = r"""
import random, socket, struct, sys, time
dst = bytes.fromhex(sys.argv[1].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
def ip(payload, proto=17, tot=None, ihl=5, frag=0, ver=4, opts=b"", good=True, ipid=777,
       sa="10.0.0.10", da="203.0.113.10"):
    h = struct.pack("!BBHHHBBH4s4s", ver << 4 | ihl, 0, tot if tot is not None else 20 + len(opts) + len(payload),
                    ipid, frag, 64, proto, 0, socket.inet_aton(sa), socket.inet_aton(da)) + opts
    c = csum(h) if good else 0x1234
    return h[:10] + struct.pack("!H", c) + h[12:] + payload
def eth(p, etype=b"\x08\x00"):
    return dst + src + etype + p
tcp = lambda flags, doff=5, extra=b"": struct.pack("!HHIIBBHHH", 5555, 8081, 1, 0, doff << 4, flags, 512, 0, 0) + extra
udp = lambda ulen, data=b"x" * 8: struct.pack("!HHHH", 5556, 9, ulen, 0) + data
frames = [
    b"\x01" * 10, eth(b""), eth(b"\x45\x00\x00"), eth(ip(b"", ihl=3)), eth(ip(b"", ihl=15)),
    eth(ip(udp(16), tot=400)), eth(ip(udp(16), tot=8)), eth(ip(udp(16), good=False)),
    eth(ip(udp(16), ver=6)), eth(ip(tcp(2, doff=0), proto=6)), eth(ip(tcp(2, doff=15), proto=6)),
    eth(ip(b"\x15\xb3\x1f\x91\0\0\0\1", proto=6)),
    eth(ip(tcp(0x3F), proto=6)), eth(ip(tcp(0), proto=6)), eth(ip(tcp(0xFF), proto=6)),
    eth(ip(tcp(0x03), proto=6)), eth(ip(tcp(0x06), proto=6)), eth(ip(tcp(0x10), proto=6)),
    eth(ip(udp(200), proto=17)), eth(ip(udp(3), proto=17)),
    eth(ip(b"\x03\x03\0\0\0\0\0\0" + b"\x45\x00", proto=1)), eth(ip(b"\x08\0", proto=1)),
    eth(ip(b"\x0b\x00\0\0\0\0\0\0" + b"\x46" + b"\0" * 19, proto=1)),
    eth(ip(udp(1000, b"a" * 24), frag=0x2000, ipid=900)),
    eth(ip(b"b" * 24, frag=0x2000 | 185, ipid=901)),
    eth(ip(b"c" * 24, frag=0x2000 | 1, ipid=900)), eth(ip(b"d" * 24, frag=0x2000, ipid=900)),
    eth(ip(b"e" * 64, frag=8190, ipid=902)), eth(ip(b"f" * 3, frag=0x2000 | 3, ipid=903)),
    eth(ip(udp(16), ihl=6, opts=b"\xff\xff\xff\xff")), eth(ip(udp(16), ihl=6, opts=b"\x07\x00\x00\x00")),
    eth(ip(b"", proto=6)), eth(ip(b"", proto=47)), eth(ip(b"\0" * 3, proto=1)),
    eth(b"\0\x01\x08\x00\x06\x04\x00\x02" + b"\0" * 5, b"\x08\x06"),
    eth(b"\0\x01\x08\x00\x09\x09\x00\x01" + b"\0" * 20, b"\x08\x06"),
    eth(b"\x00\x01\x08\x00" + ip(udp(16)), b"\x81\x00"), eth(b"\x60" + b"\0" * 39, b"\x86\xdd"),
    eth(ip(udp(16), sa="10.0.0.1")), eth(ip(udp(16), da="10.0.0.1", proto=6)),
    eth(ip(udp(16), da="255.255.255.255")), (b"\xff" * 6) + src + b"\x08\x00" + ip(udp(16)),
]
rnd = random.Random(7)
for _ in range(150):
    frames.append(eth(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 80)))))
for _ in range(150):
    p = bytearray(ip(udp(16) if rnd.random() < .5 else tcp(rnd.randrange(256), rnd.randrange(16)), proto=rnd.choice((6, 17, 1))))
    for _ in range(3):
        p[rnd.randrange(len(p))] = rnd.randrange(256)
    frames.append(eth(bytes(p)))
sent = 0
for rep in range(4):
    for f in frames:
        try:
            s.send(f); sent += 1
        except OSError:
            pass
    time.sleep(0.1)
print(sent)
"""


def test_malformed_burst_during_a_tcp_connection(topo, router):
    before = router.call("stats")["router"]
    conn = topo.popen(topo.client, PYTHON, "-c", TCP_CLIENT.format(sport=42010, mode="ECHO", lines=20, gap=0.05),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        mac = topo.mac(topo.router, "r-lan")
        burst = topo.exec(topo.client, PYTHON, "-c", MALFORMED, mac, check=False, timeout=30)
        assert burst.returncode == 0, burst.stderr
        assert int(burst.stdout) > 1000
        out, err = conn.communicate(timeout=20)
        assert conn.returncode == 0 and out.strip() == "ok", out + err
    finally:
        if conn.poll() is None:
            conn.kill()
    assert router.alive(), router.diagnostics()
    after = router.call("stats")["router"]
    assert after["rx_frames"] - before["rx_frames"] > 1000
    assert after["ip_hdr_errors"] > before["ip_hdr_errors"]
    assert after["runts"] > before["runts"]
    line = _line(table_lines(router, proto="tcp", sport=42010), "dport=8080")
    assert " TIME_WAIT " in line and "[ASSURED]" in line
    # Still forwarding afterwards.
    client_py(topo, UDP_CLIENT.format(sport=41001, count=1))
    assert kernel_conntrack(topo, "-C").strip() == "0"


def test_stop_restores_the_namespace_and_cleanup_leaves_nothing(topo, router, server):
    t0 = time.monotonic()
    assert router.stop() == 0, router.diagnostics()
    assert time.monotonic() - t0 < 5
    import os
    assert not os.path.exists(router.sock_path)
    r = topo.router
    assert topo.exec(r, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert "DROP" not in topo.exec(r, "iptables", "-w", "-t", "raw", "-S").stdout
    server.close()
    topo.close()
    assert topo.remaining() == []
    assert not any(ns.startswith(topo.prefix) for ns in list_netns())
    assert router.proc.poll() is not None and server.proc.poll() is not None
