"""The insertion race in the real kernel, outcome by outcome, against the engine.

tests/kernel/race.py races two packets of one new flow on two CPUs, round after round,
until every outcome a service can have was seen: for UDP to a DNAT service with several
backends (``udp-random``) the loser's entry goes in the reply direction only (NAT clash)
or, without a race, the second packet finds the first's entry; for UDP to one backend
(``udp-one``) the racing entries are identical and merge; for TCP (``tcp-one``) the
losing SYN is dropped (insert_failed); for two hosts sending from one source port through
MASQUERADE (``udp-snat``) the second to confirm finds its reply tuple taken by the other
host's flow and is dropped, UDP or not.  Each outcome seen is then played on the engine
(nattrack.conntrack.cpus.race) in the confirm order the kernel showed (the CPU whose
packet owns the listed entry confirmed first), and the engine must show the same
counters, the same `conntrack -E` lines and send the same datagrams.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from nattrack.conntrack.cpus import INSERT_FAILED, INSERTED, MERGED, NAT_CLASH, race
from nattrack.conntrack.profile import running_profile
from nattrack.netfilter.ruleset import Ruleset
from nattrack.netfilter.rulesfile import parse_rules
from nattrack.ipv4.stack import Router
from nattrack.packet.ipv4 import Packet
from nattrack.replay import ManualClock, event_recorder

from .conftest import kernel_env_problem
from .harness import (
    IFACES,
    MACS,
    ROUTER_PUB,
    ROUTES,
    KernelLab,
    cleanup_stale,
    read_pcap,
    strip_timestamp,
)
from .race import _SENDER as SENDER
from .race import (
    BACKEND,
    CLIENT_PORT_BASE,
    has_backend,
    PAYLOADS,
    SERVICES,
    Round,
    classify,
    frames_for,
    race_rules,
    run_race,
)

ROUNDS = 200                  # a batch; a run takes about 2 s (plus up to 2 s of reaping)
MAX_BATCHES = 5               # until each outcome was seen
CLASH_KEYS = ("clash_resolve", "insert_failed", "drop")


def outcome_counts(service: str, runs) -> dict[str, int]:
    """How many rounds ended how, over every batch (races are told apart by the counters
    where the captures cannot: a merge and a sequential pair look alike on the wire)."""
    rounds = sum(len(r.rounds) for r in runs)
    clash = sum(r.stats.get("clash_resolve", 0) for r in runs)
    per_round = {}
    for run in runs:
        for k, v in run.count().items():
            per_round[k] = per_round.get(k, 0) + v
    if service == "udp-random":
        nat = per_round.get("nat-clash", 0)
        return {"nat-clash": nat, "merged": clash - nat, "sequential": rounds - clash}
    if service == "udp-one":
        return {"merged": clash, "sequential": rounds - clash}
    failed = per_round.get("insert-failed", 0)
    return {"insert-failed": failed, "sequential": rounds - failed}


# The outcomes each service must show before the comparison counts (a merge of two random
# choices of the same backend, 1 in 100 races, need not be seen).
WANTED = {"udp-random": ("nat-clash", "sequential"), "udp-one": ("merged", "sequential"),
          "tcp-one": ("insert-failed", "sequential"), "udp-snat": ("insert-failed", "sequential")}


@pytest.fixture(scope="module")
def races(tmp_path_factory):
    problem = kernel_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    cleanup_stale()
    runs: dict[str, list] = {}
    base = CLIENT_PORT_BASE
    with KernelLab(race_rules(), workdir=tmp_path_factory.mktemp("race")) as lab:
        for service in SERVICES:
            runs[service] = []
            while len(runs[service]) < MAX_BATCHES:
                runs[service].append(run_race(lab, service, ROUNDS, base))
                base += ROUNDS
                counts = outcome_counts(service, runs[service])
                if all(counts[k] > 0 for k in WANTED[service]):
                    break
    return runs


def _rounds(runs) -> list[tuple[object, Round]]:
    return [(run, r) for run in runs for r in run.rounds]


def _events_of(run, sport: int) -> list[str]:
    return [strip_timestamp(e) for e in run.events if f" sport={sport} " in e]


# ------------------------------------------------------------------------------------------
# What the kernel did
# ------------------------------------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.parametrize("service", list(SERVICES))
def test_kernel_shows_every_outcome(races, service):
    counts = outcome_counts(service, races[service])
    seconds = sum(r.seconds for r in races[service])
    print(f"{service}: {counts} in {len(races[service])} batch(es), {seconds:.1f} s of sending")
    missing = [k for k in WANTED[service] if counts[k] <= 0]
    assert not missing, (f"{service}: outcome(s) {missing} never seen in "
                         f"{len(races[service])} batches of {ROUNDS} rounds: {counts}")


@pytest.mark.kernel
@pytest.mark.parametrize("service", list(SERVICES))
def test_kernel_rounds_add_up(races, service):
    """Per round: one listed entry and one NEW event; the counters match the rounds."""
    proto = SERVICES[service][0]
    for run in races[service]:
        odd = [r for r in run.rounds if r.outcome.startswith("odd")]
        assert not odd, f"{service}: rounds the model has no outcome for: {odd[:3]}"
        counts = run.count()
        failed = counts.get("insert-failed", 0)
        assert run.stats.get("insert_failed", 0) == run.stats.get("drop", 0) == failed
        if proto == "tcp" or not has_backend(service):
            assert run.stats.get("clash_resolve", 0) == 0
        else:
            assert failed == 0
            assert run.stats.get("clash_resolve", 0) >= counts.get("nat-clash", 0)
            # Both answers reach the client from the service's address: each was un-DNATed
            # by its own entry, the loser's hidden one included (no 5 s resolver timeout).
            unanswered = [r for r in run.rounds
                          if r.answered != dict.fromkeys(PAYLOADS, (ROUTER_PUB, SERVICES[service][1]))]
            assert not unanswered, unanswered[:3]
        for r in run.rounds:
            events = _events_of(run, r.sport)
            new = [e for e in events if e.lstrip().startswith("[NEW]")]
            destroy = [e for e in events if e.lstrip().startswith("[DESTROY]")]
            if r.outcome == "port-taken":     # explained by an earlier round's remapping
                earlier = {port for q in run.rounds if q.sport < r.sport
                           for port in q.sent.values() if port not in (None, q.sport)}
                assert r.sport in earlier, r
            if not has_backend(service):      # SNAT: one NEW per entry listed, each its port
                assert sorted(int(re.findall(r"dport=(\d+)", e)[-1]) for e in new) == \
                    sorted(r.listed) and not destroy, (r, events)
                continue
            assert len(new) == 1 and f"sport={r.listed[0]} " in new[0], (r, events)
            if r.outcome == "nat-clash":
                # The hidden loser was never announced, but its end is.
                lost = next(p for k, p in r.sent.items() if k != r.winner)
                assert len(destroy) == 1 and f"sport={lost} " in destroy[0], (r, events)
            else:
                assert not destroy, (r, events)


# ------------------------------------------------------------------------------------------
# The engine, for each outcome the kernel showed
# ------------------------------------------------------------------------------------------

class Engine:
    """The engine as the race's router: same interfaces, routes and rules."""

    _rules: Ruleset | None = None

    def __init__(self, seed: int = 7):
        if Engine._rules is None:
            Engine._rules = parse_rules(race_rules())
        self.clock = ManualClock(1000.0)
        # As the kernel that raced: its clash rules (conntrack/profile.py) where they differ.
        self.router = Router(dict(IFACES), dict(ROUTES), Engine._rules,
                             {"nf_conntrack_buckets": 1024}, self.clock, seed=seed,
                             profile=running_profile())
        self.events: list[str] = []
        self.router.ct.listeners.append(event_recorder(self.events, [], self.clock))

    def packets(self, service: str, sport: int) -> list[Packet]:
        frames = frames_for(service, 1, sport)
        iif = "r-pub" if has_backend(service) else "r-priv"
        return [Packet.parse(bytearray(f[0][14:]), 0, iif=iif, ts=self.clock())
                for f in frames]

    def reap(self) -> None:
        """Let the gc worker run past the clash entries' second."""
        ct = self.router.ct
        ct.run_gc_until(self.clock() + 2.0, self.clock.set)
        for _ in range(120):
            if ct.count == len(list(ct.conns(reap=False))):
                return
            ct.run_gc_until(self.clock() + 1.0, self.clock.set)
        raise AssertionError("the engine's gc worker never reaped the clash entries")


