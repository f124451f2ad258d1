"""``nattrack grade``: grade submissions of a lab, or package the grader for a platform.

The work is in :mod:`nattrack.grading.batch` (outputs), :mod:`nattrack.grading.runner`
(tests, modes, the context), :mod:`nattrack.grading.package` (Gradescope) and
:mod:`nattrack.grading.github` (a GitHub template repository).
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    """Add the `grade` subcommand to the top-level parser."""
    g = sub.add_parser(
        "grade", help="grade submissions of a lab (Gradescope, JUnit, CSV outputs)",
        description="Grade one submission (a folder with the lab's files) or a class (a folder "
                    "of student folders, each named by the student id). Student code runs in "
                    "an unprivileged sandbox, never in the grader. Exit status 0 whatever the "
                    "scores; 2 when the grader is misused.")
    g.add_argument("lab", metavar="LAB", help="the lab folder, e.g. labs/02-tcp-states")
    g.add_argument("submissions", nargs="*", metavar="SUBMISSION",
                   help="a submission folder, or a folder of them")
    g.add_argument("--out", metavar="DIR", help="where results go (default: grading-results; "
                                                "with --package: the current folder)")
    g.add_argument("--hidden", metavar="DIR", help="the instructor's hidden tests (test_*.py)")
    g.add_argument("--mode", choices=("auto", "offline", "live"), default="auto",
                   help="auto: live when this machine can (root, namespaces), else offline")
    g.add_argument("--student-id", metavar="ID",
                   help="the id of a single submission (per-student variants)")
    g.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="grade N submissions at a time (live labs still run one at a time)")
    g.add_argument("--unsafe-no-jail", action="store_true",
                   help="not root and no bwrap here: run student code as your own user, "
                        "able to read all you can (refused without this flag)")
    g.add_argument("--package", choices=("gradescope", "github", "classroom"),
                   help="instead of grading: build what a teacher uploads (gradescope: the "
                        "autograder zip; github: a template repository whose workflow grades "
                        "each push; classroom: the same as github, Classroom is gone)")
    g.set_defaults(func=_grade)


def _grade(args) -> int:
    from ..grading.batch import grade_all
    from ..grading.package import build_package
    from ..grading.runner import GradeError
    try:
        if args.package:
            if args.submissions:
                raise GradeError("--package takes no submissions: nattrack grade --package "
                                 "gradescope LAB [--out DIR]")
            print(build_package(args.package, args.lab, args.out, hidden=args.hidden))
            return 0
        if not args.submissions:
            raise GradeError("which submissions? nattrack grade LAB SUBMISSION... "
                             "(a folder, or a folder of student folders)")
        grade_all(args.lab, args.submissions, args.out or "grading-results", hidden=args.hidden,
                  mode=args.mode, student_id=args.student_id, jobs=args.jobs,
                  unsafe_no_jail=args.unsafe_no_jail)
        return 0
    except GradeError as exc:
        print(f"nattrack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
