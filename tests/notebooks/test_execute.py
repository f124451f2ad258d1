"""Every notebook, executed headless (nbclient, per-cell timeouts, widget state stored),
in replay mode (no root) and in live mode (root: the classroom lab, the kernel as
nobody), with assertions on the stored widget values: the TCP states and transitions,
the rewritten tuples, expiry and DESTROY, RELATED and INVALID.

Expectations come from the kernel's behaviour (tcp_conntracks[], nf_nat, icmp_error(),
early_drop()), not from the engine: in live mode the kernel's own table is compared
too, and must agree.
"""
from __future__ import annotations

import pytest

from . import nbrun
from .nbrun import NOTEBOOKS, panel, split, views

PRIVATE = ("10.0.0.10", "10.0.0.11")


def steps(nb, scenario):
    p = panel(nb, scenario)
    return p, split(p["steps"]["transitions"]), split(p["steps"]["states"])


def rows(view, **match):
    return [r for r in view["_rows"] if all(r.get(f"data-{k}") == v for k, v in match.items())]


def agree(p, live: bool):
    """The kernel's table beside the tracker's: recorded (replay) or read (live); equal."""
    cmp = p["compare"]
    assert cmp["same"] == "true", f"tracker and kernel differ: {cmp}"
    assert cmp["kernel"] == cmp["python"]


# -- per notebook -------------------------------------------------------------------------

def check_00(nb, live):
    p, _, _ = steps(nb, "ping")
    flows = split(p["table"]["flows"])
    assert any(f.startswith("icmp 10.0.0.10") for f in flows), flows
    assert "src" in split(p["packet"]["changed"]) or "dst" in split(p["packet"]["changed"])
    p, _, _ = steps(nb, "udp")
    assert split(p["table"]["flows"]) == ["udp 10.0.0.10:40010 > 203.0.113.10:5010"]
    row = rows(p["table"])[0]
    assert "UNREPLIED" not in row.get("data-flags", ""), row        # the answer came
    assert int(p["events"]["new"]) == 1
    agree(p, live)


def check_01(nb, live):
    p, tr, st = steps(nb, "handshake")
    assert tr[:3] == ["NONE>SYN_SENT", "SYN_SENT>SYN_RECV", "SYN_RECV>ESTABLISHED"]
    assert tr[5:] == ["ESTABLISHED>FIN_WAIT", "FIN_WAIT>CLOSE_WAIT", "CLOSE_WAIT>LAST_ACK",
                      "LAST_ACK>TIME_WAIT"]
    d = p["diagram"]
    assert (d["state"], d["prev"], d["dir"], d["flag"]) == ("TIME_WAIT", "LAST_ACK", "ORIGINAL",
                                                            "ACK")
    assert split(p["table"]["states"]) == ["TIME_WAIT"]
    assert "ASSURED" in rows(p["table"])[0]["data-flags"]
    assert p["steps"]["ct"].split(";")[:3] == ["NEW", "ESTABLISHED", "ESTABLISHED"]
    agree(p, live)

    p, tr, _ = steps(nb, "rst")
    assert tr[-1] == "ESTABLISHED>CLOSE" and p["diagram"]["flag"] == "RST"
    assert split(p["table"]["states"]) == ["CLOSE"]
    agree(p, live)

    p, tr, st = steps(nb, "simultaneous-close")
    assert tr[3] == "ESTABLISHED>FIN_WAIT"
    assert tr[4] == "FIN_WAIT>LAST_ACK"          # a FIN in the reply direction (sFW, rFIN: sLA)
    assert st[-1] == "TIME_WAIT"
    agree(p, live)

    p, tr, st = steps(nb, "half-close")
    assert st[3:7] == ["FIN_WAIT", "CLOSE_WAIT", "CLOSE_WAIT", "CLOSE_WAIT"]  # data: no change
    assert st[-1] == "TIME_WAIT"
    agree(p, live)

    p, tr, _ = steps(nb, "closed-port")
    assert p["diagram"]["state"] == "CLOSE" and p["diagram"]["flag"] == "RST"
    assert p["diagram"]["dir"] == "REPLY"
    # the RST from srv, rewritten back to h1
    assert split(p["packet"]["changed"])[:1] == ["dst"]
    assert "10.0.0.10.40005" in p["packet"]["after"] and "[R" in p["packet"]["after"]
    assert int(p["events"]["destroy"]) == 1
    assert p["steps"]["ct"] == "NEW,ESTABLISHED"


