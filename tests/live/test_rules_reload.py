"""Rules reloaded under traffic, live: the ``rules`` verb replaces the tables like
iptables-restore, and nothing restarts (issue 10, item 1).

Per mode, one router process: a long-lived TCP connection and a UDP flow go through
MASQUERADE; halfway, the rules change to SNAT into a port range (and add a DNAT).  The
established flows keep their entries and their NAT (both clients check every answer);
a new flow gets a port from the new range; the event stream and the capture opened
before the reload still work after it.  In kernel mode the kernel does the same with
iptables-restore in the router's namespace, and its table must equal the shadow's; the
nat table's counters start over, the filter table's go on.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from .conftest import (MASQ_RULES, PYTHON, TCP_CLIENT, UDP_CLIENT, RouterProc, RouterError,
                       Server, client_py, kernel_conntrack, table_lines)
from .netns import ROUTER_WAN
from .test_router_kernel import assert_same_tables

OLD_RULES = MASQ_RULES.format(masq_opts="")
NEW_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i r-wan -p tcp --dport 8081 -j DNAT --to-destination 10.0.0.10:8080
-A POSTROUTING -o r-wan -p udp -j SNAT --to-source 203.0.113.1:61000-61099
-A POSTROUTING -o r-wan -p tcp -j SNAT --to-source 203.0.113.1:61000-61099
COMMIT
"""

UDP_FLOW = r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {sport}))
s.settimeout(2)
for i in range({count}):
    s.sendto(b"flow %d" % i, ("203.0.113.10", 5000))
    data, peer = s.recvfrom(100)
    assert data == b"flow %d" % i, data
    time.sleep({gap})
print("ok")
"""


@pytest.fixture(scope="module")
def server(topo, workdir):
    s = Server(topo, workdir)
    yield s
    s.close()


def _entry(lines: list[str], needle: str) -> str:
    hits = [l for l in lines if needle in l]
    assert len(hits) == 1, f"{needle!r} in:\n" + "\n".join(lines)
    return hits[0]


def _nat_port(line: str) -> int:
    return int(re.findall(r"dport=(\d+)", line)[1])       # the reply's destination port


def _no_timeout(line: str) -> str:
    return re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", line)


@pytest.mark.parametrize("mode", ["python", "kernel"])
def test_reload_under_traffic_keeps_every_entry_and_its_nat(topo, workdir, server, mode):
    base = {"python": 0, "kernel": 100}[mode]         # ports of their own (TIME_WAIT sockets)
    tsport, usport, newsport = 42010 + base, 41010 + base, 41020 + base
    router = RouterProc(topo, workdir, mode, OLD_RULES)
    events = tcp = udp = None
    try:
        pid = router.call("hello")["pid"]
        events = router.stream("events", {"filters": {"proto": "udp"}})
        router.call("capture", {"action": "start", "path": str(workdir / f"{mode}.pcapng")})
        tcp = topo.popen(topo.client, PYTHON, "-c",
                         TCP_CLIENT.format(sport=tsport, mode="ECHO", lines=10, gap=0.2),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        udp = topo.popen(topo.client, PYTHON, "-c", UDP_FLOW.format(sport=usport, count=10, gap=0.2),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.8)
        before = table_lines(router)
        old_tcp, old_udp = _entry(before, f"sport={tsport} "), _entry(before, f"sport={usport} ")
        assert " ESTABLISHED " in old_tcp

        bad = router.request("rules", {"text": "*nat\n-A POSTROUTING -j NOPE\nCOMMIT\n",
                                       "name": "bad.rules"})
        assert not bad["ok"] and "\n" not in bad["error"] and "old rules stay" in bad["error"]
        res = router.call("rules", {"text": NEW_RULES, "name": "snat-range.rules"})
        assert res["tables"] == ["nat"] and res["entries"] >= 2

        after = table_lines(router)
        assert _no_timeout(_entry(after, f"sport={tsport} ")) == _no_timeout(old_tcp)
        assert _no_timeout(_entry(after, f"sport={usport} ")) == _no_timeout(old_udp)
        client_py(topo, UDP_CLIENT.format(sport=newsport, count=2))
        new_udp = _entry(table_lines(router), f"sport={newsport} ")
        assert 61000 <= _nat_port(new_udp) <= 61099, new_udp

        for name, p in (("tcp", tcp), ("udp", udp)):         # every answer came back
            out, err = p.communicate(timeout=15)
            assert p.returncode == 0 and out.strip() == "ok", f"{name} client: {out}{err}"
        final = table_lines(router)
        assert _nat_port(_entry(final, f"sport={tsport} ")) == _nat_port(old_tcp)
        assert _nat_port(_entry(final, f"sport={usport} ")) == _nat_port(old_udp)
        udp_peers = server.peers("udp")
        assert udp_peers.count((ROUTER_WAN, _nat_port(old_udp))) >= 10     # one binding throughout
        assert (ROUTER_WAN, _nat_port(new_udp)) in udp_peers

        assert router.call("hello")["pid"] == pid and router.alive()       # nothing restarted
        got = events.read(timeout=2)
        assert any(f"sport={newsport}" in m.get("event", "") and "[NEW]" in m.get("event", "")
                   for m in got), got                       # the stream opened before still runs
        cap = router.call("capture", {"action": "stop"})
        assert cap["packets"] >= 40, cap

        if mode == "kernel":
            saved = topo.exec(topo.router, "iptables-save").stdout
            assert "SNAT --to-source 203.0.113.1:61000-61099" in saved and "MASQUERADE" not in saved
            assert "-A FORWARD -i r-lan -o r-wan -j ACCEPT" in saved      # *filter untouched
            assert "! --ctstate UNTRACKED" in saved
            # Counters as iptables-restore leaves them: the replaced nat table's start over
            # and count only the new flow's first packet (established flows never traverse
            # the nat table again); the filter table, not in the file, kept counting.
            counted = topo.exec(topo.router, "iptables-save", "-c").stdout
            snat_udp = [l for l in counted.splitlines() if "-p udp -j SNAT" in l][0]
            assert snat_udp.startswith("[1:"), counted
            fwd = [l for l in counted.splitlines() if "-A FORWARD" in l and "ESTABLISHED" in l][0]
            assert int(fwd[1:].split(":")[0]) > 20, counted
            time.sleep(0.3)
            kernel = [l for l in kernel_conntrack(topo, "-L").splitlines() if l.strip()]
            assert_same_tables(table_lines(router), kernel)
            st = router.call("stats")["router"]
            assert st["socket_drops"] == 0 and st["shadow_disagrees"] == 0, st
    finally:
        for p in (tcp, udp):
            if p is not None and p.poll() is None:
                p.kill()
        if events is not None:
            events.close()
        status = router.stop()
    assert status == 0, router.diagnostics()
    saved = topo.exec(topo.router, "iptables-save").stdout
    assert not [l for l in saved.splitlines() if l.startswith("-A")], saved   # all undone
