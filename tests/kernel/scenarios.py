"""Crafted-packet scenarios run through the kernel (and replayed through nattrack).

Each :class:`~.harness.Scenario` is data: a ruleset for the router, sysctls,
steps (send a frame from a host, sleep) and an :class:`~.harness.Expect` with
what the kernel is documented to do (``/work/shared/reference/kernel-conntrack.md``
§3-§8; the section is named in each description).  The frames are built here
with scapy; :class:`Tcp` only keeps sequence numbers consistent.

Hosts: priv1 10.0.0.2, priv2 10.0.0.3 (behind the router), pub 203.0.113.2.
The router masquerades behind 203.0.113.1 unless a scenario says otherwise.
"""
from __future__ import annotations

import re

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment

from nattrack.conntrack.profile import running_profile

from .harness import (PRIV1, PRIV2, PUB, ROUTER_PRIV, ROUTER_PUB, Expect, Scenario, Send,
                      Sleep)

# ----------------------------------------------------------------------------------------
# Rulesets.

MASQ = ("*nat\n"
        ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n"
        "-A POSTROUTING -o r-pub -j MASQUERADE\n"
        "COMMIT\n")

MASQ_DROP_INVALID = MASQ + (
    "*filter\n"
    ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
    "COMMIT\n")

MASQ_INPUT_DROP = MASQ + (
    "*filter\n"
    ":INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    "COMMIT\n")

MASQ_FORWARD_POLICY = MASQ + (
    "*filter\n"
    ":INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    "-A FORWARD -i r-priv -o r-pub -p udp --dport 53 -m conntrack --ctstate NEW -j ACCEPT\n"
    "-A FORWARD -i r-priv -o r-pub -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT\n"
    "COMMIT\n")

SNAT_RANGE = ("*nat\n"
              ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
              ":POSTROUTING ACCEPT [0:0]\n"
              "-A POSTROUTING -o r-pub -p udp -j SNAT --to-source 203.0.113.1:1024-1030\n"
              "-A POSTROUTING -o r-pub -p tcp -j SNAT --to-source 203.0.113.1:1024-1030\n"
              "COMMIT\n")

SNAT_TINY = ("*nat\n"
             ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             ":POSTROUTING ACCEPT [0:0]\n"
             "-A POSTROUTING -o r-pub -p udp -j SNAT --to-source 203.0.113.1:2000-2001\n"
             "COMMIT\n")

MASQ_NOTRACK = ("*raw\n"
                ":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A PREROUTING -p udp --dport 5300 -j NOTRACK\n"
                "-A PREROUTING -p udp --sport 5300 -j NOTRACK\n"
                "COMMIT\n") + MASQ

DNAT_FORWARD = ("*nat\n"
                ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                ":POSTROUTING ACCEPT [0:0]\n"
                "-A PREROUTING -i r-pub -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80\n"
                "-A POSTROUTING -o r-pub -j MASQUERADE\n"
                "COMMIT\n")

# ----------------------------------------------------------------------------------------
# Frame helpers.

_SEGLEN_FLAGS = {"S": 1, "F": 1}


class Tcp:
    """Both ends of one TCP conversation through the router, with sequence numbers kept
    consistent: ``c(...)`` is a segment from the client, ``s(...)`` one from the server.

    By default the ACK field acknowledges everything the other side has sent so far
    (``unacked=n`` acknowledges n bytes less) and the sequence number continues the
    sender's stream; ``seq=``/``ack=`` override; ``advance=False`` leaves the stream
    position alone (a bogus segment).  Window 65535, no options unless given.
    """

    def __init__(self, client: str, csrc: str, cport: int, cdst: str, cdport: int,
                 server: str, ssrc: str, sport: int, sdst: str, sdport: int,
                 ciss: int = 1000, siss: int = 50000, win: int = 65535):
        self.client, self.csrc, self.cport, self.cdst, self.cdport = client, csrc, cport, cdst, cdport
        self.server, self.ssrc, self.sport, self.sdst, self.sdport = server, ssrc, sport, sdst, sdport
        self.ciss, self.siss = ciss, siss
        self.cnxt, self.snxt = ciss, siss      # next sequence number of each side
        self.win = win

    @classmethod
    def masq(cls, cport: int, dport: int, client: str = "priv1", nat_port: int | None = None,
             dst: str = PUB, **kw) -> "Tcp":
        """priv host -> pub through MASQUERADE (port kept unless ``nat_port``)."""
        src = {"priv1": PRIV1, "priv2": PRIV2}[client]
        return cls(client, src, cport, dst, dport,
                   "pub", dst, dport, ROUTER_PUB, nat_port if nat_port is not None else cport, **kw)

    def _seg(self, from_client: bool, flags: str, data: bytes, seq: int | None,
             ack: int | None, unacked: int, options=None, win: int | None = None,
             advance: bool = True) -> Send:
        if from_client:
            host, src, sport, dst, dport = self.client, self.csrc, self.cport, self.cdst, self.cdport
            nxt, peer = self.cnxt, self.snxt
        else:
            host, src, sport, dst, dport = self.server, self.ssrc, self.sport, self.sdst, self.sdport
            nxt, peer = self.snxt, self.cnxt
        if seq is None:
            seq = nxt
        if ack is None:
            ack = (peer - unacked) if "A" in flags else 0
        seglen = len(data) + sum(_SEGLEN_FLAGS.get(f, 0) for f in flags)
        end = seq + seglen
        if not advance:
            pass
        elif from_client:
            self.cnxt = max(self.cnxt, end)
        else:
            self.snxt = max(self.snxt, end)
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq % 2**32, ack=ack % 2**32,
                  window=self.win if win is None else win, options=options or [])
        pkt = IP(src=src, dst=dst) / tcp
        if data:
            pkt = pkt / data
        who = "client" if from_client else "server"
        return Send(host, pkt, note=f"{who} {flags or '-'} seq={seq} ack={ack} len={len(data)}")

    def c(self, flags: str, data: bytes = b"", seq: int | None = None, ack: int | None = None,
          unacked: int = 0, **kw) -> Send:
        return self._seg(True, flags, data, seq, ack, unacked, **kw)

    def s(self, flags: str, data: bytes = b"", seq: int | None = None, ack: int | None = None,
          unacked: int = 0, **kw) -> Send:
        return self._seg(False, flags, data, seq, ack, unacked, **kw)

    def handshake(self) -> tuple[Send, Send, Send]:
        return (self.c("S"), self.s("SA"), self.c("A"))

    def reopen(self, ciss: int) -> Send:
        """A new SYN on the same ports with a new initial sequence number."""
        self.ciss = self.cnxt = ciss
        return self.c("S")


def udp(host: str, sport: int, dport: int, payload: bytes = b"q", dst: str = PUB, **ip) -> Send:
    src = {"priv1": PRIV1, "priv2": PRIV2, "pub": PUB}[host]
    return Send(host, IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload,
                note=f"udp {src}:{sport} > {dst}:{dport}")


def udp_reply(sport: int, dport: int, payload: bytes = b"r", src: str = PUB) -> Send:
    """From pub to the router's public address (a reply to a masqueraded flow)."""
    return Send("pub", IP(src=src, dst=ROUTER_PUB) / UDP(sport=sport, dport=dport) / payload,
                note=f"udp reply {src}:{sport} > {ROUTER_PUB}:{dport}")


def echo(host: str, ident: int, seq: int = 1, dst: str = PUB, type: int = 8) -> Send:
    src = {"priv1": PRIV1, "priv2": PRIV2}[host]
    return Send(host, IP(src=src, dst=dst) / ICMP(type=type, id=ident, seq=seq) / b"ping-data",
                note=f"icmp type {type} id={ident} seq={seq}")


def echo_reply(ident: int, seq: int = 1, src: str = PUB) -> Send:
    return Send("pub", IP(src=src, dst=ROUTER_PUB) / ICMP(type=0, id=ident, seq=seq) / b"ping-data",
                note=f"echo reply id={ident} seq={seq}")


def icmp_error(outer_dst: str, inner: IP, type: int = 3, code: int = 3, src: str = PUB) -> Send:
    """An ICMP error from pub quoting ``inner`` (the packet as pub received it)."""
    quoted = bytes(inner)[:28]
    return Send("pub", IP(src=src, dst=outer_dst) / ICMP(type=type, code=code) / quoted,
                note=f"icmp error {type}/{code} to {outer_dst}")


def frags(host: str, sport: int, dport: int, size: int, fragsize: int, ident: int,
          reverse: bool = False) -> Send:
    src = {"priv1": PRIV1, "priv2": PRIV2}[host]
    pkt = IP(src=src, dst=PUB, id=ident) / UDP(sport=sport, dport=dport) / (b"F" * size)
    parts = fragment(pkt, fragsize=fragsize)
    if reverse:
        parts = list(reversed(parts))
    return Send(host, parts, note=f"udp {size} bytes in {len(parts)} fragments"
                                  f"{' (reversed)' if reverse else ''}")


# Regular-expression shorthands for the expectations.
def ev(kind: str, rest: str) -> str:
    """An event line pattern; a literal timeout N also accepts N-1 (the kernel computes
    the printed value when the event is sent, which may be a jiffy after the refresh)."""
    def relax(m: re.Match) -> str:
        n = int(m.group(3))
        return f"{m.group(1)}{m.group(2)}(?:{n}|{n - 1})" if n > 0 else m.group(0)
    rest = re.sub(r"^(tcp|udp|icmp)(\\s\+\d+ |\s+\d+ )(\d+)(?= )", relax, rest)
    return rf"^\s*\[{kind}\] {rest}"


NAT_TUPLE = r"src=10\.0\.0\.{h} dst=203\.0\.113\.2 sport={p} dport={d}"


# ----------------------------------------------------------------------------------------
# TCP (§3).

def _tcp_lifecycle_client_close() -> Scenario:
    t = Tcp.masq(40001, 8080)
    return Scenario(
        "tcp_client_close",
        "§3.4 full lifecycle, client closes first: SYN_SENT, SYN_RECV, ESTABLISHED+ASSURED, "
        "FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT",
        MASQ,
        (*t.handshake(), t.c("PA", b"hello"), t.s("A"), t.s("PA", b"world"), t.c("A"),
         t.c("FA"), t.s("A"), t.s("FA"), t.c("A")),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT .*sport=40001 dport=8080 \[UNREPLIED\]"),
                    ev("UPDATE", r"tcp\s+6 60 SYN_RECV "),
                    ev("UPDATE", r"tcp\s+6 432000 ESTABLISHED .*\[ASSURED\]"),
                    ev("UPDATE", r"tcp\s+6 120 FIN_WAIT "),
                    ev("UPDATE", r"tcp\s+6 60 CLOSE_WAIT "),
                    ev("UPDATE", r"tcp\s+6 30 LAST_ACK "),
                    ev("UPDATE", r"tcp\s+6 120 TIME_WAIT ")),
            table=(r"^tcp\s+6 1(19|20) TIME_WAIT .*\[ASSURED\]",), table_count=1,
            stats={"invalid": 0}))


def _tcp_server_close() -> Scenario:
    t = Tcp.masq(40002, 8080)
    return Scenario(
        "tcp_server_close",
        "§3.3 the server (reply direction) closes first",
        MASQ,
        (*t.handshake(), t.c("PA", b"GET"), t.s("PA", b"200"), t.c("A"),
         t.s("FA"), t.c("A"), t.c("FA"), t.s("A")),
        expect=Expect(
            events=(ev("NEW", r"tcp .* SYN_SENT "), ev("UPDATE", r"tcp .* SYN_RECV "),
                    ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),
                    ev("UPDATE", r"tcp\s+6 120 FIN_WAIT "), ev("UPDATE", r"tcp\s+6 60 CLOSE_WAIT "),
                    ev("UPDATE", r"tcp\s+6 30 LAST_ACK "), ev("UPDATE", r"tcp\s+6 120 TIME_WAIT ")),
            table=(r"^tcp .* TIME_WAIT ",), table_count=1))


