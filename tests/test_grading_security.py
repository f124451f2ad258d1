"""The grader's security fixes (issue 5 review): symbolic links in submissions, grading
without a jail when not root, who may read the hidden tests, and the probe's count; and
(issue 9) the worker's seccomp filter, with and without bwrap."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nattrack.grading.runner import GradeError, Grader, _others_can_read

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "tests" / "grading"
LAB = GRADING / "fixture-lab"
HIDDEN = GRADING / "hidden-fixture"
ROOT = os.geteuid() == 0
MARK_SOLUTION, MARK_SECRET = "SOLUTION-MARK-7f3a1c", "SECRET-MARK-2b9e44"


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="nt-sec-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def nattrack(*args, env=None, user=None):
    pre = []
    if user is not None:
        pre = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    return subprocess.run([*pre, sys.executable, "-m", "nattrack.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=240, cwd="/",
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def _outputs(d: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(d.rglob("*")) if p.is_file())


# --- 1. symbolic links are never followed ----------------------------------------------------

def test_linked_submissions_score_zero_with_the_reason(tmp):
    solution = tmp / "solution"                     # a solution and a secret, each marked
    shutil.copytree(LAB / "solution", solution)
    with open(solution / "tcp_states.py", "a") as f:
        f.write(f"\n# {MARK_SOLUTION}\n")
    secret = tmp / "secret.txt"
    secret.write_text(MARK_SECRET + "\n")
    klass = tmp / "class"
    klass.mkdir()
    (klass / "alice").symlink_to(solution)                     # the whole folder a link
    (klass / "bob").mkdir()
    (klass / "bob" / "x").symlink_to(solution)                 # one folder down, a link
    (klass / "carol").mkdir()
    (klass / "carol" / "tcp_states.py").symlink_to(solution / "tcp_states.py")
    (klass / "carol" / "answers.txt").symlink_to(secret)
    shutil.copytree(LAB / "solution", klass / "zz-solution")   # a real one still counts
    out = tmp / "out"
    r = nattrack("grade", LAB, klass, "--out", out, "--hidden", HIDDEN, "--mode", "offline")
    assert r.returncode == 0, r.stderr
    why = {"alice": "alice is a symbolic link: submit the folder itself",
           "bob": "x is a symbolic link: submit the folder itself",
           "carol": "tcp_states.py is a symbolic link: submit the file itself"}
    for sid, reason in why.items():
        doc = json.loads((out / sid / "results.json").read_text())
        assert sum(t["score"] for t in doc["tests"]) == 0, (sid, doc)
        assert reason in doc["output"], (sid, doc["output"])
        seen = (out / sid / "summary.txt").read_text()
        assert reason in seen, seen
        failing = [t for t in doc["tests"] if t["number"] != "0"]
        assert failing and all(reason in t["output"] for t in failing), failing
    assert "answers.txt is a symbolic link: submit the file itself" in \
        (out / "carol" / "summary.txt").read_text()
    sol = json.loads((out / "zz-solution" / "results.json").read_text())
    assert sum(t["score"] for t in sol["tests"]) == 10
    everything = _outputs(out) + r.stdout + r.stderr
    assert MARK_SOLUTION not in everything and MARK_SECRET not in everything


def test_gradescope_keeps_links_and_refuses_them(tmp):
    from test_grading_package import autograder, run
    empty = tmp / "empty"
    empty.mkdir()
    secret = tmp / "secret.txt"
    secret.write_text(MARK_SECRET + "\n")
    root = autograder(tmp, empty)
    (root / "submission" / "tcp_states.py").symlink_to(LAB / "solution" / "tcp_states.py")
    (root / "submission" / "answers.txt").symlink_to(secret)
    r = run(root)
    assert r.returncode == 0, r.stderr
    doc = json.loads((root / "results" / "results.json").read_text())
    assert sum(t["score"] for t in doc["tests"]) == 0, doc
    assert "tcp_states.py is a symbolic link: submit the file itself" in doc["output"]
    assert MARK_SECRET not in json.dumps(doc) + r.stdout + r.stderr


# --- 2. not root and no jail: refused unless the teacher says so --------------------------------

def test_not_root_without_bwrap_is_refused(tmp, monkeypatch):
    monkeypatch.setenv("NATTRACK_NO_BWRAP", "1")
    monkeypatch.setattr(os, "geteuid", lambda: 4321)       # refused before anything runs
    with pytest.raises(GradeError, match=r"^not root and no bwrap jail \(bwrap disabled by "
                                         r"NATTRACK_NO_BWRAP\).*--unsafe-no-jail$"):
        Grader(LAB, mode="offline")


@pytest.mark.skipif(not ROOT, reason="becomes another user to be non-root")
def test_not_root_without_bwrap_from_the_command_line(tmp):
    """As a real non-root user (nobody): exit 2 with one line; with --unsafe-no-jail it
    grades, and the probe says the code ran as the grader's own user, unjailed."""
    os.chmod(tmp, 0o777)
    env = {"NATTRACK_NO_BWRAP": "1", "TMPDIR": str(tmp), "HOME": str(tmp)}
    r = nattrack("grade", LAB, LAB / "solution", "--out", tmp / "out", "--mode", "offline",
                 env=env, user=65534)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "--unsafe-no-jail" in r.stderr, r.stderr
    assert not (tmp / "out" / "solution").exists()
    r = nattrack("grade", LAB, LAB / "solution", "--out", tmp / "out", "--mode", "offline",
                 "--unsafe-no-jail", env=env, user=65534)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp / "out" / "solution" / "results.json").read_text())
    probe = doc["tests"][0]["output"]
    assert "runs as the grader's own (non-root) user" in probe, probe
    assert "without a file-system jail (bwrap disabled by NATTRACK_NO_BWRAP)" in probe
    assert "Network: cut off by the seccomp filter" in probe, probe
    assert sum(t["score"] for t in doc["tests"]) == 8


