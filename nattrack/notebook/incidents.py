"""Notebook 05-incidents: two production incidents replayed on the engine, step by step.

1. **The DNS race** (kubernetes #56903, weave #3287): a resolver sends its A and AAAA
   queries from one UDP socket at once; the node handles them on two CPUs, both make a
   conntrack entry before either is confirmed, and the second confirm finds the first's
   entry: ``nf_ct_resolve_clash()`` merges it, inserts it in the reply direction only, or
   drops the packet (``insert_failed``), and a dropped query costs the resolver its 5 s
   timeout.  Played with :func:`nattrack.conntrack.cpus.race` (docs/clash.md; the same
   outcomes in the real kernel: tests/kernel/test_race.py).
2. **The stale UDP entry** (kubernetes #48370, moby #8795): a backend restarts, the
   service's DNAT rule names the new one, but the client's entry keeps the old
   translation, and every datagram refreshes it; ``conntrack -D`` ends it.

Both run on a :class:`~nattrack.ipv4.stack.Router` with a :class:`ManualClock`:
no lab, no root, the same every time (a race needs two CPUs within microseconds, which
lab 07 stages live).  The node is lab 07's (topologies/incidents.py): pods h1 10.0.0.10
and h2 10.0.0.11 on ntr-lan, backends on ntr-svc (10.1.0.0/24), srv 203.0.113.10 on
ntr-wan.

Each scenario is computed in full when its panel is made (or a control changes): a
list of :class:`Frame` (what the views show after each step).  A step button shows its
frame, so steps pressed in any order never leave a half-run engine behind; the frames
are cumulative (step 4 shows what steps 1-3 did as well).  The panels
(:class:`RacePanel`, :class:`StalePanel`) keep all their state in themselves: several
notebooks and panels can be open at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..conntrack import cpus
from ..conntrack.profile import NEWEST, PROFILE_NAMES, PROFILES
from ..conntrack.show import STATS_NAMES, conn_json, format_stats
from ..lab.craft import build
from ..packet.ipv4 import Packet
from ..replay import ManualClock, event_recorder, load_rules
from ..widgets.render import GREEN, GREY, ORANGE, RED, _wrap, esc
from .session import SessionError

NOTEBOOK = "05-incidents"
IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-svc": "10.1.0.1/24", "ntr-wan": "203.0.113.1/24"}
ROUTES = {"default": "ntr-wan"}
T0 = 1000.0                 # the engine's clock when a scenario starts (seconds)
RTT = 0.001                 # a backend answers this long after the query left the node
RESOLVER_TIMEOUT = 5.0      # glibc's resolver waits this long for an answer (options timeout:5)
CLASH_LIFE = 1.0            # nf_ct_resolve_clash_harder(): the reply-only entry lives 1 s (HZ)
DNS_VIP = "10.96.0.10"      # the cluster DNS service's address
UPSTREAM = "203.0.113.10"   # srv: a DNS server outside, reached through the node's SNAT

_NAT_HEAD = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
            ":POSTROUTING ACCEPT [0:0]\n"
DNS_DNAT_RULE = (f"-A PREROUTING -d {DNS_VIP}/32 -i ntr-lan -p udp --dport 53 "
                 "-j DNAT --to-destination 10.1.0.11:5301-5302 --random")


def _nat(*rules: str) -> str:
    return _NAT_HEAD + "".join(r + "\n" for r in rules) + "COMMIT\n"


# --- the DNS race ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sender:
    """One CPU's packet: who sends it, from which port, what it asks."""
    label: str
    src: str
    sport: int
    payload: bytes


@dataclass(frozen=True)
class RaceSetup:
    """A race scenario: the node's rules, the two racing datagrams, where they go.
    ``draws``: for rules that draw a random translation, whether the two CPUs' draws
    must ``differ`` or be the ``same`` (the first seed that gives it is used), or None."""
    name: str
    title: str
    story: str
    rules: str
    senders: tuple[Sender, Sender]
    to: tuple[str, int]
    draws: str | None = None


ONE_SOCKET = (Sender("A query", "10.0.0.10", 40000, b"A? example.com"),
              Sender("AAAA query", "10.0.0.10", 40000, b"AAAA? example.com"))
TWO_PODS = (Sender("h1's A query", "10.0.0.10", 40000, b"A? example.com (h1)"),
            Sender("h2's A query", "10.0.0.11", 40000, b"A? example.com (h2)"))
MASQUERADE = "-A POSTROUTING -s 10.0.0.0/24 -o ntr-wan -j MASQUERADE"

RACES: dict[str, RaceSetup] = {s.name: s for s in (
    RaceSetup("dns-dnat", "One socket, two queries, DNAT to two DNS instances",
              "The pod h1 looks up a name: glibc sends the A and the AAAA query from one UDP "
              "socket, back to back, to the cluster DNS service 10.96.0.10:53. The node DNATs "
              "each new entry to one of two DNS instances (10.1.0.11 ports 5301 and 5302, "
              "--random: as kube-proxy draws an endpoint). The node's two CPUs handle the two "
              "datagrams at the same time, and the draws differ.",
              _nat(DNS_DNAT_RULE), ONE_SOCKET, (DNS_VIP, 53), draws="differ"),
    RaceSetup("dns-dnat-same", "One socket, two queries, both drawn to the same instance",
              "The same lookup, the same rules, but this time both CPUs drew the same DNS "
              "instance: the two entries are identical.",
              _nat(DNS_DNAT_RULE), ONE_SOCKET, (DNS_VIP, 53), draws="same"),
    RaceSetup("dns-snat", "Two pods, one source port, through the node's SNAT",
              "The pods h1 and h2 both ask the DNS server outside (203.0.113.10:53) at the "
              "same moment, both from source port 40000; the node masquerades them to "
              "203.0.113.1. MASQUERADE keeps a port it sees free, and neither CPU sees the "
              "other's unconfirmed entry: both keep 40000.",
              _nat(MASQUERADE), TWO_PODS, (UPSTREAM, 53)),
    RaceSetup("dns-snat-random-fully", "Two pods through SNAT with --random-fully",
              "The same two queries; MASQUERADE --random-fully draws a source port for every "
              "new entry (the fix kubernetes and docker adopted).",
              _nat(MASQUERADE + " --random-fully"), TWO_PODS, (UPSTREAM, 53), draws="differ"),
)}
# The panels: each offers its variants in a drop-down.
RACE_PANELS = {"dns-race": ("dns-dnat", "dns-dnat-same"),
               "dns-race-snat": ("dns-snat", "dns-snat-random-fully")}
