"""Grade one submission or a class, write every output (``nattrack grade``).

Per submission, in ``OUT/<id>/``:

- ``results.json`` -- Gradescope's format, every test with its visibility (Gradescope
  itself hides what students may not see yet);
- ``results-student.json``, ``summary.txt`` -- what the student may see now
  (:func:`~nattrack.grading.results.student_view`);
- ``junit.xml``, ``summary-full.txt`` -- everything, for the instructor.

For all of them: ``OUT/class.csv`` (one row per student and test) and ``OUT/grader.log``
(problems in the tests themselves, for the instructor).  What ``nattrack grade`` prints
(progress lines; for a single submission its student summary) never names a hidden test.

A *submission* is a folder holding the lab's files (at its top, or in its only subfolder:
a zipped folder); a folder without them whose subfolders hold them is a *class*: one
student per subfolder, named by it (a student whose folder lacks the files scores zero,
with the missing files named).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import multiprocessing.util
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .results import (Results, human_summary, points, student_view, to_csv_rows,
                      to_gradescope, to_junit_xml, write_class_csv)
from .runner import GradeError, Grader, load_lab

__all__ = ["discover", "grade_all", "write_outputs"]


def _has_files(folder: Path, files: Sequence[str]) -> bool:
    """Does ``folder`` hold one of ``files`` (a link counts: grading refuses it with its
    reason), at its top or one real folder down?  Never looks through a link."""
    if folder.is_symlink():
        return True
    return any(os.path.lexists(folder / f) for f in files) or any(
        os.path.lexists(d / f) for d in folder.iterdir() if _real_dir(d) for f in files)


def _real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def discover(paths, files: Sequence[str],
             student_id: str | None = None) -> list[tuple[str, Path, str | None]]:
    """``[(name, folder, student id)]``: each path is a submission, or a class of them (one
    per subfolder, whose name is the student id).  A single submission has a student id
    (for its variant) only when ``--student-id`` gives one; its outputs are named by it or
    by the folder."""
    out: list[tuple[str, Path, str | None]] = []
    for p in paths:
        p = Path(p).resolve()              # the teacher's own path; inside it, no link is followed
        if not p.is_dir():
            raise GradeError(f"{p}: not a folder (a submission is a folder with "
                             f"{', '.join(files)})")
        direct = any(os.path.lexists(p / f) for f in files)
        # a linked student folder is a student too: grading refuses it with its reason
        subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        members = [d for d in subs if _has_files(d, files)]
        if direct or not members or len(subs) == 1:      # one folder down: a zipped folder
            out.append((student_id or p.resolve().name, p, student_id))
        else:                       # a class: every subfolder is a student, files or not
            out.extend((d.name, d, d.name) for d in subs)
    ids = [i for i, _, _ in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise GradeError(f"two submissions share the id {sorted(dup)[0]!r}: grade them "
                         f"separately or rename a folder")
    return out


def write_outputs(out: Path, sid: str, results: Results, suite: str) -> Path:
    d = out / folder_name(sid)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)                        # one student's results: the teacher's only
    seen = student_view(results)
    (d / "results.json").write_text(json.dumps(to_gradescope(results), indent=2) + "\n")
    (d / "results-student.json").write_text(json.dumps(to_gradescope(seen), indent=2) + "\n")
    (d / "junit.xml").write_text(to_junit_xml(results, suite_name=suite))
    (d / "summary.txt").write_text(human_summary(seen))
    (d / "summary-full.txt").write_text(human_summary(results))
    return d


def folder_name(sid: str) -> str:
    """The name of a student's results folder: the id with anything unsafe in a path made '_'."""
    keep = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in sid).strip(".")
    return keep or "submission"


# --- parallel grading: one Grader per process ----------------------------------------------------

_G: dict = {}


def _init(lab, hidden, mode, log_path, unsafe_no_jail=False) -> None:
    log = open(log_path, "a", buffering=1)
    g = Grader(lab, hidden=hidden, mode=mode, log=lambda m: log.write(m + "\n"),
               unsafe_no_jail=unsafe_no_jail)
    g.live_lock = str(Path(log_path).with_name(".live.lock"))     # one lab at a time
    _G["grader"] = g
    multiprocessing.util.Finalize(g, g.close, exitpriority=10)     # its temp folder


def _grade_one(sid: str, folder: str, vid: str | None) -> tuple[str, Results]:
    g = _G["grader"]
    return sid, g.grade(folder, student_id=vid)


def grade_all(lab, paths, out, *, hidden=None, mode: str = "auto", student_id=None,
              jobs: int = 1, echo=print, unsafe_no_jail: bool = False
              ) -> list[tuple[str, Results]]:
    """Grade every submission, write every output; ``[(id, Results)]`` in input order."""
    info = load_lab(lab)
    subs = discover(paths, info.files, student_id)
    if student_id and len(subs) > 1:
        raise GradeError("--student-id names one submission; a class folder uses its "
                         "subfolders' names")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The class's log and scores are the teacher's alone: grading runs student code on
    # this machine, which may read anything others can (without a jail, only modes hold).
    log_path = out / "grader.log"
    log_path.write_text("")
    log_path.chmod(0o600)
    (out / "class.csv").touch(mode=0o600)
    (out / "class.csv").chmod(0o600)
    suite = f"lab{info.number:02d}-{info.slug}"
    done: list[tuple[str, Results]] = []
    t0 = time.monotonic()
    n = len(subs)

    def finished(i: int, sid: str, res: Results) -> None:
        write_outputs(out, sid, res, suite)
        done.append((sid, res))
        echo(f"[{len(done)}/{n}] {sid}: {points(res.total)}/{points(res.max_total)} "
             f"in {res.execution_time:.1f} s")

    jobs = max(1, min(int(jobs), len(subs), 64))
    if jobs == 1:
        with open(log_path, "a", buffering=1) as log:
            with Grader(lab, hidden=hidden, mode=mode, log=lambda m: log.write(m + "\n"),
                        unsafe_no_jail=unsafe_no_jail) as g:
                echo(f"grading {n} submission(s) of {info.label}, {g.mode} mode"
                     + (f" ({g.live_problem})" if g.live_problem and mode != "offline" else ""))
                for i, (sid, folder, vid) in enumerate(subs):
                    finished(i, sid, g.grade(folder, student_id=vid))
    else:
        ctx = multiprocessing.get_context("fork")
        echo(f"grading {n} submissions of {info.label} with {jobs} jobs")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init,
                                 initargs=(lab, hidden, mode, str(log_path),
                                           unsafe_no_jail)) as pool:
            futs = [pool.submit(_grade_one, sid, str(folder), vid) for sid, folder, vid in subs]
            for i, f in enumerate(futs):
                sid, res = f.result()
                finished(i, sid, res)
        (out / ".live.lock").unlink(missing_ok=True)
    order = {sid: i for i, (sid, _, _) in enumerate(subs)}
    done.sort(key=lambda x: order[x[0]])
    rows = [row for sid, res in done for row in to_csv_rows(sid, res)]
    write_class_csv(out / "class.csv", rows)
    echo(f"graded {n} in {time.monotonic() - t0:.1f} s: {out}/class.csv")
    if log_path.stat().st_size:
        echo(f"some tests themselves failed (not the students' fault): see {log_path}")
    if n == 1:
        echo(human_summary(student_view(done[0][1])).rstrip())
    return done
