"""The test API lab tests are written in (docs/labs-format.md, "A test").

A test is a plain function taking the grading context; :func:`test` attaches its
metadata.  Tests run in the grader's process; submission code only ever runs in the
sandboxed worker the context talks to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
MODES = ("offline", "live", "any")


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


def test(*, points: float, number: str, name: str, visibility: str = "visible",
         mode: str = "any", tags: tuple[str, ...] | list[str] = (),
         timeout: float = 30.0) -> Callable[[Callable], Callable]:
    """Mark ``func(ctx)`` as a graded test (gradescope-utils' weight/number/visibility)."""
    if visibility not in VISIBILITIES:
        raise ValueError(f"visibility {visibility!r}: expected one of {VISIBILITIES}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    if points < 0:
        raise ValueError("points must be >= 0")

    def mark(func: Callable) -> Callable:
        func.nattrack_test = TestSpec(func, float(points), str(number), name, visibility, mode,
                                      tuple(tags), float(timeout))
        return func
    return mark


test.__test__ = False                     # pytest must not collect the decorator itself


def collect(namespace: dict) -> list[TestSpec]:
    """The tests defined in a module's namespace, in number order."""
    specs = [v.nattrack_test for v in namespace.values() if hasattr(v, "nattrack_test")]
    return sorted(specs, key=lambda s: [int(p) if p.isdigit() else p for p in s.number.split(".")])
