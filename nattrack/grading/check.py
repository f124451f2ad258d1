"""``nattrack lab check``: a student's self-check, one line per unmet TODO or checkpoint.

It runs the lab's public tests (offline by default, ``--live`` adds the live ones when
this machine can) against the student's folder with the grader's own runner -- the same
sandboxed worker -- and maps failed tests to the manifest's ``[[todos]]``:

    TODO 2 (lab 2): next_state() -- ESTABLISHED --FIN--> ESTABLISHED, expected FIN_WAIT

A failed test that no TODO lists is reported as ``test N``.  Exit status 0 when everything
passes, 1 otherwise, 2 when the lab or folder is wrong.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..labs.testing import number_key
from .runner import GradeError, Grader


def find_lab(lab: str | None) -> Path:
    """The lab folder: the argument, or the current folder or its parent (in student/)."""
    if lab:
        return Path(lab)
    here = Path.cwd()
    for d in (here, here.parent):
        if (d / "lab.toml").is_file():
            return d
    raise GradeError("which lab? run `nattrack lab check LAB` (e.g. labs/02-tcp-states), or "
                     "run it inside a lab folder")


def lab_check(lab: str | None = None, folder: str | None = None, live: bool = False,
              out=print) -> int:
    try:
        lab_dir = find_lab(lab)
        sub = Path(folder) if folder else lab_dir / "student"
        if not sub.is_dir():
            raise GradeError(f"{sub}: not a folder (--dir YOUR_FOLDER)")
        # the student's own code, run as the student: no jail needed to protect anyone
        with Grader(lab_dir, mode="auto" if live else "offline", unsafe_no_jail=True,
                    tests_filter=lambda s: s.visibility == "visible") as g:
            res = g.grade(sub)
            info = g.lab
    except GradeError as exc:
        print(f"nattrack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    skipped = [t for t in res.tests if "not-run" in t.tags]
    by_number = {t.number: t for t in res.tests if t.number != "0" and t not in skipped}
    failed = {n for n, t in by_number.items() if not t.passed}
    covered: set[str] = set()
    unmet = 0
    for todo in info.todos:
        nums = [str(n) for n in todo.get("tests", [])]
        covered.update(nums)
        bad = [n for n in nums if n in failed]
        if bad:
            unmet += 1
            why = by_number[bad[0]].output.strip().splitlines()
            out(f"{todo.get('id', 'TODO')} (lab {info.number}): {todo.get('text', '')} -- "
                f"{why[0] if why else 'failed'}")
    for n in sorted(failed - covered, key=number_key):
        t = by_number[n]
        why = t.output.strip().splitlines()
        out(f"test {n} (lab {info.number}): {t.name} -- {why[0] if why else 'failed'}")
    total = f"{_num(res.total)}/{_num(res.max_total)} points"
    if info.todos:
        out(f"{len(info.todos) - unmet} of {len(info.todos)} TODOs done, "
            f"{len(by_number) - len(failed)} of {len(by_number)} tests pass, {total}")
    else:
        out(f"{len(by_number) - len(failed)} of {len(by_number)} tests pass, {total}")
    if skipped:
        out(f"({len(skipped)} live test(s) not run: " + ("add --live, as root)" if not live else
                                                        "this machine cannot run the lab)"))
    return 0 if not failed else 1


def _num(x: float):
    return int(x) if float(x).is_integer() else round(float(x), 2)