RACE_STEPS = (
    ("send", "Two queries reach the node at once"),
    ("cpu-0", "CPU 0: conntrack and NAT, up to the confirm"),
    ("cpu-1", "CPU 1: the same, meanwhile"),
    ("confirm-first", "The first confirm: into the table"),
    ("confirm-second", "The second confirm: the clash"),
    ("answers", "The answers come back"),
    ("after-5s", "Five seconds later: the resolver's timeout"),
)
CLASH_COUNTERS = ("clash_resolve", "insert_failed", "drop")
OUTCOME_TEXT = {
    cpus.INSERTED: "inserted",
    cpus.MERGED: "merged into the winner's entry (clash_resolve)",
    cpus.NAT_CLASH: "inserted in the reply direction only, 1 s (clash_resolve)",
    cpus.INSERT_FAILED: "DROPPED (insert_failed, drop)",
    cpus.NO_CONFIRM: "nothing to confirm",
    cpus.NOT_REACHED: "never reached the confirm",
}


@dataclass
class Lane:
    """What one CPU did with its packet."""
    cpu: int
    label: str
    before: bytes                      # as it reached the node
    entry: dict | None = None          # its unconfirmed entry, as it waited at the confirm
    outcome: str = cpus.NOT_REACHED
    place: int | None = None           # 0: confirmed first
    after: bytes | None = None         # as it left (None: dropped)
    answer: bytes | None = None        # its answer as the node delivered it to the client
    answered_at: float | None = None   # when the client got its answer (seconds from T0)
    retried_at: float | None = None    # when the client asked again (its timeout ran out)
    retry_out: bytes | None = None     # that second query as it left the node


@dataclass
class Frame:
    """What the views show after one step (cumulative)."""
    step: str
    title: str
    text: list[str]
    lanes: list[dict]                  # per CPU: what is visible of it at this step
    table: list[dict]                  # conntrack -L (confirmed entries)
    events: list[str]                  # conntrack -E -o timestamp, so far
    stats: list[dict[str, int]]        # conntrack -S, one dict per CPU
    timeline: list[dict]               # marks on the timeline picture, so far
    t: float = 0.0                     # seconds since T0


@dataclass
class RaceRun:
    setup: RaceSetup
    profile: str
    order: tuple[int, int]
    seed: int
    lanes: list[Lane]
    frames: list[Frame]
    stats_before: list[dict[str, int]]
    stats_after: list[dict[str, int]]
    lookup: float                      # seconds until the client had every answer
    frames_events: list[str] = field(default_factory=list)   # every event of the run

    @property
    def outcomes(self) -> tuple[str, ...]:
        return tuple(lane.outcome for lane in self.lanes)

    @property
    def loser(self) -> Lane:
        return max(self.lanes, key=lambda lane: -1 if lane.place is None else lane.place)


def _router(rules: str, profile: str, seed: int, clock: ManualClock):
    from ..ipv4.stack import Router
    if profile not in PROFILES:
        raise SessionError(f"kernel {profile!r}: one of {', '.join(PROFILE_NAMES)}")
    return Router(dict(IFACES), dict(ROUTES), load_rules(rules), {}, clock, seed=seed,
                  profile=PROFILES[profile])


def _packet(data: bytes, iif: str | None = None, t: float = 0.0) -> Packet:
    p = Packet.parse(bytearray(data), 0, iif=iif, ts=t)
    if p is None:                      # build() makes valid datagrams only
        raise ValueError(f"not an IPv4 datagram: {data[:20].hex()}")
    return p


def _datagram(s: Sender, to: tuple[str, int]) -> bytes:
    return build("udp", s.src, to[0], s.sport, to[1], payload=s.payload)


def _answer(sent: bytes) -> bytes:
    """What a server answers to a datagram it got: the addresses and ports swapped."""
    p = _packet(sent)
    question = bytes(p.buf[p.l4 + 8:p.off + p.tot_len])
    return build("udp", _addr(p.dst), _addr(p.src), p.dport, p.sport,
                 payload=b"answer to " + question)


