"""`nattrack grade` and `nattrack lab check` on the grader's fixture lab (tests/grading/).

The fixture lab has a solution, a student skeleton with three TODOs, public tests (partial
credit, a per-student variant, answers read as text) and an instructor's hidden test.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nattrack.grading.runner import GradeError, Grader, load_lab
from nattrack.exercises.manifest import Todo
from tests.grading.cli import nattrack, scratch
from tests.grading.schemas import Invalid, validate_gradescope, validate_junit, xsd_validate

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "tests" / "grading"
LAB = GRADING / "fixture-lab"
HIDDEN = GRADING / "hidden-fixture"


@pytest.fixture
def tmp():
    yield from scratch("nt-grade-")


@pytest.fixture(scope="module")
def grader():
    with Grader(LAB, hidden=HIDDEN, mode="offline") as g:
        yield g


def by_number(results):
    return {t.number: t for t in results.tests}


def test_solution_full_marks_student_fails_its_todos(grader):
    sol = grader.grade(LAB / "solution")
    assert sol.total == sol.max_total == 11 and sol.failures == 0
    stu = by_number(grader.grade(LAB / "student"))
    todo_tests = {n for todo in grader.lab.todos for n in todo.tests}
    failed = {n for n, t in stu.items() if not t.passed}
    assert failed == todo_tests | {"9.1"}
    assert stu["1.1"].output == ("tcp_states.next_state raised NotImplementedError: TODO 1: "
                                 "next_state() (tcp_states.py, line 6)")
    assert stu["2.2"].score == 0.5 and stu["2.2"].output == "partial credit: 25%"
    assert stu["2.1"].output == "timeout_for('ESTABLISHED') = 0, expected 432000"


def test_probe_comes_first_and_says_the_mode(grader):
    res = grader.grade(LAB / "solution")
    probe = res.tests[0]
    assert probe.number == "0" and probe.visibility == "visible" and probe.max_score == 0
    assert probe.output.startswith("Grading mode: offline only (--mode offline)")
    assert "no network" in probe.output or "without a file-system jail" in probe.output


def test_tests_from_the_hidden_folder_are_hidden(grader):
    t = [lt for lt in grader.tests if lt.hidden_folder]
    assert [lt.spec.number for lt in t] == ["9.1"] and t[0].spec.visibility == "hidden"


def test_variants_are_deterministic_and_differ(tmp):
    lab = load_lab(LAB)
    assert lab.variant_for(None) == {}
    a, b = lab.variant_for("alice"), lab.variant_for("alice")
    assert a == b and set(a) == {"udp_timeout", "port"}
    assert a["udp_timeout"] in (20, 25, 30, 45) and 20000 <= a["port"] <= 20990
    assert a["port"] % 10 == 0
    assert len({tuple(lab.variant_for(f"s{i}").items()) for i in range(20)}) > 5
    # the student id reaches ctx.variant: an answers.txt with the right value passes
    sub = tmp / "alice"
    shutil.copytree(LAB / "solution", sub)
    (sub / "answers.txt").write_text(f"udp_timeout = {a['udp_timeout']}\n")
    r = nattrack("grade", LAB, sub, "--out", tmp / "out", "--student-id", "alice",
                 "--mode", "offline")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp / "out" / "alice" / "results.json").read_text())
    assert {t["number"]: t["status"] for t in res["tests"]}["3.1"] == "passed"
    assert f"udp_timeout={a['udp_timeout']}" in res["output"]
    other = next(i for i in range(100) if lab.variant_for(f"x{i}")["udp_timeout"]
                 != a["udp_timeout"])
    r = nattrack("grade", LAB, sub, "--out", tmp / "out2", "--student-id", f"x{other}",
                 "--mode", "offline")
    res = json.loads((tmp / "out2" / f"x{other}" / "results.json").read_text())
    t31 = {t["number"]: t for t in res["tests"]}["3.1"]
    assert t31["status"] == "failed" and "answers.txt should say udp_timeout" in t31["output"]


def test_outputs_validate_against_the_schemas(tmp):
    klass = tmp / "class"
    for name in ("solution", "student"):
        shutil.copytree(LAB / name, klass / name)
    r = nattrack("grade", LAB, klass, "--out", tmp / "out", "--hidden", HIDDEN, "--mode",
                 "offline")
    assert r.returncode == 0, r.stderr
    for sid in ("solution", "student"):
        d = tmp / "out" / sid
        validate_gradescope(json.loads((d / "results.json").read_text()))
        validate_gradescope(json.loads((d / "results-student.json").read_text()))
        validate_junit((d / "junit.xml").read_text())
        assert (d / "summary.txt").read_text().startswith("Score: ")
    rows = (tmp / "out" / "class.csv").read_text().splitlines()
    assert rows[0] == "student_id,number,name,score,max_score,status,visibility"
    assert len(rows) == 1 + 2 * 7
    assert "student,2.2,Every timeout (partial credit),0.5,2,failed,visible" in rows
    # the class's scores and log, and each student's folder, are the teacher's alone
    for p in (tmp / "out" / "class.csv", tmp / "out" / "grader.log"):
        assert p.stat().st_mode & 0o077 == 0, oct(p.stat().st_mode)
    assert (tmp / "out" / "student").stat().st_mode & 0o077 == 0


def test_the_validators_reject_bad_documents():
    with pytest.raises(Exception):
        validate_gradescope({"tests": [{"score": 1, "status": "ok"}]})
    with pytest.raises(Exception):
        validate_gradescope({"tests": [{"score": 1, "visibility": "secret"}]})
    with pytest.raises(Exception):
        validate_gradescope({"output": "no score, no tests"})
    xsd = (GRADING / "junit.xsd").read_text()
    good = ('<testsuites><testsuite name="s" tests="1"><properties><property name="a" '
            'value="1"/></properties><testcase name="t" time="0.1"><failure message="m">x'
            '</failure></testcase></testsuite></testsuites>')
    xsd_validate(good, xsd)
    for bad in (good.replace(' name="t"', ""),                               # required
                good.replace('tests="1"', 'tests="-1"'),                     # type
                good.replace('<failure', '<properties/><failure'),           # no properties
                good.replace('time="0.1"', 'time="0.1" score="2"'),          # unknown attr
                good.replace("<testsuites>", "<testsuites><bogus/>")):       # undeclared
        with pytest.raises(Invalid):
            xsd_validate(bad, xsd)


def test_offline_mode_reports_live_tests_as_not_run(tmp):
    lab = tmp / "lab"
    shutil.copytree(LAB, lab)
    (lab / "tests" / "test_live.py").write_text(
        "from nattrack.exercises.testing import test\n\n"
        "@test(points=5, number='5.1', name='Live: a ping', mode='live')\n"
        "def ping(ctx):\n"
        "    assert ctx.live.exec('h1', ['ping', '-c1', '203.0.113.10']).returncode == 0\n")
    with Grader(lab, mode="offline") as g:
        res = g.grade(lab / "solution")
    t = by_number(res)["5.1"]
    assert t.max_score == 0 and t.status == "failed" and "not-run" in t.tags
    assert t.output.startswith("not run: this is a live test (5 points when graded live)")
    assert res.total == res.max_total == 8
    assert "1 live test(s) were not run" in res.tests[0].output
    assert res.failures == 0 and res.not_run == 1
    from nattrack.grading import human_summary, to_junit_xml
    text = human_summary(res)
    assert text.startswith("Score: 8/8 (6 of 6 tests passed, 1 not run)")
    assert "  SKIP 5.1 Live: a ping (0/0): not run: this is a live test" in text
    junit = to_junit_xml(res)
    validate_junit(junit)
    assert 'skipped="1"' in junit and "<skipped message=" in junit
    from nattrack.grading.github import to_markdown
    assert "❌" not in to_markdown(res, "lab 99")          # not run is not a red failure


def test_a_test_that_breaks_is_the_instructors_problem(tmp):
    lab = tmp / "lab"
    shutil.copytree(LAB, lab)
    (lab / "tests" / "test_buggy.py").write_text(
        "from nattrack.exercises.testing import test\n\n"
        "@test(points=1, number='6.1', name='buggy')\n"
        "def buggy(ctx):\n"
        "    return {}['missing']\n\n"
        "@test(points=1, number='6.2', name='slow', timeout=1)\n"
        "def slow(ctx):\n"
        "    import time; time.sleep(5)\n\n"
        "@test(points=1, number='6.3', name='odd')\n"
        "def odd(ctx):\n"
        "    return 'yes'\n")
    r = nattrack("grade", lab, lab / "solution", "--out", tmp / "out", "--mode", "offline")
    assert r.returncode == 0, r.stderr
    res = {t["number"]: t for t in
           json.loads((tmp / "out" / "solution" / "results.json").read_text())["tests"]}
    assert res["6.1"]["output"].startswith("the test itself failed (KeyError: 'missing' at "
                                           "test_buggy.py line 5)")
    assert res["6.2"]["output"] == "timed out after 1 s"
    assert "not a fraction" in res["6.3"]["output"]
    assert "test 6.1 (test_buggy.py) raised KeyError" in (tmp / "out" / "grader.log").read_text()
    assert "see " in r.stdout and "grader.log" in r.stdout


def test_misuse_is_exit_2_with_one_line(tmp):
    cases = [
        (["grade", tmp, LAB / "solution"], "no lab.toml here"),
        (["grade", LAB], "which submissions?"),
        (["grade", LAB, tmp / "nope"], "not a folder"),
        (["grade", LAB, LAB / "solution", "--hidden", tmp / "nope"], "--hidden"),
        (["grade", "--package", "gradescope", LAB, LAB / "solution"], "--package takes no"),
    ]
    for args, text in cases:
        r = nattrack(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = tmp / "badlab"
    shutil.copytree(LAB, bad)
    (bad / "tests" / "test_dup.py").write_text(
        "from nattrack.exercises.testing import test\n\n"
        "@test(points=1, number='1.1', name='dup')\n"
        "def dup(ctx):\n    pass\n")
    with pytest.raises(GradeError, match="test number 1.1 is also used"):
        Grader(bad)


def test_a_class_folder_and_a_zip_of_a_folder(tmp):
    klass = tmp / "class"
    shutil.copytree(LAB / "solution", klass / "ann" / "lab99")      # one folder down
    shutil.copytree(LAB / "student", klass / "bob")
    (klass / "cy").mkdir()                                            # handed in nothing
    (klass / "cy" / "tcp_state.py").write_text("typo in the name\n")
    r = nattrack("grade", LAB, klass, "--out", tmp / "out", "--mode", "offline", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp / "out").iterdir() if p.is_dir()) == ["ann", "bob", "cy"]
    ann = json.loads((tmp / "out" / "ann" / "results.json").read_text())
    assert sum(t["score"] for t in ann["tests"]) == 7                 # 3.1: ann's variant
    cy = json.loads((tmp / "out" / "cy" / "results.json").read_text())
    assert sum(t["score"] for t in cy["tests"]) == 0
    assert "Missing from your submission: tcp_states.py, answers.txt" in cy["output"]
    assert "your submission has no tcp_states.py" in cy["tests"][1]["output"]
    assert "[3/3]" in r.stdout
    # a single submission zipped as a folder: its only subfolder holds the files
    single = tmp / "single"
    shutil.copytree(LAB / "solution", single / "lab99")
    r = nattrack("grade", LAB, single, "--out", tmp / "out1", "--mode", "offline")
    res = json.loads((tmp / "out1" / "single" / "results.json").read_text())
    assert sum(t["score"] for t in res["tests"]) == 8


def test_lab_check_names_each_unmet_todo(tmp):
    r = nattrack("lab", "check", LAB)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines == [
        "TODO 1 (lab 99): next_state(): the transitions -- tcp_states.next_state raised "
        "NotImplementedError: TODO 1: next_state() (tcp_states.py, line 6)",
        "TODO 2 (lab 99): timeout_for(): the timeouts -- timeout_for('ESTABLISHED') = 0, "
        "expected 432000",
        "TODO 3 (lab 99): answers.txt: your UDP timeout -- answers.txt still has a question mark",
        "0 of 3 TODOs done, 0 of 5 tests pass, 0.5/8 points",
    ]
    sub = tmp / "mine"
    shutil.copytree(LAB / "student", sub)
    shutil.copy(LAB / "solution" / "tcp_states.py", sub)
    r = nattrack("lab", "check", "--dir", sub, cwd=LAB)               # the lab from the cwd
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [
        "TODO 3 (lab 99): answers.txt: your UDP timeout -- answers.txt still has a question mark",
        "2 of 3 TODOs done, 4 of 5 tests pass, 7/8 points"]
    r = nattrack("lab", "check", "--dir", LAB / "solution", cwd=LAB / "student")
    assert r.returncode == 0 and r.stdout.strip() == "3 of 3 TODOs done, 5 of 5 tests pass, 8/8 points"
    r = nattrack("lab", "check", cwd=tmp)
    assert r.returncode == 2 and "which lab?" in r.stderr


def test_without_bwrap_the_sandbox_still_holds(monkeypatch):
    """Where bwrap cannot build a jail (a container without user namespaces), the worker
    runs with the uid, no_new_privs and limits alone, and says so in the probe."""
    from nattrack.grading import sandbox
    monkeypatch.setitem(sandbox._BWRAP_CACHE, os.geteuid() == 0, "disabled by the test")
    with Grader(LAB, mode="offline") as g:
        sol = g.grade(LAB / "solution")
        assert sol.total == sol.max_total == 8
        assert "without a file-system jail (disabled by the test)" in sol.tests[0].output
        loop = by_number(g.grade(GRADING / "hostile" / "loop"))
        assert "did not finish within 2 s" in loop["1.1"].output
        assert loop["2.1"].passed
        if os.geteuid() == 0:
            snoop = by_number(g.grade(GRADING / "hostile" / "snoop"))["1.1"].output
            assert "denied /etc/shadow: Permission denied" in snoop
            assert "denied /proc/1/environ: Permission denied" in snoop


# --- test numbers: any text, natural order -------------------------------------------------------

def test_number_key_sorts_naturally_and_never_compares_int_with_str():
    from nattrack.exercises.testing import number_key
    numbers = ["H.10", "2.10", "h.2", "10", "2.9", "H.1", "2", "1.1a", "1.1", "", "x²", "2.9.1"]
    assert sorted(numbers, key=number_key) == [
        "", "1.1", "1.1a", "2", "2.9", "2.9.1", "2.10", "10", "H.1", "h.2", "H.10", "x²"]
    assert number_key("02") != number_key("2")            # a total order: ties broken by text


HIDDEN_NUMBERS = """\
from nattrack.exercises.testing import test