@functools.lru_cache(maxsize=16)
def _by_client_port(path, field: str) -> dict[int, list[IP]]:
    """Every TCP/UDP datagram of a capture, by its client port (``sport`` or ``dport``)."""
    out: dict[int, list[IP]] = {}
    for _, frame in read_pcap(path):
        ip = IP(frame[14:])
        ip = IP(bytes(ip)[:ip.len])
        for l4 in (UDP, TCP):
            if l4 in ip:
                out.setdefault(getattr(ip[l4], field), []).append(ip)
    return out


def _kernel_frames(run, sport: int, service: str) -> dict[str, bytes]:
    """IP bytes that left r-priv for the round, by payload (CPU)."""
    l4 = UDP if SERVICES[service][0] == "udp" else TCP
    out = {}
    for ip in _by_client_port(run.pcaps[("r-priv", "out")], "sport").get(sport, []):
        if l4 in ip:
            key = (bytes(ip[l4].payload).decode() if l4 is UDP else PAYLOADS[ip.id % 2])
            out[key] = bytes(ip)
    return out


def _normalize(text: str, ports: dict[int, str]) -> str:
    """Backend ports chosen at random, named by their role (winner / loser); the clash
    entry's remaining time in its UPDATE (0 or 1 s of its fixed second: which one
    depends on where the answer fell within the tick)."""
    text = re.sub(r"sport=(\d+)", lambda m: f"sport={ports.get(int(m.group(1)), m.group(1))}",
                  text)
    if "[UPDATE]" in text and "sport=LOSER" in text:
        text = re.sub(r"(udp +17) [01] ", r"\1 T ", text)
    return text