def check_02(nb, live):
    p, _, _ = steps(nb, "rewrite")
    syn_ack = p["packet"]                                 # the step's last packet: the reply
    assert set(split(syn_ack["changed"])) >= {"dst", "ip_csum", "l4_csum"}
    assert "src" not in split(syn_ack["changed"])
    row = rows(p["table"])[0]
    assert row["data-orig"] == "10.0.0.10:40020 -> 203.0.113.10:5020"
    assert row["data-reply"] == "203.0.113.10:5020 -> 203.0.113.1:40020"
    agree(p, live)

    p, _, _ = steps(nb, "clash")
    by_src = {r["data-orig"].split(" ")[0]: r for r in rows(p["table"])}
    h1, h2 = by_src["10.0.0.10:40021"], by_src["10.0.0.11:40021"]
    assert h1["data-reply"].endswith("203.0.113.1:40021")          # kept
    port2 = int(h2["data-reply"].rsplit(":", 1)[1])
    assert h2["data-reply"].split(" -> ")[1].startswith("203.0.113.1:") and port2 != 40021
    assert "10.0.0.11.40021" in p["packet"]["after"]                # the answer reached h2
    agree(p, live)

    p, _, _ = steps(nb, "snat-range")
    ports = [int(r["data-reply"].rsplit(":", 1)[1]) for r in rows(p["table"])]
    assert len(ports) == 2 and len(set(ports)) == 2
    assert all(20000 <= x <= 20009 for x in ports), ports
    agree(p, live)

    p, tr, _ = steps(nb, "port-forward")
    row = rows(p["table"])[0]
    assert row["data-orig"].endswith("-> 203.0.113.1:8080")
    assert row["data-reply"].startswith("10.0.0.11:5080 ->")
    assert tr[-1] == "SYN_RECV>ESTABLISHED"
    agree(p, live)


def check_03(nb, live):
    p, _, st = steps(nb, "udp-assured")
    assert p["sysctls"]["applied"] == "2"
    assert split(p["table"]["flows"]) == []                 # expired and gone
    assert int(p["events"]["destroy"]) == 1                # ... and collected: DESTROY, once
    tl = p["timeline"]
    assert "udp 10.0.0.10:40030" in tl["destroyed"], tl
    log = rows(p["steps"])
    assert [r["data-step"] for r in log] == ["question", "answer", "again", "expire"]

    p, tr, st = steps(nb, "time-wait")
    assert "LAST_ACK>TIME_WAIT" in tr
    assert st[-1] == "-"                                    # TIME_WAIT ran out
    assert int(p["events"]["destroy"]) == 1

    p, _, st = steps(nb, "table-full")
    table = p["table"]
    assert int(table["entries"]) == 4                        # nf_conntrack_max
    assert "udp 10.0.0.11:40054 > 203.0.113.10:5054" in split(table["flows"])   # admitted
    assert int(p["events"]["destroy"]) == 1                  # ... by early drop
    gone = split(table["gone"])
    assert gone and all(g.startswith("udp ") for g in gone)   # never ASSURED ones
    assert "ESTABLISHED" in split(table["states"])            # the ASSURED one stayed


