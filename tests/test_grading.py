"""The grading foundation: the sandbox against hostile programs, and the results writers.

Root-only checks (a separate uid, files the sandbox user must not read) skip without root;
under CI=true as root the repository's conftest turns a skip into a failure.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nattrack.grading import (Results, SandboxResult, TestResult, human_summary,
                              run_untrusted, student_view, to_csv_rows,
                              to_gradescope, to_junit_xml, write_class_csv)
from nattrack.grading.sandbox import MARKER_VAR

from netns_tools import live_processes

ROOT = os.geteuid() == 0
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (a separate sandbox uid)")
SANDBOX_UID = 1_234_567_890            # a uid of the tests' own (not nobody: shared)


@pytest.fixture
def sub():
    """A submission folder in /tmp (pytest's tmp_path is under a 0700 folder the sandbox
    user cannot reach)."""
    d = Path(tempfile.mkdtemp(prefix="nattrack-sub-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def put(folder: Path, name: str, code: str) -> Path:
    p = folder / name
    p.write_text(textwrap.dedent(code))
    return p


def run(folder: Path, code: str, **kw) -> SandboxResult:
    put(folder, "main.py", code)
    kw.setdefault("uid", SANDBOX_UID)
    return run_untrusted([PY, "main.py"], folder, **kw)


def leftovers(marker_hint: str | None = None) -> list[str]:
    """Live processes that a sandbox run could have left: the tests' sandbox uid's (as root),
    or any carrying a sandbox marker and working in a test's folder."""
    out = []
    for n, uid, env in live_processes():
        try:
            cwd = os.readlink(f"/proc/{n}/cwd")
        except OSError:
            cwd = ""
        # the tests' own uid, or a marked process in one of the tests' folders (other
        # graders may be running on the machine)
        if (ROOT and uid == SANDBOX_UID) or (MARKER_VAR.encode() in env
                                             and "/nattrack-sub-" in cwd):
            out.append(f"{n}: {Path(f'/proc/{n}/cmdline').read_bytes()!r}")
    return out


# --- the sandbox ---------------------------------------------------------------------------

def test_normal_program(sub):
    r = run(sub, """
        import os, sys
        print("hello", os.getcwd())
        print("to stderr", file=sys.stderr)
        print(sorted(os.environ))
    """, env={"STUDENT": "x"})
    assert r.returncode == 0 and r.killed_reason is None and r.ok
    assert not r.timed_out and not r.output_truncated
    assert r.stdout.splitlines()[0] == f"hello {sub.resolve()}"
    assert r.stderr == "to stderr\n"
    env = eval(r.stdout.splitlines()[1])
    assert "STUDENT" in env and MARKER_VAR in env
    assert not {"CI", "PYTEST_CURRENT_TEST", "SSH_AUTH_SOCK", "VIRTUAL_ENV"} & set(env)
    assert 0 < r.wall_time < 5


def test_exit_status_is_readable(sub):
    r = run(sub, "import sys; sys.exit(3)")
    assert r.returncode == 3 and r.killed_reason == "exit status 3"


def test_import_failure_is_readable(sub):
    r = run(sub, "import no_such_module_for_grading\n")
    assert r.returncode == 1 and r.killed_reason == "exit status 1"
    assert "ModuleNotFoundError: No module named 'no_such_module_for_grading'" in r.stderr


def test_missing_program_does_not_raise(sub):
    r = run_untrusted(["/nonexistent/prog"], sub, timeout=5)
    assert r.returncode != 0 and r.killed_reason


def test_infinite_loop_times_out_and_group_is_killed(sub):
    t = time.monotonic()
    r = run(sub, """
        import os, subprocess
        subprocess.Popen(["sleep", "300"])          # a child in the same group
        if os.fork() == 0:                         # and one that escapes the group
            os.setsid()
            os.execv("/bin/sleep", ["sleep", "301"])
        while True:
            pass
    """, timeout=1.5)
    assert r.timed_out and r.killed_reason == "timed out after 1.5 s"
    assert r.returncode is not None and r.returncode < 0
    assert time.monotonic() - t < 8
    assert leftovers() == []


def test_background_process_does_not_outlive_the_run(sub):
    r = run(sub, """
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve("/bin/sleep", ["sleep", "300"], {})   # no marker, new session
            os._exit(0)
        print("parent done")
    """, timeout=5)
    assert r.returncode == 0 and r.stdout == "parent done\n"
    assert r.wall_time < 3
    assert leftovers() == []