@test(points=1, number="H.1", name="hidden H.1", visibility="hidden", mode="offline")
def h1(ctx):
    pass

@test(points=1, number="2.10", name="hidden 2.10", visibility="hidden", mode="offline")
def t210(ctx):
    pass

@test(points=1, number="10", name="hidden 10", visibility="hidden", mode="offline")
def t10(ctx):
    pass

@test(points=1, number="H.2b", name="hidden H.2b", visibility="hidden", mode="offline")
def h2b(ctx):
    assert False, "no"
"""


def test_hidden_tests_numbered_with_letters_load_and_grade_in_natural_order(tmp):
    hidden = tmp / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "test_numbers.py").write_text(HIDDEN_NUMBERS)
    with Grader(LAB, hidden=hidden, mode="offline") as g:
        assert [t.spec.number for t in g.tests] == [
            "1.1", "1.2", "2.1", "2.2", "2.10", "3.1", "10", "H.1", "H.2b"]
        res = g.grade(LAB / "solution")
    assert [t.number for t in res.tests] == [
        "0", "1.1", "1.2", "2.1", "2.2", "2.10", "3.1", "10", "H.1", "H.2b"]
    assert by_number(res)["H.2b"].output == "no" and res.total == 8 + 3


# --- lab check names the TODO that is really unmet ----------------------------------------------

def test_unmet_todos_blames_a_shared_test_on_the_todo_really_unmet():
    from nattrack.grading.check import unmet_todos
    todos = [Todo("TODO 1", "", ("4.1", "4.4")), Todo("TODO 2", "", ("4.2", "4.4")),
             Todo("TODO 3", "", ("4.3", "4.4")), Todo("TODO 10", "", ("4.10",))]
    # only TODO 3 undone: its own test and the shared replay fail
    assert unmet_todos(todos, {"4.3": "wrong sum", "4.4": "event #2 differs"}) == (
        {"TODO 3": "4.3"}, {})
    # the shared test's output names its TODO (the skeleton's NotImplementedError)
    assert unmet_todos(todos, {"4.4": "raised NotImplementedError: TODO 2: pick_port()"}) == (
        {"TODO 2": "4.4"}, {})
    assert unmet_todos(todos, {"4.10": "raised NotImplementedError: TODO 10: x()"}) == (
        {"TODO 10": "4.10"}, {})                      # "TODO 1" is not "TODO 10"
    # TODO 2's own test fails in TODO 1's stub (pick_port() calls port_range()): TODO 1's
    assert unmet_todos(todos, {"4.2": "pick_port raised NotImplementedError: TODO 1: x()"}) == (
        {"TODO 1": "4.2"}, {})
    # a shared failure nothing else explains: reported with the TODOs it exercises
    assert unmet_todos(todos, {"4.4": "event #2 differs", "7.1": "?"}) == (
        {}, {"4.4": ["TODO 1", "TODO 2", "TODO 3"], "7.1": []})


def _functions(src: str) -> dict[str, str]:
    import ast
    lines = src.splitlines(keepends=True)
    return {n.name: "".join(lines[n.lineno - 1:n.end_lineno]) for n in ast.parse(src).body
            if isinstance(n, ast.FunctionDef)}


def _with_todos_undone(lab_dir: Path, undone: list[Todo], dest: Path) -> Path:
    """The lab's solution with the functions ``undone`` TODOs name (``next_state()`` in
    their text) put back as the skeleton has them."""
    import re
    shutil.copytree(lab_dir / "solution", dest)
    for f in load_lab(lab_dir).files:
        sol, stub = _functions((lab_dir / "solution" / f).read_text()), _functions(
            (lab_dir / "student" / f).read_text())
        text = (dest / f).read_text()
        for todo in undone:
            for name in re.findall(r"(\w+)\(\)", todo.text):
                if name in sol and name in stub:
                    text = text.replace(sol[name], stub[name])
        (dest / f).write_text(text)
    return dest


@pytest.mark.parametrize("lab", ["02-tcp-states", "03-udp-icmp", "04-snat", "05-timeouts-gc"])
def test_lab_check_names_exactly_the_undone_todos(lab, tmp):
    """Each lab's solution with one TODO undone, then with only one done: `lab check`
    names the undone TODOs and no other (lab 4 blamed TODO 1 for an undone TODO 3)."""
    from nattrack.grading.check import lab_check
    lab_dir = REPO / "labs" / lab
    todos = load_lab(lab_dir).todos
    cases = [[t] for t in todos] + ([[t for t in todos if t is not d] for d in todos]
                                    if len(todos) > 2 else [])
    for i, undone in enumerate(cases):
        sub = _with_todos_undone(lab_dir, undone, tmp / f"sub{i}")
        lines: list[str] = []
        assert lab_check(str(lab_dir), str(sub), out=lines.append) == 1
        named = [l.split(" (lab")[0] for l in lines if " (lab " in l]
        assert named == [t.id for t in undone], lines
        assert f"{len(todos) - len(undone)} of {len(todos)} TODOs done" in lines[-2], lines


HIDDEN_PARTIAL = """\
from nattrack.exercises.checks import partial_credit
from nattrack.exercises.testing import test

@test(points=2, number="H.1", name="hidden partial", visibility="hidden", mode="offline")
def hidden_partial(ctx):
    return partial_credit([("next_state('SECRET-INPUT-7f3a')", 1, 2), ("fine", 1, 1)])
"""


def test_a_hidden_tests_partial_credit_names_its_cases_to_the_teacher_only(tmp):
    from nattrack.grading.batch import grade_all
    hidden = tmp / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "test_partial.py").write_text(HIDDEN_PARTIAL)
    [(sid, res)] = grade_all(LAB, [LAB / "solution"], tmp / "out", hidden=hidden,
                             mode="offline", echo=lambda *_: None)
    h1 = by_number(res)["H.1"]
    assert h1.score == 1 and h1.output == ("1 of 2 cases right; first wrong: "
                                           "next_state('SECRET-INPUT-7f3a'): yours 1, expected 2")
    d = tmp / "out" / sid
    assert "SECRET-INPUT" in (d / "results.json").read_text()        # the teacher's
    for name in ("results-student.json", "summary.txt"):                 # the student's
        assert "SECRET-INPUT" not in (d / name).read_text(), name