def _tcp_fin_piggyback() -> Scenario:
    t = Tcp.masq(40003, 8080)
    return Scenario(
        "tcp_fin_piggyback",
        "§3.4 the server's FIN rides on the ACK of the client's FIN: CLOSE_WAIT is skipped",
        MASQ,
        (*t.handshake(), t.c("PA", b"bye"), t.s("A"), t.c("FA"), t.s("FA"), t.c("A")),
        expect=Expect(
            events=(ev("NEW", r"tcp .* SYN_SENT "), ev("UPDATE", r"tcp .* SYN_RECV "),
                    ev("UPDATE", r"tcp .* ESTABLISHED "), ev("UPDATE", r"tcp .* FIN_WAIT "),
                    ev("UPDATE", r"tcp\s+6 30 LAST_ACK "), ev("UPDATE", r"tcp .* TIME_WAIT ")),
            no_events=(r"CLOSE_WAIT",), table=(r"^tcp .* TIME_WAIT ",), table_count=1))


def _tcp_simultaneous_close() -> Scenario:
    t = Tcp.masq(40004, 8080)
    return Scenario(
        "tcp_simultaneous_close",
        "§3.3 both FINs cross (neither acknowledges the other's FIN), then both ACK",
        MASQ,
        (*t.handshake(), t.c("FA"), t.s("FA", unacked=1), t.c("A"), t.s("A")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* FIN_WAIT "), ev("UPDATE", r"tcp .* LAST_ACK "),
                    ev("UPDATE", r"tcp .* TIME_WAIT ")),
            table=(r"^tcp .* TIME_WAIT ",), table_count=1))


def _tcp_half_close() -> Scenario:
    t = Tcp.masq(40005, 8080)
    return Scenario(
        "tcp_half_close",
        "§3.3 half close: the client's FIN is acknowledged and the server keeps sending "
        "(CLOSE_WAIT) before closing",
        MASQ,
        (*t.handshake(), t.c("FA"), t.s("A"), t.s("PA", b"more data"), t.c("A"),
         t.s("PA", b"even more"), t.c("A"), t.s("FA"), t.c("A")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* FIN_WAIT "), ev("UPDATE", r"tcp\s+6 60 CLOSE_WAIT "),
                    ev("UPDATE", r"tcp .* LAST_ACK "), ev("UPDATE", r"tcp .* TIME_WAIT ")),
            table=(r"^tcp .* TIME_WAIT ",), table_count=1))


def _tcp_rst_established() -> Scenario:
    t = Tcp.masq(40006, 8081)
    return Scenario(
        "tcp_rst_established",
        "§3.4 RST on an established connection: CLOSE, 10 s; a later ACK keeps CLOSE",
        MASQ,
        (*t.handshake(), t.c("PA", b"hello"), t.s("A"), t.s("RA"), t.c("A")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),
                    ev("UPDATE", r"tcp\s+6 10 CLOSE .*\[ASSURED\]")),
            no_events=(r"DESTROY",),
            table=(r"^tcp\s+6 (9|10) CLOSE .*\[ASSURED\]",), table_count=1))


def _tcp_rst_answer_to_syn() -> Scenario:
    t = Tcp.masq(40007, 81)
    return Scenario(
        "tcp_rst_answer_to_syn",
        "§3.4 a RST+ACK as the only answer to a SYN (closed port) deletes the entry at once",
        MASQ,
        (t.c("S"), t.s("RA", seq=0)),
        expect=Expect(
            events=(ev("NEW", r"tcp .* SYN_SENT .*\[UNREPLIED\]"),
                    ev("DESTROY", r"tcp\s+6 \d+ CLOSE .*\[UNREPLIED\]")),
            table_count=0, stats={"invalid": 0},
            egress=(("r-priv", r"tcp 203\.0\.113\.2:81 > 10\.0\.0\.2:40007 \[RA\]"),)))


def _tcp_syn_retransmit() -> Scenario:
    t = Tcp.masq(40008, 9001)
    syn = t.c("S")
    return Scenario(
        "tcp_syn_retransmit",
        "§3.4 a retransmitted SYN in SYN_SENT does not refresh the timeout (since v5.14)",
        MASQ,
        (syn, Sleep(1.6), syn),
        expect=Expect(events=(ev("NEW", r"tcp\s+6 120 SYN_SENT "),),
                      no_events=(r"UPDATE",),
                      table=(r"^tcp\s+6 11[78] SYN_SENT .*\[UNREPLIED\]",), table_count=1))


def _tcp_reopen_time_wait() -> Scenario:
    t = Tcp.masq(40009, 8080)
    return Scenario(
        "tcp_reopen_time_wait",
        "§3.4(1) a new SYN on the tuple of a TIME_WAIT entry kills it and creates a new entry",
        MASQ,
        (*t.handshake(), t.c("FA"), t.s("FA"), t.c("A"), Sleep(0.3), t.reopen(900000), t.s("SA"),
         t.c("A")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* TIME_WAIT "),
                    ev("DESTROY", r"tcp\s+6 1(19|20) TIME_WAIT "),
                    ev("NEW", r"tcp\s+6 120 SYN_SENT .*\[UNREPLIED\]"),
                    ev("UPDATE", r"tcp .* SYN_RECV "),
                    ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]")),
            table=(r"^tcp .* ESTABLISHED .*\[ASSURED\]",), table_count=1))


def _tcp_simultaneous_open() -> Scenario:
    t = Tcp.masq(40011, 8080)
    return Scenario(
        "tcp_simultaneous_open",
        "§3.3/§3.4(5) simultaneous open: a SYN from the reply side gives SYN_SENT2, then both "
        "SYN-ACKs and an ACK establish the connection",
        MASQ,
        (t.c("S"), t.s("S"), t.c("SA", seq=t.ciss), t.s("SA", seq=t.siss), t.c("A")),
        expect=Expect(
            # the reply SYN does not refresh the SYN_SENT timer (no reply seen yet)
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT "), ev("UPDATE", r"tcp\s+6 119 SYN_SENT2 "),
                    ev("UPDATE", r"tcp\s+6 60 SYN_RECV "),
                    ev("UPDATE", r"tcp\s+6 432000 ESTABLISHED .*\[ASSURED\]")),
            table_count=1))


def _tcp_midstream_loose() -> Scenario:
    t = Tcp.masq(42000, 9000)
    return Scenario(
        "tcp_midstream_loose",
        "§3.7 mid-stream pickup with nf_conntrack_tcp_loose=1: a bare ACK creates an "
        "ESTABLISHED entry capped at 300 s; after a reply the next packet sets ASSURED",
        MASQ,
        (t.c("PA", b"data"), t.s("A"), t.c("PA", b"more"), t.s("A")),
        sysctls={"net.netfilter.nf_conntrack_tcp_loose": "1"},
        expect=Expect(
            # the UPDATEs print no state: it did not change (no PROTOINFO in the event)
            events=(ev("NEW", r"tcp\s+6 300 ESTABLISHED .*\[UNREPLIED\]"),
                    ev("UPDATE", r"tcp\s+6 300 src=.*dport=42000$"),
                    ev("UPDATE", r"tcp\s+6 300 src=.* \[ASSURED\]$")),
            table=(r"^tcp\s+6 43199\d ESTABLISHED .*\[ASSURED\]",), table_count=1,
            stats={"invalid": 0}))


def _tcp_midstream_strict() -> Scenario:
    t = Tcp.masq(42001, 9000)
    return Scenario(
        "tcp_midstream_strict",
        "§3.7 with nf_conntrack_tcp_loose=0 a mid-stream ACK is INVALID and leaks un-NATed",
        MASQ,
        (t.c("PA", b"data"),),
        sysctls={"net.netfilter.nf_conntrack_tcp_loose": "0"},
        expect=Expect(
            no_events=(r".",), table_count=0, stats={"invalid": 1},
            egress=(("r-pub", r"tcp 10\.0\.0\.2:42001 > 203\.0\.113\.2:9000 \[PA\]"),)))


def _tcp_invalid_flags() -> Scenario:
    mk = lambda port, flags: Tcp.masq(port, 9003).c(flags)   # noqa: E731
    return Scenario(
        "tcp_invalid_flags",
        "§3.2 bare FIN, SYN+FIN, no flags and a stateless RST are INVALID: no entry, "
        "counted, forwarded un-NATed (§2); a SYN afterwards is NATed",
        MASQ,
        (mk(42023, "F"), mk(42024, "SF"), mk(42025, ""), mk(42026, "R"), mk(42027, "S")),
        expect=Expect(
            events=(ev("NEW", r"tcp .* SYN_SENT .*sport=42027 "),),
            table_count=1, stats={"invalid": 4},
            egress=(("r-pub", r"tcp 10\.0\.0\.2:42023 > 203\.0\.113\.2:9003 \[F\]"),
                    ("r-pub", r"tcp 10\.0\.0\.2:42024 > 203\.0\.113\.2:9003 \[FS\]"),
                    ("r-pub", r"tcp 10\.0\.0\.2:42025 > 203\.0\.113\.2:9003 \[\]"),
                    ("r-pub", r"tcp 10\.0\.0\.2:42026 > 203\.0\.113\.2:9003 \[R\]"),
                    ("r-pub", r"tcp 203\.0\.113\.1:42027 > 203\.0\.113\.2:9003 \[S\]"))))


def _out_of_window_steps(t: Tcp) -> tuple:
    return (*t.handshake(), t.c("PA", b"hello"), t.s("A"),
            # check I: sequence far beyond what the server allowed
            t.c("PA", b"future", seq=t.cnxt + 300000, advance=False),
            # check III: acknowledging server data that was never sent
            t.c("A", ack=t.snxt + 300000, advance=False),
            # a good segment afterwards
            t.c("PA", b"fine"), t.s("A"))


def _tcp_out_of_window() -> Scenario:
    t = Tcp.masq(42030, 9004)
    return Scenario(
        "tcp_out_of_window",
        "§3.6 checks I (SEQ over upper bound) and III (ACK over upper bound): INVALID, "
        "leak un-NATed; the connection goes on",
        MASQ,
        _out_of_window_steps(t),
        expect=Expect(
            table=(r"^tcp .* ESTABLISHED .*\[ASSURED\]",), table_count=1, stats={"invalid": 2},
            egress=(("r-pub", r"tcp 10\.0\.0\.2:42030 > 203\.0\.113\.2:9004 \[PA\] .* len=6"),
                    ("r-pub", r"tcp 10\.0\.0\.2:42030 > 203\.0\.113\.2:9004 \[A\]"),
                    ("r-pub", r"tcp 203\.0\.113\.1:42030 > 203\.0\.113\.2:9004 \[PA\] .* len=4"))))


def _tcp_be_liberal() -> Scenario:
    t = Tcp.masq(42031, 9004)
    return Scenario(
        "tcp_be_liberal",
        "§3.6 with nf_conntrack_tcp_be_liberal=1 out-of-window segments are accepted and NATed",
        MASQ,
        _out_of_window_steps(t),
        sysctls={"net.netfilter.nf_conntrack_tcp_be_liberal": "1"},
        expect=Expect(
            table=(r"^tcp .* ESTABLISHED .*\[ASSURED\]",), table_count=1, stats={"invalid": 0},
            no_egress=(("r-pub", r"10\.0\.0\.2:42031"),)))


def _tcp_unacked_data() -> Scenario:
    t = Tcp.masq(42040, 9005)
    return Scenario(
        "tcp_unacked_data",
        "§3.5 unacknowledged data caps an ESTABLISHED entry at 300 s (no event)",
        MASQ,
        (*t.handshake(), t.c("PA", b"x" * 100)),
        expect=Expect(
            events=(ev("UPDATE", r"tcp\s+6 432000 ESTABLISHED .*\[ASSURED\]"),),
            table=(r"^tcp\s+6 (299|300) ESTABLISHED .*\[ASSURED\]",), table_count=1))


def _tcp_syn_in_established() -> Scenario:
    t = Tcp.masq(42050, 9006)
    return Scenario(
        "tcp_syn_ignored_in_established",
        "§3.4(2) a SYN in ESTABLISHED is ignored (sIG): still NATed, no state or timeout "
        "change, no event",
        MASQ,
        (*t.handshake(), t.c("PA", b"abc"), t.s("A"), t.c("S", seq=777777, advance=False),
         t.c("PA", b"def")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),),
            no_events=(r"SYN_SENT .*\[ASSURED\]", r"DESTROY"),
            # 299/300: the last segment is unacknowledged data (§3.5)
            table=(r"^tcp\s+6 (299|300) ESTABLISHED ",), table_count=1, stats={"invalid": 0},
            egress=(("r-pub", r"tcp 203\.0\.113\.1:42050 > 203\.0\.113\.2:9006 \[S\] seq=777777"),)))