EXPECTED_LANES = {"nat-clash": (INSERTED, NAT_CLASH), "same-backend": (INSERTED, MERGED),
                  "insert-failed": (INSERTED, INSERT_FAILED)}


@pytest.mark.kernel
@pytest.mark.parametrize("service", list(SERVICES))
def test_engine_agrees_on_each_outcome_and_confirm_order(races, service):
    """Every round the kernel raced (or not), played on the engine."""
    compared: dict[tuple, int] = {}
    late = 0
    for run, r in _rounds(races[service]):
        if r.outcome == "port-taken":          # needs the earlier rounds' entries: not here
            compared[("port-taken",)] = compared.get(("port-taken",), 0) + 1
            continue
        # A same-backend round is a pair that did not race, or (one backend) a merge:
        # both must look the same.
        modes = (True,) if r.outcome not in ("same-backend", "sequential") else \
            (False, True) if service == "udp-one" else (False,)
        for raced in modes:
            if has_backend(service):
                events_compared = compare_round(service, run, r, raced)
            else:
                events_compared = compare_snat_round(service, run, r)
            key = (r.outcome, r.winner, raced)
            compared[key] = compared.get(key, 0) + 1
            late += not events_compared
    print(f"{service}: rounds compared by (outcome, winner, raced): {compared}; "
          f"events delivered late (order not compared): {late}")
    assert compared, f"{service}: nothing to compare"
    assert late * 4 <= sum(compared.values()), \
        f"{service}: {late} rounds' events delivered late: a stalled machine, not a comparison"


