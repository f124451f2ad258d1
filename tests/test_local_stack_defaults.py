"""Where the router's own stack is on, and where it must stay off.

On by default (the kernel always answers what is addressed to it) and in the live
python-mode router, which takes ``--listen``.  Off where the router's own answers are
seen rather than made: kernel mode's shadow (tests/live/test_router_local_stack.py) and
the notebooks' engine fed a recording, which holds the kernel's RSTs already.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP

from nattrack.lab import RULES_DIR
from nattrack.ipv4.stack import Router
from nattrack.notebook import scenarios as sc
from nattrack.notebook.engine import Engine, simulation
from nattrack.notebook.session import PacketPair
from nattrack.router.__main__ import main as router_main

SRV, RTR_WAN = "203.0.113.10", "203.0.113.1"
T0 = 1_800_000_000.0
SYN = bytes(IP(src=SRV, dst=RTR_WAN, id=7) / TCP(sport=47001, dport=4444, flags="S", seq=1000))


def test_router_stack_is_on_by_default():
    assert Router({"wan": RTR_WAN + "/24"}).local_stack


def _router_args(*extra: str) -> list[str]:
    return ["--iface", "r-wan=203.0.113.1/24", "--control", "/nonexistent/ctl.sock", *extra]


def test_router_bad_listen_is_one_line_exit_2(capsys):
    assert router_main(["--mode", "python", *_router_args("--listen", "tcp:0")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nattrack.router: --listen 'tcp:0': expected tcp:PORT or udp:PORT (1-65535), "
                   "e.g. tcp:22 or udp:53,123"]


def test_router_listen_is_python_mode_only(capsys):
    assert router_main(["--mode", "kernel", *_router_args("--listen", "tcp:22")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--listen works in python mode only" in err[0]


def _recorded_engine() -> Engine:
    return Engine({"rules": "classroom", "rules_text": (RULES_DIR / "classroom.rules").read_text(),
                   "sysctls": {}, "t0": T0,
                   "router": {"ifaces": sc.ROUTER_IFACES, "routes": sc.ROUTER_ROUTES}}, {})


def test_recording_engine_counts_the_kernels_rst_once():
    """A recorded SYN to the router's closed port, then the kernel's recorded RST|ACK: the
    entry is made and deleted by that RST, nothing is INVALID (with the engine's stack
    answering too, the recorded RST would come second and count as INVALID)."""
    eng = _recorded_engine()
    assert eng.feed(PacketPair("ntr-wan", SYN, None, None, "", T0), T0) == "NEW"
    rst = bytes(IP(src=RTR_WAN, dst=SRV, id=0, flags="DF", ttl=64)
                / TCP(sport=4444, dport=47001, flags="RA", seq=0, ack=1001, window=0))
    assert eng.feed(PacketPair(None, rst, "ntr-wan", rst, "sent by the router", T0), T0) \
        == "ESTABLISHED_REPLY"
    assert [e.split()[0] for e in eng.events] == ["[NEW]", "[DESTROY]"]
    assert eng.table() == [] and eng.router.ct.stats.get("invalid", 0) == 0


def test_simulation_engine_answers_itself():
    """No kernel in a simulation: the engine's own stack answers the SYN with RST|ACK,
    whose reply deletes the entry; the SYN itself was delivered, not forwarded."""
    eng = simulation(SimpleNamespace(rules="classroom", sysctls={}), T0, {})
    pp = PacketPair("ntr-wan", SYN, None, None, "", T0)
    assert eng.feed(pp, T0, simulate=True) == "NEW"
    assert (pp.after, pp.verdict) == (None, "delivered to the router")
    assert [e.split()[0] for e in eng.events] == ["[NEW]", "[DESTROY]"]
    assert eng.table() == [] and eng.router.ct.stats.get("invalid", 0) == 0


def test_lab_passes_listen_to_the_primary_router_only_in_python_mode():
    from nattrack.lab.topo import RouterSpec
    from nattrack.lab.topologies import get_topology
    spec = RouterSpec("r", {"r-wan": "203.0.113.1/24"}, listen=["tcp:22", "udp:53,123"])
    assert spec.router_args()[-4:] == ["--listen", "tcp:22", "--listen", "udp:53,123"]
    topo = get_topology("basic")(mode="python", listen=["tcp:22"], wait=False)
    assert topo.routers[topo.primary].router_args()[-2:] == ["--listen", "tcp:22"]
    with pytest.raises(ValueError, match="python mode only"):
        get_topology("basic")(mode="kernel", listen=["tcp:22"])
