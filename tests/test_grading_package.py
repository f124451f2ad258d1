"""`nattrack grade --package gradescope`: the zip's run_autograder really runs in a
simulated /autograder (NATTRACK_AUTOGRADER_ROOT) the way Gradescope runs it -- the copy in
ROOT/run_autograder, from ROOT.  tests/test_gradescope_container.py runs the zip in an
emulated Gradescope container; tests/test_grading_github.py covers --package github."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.grading.cli import nattrack, scratch
from tests.grading.schemas import validate_gradescope

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "tests" / "grading"
LAB = GRADING / "fixture-lab"
HIDDEN = GRADING / "hidden-fixture"
SENTINEL = "HIDDEN-SENTINEL-5c1e9b"


@pytest.fixture
def tmp():
    yield from scratch("nt-pkg-")


def autograder(tmp: Path, submission: Path, hidden=True) -> Path:
    """Unzip the package as Gradescope does: ROOT/source, ROOT/submission, ROOT/results."""
    args = ["grade", "--package", "gradescope", LAB, "--out", tmp]
    r = nattrack(*args, *(["--hidden", HIDDEN] if hidden else []))
    assert r.returncode == 0, r.stderr
    # the teacher is told the assignment's total there: offline tests only (all of them here)
    total = 11 if hidden else 8
    note = (f"on Gradescope lab 99 (grader-fixture) grades offline only: set the assignment's "
            f"autograder points to {total}")
    assert note in r.stderr
    zpath = Path(r.stdout.strip())
    assert zpath == tmp / "autograder-99-grader-fixture.zip"
    root = tmp / "autograder"
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        assert {"setup.sh", "run_autograder", "kit/lab/lab.toml"} <= set(names)
        assert not any("/solution/" in n or "/student/" in n for n in names)
        assert ("kit/hidden/test_hidden.py" in names) == hidden
        assert "kit/examples/rules/basic.rules" in names          # the lab's rules file
        assert note in z.read("README.txt").decode()
        z.extractall(root / "source")
        for info in z.infolist():                                 # zipfile drops modes
            mode = info.external_attr >> 16
            if mode:
                os.chmod(root / "source" / info.filename, mode & 0o777)
    # Gradescope's image build: `cp /autograder/source/run_autograder /autograder/run_autograder`
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    shutil.copytree(submission, root / "submission")
    (root / "submission_metadata.json").write_text(json.dumps(
        {"users": [{"email": "ann@example.edu", "id": 4242, "name": "Ann"}]}))
    (root / "results").mkdir()
    return root


def run(root: Path, script: str = "run_autograder") -> subprocess.CompletedProcess:
    """Run ROOT/run_autograder (Gradescope's copy) from ROOT, as Gradescope does."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NATTRACK_AUTOGRADER_ROOT"] = str(root)
    return subprocess.run([str(root / script)], capture_output=True, text=True, timeout=180,
                          env=env, cwd=root)


def test_setup_script_is_valid_shell(tmp):
    root = autograder(tmp, LAB / "solution")
    for name in ("setup.sh", "run_autograder"):
        path = root / "source" / name
        assert os.access(path, os.X_OK), name
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    text = (root / "source" / "setup.sh").read_text()
    assert "python3.11" in text and "setpriv" in text           # Ubuntu 22.04's Python is 3.10
    # live grading cannot run on Gradescope: nothing of it is installed there
    installs = " ".join(line for line in text.splitlines() if "apt-get install" in line)
    assert "python3" in installs and "util-linux" in installs
    for tool in ("mininet", "iptables", "bubblewrap", "conntrack"):
        assert tool not in installs, tool


def test_run_autograder_grades_a_submission(tmp):
    root = autograder(tmp, LAB / "solution")
    r = run(root)
    assert r.returncode == 0, r.stderr
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    tests = {t["number"]: t for t in doc["tests"]}
    assert tests["0"]["visibility"] == "visible" and "Grading mode" in tests["0"]["output"]
    assert tests["9.1"]["visibility"] == "hidden" and tests["9.1"]["status"] == "passed"
    # the student id from submission_metadata.json chose the variant
    assert "Your variant: udp_timeout=" in doc["output"]
    assert sum(t["score"] for t in doc["tests"]) == 10          # 3.1 needs ann's variant
    assert SENTINEL not in r.stdout                               # stdout: hidden anyway
    # without a jail only permissions would keep student code from these
    for p in (root / "source" / "kit" / "hidden", root / "results"):
        assert p.stat().st_mode & 0o777 == 0o700, p


def test_run_autograder_always_writes_results(tmp):
    root = autograder(tmp, LAB / "student", hidden=False)
    (root / "source" / "kit" / "lab" / "lab.toml").unlink()       # a broken kit
    r = run(root)
    assert r.returncode == 0
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    assert doc["score"] == 0 and "The autograder failed" in doc["output"]
    # even when its Python does not start, and the message names what really happened
    (root / "source" / "python").write_text("/bin/false\n")
    r = run(root)
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    assert doc["score"] == 0
    assert "could not run: /bin/false exited with status 1: no error message" in doc["output"]
    (root / "source" / "python").write_text("/nonexistent/python3.11\n")
    doc = _run_and_read(root)
    assert "could not run: no Python at '/nonexistent/python3.11' (did setup.sh" in doc["output"]
    # a kit that does not import: its error's last line, quotes and all, in valid JSON
    (root / "source" / "python").write_text(sys.executable + "\n")
    init = root / "source" / "kit" / "nattrack" / "__init__.py"
    init.write_text('raise RuntimeError("kit \\"broken\\" \\\\ here")\n' + init.read_text())
    doc = _run_and_read(root)
    assert 'exited with status 1: RuntimeError: kit "broken" \\ here.' in doc["output"]
    # the zip unpacked elsewhere: the copy finds no kit and says so
    shutil.move(root / "source", root / "elsewhere")
    doc = _run_and_read(root)
    assert f"could not run: no kit in {root}/source" in doc["output"]


def _run_and_read(root: Path) -> dict:
    r = run(root)
    assert r.returncode == 0
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    assert doc["score"] == 0 and "not about your code" in doc["output"]
    return doc


def test_run_autograder_runs_beside_its_kit_too(tmp):
    """The zip's own run_autograder (source/) works as well as Gradescope's copy."""
    root = autograder(tmp, LAB / "solution", hidden=False)
    (root / "run_autograder").unlink()
    r = run(root, "source/run_autograder")
    assert r.returncode == 0, r.stderr
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    assert sum(t["score"] for t in doc["tests"]) == 7          # 3.1 needs ann's variant


def test_live_tests_not_run_are_not_red():
    """Offline only, a live test is neither passed nor failed on Gradescope (no status: its
    0/0 is not shown red) and the top-level output says the score leaves it out."""
    from nattrack.grading.results import Results, TestResult, to_gradescope
    res = Results(tests=[
        TestResult(name="offline", number="1.1", score=2, max_score=2, status="passed"),
        TestResult(name="live", number="1.2", score=0, max_score=0, status="failed",
                   output="not run: this is a live test", tags=["not-run"])],
        output="lab 99")
    doc = to_gradescope(res)
    validate_gradescope(doc)
    assert doc["tests"][0]["status"] == "passed" and "status" not in doc["tests"][1]
    assert doc["output"] == ("lab 99\nGraded offline only: 1 live test(s) could not run here "
                             "and count for nothing; this score is out of the other tests' "
                             "2 points.")
    res.tests.pop()
    assert to_gradescope(res)["output"] == "lab 99"
