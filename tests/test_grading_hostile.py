"""Hostile submissions through `nattrack grade` (tests/grading/hostile/, one folder each).

One class of them is graded once (two jobs in parallel) with the instructor's
hidden tests, whose source and messages carry a sentinel string.  Each hostile one breaks
``next_state()`` in its own way and keeps ``timeout_for()`` right: the tests that call
``next_state()`` score zero with a readable reason, the others pass (so the worker was
restarted after the damage), every output is written, the sentinel never reaches what a
student sees, and the machine is left clean.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from nattrack.grading.github import results_from_gradescope, to_markdown
from nattrack.grading.results import student_view
from nattrack.grading.sandbox import MARKER_VAR

from listener import Listener
from netns_tools import live_processes

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "tests" / "grading"
LAB = GRADING / "fixture-lab"
HIDDEN = GRADING / "hidden-fixture"
HOSTILE = GRADING / "hostile"
SENTINEL = "HIDDEN-SENTINEL-5c1e9b"
SOLUTION_TEXT = "A toy TCP state function (the grader's fixture)"
ROOT = os.geteuid() == 0
LO, HI = 1_000_000_000, 2_000_000_000      # the workers' uids (worker.SANDBOX_UID_RANGE)
NEXT_STATE_TESTS = ("1.1", "1.2", "9.1")
PORT = 47613                               # what hostile/network tries on the host's loopback

# What each hostile submission breaks: the reason its next_state() tests must show.
BROKEN = {
    "noimport": "your tcp_states.py does not import: SyntaxError line 12",
    "importloop": "importing your files: did not finish within 10 s",
    "loop": "did not finish within 2 s",
    "forkbomb": "did not finish within 2 s",
    "flood": "printed more than 1 MB",
    "memory": "ran out of memory",
    "exits": "exited (exit status 3)",
    "snoop": "denied /etc/shadow: No such file",
    "root": "no setuid(0): PermissionError",
    "network": "no 127.0.0.1",
    "leaker": "SEEN ",
}


def _sandbox_procs(tag: str) -> list[str]:
    """Live processes this grading run could have left: marked ones or the sandbox uids'
    whose command line or mounts name the run's temp folder ``tag`` (other graders may be
    running on the machine: theirs are not ours to count)."""
    out = []
    for n, uid, env in live_processes():
        try:
            cmd = Path(f"/proc/{n}/cmdline").read_bytes()
            mounts = Path(f"/proc/{n}/mountinfo").read_bytes()
        except OSError:
            continue
        if not (MARKER_VAR.encode() in env or LO <= uid < HI):
            continue
        if tag.encode() in cmd or tag.encode() in mounts:
            out.append(f"{n} uid {uid}: {cmd[:120]!r}")
    return out


@pytest.fixture(scope="module")
def graded():
    tmp = Path(tempfile.mkdtemp(prefix="nt-hostile-"))
    os.chmod(tmp, 0o755)
    grader_tmp = tmp / "tmp"                 # the grader's TMPDIR: must be empty at the end
    grader_tmp.mkdir(mode=0o755)
    out = tmp / "out"
    klass = tmp / "class"
    shutil.copytree(HOSTILE, klass)
    snoop = klass / "snoop" / "tcp_states.py"          # its targets: this checkout's files
    snoop.write_text(snoop.read_text().replace("@REPO@", str(REPO)))
    shutil.copytree(LAB / "solution", klass / "zz-solution")
    before = {p for p in ("/etc/nattrack-pwned", "/var/tmp/nattrack-pwned") if os.path.exists(p)}

    hits: list[bytes] = []
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", PORT))
    lsock.listen(8)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            hits.append(conn.recv(100))
            conn.close()
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    env = dict(os.environ, TMPDIR=str(grader_tmp), PYTHONPATH=str(REPO))
    try:
        r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", str(LAB),
                            str(klass), "--out", str(out), "--hidden", str(HIDDEN),
                            "--mode", "offline", "--jobs", "2"],
                           capture_output=True, text=True, timeout=300, env=env, cwd="/")
    finally:
        stop.set()
        th.join(2)
        lsock.close()
    data = {}
    for sid in [*BROKEN, "zz-solution"]:
        d = out / sid
        data[sid] = {
            "full": json.loads((d / "results.json").read_text()),
            "student": (d / "results-student.json").read_text(),
            "summary": (d / "summary.txt").read_text(),
            "github": to_markdown(student_view(results_from_gradescope(
                json.loads((d / "results.json").read_text()))), "lab"),
            "junit": (d / "junit.xml").read_text(),
        }
    yield {"run": r, "out": out, "data": data, "hits": hits, "klass": klass,
           "grader_tmp": grader_tmp, "before": before}
    shutil.rmtree(tmp, ignore_errors=True)


def _by_number(full: dict) -> dict:
    return {t["number"]: t for t in full["tests"]}


def test_the_grader_finishes_and_writes_everything(graded):
    r = graded["run"]
    assert r.returncode == 0, r.stderr
    for sid in [*BROKEN, "zz-solution"]:
        for name in ("results.json", "results-student.json", "summary.txt", "summary-full.txt",
                     "junit.xml"):
            assert (graded["out"] / sid / name).is_file(), f"{sid}/{name}"
    csv = (graded["out"] / "class.csv").read_text()
    assert all(f"\n{sid}," in csv for sid in BROKEN)
    assert f"[{len(BROKEN) + 1}/{len(BROKEN) + 1}]" in r.stdout


def test_the_solution_scores_full_marks_among_them(graded):
    tests = _by_number(graded["data"]["zz-solution"]["full"])
    assert all(t["status"] == "passed" for n, t in tests.items() if n != "3.1"), tests


@pytest.mark.parametrize("sid", sorted(BROKEN))
def test_each_scores_zero_on_what_it_broke(graded, sid):
    tests = _by_number(graded["data"][sid]["full"])
    for n in NEXT_STATE_TESTS:
        assert tests[n]["score"] == 0 and tests[n]["status"] == "failed", (sid, n)
        assert BROKEN[sid] in tests[n]["output"], (sid, n, tests[n]["output"][:300])
        assert len(tests[n]["output"]) <= 8100
    whole = ("noimport", "leaker", "importloop")        # these break every test
    others = ("2.1", "2.2") if sid not in whole else ()
    for n in others:                     # the worker came back for the next test
        assert tests[n]["status"] == "passed", (sid, n, tests[n]["output"])
    if sid in whole:
        assert tests["2.1"]["status"] == "failed"


def test_hidden_tests_never_reach_a_student(graded):
    for sid, d in graded["data"].items():
        for view in ("student", "summary", "github"):
            assert SENTINEL not in d[view], (sid, view)
        assert "9.1" not in [t["number"] for t in json.loads(d["student"])["tests"]]
        assert "1 more test (3 points) will be shown later" in d["summary"]
    assert SENTINEL not in graded["run"].stdout
    # ... while the instructor's results do hold it (the check above can fail)
    assert SENTINEL in json.dumps(graded["data"]["leaker"]["full"])
    # the leaker met the hidden test's input only in a worker of the hidden tests' own
    visible = [t["output"] for t in graded["data"]["leaker"]["full"]["tests"]
               if t["visibility"] == "visible"]
    assert visible and not any(SENTINEL in o for o in visible)


def test_nothing_outside_the_submission_is_readable(graded):
    tests = _by_number(graded["data"]["snoop"]["full"])
    # what next_state() returned: after "-->" in 1.1/1.2, after "got " in the hidden 9.1
    text = "".join([tests["1.1"]["output"].partition("-->")[2],
                    tests["1.2"]["output"].partition("-->")[2],
                    tests["9.1"]["output"].partition(" got ")[2]])
    assert "denied /etc/shadow" in text
    for secret in (SENTINEL, SOLUTION_TEXT, "root:", "NATTRACK_LAB", "READ /work"):
        assert secret not in text, secret
    out = _by_number(graded["data"]["snoop"]["full"])["1.1"]["output"]
    for target in (HIDDEN / "test_hidden.py", LAB / "solution" / "tcp_states.py",
                   REPO / "labs" / "02-tcp-states" / "solution" / "tcp_states.py"):
        assert target.is_file(), target             # it is there, and the sandbox cannot
        assert f"denied {target}: " in out, target   # read it

    assert "denied /etc/shadow" in out
    # what it could read at all: the interpreter's files, the kit, the lab's public data
    # and its own folder
    allowed = ("/usr/", "/opt/nattrack/", "/lab/", "/submission/", "/inbox/")
    read = re.findall(r"READ (\S+?):", out)
    assert [p for p in read if not p.startswith(allowed)] == []


def test_no_root_and_no_writes_outside(graded):
    out = _by_number(graded["data"]["root"]["full"])["1.1"]["output"]
    assert "PWNED" not in out, out
    assert "uid=0 " not in out and "euid=0 " not in out
    if ROOT:
        uid = int(re.search(r"uid=(\d+)", out).group(1))
        assert LO <= uid < HI, out
    for p in ("/etc/nattrack-pwned", "/var/tmp/nattrack-pwned"):
        assert not os.path.exists(p) or p in graded["before"], p
    assert not (graded["klass"] / "root" / "pwned.txt").exists()


def test_no_network(graded):
    out = _by_number(graded["data"]["network"]["full"])["1.1"]["output"]
    assert "REACHED" not in out, out
    assert graded["hits"] == [], graded["hits"]
    probe = _by_number(graded["data"]["network"]["full"])["0"]["output"]     # both walls
    assert ("Network: none -- no network in a network namespace of its own (loopback "
            "only), and the seccomp filter denies network sockets.") in probe, probe


def test_the_machine_is_left_clean(graded):
    assert _sandbox_procs(graded["grader_tmp"].parent.name) == []
    assert list(graded["grader_tmp"].iterdir()) == []


# --- without bwrap: the seccomp filter alone keeps the network out -------------------------------

PHONE_PORT = 47614                         # what tests/grading/phonehome calls on loopback


@pytest.fixture(scope="module")
def unjailed():
    """The phone-home submission and the solution graded with NATTRACK_NO_BWRAP=1 (as on
    Gradescope, where bwrap cannot build its jail), hidden tests included."""
    tmp = Path(tempfile.mkdtemp(prefix="nt-unjailed-"))
    os.chmod(tmp, 0o755)
    hidden = tmp / "hidden"                  # the teacher's own, as it must be without a jail
    shutil.copytree(HIDDEN, hidden)
    os.chmod(hidden, 0o700)
    klass = tmp / "class"
    shutil.copytree(GRADING / "phonehome", klass / "phonehome")
    shutil.copytree(LAB / "solution", klass / "zz-solution")
    env = dict(os.environ, PYTHONPATH=str(REPO), NATTRACK_NO_BWRAP="1")
    extra = [] if ROOT else ["--unsafe-no-jail"]      # not root: only with the teacher's word
    with contextlib.ExitStack() as ears:
        v4 = ears.enter_context(Listener("127.0.0.1", PHONE_PORT))
        try:                                          # ::1 too, where IPv6 is on
            v6 = ears.enter_context(Listener("::1", PHONE_PORT, socket.AF_INET6))
        except OSError:
            v6 = None
        r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", str(LAB),
                            str(klass), "--out", str(tmp / "out"), "--hidden", str(hidden),
                            "--mode", "offline", *extra],
                           capture_output=True, text=True, timeout=300, env=env, cwd="/")
    hits = v4.got + (v6.got if v6 else [])
    docs = {sid: json.loads((tmp / "out" / sid / "results.json").read_text())
            for sid in ("phonehome", "zz-solution")}
    yield {"run": r, "docs": docs, "hits": hits}
    shutil.rmtree(tmp, ignore_errors=True)


def test_unjailed_the_listener_hears_nothing(unjailed):
    assert unjailed["run"].returncode == 0, unjailed["run"].stderr
    assert unjailed["hits"] == [], unjailed["hits"]
    tests = _by_number(unjailed["docs"]["phonehome"])
    for n in NEXT_STATE_TESTS:                 # 9.1 is the hidden one: its inputs stayed in
        out = tests[n]["output"]
        assert tests[n]["score"] == 0, (n, out)
        assert "REACHED" not in out, (n, out)
        for what in ("127.0.0.1", "::1", "a packet socket", "a netlink socket",
                     "a new network namespace"):
            assert f"no {what}: PermissionError" in out, (n, what, out)
        if os.uname().machine == "x86_64":
            assert "no an x32 socket: PermissionError" in out, (n, out)
    assert tests["2.1"]["status"] == "passed"


def test_unjailed_the_probe_says_the_filter_cut_the_network(unjailed):
    for doc in unjailed["docs"].values():
        probe = _by_number(doc)["0"]["output"]
        assert "Seccomp filter: on" in probe, probe
        assert "Network: cut off by the seccomp filter" in probe, probe
        assert "Files: without a file-system jail (bwrap disabled by NATTRACK_NO_BWRAP)" in probe
        assert "Other processes: visible in /proc; ptrace and reading their memory are " \
               "denied by the seccomp filter" in probe, probe


def test_unjailed_the_solution_still_scores_full_marks(unjailed):
    tests = _by_number(unjailed["docs"]["zz-solution"])
    assert all(t["status"] == "passed" for n, t in tests.items() if n != "3.1"), tests