def _addr(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def _summary(data: bytes | None) -> str:
    if data is None:
        return ""
    p = Packet.parse(bytearray(data), 0)
    return p.summary() if p is not None else f"{len(data)} bytes"


def _race_once(setup: RaceSetup, profile: str, order: tuple[int, int], seed: int) -> RaceRun:
    clock = ManualClock(T0)
    router = _router(setup.rules, profile, seed, clock)
    table = router.ct
    events: list[str] = []
    table.listeners.append(event_recorder(events, [], clock))
    marks: list[dict] = []
    table.listeners.append(lambda kind, ct, _t, _b: marks.append(
        {"t": round(clock() - T0, 6), "kind": kind.lower(),
         "hidden": "NAT_CLASH" in ct.status_names()}))
    cpu_stats = [{k: 0 for k in STATS_NAMES} for _ in setup.senders]
    stats_before = [dict(s) for s in cpu_stats]
    raw = [_datagram(s, setup.to) for s in setup.senders]
    pkts = [_packet(d, "ntr-lan", clock()) for d in raw]
    lanes = [Lane(i, s.label, d) for i, (s, d) in enumerate(zip(setup.senders, raw))]
    snaps: dict[str, tuple] = {}
    table.run_gc_until(clock(), clock.set)          # the gc worker runs from the first packet

    def snap(name: str) -> None:
        snaps[name] = (_listing(table), len(events), [dict(s) for s in cpu_stats], len(marks))

    real_confirm = table.confirm

    def spy(pkt) -> int:
        # race() calls this (the table's confirm, as it found it) once per parked packet,
        # in the confirm order: each CPU's entry as it waited, and what its confirm counted.
        i = next(k for k, p in enumerate(pkts) if p is pkt)
        if not snaps:
            snap("parked")
        if pkt.ct is not None and lanes[i].entry is None:
            lanes[i].entry = conn_json(pkt.ct, table.jiffies())
        before = dict(table.stats)
        verdict = real_confirm(pkt)
        for k, v in table.stats.items():
            cpu_stats[i][k] = cpu_stats[i].get(k, 0) + v - before.get(k, 0)
        snap(f"confirm-{len(snaps)}")
        return verdict

    table.confirm = spy                   # race() keeps it as the real confirm
    try:
        before_all = dict(table.stats)
        result = cpus.race(router, pkts, order=order)
    finally:
        vars(table).pop("confirm", None)      # race() deletes its own; ours too if it did not
    counted = {k: sum(s.get(k, 0) for s in cpu_stats) for k in table.stats}
    for k, v in table.stats.items():          # anything race() counted outside the confirms
        cpu_stats[0][k] = cpu_stats[0].get(k, 0) + v - before_all.get(k, 0) - counted[k]
    oifs: dict[int, str] = {}
    for lane, res in zip(lanes, result):
        lane.outcome, lane.place = res.outcome, res.confirmed_at
        sent: list[Any] = list(res.verdict.sent) if res.verdict is not None else []
        if sent:
            lane.after, oifs[lane.cpu] = sent[0].data, sent[0].oif
    _pad_snaps(snaps, snap)

    # The answers, each on the CPU of its query, RTT after it left.
    clock.set(T0 + RTT)
    for lane in lanes:
        if lane.after is not None:
            _answer_lane(router, lane, oifs[lane.cpu], cpu_stats, clock)
    snap("answers")

    # Time passes: the gc worker reaps what expired; an unanswered query is asked again.
    router.ct.run_gc_until(T0 + RESOLVER_TIMEOUT, clock.set)
    for lane in lanes:
        if lane.answered_at is not None:
            continue
        lane.retried_at = round(clock() - T0, 6)
        v = _receive(router, _packet(lane.before, "ntr-lan", clock()), lane.cpu, cpu_stats)
        if v.sent:
            clock.set(clock() + RTT)
            fake = Lane(lane.cpu, lane.label, lane.before, after=v.sent[0].data)
            _answer_lane(router, fake, v.sent[0].oif, cpu_stats, clock)
            lane.answer, lane.answered_at = fake.answer, fake.answered_at
            lane.retry_out = v.sent[0].data
    snap("later")
    lookup = max((lane.answered_at or RESOLVER_TIMEOUT) for lane in lanes)
    run = RaceRun(setup, profile, (order[0], order[1]), seed, lanes, [], stats_before,
                  [dict(s) for s in cpu_stats], round(lookup, 6), list(events))
    run.frames = _race_frames(run, snaps, events, marks)
    return run


def _receive(router: Any, pkt: Packet, cpu: int, cpu_stats: list[dict[str, int]]) -> Any:
    before = dict(router.ct.stats)
    v = router.receive(pkt)
    for k, val in router.ct.stats.items():
        cpu_stats[cpu][k] = cpu_stats[cpu].get(k, 0) + val - before.get(k, 0)
    return v


def _answer_lane(router: Any, lane: Lane, oif: str, cpu_stats: list[dict[str, int]],
                 clock: ManualClock) -> None:
    """The server answers lane's datagram (as it left the node); the node handles the
    answer on the lane's CPU; ``lane.answer`` is what reached the client."""
    if lane.after is None:
        return
    v = _receive(router, _packet(_answer(lane.after), oif, clock()), lane.cpu, cpu_stats)
    if v.sent:
        lane.answer, lane.answered_at = v.sent[0].data, round(clock() - T0, 6)


def _pad_snaps(snaps: dict, snap: Callable[[str], None]) -> None:
    """A run where a packet never reached its confirm has fewer snapshots: the last
    state stands for the missing ones."""
    if not snaps:
        snap("parked")
    last = list(snaps.values())[-1]
    for name in ("confirm-1", "confirm-2"):
        snaps.setdefault(name, last)


def _listing(table) -> list[dict]:
    """``conntrack -L``: the confirmed entries (a clash entry in the reply direction only
    is not listed: its original tuple belongs to the winner)."""
    now = table.jiffies()
    return [conn_json(ct, now) for ct in table.conns(reap=False)]


def _flow(e: dict | None) -> str:
    if not e:
        return ""
    o, r = e["orig"], e["reply"]
    return (f"{o['src']}:{o['sport']} -> {o['dst']}:{o['dport']}  |  reply "
            f"{r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}")


def _race_frames(run: RaceRun, snaps: dict, events: list[str], marks: list[dict]) -> list[Frame]:
    lanes = run.lanes
    by_place = sorted((x for x in lanes if x.place is not None), key=lambda x: x.place or 0)
    first, second = (by_place + [None, None])[:2]
    frames = []
    for k, (step, title) in enumerate(RACE_STEPS):
        key = {0: "parked", 1: "parked", 2: "parked", 3: "confirm-1", 4: "confirm-2",
               5: "answers", 6: "later"}[k]
        table, n_ev, stats, n_marks = snaps[key]
        views = []
        for lane in lanes:
            ran = k >= 1 + lane.cpu                     # its conntrack and NAT ran
            confirmed = lane.place is not None and k >= 3 + lane.place
            views.append({
                "cpu": lane.cpu, "label": lane.label, "in": _summary(lane.before),
                "entry": _flow(lane.entry) if ran else "",
                "stage": ("done" if confirmed else "parked" if ran else "received"),
                "outcome": lane.outcome if confirmed else "",
                "out": _summary(lane.after) if confirmed else "",
            })
        t = {5: RTT, 6: RESOLVER_TIMEOUT + (RTT if any(x.retried_at for x in lanes) else 0)}
        frames.append(Frame(step, title, _race_text(run, k, first, second), views, table,
                            events[:n_ev], stats, _race_marks(run, k, marks[:n_marks]),
                            t.get(k, 0.0)))
    return frames


def _race_marks(run: RaceRun, k: int, entry_marks: list[dict]) -> list[dict]:
    """The timeline picture's marks up to step ``k``: each query sent, dropped,
    answered, asked again; the hidden clash entry's one second."""
    out: list[dict] = []
    for lane in run.lanes:
        out.append({"lane": lane.cpu, "t": 0.0, "kind": "sent"})
        if lane.place is not None and k >= 3 + lane.place and lane.after is None:
            out.append({"lane": lane.cpu, "t": 0.0, "kind": "dropped"})
        if k >= 5 and lane.answered_at is not None and lane.retried_at is None:
            out.append({"lane": lane.cpu, "t": lane.answered_at, "kind": "answered"})
        if k >= 6 and lane.retried_at is not None:
            out.append({"lane": lane.cpu, "t": lane.retried_at, "kind": "retry"})
            if lane.answered_at is not None:
                out.append({"lane": lane.cpu, "t": lane.answered_at, "kind": "answered"})
        if lane.outcome == cpus.NAT_CLASH and lane.place is not None and k >= 3 + lane.place:
            gone = [m["t"] for m in entry_marks if m["kind"] == "destroy" and m["hidden"]]
            out.append({"lane": lane.cpu, "t": 0.0, "kind": "hidden", "until": CLASH_LIFE,
                        "destroyed": gone[0] if gone else None})
    return out


def _race_text(run: RaceRun, k: int, first: Lane | None, second: Lane | None) -> list[str]:
    lanes = run.lanes
    a, b = lanes
    if k == 0:
        return [f"CPU 0 has {a.label}: {_summary(a.before)}",
                f"CPU 1 has {b.label}: {_summary(b.before)}",
                "Neither packet has an entry yet: nf_conntrack_in() will make one for each."]
    if k in (1, 2):
        lane = lanes[k - 1]
        out = [f"CPU {lane.cpu}: nf_conntrack_in() finds no entry and makes one; NAT binds "
               f"it: {_flow(lane.entry) or 'no entry'}.",
               "The entry hangs off the packet, unconfirmed: it is in no table and no other "
               "CPU can find it. The packet goes on through FORWARD and POSTROUTING and "
               "waits at the confirm hook."]
        if k == 2 and a.entry and b.entry:
            same_orig, same_reply = (a.entry[d] == b.entry[d] for d in ("orig", "reply"))
            out.append("The two unconfirmed entries are " + (
                "identical: the same flow, the same translation." if same_orig and same_reply
                else "the same flow with different translations (compare their reply tuples)."
                if same_orig else "two flows with the same reply tuple: NAT gave both the "
                "same public port, as neither CPU could see the other's entry." if same_reply
                else "two flows with different translations."))
        return out
    if k == 3 and first is not None:
        return [f"CPU {first.cpu} confirms first (__nf_conntrack_confirm()): no entry holds "
                "its tuples, so its entry goes into the table: [NEW].",
                f"Its packet leaves: {_summary(first.after)}."]
    if k == 4 and second is not None:
        fate = {
            cpus.MERGED: "nf_ct_can_merge(): both entries are the same flow with the same "
                         "translation, so the packet adopts the winner's entry and its own is "
                         "freed. clash_resolve+1; the packet goes on.",
            cpus.NAT_CLASH: "the translations differ, so nf_ct_resolve_clash_harder() inserts "
                            "the loser in the reply direction only (NAT_CLASH, 1 second, not "
                            "in conntrack -L) so that the answer from its backend finds its "
                            "way back. clash_resolve+1; the packet goes on.",
            cpus.INSERT_FAILED: "its reply tuple is held by another flow (the winner's), so "
                                "nothing can be merged or inserted: the packet is DROPPED. "
                                "insert_failed+1, drop+1 on this CPU.",
            cpus.INSERTED: "no entry holds its tuples (its translation differs in both "
                           "directions): it is inserted as well. No clash.",
        }.get(second.outcome, OUTCOME_TEXT.get(second.outcome, second.outcome))
        return [f"CPU {second.cpu} confirms second and looks its tuples up in the table: "
                + ("it finds CPU " + str(first.cpu) + "'s entry; " if first and
                   second.outcome != cpus.INSERTED else "") + fate,
                f"Kernel {run.profile}: " + ", ".join(
                    f"CPU {x.cpu} {OUTCOME_TEXT[x.outcome]}" for x in lanes) + "."]
    if k == 5:
        out = []
        for lane in lanes:
            if lane.after is None:
                out.append(f"{lane.label}: never left the node, so no answer: the resolver "
                           "waits.")
            elif lane.answered_at is not None:
                out.append(f"{lane.label}: its server answers and the node translates the "
                           f"answer back: the client has it after {lane.answered_at * 1000:g} ms.")
            else:
                out.append(f"{lane.label}: the answer found no entry on its way back.")
        return out
    if k == 6:
        out = []
        for lane in lanes:
            if lane.retried_at is not None:
                out.append(f"{lane.label}: no answer for {RESOLVER_TIMEOUT:g} s; the resolver "
                           f"asks again at {lane.retried_at:g} s (a new entry now, no race), "
                           + (f"answered at {lane.answered_at:g} s." if lane.answered_at
                              else "still no answer."))
        if any(x.outcome == cpus.NAT_CLASH for x in lanes):
            destroyed = any("[DESTROY]" in e for e in run.frames_events)
            out.append("The hidden clash entry lived one second (it never shows in conntrack "
                       "-L); " + ("the gc worker reaped it: its [DESTROY] is in the events." if
                                  destroyed else "it has expired, and the gc worker's next "
                                  "pass reaps it (conntrack -E then shows its [DESTROY])."))
        out.append(f"The lookup took {run.lookup:g} s.")
        return out
    return []


def race(name: str, profile: str = NEWEST.name, first: int = 0) -> RaceRun:
    """Scenario ``name`` of :data:`RACES` on kernel ``profile``, CPU ``first`` confirming
    first.  A scenario with ``draws`` uses the first seed that draws as it says."""
    try:
        setup = RACES[name]
    except KeyError:
        raise SessionError(f"no race {name!r}: known are {', '.join(RACES)}") from None
    if first not in (0, 1):
        raise SessionError(f"first to confirm: CPU 0 or CPU 1, not {first!r}")
    order = (first, 1 - first)
    for seed in range(64):
        run = _race_once(setup, profile, order, seed)
        a, b = (lane.entry for lane in run.lanes)
        same = a is not None and b is not None and a["reply"] == b["reply"]
        if setup.draws is None or (setup.draws == "same") == same:
            return run
    raise SessionError(f"{name}: no seed of 64 draws {setup.draws} translations")


def outcomes_by_kernel(name: str, first: int = 0) -> dict[str, tuple[str, ...]]:
    """Each kernel profile's outcome of the race: where 6.1 and 6.18 differ, and where not."""
    return {p: race(name, p, first).outcomes for p in PROFILE_NAMES}


# --- the stale UDP entry -------------------------------------------------------------------------

SERVICE = "203.0.113.1"
STALE_RULES_BE1 = _nat(f"-A PREROUTING -d {SERVICE}/32 -i ntr-wan -p udp --dport 53 "
                       "-j DNAT --to-destination 10.1.0.11:53")
STALE_RULES_BE2 = STALE_RULES_BE1.replace("10.1.0.11:53", "10.1.0.12:53")
CLIENT_PORT, OTHER_PORT = 5353, 5354
QUERY_EVERY = 2.0            # srv asks every 2 s
STALE_STEPS = (
    ("healthy", "srv asks from port 5353; be1 answers"),
    ("backend-restart", "be1 restarts: the service now points to be2"),
    ("queries-lost", "srv keeps asking from port 5353 for 30 s"),
    ("other-port", "a query from another port"),
    ("conntrack-D", "conntrack -D deletes the stale entry"),
    ("recovered", "srv asks again from port 5353"),
)
DELETE_COMMAND = f"conntrack -D -p udp --orig-src {UPSTREAM} --orig-port-src {CLIENT_PORT}"


@dataclass
class StaleRun:
    frames: list[Frame]
    samples: list[tuple[float, int, str]]      # (seconds, timeout left, flow) at each packet
    queries: list[dict]                        # each query: t, sport, backend, answered
    markers: list[tuple[float, str]]           # (seconds, what happened)


def stale() -> StaleRun:
    """The stale-UDP incident on the engine, step by step (deterministic)."""
    clock = ManualClock(T0)
    router = _router(STALE_RULES_BE1, NEWEST.name, 1, clock)
    table = router.ct
    events: list[str] = []
    table.listeners.append(event_recorder(events, [], clock))
    backends_up = {"10.1.0.11"}
    samples: list[tuple[float, int, str]] = []
    queries: list[dict] = []
    markers: list[tuple[float, str]] = []
    frames: list[Frame] = []

    def now() -> float:
        return round(clock() - T0, 6)

    def sample() -> None:
        for e in _listing(table):
            if e["orig"]["src"] == UPSTREAM:
                samples.append((now(), e["timeout"], f"{e['orig']['sport']}>{e['reply']['src']}"))

    def ask(sport: int) -> None:
        router.ct.run_gc_until(clock(), clock.set)
        v = router.receive(_packet(build("udp", UPSTREAM, SERVICE, sport, 53, payload=b"q?"),
                                   "ntr-wan", clock()))
        out = Packet.parse(bytearray(v.sent[0].data), 0) if v.sent else None
        backend = _addr(out.dst) if out is not None else ""
        answered = False
        if out is not None and backend in backends_up:
            clock.set(clock() + RTT)
            back = router.receive(_packet(_answer(v.sent[0].data), v.sent[0].oif, clock()))
            answered = bool(back.sent)
        queries.append({"t": now(), "sport": sport, "backend": backend, "answered": answered})
        sample()

    def wait(seconds: float) -> None:
        router.ct.run_gc_until(clock() + seconds, clock.set)

    def frame(k: int, text: list[str]) -> None:
        step, title = STALE_STEPS[k]
        frames.append(Frame(step, title, text, [], _listing(table), list(events),
                            [dict(table.stats)], [], now()))

    for i in range(4):                               # 0, 2, 4, 6 s
        if i:
            wait(QUERY_EVERY)
        ask(CLIENT_PORT)
    e = _entry(table, CLIENT_PORT)
    frame(0, ["srv asks the service 203.0.113.1:53 every 2 s from port 5353; the node DNATs "
              "the entry to be1 (10.1.0.11:53) and be1 answers each time.",
              f"After a reply and more traffic the entry is ASSURED, with "
              f"nf_conntrack_udp_timeout_stream ({e['timeout'] if e else '?'} s left)."])

    wait(1.0)
    backends_up.discard("10.1.0.11")
    backends_up.add("10.1.0.12")
    router.ruleset = load_rules(STALE_RULES_BE2)
    markers.append((now(), "be1 gone; rules: be2"))
    frame(1, ["be1's pod restarted and came back as be2 (10.1.0.12); kube-proxy rewrote the "
              "DNAT rule to name be2.",
              "The table is not touched: the entry of port 5353 still translates to "
              "10.1.0.11, and nothing answers there any more."])

    start = now()
    while now() - start < 30:
        wait(QUERY_EVERY)
        ask(CLIENT_PORT)
    lost = [q for q in queries if q["t"] >= start]
    e = _entry(table, CLIENT_PORT)
    frame(2, [f"{len(lost)} queries from port 5353 in 30 s, all DNATed to "
              f"{', '.join(sorted({q['backend'] for q in lost}))} by the old entry, none "
              "answered.",
              "Each one matched the entry and reset its timeout: the chart's sawtooth never "
              f"reaches zero ({e['timeout'] if e else '?'} s left now). A new rule only "
              "applies to a new entry, and this entry never gets old enough to expire."])

    wait(1.0)
    ask(OTHER_PORT)
    q = queries[-1]
    frame(3, [f"From port {OTHER_PORT} the same query is a new entry: the new rule sends it to "
              f"{q['backend']}, which answers ({'answered' if q['answered'] else 'no answer'}).",
              "The service works; only the old flow is black-holed."])

    wait(1.0)
    gone = [ct for ct in table.conns(reap=False)
            if ct.orig.sport == CLIENT_PORT and _addr(ct.orig.src) == UPSTREAM]
    for ct in gone:
        table.kill(ct)                               # ctnetlink_del_conntrack(): nf_ct_delete()
    markers.append((now(), "conntrack -D"))
    frame(4, [f"{DELETE_COMMAND}: {len(gone)} flow entry has been deleted ([DESTROY])."
              if len(gone) == 1 else f"{DELETE_COMMAND}: {len(gone)} flow entries deleted.",
              "Nothing else changes: the rules were right all along."])

    wait(1.0)
    ask(CLIENT_PORT)
    q = queries[-1]
    frame(5, [f"The next query from port {CLIENT_PORT} makes a new entry: DNAT to "
              f"{q['backend']}, {'answered' if q['answered'] else 'no answer'}.",
              "The incident is over. Since these reports (kubernetes #48370, #59368) "
              "kube-proxy does it itself: when a UDP service's endpoint goes away, it "
              "deletes the entries that still translate to it."])
    return StaleRun(frames, samples, queries, markers)


def _entry(table, sport: int) -> dict | None:
    return next((e for e in _listing(table) if e["orig"]["sport"] == sport), None)


# --- the pictures (pure SVG/HTML, data-* for tests) ---------------------------------------------

def race_timeline_svg(marks: list[dict], labels: list[str], horizon: float = 6.0) -> str:
    """Each CPU's query on a time axis: sent, dropped, answered, asked again; a hidden
    clash entry's second as a bar.  No ids (several notebooks share one page)."""
    width, left, right, row = 680, 150, 70, 34      # right: room for the last label
    height = 30 + row * len(labels) + 24
    scale = (width - left - right) / horizon

    def x(t: float) -> float:
        return left + min(max(t, 0.0), horizon) * scale

    parts = []
    for i, label in enumerate(labels):
        y = 30 + i * row
        parts.append(f'<text x="4" y="{y + 4}" font-size="12">{esc(label)}</text>'
                     f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" '
                     f'stroke="{GREY}" stroke-dasharray="2,3"/>')
    for m in marks:
        y = 30 + m["lane"] * row
        cx = x(m["t"])
        kind = m["kind"]
        if kind == "sent":
            parts.append(f'<g data-mark="sent" data-lane="{m["lane"]}"><circle cx="{cx:.1f}" '
                         f'cy="{y}" r="4" fill="{GREY}"/></g>')
        elif kind == "answered":
            parts.append(f'<g data-mark="answered" data-lane="{m["lane"]}" data-t="{m["t"]:g}">'
                         f'<circle cx="{cx + 6:.1f}" cy="{y}" r="5" fill="{GREEN}"/>'
                         f'<text x="{cx + 14:.1f}" y="{y - 6}" font-size="11">answer '
                         f'{m["t"]:g} s</text></g>')
        elif kind == "dropped":
            parts.append(f'<g data-mark="dropped" data-lane="{m["lane"]}"><text x="{cx + 2:.1f}" '
                         f'y="{y + 5}" font-size="15" fill="{RED}">✕</text>'
                         f'<text x="{cx + 16:.1f}" y="{y - 6}" font-size="11" fill="{RED}">'
                         f'dropped: insert_failed</text></g>')
        elif kind == "retry":
            parts.append(f'<g data-mark="retry" data-lane="{m["lane"]}" data-t="{m["t"]:g}">'
                         f'<rect x="{x(0) + 4:.1f}" y="{y - 3}" width="{cx - x(0) - 4:.1f}" '
                         f'height="6" fill="{RED}" opacity=".35"/>'
                         f'<text x="{(x(0) + cx) / 2:.1f}" y="{y + 16}" font-size="11" '
                         f'text-anchor="middle" fill="{RED}">the resolver waits '
                         f'{RESOLVER_TIMEOUT:g} s</text>'
                         f'<circle cx="{cx:.1f}" cy="{y}" r="4" fill="{ORANGE}"/>'
                         f'<text x="{cx - 4:.1f}" y="{y - 8}" font-size="11" '
                         f'text-anchor="end">asks again</text></g>')
        elif kind == "hidden":
            end = x(m["until"])
            gone = m.get("destroyed")
            parts.append(f'<g data-mark="hidden" data-lane="{m["lane"]}" '
                         f'data-until="{m["until"]:g}" '
                         f'data-destroyed="{"" if gone is None else f"{gone:g}"}">'
                         f'<rect x="{cx:.1f}" y="{y + 6}" width="{max(end - cx, 2):.1f}" '
                         f'height="5" fill="{ORANGE}" opacity=".7"/>'
                         f'<text x="{end + 4:.1f}" y="{y + 13}" font-size="10" fill="{ORANGE}">'
                         f'hidden clash entry (1 s)</text></g>')
    axis_y = 30 + row * len(labels)
    ticks = "".join(f'<line x1="{x(t):.1f}" y1="{axis_y - 4}" x2="{x(t):.1f}" y2="{axis_y}" '
                    f'stroke="{GREY}"/><text x="{x(t):.1f}" y="{axis_y + 14}" font-size="10" '
                    f'text-anchor="middle">{t:g} s</text>' for t in range(int(horizon) + 1))
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" '
                 f'stroke="{GREY}"/>{ticks}')
    answered = {m["lane"]: m["t"] for m in marks if m["kind"] == "answered"}
    state = {"view": "race-timeline", "lanes": len(labels),
             "dropped": sum(m["kind"] == "dropped" for m in marks),
             "retries": sum(m["kind"] == "retry" for m in marks),
             "answered": len(answered),
             "lookup": f"{max(answered.values()):g}" if len(answered) == len(labels) else "",
             "hidden": sum(m["kind"] == "hidden" for m in marks)}
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" '
           f'font-family="sans-serif" fill="currentColor">{"".join(parts)}</svg>')
    return _wrap("race-timeline", svg, state, "the client's queries in time")