def check_04(nb, live):
    p, _, _ = steps(nb, "port-unreachable")
    assert p["steps"]["ct"] == "NEW,RELATED"
    changed = split(p["packet"]["changed"])
    assert "dst" in changed and any(k.startswith("inner_") for k in changed), changed
    assert "10.0.0.10" in p["packet"]["after"]

    p, _, _ = steps(nb, "ttl-exceeded")
    last = p["steps"]["ct"].split(";")[-1]        # the router's own time exceeded
    assert "RELATED" in last, p["steps"]

    p, _, _ = steps(nb, "invalid-leak")
    assert p["steps"]["ct"] == "INVALID"
    assert p["steps"]["verdicts"].startswith("forwarded")
    assert "10.0.0.10.40042" in p["packet"]["after"]          # leaked untranslated
    assert split(p["table"]["flows"]) == []

    p, tr, _ = steps(nb, "firewall")
    assert tr[:3] == ["NONE>SYN_SENT", "SYN_SENT>SYN_RECV", "SYN_RECV>ESTABLISHED"]
    last = split(p["steps"]["verdicts"].split(";")[-1])
    assert last and all(v.startswith("dropped") for v in last), p["steps"]["verdicts"]
    bare = split(p["steps"]["verdicts"].split(";")[-2])
    assert bare and all(v.startswith("dropped") for v in bare)
    # conntrack's verdicts: the bare ACK matches no entry, the unsolicited SYN would start one
    assert p["steps"]["ct"].split(";")[-2:] == ["INVALID", "NEW"], p["steps"]
    assert len(split(p["table"]["flows"])) == 1             # the unsolicited SYN: no entry
    agree(p, live)


def check_05(nb, live):
    """The races and the stale entry, as the kernel does them (docs/clash.md): the DNAT race
    resolved by a reply-only entry, the SNAT race's loser dropped and asked again 5 s later,
    the stale entry refreshed until conntrack -D.  The engine runs either way (live too)."""
    p = panel(nb, "dns-race")
    assert split(p["steps"]["steps"])[-1] == "after-5s" and p["explain"]["end"] == "true"
    assert (p["steps"]["variant"], p["steps"]["kernel"]) == ("dns-dnat", "6.18"), p["steps"]
    assert split(p["cpus"]["outcomes"]) == ["inserted", "nat-clash"], p["cpus"]
    assert (p["stats"]["clash-resolve"], p["stats"]["insert-failed"]) == ("1", "0"), p["stats"]
    tl = p["race-timeline"]
    assert (tl["lookup"], tl["hidden"], tl["dropped"], tl["retries"]) == ("0.001", "1", "0", "0")
    assert p["table"]["entries"] == "1"                  # the clash entry is not listed
    assert p["kernels"]["same"] == "true"

    p = panel(nb, "dns-race-snat")
    assert split(p["cpus"]["outcomes"]) == ["inserted", "insert-failed"], p["cpus"]
    assert (p["stats"]["insert-failed"], p["stats"]["drop"]) == ("1", "1"), p["stats"]
    tl = p["race-timeline"]
    assert (tl["dropped"], tl["retries"], tl["lookup"]) == ("1", "1", "5.001"), tl
    replies = sorted(r["data-reply"] for r in rows(p["table"]))
    assert len(replies) == 2 and replies[0].endswith("203.0.113.1:40000"), replies

    p = panel(nb, "stale-udp")
    chart = p["refresh-chart"]
    assert split(chart["flows"]) == ["5353>10.1.0.11", "5354>10.1.0.12", "5353>10.1.0.12"]
    assert split(chart["markers"]) == ["be1 gone; rules: be2", "conntrack -D"]
    by_port = {r["data-orig"].split(" ")[0]: r["data-reply"] for r in rows(p["table"])}
    assert by_port["203.0.113.10:5353"].startswith("10.1.0.12:53"), by_port
    assert int(p["events"]["destroy"]) == 1


CHECKS = {"00-welcome": check_00, "01-tcp-states": check_01, "02-snat": check_02,
          "03-timeouts": check_03, "04-related-and-invalid": check_04, "05-incidents": check_05}