def _tcp_rst_inexact() -> Scenario:
    t = Tcp.masq(42060, 9007)
    return Scenario(
        "tcp_rst_inexact_seq",
        "§3.4(6) in ESTABLISHED a RST whose sequence is in the window but not the expected "
        "one does not close the entry (it lets a challenge ACK through); the exact one does",
        MASQ,
        (*t.handshake(), t.c("PA", b"abc"), t.s("A"), t.s("R", seq=t.snxt + 1000, advance=False),
         t.c("A"), t.s("R")),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),
                    ev("UPDATE", r"tcp\s+6 10 CLOSE ")),
            table=(r"^tcp\s+6 (9|10) CLOSE ",), table_count=1))


def _tcp_rst_after_syn_same_direction() -> Scenario:
    t = Tcp.masq(42080, 9009)
    syn = 777000
    return Scenario(
        "tcp_rst_after_syn_same_direction",
        "§3.4(6) after a SYN in ESTABLISHED (ignored), a RST with a bogus sequence number from "
        "the same side does not close the entry: only the other side's RST answers that SYN "
        "(\"netfilter: conntrack: tcp: do not force CLOSE on invalid-seq RST without direction "
        "check\", stable June 2026); the RST is INVALID, the entry keeps its timeout",
        MASQ,
        (*t.handshake(), t.c("PA", b"abc"), t.s("A"), t.c("S", seq=syn, advance=False),
         t.c("RA", seq=t.cnxt + 5000000, ack=syn + 1, advance=False)),
        expect=Expect(
            no_events=(r"CLOSE",), stats={"invalid": 1}, table_count=1,
            table=(r"^tcp\s+6 43(1999|2000) ESTABLISHED .*\[ASSURED\]",),
            egress=(("r-pub", r"tcp 10\.0\.0\.2:42080 > 203\.0\.113\.2:9009 \[RA\]"),)))


def _tcp_rst_out_of_window_both_ways() -> Scenario:
    t = Tcp.masq(42081, 9009)
    return Scenario(
        "tcp_rst_out_of_window_both_ways",
        "§3.5 nf_tcp_handle_invalid(): an out-of-window RST from each side in turn (both "
        "INVALID) cuts an ASSURED entry's timeout to the UNACK value, state unchanged",
        MASQ,
        (*t.handshake(), t.c("PA", b"abc"), t.s("A"),
         t.s("RA", seq=t.snxt + 5000000, advance=False),
         t.c("RA", seq=t.cnxt + 5000000, advance=False)),
        expect=Expect(
            no_events=(r"CLOSE",), stats={"invalid": 2}, table_count=1,
            table=(r"^tcp\s+6 (299|300) ESTABLISHED .*\[ASSURED\]",)))


def _tcp_rst_below_maxack() -> Scenario:
    t = Tcp.masq(42082, 9009)
    return Scenario(
        "tcp_rst_below_maxack",
        "§3.4(6) a RST whose sequence number is below what the other side acknowledged is "
        "INVALID (\"invalid rst\"); the entry keeps its state and timeout",
        MASQ,
        (*t.handshake(), t.c("PA", b"abc"), t.s("A"), t.s("R", seq=t.snxt - 5000, advance=False)),
        expect=Expect(
            no_events=(r"CLOSE",), stats={"invalid": 1}, table_count=1,
            table=(r"^tcp\s+6 43(1999|2000) ESTABLISHED .*\[ASSURED\]",)))


def _tcp_window_scale() -> Scenario:
    opts = [("MSS", 1460), ("WScale", 7), ("SAckOK", b"")]
    t = Tcp.masq(42070, 9008, win=502)          # 502 << 7 = 64256 bytes
    return Scenario(
        "tcp_window_scale",
        "§3.6 window scaling (both SYNs carry the option): segments 30000 and 100000 bytes "
        "ahead pass although the raw window is 502 (without the option the first is INVALID; "
        "a segment 1000000 ahead is INVALID even scaled: observed on 6.18)",
        MASQ,
        (t.c("S", options=opts), t.s("SA", options=opts), t.c("A"),
         t.s("PA", b"y" * 100, seq=t.snxt + 30000, advance=False), t.c("A"),
         t.s("PA", b"z" * 100, seq=t.snxt + 100000, advance=False)),
        expect=Expect(
            events=(ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),),
            table=(r"^tcp .* ESTABLISHED ",), table_count=1, stats={"invalid": 0},
            egress=(("r-priv", r"tcp 203\.0\.113\.2:9008 > 10\.0\.0\.2:42070 \[PA\] seq=80001 "),
                    ("r-priv", r"tcp 203\.0\.113\.2:9008 > 10\.0\.0\.2:42070 \[PA\] seq=150001 "))))


def _tcp_retrans() -> Scenario:
    t = Tcp.masq(42080, 9011)
    ack = t.c("A")
    return Scenario(
        "tcp_retrans_counter",
        "§3.5 identical ACKs repeated (retransmissions): from the max_retrans-th (3) on the "
        "timeout drops to nf_conntrack_tcp_timeout_max_retrans (300 s), without an event",
        MASQ,
        (t.c("S"), t.s("SA"), ack, ack, ack, ack, ack),
        expect=Expect(
            events=(ev("UPDATE", r"tcp\s+6 432000 ESTABLISHED .*\[ASSURED\]"),),
            table=(r"^tcp\s+6 (299|300) ESTABLISHED ",), table_count=1))


# ----------------------------------------------------------------------------------------
# UDP (§4), fragments (§1.5 hook table: defrag before conntrack).

def _udp_unreplied() -> Scenario:
    return Scenario(
        "udp_unreplied",
        "§4 a single datagram: NEW, 30 s, [UNREPLIED]",
        MASQ,
        (udp("priv1", 41001, 9999),),
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=41001 "
                              r"dport=9999 \[UNREPLIED\] src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"sport=9999 dport=41001$"),),
            table=(r"^udp\s+17 (29|30) .*\[UNREPLIED\]",), table_count=1))


def _udp_replied() -> Scenario:
    return Scenario(
        "udp_replied",
        "§4 request and reply within 2 s: UPDATE at 30 s without ASSURED; a second request "
        "keeps 30 s",
        MASQ,
        (udp("priv1", 41010, 5353), udp_reply(5353, 41010), udp("priv1", 41010, 5353)),
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 .*\[UNREPLIED\]"), ev("UPDATE", r"udp\s+17 30 ")),
            no_events=(r"ASSURED",),
            table=(r"^udp\s+17 (29|30) .*mark=0",), table_count=1))


def _udp_assured() -> Scenario:
    return Scenario(
        "udp_assured_after_2s",
        "§4 after a reply, a packet more than 2 s after creation gives 120 s and ASSURED",
        MASQ,
        (udp("priv1", 41000, 5353), udp_reply(5353, 41000), Sleep(2.3),
         udp("priv1", 41000, 5353), udp_reply(5353, 41000)),
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 "), ev("UPDATE", r"udp\s+17 30 "),
                    ev("UPDATE", r"udp\s+17 120 .*\[ASSURED\]")),
            table=(r"^udp\s+17 1(19|20) .*\[ASSURED\]",), table_count=1))


def _udp_fragments() -> Scenario:
    return Scenario(
        "udp_fragments",
        "§1.5/§2 fragments are reassembled before conntrack: one entry per datagram, "
        "also when the fragments arrive in reverse order",
        MASQ,
        (frags("priv1", 41020, 7000, 1200, 400, ident=777),
         udp_reply(7000, 41020),
         frags("priv1", 41021, 7001, 1000, 304, ident=778, reverse=True)),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41020 dport=7000 "),
                    ev("UPDATE", r"udp .*sport=41020 dport=7000 "),
                    ev("NEW", r"udp .*sport=41021 dport=7001 ")),
            table_count=2, stats={"invalid": 0},
            egress=(("r-pub", r"ip 203\.0\.113\.1 > 203\.0\.113\.2 proto=17 frag off=0 mf=1 ipid=777 "
                              r"sport=41020 dport=7000"),)))


def _udp_port_kept_other_dest() -> Scenario:
    return Scenario(
        "nat_port_kept_other_dest",
        "§8.3 uniqueness is per reply tuple: the same source port from two hosts to two "
        "different server ports is kept for both (no random search)",
        MASQ,
        (udp("priv1", 45100, 5353), udp("priv2", 45100, 5354), udp_reply(5354, 45100)),
        expect=Expect(
            table=(r"src=10\.0\.0\.2 .*sport=45100 dport=5353 .* dport=45100 ",
                   r"src=10\.0\.0\.3 .*sport=45100 dport=5354 .* dport=45100 "),
            table_count=2, stats={"found": 0},
            egress=(("r-priv", r"udp 203\.0\.113\.2:5354 > 10\.0\.0\.3:45100"),)))


def _forward_without_nat() -> Scenario:
    return Scenario(
        "forward_without_nat",
        "§8.1(3) traffic between the private hosts through the router (out r-priv, not "
        "r-pub): tracked with a null binding, not translated",
        MASQ,
        (Send("priv1", IP(src=PRIV1, dst=PRIV2) / UDP(sport=41300, dport=7000) / b"hi",
              note="udp 10.0.0.2 > 10.0.0.3 via the router"),
         Send("priv2", IP(src=PRIV2, dst=PRIV1) / UDP(sport=7000, dport=41300) / b"ho",
              note="answer via the router")),
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 src=10\.0\.0\.2 dst=10\.0\.0\.3 sport=41300 "
                              r"dport=7000 \[UNREPLIED\] src=10\.0\.0\.3 dst=10\.0\.0\.2 "
                              r"sport=7000 dport=41300$"),
                    ev("UPDATE", r"udp\s+17 30 src=10\.0\.0\.2 ")),
            table_count=1,
            egress=(("r-priv", r"udp 10\.0\.0\.2:41300 > 10\.0\.0\.3:7000"),
                    ("r-priv", r"udp 10\.0\.0\.3:7000 > 10\.0\.0\.2:41300"))))


def _raw_notrack() -> Scenario:
    return Scenario(
        "raw_notrack",
        "§1.5 NOTRACK in the raw table (before conntrack): no entry, not counted invalid, "
        "not NATed; other traffic is tracked and NATed as usual",
        MASQ_NOTRACK,
        (udp("priv1", 41400, 5300), udp_reply(5300, 41400), udp("priv1", 41401, 5301)),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41401 dport=5301 "),),
            no_events=(r"sport=41400",), table_count=1, stats={"invalid": 0},
            egress=(("r-pub", r"udp 10\.0\.0\.2:41400 > 203\.0\.113\.2:5300"),
                    ("r-pub", r"udp 203\.0\.113\.1:41401 > 203\.0\.113\.2:5301"))))


# ----------------------------------------------------------------------------------------
# ICMP (§5).