def refresh_chart_svg(samples: list[tuple[float, int, str]], markers: list[tuple[float, str]],
                      until: float, top: int = 130) -> str:
    """The stale entry's timeout over time: a sawtooth, each packet resetting it; one
    line per entry (flow ``sport>backend``, named in the legend), markers for what
    happened."""
    width, left, right, height, bottom = 700, 40, 20, 250, 220
    span = max(until, 1.0) + 2.0          # room after the last packet

    def x(t: float) -> float:
        return left + t / span * (width - left - right)

    def y(v: float) -> float:
        return bottom - v / top * (bottom - 40)

    colours = [RED, GREEN, ORANGE, GREY]
    flows: dict[str, list[tuple[float, int]]] = {}
    for t, left_s, flow in samples:
        flows.setdefault(flow, []).append((t, left_s))
    parts = [f'<text x="{left}" y="12" font-size="10">seconds left on each entry:</text>']
    for i, (flow, pts) in enumerate(flows.items()):
        path = []
        for j, (t, v) in enumerate(pts):
            if j:                              # it ran down since the previous packet
                pt, pv = pts[j - 1]
                path.append(f"{x(t):.1f},{y(max(pv - (t - pt), 0)):.1f}")
            path.append(f"{x(t):.1f},{y(v):.1f}")
        colour = colours[i % len(colours)]
        sport, backend = flow.split(">")
        lx = left + 150 + i * 160
        parts.append(f'<g data-flow="{esc(flow)}" data-points="{len(pts)}" '
                     f'data-min="{min(v for _, v in pts)}"><polyline fill="none" '
                     f'stroke="{colour}" stroke-width="2" points="{" ".join(path)}"/>'
                     f'<circle cx="{x(pts[-1][0]):.1f}" cy="{y(pts[-1][1]):.1f}" r="3" '
                     f'fill="{colour}"/><rect x="{lx}" y="4" width="14" height="8" fill="{colour}"/>'
                     f'<text x="{lx + 18}" y="12" font-size="10">port {esc(sport)} → '
                     f'{esc(backend)}</text></g>')
    for t, what in markers:
        end = x(t) > width - 160                      # near the right edge: text to the left
        parts.append(f'<g data-marker="{esc(what)}"><line x1="{x(t):.1f}" y1="26" '
                     f'x2="{x(t):.1f}" y2="{bottom}" stroke="{GREY}" stroke-dasharray="4,3"/>'
                     f'<text x="{x(t) + (-3 if end else 3):.1f}" y="36" font-size="10" '
                     f'text-anchor="{"end" if end else "start"}">{esc(what)}</text></g>')
    for v in (0, 30, 60, 90, 120):
        parts.append(f'<text x="{left - 4}" y="{y(v) + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{v}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" '
                 f'stroke="{GREY}"/><text x="{width - right}" y="{bottom + 16}" font-size="10" '
                 f'text-anchor="end">time (s) → {span:.0f}</text>')
    state = {"view": "refresh-chart", "flows": list(flows), "samples": len(samples),
             "markers": [m for _, m in markers]}
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" '
           f'font-family="sans-serif" fill="currentColor">{"".join(parts)}</svg>')
    return _wrap("refresh-chart", svg, state, "the entry's timeout, reset by every packet")


