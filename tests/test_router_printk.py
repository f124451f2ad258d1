"""The engine's printk lines reach the live router's log at net_ratelimit()'s pace."""
from __future__ import annotations

import logging

from scapy.layers.inet import IP, TCP

from nattrack.ipv4.stack import Router
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.packet.ipv4 import Packet
from nattrack.router.dataplane import NetRatelimit, PythonDataplane

FULL = "nf_conntrack: table full, dropping packet"


def test_ten_a_burst_then_the_suppressed_are_counted_when_the_next_interval_opens():
    rl = NetRatelimit()
    assert rl.lines([FULL] * 25, now=100.0) == [FULL] * 10
    assert rl.lines([FULL] * 3, now=104.9) == []
    assert rl.lines([FULL], now=105.0) == ["net_ratelimit: 18 callbacks suppressed", FULL]
    assert rl.lines([FULL] * 9, now=106.0) == [FULL] * 9
    assert rl.lines([FULL] * 2, now=200.0) == [FULL, FULL]      # nothing missed: no report


def test_a_full_table_is_logged_and_the_engine_list_emptied(caplog):
    now = [1000.0]
    r = Router({"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, {"default": "wan"},
               parse_rules("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n", "t"), clock=lambda: now[0])
    r.ct.sysctl["nf_conntrack_max"] = 2
    dp = PythonDataplane(r, {})
    try:
        for sport in range(40000, 40030):   # early_drop looks only near the new tuple's bucket
            syn = IP(src="10.0.0.2", dst="203.0.113.9", ttl=64) / TCP(sport=sport, dport=80,
                                                                      flags="S")
            r.receive(Packet.parse(bytearray(bytes(syn)), 0, iif="lan", ts=now[0]))
        assert r.ct.count == 2 and len(r.ct.log) >= 20
        with caplog.at_level(logging.WARNING, logger="nattrack.router"):
            dp.periodic(now[0])
        printed = [rec.getMessage() for rec in caplog.records]
        assert printed == [f"kernel: {FULL}"] * 10
        assert r.ct.log == []
    finally:
        dp.close()
