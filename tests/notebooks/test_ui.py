"""nattrack.notebook.ui on replay sessions (no lab, no root): what each panel shows after
a step, the step log, the --ctstate reading of packets, time passing, grading mode."""
from __future__ import annotations

import threading

import pytest

from nattrack.lab.craft import build
from nattrack.notebook import open_session, ui
from nattrack.notebook.session import PacketPair, SessionError, StepResult
from nattrack.widgets import widget_state

from .nbrun import _DataParser


@pytest.fixture
def s01():
    s = open_session("01-tcp-states", "replay")
    yield s
    s.close()


def root(widget) -> dict:
    return widget_state(widget.value)


def test_banner_says_replay(s01):
    b = ui.banner(s01)
    assert b.state["mode"] == "replay" and "recorded" in b.state["label"]


def test_one_step_at_a_time(s01):
    p = ui.stepper(s01, "handshake")
    assert p.diagram is not None and p.log.state["steps"] == []
    p.run()
    assert p.diagram.state["state"] == "SYN_SENT" and p.diagram.state["prev"] == "NONE"
    assert p.table.state["states"] == ["SYN_SENT"]
    assert root(p.explain)["step"] == "SYN"
    p.run()
    assert (p.diagram.state["transition"], p.diagram.state["dir"], p.diagram.state["flag"]) == \
        ("SYN_SENT>SYN_RECV", "REPLY", "SYN-ACK")
    # the SYN-ACK before and after: the destination rewritten back to h1
    assert "dst" in p.packet.state["changed"] and "10.0.0.10.40001" in p.packet.state["after"]
    assert p.log.state["steps"] == ["SYN", "SYN-ACK"]
    assert p.log.state["ct"] == "NEW;ESTABLISHED"


def test_a_later_step_shows_the_ones_before(s01):
    p = ui.stepper(s01, "handshake")
    p.run("ACK")
    assert p.log.state["steps"] == ["SYN", "SYN-ACK", "ACK"]
    assert p.log.state["transitions"] == ["NONE>SYN_SENT", "SYN_SENT>SYN_RECV",
                                          "SYN_RECV>ESTABLISHED"]
    p.run("SYN")                      # an earlier step: the scenario starts over
    assert p.log.state["steps"] == ["SYN"] and p.table.state["states"] == ["SYN_SENT"]


def test_run_all_then_reset(s01):
    p = ui.stepper(s01, "rst")
    res = p.run_all()
    assert [r.step for r in res] == ["SYN", "SYN-ACK", "ACK", "RST"]
    assert p.diagram.state["state"] == "CLOSE"
    assert len(p.picker.options) == 1
    p.reset()
    assert p.log.state["steps"] == [] and p.table.state["entries"] == 0
    assert p.diagram.state["state"] is None and p.picker.options == ()


def test_two_panels_take_turns(s01):
    a, b = ui.stepper(s01, "handshake"), ui.stepper(s01, "rst")
    a.run("ACK")
    b.run("SYN")                      # the session moves to rst
    a.run()                           # a starts over: its scenario is no longer current
    assert a.log.state["steps"] == ["SYN"]


def test_errors_in_a_button_are_one_line(s01):
    p = ui.stepper(s01, "handshake")

    def boom():
        raise SessionError("the lab went away: start it again")
    p._click(boom)
    assert root(p.status)["error"] == "the lab went away: start it again"
    assert not any(b.disabled for b in p.buttons)
    from nattrack.lab import LabError

    def lab_gone():
        raise LabError("the lab service stopped: sudo nattrack notebook")
    p._click(lab_gone)
    assert root(p.status)["error"] == "the lab service stopped: sudo nattrack notebook"

    def bug():
        raise ValueError("sport\nsecond line")
    p._click(bug)
    err = root(p.status)["error"]
    assert err.startswith("ValueError: sport") and "second line" not in err
    assert "working" not in p.status.value
    assert not any(b.disabled for b in (*p.buttons, p.next_button, p.reset_button))


def test_unknown_scenario_and_rules(s01):
    with pytest.raises(SessionError, match="no scenario 'nope'"):
        ui.stepper(s01, "nope")
    with pytest.raises(SessionError, match="no rules file .*known are .*classroom"):
        ui.show_rules("nope")
    assert root(ui.show_rules("classroom-firewall"))["name"] == "classroom-firewall"