def _icmp_echo() -> Scenario:
    return Scenario(
        "icmp_echo",
        "§5 two answered echo requests share one entry: NEW, then UPDATE on the first reply",
        MASQ,
        (echo("priv1", 7574, 1), echo_reply(7574, 1), echo("priv1", 7574, 2),
         echo_reply(7574, 2)),
        expect=Expect(
            events=(ev("NEW", r"icmp\s+1 30 src=10\.0\.0\.2 dst=203\.0\.113\.2 type=8 code=0 "
                              r"id=7574 \[UNREPLIED\] src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"type=0 code=0 id=7574$"),
                    ev("UPDATE", r"icmp\s+1 30 ")),
            no_events=(r"ASSURED",),
            table=(r"^icmp\s+1 (29|30) src=10\.0\.0\.2 .* id=7574 src=.* id=7574 mark=0",),
            table_count=1,
            egress=(("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.2 type=0 code=0 id=7574 seq=2"),)))


def _icmp_unanswered() -> Scenario:
    return Scenario(
        "icmp_queries_unanswered",
        "§5 unanswered echo and timestamp requests: entries with [UNREPLIED], reply types "
        "0 and 14",
        MASQ,
        (echo("priv1", 10845, 1), echo("priv1", 10846, 1, type=13)),
        expect=Expect(
            events=(ev("NEW", r"icmp .*type=8 code=0 id=10845 \[UNREPLIED\] .*type=0 code=0"),
                    ev("NEW", r"icmp .*type=13 code=0 id=10846 \[UNREPLIED\] .*type=14 code=0")),
            table_count=2))


def _icmp_invalid() -> Scenario:
    return Scenario(
        "icmp_invalid_types",
        "§5 an unsolicited echo reply and a type without inverse (9, router advertisement) "
        "create no entry and leak un-NATed",
        MASQ,
        (echo("priv1", 5555, 1, type=0), echo("priv1", 5556, 1, type=9)),
        expect=Expect(
            no_events=(r".",), table_count=0, stats={"invalid": 2},
            egress=(("r-pub", r"icmp 10\.0\.0\.2 > 203\.0\.113\.2 type=0 code=0 id=5555"),)))


def _icmp_error_related() -> Scenario:
    quoted = IP(src=ROUTER_PUB, dst=PUB, id=4711, ttl=63) / UDP(sport=41002, dport=9999) / b"x"
    return Scenario(
        "icmp_error_related_udp",
        "§5.1 a port unreachable for a masqueraded UDP flow is RELATED: outer and embedded "
        "headers translated back, the UDP entry is neither refreshed nor marked replied",
        MASQ,
        (udp("priv1", 41002, 9999, b"x"), Sleep(1.2), icmp_error(ROUTER_PUB, quoted)),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41002 dport=9999 \[UNREPLIED\]"),),
            no_events=(r"UPDATE",),
            table=(r"^udp\s+17 2[78] .*sport=41002 .*\[UNREPLIED\]",), table_count=1,
            stats={"invalid": 0, "error": 0},
            egress=(("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.2 type=3 code=3 "
                               r"\[inner: udp 10\.0\.0\.2:41002 > 203\.0\.113\.2:9999\]"),)))


def _icmp_error_tcp() -> Scenario:
    t = Tcp.masq(41500, 9009)
    syn = t.c("S")
    quoted = IP(src=ROUTER_PUB, dst=PUB, ttl=1) / TCP(sport=41500, dport=9009, flags="S",
                                                      seq=t.ciss, window=65535)
    return Scenario(
        "icmp_error_related_tcp",
        "§5.1/§8.4 a time-exceeded quoting a masqueraded SYN is RELATED: the embedded IP and "
        "TCP ports are rewritten back, the ICMP checksum recomputed",
        MASQ,
        (syn, icmp_error(ROUTER_PUB, quoted, type=11, code=0)),
        expect=Expect(
            events=(ev("NEW", r"tcp .*sport=41500 "),), no_events=(r"UPDATE",), table_count=1,
            stats={"invalid": 0, "error": 0},
            egress=(("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.2 type=11 code=0 "
                               r"\[inner: tcp 10\.0\.0\.2:41500 > 203\.0\.113\.2:9009\]"),)))


def _icmp_error_bad() -> Scenario:
    quoted = IP(src=ROUTER_PUB, dst=PUB) / UDP(sport=41003, dport=9999) / b"x"
    unknown = IP(src=ROUTER_PUB, dst=PUB) / UDP(sport=41999, dport=9999) / b"x"
    return Scenario(
        "icmp_error_mismatch",
        "§5.1 an ICMP error whose outer destination is not the flow's (sent straight to "
        "10.0.0.2) gets no conntrack and is forwarded untranslated; one quoting no known "
        "flow is dropped from tracking too; both count `error` (not `invalid`)",
        MASQ,
        (udp("priv1", 41003, 9999, b"x"), icmp_error(PRIV1, quoted), icmp_error(ROUTER_PUB, unknown)),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41003 "),), no_events=(r"UPDATE",),
            table_count=1, stats={"error": 2, "invalid": 0},
            egress=(("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.2 type=3 code=3 "
                               r"\[inner: udp 203\.0\.113\.1:41003 > 203\.0\.113\.2:9999\]"),)))


def _router_error(rec, iface: str, type_: int, tos: int) -> None:
    """The router's own ICMP error (icmp_send()): TOS precedence 6 | the offending TOS bits,
    TTL 64, DF clear, the quote whole (short datagrams)."""
    from scapy.layers.inet import IPerror
    from scapy.layers.l2 import Ether
    errs = [Ether(f)[IP] for _, f in rec.frames(iface, "out")
            if IP in Ether(f) and Ether(f)[IP].proto == 1 and Ether(f)[IP].src in (ROUTER_PUB, "10.0.0.1")
            and Ether(f)[ICMP].type == type_]
    assert errs, f"no ICMP type {type_} from the router on {iface}"
    for e in errs:
        assert (e.tos, e.ttl, int(e.flags)) == (tos, 64, 0), e.summary()
        assert e.len == 20 + 8 + e[IPerror].len, e.summary()


def _ttl_exceeded_snat() -> Scenario:
    return Scenario(
        "icmp_send_ttl_exceeded_snat",
        "icmp_send(): a first datagram with TTL 1 is answered with a time exceeded from the "
        "router's LAN address, quoting it untranslated; its entry, attached to the error "
        "(nf_ct_attach), is never confirmed: no event, no entry, no error counted; the next "
        "datagram of the flow starts it anew",
        MASQ,
        (udp("priv1", 44001, 33434, b"probe", ttl=1, tos=0x28), Sleep(0.2),
         udp("priv1", 44001, 33434, b"again")),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=44001 dport=33434 \[UNREPLIED\]"),),
            table_count=1, stats={"error": 0, "invalid": 0},
            egress=(("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=11 code=0 "
                               r"\[inner: udp 10\.0\.0\.2:44001 > 203\.0\.113\.2:33434\]"),
                    ("r-pub", r"udp 203\.0\.113\.1:44001 > 203\.0\.113\.2:33434")),
            checks=(lambda rec: _router_error(rec, "r-priv", 11, 0xC0 | 0x08),)))


def _ttl_exceeded_dnat() -> Scenario:
    return Scenario(
        "icmp_send_ttl_exceeded_dnat",
        "icmp_send() for a DNATed SYN with TTL 1: the quote is translated back to the public "
        "destination 203.0.113.1:8080 at POST_ROUTING (nf_nat_icmp_reply_translation)",
        DNAT_FORWARD,
        (Send("pub", IP(src=PUB, dst=ROUTER_PUB, ttl=1) / TCP(sport=50100, dport=8080, flags="S",
                                                              seq=1000),
              note="syn to the forwarded port, TTL 1"),),
        expect=Expect(
            no_events=(r".",), table_count=0, stats={"error": 0, "invalid": 0},
            egress=(("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=11 code=0 "
                              r"\[inner: tcp 203\.0\.113\.2:50100 > 203\.0\.113\.1:8080\]"),),
            checks=(lambda rec: _router_error(rec, "r-pub", 11, 0xC0),)))


def _ttl_exceeded_reply() -> Scenario:
    return Scenario(
        "icmp_send_ttl_exceeded_reply",
        "icmp_send() for a reply of a masqueraded flow with TTL 1: the error (RELATED) goes "
        "to pub quoting the masquerade address, the flow is not touched",
        MASQ,
        (udp("priv1", 44002, 5353), udp_reply(5353, 44002),
         Send("pub", IP(src=PUB, dst=ROUTER_PUB, ttl=1) / UDP(sport=5353, dport=44002) / b"late",
              note="reply with TTL 1")),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=44002 "), ev("UPDATE", r"udp .*sport=44002 ")),
            table_count=1, stats={"error": 0, "invalid": 0},
            egress=(("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=11 code=0 "
                              r"\[inner: udp 203\.0\.113\.2:5353 > 203\.0\.113\.1:44002\]"),)))


def _ttl_exceeded_ratelimit() -> Scenario:
    return Scenario(
        "icmp_send_ratelimit",
        "icmp_send() rate limit per destination (inet_peer_xrlim_allow, icmp_ratelimit 1000 "
        "ms, burst 6): ten TTL-1 probes back to back get six time exceeded",
        MASQ,
        tuple(udp("priv1", 44010 + i, 33434 + i, ttl=1) for i in range(10)),
        expect=Expect(
            no_events=(r".",), table_count=0, stats={"error": 0},
            egress=tuple(("r-priv", rf"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=11 .*:{44010 + i} ")
                         for i in range(6)),
            no_egress=tuple(("r-priv", rf"10\.0\.0\.2:{44010 + i} ") for i in range(6, 10))))


def _no_df_out(rec) -> None:
    from scapy.layers.l2 import Ether
    flags = [int(Ether(f)[IP].flags) for _, f in rec.frames("r-pub", "out")]
    assert flags == [1, 1, 0], f"fragment flags {flags}"


def _frag_needed_reassembled() -> Scenario:
    def parts(lab):
        pkt = IP(src=PRIV1, dst=PUB, id=777, flags="DF") / UDP(sport=44020, dport=9) / (b"D" * 2000)
        out = fragment(pkt, fragsize=1000)
        for f in out:
            f.flags |= 2                           # DF on every fragment
        return out
    return Scenario(
        "icmp_send_df_fragments",
        "ip_exceeds_mtu(): a datagram that came as DF fragments (each under the MTU) is "
        "reassembled (longer than the MTU) and leaves fragmented again as it came "
        "(frag_max_size), with no fragmentation-needed error; the kernel's fragments no "
        "longer carry DF",
        MASQ,
        (Send("priv1", parts, note="udp 2000 bytes in DF fragments of 1000"),),
        expect=Expect(events=(ev("NEW", r"udp .*sport=44020 "),), table_count=1,
                      stats={"error": 0, "invalid": 0},
                      egress=(("r-pub", r"frag off=0 mf=1 ipid=777"),
                              ("r-pub", r"frag off=2000 mf=0 ipid=777")),
                      no_egress=(("r-priv", r"icmp"),),
                      checks=(_no_df_out,)))


def _icmp_id_clash(with_reply: bool) -> Scenario:
    steps = [echo("priv1", 4242), echo("priv2", 4242), echo_reply(4242)]
    desc = ("§8.3 two hosts ping with the same id: the second gets another id (0-65535); "
            "the reply to the first is delivered to 10.0.0.2")
    egress = [("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.2 type=0 code=0 id=4242")]
    if with_reply:
        steps.append(Send("pub", lambda lab: IP(src=PUB, dst=ROUTER_PUB) / ICMP(
            type=0, id=lab.mapped_key("icmp", PRIV2, 4242), seq=1) / b"ping-data",
            note="echo reply to the id the kernel chose for 10.0.0.3"))
        desc += "; the reply to the second's new id reaches 10.0.0.3 with id 4242 again"
        egress.append(("r-priv", r"icmp 203\.0\.113\.2 > 10\.0\.0\.3 type=0 code=0 id=4242"))
    return Scenario(
        "icmp_id_clash_reply" if with_reply else "icmp_id_clash",
        desc, MASQ, tuple(steps),
        random_ports=True,
        expect=Expect(
            events=(ev("NEW", r"icmp .*src=10\.0\.0\.2 .*id=4242 \[UNREPLIED\] .* id=4242$"),
                    ev("NEW", r"icmp .*src=10\.0\.0\.3 .*id=4242 \[UNREPLIED\] .* id=(?!4242$)\d+$")),
            table_count=2, egress=tuple(egress)))


# ----------------------------------------------------------------------------------------
# NAT (§8).

def _port_class(port: int) -> str:
    return "1-511" if port < 512 else "512-599" if port < 600 else \
        "600-1023" if port < 1024 else "1024-65535"


def _classes_of_second_host(rec) -> None:
    """10.0.0.3's translated ports: changed, unique, and in the class of the original."""
    import re
    seen = set()
    for line in rec.table:
        if "src=10.0.0.3 " not in line:
            continue
        ports = [int(p) for p in re.findall(r"[sd]port=(\d+)", line)]
        orig_sport, nat_port = ports[0], ports[3]
        want = "600-1023" if 512 <= orig_sport < 600 else _port_class(orig_sport)
        assert nat_port != orig_sport, f"port kept: {line}"
        assert _port_class(nat_port) == want, f"{nat_port} not in {want}: {line}"
        assert nat_port not in seen, f"port {nat_port} used twice"
        seen.add(nat_port)
    assert seen, "no entry of 10.0.0.3"


