"""The grader: a lab's tests (public and hidden) against one submission.

:func:`load_lab` reads ``lab.toml`` (a :class:`~nattrack.exercises.manifest.Lab`); :func:`load_tests` imports the lab's ``tests/`` and an
instructor's hidden folder (trusted code, run in this process); :class:`Grader` runs them
against a submission and returns :class:`~nattrack.grading.results.Results`.

Order of a grading run (docs/labs-format.md):

0. the visible *environment probe* (0 points): which mode is possible here and why;
1. the visible tests, offline ones first, each with a fresh or still-healthy sandboxed
   worker;
2. then the hidden ones with a new worker (so nothing a hidden test sent to the submission
   can come back in a visible test's output);
3. live tests, if live mode is on, share one lab per submission, started before the first
   of them (``nattrack lab up ... --plugin LABCOPY=SUBMISSION`` for a lab with
   ``[[pieces]]``: its router runs the submission unprivileged), in a ``NATTRACK_RUN_DIR``
   of its own, torn down at the end; in offline mode they are reported as not run.

A test gets full points when it returns ``None`` or ``True``, the fraction when it returns
a number in [0, 1]; an ``AssertionError``'s message, or the sandbox's one-line reason
(:class:`~nattrack.grading.worker.SubmissionError`), is what the student reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..exercises.manifest import Lab, ManifestError, load as load_manifest
from ..exercises.testing import TestSpec, collect, number_key
from .results import Results, TestResult
from .sandbox import sandbox_uid
from .worker import SubmissionError, Worker, lab_view, package_copy

__all__ = ["GradeError", "load_lab", "load_tests", "Ctx", "Grader", "probe_live",
           "SubmissionError"]


class GradeError(Exception):
    """The grader was misused (bad lab, bad hidden folder...): one line, exit status 2."""


# --- the lab ---------------------------------------------------------------------------------

def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def load_lab(lab_dir) -> Lab:
    """The lab, as labs.manifest.load() reads it; a wrong one is a GradeError (exit status 2)."""
    try:
        lab = load_manifest(lab_dir)
    except ManifestError as exc:               # one line already, naming the file
        raise GradeError(str(exc)) from None
    if not lab.files:
        raise GradeError(f"{lab.dir / 'lab.toml'}: `files` is empty: list what a submission "
                         f"consists of")
    return lab


@dataclass
class LoadedTest:
    spec: TestSpec
    hidden_folder: bool
    source: Path


def load_tests(lab: Lab, hidden: Path | None = None) -> list[LoadedTest]:
    """The lab's public tests and the instructor's hidden ones, in number order.

    Tests from the hidden folder are never shown before the due date: a ``visible`` one
    there is treated as ``hidden`` (``after_due_date`` / ``after_published`` are kept).
    """
    folders = [(lab.dir / "tests", False)]
    if hidden is not None:
        hidden = Path(hidden).resolve()
        if not hidden.is_dir():
            raise GradeError(f"--hidden {hidden}: not a folder")
        folders.append((hidden, True))
    out: list[LoadedTest] = []
    seen: dict[str, Path] = {}
    for folder, is_hidden in folders:
        for path in sorted(folder.glob("test_*.py")) if folder.is_dir() else []:
            tag = hashlib.sha1(str(path).encode()).hexdigest()[:10]
            name = f"nattrack_labtests_{tag}_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise GradeError(f"{path}: not a Python test file")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:           # noqa: BLE001
                raise GradeError(f"{path}: the test file does not import: "
                                 f"{type(exc).__name__}: {exc}") from None
            for t in collect(vars(module)):
                if t.number in seen:
                    raise GradeError(f"{path}: test number {t.number} is also used in "
                                     f"{seen[t.number]}; numbers must be unique")
                seen[t.number] = path
                if is_hidden and t.visibility == "visible":
                    t = dataclasses.replace(t, visibility="hidden")
                out.append(LoadedTest(t, is_hidden, path))
    if not out:
        raise GradeError(f"{lab.dir / 'tests'}: no tests (test_*.py with @test functions)")
    return sorted(out, key=lambda lt: number_key(lt.spec.number))


# --- the context --------------------------------------------------------------------------------

class Ctx:
    """What a test sees (docs/labs-format.md, "The context")."""

    CALL_TIMEOUT = 5.0
    REPLAY_TIMEOUT = 30.0

    def __init__(self, grader: "Grader", sub: "SubmissionRun", mode: str, deadline: float,
                 lab_mode: str = "") -> None:
        self._grader, self._sub, self.mode = grader, sub, mode
        self._lab_mode = lab_mode
        self._deadline = deadline
        self.lab_dir = grader.lab.dir
        self.manifest = grader.lab
        self.submission = sub.sub_copy          # the lab's files, found and copied
        self.variant = dict(sub.variant)
        self.student_id = sub.student_id

    def _left(self, want: float) -> float:
        return max(0.1, min(want, self._deadline - time.monotonic()))

    def call(self, func: str, *args, timeout: float | None = None):
        """Call ``module.function(*args)`` in the submission's sandboxed worker."""
        return self._sub.worker.request({"op": "call", "func": func, "args": list(args)},
                                        self._left(timeout or self.CALL_TIMEOUT), func)

    def _replay_req(self, capture, iface, route, rules, sysctl, now, seed, inbox) -> dict:
        caps = [capture] if isinstance(capture, (str, os.PathLike)) else list(capture)
        paths: list[tuple[str | None, Any]] = []
        for c in caps:
            iface_name: str | None
            iface_name, sep, p = str(c).partition("=")
            if not sep or Path(str(c)).exists() or (self.lab_dir / str(c)).exists():
                iface_name, p = None, str(c)
            paths.append((iface_name, inbox(self._lab_file(p))))
        if rules is None:
            rules = self._grader.lab.rules
        return {"capture": [f"{i}={p}" if i else p for i, p in paths], "iface": iface,
                "route": route, "rules": inbox(self._lab_file(rules)) if rules else None,
                "sysctl": sysctl, "now": now, "seed": seed}

    def _lab_file(self, p) -> Path:
        p = Path(p)
        if not p.is_absolute():
            p = self.lab_dir / p if (self.lab_dir / p).exists() else _repo_root() / p
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (a path in the lab folder)")
        return p

    def replay(self, capture, *, iface, route=None, rules=None, sysctl=None, now=None, seed=1):
        """``nattrack replay --json`` with the submission plugged in, in the worker.
        ``rules=None`` means the lab's rules; ``rules=""`` none."""
        req = self._replay_req(capture, iface, route, rules, sysctl, now, seed,
                               self._sub.stage)
        return self._sub.worker.request({"op": "replay", **req},
                                        self._left(self.REPLAY_TIMEOUT), "the replay")

    def reference_replay(self, capture, *, iface, route=None, rules=None, sysctl=None, now=None,
                         seed=1):
        """The same replay with the reference engine, in the grader."""
        from .replayjson import replay_json
        return replay_json(self._replay_req(capture, iface, route, rules, sysctl, now, seed,
                                            str))

    def read(self, name: str) -> str:
        """A submission file's text (answers, rules); never executed."""
        p = (self.submission / name).resolve()
        if self.submission.resolve() not in p.parents:
            raise ValueError(f"{name}: outside the submission")
        if not p.is_file():
            raise AssertionError(f"your submission has no {name}")
        if p.stat().st_size > 1 << 20:
            raise AssertionError(f"your {name} is larger than 1 MB")
        return p.read_text(errors="replace")

    @property
    def live(self):
        if self.mode != "live":
            raise RuntimeError("ctx.live exists in live mode only (mode='live' tests)")
        return self._sub.live_client(self._lab_mode)


