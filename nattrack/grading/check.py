"""``nattrack lab check``: a student's self-check, one line per unmet TODO or checkpoint.

It runs the lab's public tests (offline by default, ``--live`` adds the live ones when
this machine can) against the student's folder with the grader's own runner -- the same
sandboxed worker -- and maps failed tests to the manifest's ``[[todos]]``:

    TODO 2 (lab 2): next_state() -- ESTABLISHED --FIN--> ESTABLISHED, expected FIN_WAIT

A TODO is named when a failed test's output names it or a test only it lists fails (see
:func:`unmet_todos`); a failed test no TODO lists, or one shared by TODOs none of which is
otherwise unmet, is reported as ``test N``.  Exit status 0 when everything passes, 1
otherwise, 2 when the lab or folder is wrong.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..exercises.manifest import Todo
from ..exercises.testing import number_key
from .results import points
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
    failed = {n: t.output for n, t in by_number.items() if not t.passed}
    unmet, unexplained = unmet_todos(info.todos, failed)
    for todo in info.todos:
        n = unmet.get(todo.id)
        if n is not None:
            out(f"{todo.id} (lab {info.number}): {todo.text} -- {_first_line(failed[n])}")
    for n, suspects in unexplained.items():
        also = f" (it exercises {', '.join(suspects)})" if suspects else ""
        out(f"test {n} (lab {info.number}): {by_number[n].name} -- {_first_line(failed[n])}"
            f"{also}")
    done = len(info.todos) - len(unmet) - len({i for s in unexplained.values() for i in s})
    total = f"{points(res.total)}/{points(res.max_total)} points"
    if info.todos:
        out(f"{done} of {len(info.todos)} TODOs done, "
            f"{len(by_number) - len(failed)} of {len(by_number)} tests pass, {total}")
    else:
        out(f"{len(by_number) - len(failed)} of {len(by_number)} tests pass, {total}")
    if skipped:
        out(f"({len(skipped)} live test(s) not run: " + ("add --live, as root)" if not live else
                                                        "this machine cannot run the lab)"))
    return 0 if not failed else 1


def unmet_todos(todos: Sequence[Todo], failed: dict[str, str]
                ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Which ``[[todos]]`` the failed tests (number -> output) show unmet.

    A failed test whose output names TODOs (the skeleton's ``NotImplementedError("TODO 1:
    ...")``, perhaps from a function another TODO's calls) shows those unmet and blames no
    other.  Else a failed test that one TODO alone lists shows it unmet; one several TODOs
    list (a replay needs them all) is explained by any of them already unmet and blames
    none of the others.  Returns ({TODO id: the failed test that shows it}, {failed test
    explained by no unmet TODO: the TODOs that list it}).
    """
    ids = [t.id for t in todos]
    order = sorted(failed, key=number_key)
    listers = {n: [t.id for t in todos if n in t.tests] for n in order}
    named = {n: [i for i in ids if re.search(rf"(?<!\w){re.escape(i)}(?!\w)", failed[n])]
             for n in order}
    unmet: dict[str, str] = {}
    for n in order:
        for i in named[n] or (listers[n] if len(listers[n]) == 1 else []):
            unmet.setdefault(i, n)
    unexplained = {n: listers[n] for n in order
                   if not named[n] and not any(i in unmet for i in listers[n])}
    return unmet, unexplained


def _first_line(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[0] if lines else "failed"

