"""Kernel mode, live: the kernel forwards and translates, nattrack shadows it.

MASQUERADE runs with ``--random-fully``, so the kernel picks NAT ports at
random: the shadow's table can only equal ``conntrack -L`` if it took the
kernel's choices from the packets it saw leave.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from .conftest import (MASQ_RULES, PYTHON, TCP_CLIENT, UDP_CLIENT, RouterProc, Server, client_py,
                       kernel_conntrack, table_lines)
from .netns import CLIENT, ROUTER_WAN, SERVER, list_netns

RULES = MASQ_RULES.format(masq_opts=" --random-fully")
UDP_TIMEOUT = "25"


@pytest.fixture(scope="module")
def server(topo, workdir):
    s = Server(topo, workdir)
    yield s
    s.close()


@pytest.fixture(scope="module")
def router(topo, workdir, server):
    r = RouterProc(topo, workdir, "kernel", RULES, {"net.netfilter.nf_conntrack_udp_timeout": UDP_TIMEOUT})
    yield r
    r.kill()


_TIMEOUT = re.compile(r"^(\S+\s+\d+) (\d+) ")


def split_timeout(line: str) -> tuple[str, int]:
    """``tcp      6 117 TIME_WAIT ...`` -> (the line without its timeout, 117)."""
    m = _TIMEOUT.match(line)
    assert m, line
    return m.group(1) + " " + line[m.end():], int(m.group(2))


def assert_same_tables(shadow: list[str], kernel: list[str]) -> None:
    s = dict(split_timeout(l) for l in shadow)
    k = dict(split_timeout(l) for l in kernel)
    only_s, only_k = sorted(set(s) - set(k)), sorted(set(k) - set(s))
    assert not only_s and not only_k, ("tables differ\n-- only in the shadow:\n" + "\n".join(only_s)
                                       + "\n-- only in the kernel:\n" + "\n".join(only_k))
    off = {key: (s[key], k[key]) for key in s if abs(s[key] - k[key]) > 1}
    assert not off, f"timeouts differ by more than 1 s: {off}"


def test_kernel_is_configured(topo, router):
    assert router.call("hello")["mode"] == "kernel"
    r = topo.router
    assert topo.exec(r, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert topo.exec(r, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout").stdout.strip() == UDP_TIMEOUT
    saved = topo.exec(r, "iptables-save").stdout
    assert "-A POSTROUTING -o r-wan -j MASQUERADE --random-fully" in saved
    assert "-A FORWARD -i r-lan -o r-wan -j ACCEPT" in saved
    assert router.call("sysctl", {"key": "nf_conntrack_udp_timeout"}) == int(UDP_TIMEOUT)


def test_traffic_and_the_shadow_equals_the_kernel(topo, router, server):
    p = topo.exec(topo.client, "ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    client_py(topo, UDP_CLIENT.format(sport=41000, count=3))
    c = topo.exec(topo.client, "curl", "-s", "--max-time", "5", f"http://{SERVER}:8080/", check=False)
    assert c.returncode == 0 and c.stdout == "hello from the server\n", c.stdout + c.stderr
    hold = topo.popen(topo.client, PYTHON, "-c", TCP_CLIENT.format(sport=42003, mode="ECHO", lines=8, gap=0.25),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client_py(topo, TCP_CLIENT.format(sport=42001, mode="CLOSE-SERVER", lines=0, gap=0))
        client_py(topo, TCP_CLIENT.format(sport=42002, mode="CLOSE-CLIENT", lines=2, gap=0))
        time.sleep(0.3)
        kernel = [l for l in kernel_conntrack(topo, "-L").splitlines() if l.strip()]
        shadow = table_lines(router)
        assert_same_tables(shadow, kernel)
        est = [l for l in shadow if "sport=42003 dport=8080" in l]
        assert est and " ESTABLISHED " in est[0] and "[ASSURED]" in est[0]
        out, err = hold.communicate(timeout=15)
        assert hold.returncode == 0 and out.strip() == "ok", out + err
    finally:
        if hold.poll() is None:
            hold.kill()

    time.sleep(0.3)
    kernel = [l for l in kernel_conntrack(topo, "-L").splitlines() if l.strip()]
    shadow = table_lines(router)
    assert_same_tables(shadow, kernel)
    assert len(shadow) >= 6                 # icmp, udp, curl, 42001, 42002, 42003
    for sport in (42001, 42002, 42003):
        line = [l for l in shadow if f"sport={sport} dport=8080" in l][0]
        assert " TIME_WAIT " in line and "[ASSURED]" in line
    # The server saw the router's address, with the ports the kernel chose (random ones).
    nat_ports = {int(re.findall(r"dport=(\d+)", l)[1]) for l in shadow if l.startswith(("tcp", "udp"))}
    seen = server.peers("tcp") + server.peers("udp")
    assert {ip for ip, _ in seen} == {ROUTER_WAN}
    assert {port for _, port in seen} <= nat_ports
    assert len(nat_ports - {41000, 42001, 42002, 42003}) >= 4     # --random-fully moved them
    udp = [l for l in shadow if l.startswith("udp") and "sport=41000" in l][0]
    assert f"src={CLIENT}" in udp and f"dst={ROUTER_WAN}" in udp and "[UNREPLIED]" not in udp


def test_the_shadow_missed_nothing(router):
    st = router.call("stats")
    r = st["router"]
    assert r["shadow_missed"] == 0 and r["socket_drops"] == 0, r
    assert r["shadow_disagrees"] == 0, r
    assert r["held_matched"] >= 6 and r["router_errors"] == 0, r
    assert st["count"] >= 6


def test_stop_restores_the_namespace_and_cleanup_leaves_nothing(topo, router, server):
    assert router.stop() == 0, router.diagnostics()
    assert not os.path.exists(router.sock_path)
    r = topo.router
    assert topo.exec(r, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert topo.exec(r, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout").stdout.strip() == "30"
    saved = topo.exec(r, "iptables-save").stdout
    assert not [l for l in saved.splitlines() if l.startswith("-A")], saved
    assert kernel_conntrack(topo, "-C").strip() == "0"
    server.close()
    topo.close()
    assert topo.remaining() == []
    assert not any(ns.startswith(topo.prefix) for ns in list_netns())