def _udp_port_clash() -> Scenario:
    steps = []
    for port in (45000, 700, 550, 500):
        steps += [udp("priv1", port, 5353), udp("priv2", port, 5353)]
    steps.append(udp_reply(5353, 45000))
    steps.append(Send("pub", lambda lab: IP(src=PUB, dst=ROUTER_PUB) / UDP(
        sport=5353, dport=lab.mapped_key("udp", PRIV2, 45000)) / b"r",
        note="reply to the port the kernel chose for 10.0.0.3:45000"))
    return Scenario(
        "udp_port_clash",
        "§8.3 two hosts, same UDP source port, same server: the first keeps its port, the "
        "second gets a random one of the same class (1-511, 600-1023, 1024-65535); replies "
        "reach both hosts on their own ports",
        MASQ, tuple(steps), random_ports=True,
        expect=Expect(
            table=(r"^udp .*src=10\.0\.0\.2 .*sport=45000 .* dport=45000 ",),
            checks=(_classes_of_second_host,),
            table_count=8,
            egress=(("r-priv", r"udp 203\.0\.113\.2:5353 > 10\.0\.0\.2:45000"),
                    ("r-priv", r"udp 203\.0\.113\.2:5353 > 10\.0\.0\.3:45000"))))


def _tcp_port_clash() -> Scenario:
    t1 = Tcp.masq(40010, 80, client="priv1")
    t2 = Tcp.masq(40010, 80, client="priv2")
    steps = [t1.c("S"), t2.c("S")]
    for port in (700, 500):
        steps += [Tcp.masq(port, 80, client="priv1").c("S"), Tcp.masq(port, 80, client="priv2").c("S")]
    steps += [t1.s("SA"), t1.c("A"),
              Send("pub", lambda lab: IP(src=PUB, dst=ROUTER_PUB) / TCP(
                  sport=80, dport=lab.mapped_key("tcp", PRIV2, 40010), flags="SA", seq=70000,
                  ack=t2.ciss + 1, window=65535),
                  note="SYN-ACK to the port the kernel chose for 10.0.0.3:40010"),
              t2.c("A", ack=70001)]
    return Scenario(
        "tcp_port_clash",
        "§8.3 two hosts, same TCP source port: the second host's connection gets a random "
        "port of the same class (1-511, 600-1023, 1024-65535); both connections complete",
        MASQ, tuple(steps), random_ports=True,
        expect=Expect(
            table=(r"^tcp .*ESTABLISHED src=10\.0\.0\.2 .*sport=40010 .* dport=40010 \[ASSURED\]",
                   r"^tcp .*ESTABLISHED src=10\.0\.0\.3 .*sport=40010 .*\[ASSURED\]"),
            checks=(_classes_of_second_host,),
            table_count=6))


def _same_reply_port(rec) -> None:
    """10.0.0.3:40010's two flows share one translated port (endpoint-independent)."""
    import re
    ports = [re.findall(r"dport=(\d+)", line)[-1] for line in rec.table
             if "src=10.0.0.3" in line and "sport=40010" in line]
    assert len(ports) == 2 and ports[0] == ports[1] and ports[0] != "40010", rec.table


def _eim_reuse() -> Scenario:
    return Scenario(
        "nat_mapping_reuse",
        "§8.3(2) endpoint-independent mapping: a second flow from the same source ip:port "
        "reuses the translated port the first one got after a clash",
        MASQ,
        (udp("priv1", 40010, 7777), udp("priv2", 40010, 7777), udp("priv2", 40010, 7778)),
        random_ports=True,
        expect=Expect(table_count=3, checks=(_same_reply_port,)))


def _snat_range() -> Scenario:
    return Scenario(
        "snat_port_range",
        "§8.3 SNAT --to-source 203.0.113.1:1024-1030: every flow gets a distinct port of "
        "the range",
        SNAT_RANGE,
        (udp("priv1", 40000, 5353), udp("priv1", 40001, 5353), udp("priv2", 40000, 5353),
         Tcp.masq(40000, 80).c("S")),
        random_ports=True,
        expect=Expect(
            table=(r"^udp .*sport=40000 .*\] src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=5353 dport=10(2[4-9]|30) ",),
            table_count=4))


def _snat_exhaustion() -> Scenario:
    return Scenario(
        "snat_exhaustion",
        "§8.3 SNAT to a 2-port range: the third flow to the same server finds no free port, "
        "its packet is dropped at confirmation (drop, insert_failed)",
        SNAT_TINY,
        (udp("priv1", 40000, 5353), udp("priv1", 40001, 5353), udp("priv2", 40000, 5353)),
        random_ports=True,
        expect=Expect(
            table=(r"dport=200[01] ",), table_count=2,
            stats={"drop": 1, "insert_failed": 1}))


def _dnat_forward() -> Scenario:
    t = Tcp("pub", PUB, 50000, ROUTER_PUB, 8080, "priv1", PRIV1, 80, PUB, 50000)
    return Scenario(
        "dnat_port_forward",
        "§8.1 DNAT 203.0.113.1:8080 -> 10.0.0.2:80 from PREROUTING: full connection",
        DNAT_FORWARD,
        (*t.handshake(), t.c("PA", b"GET /"), t.s("PA", b"200 OK"), t.c("FA"), t.s("FA"),
         t.c("A")),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"sport=50000 dport=8080 \[UNREPLIED\] src=10\.0\.0\.2 "
                              r"dst=203\.0\.113\.2 sport=80 dport=50000$"),
                    ev("UPDATE", r"tcp .* ESTABLISHED .*\[ASSURED\]"),
                    ev("UPDATE", r"tcp .* TIME_WAIT ")),
            table_count=1,
            egress=(("r-priv", r"tcp 203\.0\.113\.2:50000 > 10\.0\.0\.2:80 \[S\]"),
                    ("r-pub", r"tcp 203\.0\.113\.1:8080 > 203\.0\.113\.2:50000 \[SA\]"))))


def _forward_policy() -> Scenario:
    return Scenario(
        "forward_drop_policy",
        "§1.5 FORWARD policy DROP: a NEW packet dropped before confirmation leaves no entry "
        "and no event; allowed flows and their replies pass",
        MASQ_FORWARD_POLICY,
        (udp("priv1", 41053, 53), udp_reply(53, 41053), udp("priv1", 41054, 9999),
         udp("pub", 5000, 6000, dst=PRIV1), Tcp.masq(41080, 80).c("S"),
         Tcp.masq(41081, 81).c("S")),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41053 dport=53 "), ev("UPDATE", r"udp .*sport=41053 "),
                    ev("NEW", r"tcp .*sport=41080 dport=80 ")),
            no_events=(r"sport=41054", r"sport=5000", r"sport=41081"),
            table_count=2,
            no_egress=(("r-pub", r"41054"), ("r-priv", r"5000"), ("r-pub", r"41081"))))


def _invalid_dropped() -> Scenario:
    mk = lambda port, flags: Tcp.masq(port, 9010).c(flags)   # noqa: E731
    return Scenario(
        "ctstate_invalid_drop",
        "§2 with `--ctstate INVALID -j DROP` the bare FIN no longer leaks; the SYN passes",
        MASQ_DROP_INVALID,
        (mk(42100, "F"), mk(42101, "S")),
        expect=Expect(
            events=(ev("NEW", r"tcp .*sport=42101 "),), table_count=1, stats={"invalid": 1},
            no_egress=(("r-pub", r"10\.0\.0\.2:42100"),),
            egress=(("r-pub", r"tcp 203\.0\.113\.1:42101 > 203\.0\.113\.2:9010 \[S\]"),)))


# ----------------------------------------------------------------------------------------
# The router's own stack: traffic addressed to the router (issue 15).

_HOST_SRC = {"priv1": PRIV1, "priv2": PRIV2, "pub": PUB}


def to_router(host: str, dst: str, l4, data: bytes = b"", **ip) -> Send:
    """A datagram from ``host`` to one of the router's own addresses."""
    pkt = IP(src=_HOST_SRC[host], dst=dst, **ip) / l4
    if data:
        pkt = pkt / data
    return Send(host, pkt, note=f"to the router: {pkt.summary()}")


def _router_tcp(rec, iface: str, tos: int = 0) -> None:
    """The router's RSTs: tcp_v4_send_reset() from the control socket: TTL 64, DF, IP id 0, window 0, no
    options, the TOS of the segment answered without ECN bits (``tos`` for the first)."""
    from scapy.layers.l2 import Ether
    segs = [Ether(f)[IP] for _, f in rec.frames(iface, "out")
            if IP in Ether(f) and Ether(f)[IP].src in (ROUTER_PUB, ROUTER_PRIV)
            and Ether(f)[IP].proto == 6 and Ether(f)[TCP].flags.R]
    assert segs, f"no RST from the router on {iface}"
    for s in segs:
        assert (s.ttl, int(s.flags), s.id, s[TCP].window, s[TCP].options) == (64, 2, 0, 0, []), \
            s.summary()
    assert segs[0].tos == tos, f"TOS {segs[0].tos:#x}, expected {tos:#x}"


def _r(src: str, sport: int, dst: str, dport: int, flags: str, seq: int, ack: int) -> str:
    return (rf"tcp {re.escape(src)}:{sport} > {re.escape(dst)}:{dport} \[{flags}\] "
            rf"seq={seq} ack={ack} len=0 ipid=0$")


def _local_tcp_syn() -> Scenario:
    return Scenario(
        "local_tcp_syn",
        "tcp_v4_send_reset(): a SYN to a closed router port (from pub to the public address, "
        "from priv1 to both) is answered RST|ACK seq 0 ack = seq + 1 + data; the RST is the "
        "entry's first reply: it is deleted at once (NEW then DESTROY)",
        MASQ,
        (to_router("pub", ROUTER_PUB, TCP(sport=45000, dport=22, flags="S", seq=1000), tos=0x2B),
         to_router("pub", ROUTER_PUB, TCP(sport=45001, dport=22, flags="S", seq=7000), b"hello"),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45002, dport=22, flags="S", seq=3000)),
         to_router("priv1", ROUTER_PUB, TCP(sport=45003, dport=23, flags="S", seq=4000))),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"sport=45000 dport=22 \[UNREPLIED\]"),
                    ev("DESTROY", r"tcp\s+6 \d+ CLOSE .*sport=45000 "),
                    ev("NEW", r"tcp .*sport=45001 "), ev("DESTROY", r"tcp .*sport=45001 "),
                    ev("NEW", r"tcp .*dst=10\.0\.0\.1 sport=45002 "),
                    ev("DESTROY", r"tcp .*sport=45002 "),
                    ev("NEW", r"tcp .*src=10\.0\.0\.2 dst=203\.0\.113\.1 sport=45003 "),
                    ev("DESTROY", r"tcp .*sport=45003 ")),
            table_count=0, stats={"invalid": 0},
            egress=(("r-pub", _r(ROUTER_PUB, 22, PUB, 45000, "RA", 0, 1001)),
                    ("r-pub", _r(ROUTER_PUB, 22, PUB, 45001, "RA", 0, 7006)),
                    ("r-priv", _r(ROUTER_PRIV, 22, PRIV1, 45002, "RA", 0, 3001)),
                    ("r-priv", _r(ROUTER_PUB, 23, PRIV1, 45003, "RA", 0, 4001))),
            checks=(lambda rec: _router_tcp(rec, "r-pub", 0x28),
                    lambda rec: _router_tcp(rec, "r-priv"))))