def compare_round(service: str, run, r: Round, raced: bool) -> bool:
    """Play kernel round ``r`` on the engine (raced in the kernel's confirm order, or one
    packet after the other), then the backend's answers in the kernel's order.  False
    when the kernel's events were delivered late (their order not compared)."""
    outcome, winner = r.outcome, r.winner
    why = (service, outcome, winner, raced)
    kernel_frames = _kernel_frames(run, r.sport, service)
    first = PAYLOADS.index(winner)
    eng = Engine()
    pkts = eng.packets(service, r.sport)
    before = {k: eng.router.ct.stats[k] for k in CLASH_KEYS}
    if raced:
        lanes = race(eng.router, pkts, order=(first, 1 - first))
        assert (lanes[first].outcome, lanes[1 - first].outcome) == EXPECTED_LANES[outcome], why
        verdicts = [x.verdict for x in lanes]
    else:     # a round with no race: the second packet finds the first's entry
        verdicts = [eng.router.receive(p) for p in (pkts[first], pkts[1 - first])]
        verdicts = verdicts if first == 0 else verdicts[::-1]
    sent = {PAYLOADS[i]: v.sent[0].data for i, v in enumerate(verdicts) if v.sent}
    assert sent.keys() == kernel_frames.keys(), (why, sent, kernel_frames)

    # Backend ports: the kernel's and the engine's random choices, named by their role.
    l4 = UDP if SERVICES[service][0] == "udp" else TCP
    roles, eroles = {}, {}
    for k, role in ((winner, "WINNER"), (_other(winner), "LOSER")):
        if k in kernel_frames:
            roles.setdefault(IP(kernel_frames[k])[l4].dport, role)
            eroles.setdefault(IP(sent[k])[l4].dport, role)
    to_engine = {kp: next(ep for ep, er in eroles.items() if er == role)
                 for kp, role in roles.items()}

    answered = {}
    for answer in _kernel_answers(run, r.sport):
        answer[UDP].sport = to_engine[answer[UDP].sport]
        del answer[UDP].chksum
        v = eng.router.receive(Packet.parse(bytearray(bytes(answer)), 0, iif="r-priv",
                                            ts=eng.clock()))
        for out in v.sent:
            ip = IP(out.data)
            answered[bytes(ip[UDP].payload).decode()[4:]] = (ip.src, ip[UDP].sport)
    assert answered == r.answered, why
    eng.reap()

    delta = {k: eng.router.ct.stats[k] - before[k] for k in CLASH_KEYS}
    want = {"clash_resolve": int(raced and outcome != "insert-failed"),
            "insert_failed": int(outcome == "insert-failed"),
            "drop": int(outcome == "insert-failed")}
    assert delta == want, why
    engine_events = [_normalize(strip_timestamp(e), eroles) for e in eng.events]
    kernel_events = [_normalize(e, roles) for e in _events_of(run, r.sport)]
    kernel_events = [_tick_late(k, e) for k, e in zip(kernel_events, engine_events)] + \
        kernel_events[len(engine_events):]
    late = _delivered_late(kernel_events)
    assert late or engine_events == kernel_events, why
    for k, data in sent.items():
        e, kf = IP(data), IP(kernel_frames[k])
        if service == "udp-random":      # the same datagram but for the random port
            e[UDP].dport = kf[UDP].dport
            del e[UDP].chksum, kf[UDP].chksum
        assert bytes(e) == bytes(kf), why
    return not late


