"""Helpers lab tests share: compare a submission's replay with the reference's, and
say the first difference in words a student can act on.

A replay is the dict ``nattrack replay --json`` prints (``ctx.replay`` and
``ctx.reference_replay`` return it).  Entry ids (``id``) are object addresses and
differ from run to run, so they are never compared.
"""
from __future__ import annotations


def flow(d: dict) -> str:
    """One line for an event or a table entry, like conntrack -L but shorter."""
    def half(t: dict) -> str:
        if d.get("proto") == "icmp":
            keys = f"type={t.get('type')} code={t.get('code')} id={t.get('id')}"
        else:
            keys = f"sport={t.get('sport')} dport={t.get('dport')}"
        return f"{t.get('src')}->{t.get('dst')} {keys}"
    flags = [x for x in ("ASSURED",) if d.get("assured")] + (["UNREPLIED"] if d.get("unreplied") else [])
    head = f"[{d['event']}] " if "event" in d else ""
    when = f"t={d['ts']:.3f} " if "ts" in d and "event" in d else ""
    state = f" {d['state']}" if d.get("state") else ""
    return (f"{when}{head}{d.get('proto')} timeout={d.get('timeout')}{state} "
            f"{half(d.get('orig', {}))} | {half(d.get('reply', {}))} {' '.join(flags)}").rstrip()


def _clean(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in d.items() if k != "id"} for d in items]


def _first_difference(what: str, got: list[dict], want: list[dict]) -> str | None:
    g, w = _clean(got), _clean(want)
    for i, (a, b) in enumerate(zip(g, w)):
        if a != b:
            return f"{what} #{i + 1} differs: yours `{flow(a)}`, the kernel's `{flow(b)}`"
    if len(g) != len(w):
        if len(g) > len(w):
            return f"{what}: you have {len(g)}, the kernel {len(w)}; first extra: `{flow(g[len(w)])}`"
        return f"{what}: you have {len(g)}, the kernel {len(w)}; first missing: `{flow(w[len(g)])}`"
    return None


def same_replay(got: dict, want: dict, *, events: bool = True, table: bool = True,
                stats: tuple[str, ...] = ()) -> None:
    """AssertionError naming the first event, entry or counter that differs."""
    problems = []
    if events:
        problems.append(_first_difference("event", got.get("events", []), want.get("events", [])))
    if table:
        problems.append(_first_difference("table entry", got.get("table", []), want.get("table", [])))
    for name in stats:
        a, b = got.get("stats", {}).get(name), want.get("stats", {}).get(name)
        if a != b:
            problems.append(f"counter {name}: yours {a}, the kernel's {b}")
    a, b = got.get("packets", {}).get("dropped"), want.get("packets", {}).get("dropped")
    if a != b:
        problems.append(f"packets dropped by the router: yours {a}, the kernel's {b}")
    bad = got.get("packets", {}).get("bad_checksums_out", 0)
    if bad:
        problems.append(f"{bad} packet(s) left the router with a wrong checksum")
    problems = [p for p in problems if p]
    assert not problems, "; ".join(problems)


def fraction(cases: list[tuple[str, object, object]]) -> tuple[float, str]:
    """(share of cases where got == want, the first wrong case described) for partial credit."""
    wrong = [(label, got, want) for label, got, want in cases if got != want]
    first = f"{wrong[0][0]}: yours {wrong[0][1]!r}, expected {wrong[0][2]!r}" if wrong else ""
    return (len(cases) - len(wrong)) / len(cases), first


def partial_credit(cases: list[tuple[str, object, object]]) -> float:
    """What a test returns for partial credit: the share of right cases; none right fails
    the test with the first wrong case as its reason."""
    score, first = fraction(cases)
    assert score > 0, first
    return score


__all__ = ["flow", "same_replay", "fraction", "partial_credit"]