def _local_tcp_ack() -> Scenario:
    return Scenario(
        "local_tcp_ack_and_data",
        "tcp_v4_send_reset(): a bare ACK and a data segment to a closed router port get a RST "
        "with seq = their ack number, no ACK flag; conntrack picked them up (loose) as "
        "ESTABLISHED and the RST, the first reply, deletes the entry",
        MASQ,
        (to_router("pub", ROUTER_PUB, TCP(sport=45010, dport=22, flags="A", seq=2000, ack=5000),
                   tos=0x10),
         to_router("pub", ROUTER_PUB, TCP(sport=45011, dport=22, flags="PA", seq=2000, ack=6000),
                   b"data"),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45012, dport=22, flags="A", seq=1, ack=77))),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 300 ESTABLISHED .*sport=45010 dport=22 \[UNREPLIED\]"),
                    ev("DESTROY", r"tcp .* CLOSE .*sport=45010 "),
                    ev("NEW", r"tcp .*sport=45011 "), ev("DESTROY", r"tcp .*sport=45011 "),
                    ev("NEW", r"tcp .*sport=45012 "), ev("DESTROY", r"tcp .*sport=45012 ")),
            table_count=0, stats={"invalid": 0},
            egress=(("r-pub", _r(ROUTER_PUB, 22, PUB, 45010, "R", 5000, 0)),
                    ("r-pub", _r(ROUTER_PUB, 22, PUB, 45011, "R", 6000, 0)),
                    ("r-priv", _r(ROUTER_PRIV, 22, PRIV1, 45012, "R", 77, 0))),
            checks=(lambda rec: _router_tcp(rec, "r-pub", 0x10),)))


def _local_tcp_fin_synack() -> Scenario:
    return Scenario(
        "local_tcp_fin_and_syn_ack",
        "tcp_v4_send_reset(): a FIN|ACK and an unsolicited SYN|ACK (from pub to the public "
        "address, from priv1 to the private one) get a RST with seq = their ack; a bare FIN "
        "with data RST|ACK ack = seq + 1 + data; none of them creates an entry: each segment "
        "and each RST is INVALID",
        MASQ,
        (to_router("pub", ROUTER_PUB, TCP(sport=45020, dport=22, flags="FA", seq=2000, ack=5000)),
         to_router("pub", ROUTER_PUB, TCP(sport=45021, dport=22, flags="F", seq=2000), b"xy"),
         to_router("pub", ROUTER_PUB, TCP(sport=45022, dport=22, flags="SA", seq=2000, ack=7777)),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45023, dport=22, flags="SA", seq=10, ack=99)),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45024, dport=22, flags="FA", seq=10, ack=55))),
        expect=Expect(
            no_events=(r".",), table_count=0, stats={"invalid": 10},
            egress=(("r-pub", _r(ROUTER_PUB, 22, PUB, 45020, "R", 5000, 0)),
                    ("r-pub", _r(ROUTER_PUB, 22, PUB, 45021, "RA", 0, 2003)),
                    ("r-pub", _r(ROUTER_PUB, 22, PUB, 45022, "R", 7777, 0)),
                    ("r-priv", _r(ROUTER_PRIV, 22, PRIV1, 45023, "R", 99, 0)),
                    ("r-priv", _r(ROUTER_PRIV, 22, PRIV1, 45024, "R", 55, 0))),
            checks=(lambda rec: _router_tcp(rec, "r-pub"),)))


def _local_tcp_silent() -> Scenario:
    return Scenario(
        "local_tcp_no_answer",
        "tcp_v4_rcv(): a RST is never answered (conntrack calls it INVALID first; a bad "
        "checksum, also unanswered, is in tests/test_local_stack.py: the harness refuses "
        "captured bad checksums)",
        MASQ,
        (to_router("pub", ROUTER_PUB, TCP(sport=45030, dport=22, flags="R", seq=2000)),),
        expect=Expect(no_events=(r".",), table_count=0, stats={"invalid": 1},
                      no_egress=(("r-pub", r"."),)))


def _local_late_replies() -> Scenario:
    return Scenario(
        "local_late_replies_after_expiry",
        "with MASQUERADE: replies from pub arriving after their entries expired are addressed "
        "to the router itself: the late SYN|ACK gets a RST (both INVALID), the late UDP "
        "answer a port unreachable RELATED to the new entry it made",
        MASQ,
        (Send("priv1", IP(src=PRIV1, dst=PUB) / TCP(sport=45040, dport=80, flags="S", seq=100),
              note="SYN through MASQUERADE"),
         udp("priv1", 45041, 53),
         Sleep(1.6),
         to_router("pub", ROUTER_PUB, TCP(sport=80, dport=45040, flags="SA", seq=9000, ack=101)),
         to_router("pub", ROUTER_PUB, UDP(sport=53, dport=45041), b"late answer")),
        sysctls={"net.netfilter.nf_conntrack_tcp_timeout_syn_sent": "1",
                 "net.netfilter.nf_conntrack_udp_timeout": "1"},
        expect=Expect(
            events=(ev("NEW", r"tcp .*sport=45040 dport=80 "), ev("NEW", r"udp .*sport=45041 "),
                    ev("NEW", r"udp\s+17 1 src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=53 "
                              r"dport=45041 \[UNREPLIED\]")),
            stats={"invalid": 2},
            egress=(("r-pub", _r(ROUTER_PUB, 45040, PUB, 80, "R", 101, 0)),
                    ("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=3 code=3 "
                              r"\[inner: udp 203\.0\.113\.2:53 > 203\.0\.113\.1:45041\]")),
            checks=(lambda rec: _router_tcp(rec, "r-pub"),)))


def _local_udp_closed() -> Scenario:
    return Scenario(
        "local_udp_closed_port",
        "__udp4_lib_rcv(): UDP to a closed router port is answered with port unreachable "
        "(icmp_send(): from the address hit, TOS 0xc0 | the TOS bits), RELATED to the "
        "datagram's entry, which stays UNREPLIED",
        MASQ,
        (to_router("pub", ROUTER_PUB, UDP(sport=45050, dport=9), b"q", tos=0x2B),
         to_router("priv1", ROUTER_PRIV, UDP(sport=45051, dport=9), b"q"),
         to_router("priv1", ROUTER_PUB, UDP(sport=45052, dport=9), b"q")),
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=45050 "
                              r"dport=9 \[UNREPLIED\]"),
                    ev("NEW", r"udp .*sport=45051 "), ev("NEW", r"udp .*sport=45052 ")),
            no_events=(r"UPDATE",), table_count=3, stats={"invalid": 0},
            egress=(("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=3 code=3 "
                              r"\[inner: udp 203\.0\.113\.2:45050 > 203\.0\.113\.1:9\]"),
                    ("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=3 "
                               r"\[inner: udp 10\.0\.0\.2:45051 > 10\.0\.0\.1:9\]"),
                    ("r-priv", r"icmp 203\.0\.113\.1 > 10\.0\.0\.2 type=3 code=3 "
                               r"\[inner: udp 10\.0\.0\.2:45052 > 203\.0\.113\.1:9\]")),
            checks=(lambda rec: _router_error(rec, "r-pub", 3, 0xC0 | 0x0A),
                    lambda rec: _router_error(rec, "r-priv", 3, 0xC0))))


def _local_protocol_unreachable() -> Scenario:
    return Scenario(
        "local_protocol_unreachable",
        "ip_protocol_deliver_rcu(): a protocol without a handler (253, 254) is answered with "
        "protocol unreachable, RELATED to its generic entry; IGMP has a handler: no answer",
        MASQ,
        (to_router("pub", ROUTER_PUB, b"abcdefgh", proto=253),
         to_router("priv1", ROUTER_PRIV, b"abcdefgh", proto=254),
         to_router("pub", ROUTER_PUB, b"\0" * 8, proto=2)),
        expect=Expect(
            events=(ev("NEW", r"unknown\s+253 600 src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"\[UNREPLIED\] src=203\.0\.113\.1 dst=203\.0\.113\.2$"),
                    ev("NEW", r"unknown\s+254 600 src=10\.0\.0\.2 dst=10\.0\.0\.1 "),
                    ev("NEW", r"unknown\s+2 600 ")),
            table_count=3,
            egress=(("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=3 code=2 "
                              r"\[inner: ip 203\.0\.113\.2 > 203\.0\.113\.1 proto=253\]"),
                    ("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=2 ")),
            no_egress=(("r-pub", r"proto=2\]"),),
            checks=(lambda rec: _router_error(rec, "r-pub", 3, 0xC0),)))


def _local_open_ports() -> Scenario:
    return Scenario(
        "local_open_ports",
        "ports open on the router (SSH, DNS): a SYN gets a listener's SYN|ACK (TOS 0, DF, IP "
        "id 0, window 64240, MSS 1460), the entry goes SYN_RECV, the client's RST closes it; "
        "a stray ACK still gets a RST, a bare FIN nothing (tcp_rcv_state_process(), LISTEN); "
        "a datagram to the open UDP port no port unreachable",
        MASQ,
        (to_router("pub", ROUTER_PUB, TCP(sport=45070, dport=22, flags="S", seq=1000)),
         to_router("pub", ROUTER_PUB, TCP(sport=45070, dport=22, flags="R", seq=1001)),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45071, dport=22, flags="S", seq=3000)),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45071, dport=22, flags="R", seq=3001)),
         to_router("pub", ROUTER_PUB, TCP(sport=45072, dport=22, flags="A", seq=1, ack=99)),
         to_router("pub", ROUTER_PUB, TCP(sport=45073, dport=22, flags="F", seq=1)),
         to_router("pub", ROUTER_PUB, UDP(sport=45074, dport=53), b"q")),
        listen=("tcp:22", "udp:53"),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT .*sport=45070 dport=22 \[UNREPLIED\]"),
                    ev("UPDATE", r"tcp\s+6 60 SYN_RECV .*sport=45070 "),
                    ev("UPDATE", r"tcp\s+6 10 CLOSE .*sport=45070 "),
                    ev("NEW", r"tcp .*sport=45071 "),
                    ev("UPDATE", r"tcp .* SYN_RECV .*sport=45071 "),
                    ev("NEW", r"tcp\s+6 300 ESTABLISHED .*sport=45072 "),
                    ev("DESTROY", r"tcp .*sport=45072 "),
                    ev("NEW", r"udp .*sport=45074 dport=53 \[UNREPLIED\]")),
            no_events=(r"sport=45073 ",), table_count=3, stats={"invalid": 1},
            egress=(("r-pub", r"tcp 203\.0\.113\.1:22 > 203\.0\.113\.2:45070 \[SA\] seq=\d+ "
                              r"ack=1001 len=0 ipid=0$"),
                    ("r-priv", r"tcp 10\.0\.0\.1:22 > 10\.0\.0\.2:45071 \[SA\] seq=\d+ ack=3001 "),
                    ("r-pub", _r(ROUTER_PUB, 22, PUB, 45072, "R", 99, 0))),
            no_egress=(("r-pub", r"icmp|45073"),),
            checks=(_listener_syn_ack,)))


def _listener_syn_ack(rec) -> None:
    """tcp_v4_send_synack() for a SYN without options: TOS 0, TTL 64, DF, IP id 0,
    window 64240, MSS 1460 only."""
    from scapy.layers.l2 import Ether
    sas = [Ether(f)[IP] for iface in ("r-pub", "r-priv") for _, f in rec.frames(iface, "out")
           if TCP in Ether(f) and str(Ether(f)[TCP].flags) == "SA"]
    assert len(sas) == 2, [s.summary() for s in sas]
    for s in sas:
        assert (s.tos, s.ttl, int(s.flags), s.id, s[TCP].window, s[TCP].options) == \
            (0, 64, 2, 0, 64240, [("MSS", 1460)]), s.summary()


def _local_input_drop() -> Scenario:
    return Scenario(
        "local_input_drop",
        "with an INPUT policy DROP the router's stack never sees the segment or the "
        "datagram: no RST, no port unreachable, and their entries are never confirmed",
        MASQ_INPUT_DROP,
        (to_router("pub", ROUTER_PUB, TCP(sport=45060, dport=22, flags="S", seq=1)),
         to_router("pub", ROUTER_PUB, UDP(sport=45061, dport=9), b"q"),
         to_router("priv1", ROUTER_PRIV, TCP(sport=45062, dport=22, flags="A", seq=1, ack=2))),
        expect=Expect(no_events=(r".",), table_count=0, stats={"invalid": 0},
                      no_egress=(("r-pub", r"."), ("r-priv", r"."))))


# ----------------------------------------------------------------------------------------
# Timeouts (§7).