def test_fork_bomb_is_bounded(sub):
    r = run(sub, """
        import os, time
        n = failed = 0
        for _ in range(1000):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
            except OSError:
                failed += 1
        print(n, failed, flush=True)
    """, timeout=5, max_procs=16)
    assert not r.timed_out and r.returncode == 0
    made, failed = map(int, r.stdout.split())
    assert made < 16 and failed > 900            # RLIMIT_NPROC stopped it
    assert leftovers() == []


def test_recursive_fork_bomb_finishes(sub):
    r = run(sub, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout=1.5, max_procs=32)
    assert r.timed_out and r.killed_reason.startswith("timed out")
    assert leftovers() == []


def test_printing_gigabytes_is_truncated(sub):
    r = run(sub, """
        import sys
        chunk = "x" * 65536
        for _ in range(40000):                     # 2.6 GB
            sys.stdout.write(chunk)
    """, timeout=10, max_output=1_000_000)
    assert r.output_truncated and r.killed_reason == "printed more than 1 MB"
    assert len(r.stdout) + len(r.stderr) <= 1_000_000
    assert len(r.stdout) > 100_000
    assert r.wall_time < 5
    assert leftovers() == []


def test_allocating_2gb_is_stopped(sub):
    r = run(sub, """
        x = bytearray(2 * 1024 ** 3)
        x[::4096] = b"y" * len(x[::4096])
        print("allocated")
    """, timeout=10, memory_mb=256)
    assert r.returncode != 0 and "allocated" not in r.stdout
    assert r.killed_reason == "exceeded 256 MB of memory"
    assert "MemoryError" in r.stderr


def test_cannot_become_root(sub):
    r = run(sub, """
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        try:
            os.setuid(0)
            print("BECAME ROOT")
        except PermissionError:
            print("denied")
        print(open("/proc/self/status").read())
    """)
    assert "BECAME ROOT" not in r.stdout and "denied" in r.stdout
    assert "NoNewPrivs:\t1" in r.stdout
    uid, euid = map(int, r.stdout.split()[:2])
    assert uid != 0 and euid != 0
    if ROOT:
        assert (uid, euid) == (SANDBOX_UID, SANDBOX_UID)
        assert "CapEff:\t0000000000000000" in r.stdout
        assert "CapBnd:\t0000000000000000" in r.stdout


@needs_root
def test_cannot_read_shadow_or_root_only_files(sub):
    secret_dir = Path(tempfile.mkdtemp(prefix="nattrack-secret-"))
    try:
        secret = secret_dir / "hidden-tests.py"
        secret.write_text("ANSWER = 42\n")
        os.chmod(secret, 0o600)
        os.chmod(secret_dir, 0o755)           # even in a readable folder, 0600 is closed
        r = run(sub, f"""
            for path in ["/etc/shadow", {str(secret)!r}]:
                try:
                    print(open(path).read())
                    print("READ", path)
                except PermissionError:
                    print("denied", path)
        """)
        assert "READ" not in r.stdout and "ANSWER" not in r.stdout
        assert r.stdout.count("denied") == 2
    finally:
        shutil.rmtree(secret_dir)


@needs_root
def test_submission_is_readable_not_writable_by_default(sub):
    put(sub, "data.txt", "payload\n")
    os.chmod(sub / "data.txt", 0o600)
    r = run(sub, """
        print(open("data.txt").read().strip())
        try:
            open("new.txt", "w")
            print("wrote")
        except PermissionError:
            print("read-only")
    """)
    assert r.stdout.split() == ["payload", "read-only"]
    r = run(sub, "open('new.txt', 'w').write('ok'); print('wrote')", writable=True)
    assert r.stdout == "wrote\n" and (sub / "new.txt").stat().st_uid == SANDBOX_UID


def test_unreachable_folder_is_a_grader_error(tmp_path):
    if not ROOT:
        pytest.skip("needs root")
    from nattrack.grading import SandboxError
    locked = Path(tempfile.mkdtemp(prefix="nattrack-locked-"))   # mode 0700, root's
    try:
        (locked / "s").mkdir()
        with pytest.raises(SandboxError, match="cannot reach"):
            run_untrusted([PY, "-c", "pass"], locked / "s")
    finally:
        shutil.rmtree(locked)


# --- results --------------------------------------------------------------------------------

def sample() -> Results:
    return Results(tests=[
        TestResult("SNAT rewrites the source", "1.1", 2, 2, "passed", "ok",
                   tags=["nat"], execution_time=0.5),
        TestResult("conntrack -L matches", "1.2", 0, 3, "failed",
                   "expected 1 entry, got 0\n<diff> & \x00 stuff", tags=["conntrack"]),
        TestResult("hidden: timeout values", "2.1", 1, 5, "failed", "SECRET expected 120",
                   visibility="hidden"),
        TestResult("after due: port clash", "2.2", 4, 4, "passed", "SECRET2",
                   visibility="after_due_date"),
    ], execution_time=12.5, output="Graded by nattrack")