def test_ctstates_related_and_invalid():
    s = open_session("04-related-and-invalid", "replay")
    p = ui.stepper(s, "port-unreachable")
    p.run_all()
    assert p.log.state["ct"] == "NEW,RELATED"
    assert any(k.startswith("inner_") for k in p.packet.state["changed"])
    p = ui.stepper(s, "invalid-leak")
    p.run_all()
    assert p.log.state["ct"] == "INVALID"
    p = ui.stepper(s, "firewall")                       # conntrack's verdicts on dropped packets
    p.run_all()
    assert p.log.state["ct"].split(";")[-2:] == ["INVALID", "NEW"]   # bare ACK, unsolicited SYN


def test_ctstates_from_made_up_packets():
    """The reading itself, on packets made here: an entry h1:1000 -> srv:80 masqueraded."""
    entry = {"proto": "udp", "orig": {"src": "10.0.0.10", "dst": "203.0.113.10", "sport": 1000,
                                      "dport": 80},
             "reply": {"src": "203.0.113.10", "dst": "203.0.113.1", "sport": 80, "dport": 1000},
             "unreplied": True}
    out = build("udp", "10.0.0.10", "203.0.113.10", 1000, 80, payload=b"q")
    back = build("udp", "203.0.113.10", "203.0.113.1", 80, 1000, payload=b"a")
    stray = build("udp", "10.0.0.10", "203.0.113.10", 1001, 80, payload=b"x")
    # port unreachable from srv, quoting the datagram as it arrived (from 203.0.113.1)
    quoted = build("udp", "203.0.113.1", "203.0.113.10", 1000, 80, payload=b"q")
    err = build("icmp", "203.0.113.10", "203.0.113.1", icmp_type=3, icmp_code=3,
                payload=quoted[:28])
    err_other = build("icmp", "203.0.113.10", "203.0.113.1", icmp_type=3, icmp_code=3,
                      payload=stray[:28])
    pk = [PacketPair("ntr-lan", out, "ntr-wan", out, "forwarded"),
          PacketPair("ntr-wan", back, "ntr-lan", back, "forwarded"),
          PacketPair("ntr-lan", out, "ntr-wan", out, "forwarded"),
          PacketPair("ntr-wan", err, "ntr-lan", err, "forwarded"),
          PacketPair("ntr-wan", err_other, None, None, "dropped"),
          PacketPair("ntr-lan", stray, "ntr-wan", stray, "forwarded"),
          PacketPair("ntr-lan", stray, None, None, "dropped: filter FORWARD")]
    res = StepResult("x", pk, None, [entry])
    guess = ["NEW", "ESTABLISHED", "ESTABLISHED", "RELATED", "", "INVALID", ""]
    assert ui.ctstates(res, []) == guess == ui.guess_ctstates(res, [])
    # conntrack's own verdict, when the session has it, wins over the guess; _REPLY folded
    pk[1].ctinfo, pk[4].ctinfo, pk[6].ctinfo = "ESTABLISHED_REPLY", "INVALID", "NEW"
    pk[0].ctinfo = "INVALID"                             # made up: shows it is not guessed
    assert ui.ctstates(res, []) == ["INVALID", "ESTABLISHED", "ESTABLISHED", "RELATED", "INVALID",
                                    "INVALID", "NEW"]


def test_time_passes_on_the_chart(monkeypatch):
    monkeypatch.setenv("NATTRACK_GRADING", "1")        # no pauses, no threads
    s = open_session("03-timeouts", "replay")
    p = ui.timeouts_panel(s, "time-wait")
    assert p.updater is None
    p.run("last-ACK")
    assert p.table.state["states"] == ["TIME_WAIT"]
    assert root(p.sysctl_view)["applied"] == "1"
    tl = p.timeline.state
    assert tl["entries"] == 1
    parser = _DataParser()
    parser.feed(p.timeline.widget.value)
    left = [float(e["data-remaining"]) for e in parser.found if "data-remaining" in e]
    assert len(left) == 1 and 0 < left[0] <= 5             # TIME_WAIT is 5 s here
    p.watch(6)
    assert p.table.state["entries"] == 0
    assert "tcp 10.0.0.10:40031 > 203.0.113.10:5031" in p.timeline.state["destroyed"]
    assert p.events.state["destroy"] == 1
    other = ui.stepper(s, "udp-assured")
    other.run()
    before = p.timeline.state["renders"]
    p.refresh()                                            # not its turn: draws nothing
    assert p.timeline.state["renders"] == before


