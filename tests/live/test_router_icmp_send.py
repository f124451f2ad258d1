"""ICMP errors the router itself sends, live (icmp_send() with nf_ct_attach()).

``ping -t 1`` from the client: the router answers "Time to live exceeded" from its LAN
address, in python mode (the engine's Router.icmp_send()) as in kernel mode (the
kernel's own); in kernel mode the shadow counts no ``error`` for the kernel's error
(it carries the echo request's entry) and agrees with the kernel's counters.
"""
from __future__ import annotations

import re
import time

from .conftest import MASQ_RULES, RouterProc, kernel_conntrack, table_lines
from .netns import ROUTER_LAN, SERVER

RULES = MASQ_RULES.format(masq_opts="")


def _ttl1_probe(topo) -> str:
    p = topo.exec(topo.client, "ping", "-n", "-c", "1", "-t", "1", "-W", "2", SERVER, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"From {ROUTER_LAN} icmp_seq=1 Time to live exceeded" in out, out
    return out


def _kernel_errors(topo) -> int:
    out = kernel_conntrack(topo, "-S")
    return sum(int(v) for v in re.findall(r"\berror=(\d+)", out))


def test_python_mode_answers_ttl_exceeded(topo, workdir):
    r = RouterProc(topo, workdir, "python", RULES)
    try:
        before = r.call("stats")
        _ttl1_probe(topo)
        st = r.call("stats")
        assert st["router"]["icmp_errors_sent"] == 1, st
        assert st["stats"]["error"] == before["stats"]["error"] == 0, st
        assert st["count"] == 0 and table_lines(r, proto="icmp") == []   # never confirmed
        p = topo.exec(topo.client, "ping", "-n", "-c", "1", "-W", "2", SERVER, check=False)
        assert p.returncode == 0, p.stdout + p.stderr                    # TTL 64 goes through
        assert r.stop() == 0, r.diagnostics()
    finally:
        r.kill()


def test_kernel_mode_shadow_counts_no_error(topo, workdir):
    r = RouterProc(topo, workdir, "kernel", RULES)
    try:
        k0 = _kernel_errors(topo)
        _ttl1_probe(topo)
        time.sleep(0.5)                          # the held request and the error behind it ran
        st = r.call("stats")
        assert st["router"]["dropped"] == 1 and st["router"]["icmp_errors_sent"] == 1, st
        assert st["router"]["kernel_originated"] >= 1, st              # the kernel's error left
        assert st["stats"]["error"] == 0 and _kernel_errors(topo) - k0 == 0, st
        assert st["count"] == 0 and kernel_conntrack(topo, "-C").strip() == "0"
        assert st["router"]["shadow_missed"] == 0, st
        assert r.stop() == 0, r.diagnostics()
    finally:
        r.kill()
