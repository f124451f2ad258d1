"""Kernel mode's shadow reads its packet socket in batches (recvmmsg, RxBatch) and, with
``NATTRACK_NO_BATCH=1``, one frame per call (SingleRx): either way it must see
every frame the kernel forwards, by the right interface, and keep its table equal to
the kernel's.  A burst of UDP makes the socket hold many frames at once; a connection
to a closed port of the router makes the kernel send a RST of its own (an egress copy
the shadow keeps past its receive slot).
"""
from __future__ import annotations

import time

import pytest

from .burst import BURST, server  # noqa: F401 -- the fixture, used by name
from .conftest import MASQ_RULES, PYTHON, RouterProc, kernel_conntrack, table_lines
from .netns import ROUTER_LAN, SERVER
from .test_router_kernel import assert_same_tables

RULES = MASQ_RULES.format(masq_opts=" --random-fully")
COUNT = 300

CLOSED_PORT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=3)
except ConnectionRefusedError:
    print("refused")
"""


@pytest.mark.usefixtures("server")
@pytest.mark.parametrize("no_batch", ["0", "1"])
def test_the_shadow_keeps_up_with_and_without_batches(topo, workdir, monkeypatch, no_batch):
    monkeypatch.setenv("NATTRACK_NO_BATCH", no_batch)
    r = RouterProc(topo, workdir, "kernel", RULES)
    try:
        ping = topo.exec(topo.client, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", SERVER, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        before = r.call("stats")["router"]
        # COUNT datagrams in a burst, each echoed: the socket holds many frames at once
        p = topo.exec(topo.client, PYTHON, "-c", BURST, SERVER, str(COUNT), timeout=30)
        answered = int(p.stdout)
        # UDP: the server's and client's sockets may drop some of a burst (the shadow's
        # losses are what the counters and the tables below check)
        assert answered >= COUNT // 2, p.stdout
        refused = topo.exec(topo.client, PYTHON, "-c", CLOSED_PORT, ROUTER_LAN, timeout=10)
        assert refused.stdout.strip() == "refused", refused.stdout + refused.stderr
        time.sleep(0.3)
        after = r.call("stats")["router"]
        # each answered datagram crossed twice, seen twice each time (in and out)
        assert after["rx_frames"] - before["rx_frames"] >= 4 * answered
        assert after["kernel_originated"] - before["kernel_originated"] >= 1     # the RST
        for k in ("shadow_missed", "socket_drops", "shadow_disagrees", "router_errors"):
            assert after[k] == 0, (k, after)
        kernel = [line for line in kernel_conntrack(topo, "-L").splitlines() if line.strip()]
        shadow = table_lines(r)
        assert_same_tables(shadow, kernel)
        assert any(line.startswith("udp") and "dport=5000" in line for line in shadow), shadow
        log = r.log_path.read_text()
        assert ("the shadow reads one frame per system call" in log) == (no_batch == "1"), log
    finally:
        assert r.stop() == 0, r.diagnostics()
