"""The notebooks' scenarios, as data: what each step sends, and what to look at.

All of them run in the ``classroom`` lab (topologies/classroom.py): h1 10.0.0.10 and
h2 10.0.0.11 behind the router r (10.0.0.1 | 203.0.113.1), srv 203.0.113.10 outside.
Both ends of a connection are played by hand (``nattrack.lab.craft``): a *flow*
names its client (node and port) and where the client sends to; the server's
packets go where the router's reply tuple says (the translated address and port),
read from the tracker after the first packet, as a real server would answer
whatever source it saw.

A step is a list of *actions*, dicts:

* ``{"send": "tcp", "flow": F, "side": "client"|"server", "flags": "S", "data": ""}``
  (also ``"ttl"``, ``"seq_offset"``: sequence numbers that far off, ``"ack": False``:
  no acknowledgment number);
* ``{"send": "udp", "flow": F, "side": ..., "data": "..."}`` and ``{"send": "ping",
  "flow": F}`` (an echo request; srv's own kernel answers it);
* ``{"send": "icmp-error", "flow": F, "side": "server", "type": 11, "code": 0}``: the
  server's node plays a router further on, reporting on the flow's translated datagram;
* ``{"wait": SECONDS}``: time passes (live: a sleep; replay: the clock moves);
* ``{"sysctl": {KEY: VALUE}}``: kernel names, tracker and kernel set equal.

Packets the end hosts' kernels send by themselves (srv's RST from a closed port, its
ICMP port unreachable, the router's own errors) are part of the step as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TOPOLOGY = "classroom"
LAB_MODE = "kernel"           # iptables NATs, the Python tracker shadows it: both tables
NODES = {"h1": "10.0.0.10", "h2": "10.0.0.11", "srv": "203.0.113.10"}
ROUTER_NODE = "r"
ROUTER_IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
ROUTER_ROUTES: dict[str, str] = {}
PUBLIC = "203.0.113.1"
CLOSED_PORT = 6000           # srv's kernel answers here (RST, port unreachable)
NOTEBOOKS = ("00-welcome", "01-tcp-states", "02-snat", "03-timeouts", "04-related-and-invalid")


@dataclass(frozen=True)
class Flow:
    """A connection played by hand: ``client`` node and port, sending to ``to``
    (address, port); ``server`` is the node that answers (after DNAT, perhaps not
    the address the client used)."""
    proto: str
    client: str
    cport: int
    to: tuple[str, int]
    server: str


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    explain: str
    actions: tuple = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    steps: tuple
    intro: str = ""
    rules: str = "classroom"                     # examples/rules/<rules>.rules
    sysctls: dict = field(default_factory=dict)
    flows: dict = field(default_factory=dict)
    # The engine alone, live or not: for what the kernel cannot show in a namespace
    # (nf_conntrack_max is global and read-only there).  No recording, no kernel side.
    simulated: bool = False

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"scenario {self.name} has no step {name!r}: steps are "
                       f"{', '.join(s.name for s in self.steps)}")

    def index(self, name: str) -> int:
        return self.steps.index(self.step(name))


def _tcp(flow: str, side: str, flags: str, data: str = "", **kw) -> dict:
    return {"send": "tcp", "flow": flow, "side": side, "flags": flags, "data": data, **kw}


def _udp(flow: str, side: str, data: str, **kw) -> dict:
    return {"send": "udp", "flow": flow, "side": side, "data": data, **kw}


def _s(name: str, title: str, explain: str, *actions: dict) -> Step:
    return Step(name, title, explain, tuple(actions))


def _handshake(f: str = "c") -> list[Step]:
    return [
        _s("SYN", "h1 opens: SYN", "The client's first packet. The router creates an entry in "
           "SYN_SENT (2 minutes), UNREPLIED, and MASQUERADE binds the source to the public "
           "address.",
           _tcp(f, "client", "S")),
        _s("SYN-ACK", "srv answers: SYN-ACK", "The server answers the address it saw (the "
           "router's). The router finds the entry by its reply tuple, translates the "
           "destination back to h1: SYN_RECV (60 s), and UNREPLIED is gone.",
           _tcp(f, "server", "SA")),
        _s("ACK", "h1 completes the handshake: ACK", "The third packet: ESTABLISHED and "
           "ASSURED (the entry is no longer an early-drop candidate); the timeout becomes "
           "5 days.", _tcp(f, "client", "A")),
    ]


def _c(proto: str, client: str, cport: int, to: tuple[str, int], server: str = "srv") -> Flow:
    return Flow(proto, client, cport, to, server)


SRV = NODES["srv"]

SCENARIOS: dict[str, list[Scenario]] = {
    "00-welcome": [
        Scenario("ping", "A ping through the router", steps=(
            _s("ping", "h1 pings srv", "An echo request leaves h1, the router masquerades "
               "it, srv's kernel answers; the entry is an icmp one keyed by the echo id.",
               {"send": "ping", "flow": "p"}),
        ), flows={"p": _c("icmp", "h1", 7, (SRV, 0))}),
        Scenario("udp", "A UDP question and answer", steps=(
            _s("question", "h1 asks", "One UDP datagram: a new entry, UNREPLIED.",
               _udp("u", "client", "question?")),
            _s("answer", "srv answers", "The answer matches the reply tuple: the entry has "
               "seen both directions.", _udp("u", "server", "answer!")),
        ), flows={"u": _c("udp", "h1", 40010, (SRV, 5010))}),
    ],
    "01-tcp-states": [
        Scenario("handshake", "Open and close a TCP connection by hand", steps=(
            *_handshake(),
            _s("data", "h1 sends data", "Data with ACK: the state stays ESTABLISHED. Until "
               "srv acknowledges it the data is in flight, and tcp_packet() caps the timeout "
               "at nf_conntrack_tcp_timeout_unacknowledged (300 s): 299 s left instead of "
               "431999.", _tcp("c", "client", "PA", "GET / HTTP/1.0\r\n\r\n")),
            _s("data-ACK", "srv acknowledges", "The server acknowledges the data: nothing is "
               "in flight any more, and the timeout is ESTABLISHED's 5 days again.",
               _tcp("c", "server", "A")),
            _s("FIN", "h1 closes: FIN", "The client is done sending: FIN_WAIT.",
               _tcp("c", "client", "FA")),
            _s("FIN-ACK", "srv acknowledges the FIN", "CLOSE_WAIT: one direction is closed.",
               _tcp("c", "server", "A")),
            _s("FIN2", "srv closes too: FIN", "LAST_ACK: waiting for the last acknowledgment.",
               _tcp("c", "server", "FA")),
            _s("last-ACK", "h1 acknowledges: the last ACK", "TIME_WAIT: the entry lingers "
               "2 minutes (nf_conntrack_tcp_timeout_time_wait) so that late packets still "
               "find it.", _tcp("c", "client", "A")),
        ), flows={"c": _c("tcp", "h1", 40001, (SRV, 5001))}),
        Scenario("rst", "A connection reset", steps=(
            *_handshake(),
            _s("RST", "h1 resets the connection", "A RST in window ends it at once: CLOSE, "
               "10 seconds left (nf_conntrack_tcp_timeout_close).", _tcp("c", "client", "R")),
        ), flows={"c": _c("tcp", "h1", 40002, (SRV, 5002))}),
        Scenario("simultaneous-close", "Both ends close at once", steps=(
            *_handshake(),
            _s("FIN-h1", "h1 sends FIN", "FIN_WAIT.", _tcp("c", "client", "FA")),
            _s("FIN-srv", "srv sends FIN before it saw h1's", "Both FINs cross: the server's "
               "FIN does not acknowledge h1's. Conntrack's table goes from FIN_WAIT straight "
               "to LAST_ACK on a FIN in the reply direction.",
               _tcp("c", "server", "FA", ack_fin=False)),
            _s("ACK-h1", "h1 acknowledges srv's FIN", "The last FIN is acknowledged: "
               "TIME_WAIT.", _tcp("c", "client", "A")),
            _s("ACK-srv", "srv acknowledges h1's FIN", "A late ACK in TIME_WAIT changes "
               "nothing (and sends no event).", _tcp("c", "server", "A")),
        ), flows={"c": _c("tcp", "h1", 40003, (SRV, 5003))}),
        Scenario("half-close", "A half-closed connection still carries data", steps=(
            *_handshake(),
            _s("FIN", "h1 is done sending: FIN", "FIN_WAIT.", _tcp("c", "client", "FA")),
            _s("FIN-ACK", "srv acknowledges", "CLOSE_WAIT: h1 to srv is closed, srv to h1 "
               "is still open.", _tcp("c", "server", "A")),
            _s("data", "srv keeps sending", "Data flows in the open direction; the state "
               "stays CLOSE_WAIT.", _tcp("c", "server", "PA", "still talking\n")),
            _s("data-ACK", "h1 acknowledges the data", "A half-closed end still acknowledges.",
               _tcp("c", "client", "A")),
            _s("FIN2", "srv closes: FIN", "LAST_ACK.", _tcp("c", "server", "FA")),
            _s("last-ACK", "h1 acknowledges", "TIME_WAIT.", _tcp("c", "client", "A")),
        ), flows={"c": _c("tcp", "h1", 40004, (SRV, 5004))}),
        Scenario("closed-port", "A SYN to a closed port", steps=(
            _s("SYN", "h1 sends SYN to srv's port 6000", "Nothing listens there: srv's own "
               "kernel answers with a RST, the router translates it back and the entry goes "
               "from SYN_SENT to CLOSE; never answered otherwise, it is destroyed at once "
               "([NEW] then [DESTROY]), so the table stays empty.",
               _tcp("c", "client", "S"), {"wait": 0.3}),
        ), flows={"c": _c("tcp", "h1", 40005, (SRV, CLOSED_PORT))}),
    ],
    "02-snat": [
        Scenario("rewrite", "One connection, before and after the router", steps=(
            _s("SYN", "h1's SYN, before and after", "The source address changes, and with "
               "it the IP and TCP checksums; the TTL drops by one, as at every router. "
               "MASQUERADE keeps the port when it is free.",
               _tcp("c", "client", "S")),
            _s("SYN-ACK", "the reply, before and after", "The reply comes to 203.0.113.1; the "
               "reply tuple tells the router to rewrite the destination back to h1.",
               _tcp("c", "server", "SA")),
        ), flows={"c": _c("tcp", "h1", 40020, (SRV, 5020))}),
        Scenario("clash", "Two hosts, one source port", steps=(
            _s("h1", "h1 sends from port 40021", "The port is free on the public side: kept.",
               _udp("a", "client", "from h1")),
            _s("h2", "h2 sends from port 40021 too", "203.0.113.1:40021 to srv:5021 is taken: "
               "the router must choose another source port (get_unique_tuple()).",
               _udp("b", "client", "from h2")),
            _s("answer-h2", "srv answers h2", "srv answers the port it saw; the reply tuple "
               "leads it back to h2:40021.", _udp("b", "server", "to h2")),
        ), flows={"a": _c("udp", "h1", 40021, (SRV, 5021)), "b": _c("udp", "h2", 40021, (SRV, 5021))}),
        Scenario("snat-range", "SNAT with a port range", rules="classroom-snat-range", steps=(
            _s("h1", "h1 sends from port 40022", "SNAT --to-source 203.0.113.1:20000-20009: the "
               "source port must be in the range, so it changes even though 40022 was free.",
               _udp("a", "client", "from h1")),
            _s("h2", "h2 sends from port 40022", "Another port from the range.",
               _udp("b", "client", "from h2")),
            _s("answer-h1", "srv answers h1", "Back through the reply tuple.",
               _udp("a", "server", "to h1")),
        ), flows={"a": _c("udp", "h1", 40022, (SRV, 5022)), "b": _c("udp", "h2", 40022, (SRV, 5022))}),
        Scenario("port-forward", "Port forwarding (DNAT) from the public side", steps=(
            _s("SYN", "srv connects to 203.0.113.1:8080", "PREROUTING DNAT rewrites the "
               "destination to h2 (10.0.0.11:5080); the reply tuple says replies come from h2.",
               _tcp("c", "client", "S")),
            _s("SYN-ACK", "h2 answers", "h2 answers srv directly; the router rewrites the "
               "source back to 203.0.113.1:8080 so srv recognises its connection.",
               _tcp("c", "server", "SA")),
            _s("ACK", "srv completes the handshake", "ESTABLISHED, ASSURED.",
               _tcp("c", "client", "A")),
        ), flows={"c": _c("tcp", "srv", 40023, (PUBLIC, 8080), server="h2")}),
    ],
    "03-timeouts": [
        Scenario("udp-assured", "UDP: UNREPLIED, seen reply, ASSURED, expiry",
                 sysctls={"net.netfilter.nf_conntrack_udp_timeout": 10,
                          "net.netfilter.nf_conntrack_udp_timeout_stream": 20}, steps=(
            _s("question", "h1 asks", "A new UDP entry: UNREPLIED, nf_conntrack_udp_timeout "
               "(here 10 s).", _udp("u", "client", "ping?")),
            _s("answer", "srv answers", "Seen reply: the timer restarts at 10 s.",
               _udp("u", "server", "pong!")),
            _s("again", "3 s later, h1 sends again", "Still talking more than 2 s after the "
               "reply: a stream (nf_conntrack_udp_packet()). ASSURED, and the timeout becomes "
               "nf_conntrack_udp_timeout_stream (here 20 s).",
               {"wait": 3}, _udp("u", "client", "again")),
            _s("expire", "wait 25 s", "The timeout runs out: the entry disappears from the "
               "table at once, the DESTROY event comes when garbage collection meets it.",
               {"wait": 25}),
        ), flows={"u": _c("udp", "h1", 40030, (SRV, 5030))}),
        Scenario("time-wait", "TIME_WAIT runs out",
                 sysctls={"net.netfilter.nf_conntrack_tcp_timeout_time_wait": 5}, steps=(
            *_handshake(),
            _s("FIN", "h1 closes", "FIN_WAIT.", _tcp("c", "client", "FA")),
            _s("FIN-ACK", "srv acknowledges and closes", "LAST_ACK.",
               _tcp("c", "server", "FA")),
            _s("last-ACK", "h1 acknowledges", "TIME_WAIT with 5 s (shortened).",
               _tcp("c", "client", "A")),
            _s("expire", "wait 8 s", "TIME_WAIT is over: gone from the table; the DESTROY "
               "event follows from garbage collection.", {"wait": 8}),
        ), flows={"c": _c("tcp", "h1", 40031, (SRV, 5031))}),
        Scenario("table-full", "A full table and early drop", simulated=True,
                 intro="The kernel's nf_conntrack_max is global and read-only inside a network "
                       "namespace, so the lab's router cannot be given a tiny table: this "
                       "scenario runs on nattrack's tracker alone (no kernel column).",
                 sysctls={"net.netfilter.nf_conntrack_max": 4,
                          "net.netfilter.nf_conntrack_buckets": 8}, steps=(
            _s("assured", "one TCP connection, established", "ASSURED: early drop spares it.",
               _tcp("c", "client", "S"), _tcp("c", "server", "SA"), _tcp("c", "client", "A")),
            _s("fill", "three UDP datagrams, unanswered", "Four entries: the table is full "
               "(nf_conntrack_max = 4).", _udp("a", "client", "1"), _udp("b", "client", "2"),
               _udp("d", "client", "3")),
            _s("one-more", "a fifth connection", "__nf_conntrack_alloc() finds the table full; "
               "early_drop() evicts the entries that are not ASSURED in the first bucket (of "
               "8 scanned) that has any, and the new entry gets its place.",
               _udp("e", "client", "4")),
        ), flows={"c": _c("tcp", "h1", 40050, (SRV, 5050)), "a": _c("udp", "h1", 40051, (SRV, 5051)),
                  "b": _c("udp", "h1", 40052, (SRV, 5052)), "d": _c("udp", "h1", 40053, (SRV, 5053)),
                  "e": _c("udp", "h2", 40054, (SRV, 5054))}),
    ],
    "04-related-and-invalid": [
        Scenario("port-unreachable", "An ICMP error is RELATED", steps=(
            _s("probe", "h1 sends UDP to srv's closed port 6000", "srv's kernel answers with "
               "ICMP port unreachable. The error quotes the datagram as srv saw it "
               "(from 203.0.113.1); the router finds the entry through the quoted packet "
               "(RELATED) and rewrites the quote back to h1's address and port.",
               _udp("u", "client", "anyone?"), {"wait": 0.3}),
        ), flows={"u": _c("udp", "h1", 40040, (SRV, CLOSED_PORT))}),
        Scenario("ttl-exceeded", "Time exceeded: from further on, and from the router itself",
                 steps=(
            _s("first", "h1 sends a UDP datagram", "A new entry.",
               _udp("u", "client", "first")),
            _s("far-error", "a router further on reports TTL exceeded", "srv plays a router "
               "beyond ours: its ICMP time exceeded quotes the datagram as it left (from "
               "203.0.113.1). The quote leads to the entry: RELATED, and the router rewrites "
               "the outer destination and the quoted source back to h1.",
               {"send": "icmp-error", "flow": "u", "side": "server", "type": 11, "code": 0}),
            _s("ttl-1", "h1 sends with TTL 1", "Our router may not forward it and sends ICMP "
               "time exceeded itself. It quotes h1's datagram as it came in, never translated, "
               "so conntrack could not find the entry from the quote; but icmp_send() hands "
               "the error the entry of the packet it is about (nf_ct_attach()): RELATED, "
               "like the other one.",
               _udp("u", "client", "ttl 1", ttl=1), {"wait": 0.3}),
        ), flows={"u": _c("udp", "h1", 40041, (SRV, 5041))}),
        Scenario("invalid-leak", "INVALID packets leak without a filter rule",
                 sysctls={"net.netfilter.nf_conntrack_tcp_loose": 0}, steps=(
            _s("bare-ACK", "h1 sends an ACK out of nowhere", "With nf_conntrack_tcp_loose=0 "
               "conntrack will not pick up a connection in the middle: the packet is INVALID, "
               "gets no entry and is not translated, and with no filter rule the router "
               "forwards it anyway, with h1's private address: a leak.",
               _tcp("c", "client", "A")),
        ), flows={"c": _c("tcp", "h1", 40042, (SRV, 5042))}),
        Scenario("firewall", "A stateful firewall from --ctstate rules",
                 rules="classroom-firewall",
                 sysctls={"net.netfilter.nf_conntrack_tcp_loose": 0}, steps=(
            *_handshake(),
            _s("bare-ACK", "h1 sends an ACK out of nowhere", "INVALID again, but now "
               "`-m conntrack --ctstate INVALID -j DROP` stops it: nothing leaks.",
               _tcp("x", "client", "A")),
            _s("unsolicited", "srv tries the forwarded port 8080", "DNAT still sends it to "
               "h2, but it is NEW from outside and no FORWARD rule accepts that: the policy "
               "drops it. Its entry is never confirmed, so it never shows in the table.",
               _tcp("in", "client", "S")),
        ), flows={"c": _c("tcp", "h1", 40043, (SRV, 5043)),
                  "x": _c("tcp", "h1", 40044, (SRV, 5044)),
                  "in": _c("tcp", "srv", 40045, (PUBLIC, 8080), server="h2")}),
    ],
}


def notebook_scenarios(notebook: str) -> list[Scenario]:
    try:
        return SCENARIOS[notebook]
    except KeyError:
        raise KeyError(f"no notebook {notebook!r}: known are {', '.join(NOTEBOOKS)}") from None