def cpus_html(lanes: list[dict]) -> str:
    """Both CPUs side by side: the packet, its unconfirmed entry, what its confirm did."""
    cols = []
    for v in lanes:
        colour = {cpus.INSERT_FAILED: RED, cpus.NAT_CLASH: ORANGE,
                  cpus.MERGED: ORANGE}.get(v["outcome"], GREEN if v["outcome"] else GREY)
        stage = {"received": "received", "parked": "waiting at the confirm hook",
                 "done": "confirmed"}[v["stage"]]
        cols.append(
            f'<div data-cpu="{v["cpu"]}" data-stage="{v["stage"]}" data-outcome="{v["outcome"]}" '
            f'data-entry="{esc(v["entry"])}" style="flex:1 1 45%;min-width:320px;border:1px '
            f'solid {colour};border-radius:4px;padding:4px 8px">'
            f'<b>CPU {v["cpu"]}: {esc(v["label"])}</b> <span class="nt-note">({stage})</span>'
            f'<div>in: {esc(v["in"])}</div>'
            f'<div>unconfirmed entry: {esc(v["entry"]) or "<span class=nt-note>none yet</span>"}'
            f'</div><div style="color:{colour}">confirm: '
            f'{esc(OUTCOME_TEXT.get(v["outcome"], "")) if v["outcome"] else "not yet"}</div>'
            f'<div>out: {esc(v["out"]) or "<span class=nt-note>-</span>"}</div></div>')
    state = {"view": "cpus", "stages": [v["stage"] for v in lanes],
             "outcomes": [v["outcome"] for v in lanes]}
    return _wrap("cpus", '<div class="nt-sides">' + "".join(cols) + "</div>", state,
                 "the node's two CPUs")