def test_a_background_refresh_during_a_step_adds_no_event_twice(monkeypatch):
    monkeypatch.setenv("NATTRACK_GRADING", "1")        # no Updater: its refresh is called by hand
    s = open_session("03-timeouts", "replay")
    p = ui.timeouts_panel(s, "time-wait")
    run, errors = s.run, []

    def tick():
        try:
            p.refresh(wait=False)
        except Exception as exc:                       # noqa: BLE001 -- asserted below
            errors.append(exc)

    def run_and_refresh_from_a_thread(*a, **kw):       # the Updater's tick, mid-step
        r = run(*a, **kw)
        t = threading.Thread(target=tick)
        t.start()
        t.join(10)
        return r
    monkeypatch.setattr(s, "run", run_and_refresh_from_a_thread)
    p.run_all()
    p.refresh()
    p.watch(6)
    assert errors == []
    lines = list(p.events._lines)
    assert len(lines) == len(set(lines)) == len(s.events()), lines
    assert p.events.state["destroy"] == 1


def test_standalone_table_refreshes_on_a_thread_only_for_a_lab_session(monkeypatch, s01):
    s01.run("handshake", "ACK")
    r = ui.live_table(s01, interval=0.2)             # replay: one snapshot, no thread
    assert r.updater is None
    assert "nattrack-live-table" not in {t.name for t in threading.enumerate()}
    assert r.table.state["states"] == ["ESTABLISHED"]
    r.stop()
    monkeypatch.setattr(s01, "mode", "live")         # the same table as a live session's
    t = ui.live_table(s01, interval=0.2)
    try:
        assert t.table.state["states"] == ["ESTABLISHED"]
        assert t.updater.thread is not None and t.updater.thread.name == "nattrack-live-table"
    finally:
        t.stop()
    assert not t.updater.running
    monkeypatch.setenv("NATTRACK_GRADING", "1")
    g = ui.live_table(s01)                           # grading: even live, no thread
    assert g.updater.thread is None
    assert "nattrack-live-table" not in {t.name for t in threading.enumerate()}
    assert g.table.state["states"] == ["ESTABLISHED"]


def test_packet_labels():
    pp = PacketPair("ntr-lan", b"", "ntr-wan", b"", "forwarded")
    assert ui.packet_labels(pp) == ("in on ntr-lan (LAN side)", "out on ntr-wan (WAN side)")
    own = PacketPair(None, b"", "ntr-lan", b"", "sent by the router")
    assert ui.packet_labels(own)[0] == "sent by the router on ntr-lan (LAN side)"
    dropped = PacketPair("ntr-wan", b"", None, None, "dropped: filter FORWARD")
    assert ui.packet_labels(dropped)[1] == "dropped: filter FORWARD"


# -- the narration: computed from what happened ------------------------------------------------

def explain(p) -> dict:
    return root(p.explain)


def table_row(p, flow: str) -> dict | None:
    parser = _DataParser()
    parser.feed(p.table.widget.value)
    return next((r for r in parser.found if r.get("data-flow") == flow), None)


def agrees_with_table(p) -> None:
    """The step's text and the table say the same about the step's entry."""
    e = explain(p)
    if e["present"] == "false":
        assert e["flow"] == "" or table_row(p, e["flow"]) is None, e
        return
    row = table_row(p, e["flow"])
    assert row is not None, (e, p.table.state)
    assert (row["data-state"], row["data-timeout"]) == (e["state"], e["timeout"]), (row, e)
    assert set(row["data-flags"].split()) >= set(e["flags"].split()), (row, e)