GS_TOP = {"execution_time": (int, float), "output": str, "visibility": str,
          "stdout_visibility": str, "tests": list}
GS_TEST = {"name": str, "number": str, "score": (int, float), "max_score": (int, float),
           "status": str, "output": str, "output_format": str, "tags": list, "visibility": str}
VIS = {"visible", "hidden", "after_due_date", "after_published"}


def check_gradescope(d: dict) -> None:
    assert set(d) - {"score"} == set(GS_TOP)
    for k, t in GS_TOP.items():
        assert isinstance(d[k], t), k
    if "score" in d:
        assert isinstance(d["score"], (int, float))
    assert d["visibility"] in VIS and d["stdout_visibility"] in VIS
    for test in d["tests"]:
        assert set(test) == set(GS_TEST)
        for k, t in GS_TEST.items():
            assert isinstance(test[k], t) and not isinstance(test[k], bool), k
        assert test["status"] in ("passed", "failed") and test["visibility"] in VIS
        assert all(isinstance(tag, str) for tag in test["tags"])
    json.dumps(d)


def test_gradescope_shape():
    res = sample()
    d = to_gradescope(res)
    check_gradescope(d)
    assert "score" not in d
    assert [t["number"] for t in d["tests"]] == ["1.1", "1.2", "2.1", "2.2"]
    assert d["tests"][2]["visibility"] == "hidden" and d["tests"][0]["tags"] == ["nat"]
    res.score = 6.5
    d = to_gradescope(res)
    check_gradescope(d)
    assert d["score"] == 6.5
    with pytest.raises(ValueError):
        TestResult("x", status="ok")
    with pytest.raises(ValueError):
        TestResult("x", visibility="secret")


def test_junit_xml():
    text = to_junit_xml(sample())
    root = ET.fromstring(text.encode())
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases][:2] == ["SNAT rewrites the source",
                                                   "conntrack -L matches"]
    assert all(c.get("classname") and float(c.get("time")) >= 0 for c in cases)
    assert [c.find("failure") is not None for c in cases] == [False, True, True, False]
    assert "<diff> &" in cases[1].find("failure").text
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["score"] == "7" and props["max_score"] == "14"
    assert props["score 1.2"] == "0/3 visible" and props["score 2.1"] == "1/5 hidden"
    assert all(c.find("properties") is None for c in cases)     # not in the JUnit schema


def test_csv(tmp_path):
    rows = to_csv_rows("alice", sample()) + to_csv_rows("bob", Results(
        tests=[TestResult("SNAT rewrites the source", "1.1", 1, 2, "failed")]))
    assert len(rows) == 5 and rows[0]["student_id"] == "alice"
    path = write_class_csv(tmp_path / "class.csv", rows)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["student_id"] for r in back] == ["alice"] * 4 + ["bob"]
    assert back[1]["name"] == "conntrack -L matches" and back[1]["max_score"] == "3"
    assert back[4]["score"] == "1" and back[4]["status"] == "failed"


def test_student_view_hides_hidden_tests():
    res = sample()
    before = student_view(res)
    shown = json.dumps(to_gradescope(before)) + human_summary(before) + to_junit_xml(before)
    for leak in ("SECRET", "hidden: timeout values", "after due: port clash"):
        assert leak not in shown
    assert [t.number for t in before.tests] == ["1.1", "1.2"]
    assert "2 more tests (9 points)" in before.output
    assert before.total == 2 and before.max_total == 5
    after = student_view(res, after_due=True)
    assert [t.number for t in after.tests] == ["1.1", "1.2", "2.2"]
    assert "SECRET2" in json.dumps(to_gradescope(after))
    assert "SECRET expected" not in json.dumps(to_gradescope(after))
    check_gradescope(to_gradescope(after))
    assert len(res.tests) == 4                     # the original is untouched


def test_human_summary():
    text = human_summary(sample())
    assert text.startswith("Score: 7/14 (2 of 4 tests passed)")
    assert "FAIL 1.2 conntrack -L matches (0/3): expected 1 entry, got 0" in text


def test_points_read_as_people_read_them():
    # a sum of partial credits carries float noise; no summary or results.json shows it
    res = Results(tests=[TestResult("a", "1", 1 / 3 * 3.5, 4, "failed"),
                         TestResult("b", "2", 7.8333, 14, "failed")])
    assert human_summary(res).startswith("Score: 9/18 ")
    assert to_gradescope(Results(tests=[TestResult("c", "3", 0.1 + 0.2, 1, "failed")])
                         )["tests"][0]["score"] == 0.3
