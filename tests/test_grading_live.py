"""Live grading (root): the grader starts a lab whose router runs the submission, the test
drives traffic from a host and reads the tracker's table, and the lab is torn down."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "tests" / "grading" / "fixture-lab"
ROOT = os.geteuid() == 0
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

LIVE_TESTS = """\
from nattrack.exercises.testing import test


@test(points=3, number="5.1", name="Live: a ping from h1 is tracked and NATed", mode="live",
      timeout=60)
def ping(ctx):
    lab = ctx.live
    r = lab.exec("h1", ["ping", "-c", "1", "-W", "2", "203.0.113.10"], timeout=10)
    assert r.returncode == 0, f"ping through the router failed (status {r.returncode})"
    entries = [e for e in lab.list_json({"proto": "icmp"}) if e["orig"]["src"] == "10.0.0.10"]
    assert entries, "no ICMP entry for h1's ping in the router's table"
    assert ctx.mode == "live"
    assert ctx.call("tcp_states.next_state", "NONE", "ORIGINAL", "SYN") == "SYN_SENT"


@test(points=1, number="5.2", name="Live: the submission runs unprivileged", mode="live")
def unprivileged(ctx):
    st = ctx.live.status()
    router = st["routers"]["r"]
    assert router.get("alive", True), "the router process is not running"
    assert st["mode"] == "python"


@test(points=1, number="5.3", name="Live: a test that needs the kernel forwarding gets it",
      mode="live", lab_mode="kernel", timeout=60)
def kernel_mode(ctx):
    lab = ctx.live
    assert lab.status()["mode"] == "kernel"
    r = lab.exec("h1", ["ping", "-c", "1", "-W", "2", "203.0.113.10"], timeout=10)
    assert r.returncode == 0, f"ping through the kernel failed (status {r.returncode})"

"""


def _lab_processes(prefix: str) -> list[int]:
    from nattrack.lab.procs import environ_marker, pids
    return [p for p in pids() if (environ_marker(p) or "").startswith(prefix)]


@pytest.fixture
def lab_copy():
    if not ROOT:
        if CI:
            pytest.fail("live grading needs root (CI must run as root)", pytrace=False)
        pytest.skip("live grading needs root")
    d = Path(tempfile.mkdtemp(prefix="nt-live-"))
    os.chmod(d, 0o755)
    shutil.copytree(LAB, d / "lab")
    (d / "lab" / "tests" / "test_live.py").write_text(LIVE_TESTS)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_live_grading_runs_the_lab_and_cleans_up(lab_copy):
    tmpdir = lab_copy / "tmp"
    tmpdir.mkdir(mode=0o755)
    out = lab_copy / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmpdir), GRADER_SECRET="x")
    r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", str(lab_copy / "lab"),
                        str(LAB / "solution"), str(LAB / "student"), "--out", str(out),
                        "--mode", "live"], capture_output=True, text=True, timeout=300,
                       env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "live mode" in r.stdout
    sol = {t["number"]: t for t in json.loads((out / "solution" / "results.json")
                                              .read_text())["tests"]}
    assert sol["0"]["output"].startswith("Grading mode: live and offline")
    assert sol["5.1"]["status"] == "passed", sol["5.1"]["output"]
    assert sol["5.2"]["status"] == "passed", sol["5.2"]["output"]
    # 5.3 needs the lab's router in kernel mode: the grader ran it last, in a lab of its own
    assert sol["5.3"]["status"] == "passed", sol["5.3"]["output"]
    assert all(t["status"] == "passed" for t in sol.values()), \
        {n: t["output"] for n, t in sol.items() if t["status"] != "passed"}
    stu = {t["number"]: t for t in json.loads((out / "student" / "results.json")
                                              .read_text())["tests"]}
    # the ping passes through the router, then the submission's next_state() fails
    assert stu["5.1"]["status"] == "failed"
    assert "NotImplementedError: TODO 1" in stu["5.1"]["output"]
    assert stu["5.2"]["status"] == "passed" and stu["5.3"]["status"] == "passed"
    for sid in ("solution", "student"):              # one student's results: the teacher's
        assert (out / sid).stat().st_mode & 0o777 == 0o700
    # the labs are gone: no process of theirs, no run dir, no temp files
    assert _lab_processes(f"{tmpdir}/ntgrade-lab-") == []
    assert list(tmpdir.iterdir()) == []           # run dirs and the grader's temp files


def test_live_grading_refuses_hidden_tests_others_can_read(lab_copy):
    """The live router runs student code outside the jail, as an unprivileged user: the
    hidden tests must be readable by the grader alone, or a crash message could carry them
    into a visible test's output."""
    from nattrack.grading.runner import GradeError, Grader
    hidden = lab_copy / "hidden"
    hidden.mkdir(mode=0o755)
    (hidden / "test_hidden.py").write_text("")
    os.chmod(hidden / "test_hidden.py", 0o644)
    code_lab = REPO / "labs" / "02-tcp-states"      # its submission runs in the router
    with pytest.raises(GradeError, match=r"chmod -R go-rwx"):
        Grader(code_lab, hidden=hidden, mode="live")
    os.chmod(hidden, 0o700)                          # readable by the grader alone: accepted
    with Grader(code_lab, hidden=hidden, mode="live") as g:
        assert g.mode == "live"