def compare_snat_round(service: str, run, r: Round) -> bool:
    """Two hosts' datagrams of one source port, through MASQUERADE: raced (the kernel's
    confirm order) when one was lost, else one after the other (the second remapped).
    False when the kernel's events were delivered late (their order not compared)."""
    why = (service, r.outcome, r.winner)
    first = PAYLOADS.index(r.winner)
    eng = Engine()
    pkts = eng.packets(service, r.sport)
    before = {k: eng.router.ct.stats[k] for k in CLASH_KEYS}
    if r.outcome == "insert-failed":
        lanes = race(eng.router, pkts, order=(first, 1 - first))
        assert (lanes[first].outcome, lanes[1 - first].outcome) == (INSERTED, INSERT_FAILED), why
        verdicts = [x.verdict for x in lanes]
    else:
        verdicts = [eng.router.receive(p) for p in (pkts[first], pkts[1 - first])]
        verdicts = verdicts if first == 0 else verdicts[::-1]
    failed = int(r.outcome == "insert-failed")
    assert {k: eng.router.ct.stats[k] - before[k] for k in CLASH_KEYS} == \
        {"clash_resolve": 0, "insert_failed": failed, "drop": failed}, why
    sent = {PAYLOADS[i]: IP(v.sent[0].data) for i, v in enumerate(verdicts) if v.sent}
    assert sent.keys() == {k for k, p in r.sent.items() if p is not None}, why
    # The port a remapped datagram got is the kernel's (or the engine's) random choice.
    remapped = {port: "REMAPPED" for port in r.sent.values() if port not in (None, r.sport)}
    eremapped = {ip[UDP].sport: "REMAPPED" for ip in sent.values() if ip[UDP].sport != r.sport}
    kernel_events = [_ports_named(e, remapped) for e in _events_of(run, r.sport)]
    engine_events = [_ports_named(strip_timestamp(e), eremapped) for e in eng.events]
    kernel_events = [_tick_late(k, e) for k, e in zip(kernel_events, engine_events)] + \
        kernel_events[len(engine_events):]
    late = _delivered_late(kernel_events)
    assert late or engine_events == kernel_events, why
    winner_out = _by_client_port(run.pcaps[("r-pub", "out")], "sport").get(r.sport, [])
    assert [bytes(ip) for ip in winner_out] == [bytes(sent[r.winner])], why
    return not late


def _ports_named(text: str, ports: dict[int, str]) -> str:
    return re.sub(r"(sport|dport)=(\d+)",
                  lambda m: f"{m.group(1)}={ports.get(int(m.group(2)), m.group(2))}", text)


def _kernel_answers(run, sport: int) -> list:
    """The backend's answers of one round as they reached the router, in their order."""
    return [IP(bytes(ip)) for ip in _by_client_port(run.pcaps[("r-priv", "in")], "dport").get(sport, [])
            if UDP in ip]


_TIMEOUT = re.compile(r"^(\s*\[\w+\] \w+ +\d+ )(\d+) ")


def _tick_late(kernel: str, engine: str) -> str:
    """The kernel's line with the engine's remaining time where the kernel shows one second
    less: a jiffy passed between the insert and the event (a loaded machine; the engine's
    clock stands still)."""
    k, e = _TIMEOUT.match(kernel), _TIMEOUT.match(engine)
    if k and e and int(k.group(2)) == int(e.group(2)) - 1 and \
            kernel[k.end():] == engine[e.end():] and k.group(1) == e.group(1):
        return engine
    return kernel


def _delivered_late(kernel_events: list[str]) -> bool:
    """Whether a round's first event is not the winner's [NEW]: the kernel delivered it late.

    __nf_conntrack_confirm() inserts the entry; nf_confirm() then delivers its cached events
    (nf_ct_deliver_cached_events()), printed with the entry's state at that moment.  A CPU
    stalled between the two (a virtual CPU under TCG on a loaded host: vm-check saw one
    second) lets the other CPU's events, even those of the backend's answer, overtake it.
    That order says nothing about conntrack and a stalled CPU is not in the engine, so such
    a round's events are not compared (its frames, answers and counters still are)."""
    first = kernel_events[0] if kernel_events else ""
    return bool(first) and (not first.lstrip().startswith("[NEW]")
                            or "LOSER" in first or "REMAPPED" in first)


def _other(payload: str) -> str:
    return PAYLOADS[1 - PAYLOADS.index(payload)]


# ------------------------------------------------------------------------------------------
# GRE: clash resolution since 6.5 (profile gre_clash, d671fd82eaa9)
# ------------------------------------------------------------------------------------------

GRE_ROUNDS = 200                 # one new flow a round: source 203.0.113.20 + round


def gre_rules() -> str:
    """GRE to the router's public address DNATed to priv1, and the race's FORWARD filler."""
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]",
           f"-A PREROUTING -d {ROUTER_PUB}/32 -i r-pub -p gre -j DNAT --to-destination {BACKEND}",
           "COMMIT"]
    rules = race_rules()
    return "\n".join(nat) + "\n" + rules[rules.index("*filter"):]


def gre_frame(r: int, cpu: int) -> bytes:
    ip = IP(src=f"203.0.113.{20 + r}", dst=ROUTER_PUB, proto=47, id=cpu)
    return bytes(Ether(src=MACS["pub"], dst=MACS["r-pub"]) / ip / Raw(b"\x00\x00\x08\x00" + bytes(20)))