# --- 4. the hidden tests: any file others can reach counts ---------------------------------------

def test_others_can_read_looks_at_every_file(tmp):
    hidden = tmp / "hidden"
    (hidden / "sub").mkdir(parents=True)
    for f in (hidden / "test_a.py", hidden / "sub" / "data.txt"):
        f.write_text("x")
        os.chmod(f, 0o600)
    os.chmod(hidden / "sub", 0o711)
    os.chmod(hidden, 0o711)                # not listable, but searchable
    assert not _others_can_read(hidden)
    os.chmod(hidden / "sub" / "data.txt", 0o644)     # a guessable name is enough
    assert _others_can_read(hidden)
    os.chmod(hidden / "sub", 0o700)                  # ... unless the way there is shut
    assert not _others_can_read(hidden)
    os.chmod(hidden / "test_a.py", 0o604)
    assert _others_can_read(hidden)
    os.chmod(hidden, 0o700)
    assert not _others_can_read(hidden)
    os.chmod(hidden, 0o755)                          # listable: the names at least
    os.chmod(hidden / "test_a.py", 0o600)
    assert _others_can_read(hidden)


# --- 6. the probe counts the live tests a student can see -----------------------------------------

def test_probe_counts_only_visible_live_tests(tmp):
    hidden = tmp / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "test_live_hidden.py").write_text(
        "from nattrack.exercises.testing import test\n\n"
        "@test(points=2, number='8.1', name='hidden live one', mode='live')\n"
        "def a(ctx):\n    pass\n\n"
        "@test(points=2, number='8.2', name='hidden live two', mode='live')\n"
        "def b(ctx):\n    pass\n")
    lab = tmp / "lab"
    shutil.copytree(LAB, lab)
    (lab / "tests" / "test_live_visible.py").write_text(
        "from nattrack.exercises.testing import test\n\n"
        "@test(points=1, number='7.1', name='visible live', mode='live')\n"
        "def c(ctx):\n    pass\n")
    with Grader(lab, hidden=hidden, mode="offline") as g:
        probe = g.probe_result().output
    assert "1 live test(s) were not run" in probe, probe


# --- 7. the seccomp filter: with and without bwrap, a real lab still grades --------------------