def _router_procs(marker: str) -> list[tuple[int, int, bytes]]:
    """(pid, real uid, environ) of each ``nattrack.router`` whose command line names
    ``marker``."""
    out = []
    for n in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{n}/cmdline").read_bytes() if n.isdigit() else b""
            if b"nattrack.router" not in cmd or marker.encode() not in cmd:
                continue
            status = Path(f"/proc/{n}/status").read_text()
            env = Path(f"/proc/{n}/environ").read_bytes()
        except OSError:
            continue
        uid = int(next(l.split()[1] for l in status.splitlines() if l.startswith("Uid:")))
        out.append((int(n), uid, env))
    return out


def test_live_router_runs_as_the_submissions_own_uid(lab_copy, monkeypatch):
    """A code lab's router imports the submission as a fresh uid of its own (not the
    shared nobody), with none of the grader's environment, and the submission's folders
    are root's and that uid's only."""
    from nattrack.grading.runner import Grader, SubmissionRun
    monkeypatch.setenv("GRADER_SECRET", "x")
    monkeypatch.setenv("TMPDIR", str(lab_copy))
    tempfile.tempdir = None                          # re-read TMPDIR
    code_lab = REPO / "labs" / "02-tcp-states"
    try:
        with Grader(code_lab, mode="live") as g:
            runs = [SubmissionRun(g, code_lab / "solution", None) for _ in range(2)]
            try:
                uids = []
                for run in runs:
                    assert run.live_client().status()["routers"]
                    procs = _router_procs(str(run.sub_copy))
                    dropped = {uid for _, uid, _ in procs if uid != 0}
                    assert len(dropped) == 1, procs
                    uid = dropped.pop()
                    assert 1_000_000_000 <= uid < 2_000_000_000 and uid == run.gid, uid
                    assert not any(b"GRADER_SECRET" in env for _, _, env in procs)
                    for d in (run.tmp, run.lab_run_dir):
                        st = d.stat()
                        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, uid, 0o750), d
                    uids.append(uid)
                    run.stop_lab()
                assert uids[0] != uids[1]
            finally:
                for run in runs:
                    run.close()
    finally:
        tempfile.tempdir = None


# --- the same submission, the same score: every run, every entry point ---------------------------

LAB02 = REPO / "labs" / "02-tcp-states"
RUNS = 3


def _one_wrong_cell(dest: Path) -> Path:
    """Lab 2's solution with ORIGINAL ACK in LAST_ACK -> CLOSE (the kernel: TIME_WAIT): the
    submission whose live test 2.6 once scored 4/4 or 0/4 as the close order fell."""
    src = (LAB02 / "solution" / "tcp_states.py").read_text()
    wrong = src.replace('"ACK":     [sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV]',
                        '"ACK":     [sES, sIV, sES, sES, sCW, sCW, sCL, sTW, sCL, sIV]')
    assert wrong != src
    dest.mkdir(mode=0o755)
    (dest / "tcp_states.py").write_text(wrong)
    return dest


def _scores(results_json: Path) -> dict[str, float]:
    return {t["number"]: t["score"] for t in json.loads(results_json.read_text())["tests"]}


def test_the_same_live_submission_scores_the_same_every_run_both_ways(lab_copy):
    """Lab 2 with one wrong cell, graded live three times by `nattrack grade` and three
    times by the Gradescope package's run_autograder (as Gradescope runs it: its copy in
    ROOT, cwd ROOT, the Python setup.sh recorded): six identical score sheets."""
    sub = _one_wrong_cell(lab_copy / "wrong")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    sheets = []
    for i in range(RUNS):
        out = lab_copy / f"out{i}"
        r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", str(LAB02),
                            str(sub), "--student-id", "4242", "--mode", "live", "--out",
                            str(out)], capture_output=True, text=True, timeout=300, env=env,
                           cwd="/")
        assert r.returncode == 0, r.stderr
        sheets.append(("nattrack grade", _scores(out / "4242" / "results.json")))
    r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", "--package",
                        "gradescope", str(LAB02), "--out", str(lab_copy)], capture_output=True,
                       text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    root = lab_copy / "autograder"
    with zipfile.ZipFile(r.stdout.strip().splitlines()[-1]) as z:
        z.extractall(root / "source")
    (root / "source" / "python").write_text(sys.executable + "\n")   # what setup.sh records
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")
    shutil.copytree(sub, root / "submission")
    (root / "submission_metadata.json").write_text(json.dumps({"users": [{"id": 4242}]}))
    ag_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    ag_env["NATTRACK_AUTOGRADER_ROOT"] = str(root)
    for i in range(RUNS):
        r = subprocess.run(["bash", str(root / "run_autograder")], capture_output=True,
                           text=True, timeout=300, env=ag_env, cwd=root)
        assert r.returncode == 0, r.stderr
        sheets.append(("run_autograder", _scores(root / "results" / "results.json")))
    first = sheets[0][1]
    assert first["2.6"] == 3.2 and first["2.2"] == round(4 * 119 / 120, 4), first
    for how, sheet in sheets:
        assert sheet == first, (how, sheet, first)
