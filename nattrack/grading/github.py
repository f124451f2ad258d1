"""Grading on GitHub without Classroom: the student's template repository and its workflow.

``nattrack grade --package github LAB [--out DIR]`` writes ``github-NN-slug/``, a template
repository: the student's skeleton, the lab's README (and how to check and grade there,
:data:`README_NOTE`), the kit in ``.nattrack/kit`` and
``.github/workflows/grade.yml`` (:data:`WORKFLOW`), a plain GitHub Actions workflow that
uses only ``actions/checkout`` and ``actions/upload-artifact``.  On each push it runs
``nattrack grade`` with sudo on ``ubuntu-latest`` (live when the runner can build the lab),
then ``python3 -m nattrack.grading.github report`` (:func:`report`), which writes

- the score and a table of the tests into ``$GITHUB_STEP_SUMMARY`` (:func:`to_markdown`);
- one annotation with the score (a notice at full marks, else a warning);
- ``score`` and ``max-score`` into ``$GITHUB_OUTPUT``;
- the artifact folder: ``results.json`` (Gradescope's format), ``junit.xml`` and
  ``result.json`` in Classroom 50's format (:func:`to_classroom50`).

The check status: the job is green when grading ran, whatever the score, and red when the
grader could not run -- a red X then means "look at the log", never "your code is wrong".
A teacher who wants red until full marks sets ``FAIL_BELOW_MAX: "true"`` in the workflow.

Scores computed in the student's own repository are self-reported: the student controls the
workflow and every file in it.  Teachers regrade with ``nattrack grade`` (docs/github.md).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .results import Results, TestResult, student_view
from .results import points
from .runner import GradeError, load_lab

__all__ = ["WORKFLOW", "build_template", "results_from_gradescope", "to_markdown",
           "to_classroom50", "report"]

# actions/checkout and actions/upload-artifact: v7 is the newest major of both (their
# release tags), the only actions used.  No expression is interpolated into a script
# (`${{ }}` in `run:` is how workflows get injected): the scripts read the runner's own
# environment variables, so the tests run them unchanged.
WORKFLOW = """\
# Grades every push with nattrack (made by `nattrack grade --package github`).
# The score shown here is self-reported: you control this repository, so your teacher
# regrades the class with `nattrack grade` on clones of the repositories.
name: nattrack grade
on:
  push:
  workflow_dispatch:
permissions:
  contents: read
concurrency:
  group: nattrack-grade-${{ github.ref }}
  cancel-in-progress: true
env:
  NATTRACK_MODE: auto        # auto: live when the runner can build the lab; or offline
  FAIL_BELOW_MAX: "false"    # "true": the check stays red until full marks
jobs:
  grade:
    runs-on: ubuntu-latest
    timeout-minutes: 20
    steps:
      - uses: actions/checkout@v7
        with:
          persist-credentials: false
      - name: Install the lab's tools
        run: |
          sudo apt-get update -qq
          sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
              python3-scapy bubblewrap mininet iproute2 iptables conntrack curl ethtool \\
              tcpdump iputils-ping
          # Ubuntu 24.04 keeps unprivileged user namespaces from bwrap, the grader's jail.
          sudo sysctl -qw kernel.apparmor_restrict_unprivileged_userns=0 || true
      - name: Grade
        id: grade
        run: |
          out="$RUNNER_TEMP/nattrack"
          sudo env PYTHONPATH="$PWD/.nattrack/kit" python3 -m nattrack.cli.main \\
              grade .nattrack/kit/lab . --out "$out" --mode "$NATTRACK_MODE" \\
              --student-id "${GITHUB_REPOSITORY/\\//-}"
          sudo chown -R "$(id -u):$(id -g)" "$out"
      - name: Score
        id: score
        if: ${{ !cancelled() }}
        run: |
          PYTHONPATH="$PWD/.nattrack/kit" python3 -m nattrack.grading.github report \\
              .nattrack/kit/lab "$RUNNER_TEMP/nattrack" "$RUNNER_TEMP/nattrack-results"
      - name: Upload the results
        if: ${{ !cancelled() }}
        uses: actions/upload-artifact@v7
        with:
          name: nattrack-results
          path: ${{ runner.temp }}/nattrack-results/
          if-no-files-found: warn     # nothing to upload when the Grade step failed
"""


# Appended to the lab's README in the template: there the files are at the top, not in
# student/, and there is no Makefile.
README_NOTE = """
## Grading in this repository

Every push runs `.github/workflows/grade.yml`. The Actions tab shows each run: its summary
has your score and one line per test, with why it failed. That score is feedback: you
control this repository, so your teacher grades by running the tests again.

Here your files are at the top of the repository (not in `student/`). The lab's own check
runs with:

    PYTHONPATH=.nattrack/kit python3 -m nattrack.cli.main lab check .nattrack/kit/lab --dir .