def stats_html(before: list[dict[str, int]], now: list[dict[str, int]]) -> str:
    """``conntrack -S`` before the race and now, one line per CPU; the clash counters
    that moved are marked."""
    def lines(stats: list[dict[str, int]]) -> str:
        return "\n".join(format_stats(s, cpu).rstrip() for cpu, s in enumerate(stats))
    moved = {k: sum(s.get(k, 0) for s in now) - sum(s.get(k, 0) for s in before)
             for k in CLASH_COUNTERS}
    note = ", ".join(f"{k} +{v}" for k, v in moved.items() if v) or "no clash counter moved"
    state = {"view": "stats", **{k.replace("_", "-"): v for k, v in moved.items()}}
    body = (f'<div class="nt-note">before:</div><pre>{esc(lines(before))}</pre>'
            f'<div class="nt-note">now:</div><pre>{esc(lines(now))}</pre><div><b>{esc(note)}</b></div>')
    return _wrap("stats", body, state, "conntrack -S")


def explain_html(frame: Frame | None, index: int, total: int, first_title: str) -> str:
    if frame is None:
        return (f'<div class="nt" data-view="explain" data-step="" data-end="false">Press '
                f'<b>next step</b> (or a step\'s button): {esc(first_title)}.</div>')
    end = index == total - 1
    body = f"<b>Step {index + 1}/{total}: {esc(frame.title)}</b><ul>" + "".join(
        f"<li>{esc(x)}</li>" for x in frame.text) + "</ul>"
    if end:
        body += ('<div class="nt-end"><b>End of the scenario.</b> Press <b>reset</b> (or a '
                 "step's button) to look again.</div>")
    return (f'<div class="nt" data-view="explain" data-step="{esc(frame.step)}" '
            f'data-end="{"true" if end else "false"}">{body}</div>')


