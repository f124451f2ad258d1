"""The Gradescope zip of lab 2, with a small hidden folder, graded the way Gradescope grades
it: built into an image as its Dockerfile does, then run per submission in a fresh
container with Docker's restrictions (tests/gradescope_container.py: no namespaces, no
mounts, 14 capabilities, a network holding only lo).

The solution gets full marks with no red test, the skeleton less; a submission that phones
a listener on 127.0.0.1 inside the container with its arguments reaches nothing; one that
hunts for the hidden tests' source gets none of it into any result; odd file names change
nothing.  First a control: the container really is that restricted, and its listener
really takes a connection from a process that is not sandboxed (so "reaches nothing" can
fail).  Root only; the Debian root is cached (tests/rootfs.py), so a run is about a minute.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import gradescope_container as gc
from tests.grading.schemas import validate_gradescope

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "labs" / "02-tcp-states"
PORT = 47123
SECRET = "HIDDEN-SOURCE-SENTINEL-41d7"        # only in the hidden test's source
ANN = {"users": [{"email": "ann@example.edu", "id": 4242, "name": "Ann"}],
       "assignment": {"title": "Lab 2"}}
OFFLINE_POINTS = 14 + 2                        # lab 2's offline tests + the hidden one

HIDDEN_TEST = f'''\
# {SECRET}: this file's source must never reach anyone but the teacher.
from nattrack.exercises.testing import test


@test(points=2, number="9.1", name="Hidden: a FIN, then the last ACK", visibility="hidden")
def fin_then_ack(ctx):
    marker = "{SECRET}"                        # in the source only, never sent
    assert ctx.call("tcp_states.next_state", "ESTABLISHED", "ORIGINAL", "FIN") == "FIN_WAIT"
    assert ctx.call("tcp_states.next_state", "LAST_ACK", "REPLY", "ACK") == "TIME_WAIT"
'''

# Prepended to the solution: next_state() first sends its arguments to the listener.
PHONE_HOME = f'''\
import socket as _socket


def _phone(*args):
    try:
        with _socket.create_connection(("127.0.0.1", {PORT}), timeout=2) as s:
            s.sendall(repr(args).encode())
    except OSError:
        pass
'''

# Appended to the solution: next_state() returns any test source it can find.
HUNT = '''
import glob as _glob
import os as _os

_solution_next_state = next_state


def _hunt():
    found = []
    for pattern in ("/autograder/source/kit/hidden/*", "/autograder/**/test_*.py",
                    "/tmp/**/test_*.py", "/proc/*/cwd/**/test_*.py", "/proc/*/root/autograder/**/*.py"):
        for path in _glob.glob(pattern, recursive=True):
            try:
                with open(path, errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            if "hidden" in path or 'visibility="hidden"' in text:
                found.append(path + ": " + text)
    for pid in _os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().decode(errors="replace"))
        except OSError:
            pass
    return found


_found = []


def next_state(state, direction, flag):
    _found[:] = _found or _hunt() or ["nothing"]           # once: 2.2 makes 120 calls
    if _found == ["nothing"]:
        return _solution_next_state(state, direction, flag)
    return " | ".join(_found)
'''

ODD_NAMES = ["-rf", "--help", "a b c.txt", "ünï cødé.py", "new\nline.txt", "$(id).txt",
             "quote'\"s.txt", "x" * 240, "tab\tname", ".hidden", "back\\slash", "*",
             "sub dir/deeper/файл.py", "tcp_states.py.orig"]


def _problem() -> str | None:
    from tests.rootfs import rootfs_problem
    if rootfs_problem():
        return rootfs_problem()
    try:
        import seccomp  # noqa: F401
    except ImportError:
        return "python3-seccomp is not installed: scripts/setup.sh --tests installs it"
    return None


def _leftovers(top: Path) -> list[str]:
    """Processes whose root or cwd is under ``top``: a container that outlived its run."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for link in ("root", "cwd"):
            try:
                if os.readlink(f"/proc/{pid}/{link}").startswith(str(top)):
                    out.append(f"{pid} ({link})")
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def image():
    if _problem():
        pytest.skip(_problem())
    from tests.rootfs import rootfs_tarball
    tarball = rootfs_tarball(gc.SUITE, gc.PACKAGES)
    top = Path(tempfile.mkdtemp(prefix="nt-gradescope-"))
    os.chmod(top, 0o755)
    try:
        hidden = top / "hidden"
        hidden.mkdir()
        (hidden / "test_hidden.py").write_text(HIDDEN_TEST)
        made = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", "--package",
                               "gradescope", LAB, "--hidden", hidden, "--out", top],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert made.returncode == 0, made.stderr
        assert (f"set the assignment's autograder points to {OFFLINE_POINTS} (2 of them in "
                f"hidden tests); its 1 live test(s) (4 points) cannot run there") in made.stderr
        root = top / "image"
        root.mkdir()
        build = gc.build_image(Path(made.stdout.strip()), root, tarball)
        assert "nattrack autograder ready" in build.stdout, build.stdout + build.stderr
        yield top, root
    finally:
        shutil.rmtree(top, ignore_errors=True)
        assert not _leftovers(top)


@pytest.fixture
def grade(image, record_property):
    """``grade(name, folder, **kw)``: a fresh container grades it; its time is recorded
    (printed, and a JUnit property) and bounded."""
    def run(name: str, submission: Path, **kw) -> gc.Run:
        done = _grade(image, name, submission, **kw)
        record_property(f"seconds {name}", round(done.seconds, 2))
        assert done.seconds < 60, f"{name}: {done.seconds:.0f} s in the container"
        return done
    return run


