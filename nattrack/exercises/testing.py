"""The test API lab tests are written in (docs/labs-format.md, "A test").

A test is a plain function taking the grading context; :func:`test` attaches its
metadata.  Tests run in the grader's process; submission code only ever runs in the
sandboxed worker the context talks to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
MODES = ("offline", "live", "any")
LAB_MODES = ("", "python", "kernel")      # "": the lab.toml's own mode


@dataclass(frozen=True)
class TestSpec:
    __test__ = False                      # not a pytest test class

    func: Callable
    points: float
    number: str
    name: str
    visibility: str = "visible"
    mode: str = "any"
    tags: tuple[str, ...] = ()
    timeout: float = 30.0                 # seconds for the whole test, worker calls included
    lab_mode: str = ""                    # a live test's router mode, if not the lab's own


def test(*, points: float, number: str, name: str, visibility: str = "visible",
         mode: str = "any", tags: tuple[str, ...] | list[str] = (),
         timeout: float = 30.0, lab_mode: str = "") -> Callable[[Callable], Callable]:
    """Mark ``func(ctx)`` as a graded test (gradescope-utils' weight/number/visibility).
    ``lab_mode``: the live lab this test needs runs its router in that mode (python or
    kernel) rather than the one lab.toml names (lab 07's table-full: python, because the
    kernel's nf_conntrack_max is one number for the whole machine)."""
    if visibility not in VISIBILITIES:
        raise ValueError(f"visibility {visibility!r}: expected one of {VISIBILITIES}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    if points < 0:
        raise ValueError("points must be >= 0")
    if lab_mode not in LAB_MODES or (lab_mode and mode != "live"):
        raise ValueError(f"lab_mode {lab_mode!r}: python or kernel, for a mode='live' test")

    def mark(func: Any) -> Any:                 # a test function, marked in place
        func.nattrack_test = TestSpec(func, float(points), str(number), name, visibility, mode,
                                      tuple(tags), float(timeout), lab_mode)
        return func
    return mark


test.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect the decorator


def number_key(number: str) -> tuple:
    """Sort key for test numbers of any text, in natural order: "2.9" < "2.10" < "10.1" <
    "H.1" (runs of digits compare as numbers and before any text, text case-blind).  Each
    part is (0, int) or (1, str), so a number never meets a string: no TypeError."""
    text = str(number).strip()
    parts = tuple((0, int(run)) if run.isdecimal() else (1, run.casefold())
                  for run in re.findall(r"\d+|\D+", text))
    return parts, text                  # "02" and "2" tie on parts: the text decides


def collect(namespace: dict) -> list[TestSpec]:
    """The tests defined in a module's namespace, in number order."""
    specs = [v.nattrack_test for v in namespace.values() if hasattr(v, "nattrack_test")]
    return sorted(specs, key=lambda s: number_key(s.number))
