"""Lab 07's public tests: each incident's fix on the recorded traffic (offline) and, where
the live lab can stage it, in the live lab (the grader stages the incident and applies
the fix itself, then sends traffic from the hosts; r's kernel is the reference), and the
written diagnoses (nattrack.exercises.scenarios numbers them: 7.1-7.7 offline, 7.8-7.14 live,
7.15 the diagnoses).  table-full's live test (7.14) runs with the lab's router in python
mode: the kernel's nf_conntrack_max is one number for the whole machine."""
from pathlib import Path

from nattrack.exercises.scenarios import load_lab_module, scenario_tests, student_fix

S = load_lab_module(Path(__file__).resolve().parent.parent / "scenarios.py",
                    "nattrack_lab07_scenarios")


def offline(ctx, name):
    problems = S.check_offline(name, S.replay(name, student_fix(ctx, S, name)))
    assert not problems, f"{name} (recorded traffic): " + "; ".join(problems)


def live(ctx, name):
    lab = ctx.live
    topo = lab.status().get("topo")
    mode = S.LIVE_MODES.get(name, "kernel")
    assert topo == "incidents", (f"the live lab runs {topo!r}: lab 07 needs "
                                 f"`nattrack lab up --topo incidents --mode {mode}`")
    try:
        problems = S.check_live(lab, name, student_fix(ctx, S, name))
    except S.KnobError as exc:
        raise AssertionError(f"{name} (live): {exc}") from None
    assert not problems, f"{name} (live): " + "; ".join(problems)


scenario_tests(globals(), 7, offline, live, S.SCENARIOS, S.LIVE, timeout=60,
               live_modes=S.LIVE_MODES)
