"""The router's own stack, live: a SYN from the server to the router's public address,
where nothing listens, gets exactly one RST|ACK in both modes.

Python mode: the engine's stack answers (tcp_v4_send_reset()) and the namespace's kernel
must not answer as well (its raw-table DROP keeps it out), and the tracker's table ends
empty, as the kernel's does: the RST|ACK, a reply before any other, deletes the entry.
Kernel mode: the kernel answers and the shadow only runs that RST through LOCAL_OUT; its
own stack stays off, or the RST would count twice (an INVALID the kernel never saw).
"""
from __future__ import annotations

import re

import pytest

from .conftest import MASQ_RULES, PYTHON, RouterProc, kernel_conntrack, table_lines
from .netns import ROUTER_WAN, SERVER

RULES = MASQ_RULES.format(masq_opts="")

# Run in the server namespace: one SYN to the router's closed port 4444, then every TCP
# segment from the router to our port within 1.5 s, one line of flags each.
SYN_PROBE = r"""
import socket, time
from scapy.layers.inet import IP, TCP
sport = {sport}
rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
rx.bind(("eth0", 0))
rx.settimeout(0.1)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
tx.sendto(bytes(IP(src="{server}", dst="{router}") / TCP(sport=sport, dport=4444, flags="S",
                                                          seq=1000)), ("{router}", 0))
end = time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        data = rx.recv(65535)
    except socket.timeout:
        continue
    p = IP(data)
    if p.src == "{router}" and TCP in p and p[TCP].dport == sport:
        print(p[TCP].flags, p[TCP].sport, p[TCP].seq, p[TCP].ack)
"""


def answers_to_syn(topo, sport: int) -> list[str]:
    code = SYN_PROBE.format(sport=sport, server=SERVER, router=ROUTER_WAN)
    p = topo.exec(topo.server, PYTHON, "-c", code, check=False, timeout=20)
    assert p.returncode == 0, f"the probe failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout.splitlines()


def kernel_invalid(topo) -> int:
    return sum(int(n) for n in re.findall(r"\binvalid=(\d+)", kernel_conntrack(topo, "-S")))


@pytest.fixture
def python_router(topo, workdir):
    r = RouterProc(topo, workdir, "python", RULES)
    yield r
    r.kill()


@pytest.fixture
def kernel_router(topo, workdir):
    r = RouterProc(topo, workdir, "kernel", RULES)
    yield r
    r.kill()


def test_python_mode_answers_a_syn_to_the_router_with_one_rst(topo, python_router):
    answers = answers_to_syn(topo, 47001)
    # RST|ACK from the closed port: seq 0, ack = the SYN's seq + 1; one, not the kernel's too.
    assert answers == ["RA 4444 0 1001"], answers
    assert table_lines(python_router) == []
    st = python_router.call("stats")
    assert st["stats"].get("invalid", 0) == 0, st        # the RST was the entry's own reply
    assert kernel_conntrack(topo, "-L").strip() == ""     # and the kernel tracked nothing
    assert python_router.stop() == 0


def test_kernel_mode_shadow_counts_the_kernels_rst_once(topo, kernel_router):
    invalid0 = kernel_invalid(topo)
    answers = answers_to_syn(topo, 47002)
    assert answers == ["RA 4444 0 1001"], answers          # the kernel's, the only one
    assert kernel_conntrack(topo, "-L").strip() == ""
    assert table_lines(kernel_router) == []
    st = kernel_router.call("stats")
    assert st["stats"].get("invalid", 0) == kernel_invalid(topo) - invalid0, st
    assert st["router"]["kernel_originated"] == 1, st["router"]
    assert kernel_router.stop() == 0