def steps_html(scenario: str, shown: list[str], variant: str = "", kernel: str = "") -> str:
    state = {"view": "steps", "scenario": scenario, "steps": shown, "variant": variant,
             "kernel": kernel}
    body = (" → ".join(esc(s) for s in shown) if shown
            else '<span class="nt-note">no step yet: press a button</span>')
    return _wrap("steps", f"<div>{body}</div>", state, "steps so far")


def rules_html(rules: str) -> str:
    lines = [ln for ln in rules.splitlines() if ln.startswith("-A")]
    return _wrap("rules", f"<pre>{esc(chr(10).join(lines))}</pre>",
                 {"view": "rules", "rules": len(lines)}, "the node's NAT rules")


# --- the session and the panels ----------------------------------------------------------------

class EngineSession:
    """What ``ui.banner`` and ``ui.close`` need: this notebook always runs on the engine."""

    mode = "replay"

    def __init__(self, notebook: str = NOTEBOOK, mode: str = "auto") -> None:
        if notebook != NOTEBOOK:
            raise SessionError(f"incidents.open_session is for {NOTEBOOK}, not {notebook!r}")
        if mode not in ("auto", "live", "replay"):
            raise SessionError(f"mode {mode!r}: auto, live or replay")
        self.notebook = notebook
        self.label = ("Engine replay: packets generated and run through nattrack's engine "
                      "(the kernel's clash and timeout rules), the same on every machine")
        self.why_not_live = ("a race needs two CPUs within microseconds: lab 07 stages it "
                             "live, tests/kernel/test_race.py proves the engine's outcomes "
                             "against the kernel")
        if mode == "live":
            self.why_not_live = "MODE = \"live\" asked, but " + self.why_not_live

    def close(self) -> None:
        pass


def open_session(notebook: str = NOTEBOOK, mode: str = "auto") -> EngineSession:
    return EngineSession(notebook, mode)


def _widgets():
    import ipywidgets
    return ipywidgets


class _Panel:
    """Buttons (one per step, next, reset) over precomputed frames; subclasses draw."""

    name = ""
    steps: tuple[tuple[str, str], ...] = ()

    def __init__(self) -> None:
        w = _widgets()
        self.shown: list[str] = []
        self.index: int | None = None
        self.status = w.HTML(value="")
        self.explain = w.HTML(value="")
        self.log = w.HTML(value="")
        from ..widgets import step_buttons           # ipywidgets only when a panel is made
        self.buttons, self.next_button, self.reset_button = step_buttons(self, self.steps)

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def _controls(self) -> list:
        return [*self.buttons, self.next_button, self.reset_button]

    def _click(self, fn: Callable, *args) -> None:
        """A button or a drop-down: an error is one line in the panel, never a traceback."""
        for b in self._controls():
            b.disabled = True
        try:
            note = fn(*args)
            self.status.value = (f'<span class="nt nt-note" data-note="{esc(note)}">{esc(note)}'
                                 "</span>" if isinstance(note, str) else "")
        except Exception as exc:                       # noqa: BLE001 -- shown, never raised
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not isinstance(exc, SessionError):
                msg = f"{type(exc).__name__}: {msg} (press reset, or restart the kernel)"
            self.status.value = (f'<span class="nt nt-err" data-error="{esc(msg)}" '
                                 f'style="color:{RED}">{esc(msg)}</span>')
        finally:
            for b in self._controls():
                b.disabled = False

    END = "That was the last step. Press reset (or a step's button) to look again."

    def run(self, step: str | None = None) -> Frame | str:
        """Show ``step`` (default: the next one).  Steps are frames of a run computed in
        full, so any order is fine; the log lists the steps as pressed."""
        names = [s for s, _ in self.steps]
        if step is None:
            if self.index is not None and self.index >= len(names) - 1:
                return self.END
            k = 0 if self.index is None else self.index + 1
        elif step in names:
            k = names.index(step)
        else:
            raise SessionError(f"{self.name} has no step {step!r}: steps are {', '.join(names)}")
        self.index = k
        self.shown.append(names[k])
        self._draw()
        return self.frames()[k]

    def run_all(self) -> list[Frame]:
        self.reset()
        return [f for f in (self.run(s) for s, _ in self.steps) if isinstance(f, Frame)]

    def reset(self) -> None:
        self.index, self.shown = None, []
        self._draw()

    def frames(self) -> list[Frame]:
        raise NotImplementedError

    def _draw(self) -> None:
        raise NotImplementedError

    def _log(self, variant: str = "", kernel: str = "") -> None:
        self.log.value = steps_html(self.name, self.shown, variant, kernel)