# --- the environment probe -------------------------------------------------------------------------

def probe_live() -> str | None:
    """None when this machine can run a lab live, else why not (one line)."""
    if os.geteuid() != 0:
        return "the grader is not root (live labs build network namespaces)"
    # Namespaces first: in a container that cannot make them (Gradescope), installing
    # Mininet would not help, and the reason must not say it would.
    from .sandbox import namespaces_problem
    problem = namespaces_problem()
    if problem:
        return problem
    from ..lab import mininet_available
    return mininet_available()


# --- one submission ---------------------------------------------------------------------------------

class SubmissionRun:
    """The per-submission state: its worker, its staged inputs and, live, its lab."""

    def __init__(self, grader: "Grader", folder: Path, student_id: str | None) -> None:
        self.grader = grader
        self.folder = folder
        self.student_id = student_id
        self.variant = grader.lab.variant_for(student_id)
        # One group of its own per submission: its worker processes and (live) its lab's
        # router run with it, and its folders are root's and that group's alone (0750), so
        # nothing of one student's is readable by another student's code.
        self.gid = grader.uid if grader.uid else sandbox_uid()
        self.tmp = Path(tempfile.mkdtemp(prefix="nattrack-grade-"))
        self._share(self.tmp)
        self.sub_copy = self.tmp / "submission"
        self.refused = _copy_submission(folder, self.sub_copy, grader.lab.files)
        self.inbox = self.tmp / "inbox"
        self.inbox.mkdir(mode=0o755)
        self.worker = Worker(pkg=grader.pkg, lab=grader.lab_copy, submission=self.sub_copy,
                             inbox=self.inbox, uid=grader.uid, gid=self.gid,
                             unsafe_no_jail=grader.unsafe_no_jail)
        self.lab_run_dir: Path | None = None
        self.lab_mode = ""                        # the running lab's router mode
        self._lock: IO[str] | None = None
        self._client = None
        self.live_errors: dict[str, str] = {}     # router mode -> why its lab did not start

    def _share(self, folder: Path) -> None:
        """``folder``: root's and this submission's group's only (0750), as root; else the
        grader's own (0700: its code runs as the grader's user, in a user namespace)."""
        if os.geteuid() == 0:
            os.chown(folder, 0, self.gid)
            os.chmod(folder, 0o750)
        else:
            os.chmod(folder, 0o700)

    def stage(self, path: Path) -> str:
        """Copy a (trusted) input file where the worker can read it; its path there."""
        data = Path(path).read_bytes()
        name = hashlib.sha1(data).hexdigest()[:16] + "-" + Path(path).name
        dest = self.inbox / name
        if not dest.exists():
            dest.write_bytes(data)
            os.chmod(dest, 0o644)
        return self.worker.inbox_path(name)

    # -- live -----------------------------------------------------------------------------
    def live_client(self, mode: str = ""):
        """The running lab's client, its router in ``mode`` (default: lab.toml's); a lab
        in the other mode is stopped first (the grader runs one test mode's tests together)."""
        mode = mode or self.grader.lab.mode
        if self._client is not None and self.lab_mode != mode:
            self.stop_lab()
        if self._client is None:
            if mode in self.live_errors:
                raise SubmissionError(self.live_errors[mode])
            try:
                self._client = self._start_lab(mode)
                self.lab_mode = mode
            except SubmissionError as exc:
                self.live_errors[mode] = str(exc)
                raise
        return self._client

    def _start_lab(self, mode: str):
        """``nattrack lab up`` (root) whose router runs the submission after dropping root;
        it gets the lab's public copy (lab.toml, data, rules), never the lab folder itself
        (solution/, tests) nor the hidden tests."""
        lab = self.grader.lab
        from ..lab.client import LabClient
        self.lab_run_dir = Path(tempfile.mkdtemp(prefix="ntgrade-lab-"))
        self._share(self.lab_run_dir)
        argv = [sys.executable, "-m", "nattrack.cli.main", "lab", "up", "--topo",
                str(lab.topology), "--mode", mode]
        if lab.pieces:                            # else the submission is data the tests read
            argv += ["--plugin", f"{self.grader.lab_copy}={self.sub_copy}"]
        if lab.rules:
            argv += ["--rules", str(lab.rules)]
        if self.grader.live_lock:                 # one lab at a time across --jobs
            import fcntl
            self._lock = open(self.grader.live_lock, "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                               env=self._lab_env(), cwd="/")
        except subprocess.TimeoutExpired:
            raise SubmissionError("the lab with your code did not start within 180 s") from None
        if r.returncode != 0:
            why = " ".join((r.stderr.strip().splitlines() or ["?"])[-1].split())
            raise SubmissionError(f"the lab with your code did not start: {why[:400]}")
        # lab up made it 0755; its logs are this submission's, and only root (the grader)
        # talks to its socket: root's and this submission's uid's again
        self._share(self.lab_run_dir)
        return LabClient(self.lab_run_dir / "lab.sock", timeout=60)

    def router_hint(self) -> str:
        """' (the router running your code stopped: LAST LOG LINE)' when it did, else ''."""
        if self._client is None or self.lab_run_dir is None:
            return ""
        try:
            routers = self._client.status().get("routers", {})
        except Exception:                          # noqa: BLE001 -- only a hint
            return ""
        dead = [n for n, r in routers.items() if r.get("alive") is False]
        if not dead:
            return ""
        try:
            lines = [line.strip() for line in (self.lab_run_dir / f"router-{dead[0]}.log")
                     .read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        last = next((line for line in reversed(lines) if "Error" in line or "error" in line),
                    lines[-1] if lines else "no log")
        return f" (the router running your code stopped: {last[:300]})"

    def _lab_env(self) -> dict:
        """What ``nattrack lab up``/``down`` get: nothing of the grader's environment but
        the search path; the router drops to this submission's own uid
        (``NATTRACK_PLUGIN_RUN_AS``, see ``nattrack.router``), not the shared ``nobody``."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
               "LANG": "C.UTF-8", "NATTRACK_RUN_DIR": str(self.lab_run_dir),
               "PYTHONPATH": str(_repo_root()), "NATTRACK_PLUGIN_RUN_AS": str(self.gid)}
        if os.environ.get("TMPDIR"):
            env["TMPDIR"] = os.environ["TMPDIR"]
        return env

    def stop_lab(self) -> None:
        if self.lab_run_dir is None:
            return
        env = self._lab_env()
        try:
            for extra in ([], ["--force"]):
                subprocess.run([sys.executable, "-m", "nattrack.cli.main", "lab", "down",
                                *extra], capture_output=True, timeout=120, env=env, cwd="/")
        finally:
            shutil.rmtree(self.lab_run_dir, ignore_errors=True)
            self.lab_run_dir, self._client = None, None
            if self._lock is not None:
                self._lock.close()                # releases the flock
                self._lock = None

    def close(self) -> None:
        self.worker.close()
        try:
            self.stop_lab()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _copy_submission(src: Path, dest: Path, files: Sequence[str]) -> list[str]:
    """The lab's files of a submission, found at its top or one folder down (a zip of a
    folder), copied into a folder the worker may read.  Nothing else is copied, and no
    symbolic link is ever followed (the grader is root: a link could pull in a solution or
    the hidden tests): each link met is refused, and the list of one-line reasons (what
    the student reads) is returned."""
    dest.mkdir()
    os.chmod(dest, 0o755)                         # inside the submission's 0750 folder
    refused: list[str] = []
    if src.is_symlink():
        return [f"{src.name} is a symbolic link: submit the folder itself"]
    candidates = [src]
    for p in sorted(src.iterdir()) if src.is_dir() else []:
        if p.is_symlink() and p.is_dir():
            refused.append(f"{p.name} is a symbolic link: submit the folder itself")
        elif p.is_dir():
            candidates.append(p)
    for name in files:
        for base in candidates:
            p, link = base, None
            for part in Path(name).parts:
                p = p / part
                if p.is_symlink():
                    link = p
                    break
            if link is not None:
                what = "file" if link == base / name else "folder"
                refused.append(f"{link.relative_to(src)} is a symbolic link: submit the "
                               f"{what} itself")
                break
            if p.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fin, open(dest / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.chmod(dest / name, 0o644)
                break
    return refused


# --- the grader ---------------------------------------------------------------------------------------

class Grader:
    """Grades submissions of one lab; holds what all of them share (tests, package copy)."""

    def __init__(self, lab_dir, hidden=None, mode: str = "auto", uid: int | None = None,
                 tests_filter=None, log=None, unsafe_no_jail: bool = False) -> None:
        if mode not in ("auto", "offline", "live"):
            raise GradeError(f"--mode {mode}: expected auto, offline or live")
        self.lab = load_lab(lab_dir)
        self.tests = [t for t in load_tests(self.lab, hidden)
                      if tests_filter is None or tests_filter(t.spec)]
        self.uid = uid
        self.unsafe_no_jail = unsafe_no_jail
        self.log = log or (lambda msg: None)
        from .sandbox import bwrap_problem
        if os.geteuid() != 0 and bwrap_problem() and not unsafe_no_jail:
            # Not root: the worker cannot change uid, only bwrap's jail keeps it from the
            # grader's own files (the hidden tests, other students' results).
            raise GradeError(f"not root and no bwrap jail ({bwrap_problem()}): student code "
                             f"would run as you and read all you can; run as root, make "
                             f"bwrap work, or pass --unsafe-no-jail")
        self.live_lock: str | None = None        # a file to flock around each live lab
        live_problem = probe_live() if mode != "offline" else "--mode offline"
        if mode == "live" and live_problem:
            raise GradeError(f"--mode live: {live_problem}")
        self.live_problem = live_problem
        self.mode = "offline" if live_problem else "live"
        from .sandbox import bwrap_problem
        if (hidden is not None and self.mode == "live" and self.lab.pieces
                and _others_can_read(Path(hidden))):
            # The live router imports the submission as an unprivileged user, outside the
            # jail: only permissions keep it from the hidden tests (a crash message could
            # carry them into a visible test's output).
            raise GradeError(f"--hidden {hidden}: live grading runs student code in the lab's "
                             "router as an unprivileged user who could read it: make it "
                             "readable by you only (chmod -R go-rwx), or use --mode offline")
        if hidden is not None and bwrap_problem() and _others_can_read(Path(hidden)):
            print(f"nattrack: warning: without a bwrap jail ({bwrap_problem()}) student code "
                  f"could read {hidden}: make it readable by you only (chmod -R go-rwx)",
                  file=sys.stderr)
        self._tmp = Path(tempfile.mkdtemp(prefix="nattrack-grader-"))
        os.chmod(self._tmp, 0o755)
        self.pkg = package_copy(self._tmp / "pkg")
        self.lab_copy = lab_view(self.lab.dir, self._tmp / "lab", self.lab.rules_as_written,
                                 self.lab.rules)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the probe ------------------------------------------------------------------------
    def probe_result(self) -> TestResult:
        from .sandbox import bwrap_problem
        live = [t for t in self.tests if t.spec.mode == "live"
                and t.spec.visibility == "visible"]
        if self.mode == "live":
            lines = ["Grading mode: live and offline (root, network namespaces, Mininet)."]
        else:
            lines = [f"Grading mode: offline only ({self.live_problem})."]
            if live:
                lines.append(f"{len(live)} live test(s) were not run; they count for nothing "
                             f"here.")
        who = ("an unprivileged user of its own" if os.geteuid() == 0 else
               "the grader's own (non-root) user, without privileges")
        lines.append(f"Your code runs as {who}, with limits on time, memory, processes and "
                     f"output.")
        # What held is what a worker, started as every submission's is, found: asked once.
        from .worker import isolation_lines, probe_isolation
        if getattr(self, "_isolation", None) is None:
            self._isolation = probe_isolation(self.pkg, self.lab_copy, self._tmp, uid=self.uid,
                                              unsafe_no_jail=self.unsafe_no_jail)
        lines += isolation_lines(self._isolation, bwrap_problem())
        return TestResult(name="Environment probe: what this grader can run", number="0",
                          score=0, max_score=0, status="passed", output="\n".join(lines),
                          visibility="visible", tags=["probe"])

    # -- grading --------------------------------------------------------------------------
    def grade(self, folder, student_id: str | None = None) -> Results:
        folder = Path(folder)
        if not folder.is_symlink():                # a linked one is refused, never followed
            folder = folder.resolve()
        if not folder.is_dir() and not folder.is_symlink():
            raise GradeError(f"{folder}: not a folder")
        t0 = time.monotonic()
        run = SubmissionRun(self, folder, student_id)
        results: list[TestResult] = [self.probe_result()]
        try:
            plan = []                      # (test, mode): visible first, offline first
            for t in self.tests:
                live = t.spec.mode == "live" or (t.spec.mode == "any" and self.mode == "live")
                plan.append((t, "live" if live else "offline"))
            # ... and the live tests of the lab's own router mode before those of the other
            plan.sort(key=lambda tm: (tm[0].spec.visibility != "visible", tm[1] == "live",
                                      tm[0].spec.lab_mode not in ("", self.lab.mode)))
            group = None
            for t, m in plan:
                if m == "live" and self.mode != "live":
                    results.append(_not_run(t.spec, self.live_problem))
                    continue
                want = t.spec.lab_mode or self.lab.mode
                if t.spec.mode == "live" and self.mode == "live" and want not in run.live_errors:
                    try:                        # the lab starts outside any test's timer
                        run.live_client(want)   # (the running one, if in that mode)
                    except SubmissionError:
                        pass                    # each live test reports it
                g = t.spec.visibility == "visible"
                if group is not None and g != group:
                    run.worker.close()          # hidden tests get a worker of their own
                group = g
                results.append(self._run_one(run, t, m))
            missing = [f for f in self.lab.files if not (run.sub_copy / f).exists()]
        finally:
            run.close()
        order = {t.spec.number: i for i, t in enumerate(self.tests)}
        results.sort(key=lambda r: -1 if r.number == "0" else order.get(r.number, 0))
        out = [f"{self.lab.label}: {self.lab.title}".rstrip(": ")]
        if run.variant:
            out.append("Your variant: " + ", ".join(f"{k}={v}" for k, v in run.variant.items()))
        if missing:
            out.append("Missing from your submission: " + ", ".join(missing))
        if run.refused:
            why = "; ".join(run.refused)
            out.append("Refused: " + why)
            for r in results:
                if r.number != "0" and r.score < r.max_score:
                    r.output = why + (f" ({r.output})" if r.output else "")
        return Results(tests=results, execution_time=time.monotonic() - t0,
                       output="\n".join(out))

    def _run_one(self, run: SubmissionRun, lt: LoadedTest, mode: str) -> TestResult:
        spec = lt.spec
        t0 = time.monotonic()
        if not run.worker.alive() and not run.worker.start_error:
            try:
                run.worker.start()
            except SubmissionError:
                pass                       # the test's first call reports why
        ctx = Ctx(self, run, mode, time.monotonic() + spec.timeout, spec.lab_mode)
        box: dict = {}

        def body():
            try:
                box["value"] = spec.func(ctx)
            except BaseException as exc:   # noqa: BLE001 -- reported below
                box["exc"] = exc

        th = threading.Thread(target=body, daemon=True, name=f"test-{spec.number}")
        th.start()
        th.join(spec.timeout)
        if th.is_alive():
            run.worker.close()             # unblocks a call waiting on the worker
            th.join(2)
            return _result(spec, 0.0, f"timed out after {spec.timeout:g} s", t0)
        if "exc" in box:
            exc = box["exc"]
            hint = run.router_hint() if mode == "live" else ""
            if isinstance(exc, AssertionError):
                return _result(spec, 0.0, _assert_text(exc, lt.source) + hint, t0)
            if isinstance(exc, SubmissionError):
                return _result(spec, 0.0, str(exc) + hint, t0)
            from ..lab import LabError
            if mode == "live" and isinstance(exc, (LabError, OSError)):
                return _result(spec, 0.0, f"the lab: {' '.join(str(exc).split())[:300]}{hint}",
                               t0)
            where = _test_frame(exc, lt.source)
            self.log(f"grader: test {spec.number} ({lt.source.name}) raised "
                     f"{type(exc).__name__}: {exc}{where}")
            return _result(spec, 0.0, f"the test itself failed ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:300]}{where}); tell your "
                                      f"instructor", t0)
        value = box.get("value")
        if value is None or value is True:
            return _result(spec, 1.0, "", t0)
        if value is False:
            return _result(spec, 0.0, "failed", t0)
        if isinstance(value, (int, float)) and 0 <= value <= 1:
            return _result(spec, float(value),
                           "" if value == 1 else f"partial credit: {float(value):.0%}", t0)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (int, float)):
            return _result(spec, max(0.0, min(1.0, float(value[0]))), str(value[1]), t0)
        return _result(spec, 0.0, f"the test returned {value!r}, not a fraction in [0, 1]; "
                                  f"tell your instructor", t0)


def _others_can_read(folder: Path) -> bool:
    """Could any user list ``folder`` or read anything in it: the folder listable (o+rx),
    or any file readable by others (o+r) whose every folder on the way is searchable (o+x)
    -- test files have guessable names, listing is not needed to open one."""
    folder = folder.resolve()
    try:
        if not all(os.stat(p).st_mode & 0o001 for p in folder.parents):
            return False
        if os.stat(folder).st_mode & 0o005 == 0o005:
            return True
        for root, dirs, files in os.walk(folder):
            if not os.stat(root).st_mode & 0o001:
                dirs[:] = []                       # nothing below it is reachable
                continue
            if any(os.stat(os.path.join(root, f)).st_mode & 0o004 for f in files):
                return True
    except OSError:
        return False
    return False


def _assert_text(exc: AssertionError, source: Path) -> str:
    msg = " ".join(str(exc).split()) if str(exc).strip() else ""
    if msg:
        return msg
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(source)]
    return f"assertion failed: {frames[-1].line}" if frames else "assertion failed"


def _test_frame(exc: BaseException, source: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(source)]
    return f" at {source.name} line {frames[-1].lineno}" if frames else ""


MAX_TEST_OUTPUT = 8000                  # characters of a test's output kept in the results


def _result(spec: TestSpec, fraction: float, output: str, t0: float) -> TestResult:
    score = round(spec.points * fraction, 4)
    if len(output) > MAX_TEST_OUTPUT:
        output = (output[:MAX_TEST_OUTPUT] + f" ... ({len(output) - MAX_TEST_OUTPUT} more "
                  f"characters)")
    return TestResult(name=spec.name, number=spec.number, score=score, max_score=spec.points,
                      status="passed" if score >= spec.points else "failed", output=output,
                      visibility=spec.visibility, tags=list(spec.tags),
                      execution_time=time.monotonic() - t0)


def _not_run(spec: TestSpec, why: str | None) -> TestResult:
    return TestResult(name=spec.name, number=spec.number, score=0, max_score=0,
                      status="failed",
                      output=f"not run: this is a live test ({spec.points:g} points when "
                             f"graded live) and this grader is offline only ({why})",
                      visibility=spec.visibility, tags=[*spec.tags, "not-run"])
