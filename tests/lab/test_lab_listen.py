"""`nattrack lab up --listen tcp:22`: the python-mode router's own stack, in a Mininet lab.

From srv, a SYN to the router's public address on the open port gets one SYN-ACK (a
listener's, tcp_conn_request()), on a closed port one RST|ACK (tcp_v4_send_reset()); the
kernel of r's namespace answers neither, and the closed port's entry is gone afterwards
(its RST, the only reply, deleted it), as in a kernel-mode lab's kernel table.
"""
from __future__ import annotations

import sys

import pytest

PROBE = r"""
import socket, time
from scapy.layers.inet import IP, TCP
rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
rx.settimeout(0.1)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for sport, dport in ((47011, 22), (47012, 4444)):
    tx.sendto(bytes(IP(src="203.0.113.10", dst="203.0.113.1")
                    / TCP(sport=sport, dport=dport, flags="S", seq=1000)), ("203.0.113.1", 0))
end = time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        p = IP(rx.recv(65535))
    except socket.timeout:
        continue
    if p.src == "203.0.113.1" and TCP in p and p[TCP].dport in (47011, 47012):
        print(p[TCP].sport, p[TCP].flags, p[TCP].ack)
"""


@pytest.mark.needs_root
def test_lab_up_listen_opens_a_port_of_the_routers_stack(fresh_lab):
    up = fresh_lab.cli("lab", "up", "--topo", "basic", "--listen", "tcp:22")
    assert up.returncode == 0, up.stderr
    probe = fresh_lab.cli("lab", "exec", "-n", "srv", "--", sys.executable, "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    assert sorted(probe.stdout.split("\n")[:-1]) == ["22 SA 1001", "4444 RA 1001"], probe.stdout
    table = fresh_lab.cli("conntrack", "-L", "-p", "tcp")
    assert table.returncode == 0, table.stderr
    assert "dport=4444" not in table.stdout and "dport=22 " in table.stdout, table.stdout


@pytest.mark.needs_root                      # (lab up checks for root first)
def test_lab_up_listen_refuses_kernel_mode_in_one_line(fresh_lab):
    out = fresh_lab.cli("lab", "up", "--mode", "kernel", "--listen", "tcp:22")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "nattrack: --listen opens ports of nattrack's own stack: python mode only (in kernel "
        "mode the router's own sockets answer)"], out.stderr