class RacePanel(_Panel):
    """One race, step by step, with its variants, the kernel and who confirms first."""

    steps = RACE_STEPS

    def __init__(self, panel: str, kernel: str = NEWEST.name, first: int = 0) -> None:
        if panel not in RACE_PANELS:
            raise SessionError(f"no race panel {panel!r}: known are {', '.join(RACE_PANELS)}")
        super().__init__()
        w = _widgets()
        from ..widgets import ConntrackTableView, EventLogView
        self.name = panel
        self.variants = RACE_PANELS[panel]
        self._runs: dict[tuple[str, str, int], RaceRun] = {}
        self.variant = w.Dropdown(options=[(RACES[v].title, v) for v in self.variants],
                                  value=self.variants[0], description="variant",
                                  layout=w.Layout(width="auto"))
        self.kernel = w.Dropdown(options=list(PROFILE_NAMES), value=kernel,
                                 description="kernel", layout=w.Layout(width="160px"))
        self.first = w.Dropdown(options=[("CPU 0", 0), ("CPU 1", 1)], value=first,
                                description="confirms first", style={"description_width": "auto"},
                                layout=w.Layout(width="220px"))
        for d in (self.variant, self.kernel, self.first):
            d.observe(lambda _c: self._click(self._redraw), names="value")
        self.head = w.HTML(value="")
        self.cpus = w.HTML(value="")
        self.stats = w.HTML(value="")
        self.rules = w.HTML(value="")
        self.timeline = w.HTML(value="")
        self.kernels = w.HTML(value="")
        self.table = ConntrackTableView(title="conntrack -L (the confirmed entries)")
        self.events = EventLogView(title="conntrack -E -o timestamp")
        self.table.widget.add_class("nattrack-role-table")
        self.events.widget.add_class("nattrack-role-events")
        self._events_shown: list[str] = []
        self.widget = w.VBox([
            self.head, w.HBox([self.variant, self.kernel, self.first],
                              layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.next_button, *self.buttons, self.reset_button],
                   layout=w.Layout(flex_flow="row wrap")),
            self.status, self.explain, self.cpus,
            w.HBox([self.table.widget, self.stats], layout=w.Layout(flex_flow="row wrap")),
            self.timeline, self.events.widget, w.HBox([self.rules, self.kernels],
                                                      layout=w.Layout(flex_flow="row wrap")),
            self.log])
        self._redraw()

    def current(self) -> RaceRun:
        key = (self.variant.value, self.kernel.value, int(self.first.value))
        if key not in self._runs:
            self._runs[key] = race(*key)
        return self._runs[key]

    def frames(self) -> list[Frame]:
        return self.current().frames

    def _redraw(self) -> None:
        """A control changed: the same step, on the new run."""
        run = self.current()
        by_kernel = {p: race(run.setup.name, p, run.order[0]).outcomes for p in PROFILE_NAMES}
        same = len(set(by_kernel.values())) == 1
        rows = "".join(f'<tr data-kernel="{p}" data-outcomes="{",".join(o)}"><td>{p}</td>'
                       + "".join(f"<td>CPU {i}: {esc(OUTCOME_TEXT[x])}</td>" for i, x in
                                 enumerate(o)) + "</tr>" for p, o in by_kernel.items())
        verdict = ("Every kernel profile gives the same outcome here." if same else
                   "The kernels differ here: see docs/kernel-profiles.md.")
        self.kernels.value = _wrap("kernels", f"<table>{rows}</table><div>{esc(verdict)}</div>",
                                   {"view": "kernels", "same": same},
                                   "the same race on each kernel")
        self.head.value = (f"<h3>{esc(run.setup.title)}</h3><p>{esc(run.setup.story)}</p>")
        self.rules.value = rules_html(run.setup.rules)
        self._events_shown = []
        self.events.clear()
        self._draw()

    def _draw(self) -> None:
        run = self.current()
        k = self.index
        frame = None if k is None else run.frames[k]
        self.explain.value = explain_html(frame, k or 0, len(self.steps), self.steps[0][1])
        labels = [f"CPU {x.cpu}: {x.label}" for x in run.lanes]
        if frame is None:
            empty = [{"cpu": x.cpu, "label": x.label, "in": "", "entry": "", "stage": "received",
                      "outcome": "", "out": ""} for x in run.lanes]
            self.cpus.value = cpus_html(empty)
            self.table.update([])
            self.stats.value = stats_html(run.stats_before, run.stats_before)
            self.timeline.value = race_timeline_svg([], labels)
            self.events.clear()
            self._events_shown = []
        else:
            self.cpus.value = cpus_html(frame.lanes)
            self.table.update(frame.table)
            self.stats.value = stats_html(run.stats_before, frame.stats)
            self.timeline.value = race_timeline_svg(frame.timeline, labels)
            if frame.events[:len(self._events_shown)] != self._events_shown:
                self.events.clear()
                self._events_shown = []
            self.events.append(frame.events[len(self._events_shown):])
            self._events_shown = list(frame.events)
        self._log(self.variant.value, self.kernel.value)
        for v in (self.table, self.events):
            v.flush()

    def stop(self) -> None:
        self.table.stop()
        self.events.stop()


class StalePanel(_Panel):
    """The stale UDP entry, step by step, with the chart of its timeout."""

    name = "stale-udp"
    steps = STALE_STEPS

    def __init__(self) -> None:
        super().__init__()
        w = _widgets()
        from ..widgets import ConntrackTableView, EventLogView
        self.result = stale()
        self.table = ConntrackTableView(title="conntrack -L")
        self.events = EventLogView(title="conntrack -E -o timestamp")
        self.table.widget.add_class("nattrack-role-table")
        self.events.widget.add_class("nattrack-role-events")
        self.chart = w.HTML(value="")
        self.rules = w.HTML(value="")
        self.widget = w.VBox([
            w.HTML(value="<h3>A stale UDP entry black-holes a client</h3><p>srv "
                   "(203.0.113.10) asks the service 203.0.113.1:53 from port 5353 every "
                   "2 seconds; the node DNATs it to the backend be1.</p>"),
            w.HBox([self.next_button, *self.buttons, self.reset_button],
                   layout=w.Layout(flex_flow="row wrap")),
            self.status, self.explain, self.chart, self.table.widget, self.rules,
            self.events.widget, self.log])
        self._draw()

    def frames(self) -> list[Frame]:
        return self.result.frames

    def _draw(self) -> None:
        r = self.result
        k = self.index
        frame = None if k is None else r.frames[k]
        self.explain.value = explain_html(frame, k or 0, len(self.steps), self.steps[0][1])
        until = frame.t if frame is not None else 0.0
        self.chart.value = refresh_chart_svg([s for s in r.samples if s[0] <= until],
                                             [m for m in r.markers if m[0] <= until],
                                             max(until, r.frames[-1].t))
        self.rules.value = rules_html(STALE_RULES_BE1 if k is None or k == 0 else STALE_RULES_BE2)
        self.table.update(frame.table if frame else [])
        self.events.clear()
        if frame is not None:
            self.events.append(frame.events)
        self._log()
        for v in (self.table, self.events):
            v.flush()

    def stop(self) -> None:
        self.table.stop()
        self.events.stop()


def race_panel(panel: str, kernel: str = NEWEST.name, first: int = 0) -> RacePanel:
    """A :class:`RacePanel`: ``dns-race`` (one socket through DNAT) or ``dns-race-snat``
    (two pods through SNAT)."""
    return RacePanel(panel, kernel, first)


def stale_panel() -> StalePanel:
    return StalePanel()


__all__ = ["RACES", "RACE_PANELS", "RaceRun", "StaleRun", "EngineSession", "RacePanel",
           "StalePanel", "open_session", "race", "race_panel", "stale", "stale_panel",
           "outcomes_by_kernel"]
