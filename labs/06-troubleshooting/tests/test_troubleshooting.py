"""Lab 06's public tests: each scenario's fix on the recorded traffic (offline) and in the
live lab (the grader applies the broken set-up and the fix itself, then sends traffic
from the hosts; r's kernel is the reference), and the written diagnoses
(nattrack.exercises.scenarios numbers them: 6.1-6.6 offline, 6.7-6.12 live, 6.13 the diagnoses)."""
from pathlib import Path

from nattrack.exercises.scenarios import load_lab_module, scenario_tests, student_fix

S = load_lab_module(Path(__file__).resolve().parent.parent / "scenarios.py",
                    "nattrack_lab06_scenarios")


def offline(ctx, name):
    cfg = S.effective(name, student_fix(ctx, S, name))
    problems = S.check_offline(name, S.replay(name, cfg))
    assert not problems, f"{name} (recorded traffic): " + "; ".join(problems)


def live(ctx, name):
    lab = ctx.live
    topo = lab.status().get("topo")
    assert topo == "trouble", f"the live lab runs {topo!r}: lab 06 needs `nattrack lab up --topo trouble --mode kernel`"
    S.apply_live(lab, S.effective(name, student_fix(ctx, S, name)))
    problems = S.check_live(lab, name)
    assert not problems, f"{name} (live): " + "; ".join(problems)


scenario_tests(globals(), 6, offline, live, S.SCENARIOS, S.SCENARIOS, timeout=45)
