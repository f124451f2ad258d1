"""Lab 07's public tests: each incident's fix on the recorded traffic (offline) and, where
the live lab can stage it, in the live lab (the grader stages the incident and applies
the fix itself, then sends traffic from the hosts; r's kernel is the reference), and the
written diagnoses."""
import importlib.util
import sys
from pathlib import Path

from nattrack.labs.checks import explain
from nattrack.labs.testing import test

_LAB = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("nattrack_lab07_scenarios", _LAB / "scenarios.py")
S = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, S)
_spec.loader.exec_module(S)


def _text(ctx, name):
    try:
        return ctx.read(name)
    except AssertionError:                  # "your submission has no NAME"
        return None


def student_fix(ctx, name):
    """The submission's NAME.toml and NAME.rules, checked (never executed)."""
    toml = ctx.read(f"{name}.toml")
    try:
        return S.fix_from_texts(name, toml, _text(ctx, f"{name}.rules"))
    except S.KnobError as exc:
        raise AssertionError(str(exc)) from None


def offline(ctx, name):
    problems = S.check_offline(name, S.replay(name, student_fix(ctx, name)))
    assert not problems, f"{name} (recorded traffic): " + "; ".join(problems)


def live(ctx, name):
    lab = ctx.live
    topo = lab.status().get("topo")
    assert topo == "incidents", (f"the live lab runs {topo!r}: lab 07 needs "
                                 f"`nattrack lab up --topo incidents --mode kernel`")
    try:
        problems = S.check_live(lab, name, student_fix(ctx, name))
    except S.KnobError as exc:
        raise AssertionError(f"{name} (live): {exc}") from None
    assert not problems, f"{name} (live): " + "; ".join(problems)


def _make(number, name, mode):
    what = "recorded traffic through the engine" if mode == "offline" else "live lab, kernel as reference"
    fn = (lambda ctx: offline(ctx, name)) if mode == "offline" else (lambda ctx: live(ctx, name))
    fn.__name__ = f"{mode}_{name.replace('-', '_')}"
    return test(points=2, number=number, name=f"{name}: fixed ({what})", mode=mode,
                timeout=60)(fn)


for _i, _name in enumerate(S.SCENARIOS):
    _t = _make(f"7.{_i + 1}", _name, "offline")
    globals()[_t.__name__] = _t
for _i, _name in enumerate(S.LIVE):
    _t = _make(f"7.{len(S.SCENARIOS) + _i + 1}", _name, "live")
    globals()[_t.__name__] = _t
del _t, _i, _name


@test(points=3, number=f"7.{len(S.SCENARIOS) + len(S.LIVE) + 1}",
      name="Each fix comes with a diagnosis (what was wrong, what showed it)", mode="any")
def diagnoses(ctx):
    missing = []
    for name in S.SCENARIOS:
        toml = _text(ctx, f"{name}.toml") or ""
        try:
            diag = S.load_toml(toml, name).get("diagnosis", "")
        except S.KnobError:
            diag = ""
        if "TODO" in diag or len(str(diag).split()) < 25:
            missing.append(name)
    score, why = explain(len(S.SCENARIOS), [f"{name}: no diagnosis of 25 words or more "
                                             f"(without TODO)" for name in missing])
    assert score > 0, why
    return score, why