def test_the_data_step_explains_the_unacknowledged_timeout(s01):
    p = ui.stepper(s01, "handshake")
    p.run("ACK")
    assert explain(p)["timeout-key"] == "nf_conntrack_tcp_timeout_established"
    p.run("data")
    e = explain(p)
    assert (e["state"], e["timeout"]) == ("ESTABLISHED", "299")
    assert e["timeout-key"] == "nf_conntrack_tcp_timeout_unacknowledged"
    assert "data h1 sent is not acknowledged yet" in p.explain.value
    assert "(it was 431999 s)" in p.explain.value
    p.run("data-ACK")
    assert explain(p)["timeout-key"] == "nf_conntrack_tcp_timeout_established"
    assert explain(p)["differs"] == "false"


def test_every_scripted_step_agrees_with_its_table_and_the_script():
    from nattrack.notebook import NOTEBOOKS
    for nb in NOTEBOOKS:
        s = open_session(nb, "replay")
        for scn in s.scenarios():
            p = ui.stepper(s, scn.name)
            for st in scn.steps:
                p.run(st.name)
                agrees_with_table(p)
                e = explain(p)
                assert e["differs"] == "false", (nb, scn.name, st.name, e)
                assert e["end"] == ("true" if st is scn.steps[-1] else "false")
            p.stop()


def test_time_let_pass_changes_the_story_and_says_it_differs(monkeypatch):
    monkeypatch.setenv("NATTRACK_GRADING", "1")
    s = open_session("03-timeouts", "replay")
    p = ui.timeouts_panel(s, "udp-assured")
    p.run("answer")
    p.watch(5)                                    # every view follows the clock together
    left = root(p.clock)["left"]
    assert root(p.clock)["waited"] == "5" and left == str(p.table._rows[0]["timeout"])
    assert p.compare.state["same"] is True and p.compare.state["kernel"] == 1
    p.watch(5)                                    # 10 s: the entry ran out
    assert p.table.state["entries"] == 0 and p.compare.state["kernel"] == 0
    assert root(p.clock)["left"] == ""
    p.run("again")
    e = explain(p)
    assert (e["flags"], e["timeout-key"]) == ("UNREPLIED", "nf_conntrack_udp_timeout")
    assert e["differs"] == "true" and "ASSURED" in e["expected"]
    assert "was gone before this packet" in p.explain.value
    assert "You let 10 s pass" in p.explain.value
    agrees_with_table(p)


def test_reset_clears_every_view_and_the_end_is_said(s01):
    p = ui.stepper(s01, "rst")
    p.run_all()
    assert p.packet.state["before"] and explain(p)["end"] == "true"
    assert "End of the scenario" in p.explain.value
    p._click(p.run)                               # next step after the last: no restart
    assert p.log.state["steps"] == ["SYN", "SYN-ACK", "ACK", "RST"]
    assert "the scenario is over" in root(p.status)["note"]
    p.reset()
    assert p.packet.state["changed"] == [] and "before" not in p.packet.state
    assert p.table.state["entries"] == 0 and p.events.state["events"] == 0
    assert p.log.state["steps"] == [] and explain(p)["step"] == ""
    p.run()
    assert p.log.state["steps"] == ["SYN"]


def test_the_routers_own_error_is_one_column():
    s = open_session("04-related-and-invalid", "replay")
    p = ui.stepper(s, "ttl-exceeded")
    p.run_all()
    assert p.packet.state["after"] is None
    assert "sent by the router" in p.packet.widget.value


def test_run_all_from_code_ends_in_one_line_not_a_traceback(s01, monkeypatch, capsys):
    p = ui.stepper(s01, "handshake")
    run = s01.run

    def busy(scn, step=None):
        if step == "ACK":
            raise SessionError("another notebook's step has held the router's capture for 8 s"
                               " (one step captures at a time): press the button again")
        return run(scn, step)
    monkeypatch.setattr(s01, "run", busy)
    res = p.run_all()
    assert [r.step for r in res] == ["SYN", "SYN-ACK"]
    assert root(p.status)["error"].startswith("another notebook's step has held")
    assert capsys.readouterr().out.count("\n") == 1


def test_a_refresh_that_works_again_is_no_longer_an_error():
    """The live table's Updater across a lab restart: red while the lab is gone, then a
    note (not an error) once it answers again."""
    import time
    from nattrack.widgets import Updater
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("the lab service went away")
    u = Updater(fn, 0.2)
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    u.stop()
    st = root(u.widget)
    assert st["errors"] == "1" and st["recovered"] == "true"
    assert "nt-err" not in u.widget.value and "went away" in u.widget.value
