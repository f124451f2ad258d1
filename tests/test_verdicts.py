"""A tracker's answers are the kernel's: NF_ACCEPT, or -NF_ACCEPT for an INVALID packet and
-NF_REPEAT for a reopened connection (nf_conntrack_in()), never a value equal to NF_DROP;
the RST check of nf_conntrack_tcp_packet() answers with one small enum."""
from __future__ import annotations

from nattrack.conntrack import proto_tcp
from nattrack.conntrack.conn import IP_CT_DIR_ORIGINAL, IP_CT_ESTABLISHED
from nattrack.conntrack.uapi import INVALID, NF_ACCEPT, NF_DROP, NF_REPEAT, REPEAT
from nattrack_lab import Lab, TcpFlow


def test_the_negative_answers_are_the_kernels():
    assert (INVALID, REPEAT) == (-NF_ACCEPT, -NF_REPEAT) == (-1, -4)
    assert NF_DROP not in (INVALID, REPEAT)


def test_an_invalid_rst_is_minus_nf_accept_through_the_rst_check():
    lab = Lab()
    f = TcpFlow(lab)
    f.handshake()
    f.client("PA", b"x" * 100)
    f.server("A")
    ct = lab.only()
    table = lab.ct
    table.now_j = int(lab.clock() * table.hz)
    below = lab.parse("eth0", f.client_pkt("R", seq=f.cnxt - 50))
    exact = lab.parse("eth0", f.client_pkt("R", seq=f.cnxt))
    tcp = ct.proto
    state = tcp.state
    assert proto_tcp._rst_check(ct, tcp, IP_CT_DIR_ORIGINAL, state, below, table.sysctl) == (
        proto_tcp.RstCheck.INVALID, False)
    assert proto_tcp._rst_check(ct, tcp, IP_CT_DIR_ORIGINAL, state, exact, table.sysctl) == (
        proto_tcp.RstCheck.CHECK_WINDOW, False)
    assert proto_tcp.tcp_packet(table, ct, below, IP_CT_ESTABLISHED, IP_CT_DIR_ORIGINAL,
                                True) == INVALID == -1
    invalid = lab.stats["invalid"]
    f.client("R", seq=f.cnxt - 50)                       # through the router:
    assert lab.stats["invalid"] == invalid + 1           # counted invalid