@pytest.mark.kernel
def test_gre_race_resolved_as_the_running_kernels_profile_says(tmp_path):
    """Two identical GRE packets of a new flow on two CPUs, GRE_ROUNDS flows: from 6.5 the
    loser merges (clash_resolve), before it is dropped (insert_failed); the engine, with
    the running kernel's profile, does the same with a race it runs."""
    problem = kernel_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    with KernelLab(gre_rules(), workdir=tmp_path) as lab:
        shm = tmp_path / "barrier"
        shm.write_bytes(bytes(16))
        files = []
        for cpu in (0, 1):
            files.append(tmp_path / f"gre-{cpu}.hex")
            files[-1].write_text("\n".join(gre_frame(r, cpu).hex() for r in range(GRE_ROUNDS)))
        lab.flush()
        before = lab.stats()
        cpus = sorted(os.sched_getaffinity(0))[:2]
        procs = [lab._spawn("pub", ["taskset", "-c", str(cpus[c]), sys.executable, "-c", SENDER,
                                    "eth0", str(c), str(shm), str(files[c]), "0.002"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for c in (0, 1)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert "done" in out, err
        time.sleep(0.5)
        delta = {k: lab.stats().get(k, 0) - before.get(k, 0) for k in CLASH_KEYS}
        listed = [x for x in lab.conntrack("-L", "-p", "gre").splitlines() if x.startswith("gre")]
    profile = running_profile()
    print(f"{profile.name}: {GRE_ROUNDS} GRE races: {delta}")
    assert len(listed) == GRE_ROUNDS
    raced = delta["clash_resolve"] + delta["insert_failed"]
    assert raced > 0, f"no round raced: {delta}"
    if profile.gre_clash:
        assert delta == {"clash_resolve": raced, "insert_failed": 0, "drop": 0}
    else:
        assert delta == {"clash_resolve": 0, "insert_failed": raced, "drop": raced}

    eng = Router(dict(IFACES), dict(ROUTES), parse_rules(gre_rules()), {}, ManualClock(1000.0),
                 profile=profile)
    pkts = [Packet.parse(bytearray(gre_frame(0, cpu)[14:]), 0, iif="r-pub", ts=1000.0)
            for cpu in (0, 1)]
    lanes = race(eng, pkts)
    assert [x.outcome for x in lanes] == [INSERTED, MERGED if profile.gre_clash else INSERT_FAILED]


# ------------------------------------------------------------------------------------------
# The classification itself (no kernel needed)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sent, listed, outcome, winner", [
    ({"A?": 5301, "AAAA?": 5377}, [5377], "nat-clash", "AAAA?"),
    ({"A?": 5400, "AAAA?": 5400}, [5400], "same-backend", "A?"),
    ({"A?": None, "AAAA?": 5500}, [5500], "insert-failed", "AAAA?"),
    ({"A?": 5400, "AAAA?": 5400}, [], "odd: 0 listed entries", None),
    ({"A?": None, "AAAA?": None}, [5400], "odd: nothing left the router", None),
])
def test_classify(sent, listed, outcome, winner):
    r = Round(20000, sent, listed)
    classify("udp-random", r)
    assert (r.outcome, r.winner) == (outcome, winner)


@pytest.mark.parametrize("sent, listed, outcome, winner", [
    ({"A?": 30005, "AAAA?": 41234}, [30005, 41234], "sequential", "A?"),
    ({"A?": None, "AAAA?": 30005}, [30005], "insert-failed", "AAAA?"),
    ({"A?": 41000, "AAAA?": 52000}, [41000, 52000], "port-taken", None),
    ({"A?": 30005, "AAAA?": 30005}, [30005], "odd: sent [30005, 30005], listed [30005]", "A?"),
])
def test_classify_snat(sent, listed, outcome, winner):
    r = Round(30005, sent, listed)
    classify("udp-snat", r)
    assert (r.outcome, r.winner) == (outcome, winner)
