"""Differential fuzzing in CI: a fixed-seed budget of generated packet sequences, each run
through the real kernel and through the engine and compared (fuzz.py; longer runs:
``scripts/fuzz-kernel``, docs/fuzzing.md).

The budget (``CI_EXAMPLES``) keeps this test around two minutes on two cores.  It is
derandomized (the same cases every run) and does not shrink: a disagreement fails at
once with the full case, the engine's and kernel's views and a scenario to start from;
``scripts/fuzz-kernel`` shrinks.  The tests below it check the generator itself (no
kernel needed).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from scapy.layers.inet import ICMP, TCP

from .fuzz import (PAUSE, Case, Flow, Labs, Rejected, Step, cases, random_reuse, run_case,
                   scenario_source, timing_margin, to_scenario)
from .harness import Recording, Sleep

CI_EXAMPLES = 60


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    with Labs(tmp_path_factory.mktemp("fuzz-labs")) as labs:
        yield labs


@pytest.mark.kernel
def test_engine_agrees_with_kernel_on_generated_sequences(labs, tmp_path):
    stats = {"compared": 0, "rejected": 0}

    @settings(max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def check(case: Case) -> None:
        try:
            out = run_case(labs, case, tmp_path)
        except Rejected:
            stats["rejected"] += 1
            reject()
        stats["compared"] += 1
        assert out.diff.ok, (out.diff.render(case.name, repr(case)) + "\n\nas a scenario:\n"
                             + scenario_source(case, rec=out.rec))

    check()
    # Rejections are the rare timing/rate-limit cases: most of the budget must compare.
    assert stats["compared"] >= CI_EXAMPLES * 0.8, stats


# ----------------------------------------------------------------------------------------
# The generator (no kernel).

def _tcp(flow=0, reply=False, flags="A", **kw) -> Step:
    return Step("tcp", flow, reply, flags, **kw)


def _segments(case: Case) -> list:
    return [s.packet[TCP] for s in to_scenario(case).steps if not isinstance(s, Sleep)]


def test_sequence_numbers_follow_the_flow():
    case = Case("masq", "default", (Flow("tcp", "priv1", 9000, ciss=1000, siss=50000),),
                (_tcp(flags="S"), _tcp(reply=True, flags="SA"), _tcp(flags="PA", data=5),
                 _tcp(flags="A", seq="retrans", data=5), _tcp(reply=True, flags="A"),
                 _tcp(flags="A", ack="more"), _tcp(flags="A", seq="far")))
    segs = _segments(case)
    assert [(s.seq, s.ack) for s in segs] == [
        (1000, 0), (50000, 1001), (1001, 50001), (1001, 50001), (50001, 1006),
        (1006, 50002), (1006 + 2**30, 50001)]
    assert [str(s.flags) for s in segs] == ["S", "SA", "PA", "A", "A", "A", "A"]


def test_window_edge_and_wraparound():
    opts = dict(wscale=7, win=502)
    case = Case("masq", "default", (Flow("tcp", "priv1", 9000, ciss=2**32 - 3, siss=1000),),
                (_tcp(flags="S", **opts), _tcp(reply=True, flags="SA", **opts),
                 _tcp(flags="A", win=502), _tcp(reply=True, flags="PA", data=1, seq="edge_in"),
                 _tcp(reply=True, flags="PA", data=1, seq="edge_out")))
    segs = _segments(case)
    assert segs[1].ack == (2**32 - 2) % 2**32 and segs[2].seq == 2**32 - 2
    assert dict(segs[0].options)["WScale"] == 7
    edge = 1001 + (502 << 7)              # the client's ack + its scaled window
    assert (segs[3].seq, segs[4].seq) == (edge - 1, edge + 1)


def test_handshake_opens_the_flow_first():
    case = Case("masq", "default", (Flow("tcp", "priv1", 9000, ciss=1000, siss=50000,
                                         handshake=7),),
                (_tcp(flags="PA", data=5), _tcp(reply=True, flags="A")))
    segs = _segments(case)
    assert [(str(s.flags), s.seq, s.ack) for s in segs] == [
        ("S", 1000, 0), ("SA", 50000, 1001), ("A", 1001, 50001), ("PA", 1001, 50001),
        ("A", 50001, 1006)]
    assert dict(segs[1].options)["WScale"] == 7 and segs[2].options == []
    plain = _segments(Case("masq", "default", (Flow("tcp", "priv1", 9000, handshake=-1),),
                           (_tcp(),)))
    assert len(plain) == 4 and plain[0].options == []


def test_reply_addressing_follows_the_nat():
    flow = Flow("udp", "priv2", 53)
    masq = to_scenario(Case("masq", "default", (flow,), (Step("udp", 0, True),)))
    assert (masq.steps[0].host, masq.steps[0].packet.dst, masq.steps[0].packet.dport) == \
        ("pub", "203.0.113.1", 41010)
    plain = to_scenario(Case("no_nat", "default", (flow,), (Step("udp", 0, True),)))
    assert plain.steps[0].packet.dst == "10.0.0.3"
    rnd = to_scenario(Case("snat_range", "default", (flow,), (Step("udp", 0, True),)))
    assert callable(rnd.steps[0].packet) and rnd.random_ports
    inbound = to_scenario(Case("dnat", "default", (Flow("tcp", "pub", 9000),),
                               (_tcp(flags="S"), _tcp(reply=True, flags="SA"))))
    assert [(s.host, s.packet.dst, s.packet.dport) for s in inbound.steps] == [
        ("pub", "203.0.113.1", 8080), ("priv1", "203.0.113.2", 41020)]


def test_icmp_errors_quote_the_packet_as_the_other_end_saw_it():
    from scapy.layers.inet import IP, UDP
    flow = Flow("udp", "priv1", 53)
    steps = to_scenario(Case("masq", "default", (flow,),
                             (Step("icmperr", 0, False), Step("icmperr", 0, True),
                              Step("icmperr", 0, True, code=11, bad_inner=True)))).steps
    quoted = [IP(bytes(s.packet[ICMP].payload)) for s in steps]
    assert [(s.host, s.packet.src, s.packet.dst, s.packet[ICMP].type) for s in steps] == [
        ("pub", "203.0.113.2", "203.0.113.1", 3), ("priv1", "10.0.0.2", "203.0.113.2", 3),
        ("priv1", "10.0.0.2", "203.0.113.2", 11)]
    assert [(q.src, q[UDP].sport, q.dst, q[UDP].dport) for q in quoted] == [
        ("203.0.113.1", 41000, "203.0.113.2", 53), ("203.0.113.2", 53, "10.0.0.2", 41000),
        ("203.0.113.2", 54, "10.0.0.2", 41000)]


def test_one_pause_at_most_never_first_or_last():
    @settings(max_examples=200, derandomize=True, database=None)
    @given(cases())
    def check(case):
        kinds = [s.kind for s in case.steps]
        assert kinds.count("pause") <= 1 and kinds[0] != "pause" and kinds[-1] != "pause"
        steps = to_scenario(case).steps
        assert sum(isinstance(s, Sleep) for s in steps) == kinds.count("pause")
        assert not isinstance(steps[-1], Sleep)
        assert all(s.seconds == PAUSE for s in steps if isinstance(s, Sleep))
    check()


def test_timing_margin_sees_a_packet_near_a_boundary():
    assert timing_margin([100.0, 100.5, 102.05], 102.9) == pytest.approx(0.05)
    assert timing_margin([100.0, 100.5, 103.0], 103.4) == pytest.approx(0.5)
    assert timing_margin([100.0, 100.3], 101.95) == pytest.approx(0.05)    # the listing
    assert timing_margin([100.0], 100.25) == pytest.approx(1.75)


def _recording(events: list[str], table: list[str]) -> Recording:
    return Recording(name="x", pcaps={}, events=events, table=table, listed_at=0.0, stats={},
                     stats_total={}, rules_text="", sysctls={}, started_at=0.0,
                     workdir=Path("/nonexistent"))


_UDP = ("udp      17 2 src=10.0.0.{h} dst=203.0.113.2 sport={p} dport=9000 [UNREPLIED] "
        "src=203.0.113.2 dst=203.0.113.1 sport=9000 dport={n}")


def test_random_reuse_sees_a_connection_made_again_with_another_port():
    new = "    [NEW] " + _UDP
    kept_then_random = [new.format(h=2, p=41000, n=41000), new.format(h=2, p=41000, n=14067)]
    assert random_reuse(_recording(kept_then_random, []))
    one_port_two_conns = [new.format(h=2, p=41000, n=2000), new.format(h=3, p=41010, n=2000)]
    assert random_reuse(_recording(one_port_two_conns, []))
    plain = [new.format(h=2, p=41000, n=41000), new.format(h=3, p=41010, n=2001)]
    assert not random_reuse(_recording(plain, [_UDP.format(h=3, p=41010, n=2001)]))


def test_scenario_source_is_python():
    case = Case("masq", "strict", (Flow("tcp", "priv1", 9000), Flow("icmp", "priv2", 0)),
                (_tcp(flags="S", wscale=7), Step("pause"), Step("icmp", 1),
                 Step("icmperr", 0, code=11)))
    src = scenario_source(case, "fuzz_example")
    ns: dict = {}
    exec("from kernel.harness import *\nfrom kernel.scenarios import *\n"
         "from scapy.layers.inet import *\n" + src, ns)
    sc = ns["_fuzz_example"]()
    assert sc.name == "fuzz_example" and len(sc.steps) == 4
    assert sc.sysctls == {"net.netfilter.nf_conntrack_tcp_loose": "0"}
    assert bytes(sc.steps[0].packet) == bytes(to_scenario(case).steps[0].packet)
