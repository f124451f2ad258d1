"""The FTP conntrack helper and the expectation table (docs/helpers.md): a helper only by
rule, PORT/EPRT/227/229 parsed as nf_conntrack_ftp.c parses them, the expectation's
`conntrack -L expect` / `-E expect` lines as conntrack-tools 1.4.7 prints them on 6.18,
and the data connection RELATED to its master.

The lines below were taken from the kernel (a namespace, `-t raw -j CT --helper ftp`, a
scripted FTP exchange over sockets) and only the addresses changed."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP

from nattrack.conntrack import conn as C
from nattrack.conntrack.expect import format_expect, format_expect_event
from nattrack.conntrack.helper_ftp import find_pattern, try_rfc1123, SEARCH
from nattrack.conntrack.show import format_conn, format_event
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.netfilter.xtables import RulesError

from nattrack_lab import PRIV1, PUB, Lab, TcpFlow

CLIENT_PORT = 40000


def rules(helper: bool = True, forward_policy: str = "DROP") -> str:
    """A stateful firewall that lets FTP's control connection through and, with the
    helper, its data connections as RELATED."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if helper:
        lines.append("-A PREROUTING -p tcp --dport 21 -j CT --helper ftp")
    lines += ["COMMIT", "*filter", ":INPUT ACCEPT [0:0]", f":FORWARD {forward_policy} [0:0]",
              ":OUTPUT ACCEPT [0:0]",
              "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
              "-A FORWARD -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT", "COMMIT"]
    return "\n".join(lines) + "\n"


class Ftp:
    """A control connection PRIV1:40000 -> PUB:21 through a router without NAT."""

    def __init__(self, helper: bool = True, forward_policy: str = "DROP",
                 ruleset: str | None = None) -> None:
        self.lab = lab = Lab(ruleset or rules(helper, forward_policy))
        self.ct = lab.ct
        self.exp_events: list[str] = []
        self.ct.expect.listeners.append(
            lambda kind, exp, now_j: self.exp_events.append(format_expect_event(kind, exp, now_j, C.HZ)))
        self.ct_events: list[str] = []
        self.ct.listeners.append(lambda kind, ct, table, ev: self.ct_events.append(
            format_event(kind, ct, table.jiffies(), helper=table.helper_name(ct))))
        self.flow = TcpFlow(lab, sport=CLIENT_PORT, dport=21)
        self.flow.nat_addr = PRIV1
        self.flow.handshake()

    def greet(self) -> None:
        """The first line each way is never searched: it only teaches the helper where
        lines start."""
        self.server(b"220 hi\r\n")
        self.client(b"USER anonymous\r\n")
        self.server(b"331 pw\r\n")

    def client(self, data: bytes):
        return self.flow.client("PA", data)

    def server(self, data: bytes):
        return self.flow.server("PA", data)

    def expect_lines(self) -> list[str]:
        return [format_expect(e, self.ct.jiffies(), C.HZ) for e in self.ct.expect]

    def master(self):
        return next(c for c in self.ct.conns() if c.orig.dport == 21)

    def data(self, iif: str, src: str, dst: str, sport: int, dport: int):
        """The first SYN of a data connection; its verdict and the packet (with ct)."""
        v = self.lab.send(iif, IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S",
                                                          seq=7000))
        return v, self.lab.last


def mask_master(dport: int, src: str, dst: str) -> str:
    return (f"300 proto=6 src={src} dst={dst} sport=0 dport={dport} "
            "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
            f"master-src={PRIV1} master-dst={PUB} sport={CLIENT_PORT} dport=21 class=0 helper=ftp")


