"""`nattrack grade --package gradescope|classroom`: the zip's run_autograder really runs in a
simulated /autograder (NATTRACK_AUTOGRADER_ROOT), and the Classroom template grades itself
with the command its workflow runs."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.grading.schemas import validate_gradescope

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "tests" / "grading"
LAB = GRADING / "fixture-lab"
HIDDEN = GRADING / "hidden-fixture"
SENTINEL = "HIDDEN-SENTINEL-5c1e9b"


def nattrack(*args, cwd="/"):
    return subprocess.run([sys.executable, "-m", "nattrack.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="nt-pkg-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def autograder(tmp: Path, submission: Path, hidden=True) -> Path:
    """Unzip the package as Gradescope does: ROOT/source, ROOT/submission, ROOT/results."""
    args = ["grade", "--package", "gradescope", LAB, "--out", tmp]
    r = nattrack(*args, *(["--hidden", HIDDEN] if hidden else []))
    assert r.returncode == 0, r.stderr
    zpath = Path(r.stdout.strip())
    assert zpath == tmp / "autograder-99-grader-fixture.zip"
    root = tmp / "autograder"
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        assert {"setup.sh", "run_autograder", "kit/lab/lab.toml"} <= set(names)
        assert not any("/solution/" in n or "/student/" in n for n in names)
        assert ("kit/hidden/test_hidden.py" in names) == hidden
        assert "kit/examples/rules/basic.rules" in names          # the lab's rules file
        z.extractall(root / "source")
        for info in z.infolist():                                 # zipfile drops modes
            mode = info.external_attr >> 16
            if mode:
                os.chmod(root / "source" / info.filename, mode & 0o777)
    shutil.copytree(submission, root / "submission")
    (root / "submission_metadata.json").write_text(json.dumps(
        {"users": [{"email": "ann@example.edu", "id": 4242, "name": "Ann"}]}))
    (root / "results").mkdir()
    return root


def run(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NATTRACK_AUTOGRADER_ROOT"] = str(root)
    return subprocess.run(["bash", str(root / "source" / "run_autograder")], capture_output=True,
                          text=True, timeout=180, env=env, cwd="/")


def test_setup_script_is_valid_shell(tmp):
    root = autograder(tmp, LAB / "solution")
    for name in ("setup.sh", "run_autograder"):
        path = root / "source" / name
        assert os.access(path, os.X_OK), name
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    text = (root / "source" / "setup.sh").read_text()
    assert "bubblewrap" in text and "python3.11" in text


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
    # even when its Python does not start
    (root / "results" / "results.json").unlink()
    (root / "source" / "python").write_text("/bin/false\n")
    r = run(root)
    doc = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(doc)
    assert doc["score"] == 0 and "could not run" in doc["output"]


def test_classroom_template_grades_itself(tmp):
    r = nattrack("grade", "--package", "classroom", LAB, "--out", tmp)
    assert r.returncode == 0, r.stderr
    repo = Path(r.stdout.strip())
    assert repo == tmp / "classroom-99-grader-fixture"
    assert (repo / "tcp_states.py").read_text() == (LAB / "student" / "tcp_states.py").read_text()
    assert not list(repo.rglob("solution"))
    wf = yaml.safe_load((repo / ".github" / "workflows" / "classroom.yml").read_text())
    steps = wf["jobs"]["run-autograding-tests"]["steps"]
    grade = next(s for s in steps if s.get("id") == "nattrack")
    report = next(s for s in steps if "autograding-grading-reporter" in s.get("uses", ""))
    assert report["with"]["runners"] == "nattrack"
    assert report["env"]["NATTRACK_RESULTS"] == "${{ steps.nattrack.outputs.result }}"
    # run the step's script as the runner would, with a local GITHUB_OUTPUT
    script = grade["run"].replace("${{ github.event.repository.name }}", "lab-99-ann")
    script = script.replace("sudo env", "env").replace("/usr/bin/python3", sys.executable)
    out = tmp / "github_output"
    p = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, cwd=repo,
                       timeout=120, env=dict(os.environ, GITHUB_OUTPUT=str(out)))
    assert p.returncode == 0, p.stderr
    line = out.read_text().strip()
    assert line.startswith("result=")
    payload = json.loads(base64.b64decode(line[len("result="):]))
    assert payload["version"] == 1 and payload["status"] == "fail"
    assert payload["max_score"] == 8
    assert {t["name"]: t["status"] for t in payload["tests"]}["A SYN opens SYN_SENT"] == "fail"
    assert "Score: 0.5/8" in p.stdout
    r = nattrack("grade", "--package", "classroom", LAB, "--out", tmp, "--hidden", HIDDEN)
    assert r.returncode == 2 and "nothing stays hidden" in r.stderr
