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
    found = [p for p in problems if p]
    assert not found, "; ".join(found)


SHOWN_WRONG = 3                         # wrong cases named in a partial-credit message


def explain(total: int, wrong: list[str]) -> tuple[float, str]:
    """(share of ``total`` cases right, what the student reads): ``"7 of 10 cases right;
    first wrong: A; B; C (and 1 more)"``, or ``""`` when none is wrong.  ``wrong`` holds
    one description per wrong case, in the order the cases were tried."""
    if total <= 0:
        raise ValueError("partial credit of no cases")
    if not wrong:
        return 1.0, ""
    more = f" (and {len(wrong) - SHOWN_WRONG} more)" if len(wrong) > SHOWN_WRONG else ""
    return ((total - len(wrong)) / total,
            f"{total - len(wrong)} of {total} cases right; first wrong: "
            f"{'; '.join(wrong[:SHOWN_WRONG])}{more}")


def fraction(cases: list[tuple[str, object, object]], *, reveal: bool = True
             ) -> tuple[float, str]:
    """(share of cases where got == want, the first wrong cases described) for partial
    credit.  ``reveal=False`` for answers a student is asked to find: the message then
    says which answer is wrong, never the right one."""
    wrong = [f"{label}: yours {got!r}, expected {want!r}" if reveal else
             f"{label}: yours {got!r} is not right yet"
             for label, got, want in cases if got != want]
    return explain(len(cases), wrong)


def partial_credit(cases: list[tuple[str, object, object]], *, reveal: bool = True
                   ) -> tuple[float, str]:
    """What a test returns for partial credit: (the share of right cases, which were wrong);
    none right fails the test with that message as its reason."""
    score, why = fraction(cases, reveal=reveal)
    assert score > 0, why
    return score, why


__all__ = ["flow", "same_replay", "explain", "fraction", "partial_credit"]