def test_passive_227_expects_the_client_and_the_data_connection_is_related():
    f = Ftp()
    f.greet()
    f.client(b"PASV\r\n")
    assert f.ct.expect.items == []
    f.server(b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n")
    line = mask_master(51210, PRIV1, PUB)
    assert f.expect_lines() == [line]
    assert f.exp_events == [f"    [NEW] {line}"]
    v, pkt = f.data("eth0", PRIV1, PUB, 36150, 51210)
    assert v.sent and not v.dropped               # RELATED passes the firewall
    assert pkt.ctinfo == C.IP_CT_RELATED and pkt.ct.status & C.IPS_EXPECTED
    assert f.ct.masters[pkt.ct] is f.master()
    assert f.ct.expect.items == []                # taken by the data connection
    assert f.exp_events[-1] == f"[DESTROY] {line}"
    assert f.ct_events[-1].startswith("    [NEW] tcp      6 120 SYN_SENT src=10.0.0.2 dst=203.0.113.2 "
                                      "sport=36150 dport=51210 [UNREPLIED]")
    assert "helper" not in f.ct_events[-1]        # the data connection has no helper
    assert f.ct.expect.stats["expect_new"] == 1


def test_without_the_rule_no_helper_and_the_data_connection_is_new_and_dropped():
    """Kernel 6.0 removed nf_conntrack_helper: port 21 alone attaches nothing."""
    f = Ftp(helper=False)
    f.greet()
    f.client(b"PASV\r\n")
    f.server(b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n")
    assert f.ct.expect.items == [] and f.ct.helper_name(f.master()) is None
    v, pkt = f.data("eth0", PRIV1, PUB, 36150, 51210)
    assert v.dropped == "filter FORWARD" and pkt.ctinfo == C.IP_CT_NEW


def test_conntrack_L_and_events_show_the_helper():
    f = Ftp()
    m = f.master()
    assert f.ct.helper_name(m) == "ftp"
    assert format_conn(m, f.ct.jiffies(), helper="ftp") == (
        "tcp      6 432000 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=40000 dport=21 "
        "src=203.0.113.2 dst=10.0.0.2 sport=21 dport=40000 [ASSURED] mark=0 helper=ftp use=1")
    assert f.ct_events[0] == ("    [NEW] tcp      6 120 SYN_SENT src=10.0.0.2 dst=203.0.113.2 "
                              "sport=40000 dport=21 [UNREPLIED] src=203.0.113.2 dst=10.0.0.2 "
                              "sport=21 dport=40000 helper=ftp")


def test_active_port_expects_the_server_from_any_port():
    f = Ftp()
    f.greet()
    f.client(b"PORT 10,0,0,2,100,20\r\n")
    assert f.expect_lines() == [mask_master(25620, PUB, PRIV1)]
    v, pkt = f.data("eth1", PUB, PRIV1, 20, 25620)
    assert v.sent and pkt.ctinfo == C.IP_CT_RELATED
    # Each live data connection holds a reference to its master (kernel: use=2 here).
    assert f.ct.use(f.master()) == 2 and f.ct.use(pkt.ct) == 1
    f.ct.kill(pkt.ct)
    assert f.ct.use(f.master()) == 1


def test_epsv_and_eprt():
    f = Ftp()
    f.greet()
    f.server(b"229 Entering Extended Passive Mode (|||50001|)\r\n")
    assert f.expect_lines() == [mask_master(50001, PRIV1, PUB)]
    f.client(b"EPRT |1|10.0.0.2|50002|\r\n")
    # max_expected is 1: the EPRT expectation evicted the EPSV one (DESTROY, then NEW).
    assert [e.split()[0] for e in f.exp_events] == ["[NEW]", "[DESTROY]", "[NEW]"]
    assert f.expect_lines() == [mask_master(50002, PUB, PRIV1)]


def test_the_same_expectation_again_replaces_it():
    f = Ftp()
    f.greet()
    f.server(b"227 ok (203,0,113,2,200,10)\r\n")
    f.lab.skip(10)
    f.server(b"227 ok (203,0,113,2,200,10)\r\n")
    assert [e.split()[:2] for e in f.exp_events] == [["[NEW]", "300"], ["[DESTROY]", "290"],
                                                      ["[NEW]", "300"]]


def test_first_line_of_each_direction_is_not_searched():
    f = Ftp()
    f.server(b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n")
    f.client(b"PORT 10,0,0,2,100,20\r\n")
    assert f.ct.expect.items == []
    f.client(b"PORT 10,0,0,2,100,21\r\n")      # now after a newline the helper saw
    assert f.expect_lines() == [mask_master(25621, PUB, PRIV1)]


def test_a_line_split_in_two_segments_is_not_searched_at_its_second_half():
    f = Ftp()
    f.greet()
    f.client(b"NOOP")                           # no newline: the next segment is mid-line
    f.client(b"\r\nPORT 10,0,0,2,100,20\r\n")   # the command is not at the packet's start
    assert f.ct.expect.items == []


def test_an_address_other_than_the_senders_opens_nothing():
    """loose=0: a PORT naming a third host (the classic FTP bounce) expects nothing."""
    f = Ftp()
    f.greet()
    f.client(b"PORT 10,0,0,3,100,20\r\n")
    f.server(b"227 ok (198,51,100,7,200,10)\r\n")
    assert f.ct.expect.items == []


def test_a_partial_command_is_dropped():
    f = Ftp()
    f.greet()
    v = f.client(b"POR")                        # a prefix of PORT: the kernel drops it
    assert v.dropped and "partial matching of `PORT'" in f.ct.log[-1]
    f.flow.cnxt -= 3
    v = f.client(b"PORT 10,0,0\r\n")            # numbers that do not parse: dropped too
    assert v.dropped
    f.flow.cnxt -= 13
    assert not f.client(b"port 10,0,0,2,100,20\r\n").dropped    # case-insensitive
    assert len(f.ct.expect.items) == 1


def test_expectation_times_out_after_300_seconds_and_dies_with_its_master():
    f = Ftp()
    f.greet()
    master = f.master()
    f.server(b"227 ok (203,0,113,2,200,10)\r\n")
    f.flow.client("A")
    f.lab.skip(299.9)
    assert len(f.expect_lines()) == 1 and f.expect_lines()[0].startswith("0 proto=6")
    f.lab.skip(0.1)
    assert f.expect_lines() == [] and f.exp_events[-1].startswith("[DESTROY] 0 proto=6")
    f.server(b"227 ok (203,0,113,2,200,11)\r\n")
    f.ct.kill(master)
    assert f.ct.expect.items == [] and f.exp_events[-1].startswith("[DESTROY]")
    v, pkt = f.data("eth0", PRIV1, PUB, 36150, 51211)
    assert v.dropped and pkt.ctinfo == C.IP_CT_NEW


def test_parsers_follow_the_kernel():
    assert try_rfc1123(b"Entering Passive Mode 1,2,3,4,5,6\r\n", None)[2:] == (0x01020304, 0x0506)
    port, eprt = SEARCH[0]
    assert find_pattern(b"EPRT |2|::1|5|\r\n", *eprt[:4], 0)[0] == -1    # IPv6: not ours
    assert find_pattern(b"EPRT |1|1.2.3.4|0|\r\n", *eprt[:4], 0)[0] == -1  # port 0
    assert find_pattern(b"PASV\r\n", *port[:4], 0)[0] == 0
    assert find_pattern(b"PORT 1,2,3,4,1,1,\r\n", *port[:4], 0)[0] == -1


@pytest.mark.parametrize("rule, message", [
    ("-A PREROUTING -p udp --dport 21 -j CT --helper ftp", "the helper is for TCP"),
    ("-A PREROUTING -p tcp -j CT --helper sip", "models only ftp"),
    ("-A PREROUTING -p tcp -j CT --helper ftp --notrack", "one of them"),
])
def test_rule_errors(rule, message):
    with pytest.raises(RulesError, match=message):
        parse_rules(f"*raw\n:PREROUTING ACCEPT [0:0]\n{rule}\nCOMMIT\n")


def test_rule_round_trips():
    rs = parse_rules(rules())
    assert rs.helpers
    assert str(rs.tables["raw"]["PREROUTING"][0]) == \
        "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp"


NFT = """table inet filter {
  ct helper ftp-standard {
    type "ftp" protocol tcp;
    l3proto ip;
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    tcp dport 21 ct helper set "ftp-standard" accept
  }
}
"""


def test_nft_ct_helper_set_in_the_forward_chain():
    from nattrack.netfilter.nft import parse_nft, write_nft
    f = Ftp(ruleset=NFT)
    assert f.ct.helper_name(f.master()) == "ftp"
    f.server(b"220 hi\r\n")
    f.server(b"227 ok (203,0,113,2,200,10)\r\n")
    v, pkt = f.data("eth0", PRIV1, PUB, 36150, 51210)
    assert v.sent and pkt.ctinfo == C.IP_CT_RELATED
    text = write_nft(parse_nft(NFT))
    assert '\tct helper ftp {\n\t\ttype "ftp" protocol tcp\n\t\tl3proto ip\n\t}\n' in text
    assert 'tcp dport 21 ct helper set "ftp" accept' in text
    assert parse_nft(text).helpers


@pytest.mark.parametrize("text, message", [
    ('table ip t { chain f { type filter hook forward priority 0; ct helper set "x"; } }',
     "no ct helper 'x' in table ip t"),
    ('table ip t { ct helper x { type "sip" protocol udp; } }', "models only ftp"),
    ('table ip t { ct helper x { type "ftp" protocol tcp; }\n chain r { type filter hook '
     'prerouting priority raw; ct helper set "x"; } }', "at raw priority"),
    ('table ip t { ct helper x { l3proto ip; } }', "has no 'type'"),
])
def test_nft_errors(text, message):
    from nattrack.netfilter.nft import parse_nft
    with pytest.raises(RulesError, match=message):
        parse_nft(text)


# --- NAT of the payload (nf_nat_ftp, nf_ct_seqadj) ---------------------------------------

MASQ_FTP = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\nCOMMIT\n"
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n")


def test_active_ftp_through_masquerade_rewrites_port_and_adjusts_sequence_numbers():
    f = Ftp(ruleset=MASQ_FTP)
    f.flow.nat_addr = "203.0.113.1"
    f.greet()
    before = f.flow.cnxt
    v = f.client(b"PORT 10,0,0,2,100,20\r\n")
    out = IP(v.sent[0].data)
    assert bytes(out[TCP].payload) == b"PORT 203,0,113,1,100,20\r\n"       # 3 bytes longer
    assert out[TCP].seq == before and out.len == 20 + 20 + 25
    assert IP(bytes(out)).chksum == out.chksum                            # both checksums right
    assert TCP(bytes(out[TCP])).chksum == out[TCP].chksum
    assert f.master().status & C.IPS_SEQ_ADJUST
    assert f.expect_lines() == [
        "300 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=25620 "
        "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
        f"master-src={PRIV1} master-dst={PUB} sport={CLIENT_PORT} dport=21 class=0 helper=ftp"]
    # The server acknowledges the 3 bytes more it got; the client sees its own numbering.
    v = f.flow.server("PA", b"200 ok\r\n", ack=f.flow.cnxt + 3)
    assert v.sent and IP(v.sent[0].data)[TCP].ack == f.flow.cnxt
    # The client's next segment is moved on by 3.
    seq = f.flow.cnxt
    v = f.client(b"LIST\r\n")
    assert IP(v.sent[0].data)[TCP].seq == seq + 3
    # The server's data connection to the router's port reaches the client (DNAT).
    v, pkt = f.data("eth1", PUB, "203.0.113.1", 20, 25620)
    out = IP(v.sent[0].data)
    assert (out.dst, out[TCP].dport, pkt.ctinfo) == (PRIV1, 25620, C.IP_CT_RELATED)
    assert pkt.ct.status & C.IPS_DST_NAT and f.ct.masters[pkt.ct] is f.master()


def test_passive_ftp_through_masquerade_snats_the_data_connection():
    f = Ftp(ruleset=MASQ_FTP)
    f.flow.nat_addr = "203.0.113.1"
    f.greet()
    v = f.server(b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n")
    assert bytes(IP(v.sent[0].data)[TCP].payload) == \
        b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n"             # same length
    assert not f.master().status & C.IPS_SEQ_ADJUST
    v, pkt = f.data("eth0", PRIV1, PUB, 36150, 51210)
    out = IP(v.sent[0].data)
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == ("203.0.113.1", 36150, PUB, 51210)
    assert pkt.ctinfo == C.IP_CT_RELATED and pkt.ct.status & C.IPS_SRC_NAT_DONE


def test_an_expected_port_already_expected_moves():
    """nf_nat_exp_find_port(): two masters announcing the same port to the same peer:
    the second gets another port, and its payload says so."""
    f = Ftp(ruleset=MASQ_FTP)
    f.flow.nat_addr = "203.0.113.1"
    f.greet()
    f.client(b"PORT 10,0,0,2,100,20\r\n")
    other = TcpFlow(f.lab, src="10.0.0.3", sport=CLIENT_PORT, dport=21)
    other.handshake()
    other.server("PA", b"220 hi\r\n")
    other.client("PA", b"USER a\r\n")
    v = other.client("PA", b"PORT 10,0,0,3,100,20\r\n")
    text = bytes(IP(v.sent[0].data)[TCP].payload)
    assert text.startswith(b"PORT 203,0,113,1,") and text != b"PORT 203,0,113,1,100,20\r\n"
    assert len(f.ct.expect.items) == 2


def test_dropped_control_syns_leave_no_helper_state():
    """A SYN to port 21 that the firewall drops gets the helper in raw PREROUTING, but its
    entry is never confirmed: nothing of it may stay behind."""
    lab = Lab(rules(helper=True, forward_policy="DROP").replace(
        "-A FORWARD -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT\n", ""))
    for port in range(30000, 30050):
        v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=port, dport=21, flags="S"))
        assert v.dropped == "filter FORWARD"
    assert len(lab.ct.helpers) <= 1 and lab.ct.count == 0


def test_ct_helper_set_has_no_iptables_form():
    """iptables attaches helpers only in the raw table (xt_CT); a filter chain's
    `ct helper set` cannot be written as iptables: a clear error."""
    from nattrack.netfilter.nft import parse_nft, to_iptables
    with pytest.raises(ValueError, match="no iptables form"):
        to_iptables(parse_nft(NFT))


# --- the lines against the kernel's, on this machine -----------------------------------------

KERNEL_EXCHANGE = r'''
import socket, subprocess, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 21)); srv.listen(1)
ev = subprocess.Popen(["conntrack", "-E", "expect"], stdout=subprocess.PIPE, text=True)
time.sleep(0.5)
c = socket.create_connection(("127.0.0.1", 21), source_address=("127.0.0.1", 40000))
s, _ = srv.accept()
for sender, receiver, line in ((s, c, b"220 hi\r\n"), (c, s, b"USER anonymous\r\n"),
                               (s, c, b"227 Entering Passive Mode (127,0,0,1,200,10).\r\n")):
    sender.sendall(line)
    receiver.recv(100)
time.sleep(0.3)
print(subprocess.run(["conntrack", "-L", "expect"], capture_output=True, text=True).stdout, end="")
ev.terminate()
print(ev.communicate()[0].splitlines()[0])
'''


def _kernel_expect_lines() -> list[str]:
    """`conntrack -L expect` and the first `conntrack -E expect` line after a 227 over
    loopback in a namespace of our own, with `-t raw -A OUTPUT ... -j CT --helper ftp`."""
    import os
    import subprocess
    import sys
    ns = f"ntI-ftp-{os.getpid()}"
    run = lambda *a, **kw: subprocess.run(a, check=True, capture_output=True, text=True, **kw)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "iptables", "-t", "raw", "-A", "OUTPUT", "-p", "tcp",
            "--dport", "21", "-j", "CT", "--helper", "ftp")
        out = run("ip", "netns", "exec", ns, sys.executable, "-c", KERNEL_EXCHANGE, timeout=60)
        return out.stdout.splitlines()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_expect_lines_are_the_kernels():
    """The same exchange through the engine (the kernel's loopback path runs the helper
    twice, which only replaces the expectation): the same `-L expect` line, and the same
    `[NEW]` event, as conntrack-tools prints them here."""
    import os
    import shutil
    if os.geteuid() != 0 or shutil.which("conntrack") is None:
        pytest.skip("needs root and conntrack(8): a namespace of its own")
    listed, new_event = _kernel_expect_lines()
    from nattrack.conntrack.core import NF_INET_LOCAL_OUT, ConntrackTable
    from nattrack.replay import ManualClock
    table = ConntrackTable(ManualClock(0.0))
    events: list[str] = []
    table.expect.listeners.append(
        lambda kind, exp, now_j: events.append(format_expect_event(kind, exp, now_j, C.HZ)))
    lo = "127.0.0.1"
    seqs = {40000: 1000, 21: 5000}

    def send(sport: int, dport: int, flags: str, data: bytes = b""):
        pkt = Lab(None).parse(None, IP(src=lo, dst=lo) / TCP(
            sport=sport, dport=dport, flags=flags, seq=seqs[sport],
            ack=seqs[dport] if "A" in flags else 0) / data)
        seqs[sport] += len(data) + ("S" in flags)
        table.conntrack_in(pkt, NF_INET_LOCAL_OUT)
        table.assign_helper(pkt.ct, "ftp") if dport == 21 else None
        table.confirm(pkt)

    send(40000, 21, "S")
    send(21, 40000, "SA")
    send(40000, 21, "A")
    send(21, 40000, "PA", b"220 hi\r\n")
    send(40000, 21, "PA", b"USER anonymous\r\n")
    send(21, 40000, "PA", b"227 Entering Passive Mode (127,0,0,1,200,10).\r\n")
    engine = [format_expect(e, table.jiffies(), C.HZ) for e in table.expect]
    # The kernel's clock ran on while it listed: its timeout may be 299.
    assert [line.split(" ", 1)[1] for line in engine] == [listed.split(" ", 1)[1]]
    assert events[0] == new_event