@pytest.mark.parametrize("jail", ["bwrap", "no-bwrap"])
def test_a_real_lab_grades_to_full_marks_under_the_filter(monkeypatch, jail):
    """Lab 04's solution (its tests call the submission and replay captures through it)
    gets every offline point inside the filter, and the probe says what held."""
    from nattrack.grading import sandbox
    if jail == "no-bwrap":
        monkeypatch.setenv("NATTRACK_NO_BWRAP", "1")
    else:
        assert sandbox.bwrap_problem() is None, sandbox.bwrap_problem()
    lab = REPO / "labs" / "04-snat"
    with Grader(lab, mode="offline", unsafe_no_jail=not ROOT) as g:
        res = g.grade(lab / "solution")
    offline = [t for t in res.tests if "not-run" not in t.tags and t.number != "0"]
    assert offline and all(t.passed for t in offline), [(t.number, t.output) for t in offline]
    probe = res.tests[0].output
    assert "Seccomp filter: on" in probe, probe
    if jail == "bwrap":
        assert ("Network: none -- no network in a network namespace of its own (loopback "
                "only), and the seccomp filter denies network sockets.") in probe, probe
        assert "Files: in a jail that holds only your files" in probe, probe
        assert "Other processes: hidden (a process namespace of its own)" in probe, probe
    else:
        assert "Network: cut off by the seccomp filter" in probe, probe
        assert "Files: without a file-system jail (bwrap disabled by NATTRACK_NO_BWRAP)" \
            in probe, probe
        assert "Other processes: visible in /proc; ptrace and reading their memory are " \
            "denied by the seccomp filter" in probe, probe


def test_the_probe_says_when_the_network_is_not_cut():
    """Its text follows what the worker found, not what the grader hoped for."""
    from nattrack.grading.worker import _namespaces, isolation_lines
    mine = _namespaces()
    found = {"seccomp": "no seccomp syscall table for this machine (riscv64); only x86_64 "
                        "and aarch64 are known",
             "tried": {"seccomp": "0", "socket(AF_INET)": "allowed", "ptrace": "ESRCH",
                       "unshare": "allowed"},
             "ns": mine, "interfaces": ["eth0", "lo"], "etc_visible": True}
    lines = isolation_lines(found, "bwrap cannot create namespaces here: Operation not "
                                   "permitted")
    assert lines == [
        "Seccomp filter: not installed (no seccomp syscall table for this machine (riscv64); "
        "only x86_64 and aarch64 are known).",
        "Network: NOT cut off -- your code could open network connections.",
        "Files: without a file-system jail (bwrap cannot create namespaces here: Operation "
        "not permitted): only permissions keep your code out of what it should not read.",
        "Other processes: visible in /proc; ptrace is not filtered (only the uid keeps your "
        "code out of them)."]
    # a namespace of its own with an interface that goes somewhere is no cut either
    found["ns"] = dict(mine, net="net:[1]")
    assert "Network: NOT cut off" in isolation_lines(found, None)[1]
    assert isolation_lines("the worker did not start", None) == [
        "Isolation: unknown (the grader could not start a worker to check: the worker did "
        "not start)."]


def test_where_no_filter_can_be_installed_the_probe_says_the_network_is_open(tmp):
    """A container whose own seccomp profile refuses seccomp() (so no filter of ours), and
    no bwrap: grading still finishes, and the probe says plainly that nothing cut the
    network, instead of claiming it."""
    outer = (
        "import errno, os, sys, seccomp\n"
        "f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)\n"
        "f.add_rule(seccomp.ERRNO(errno.EPERM), 'seccomp')\n"
        "f.load()\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), NATTRACK_NO_BWRAP="1")
    extra = [] if ROOT else ["--unsafe-no-jail"]
    r = subprocess.run([sys.executable, "-c", outer, "-m", "nattrack.cli.main", "grade", LAB,
                        LAB / "solution", "--out", tmp / "out", "--mode", "offline", *extra],
                       capture_output=True, text=True, timeout=240, cwd="/", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp / "out" / "solution" / "results.json").read_text())
    probe = doc["tests"][0]["output"]
    assert ("Seccomp filter: not installed (seccomp(SECCOMP_SET_MODE_FILTER): Operation not "
            "permitted).") in probe, probe
    assert "Network: NOT cut off -- your code could open network connections." in probe
    assert "ptrace is not filtered" in probe, probe
    assert sum(t["score"] for t in doc["tests"]) == 8