# Notebooks that always run on the engine (their banner says replay, also in live mode).
ENGINE_ONLY = ("05-incidents",)


def text_agrees(p: dict, where: str) -> None:
    """A panel's step text (computed from what happened) says what its table shows, and
    the scripted run (Run All) gives what the script expected."""
    e = p["explain"]
    assert e["differs"] == "false", f"{where}: differs from the script: {e}"
    assert e["end"] == "true", f"{where}: Run All ends at the last step: {e}"
    row = [r for r in rows(p["table"]) if r.get("data-flow") == e["flow"]] if e["flow"] else []
    if e["present"] == "false":
        assert not row, f"{where}: the text says no entry, the table has {row}"
        return
    assert len(row) == 1, f"{where}: the text's entry {e['flow']} is not in the table"
    assert row[0]["data-state"] == e["state"], (where, row, e)
    assert 0 <= int(e["timeout"]) - int(row[0]["data-timeout"]) <= 2, (where, row, e)
    assert set(row[0]["data-flags"].split()) >= set(e["flags"].split()), (where, row, e)


def check_common(run, mode: str, user, name: str = "") -> None:
    banner = [v for v in views(run.nb) if v["view"] == "mode"]
    assert [b["mode"] for b in banner] == [mode]
    if user.uid is not None:
        assert run.probe["uid"] == user.uid, "the kernel must run unprivileged"
    from nattrack.notebook.scenarios import SCENARIOS
    for scn in SCENARIOS.get(name, ()):
        text_agrees(panel(run.nb, scn.name), f"{name}/{scn.name} ({mode})")


# -- the runs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_replay(name, replay_user):
    env = nbrun.kernel_env(replay_user, {"NATTRACK_RUN_DIR": "/nonexistent-nattrack"})
    run = nbrun.execute(name, {"MODE": "replay"}, env, user=replay_user)
    check_common(run, "replay", replay_user, name)
    CHECKS[name](run.nb, live=False)
    if name == "00-welcome":          # replay: the live table is one snapshot, no thread
        assert "nattrack-live-table" not in run.probe["new_threads"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_live(name, live_lab):
    env = nbrun.kernel_env(live_lab.user, {"NATTRACK_RUN_DIR": str(live_lab.run_dir)})
    run = nbrun.execute(name, {"MODE": "live"}, env, user=live_lab.user)
    check_common(run, "replay" if name in ENGINE_ONLY else "live", live_lab.user, name)
    CHECKS[name](run.nb, live=True)
    if name == "00-welcome":          # live: its table refreshes on a thread
        assert "nattrack-live-table" in run.probe["new_threads"]


def test_grading_starts_no_thread(replay_user):
    """NATTRACK_GRADING: static snapshots, no background thread (00 has a live table)."""
    env = nbrun.kernel_env(replay_user, {"NATTRACK_RUN_DIR": "/nonexistent-nattrack",
                                         "NATTRACK_GRADING": "1"})
    run = nbrun.execute("00-welcome", {"MODE": "replay"}, env, user=replay_user)
    assert run.probe["new_threads"] == []
    CHECKS["00-welcome"](run.nb, live=False)


def test_grading_with_a_lab_up_replays_without_threads(live_lab):
    """A grader running the notebook ("auto") gets the recorded run even when a lab answers:
    the same for every student, and no thread reading the lab's event streams."""
    env = nbrun.kernel_env(live_lab.user, {"NATTRACK_RUN_DIR": str(live_lab.run_dir),
                                           "NBGRADER_EXECUTION": "autograde"})
    run = nbrun.execute("00-welcome", {"MODE": "auto"}, env, user=live_lab.user)
    check_common(run, "replay", live_lab.user)
    assert run.probe["new_threads"] == []
    CHECKS["00-welcome"](run.nb, live=False)