def _timeouts_expire() -> Scenario:
    t = Tcp.masq(43010, 9020)
    return Scenario(
        "timeouts_expire",
        "§7 shortened timeouts (UDP, ICMP, SYN_SENT, CLOSE): entries expire and are destroyed "
        "(DESTROY without a timeout field); the table ends empty",
        MASQ,
        (udp("priv1", 43001, 7000), echo("priv1", 4300), Tcp.masq(43002, 9021).c("S"),
         *t.handshake(), t.s("RA"), Sleep(3.5)),
        sysctls={"net.netfilter.nf_conntrack_udp_timeout": "2",
                 "net.netfilter.nf_conntrack_icmp_timeout": "2",
                 "net.netfilter.nf_conntrack_tcp_timeout_syn_sent": "2",
                 "net.netfilter.nf_conntrack_tcp_timeout_close": "2"},
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 2 .*sport=43001 "), ev("NEW", r"icmp\s+1 2 "),
                    ev("NEW", r"tcp\s+6 2 SYN_SENT .*sport=43002 "),
                    ev("UPDATE", r"tcp\s+6 2 CLOSE .*sport=43010 ")),
            table_count=0))


def _udp_refresh() -> Scenario:
    return Scenario(
        "udp_refresh",
        "§4/§7 every packet of an unreplied UDP flow refreshes it (silently): with a 4 s "
        "timeout, a packet at 2.5 s keeps it alive past 4 s",
        MASQ,
        (udp("priv1", 43020, 7000), Sleep(2.5), udp("priv1", 43020, 7000), Sleep(2.0)),
        sysctls={"net.netfilter.nf_conntrack_udp_timeout": "4"},
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 4 .*sport=43020 "),),
            no_events=(r"DESTROY", r"UPDATE"),
            table=(r"^udp\s+17 1 .*sport=43020 ",), table_count=1))


# ----------------------------------------------------------------------------------------
# Where kernels differ (nattrack/conntrack/profile.py, docs/kernel-profiles.md): each
# scenario expects what the running kernel's profile says, so the suite passes on 6.1,
# 6.12 and 6.18 alike, and test_kernel_diff.py replays with that profile.

RUNNING = running_profile()

SNAT_TCP_TWO_PORTS = ("*nat\n"
                      ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                      ":POSTROUTING ACCEPT [0:0]\n"
                      "-A POSTROUTING -o r-pub -p tcp -j SNAT --to-source 203.0.113.1:2000-2001\n"
                      "COMMIT\n")

DNAT_PORT_RANGE = ("*nat\n"
                   ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                   ":POSTROUTING ACCEPT [0:0]\n"
                   "-A PREROUTING -i r-pub -p tcp --dport 32000:32001 -j DNAT "
                   "--to-destination 10.0.0.2:21000-21010\n"
                   "COMMIT\n")


def _to_kernels_port(t: Tcp, step: Send) -> Send:
    """A server segment of ``t`` addressed to the port the kernel's SNAT chose for it."""
    def build(lab, pkt=step.packet):
        p = pkt.copy()
        p[TCP].dport = lab.mapped_key("tcp", t.csrc, t.cport)
        return p
    return Send(step.host, build, note=step.note + " (to the kernel's SNAT port)")


def _snat_evicts_time_wait() -> Scenario:
    held = Tcp.masq(40101, 80)                        # keeps one of the two ports
    closed = Tcp.masq(40102, 80)                      # the other, then TIME_WAIT
    new = Tcp.masq(40103, 80, client="priv2", ciss=900000)   # its SYN is past closed's
    steps = (held.c("S"), _to_kernels_port(held, held.s("SA")), held.c("A"),
             closed.c("S"), _to_kernels_port(closed, closed.s("SA")), closed.c("A"),
             closed.c("FA"), _to_kernels_port(closed, closed.s("A")),
             _to_kernels_port(closed, closed.s("FA")), closed.c("A"),
             new.c("S"))
    if RUNNING.snat_evicts_closing:
        expect = Expect(
            events=(ev("UPDATE", r"tcp .* TIME_WAIT .*sport=40102 "),
                    ev("DESTROY", r"tcp .* TIME_WAIT .*sport=40102 "),
                    ev("NEW", r"tcp\s+6 120 SYN_SENT .*sport=40103 ")),
            table=(r"^tcp .* ESTABLISHED .*sport=40101 ", r"^tcp .* SYN_SENT .*sport=40103 "),
            table_count=2, stats={"insert_failed": 0, "drop": 0},
            egress=(("r-pub", r"tcp 203\.0\.113\.1:200[01] > 203\.0\.113\.2:80 \[S\] seq=900000"),),
            checks=(_new_took_closed_port,))
    else:
        expect = Expect(
            events=(ev("UPDATE", r"tcp .* TIME_WAIT .*sport=40102 "),),
            no_events=(r"DESTROY", r"sport=40103 "),
            table=(r"^tcp .* ESTABLISHED .*sport=40101 ", r"^tcp .* TIME_WAIT .*sport=40102 "),
            table_count=2, stats={"insert_failed": 1, "drop": 1},
            no_egress=(("r-pub", r"seq=900000"),))
    return Scenario(
        "snat_evicts_time_wait",
        "§8.3 SNAT to two ports, one held by an established connection, the other by one in "
        "TIME_WAIT: a new SYN (sequence past the old one's) evicts the TIME_WAIT entry and "
        "takes its port since v6.5 (4589725502871e); before, it clashes at confirmation "
        "and is dropped (insert_failed)",
        SNAT_TCP_TWO_PORTS, steps, random_ports=True, expect=expect)


def _new_took_closed_port(rec) -> None:
    """The SYN of 10.0.0.3:40103 left with the port 10.0.0.2:40102 had."""
    import re
    closed = [re.findall(r"dport=(\d+)", e)[-1] for e in rec.events
              if "sport=40102" in e and "TIME_WAIT" in e]
    new = [re.findall(r"dport=(\d+)", line)[-1] for line in rec.table if "sport=40103" in line]
    assert closed and new == [closed[-1]], (closed, new, rec.table)


def _dnat_range_first_port() -> Scenario:
    syns = [Send("pub", IP(src=PUB, dst=ROUTER_PUB) / TCP(sport=sport, dport=dport, flags="S",
                                                         seq=5000 + sport),
                 note=f"SYN {PUB}:{sport} > {ROUTER_PUB}:{dport}")
            for sport, dport in ((50100, 32000), (50100, 32001), (50101, 32000), (50102, 32000),
                                 (50103, 32000), (50104, 32000))]
    if RUNNING.dnat_range_from_start:
        expect = Expect(
            table=(r"sport=50100 dport=32000 .* src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=21000 ",
                   r"sport=50100 dport=32001 .* src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=21001 ",
                   r"sport=50104 dport=32000 .* src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=21000 "),
            table_count=6, checks=(lambda rec: _dnat_ports(rec, first=True),))
        xfail = ""
    else:
        expect = Expect(table_count=6, checks=(lambda rec: _dnat_ports(rec, first=False),))
        xfail = ("before 0f1ae2821fa4 (v6.8) the kernel draws DNAT range ports at random and "
                 "the engine (same profile) draws its own; tests/test_profiles.py checks the "
                 "engine's draw")
    return Scenario(
        "dnat_range_first_port",
        "§8.3 DNAT to 10.0.0.2:21000-21010 without --random: every connection gets the "
        "range's first port unless its reply tuple is taken (then the next) since v6.8 "
        "(0f1ae2821fa4); before, a random port of the range",
        DNAT_PORT_RANGE, tuple(syns), expect=expect, diff_xfail=xfail)


def _dnat_ports(rec, first: bool) -> None:
    """The translated destination ports of the connections to 32000 (reply source ports)."""
    import re
    ports = [int(re.findall(r"sport=(\d+)", line)[1]) for line in rec.table
             if "dport=32000" in line]
    assert len(ports) == 5 and all(21000 <= p <= 21010 for p in ports), rec.table
    if first:
        assert ports == [21000] * 5, ports
    else:
        assert set(ports) != {21000}, f"all at the first port, as after v6.8: {ports}"


# ----------------------------------------------------------------------------------------
# Found by differential fuzzing (tests/kernel/fuzz.py, docs/fuzzing.md).

def _port_changed_for_priv1(rec) -> None:
    lines = [ln for ln in rec.table if "src=10.0.0.2 " in ln]
    assert len(lines) == 1, rec.table
    nat = int(re.findall(r"dport=(\d+)", lines[0])[-1])
    assert nat != 41000 and nat >= 1024, lines[0]


def _udp_router_entry_holds_port() -> Scenario:
    # The fuzzer's case: a UDP flow whose server spoke first (masq, default sysctls); the
    # engine agreed, the case only differed in the comparison of an ICMP error quoting the
    # random port.  Here the port is open on the router (no ICMP error, no rate limit).
    return Scenario(
        "udp_router_entry_holds_port",
        "§8.3 (found by fuzzing) a datagram from pub to the router's own port 41000 (open "
        "there) is tracked pub -> router, its reply tuple holding 203.0.113.1:41000 -> "
        "203.0.113.2:9000; so MASQUERADE cannot keep port 41000 for priv1's flow to "
        "203.0.113.2:9000 and picks another (1024-65535); a second datagram to 41000 is "
        "still the router's, the one to the new port reaches priv1",
        MASQ,
        (udp_reply(9000, 41000), udp("priv1", 41000, 9000), udp_reply(9000, 41000),
         Send("pub", lambda lab: IP(src=PUB, dst=ROUTER_PUB) / UDP(
             sport=9000, dport=lab.mapped_key("udp", PRIV1, 41000)) / b"r",
             note="reply to the port the kernel chose for 10.0.0.2:41000")),
        listen=("udp:41000",), random_ports=True,
        expect=Expect(
            events=(ev("NEW", r"udp\s+17 30 src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=9000 "
                              r"dport=41000 \[UNREPLIED\]"),
                    ev("NEW", r"udp\s+17 30 src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=41000 "
                              r"dport=9000 \[UNREPLIED\] src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                              r"sport=9000 dport=(?!41000$)\d+$"),
                    ev("UPDATE", r"udp .*src=10\.0\.0\.2 ")),
            table_count=2, stats={"invalid": 0},
            egress=(("r-priv", r"udp 203\.0\.113\.2:9000 > 10\.0\.0\.2:41000 len=1"),),
            no_egress=(("r-pub", r"icmp"), ("r-pub", r"udp 203\.0\.113\.1:41000 ")),
            checks=(_port_changed_for_priv1,)))


# ----------------------------------------------------------------------------------------
# Conntrack helpers (docs/helpers.md): FTP between the private hosts, through the router
# without NAT (with NAT the kernel would rewrite the payload: nf_nat_ftp, not modelled yet).

def _ftp_rules(helper: bool) -> str:
    raw = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
           + ("-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\n" if helper else "")
           + "COMMIT\n")
    return raw + MASQ + (
        "*filter\n"
        ":INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A FORWARD -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT\n"
        "COMMIT\n")


def _ftp_steps() -> tuple:
    """A control connection 10.0.0.2:40000 -> 10.0.0.3:21; PASV answered 227 and the
    client's data connection to it; then PORT and the server's data connection from 20."""
    ctl = Tcp("priv1", PRIV1, 40000, PRIV2, 21, "priv2", PRIV2, 21, PRIV1, 40000)
    pasv = Tcp("priv1", PRIV1, 36150, PRIV2, 51210, "priv2", PRIV2, 51210, PRIV1, 36150)
    active = Tcp("priv2", PRIV2, 20, PRIV1, 25620, "priv1", PRIV1, 25620, PRIV2, 20)
    return (*ctl.handshake(), ctl.s("PA", b"220 hi\r\n"), ctl.c("PA", b"USER anonymous\r\n"),
            ctl.s("PA", b"331 pw\r\n"), ctl.c("PA", b"PASV\r\n"),
            ctl.s("PA", b"227 Entering Passive Mode (10,0,0,3,200,10).\r\n"),
            *pasv.handshake(),
            ctl.c("PA", b"PORT 10,0,0,2,100,20\r\n"), ctl.s("PA", b"200 ok\r\n"),
            active.c("S"), active.s("SA"))