def _grade(image, name: str, submission: Path, **kw) -> gc.Run:
    top, root = image
    work = top / "runs" / name
    try:
        run = gc.run_submission(root, work, submission, ANN, **kw)
    finally:
        assert not _leftovers(top), "a container outlived its run"
    validate_gradescope(run.results)
    print(f"gradescope container: {name}: {_score(run):g}/{OFFLINE_POINTS} in "
          f"{run.seconds:.1f} s")
    return run


def _submission(image, name: str, text: str) -> Path:
    d = image[0] / "submissions" / name
    d.mkdir(parents=True)
    (d / "tcp_states.py").write_text(text)
    return d


def _score(run: gc.Run) -> float:
    return sum(t["score"] for t in run.results["tests"])


def _probe(run: gc.Run) -> str:
    return next(t["output"] for t in run.results["tests"] if t["number"] == "0")


def test_the_container_is_as_restricted_as_gradescopes(image):
    """The control: without it, every check below could pass for the wrong reason."""
    top, root = image
    script = f"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def tried(what, rc):
    print(what, "refused:" if rc else "ALLOWED", os.strerror(ctypes.get_errno()) if rc else "")
for line in open("/proc/self/status"):
    if line.startswith(("CapBnd", "CapPrm", "CapEff")):
        print(line.strip())
tried("unshare(CLONE_NEWNET)", libc.unshare(0x40000000))
tried("unshare(CLONE_NEWUSER)", libc.unshare(0x10000000))
tried("mount(tmpfs)", libc.mount(b"x", b"/mnt", b"tmpfs", 0, None))
with socket.create_connection(("127.0.0.1", {PORT}), timeout=5) as s:
    s.sendall(b"control")                          # outside the grader's sandbox: reaches it
print("reached")
"""
    work = top / "runs" / "control"
    (work / "upper").mkdir(parents=True)
    done, got = gc.run_in(root, work, ["/usr/bin/python3", "-c", script], cwd="/autograder",
                          listen_port=PORT)
    out = done.stdout + done.stderr
    mask = f"{sum(1 << c for c in gc.DOCKER_CAPS.values()):016x}"
    for line in ("CapBnd", "CapPrm", "CapEff"):
        assert f"{line}:\t{mask}" in out, out
    for call in ("unshare(CLONE_NEWNET)", "unshare(CLONE_NEWUSER)", "mount(tmpfs)"):
        assert f"{call} refused: Operation not permitted" in out, out
    assert "reached" in out and [c["data"] for c in got] == ["control"], (out, got)
    assert not (root / "usr" / "bin" / "bwrap").exists()      # not installed by setup.sh


def test_the_solution_gets_full_marks_and_no_red_test(grade):
    run = grade("solution", LAB / "solution")
    doc = run.results
    assert _score(run) == OFFLINE_POINTS, json.dumps(doc, indent=1)
    assert [t["number"] for t in doc["tests"] if t.get("status") == "failed"] == []
    live = next(t for t in doc["tests"] if t["number"] == "2.6")
    assert "status" not in live and live["max_score"] == 0 and "not-run" in live["tags"]
    assert "Graded offline only" in doc["output"]
    assert "offline only" in _probe(run)
    # The reason is the container's, and no advice to install what could not run there.
    assert "cannot create namespaces" in _probe(run) and "apt-get install" not in _probe(run)
    hidden = next(t for t in doc["tests"] if t["number"] == "9.1")
    assert hidden["visibility"] == "hidden" and hidden["score"] == 2


def test_the_skeleton_scores_less(grade):
    run = grade("skeleton", LAB / "student")
    assert _score(run) < OFFLINE_POINTS
    assert any(t.get("status") == "failed" for t in run.results["tests"])


def test_odd_file_names_change_nothing(image, grade):
    d = image[0] / "submissions" / "odd"
    d.mkdir(parents=True)
    shutil.copy(LAB / "solution" / "tcp_states.py", d)
    for name in ODD_NAMES:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("not a submission file\n")
    (d / os.fsdecode(b"latin1-\xe9t\xe9.txt")).write_text("bytes that are not UTF-8\n")
    run = grade("odd names", d)
    assert _score(run) == OFFLINE_POINTS, json.dumps(run.results, indent=1)


def test_a_submission_that_hunts_the_hidden_tests_gets_none_of_them(image, grade):
    solution = (LAB / "solution" / "tcp_states.py").read_text()
    run = grade("hunt", _submission(image, "hunt", solution + HUNT))
    assert SECRET not in json.dumps(run.results) and SECRET not in run.stdout
    assert "fin_then_ack" not in json.dumps(run.results)


def test_a_submission_that_phones_home_reaches_nothing(image, grade):
    solution = (LAB / "solution" / "tcp_states.py").read_text()
    text = PHONE_HOME + solution.replace("def next_state(state, direction, flag):\n",
                                         "def next_state(state, direction, flag):\n"
                                         "    _phone(state, direction, flag)\n")
    assert "_phone(state" in text
    run = grade("phone home", _submission(image, "phone", text), listen_port=PORT)
    print("gradescope container: the probe says:", _probe(run).replace("\n", " / "))
    assert run.connections == [], f"the submission reached the listener: {run.connections[:3]}"
    assert "Network: cut off" in _probe(run)             # and the probe says so
    assert _score(run) == OFFLINE_POINTS                   # the rest of it is the solution