"""


def build_template(info, out: Path, kit) -> Path:
    """``OUT/github-NN-slug/``: the student's files, the lab README, the kit, the workflow.

    ``kit(dest, lab_dir, hidden)`` builds ``dest/kit`` (package.py's ``_kit``)."""
    repo = Path(out) / f"github-{info.number:02d}-{info.slug}"
    if repo.exists():
        raise GradeError(f"{repo} exists: remove it or choose another --out")
    student = info.dir / "student"
    if not student.is_dir():
        raise GradeError(f"{student}: the lab has no student/ skeleton to start from")
    try:
        shutil.copytree(student, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        readme = info.dir / "README.md"
        text = (readme.read_text() if readme.is_file()
                else f"# Lab {info.number:02d}: {info.title}\n")
        (repo / "README.md").write_text(text.rstrip("\n") + "\n" + README_NOTE)
        kit(repo / ".nattrack", info.dir, None)
        wf = repo / ".github" / "workflows"
        wf.mkdir(parents=True)
        (wf / "grade.yml").write_text(WORKFLOW)
    except BaseException:
        shutil.rmtree(repo, ignore_errors=True)      # no half-built template left to trip on
        raise
    return repo


# --- reading the grader's results back -------------------------------------------------------

def results_from_gradescope(doc: dict) -> Results:
    """The :class:`Results` a ``results.json`` (``to_gradescope``) was written from."""
    tests = [TestResult(name=t["name"], number=t.get("number", ""), score=t.get("score", 0),
                        max_score=t.get("max_score", 0), status=t.get("status", "failed"),
                        output=t.get("output", ""), visibility=t.get("visibility", "visible"),
                        tags=t.get("tags", []),
                        output_format=t.get("output_format", "text"))
             for t in doc.get("tests", [])]
    return Results(tests=tests, execution_time=doc.get("execution_time", 0.0),
                   output=doc.get("output", ""), score=doc.get("score"),
                   visibility=doc.get("visibility", "visible"),
                   stdout_visibility=doc.get("stdout_visibility", "hidden"))


# --- the job summary ---------------------------------------------------------------------------

def _cell(text: str, limit: int = 200) -> str:
    """One Markdown table cell: one line, no pipe that would split the row, no HTML."""
    line = " ".join(text.split())
    if len(line) > limit:
        line = line[:limit - 1] + "…"
    return (line.replace("\\", "\\\\").replace("|", "\\|")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _mark(t: TestResult) -> str:
    return "⏭️ not run" if t.not_run else "✅ passed" if t.passed else "❌ failed"


def to_markdown(results: Results, title: str) -> str:
    """The job summary: the score, then one table row per test (what failed, first line)."""
    ran = len(results.tests) - results.not_run
    lines = [f"## {_cell(title)}: {points(results.total)}/{points(results.max_total)} points", "",
             f"{ran - results.failures} of {ran} tests passed"
             + (f", {results.not_run} not run here" if results.not_run else "") + ".", "",
             "| Test | Result | Points | Why |", "|---|---|---:|---|"]
    for i, t in enumerate(results.tests, 1):
        why = t.output.strip().splitlines()[0] if (not t.passed and t.output.strip()) else ""
        lines.append(f"| {_cell(t.number or str(i))} {_cell(t.name)} | {_mark(t)} "
                     f"| {points(t.score)}/{points(t.max_score)} | {_cell(why)} |")
    if results.output.strip():
        lines += ["", "```text", results.output.strip().replace("```", "'''"), "```"]
    lines += ["", "_Self-reported: graded by this repository's own workflow. "
                  "Your teacher's grade comes from regrading with `nattrack grade`._", ""]
    return "\n".join(lines)


# --- Classroom 50 ----------------------------------------------------------------------------

# Classroom 50's `result.json` contract, schema "classroom50/result/v1": foundation50/classroom50,
# wiki/Advanced-Autograding.md, "The result.json contract" (commit 6b0b83cf): required
# schema, classroom, assignment, submission, commit, release, review (strings), datetime (the
# graded commit's committer date, UTC ISO 8601), score and max-score (int: the sums of the
# tests'), tests [{test-name, passed, score, max-score}] (extra fields kept verbatim);
# optional graded_at.  Its runner provides CLASSROOM, ASSIGNMENT, SUBMISSION_TAG, COMMIT_URL,
# RELEASE_URL, REVIEW_URL and stamps owner and assignment_type itself.
CLASSROOM50_SCHEMA = "classroom50/result/v1"


def _utc(ts: datetime.datetime) -> str:
    return ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _commit_date(cwd: str | None = None) -> str | None:
    """The checked-out commit's committer date in UTC, or None outside a git work tree."""
    try:
        p = subprocess.run(["git", "log", "-1", "--format=%cI"], capture_output=True,
                           text=True, timeout=10, cwd=cwd)
        return _utc(datetime.datetime.fromisoformat(p.stdout.strip())) if p.returncode == 0 \
            else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def to_classroom50(results: Results, assignment: str, env=None, cwd=None) -> dict:
    """``result.json`` for Classroom 50 (its contract above).

    Its points are whole numbers: a test's partial credit is rounded down (an imperfect
    test never shows full marks), the exact points stay in the test's ``points`` field.
    Tests not run here (0/0, e.g. live tests offline) are left out: they are worth nothing
    and are not failures.  Identity fields come from Classroom 50's runner when it runs us,
    else from the GitHub Actions variables (a plain workflow)."""
    env = os.environ if env is None else env
    server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    commit = env.get("COMMIT_URL") or (
        f"{server}/{env.get('GITHUB_REPOSITORY', '')}/commit/{env.get('GITHUB_SHA', '')}")
    tests = [{"test-name": f"{t.number} {t.name}".strip(), "passed": t.passed,
              "score": math.floor(t.score + 1e-9), "max-score": math.floor(t.max_score + 1e-9),
              "points": points(t.score)}
             for t in results.tests if not t.not_run]
    now = _utc(datetime.datetime.now(datetime.timezone.utc))
    return {
        "schema": CLASSROOM50_SCHEMA,
        "classroom": env.get("CLASSROOM") or env.get("GITHUB_REPOSITORY_OWNER") or "local",
        "assignment": env.get("ASSIGNMENT") or assignment,
        "submission": env.get("SUBMISSION_TAG") or env.get("GITHUB_REF_NAME")
        or env.get("GITHUB_SHA") or "local",
        "commit": commit,
        "release": env.get("RELEASE_URL") or commit,
        "review": env.get("REVIEW_URL") or commit,
        "datetime": _commit_date(cwd) or now,
        "graded_at": now,
        "score": sum(t["score"] for t in tests),
        "max-score": sum(t["max-score"] for t in tests),
        "tests": tests,
    }


# --- the workflow's Score step -------------------------------------------------------------------

def _annotation(kind: str, title: str, text: str) -> str:
    """A workflow command (``::notice title=...::text``), its data escaped as the runner wants."""
    def esc(s: str) -> str:
        return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{kind} title={esc(title).replace(':', '%3A').replace(',', '%2C')}::{esc(text)}"


def _append(path: str | None, text: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def report(lab, out_dir, artifact_dir, env=None, echo=print) -> int:
    """The Score step: read what ``nattrack grade LAB`` wrote in ``OUT`` (one submission),
    write the job summary, the annotation, ``$GITHUB_OUTPUT`` and the artifact folder.
    Exit status 1 when grading did not run (or, with ``FAIL_BELOW_MAX=true``, below full
    marks), else 0."""
    env = os.environ if env is None else env
    out, art = Path(out_dir), Path(artifact_dir)
    summary = env.get("GITHUB_STEP_SUMMARY")
    found = sorted(p.parent for p in out.glob("*/results.json")) if out.is_dir() else []
    if len(found) != 1:
        why = (f"{out}: no results (the Grade step failed: see its log)" if not found else
               f"{out}: results for {len(found)} submissions, expected one")
        echo(_annotation("error", "nattrack", why))
        _append(summary, f"## nattrack: no score\n\n{_cell(why)}\n")
        return 1
    d = found[0]
    info = load_lab(lab)
    seen = student_view(results_from_gradescope(json.loads((d / "results.json").read_text())))
    _append(summary, to_markdown(seen, f"Lab {info.number:02d}: {info.title}"))
    art.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "junit.xml"):
        shutil.copyfile(d / name, art / name)
    (art / "result.json").write_text(json.dumps(
        to_classroom50(seen, f"{info.number:02d}-{info.slug}", env), indent=2,
        ensure_ascii=False) + "\n")
    score, top = points(seen.total), points(seen.max_total)
    _append(env.get("GITHUB_OUTPUT"), f"score={score}\nmax-score={top}\n")
    full_marks = seen.total >= seen.max_total
    if full_marks:
        echo(_annotation("notice", "Score", f"{score}/{top}: full marks"))
    else:
        echo(_annotation("warning", "Score", f"{score}/{top}: {seen.failures} test(s) "
                         f"failed (the job summary says which)"))
    if not full_marks and env.get("FAIL_BELOW_MAX", "false").strip().lower() == "true":
        echo("FAIL_BELOW_MAX is true: the check fails until full marks")
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 4 and argv[0] == "report":
        try:
            return report(*argv[1:])
        except GradeError as exc:
            print(f"nattrack: {exc}", file=sys.stderr)
            return 2
    print("usage: python -m nattrack.grading.github report LAB OUT ARTIFACT_DIR",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