def _ftp_helper() -> Scenario:
    return Scenario(
        "ftp_helper",
        "helpers: -j CT --helper ftp on the control connection; the 227 reply and the PORT "
        "command each open an expectation, and each data connection is RELATED (the "
        "FORWARD policy is DROP, RELATED is accepted), its entry without a helper",
        _ftp_rules(True), _ftp_steps(),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT src=10\.0\.0\.2 dst=10\.0\.0\.3 "
                              r"sport=40000 dport=21 .* helper=ftp$"),
                    ev("NEW", r"tcp\s+6 120 SYN_SENT src=10\.0\.0\.2 dst=10\.0\.0\.3 "
                              r"sport=36150 dport=51210 \[UNREPLIED\] src=10\.0\.0\.3 "
                              r"dst=10\.0\.0\.2 sport=51210 dport=36150$"),
                    ev("NEW", r"tcp\s+6 120 SYN_SENT src=10\.0\.0\.3 dst=10\.0\.0\.2 "
                              r"sport=20 dport=25620 ")),
            table=(r"sport=40000 dport=21 .* helper=ftp use=3$",), table_count=3,
            egress=(("r-priv", r"tcp 10\.0\.0\.2:36150 > 10\.0\.0\.3:51210 \[S\]"),
                    ("r-priv", r"tcp 10\.0\.0\.3:20 > 10\.0\.0\.2:25620 \[S\]"))))


def _ftp_no_helper() -> Scenario:
    return Scenario(
        "ftp_no_helper",
        "helpers: without a CT rule (kernel 6.0 removed nf_conntrack_helper) port 21 gets "
        "no helper, no expectation: the data connections are NEW and the FORWARD policy "
        "drops them",
        _ftp_rules(False), _ftp_steps(),
        expect=Expect(
            no_events=(r"helper=", r"sport=36150 dport=51210 ", r"sport=20 dport=25620 "),
            table_count=1,
            no_egress=(("r-priv", r":51210 \[S\]"), ("r-priv", r":25620 \[S\]"))))


FTP_NFT = """table ip filter {
	ct helper ftp-standard {
		type "ftp" protocol tcp
		l3proto ip
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		tcp dport 21 ct state new ct helper set "ftp-standard" accept
	}
}
"""


def _ftp_helper_nft() -> Scenario:
    return Scenario(
        "ftp_helper_nft",
        "helpers: nft's ct helper object and 'ct helper set' in the forward chain (the "
        "entry is still unconfirmed there); the same exchange as ftp_helper, the same "
        "RELATED data connections",
        FTP_NFT, _ftp_steps(),
        expect=Expect(
            events=(ev("NEW", r"tcp\s+6 120 SYN_SENT src=10\.0\.0\.2 dst=10\.0\.0\.3 "
                              r"sport=40000 dport=21 .* helper=ftp$"),
                    ev("NEW", r"tcp .*sport=36150 dport=51210 "),
                    ev("NEW", r"tcp .*sport=20 dport=25620 ")),
            table=(r"sport=40000 dport=21 .* helper=ftp use=3$",), table_count=3,
            egress=(("r-priv", r"tcp 10\.0\.0\.2:36150 > 10\.0\.0\.3:51210 \[S\]"),
                    ("r-priv", r"tcp 10\.0\.0\.3:20 > 10\.0\.0\.2:25620 \[S\]"))))


FTP_MASQ = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\nCOMMIT\n") + MASQ


def _ftp_helper_masq() -> Scenario:
    """Active FTP from behind MASQUERADE: PORT 10,0,0,2,... leaves as PORT 203,0,113,1,...
    (3 bytes longer), so the router moves the client's later sequence numbers by 3 and the
    server's ACKs back; pub's data connection to 203.0.113.1:25620 is DNATed to priv1.
    Then PASV: the 227 keeps its length, priv1's data connection is SNATed."""
    ctl = Tcp.masq(40000, 21)
    active = Tcp("pub", PUB, 20, ROUTER_PUB, 25620, "priv1", PRIV1, 25620, PUB, 20)
    pasv = Tcp.masq(36150, 51210)
    steps = (*ctl.handshake(), ctl.s("PA", b"220 hi\r\n"), ctl.c("PA", b"USER anonymous\r\n"),
             ctl.s("PA", b"331 pw\r\n"), ctl.c("PA", b"PORT 10,0,0,2,100,20\r\n"))
    # The server got 3 bytes more than the client sent: its ACK counts them.
    steps += (ctl.s("PA", b"200 ok\r\n", ack=ctl.cnxt + 3), active.c("S"), active.s("SA"),
              active.c("A"))
    steps += (ctl.c("PA", b"PASV\r\n"),
              ctl.s("PA", b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n",
                    ack=ctl.cnxt + 3),
              *pasv.handshake(), ctl.c("A"))
    return Scenario(
        "ftp_helper_masq",
        "helpers + NAT (nf_nat_ftp, nf_ct_seqadj): active FTP through MASQUERADE rewrites "
        "PORT to the router's address with sequence adjustment, and the server's data "
        "connection is DNATed to the client; passive FTP's data connection is SNATed",
        FTP_MASQ, steps,
        expect=Expect(
            table=(r"sport=40000 dport=21 .* helper=ftp use=3$",
                   r"src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=20 dport=25620 src=10\.0\.0\.2 "
                   r"dst=203\.0\.113\.2 sport=25620 dport=20 "),
            table_count=3,
            egress=(("r-pub", r"tcp 203\.0\.113\.1:40000 > 203\.0\.113\.2:21 \[PA\] .* len=25 "),
                    ("r-priv", r"tcp 203\.0\.113\.2:20 > 10\.0\.0\.2:25620 \[S\]"),
                    ("r-pub", r"tcp 203\.0\.113\.1:36150 > 203\.0\.113\.2:51210 \[S\]"))))


def _ftp_expect_nat() -> Scenario:
    """The expectation table through MASQUERADE (`conntrack -E expect`, `-L expect`): a
    227 expects the client's data connection; EPRT evicts it (max_expected 1) and, NATed
    to the router's address, stays expected when the scenario ends, to be listed."""
    ctl = Tcp.masq(40000, 21)
    steps = (*ctl.handshake(), ctl.s("PA", b"220 hi\r\n"), ctl.c("PA", b"USER anonymous\r\n"),
             ctl.s("PA", b"331 pw\r\n"), ctl.c("PA", b"PASV\r\n"),
             ctl.s("PA", b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n"),
             ctl.c("PA", b"EPRT |1|10.0.0.2|50002|\r\n"))
    # EPRT left 3 bytes longer (|1|203.0.113.1|50002|): the server's ACK counts them.
    steps += (ctl.s("PA", b"200 EPRT command successful.\r\n", ack=ctl.cnxt + 3), ctl.c("A"))
    return Scenario(
        "ftp_expect_nat",
        "helpers + NAT, the expectation table: the 227 opens an expectation for the "
        "client, the EPRT (rewritten to 203.0.113.1) evicts it and opens one for the "
        "server's connection to the router's address, still there at the end",
        FTP_MASQ, steps,
        expect=Expect(
            table=(r"sport=40000 dport=21 .* helper=ftp use=1$",), table_count=1,
            egress=(("r-pub", r"tcp 203\.0\.113\.1:40000 > 203\.0\.113\.2:21 \[PA\] .* len=28 "),),
            checks=(_expect_nat_lines,)))


def _expect_nat_lines(rec) -> None:
    kinds = [re.sub(r"^\[[\d. ]+\]\t\s*", "", e).split(" ", 1)[0] for e in rec.expect_events]
    assert kinds == ["[NEW]", "[DESTROY]", "[NEW]"], rec.expect_events
    assert len(rec.expect_table) == 1 and re.search(
        r"^\d+ proto=6 src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=0 dport=50002 ",
        rec.expect_table[0]), rec.expect_table


def _ftp_helper_parsing() -> Scenario:
    """The helper's reading rules: the first line each way is not read; a segment that is
    only the start of a command is dropped; EPSV and EPRT; one expectation per master
    (the EPRT one evicts the EPSV one)."""
    ctl = Tcp("priv1", PRIV1, 40000, PRIV2, 21, "priv2", PRIV2, 21, PRIV1, 40000)
    steps = (*ctl.handshake(),
             ctl.s("PA", b"227 Entering Passive Mode (10,0,0,3,200,10).\r\n"),
             ctl.c("PA", b"EPRT |1|10.0.0.2|50003|\r\n"),
             ctl.s("PA", b"229 Entering Extended Passive Mode (|||50001|)\r\n"),
             ctl.c("PA", b"POR", advance=False),
             ctl.c("PA", b"EPRT |1|10.0.0.2|50002|\r\n"),
             ctl.s("A"),
             Tcp("priv1", PRIV1, 36150, PRIV2, 51210, "priv2", PRIV2, 51210, PRIV1, 36150).c("S"),
             Tcp("priv2", PRIV2, 20, PRIV1, 50003, "priv1", PRIV1, 50003, PRIV2, 20).c("S"),
             Tcp("priv1", PRIV1, 36151, PRIV2, 50001, "priv2", PRIV2, 50001, PRIV1, 36151).c("S"),
             Tcp("priv2", PRIV2, 20, PRIV1, 50002, "priv1", PRIV1, 50002, PRIV2, 20).c("S"))
    return Scenario(
        "ftp_helper_parsing",
        "helpers: the first line each way is never read (the 227 and the first EPRT open "
        "nothing), a segment holding only 'POR' is dropped, the 229 opens 50001 and the "
        "second EPRT 50002, evicting 50001 (max_expected 1): only 10.0.0.3:20 -> "
        "10.0.0.2:50002 is RELATED, the other SYNs meet the DROP policy",
        _ftp_rules(True), steps,
        expect=Expect(
            table_count=2,
            egress=(("r-priv", r"tcp 10\.0\.0\.3:20 > 10\.0\.0\.2:50002 \[S\]"),),
            no_egress=(("r-priv", r"len=3 "), ("r-priv", r":51210 \[S\]"),
                       ("r-priv", r":50003 \[S\]"), ("r-priv", r":50001 \[S\]"))))


SCENARIOS: list[Scenario] = [
    _tcp_lifecycle_client_close(), _tcp_server_close(), _tcp_fin_piggyback(),
    _tcp_simultaneous_close(), _tcp_half_close(), _tcp_rst_established(),
    _tcp_rst_answer_to_syn(), _tcp_syn_retransmit(), _tcp_reopen_time_wait(),
    _tcp_simultaneous_open(), _tcp_midstream_loose(), _tcp_midstream_strict(),
    _tcp_invalid_flags(), _tcp_out_of_window(), _tcp_be_liberal(), _tcp_unacked_data(),
    _tcp_syn_in_established(), _tcp_rst_inexact(), _tcp_window_scale(), _tcp_retrans(),
    _udp_unreplied(), _udp_replied(), _udp_assured(), _udp_fragments(),
    _udp_port_kept_other_dest(), _forward_without_nat(), _raw_notrack(),
    _icmp_echo(), _icmp_unanswered(), _icmp_invalid(), _icmp_error_related(), _icmp_error_tcp(),
    _icmp_error_bad(),
    _ttl_exceeded_snat(), _ttl_exceeded_dnat(), _ttl_exceeded_reply(), _ttl_exceeded_ratelimit(),
    _frag_needed_reassembled(),
    _icmp_id_clash(False), _icmp_id_clash(True),
    _udp_port_clash(), _tcp_port_clash(), _eim_reuse(), _snat_range(), _snat_exhaustion(),
    _dnat_forward(), _forward_policy(), _invalid_dropped(),
    _timeouts_expire(), _udp_refresh(),
    _local_tcp_syn(), _local_tcp_ack(), _local_tcp_fin_synack(), _local_tcp_silent(),
    _local_late_replies(), _local_udp_closed(), _local_protocol_unreachable(),
    _local_input_drop(), _local_open_ports(),
    _snat_evicts_time_wait(), _dnat_range_first_port(),
    _tcp_rst_after_syn_same_direction(), _tcp_rst_out_of_window_both_ways(), _tcp_rst_below_maxack(),
    _udp_router_entry_holds_port(),
    _ftp_helper(), _ftp_no_helper(), _ftp_helper_nft(), _ftp_helper_masq(),
    _ftp_expect_nat(),
    _ftp_helper_parsing(),
]
BY_NAME = {s.name: s for s in SCENARIOS}
assert len(BY_NAME) == len(SCENARIOS), "duplicate scenario names"
