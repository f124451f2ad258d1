"""nattrack.notebook.incidents: the DNS race and the stale UDP entry on the engine, and the
panels of notebook 05 (no lab, no root).

What the races must show is the kernel's behaviour (docs/clash.md, proved against the
kernel by tests/kernel/test_race.py): a DNAT race to two backends is resolved by a
reply-only entry, to one backend by a merge; two SNATed hosts on one source port lose a
datagram (insert_failed, drop) on 6.1 as on 6.18; --random-fully avoids the clash.
"""
from __future__ import annotations

import re

import pytest

from nattrack.conntrack.cpus import INSERT_FAILED, INSERTED, MERGED, NAT_CLASH
from nattrack.conntrack.profile import PROFILE_NAMES
from nattrack.notebook import incidents as inc
from nattrack.notebook import ui
from nattrack.notebook.session import SessionError
from nattrack.packet.ipv4 import Packet
from nattrack.widgets import widget_state

from tests.notebooks.nbrun import _DataParser


def _ip(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def endpoints(data: bytes) -> tuple[str, int, str, int]:
    p = Packet.parse(bytearray(data), 0)
    return _ip(p.src), p.sport, _ip(p.dst), p.dport


def root(widget) -> dict:
    return widget_state(widget.value)


def elements(markup: str) -> list[dict]:
    p = _DataParser()
    p.feed(markup)
    return p.found


# --- the races ---------------------------------------------------------------------------------

WANT = {"dns-dnat": NAT_CLASH, "dns-dnat-same": MERGED, "dns-snat": INSERT_FAILED,
        "dns-snat-random-fully": INSERTED}


@pytest.mark.parametrize("kernel", ["6.1", "6.18"])
@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("name", list(WANT))
def test_each_race_ends_as_the_kernel_ends_it(name, first, kernel):
    run = inc.race(name, kernel, first)
    winner, loser = run.lanes[first], run.lanes[1 - first]
    assert (winner.place, loser.place) == (0, 1)
    assert (winner.outcome, loser.outcome) == (INSERTED, WANT[name])
    clash = {k: run.stats_after[loser.cpu][k] for k in inc.CLASH_COUNTERS}
    failed = int(WANT[name] == INSERT_FAILED)
    assert clash == {"clash_resolve": int(WANT[name] in (NAT_CLASH, MERGED)),
                     "insert_failed": failed, "drop": failed}
    assert all(v == 0 for k, v in run.stats_after[winner.cpu].items() if k in inc.CLASH_COUNTERS)


def test_the_kernels_agree_on_these_races():
    """6.1 and 6.18 differ in clash resolution only for GRE and reverse collisions:
    neither is a DNS race (so the notebook says the outcome is the same)."""
    for name in inc.RACES:
        by_kernel = inc.outcomes_by_kernel(name)
        assert set(by_kernel) == set(PROFILE_NAMES)
        assert len(set(by_kernel.values())) == 1, (name, by_kernel)


def test_dnat_race_both_answers_come_back_from_the_service_address():
    run = inc.race("dns-dnat")
    a, b = run.lanes
    backends = {endpoints(x.after)[3] for x in run.lanes}
    assert backends == {5301, 5302}                      # the draws differed
    for lane in run.lanes:
        assert endpoints(lane.answer) == (inc.DNS_VIP, 53, "10.0.0.10", 40000)
        assert lane.answered_at == inc.RTT and lane.retried_at is None
    assert run.lookup == inc.RTT
    # conntrack -L lists the winner only; its entry carries the winner's backend
    (entry,) = run.frames[-1].table
    assert entry["reply"]["sport"] == endpoints(a.after)[3]
    # [NEW] once, both answers [UPDATE] (the hidden entry's with 1 s left)
    kinds = [re.search(r"\[(NEW|UPDATE|DESTROY)\]", e).group(1) for e in run.frames_events]
    assert kinds == ["NEW", "UPDATE", "UPDATE"], run.frames_events
    assert " 1 src=10.0.0.10" in run.frames_events[2]


def test_snat_race_the_loser_waits_for_its_resolver_timeout():
    run = inc.race("dns-snat", first=0)
    h1, h2 = run.lanes
    assert endpoints(h1.after) == ("203.0.113.1", 40000, inc.UPSTREAM, 53)
    assert h2.after is None and h2.retried_at == inc.RESOLVER_TIMEOUT
    # the second try is a new entry, no race: NAT sees port 40000 taken and remaps it
    src, sport, _, _ = endpoints(h2.retry_out)
    assert src == "203.0.113.1" and sport != 40000
    assert endpoints(h2.answer) == (inc.UPSTREAM, 53, "10.0.0.11", 40000)
    assert h2.answered_at == pytest.approx(inc.RESOLVER_TIMEOUT + inc.RTT)
    assert run.lookup == pytest.approx(inc.RESOLVER_TIMEOUT + inc.RTT)
    marks = [(m["lane"], m["kind"]) for m in run.frames[-1].timeline]
    assert (1, "dropped") in marks and (1, "retry") in marks and (1, "answered") in marks


def test_frames_show_the_race_as_it_unfolds():
    run = inc.race("dns-dnat", first=1)
    f = {fr.step: fr for fr in run.frames}
    assert [fr.step for fr in run.frames] == [s for s, _ in inc.RACE_STEPS]
    assert [v["stage"] for v in f["send"].lanes] == ["received", "received"]
    assert [bool(v["entry"]) for v in f["cpu-0"].lanes] == [True, False]
    assert [v["stage"] for v in f["cpu-1"].lanes] == ["parked", "parked"]
    for step in ("send", "cpu-0", "cpu-1"):              # unconfirmed: in no table, no event
        assert f[step].table == [] and f[step].events == []
    # CPU 1 confirms first: its entry is the one listed
    assert [v["outcome"] for v in f["confirm-first"].lanes] == ["", INSERTED]
    (entry,) = f["confirm-first"].table
    assert entry["reply"]["sport"] == endpoints(run.lanes[1].after)[3]
    assert len(f["confirm-first"].events) == 1 and "[NEW]" in f["confirm-first"].events[0]
    assert [v["outcome"] for v in f["confirm-second"].lanes] == [NAT_CLASH, INSERTED]
    assert f["confirm-second"].stats[0]["clash_resolve"] == 1
    assert f["cpu-1"].stats[0]["clash_resolve"] == 0
    assert any(m["kind"] == "hidden" for m in f["confirm-second"].timeline)
    assert not any(m["kind"] == "answered" for m in f["confirm-second"].timeline)
    assert "took 0.001 s" in " ".join(f["after-5s"].text)


def test_bad_race_input_is_one_line():
    with pytest.raises(SessionError, match="^no race 'dns'"):
        inc.race("dns")
    with pytest.raises(SessionError, match="^first to confirm: CPU 0 or CPU 1"):
        inc.race("dns-dnat", first=2)
    with pytest.raises(SessionError, match="^kernel '5.4': one of 6.1"):
        inc.race("dns-dnat", "5.4")


# --- the stale entry ------------------------------------------------------------------------------

def test_stale_entry_is_refreshed_until_conntrack_D():
    run = inc.stale()
    f = {fr.step: fr for fr in run.frames}
    assert [fr.step for fr in run.frames] == [s for s, _ in inc.STALE_STEPS]
    healthy = [q for q in run.queries if q["t"] <= f["healthy"].t]
    assert healthy and all(q["answered"] and q["backend"] == "10.1.0.11" for q in healthy)
    (e,) = f["healthy"].table
    assert e["assured"] and e["reply"]["src"] == "10.1.0.11"
    lost = [q for q in run.queries if f["backend-restart"].t < q["t"] <= f["queries-lost"].t]
    assert len(lost) >= 10
    assert all(q["backend"] == "10.1.0.11" and not q["answered"] for q in lost)
    # every datagram reset the timeout: it never ran low while the queries came
    stale_left = [left for t, left, flow in run.samples
                  if flow == "5353>10.1.0.11" and f["backend-restart"].t < t <= f["queries-lost"].t]
    assert len(stale_left) == len(lost) and min(stale_left) >= 115
    # another source port: a new entry, the new rule, an answer
    assert run.queries[-2]["sport"] == inc.OTHER_PORT and run.queries[-2]["backend"] == "10.1.0.12"
    assert run.queries[-2]["answered"]
    # conntrack -D: the entry goes ([DESTROY]) and the next query reaches be2
    assert [e["orig"]["sport"] for e in f["conntrack-D"].table] == [inc.OTHER_PORT]
    assert "[DESTROY]" in f["conntrack-D"].events[-1] and "sport=5353" in f["conntrack-D"].events[-1]
    assert run.queries[-1] == {"t": run.queries[-1]["t"], "sport": 5353, "backend": "10.1.0.12",
                               "answered": True}
    assert sum("[DESTROY]" in e for e in f["recovered"].events) == 1


# --- the pictures ---------------------------------------------------------------------------------

def test_pictures_have_no_ids_and_say_what_they_show():
    run = inc.race("dns-snat")
    svg = inc.race_timeline_svg(run.frames[-1].timeline, ["a", "b"])
    st = widget_state(svg)
    assert (st["view"], st["dropped"], st["retries"], st["lookup"]) == (
        "race-timeline", "1", "1", "5.001")
    assert widget_state(inc.race_timeline_svg(run.frames[4].timeline, ["a", "b"]))["lookup"] == ""
    s = inc.stale()
    chart = inc.refresh_chart_svg(s.samples, s.markers, s.frames[-1].t)
    flows = {e["data-flow"]: e for e in elements(chart) if "data-flow" in e}
    assert set(flows) == {"5353>10.1.0.11", "5354>10.1.0.12", "5353>10.1.0.12"}
    for markup in (svg, chart, inc.cpus_html(run.frames[3].lanes)):
        assert " id=" not in markup               # several notebooks share one page


# --- the panels -----------------------------------------------------------------------------------

def test_session_and_banner():
    s = inc.open_session("05-incidents", "live")
    b = ui.banner(s)
    assert b.state["mode"] == "replay" and "MODE = \"live\" asked" in b.state["label"]
    with pytest.raises(SessionError, match="^incidents.open_session is for 05-incidents"):
        inc.open_session("01-tcp-states")
    with pytest.raises(SessionError, match="^mode 'bogus'"):
        inc.open_session("05-incidents", "bogus")


def test_steps_in_any_order_and_controls_between_them():
    p = inc.race_panel("dns-race")
    assert root(p.explain)["step"] == "" and root(p.log)["steps"] == ""
    p.run("confirm-second")                           # straight to the clash
    assert root(p.cpus)["outcomes"] == f"{INSERTED},{NAT_CLASH}"
    assert root(p.stats)["clash-resolve"] == "1"
    p.run("send")                                     # back to the start
    assert root(p.cpus)["stages"] == "received,received" and p.table.state["entries"] == 0
    assert p.events.state["events"] == 0
    p.first.value = 1                                 # the other CPU wins, same step shown
    assert root(p.explain)["step"] == "send" and root(p.status) == {}
    p.run("confirm-second")
    assert root(p.cpus)["outcomes"] == f"{NAT_CLASH},{INSERTED}"
    p.variant.value = "dns-dnat-same"
    assert root(p.cpus)["outcomes"] == f"{MERGED},{INSERTED}"
    p.kernel.value = "6.1"
    assert root(p.log)["kernel"] == "6.1" and root(p.kernels)["same"] == "true"
    assert root(p.log)["steps"] == "confirm-second,send,confirm-second"
    p.run("after-5s")
    assert root(p.explain)["end"] == "true"
    assert p.run() == p.END                           # no silent start over
    p.reset()
    assert root(p.log)["steps"] == "" and p.table.state["entries"] == 0
    p.run()
    assert root(p.explain)["step"] == "send"


def test_two_panels_do_not_share_state():
    a, b = inc.race_panel("dns-race"), inc.race_panel("dns-race")
    a.run("answers")
    a.kernel.value = "6.1"
    assert root(b.log)["steps"] == "" and root(b.log)["kernel"] == "6.18"
    b.run("send")
    assert root(a.explain)["step"] == "answers" and root(b.explain)["step"] == "send"


def test_a_bad_step_is_one_line_in_the_panel():
    p = inc.stale_panel()
    p._click(p.run, "nope")
    err = root(p.status)["error"]
    assert err.startswith("stale-udp has no step 'nope': steps are healthy,") and "\n" not in err
    with pytest.raises(SessionError, match="^no race panel 'x'"):
        inc.race_panel("x")
    p.run("recovered")                                # the panel still works
    assert root(p.explain)["end"] == "true"
    assert int(root(p.chart)["samples"]) == len(p.result.samples)


def test_stale_panel_rules_follow_the_steps():
    p = inc.stale_panel()
    p.run("healthy")
    assert "10.1.0.11:53" in p.rules.value and "10.1.0.12" not in p.rules.value
    p.run("queries-lost")
    assert "10.1.0.12:53" in p.rules.value
    assert root(p.chart)["markers"] == "be1 gone; rules: be2"
    p.run("healthy")                                  # back: the chart shrinks again
    assert root(p.chart)["markers"] == ""
