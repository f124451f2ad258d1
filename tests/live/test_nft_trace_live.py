"""`nattrack trace --format nft`, live: the python-mode router sends, with each traced
packet, the lines `nft monitor trace` would print for it (nattrack.netfilter.nfttrace,
as this machine's nft prints them), and the CLI's nft format prints exactly those.

The rule set is iptables' (the live suite's MASQUERADE router), traced in the nft form
`nattrack rules translate` writes.  A ping through the router: the request takes the
forward rule and the masquerade rule, the reply the established rule.
"""
from __future__ import annotations

import re
import time

import pytest

from nattrack.cli.conntrack import format_nft

from .conftest import MASQ_RULES, RouterProc
from .netns import CLIENT, SERVER

RULES = MASQ_RULES.format(masq_opts="")
ID = re.compile(r"^trace id ([0-9a-f]{8}) ")


@pytest.fixture(scope="module")
def router(topo, workdir):
    r = RouterProc(topo, workdir, "python", RULES)
    yield r
    r.kill()


def _ping_traces(topo, router) -> list[dict]:
    tr = router.stream("trace", {"filters": {"proto": "icmp", "dst": SERVER}, "count": 2})
    try:
        time.sleep(0.3)
        topo.exec(topo.client, "ping", "-c", "1", "-W", "2", SERVER, check=False)
        got = tr.read(3, timeout=5)          # the request and the reply; then the stream ends
    finally:
        tr.close()
    assert len(got) == 2, got
    return [t["trace"] for t in got]


def _events(lines: list[str]) -> list[str]:
    """The lines without their trace id and without the packet lines' fields."""
    return [re.sub(r" packet: .*", " packet:", ID.sub("", line)) for line in lines]


def test_a_traced_ping_carries_nft_monitor_trace_lines(topo, router):
    req, rep = _ping_traces(topo, router)
    assert _events(req["nft"]) == [
        "ip nat PREROUTING packet:",
        "ip nat PREROUTING policy accept ",
        "ip filter FORWARD packet:",
        'ip filter FORWARD rule iifname "r-lan" oifname "r-wan" counter packets 0 bytes 0 '
        "accept (verdict accept)",
        "ip nat POSTROUTING packet:",
        'ip nat POSTROUTING rule oifname "r-wan" counter packets 0 bytes 0 masquerade '
        "(verdict accept)",
    ]
    assert _events(rep["nft"]) == [
        "ip filter FORWARD packet:",
        "ip filter FORWARD rule ct state established,related counter packets 0 bytes 0 "
        "accept (verdict accept)",
    ]
    # The packet line as the kernel's: the frame's MACs, then the IP and ICMP headers.
    first = req["nft"][0]
    client_mac, router_mac = topo.mac(topo.client, "eth0"), topo.mac(topo.router, "r-lan")
    assert (f'packet: iif "r-lan" ether saddr {client_mac} ether daddr {router_mac} '
            f"ip saddr {CLIENT} ip daddr {SERVER} ") in first, first
    assert "icmp type echo-request" in first, first
    # One trace id per packet: each record's own, the two different.
    ids = [{ID.match(line).group(1) for line in t["nft"]} for t in (req, rep)]
    assert all(len(i) == 1 for i in ids) and ids[0] != ids[1], ids
    # `nattrack trace --format nft` prints exactly the lines the router sent.
    assert format_nft(req) == req["nft"] and format_nft(rep) == rep["nft"]
