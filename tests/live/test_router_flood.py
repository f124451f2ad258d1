"""A SYN flood larger than the table, through the live Python router.

The issue's robustness promise: the tracker's table stays at its limit, early
drop makes room (non-ASSURED entries go first), the counters say what was
dropped, memory stays bounded, and the router keeps forwarding everything else.
"""
from __future__ import annotations

import time

import pytest

from .conftest import MASQ_RULES, TCP_CLIENT, RouterProc, Server, client_py
from .netns import SERVER

LIMIT = 300


@pytest.fixture(scope="module")
def server(topo, workdir):
    s = Server(topo, workdir)
    # The flood's target port answers nothing, so every SYN leaves an entry behind.
    topo.exec(topo.server, "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
    yield s
    s.close()


@pytest.fixture(scope="module")
def router(topo, workdir, server):
    r = RouterProc(topo, workdir, "python", MASQ_RULES.format(masq_opts=""),
                   {"net.netfilter.nf_conntrack_max": str(LIMIT),
                    # few buckets, so early drop's 8-bucket scan can find victims
                    "net.netfilter.nf_conntrack_buckets": "16"})
    yield r
    r.kill()


def _rss_kb(topo, pid: int) -> int:
    status = topo.exec(topo.router, "cat", f"/proc/{pid}/status").stdout
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:")))


def test_syn_flood_keeps_the_table_at_its_limit_and_the_router_alive(topo, router, server):
    # An established connection first: ASSURED, so early drop must spare it.
    client_py(topo, TCP_CLIENT.format(sport=43000, mode="CLOSE-CLIENT", lines=1, gap=0))
    rss_before = _rss_kb(topo, router.proc.pid)
    flood = topo.popen(topo.client, "hping3", "-q", "-S", "-p", "9", "-i", "u200", SERVER,
                       stdout=open("/dev/null", "w"), stderr=open("/dev/null", "w"))
    try:
        time.sleep(3)                       # ~15,000 SYNs, 50 times the table
        assert router.alive(), router.diagnostics()
        assert router.call("count") <= LIMIT
    finally:
        flood.terminate()
        flood.wait(5)
    stats = router.call("stats")
    assert stats["stats"]["early_drop"] > 0, stats
    assert stats["count"] <= LIMIT
    # The router still forwards new traffic after the flood.
    client_py(topo, TCP_CLIENT.format(sport=43001, mode="AFTER-FLOOD", lines=2, gap=0))
    assert router.alive(), router.diagnostics()
    # Bounded memory: a full table of 300 entries costs far less than 20 MB.
    assert _rss_kb(topo, router.proc.pid) - rss_before < 20_000
