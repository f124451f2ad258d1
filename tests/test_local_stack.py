"""The router's own stack: what Linux answers to traffic addressed to the router itself.

Expectations come from the kernel's rules (tcp_v4_send_reset() in net/ipv4/tcp_ipv4.c,
__udp4_lib_rcv(), ip_protocol_deliver_rcu(), icmp_send()) and from what a 6.18 router in
namespaces sent and logged for the same packets (the event lines below are its
``conntrack -E`` output); tests/kernel/scenarios.py (local_*) replays them against it.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror

from nattrack.conntrack.conn import CTINFO_NAMES
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.ipv4.stack import Router
from nattrack.packet.ipv4 import Packet
from nattrack.replay import ManualClock, event_recorder, parse_listen_args

PUB, PRIV1, RTR_PUB, RTR_PRIV = "203.0.113.2", "10.0.0.2", "203.0.113.1", "10.0.0.1"
MASQ = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o wan -j MASQUERADE\nCOMMIT\n")
INPUT_DROP = MASQ + "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


class Box:
    """A masquerading router with its own stack, a manual clock and an event log."""

    def __init__(self, rules: str = MASQ, **kw) -> None:
        self.clock = ManualClock(1000.0)
        self.router = Router({"lan": RTR_PRIV + "/24", "wan": RTR_PUB + "/24"}, {"default": "wan"},
                             parse_rules(rules), clock=self.clock, seed=1,
                             local_stack=kw.pop("local_stack", True), **kw)
        self.events: list[str] = []
        self.router.ct.listeners.append(event_recorder(self.events, [], self.clock))

    def send(self, iif: str, pkt):
        v = self.router.receive(Packet.parse(bytearray(bytes(pkt)), 0, iif, ts=self.clock()))
        return v, [(s.oif, IP(s.data)) for s in v.sent]

    def event_lines(self) -> list[str]:
        return [e.split("\t", 1)[1] for e in self.events]

    @property
    def stats(self) -> dict:
        return self.router.ct.stats

    def table(self) -> list:
        return list(self.router.ct.conns())


def rst_fields(ip: IP) -> tuple:
    t = ip[TCP]
    return (str(t.flags), t.seq, t.ack, t.window, t.options, t.dataofs, ip.ttl, ip.id, str(ip.flags))


def syn_tuple(sport: int, src: str = PUB, dst: str = RTR_PUB) -> str:
    return (f"src={src} dst={dst} sport={sport} dport=22 [UNREPLIED] "
            f"src={dst} dst={src} sport=22 dport={sport}")


def test_syn_to_a_closed_port_gets_rst_ack_and_the_entry_dies_at_once():
    box = Box()
    v, out = box.send("wan", IP(src=PUB, dst=RTR_PUB, tos=0x2B) / TCP(sport=5000, dport=22,
                                                                       flags="S", seq=1000))
    ((oif, rst),) = out
    assert oif == "wan" and (rst.src, rst.dst, rst[TCP].sport, rst[TCP].dport) == (RTR_PUB, PUB, 22, 5000)
    assert rst_fields(rst) == ("RA", 0, 1001, 0, [], 5, 64, 0, "DF")
    assert rst.tos == 0x28                           # the segment's TOS without its ECN bits
    assert IP(bytes(rst)).chksum == rst.chksum and TCP(bytes(rst[TCP])).chksum == rst[TCP].chksum
    assert box.event_lines() == [                   # as a 6.18 router logged them
        "    [NEW] tcp      6 120 SYN_SENT " + syn_tuple(5000),
        "[DESTROY] tcp      6 120 CLOSE " + syn_tuple(5000)]
    assert box.table() == [] and box.stats["invalid"] == 0 and v.dropped is None


def test_rst_ack_acknowledges_syn_fin_and_data():
    box = Box()
    _, [(_, a)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5001, dport=22, flags="S",
                                                                 seq=1000) / b"hello")
    _, [(_, b)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5005, dport=22, flags="F",
                                                                 seq=2000) / b"xy")
    _, [(_, c)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5012, dport=22, flags="S",
                                                                 seq=0xFFFFFFFF))
    assert (str(a[TCP].flags), a[TCP].seq, a[TCP].ack) == ("RA", 0, 1006)
    assert (str(b[TCP].flags), b[TCP].seq, b[TCP].ack) == ("RA", 0, 2003)
    assert c[TCP].ack == 0                                             # wraps around


@pytest.mark.parametrize("flags,data", [("A", b""), ("PA", b"data")])
def test_segment_with_ack_gets_rst_with_its_ack_number_and_kills_the_loose_entry(flags, data):
    box = Box()
    _, [(_, rst)] = box.send("wan", IP(src=PUB, dst=RTR_PUB, tos=0x10)
                             / TCP(sport=5002, dport=22, flags=flags, seq=2000, ack=5000) / data)
    assert rst_fields(rst) == ("R", 5000, 0, 0, [], 5, 64, 0, "DF") and rst.tos == 0x10
    assert box.event_lines() == [
        "    [NEW] tcp      6 300 ESTABLISHED " + syn_tuple(5002),
        "[DESTROY] tcp      6 300 CLOSE " + syn_tuple(5002)]
    assert box.table() == [] and box.stats["invalid"] == 0


@pytest.mark.parametrize("flags,answer", [("FA", ("R", 5000, 0)), ("SA", ("R", 5000, 0))])
def test_fin_ack_and_unsolicited_syn_ack_are_invalid_both_ways(flags, answer):
    box = Box()
    _, [(_, rst)] = box.send("wan", IP(src=PUB, dst=RTR_PUB)
                             / TCP(sport=5004, dport=22, flags=flags, seq=2000, ack=5000))
    assert (str(rst[TCP].flags), rst[TCP].seq, rst[TCP].ack) == answer
    assert box.events == [] and box.stats["invalid"] == 2      # the segment, then the RST


def test_no_answer_to_a_rst_or_a_bad_checksum():
    box = Box()
    for seg in (TCP(sport=5007, dport=22, flags="R", seq=2000),
                TCP(sport=5008, dport=22, flags="S", seq=1000, chksum=0x1234)):
        v, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / seg)
        assert out == [] and v.dropped is None
    assert box.events == [] and box.stats["invalid"] == 2


def test_from_the_lan_to_either_router_address_the_rst_comes_from_the_address_hit():
    box = Box()
    for dst in (RTR_PRIV, RTR_PUB):
        _, [(oif, rst)] = box.send("lan", IP(src=PRIV1, dst=dst) / TCP(sport=5009, dport=22,
                                                                       flags="S", seq=1000))
        assert (oif, rst.src, rst.dst, str(rst[TCP].flags)) == ("lan", dst, PRIV1, "RA")
    assert box.table() == [] and [e.split()[1] for e in box.event_lines()] == ["tcp"] * 4


def test_udp_to_a_closed_port_is_port_unreachable_related_to_its_entry():
    box = Box()
    v, [(oif, err)] = box.send("wan", IP(src=PUB, dst=RTR_PUB, tos=0x2B)
                               / UDP(sport=6000, dport=9) / b"q")
    assert (oif, err.src, err.dst, err[ICMP].type, err[ICMP].code) == ("wan", RTR_PUB, PUB, 3, 3)
    assert (err.tos, err.ttl, str(err.flags)) == (0xC0 | 0x0A, 64, "")
    assert (err[IPerror].dst, err[UDPerror].dport) == (RTR_PUB, 9)
    assert CTINFO_NAMES[v.sent[0].pkt.ctinfo] == "RELATED_REPLY"
    assert box.event_lines() == [
        "    [NEW] udp      17 30 src=203.0.113.2 dst=203.0.113.1 sport=6000 dport=9 [UNREPLIED] "
        "src=203.0.113.1 dst=203.0.113.2 sport=9 dport=6000"]
    assert len(box.table()) == 1 and box.stats["invalid"] == 0
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / UDP(sport=6002, dport=9, chksum=0) / b"q")
    assert len(out) == 1                             # no checksum at all is fine
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / UDP(sport=6001, dport=9, chksum=0x1234))
    assert out == [] and box.stats["invalid"] == 1    # a bad one: dropped, nothing said


def test_udp_from_the_lan_to_the_public_address_is_answered_from_the_public_address():
    box = Box()
    _, [(oif, err)] = box.send("lan", IP(src=PRIV1, dst=RTR_PUB) / UDP(sport=6003, dport=9))
    assert (oif, err.src, err.dst, err[ICMP].code) == ("lan", RTR_PUB, PRIV1, 3)


def test_port_unreachable_is_rate_limited_per_destination():
    box = Box()
    answered = [len(box.send("wan", IP(src=PUB, dst=RTR_PUB) / UDP(sport=6100 + i, dport=9))[1])
                for i in range(8)]
    assert answered == [1] * 6 + [0] * 2 and box.router.counters["icmp_ratelimited"] == 2


def test_unknown_protocol_is_protocol_unreachable_known_ones_get_nothing():
    box = Box()
    _, [(_, err)] = box.send("wan", IP(src=PUB, dst=RTR_PUB, proto=253) / b"abcdefgh")
    assert (err.src, err[ICMP].type, err[ICMP].code, err[IPerror].proto) == (RTR_PUB, 3, 2, 253)
    assert box.event_lines() == ["    [NEW] unknown  253 600 src=203.0.113.2 dst=203.0.113.1 "
                                 "[UNREPLIED] src=203.0.113.1 dst=203.0.113.2"]
    for proto in (2, 136):                           # IGMP, UDP-Lite: handlers exist
        assert box.send("wan", IP(src=PUB, dst=RTR_PUB, proto=proto) / (b"\0" * 40))[1] == []


def test_input_drop_answers_nothing():
    box = Box(INPUT_DROP)
    for pkt in (TCP(sport=5000, dport=22, flags="S"), UDP(sport=6000, dport=9)):
        v, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / pkt)
        assert out == [] and v.dropped == "filter INPUT"


def test_open_tcp_port_answers_a_syn_with_syn_ack_and_keeps_the_entry():
    box = Box(listen={"tcp": {22}, "udp": {53}})
    _, [(_, sa)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5000, dport=22, flags="S",
                                                                  seq=1000))
    assert (str(sa[TCP].flags), sa[TCP].ack, sa.id, str(sa.flags), sa.ttl) == ("SA", 1001, 0, "DF", 64)
    assert sa[TCP].options == [("MSS", 1460)]
    _, [(_, again)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5000, dport=22,
                                                                     flags="S", seq=1000))
    assert (str(again[TCP].flags), again[TCP].seq) == ("SA", sa[TCP].seq)   # the SYN resent
    assert [e.split()[0:5] for e in box.event_lines()] == [        # as 6.18 logged them
        ["[NEW]", "tcp", "6", "120", "SYN_SENT"], ["[UPDATE]", "tcp", "6", "60", "SYN_RECV"],
        ["[UPDATE]", "tcp", "6", "60", "SYN_RECV"]]
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5000, dport=22, flags="A",
                                                            seq=1001, ack=sa[TCP].seq + 1))
    assert out == []                                 # the handshake's ACK: the socket's now
    _, [(_, rst)] = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5001, dport=22, flags="A",
                                                                   seq=7, ack=99))
    assert (str(rst[TCP].flags), rst[TCP].seq) == ("R", 99)   # a listener resets a stray ACK
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5002, dport=22, flags="F", seq=7))
    assert out == []                                 # and ignores a bare FIN
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / UDP(sport=6000, dport=53) / b"q")
    assert out == [] and box.router.counters["icmp_errors_sent"] == 0


def test_without_the_local_stack_only_pings_are_answered():
    box = Box(local_stack=False)
    assert box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=5000, dport=22, flags="S"))[1] == []
    assert box.send("wan", IP(src=PUB, dst=RTR_PUB) / ICMP(id=1))[1][0][1][ICMP].type == 0


def test_listen_errors_are_one_clear_line():
    with pytest.raises(ValueError, match="unknown protocol 'sctp'"):
        Box(listen={"sctp": {22}})
    with pytest.raises(ValueError, match="tcp port 70000 is not a number from 1 to 65535"):
        Box(listen={"tcp": {70000}})
    with pytest.raises(ValueError, match="listen needs local_stack=True"):
        Box(local_stack=False, listen={"tcp": {22}})
    assert parse_listen_args(["tcp:22", "udp:53,123", "tcp:80"]) == {"tcp": {22, 80}, "udp": {53, 123}}
    for bad in ("tcp", "icmp:1", "tcp:x", "udp:0"):
        with pytest.raises(ValueError, match=f"--listen '{bad}': expected tcp:PORT or udp:PORT"):
            parse_listen_args([bad])


def test_replay_cli_answers_from_the_router_and_takes_listen(tmp_path, capsys):
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    from nattrack.cli.main import main
    from nattrack.packet.pcapio import read_capture
    frames = [Ether() / IP(src=PUB, dst=RTR_PUB) / TCP(sport=5000, dport=22, flags="S", seq=1000),
              Ether() / IP(src=PUB, dst=RTR_PUB) / TCP(sport=5001, dport=80, flags="S", seq=1000)]
    for i, f in enumerate(frames):
        f.time = 1000.0 + i
    wrpcap(str(tmp_path / "wan.pcap"), frames)
    out = tmp_path / "out.pcapng"
    args = ["replay", f"wan={tmp_path / 'wan.pcap'}", "--iface", "lan=10.0.0.1/24",
            "--iface", "wan=203.0.113.1/24", "--route", "default=wan", "-w", str(out)]
    assert main([*args, "--listen", "tcp:22,2222"]) == 0
    sent = [(IP(f.data[14:])[TCP].sport, str(IP(f.data[14:])[TCP].flags)) for f in read_capture(out)]
    assert sent == [(22, "SA"), (80, "RA")]
    capsys.readouterr()
    assert main([*args, "--listen", "tcp:ssh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--listen 'tcp:ssh': expected tcp:PORT or udp:PORT" in err


def test_a_syn_flood_on_an_open_port_is_remembered_only_so_far():
    from nattrack.ipv4 import stack
    box = Box(listen={"tcp": {22}})
    for port in range(1024, 1024 + stack.ACCEPTED_MAX + 1):
        box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=port, dport=22, flags="S", seq=1))
    assert len(box.router._accepted) == stack.ACCEPTED_MAX
    _, out = box.send("wan", IP(src=PUB, dst=RTR_PUB) / TCP(sport=1024, dport=22, flags="A",
                                                            seq=2, ack=5))
    assert [str(ip[TCP].flags) for _, ip in out] == ["R"]      # the oldest was forgotten
