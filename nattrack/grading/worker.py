"""The sandboxed worker: the only process that runs a submission's code.

Two halves in one module:

- inside the sandbox, ``python -m nattrack.grading.worker LAB_DIR SUBMISSION_DIR`` first
  installs the seccomp filter of :mod:`nattrack.sandbox.seccomp` on itself (always, jail or
  not: without bwrap it is what keeps the network out) and sends what isolation held
  (:func:`isolate`), then imports the submission's modules (``files`` of ``lab.toml``), says
  hello (with each module's import error, if any), then answers JSON lines on stdin with
  JSON lines on its original stdout: ``{"op": "call", "func": "module.function", "args":
  [...]}`` and ``{"op": "replay", ...}`` (``nattrack replay --json`` with the submission
  plugged in).  The submission's own prints go to stderr, which the grader reads and caps.
- in the grader, :class:`Worker` starts it through :class:`nattrack.grading.sandbox.Untrusted`
  (a fresh unprivileged uid, no_new_privs, no capabilities, rlimits, a bwrap jail that holds
  only the submission, a copy of the lab's ``lab.toml``/``data``/``rules``, the interpreter
  and the nattrack package, and no network; the worker's own seccomp filter inside), sends
  requests with a wall-clock limit each, and turns every way the process can misbehave
  into :class:`SubmissionError` with one line a student can read.  A dead worker is
  restarted by the runner before the next test.

Nothing the worker sends is trusted beyond being a value the submission produced, except
its first line, the isolation report: it is written before any of the submission's code
runs.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:                       # (the jailed worker process never imports the sandbox)
    from .sandbox import Untrusted

# --- inside the sandbox ----------------------------------------------------------------------


def _where(exc: BaseException, sub: str) -> str:
    """' (tcp_states.py, line 12)' for the innermost frame in the submission, else ''."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.filename.startswith(sub):
        return f" (line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith(sub + "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" ({os.path.relpath(f.filename, sub)}, line {f.lineno})"


def _describe(exc: BaseException, sub: str) -> str:
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError line {exc.lineno}: {exc.msg}"
    msg = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {msg}{_where(exc, sub)}" if msg else \
        f"{type(exc).__name__}{_where(exc, sub)}"


def _jsonable(v, depth: int = 0):
    """Tuples to lists, enums to their names, sets to sorted lists; else TypeError."""
    import enum
    if depth > 50:
        raise TypeError("nested too deeply")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, enum.Enum):
        return v.name
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_jsonable(x, depth + 1) for x in v), key=repr)
    if isinstance(v, dict):
        return {str(_jsonable(k, depth + 1)): _jsonable(x, depth + 1) for k, x in v.items()}
    raise TypeError(f"a {type(v).__name__} is not a plain value (use str, int, list, dict)")


def _read_files(lab_dir: str) -> list[str]:
    from nattrack.exercises.manifest import load
    return list(load(lab_dir).files)


class _Served:
    def __init__(self, lab_dir: str, sub: str) -> None:
        import importlib
        from nattrack.exercises.plugin import PluginError, check_own_code
        self.lab_dir, self.sub = lab_dir, sub
        self.modules: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        self.plugged = False                # the submission is plugged into the engine
        sys.path.append(sub)                       # last: the stdlib and nattrack win
        for name in _read_files(lab_dir):
            if not name.endswith(".py"):
                continue
            mod = name[:-3].replace("/", ".")
            if not os.path.exists(os.path.join(sub, name)):
                self.errors[mod] = f"your submission has no {name}"
                continue
            try:
                check_own_code(Path(sub) / name, name)
                self.modules[mod] = importlib.import_module(mod)
            except PluginError as exc:
                self.errors[mod] = str(exc)
            except BaseException as exc:       # noqa: BLE001 -- a student's module
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.errors[mod] = f"your {name} does not import: {_describe(exc, sub)}"

    def call(self, func: str, args: list) -> dict:
        mod, _, name = func.rpartition(".")
        if mod in self.errors:
            return {"ok": False, "error": self.errors[mod]}
        m = self.modules.get(mod)
        if m is None:
            return {"ok": False, "error": f"{mod} is not one of the lab's files"}
        fn = getattr(m, name, None)
        if not callable(fn):
            return {"ok": False, "error": f"your {mod}.py has no function {name}()"}
        try:
            value = fn(*args)
        except SystemExit as exc:
            return {"ok": False, "error": f"{func} called exit({exc.code!r})"}
        except MemoryError:
            limit = os.environ.get("NATTRACK_MEMORY_MB", "?")
            return {"ok": False, "error": f"{func} ran out of memory (the limit is {limit} MB)"}
        except BaseException as exc:           # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"ok": False, "error": f"{func} raised {_describe(exc, self.sub)}"}
        try:
            return {"ok": True, "value": _jsonable(value)}
        except (TypeError, RecursionError) as exc:
            return {"ok": False, "error": f"{func} returned something the grader cannot read: "
                                          f"{exc}"}

    def replay(self, req: dict) -> dict:
        if self.errors:
            return {"ok": False, "error": "; ".join(self.errors.values())}
        try:
            if not self.plugged:
                from nattrack.exercises import manifest, plugin
                plugin.install(manifest.load(self.lab_dir), self.sub)
                self.plugged = True
            from nattrack.grading.replayjson import replay_json
            return {"ok": True, "value": replay_json(req, verify=True)}
        except BaseException as exc:           # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = _describe(exc, self.sub)
            if any(c.__name__ == "PluginError" for c in type(exc).__mro__):  # one line already
                text = text.partition(": ")[2] or text
            return {"ok": False, "error": f"the replay with your code failed: {text}"}


def _namespaces() -> dict[str, str]:
    """{"net": "net:[4026531840]", ...}: which namespaces this process is in."""
    out = {}
    for ns in ("net", "mnt", "pid"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            out[ns] = "?"
    return out


def _interfaces() -> list[str]:
    """The network interfaces this process's network namespace has (/proc/net/dev)."""
    try:
        with open("/proc/net/dev") as f:
            return sorted(line.split(":")[0].strip() for line in f if ":" in line)
    except OSError:
        return ["?"]


def isolate() -> dict:
    """Install the seccomp filter (:mod:`nattrack.sandbox.seccomp`) on this process, then
    report what holds, as found by trying: the filter's answers, the namespaces, the network
    interfaces, whether the machine's /etc is in sight.  The grader turns it into the
    probe's text (:func:`isolation_lines`)."""
    from nattrack.sandbox import seccomp
    try:
        seccomp.install()
        installed = "on"
    except seccomp.SeccompUnavailable as exc:
        installed = str(exc)
    return {"seccomp": installed, "tried": seccomp.check(), "ns": _namespaces(),
            "interfaces": _interfaces(), "etc_visible": os.path.exists("/etc/passwd")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m nattrack.grading.worker LAB_DIR SUBMISSION_DIR", file=sys.stderr)
        return 2
    lab_dir, sub = (os.path.abspath(a) for a in argv)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)                                  # the submission's prints: stderr
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    # Before any of the submission's code: the filter, and what held, sent while nothing
    # else could have written to the channel yet.
    send({"isolation": isolate()})
    served = _Served(lab_dir, sub)
    send({"hello": 1, "errors": served.errors})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "call":
                resp = served.call(str(req["func"]), list(req.get("args", [])))
            elif op == "replay":
                resp = served.replay(req)
            else:
                resp = {"ok": False, "error": f"unknown request {op!r}"}
        except MemoryError:
            resp = {"ok": False, "error": "ran out of memory"}
        except (ValueError, KeyError, TypeError) as exc:
            resp = {"ok": False, "error": f"bad request: {exc}"}
        try:
            send(resp)
        except (TypeError, ValueError) as exc:
            send({"ok": False, "error": f"the answer cannot be sent: {exc}"})
    return 0


# --- in the grader ------------------------------------------------------------------------------

class SubmissionError(Exception):
    """The submission's code failed, crashed or misbehaved; the message is for the student."""


def _world_readable(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def package_copy(dest: Path) -> Path:
    """A compiled, world-readable copy of the nattrack package under ``dest`` (the jail's
    ``/opt/nattrack``; the checkout itself may sit under a folder ``nobody`` cannot enter)."""
    import compileall
    import nattrack
    src = Path(nattrack.__file__).resolve().parent
    shutil.copytree(src, dest / "nattrack", ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(dest / "nattrack"), quiet=1, workers=1)
    _world_readable(dest)
    return dest


def lab_view(lab_dir: Path, dest: Path, rules: str | None = None,
             rules_path: Path | None = None) -> Path:
    """What of the lab the worker may see: lab.toml, data/, rules/ and the manifest's rules
    file at the path lab.toml names (``examples/rules/...`` too) -- never solution/ or tests/."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(lab_dir / "lab.toml", dest / "lab.toml")
    for sub in ("data", "rules"):
        if (lab_dir / sub).is_dir():
            shutil.copytree(lab_dir / sub, dest / sub)
    if rules and rules_path and not (dest / rules).exists():
        target = (dest / rules).resolve()
        if dest.resolve() in target.parents:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rules_path, target)
    _world_readable(dest)
    return dest


class Worker:
    """The grader's handle on one sandboxed worker for one submission."""

    HELLO_TIMEOUT = 10.0

    def __init__(self, *, pkg: Path, lab: Path, submission: Path, inbox: Path,
                 uid: int | None = None, gid: int | None = None,
                 unsafe_no_jail: bool = False, memory_mb: int = 512, max_procs: int = 32, cpu_seconds: int = 300,
                 max_output: int = 1_000_000, max_answer: int = 16 << 20) -> None:
        self.pkg, self.lab, self.submission, self.inbox = pkg, lab, submission, inbox
        self.fixed_uid, self.memory_mb, self.max_procs = uid, memory_mb, max_procs
        self.gid, self.unsafe_no_jail = gid, unsafe_no_jail
        self.uid: int | None = None
        self.cpu_seconds, self.max_output, self.max_answer = cpu_seconds, max_output, max_answer
        self.proc: Untrusted | None = None
        self.errors: dict[str, str] = {}
        self.dead: str | None = "not started"
        self.start_error: str | None = None    # it could not even start: no more tries
        self.isolation: dict | None = None     # what held, as the worker found (isolate())
        self.starts = 0

    # -- paths as the worker sees them --------------------------------------------------------
    @property
    def jailed(self) -> bool:
        return bool(self.proc and self.proc.jailed)

    def inbox_path(self, name: str) -> str:
        return f"/inbox/{name}" if self.jailed else str(self.inbox / name)

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        from .sandbox import Jail, Untrusted
        self.close()
        self.starts += 1
        jail = Jail([(str(self.pkg), "/opt/nattrack"), (str(self.lab), "/lab"),
                     (str(self.submission), "/submission"), (str(self.inbox), "/inbox")],
                    network=False, chdir="/tmp")
        from .sandbox import bwrap_problem
        if bwrap_problem() is None:
            pkg, lab, sub = "/opt/nattrack", "/lab", "/submission"
        elif os.geteuid() != 0 and not self.unsafe_no_jail:
            # not root: no other uid to drop to, only the jail kept it from our files
            self.start_error = self.dead = (f"the grader cannot jail your code here "
                                            f"({bwrap_problem()}) and will not run it unjailed")
            raise SubmissionError(self.start_error)
        else:
            pkg, lab, sub = str(self.pkg), str(self.lab), str(self.submission)
            jail.chdir = str(self.inbox)
        py = os.path.realpath(sys.executable)
        from .sandbox import sandbox_uid
        self.uid = self.fixed_uid or sandbox_uid()
        self.proc = Untrusted([py, "-s", "-B", "-m", "nattrack.grading.worker", lab, sub],
                              jail=jail, cpu_seconds=self.cpu_seconds,
                              memory_mb=self.memory_mb, max_procs=self.max_procs,
                              uid=self.uid, gid=self.gid or self.uid, env={"PYTHONPATH": pkg,
                                   "NATTRACK_MEMORY_MB": str(self.memory_mb),
                                   "NATTRACK_PURE": "1"})   # it plugs pieces in (nattrack/__init__.py)
        self.flooded = False
        self.err_total = 0
        self.err_tail = bytearray()
        self.buf = b""
        self.dead = None
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        try:
            first = self._read(self.HELLO_TIMEOUT, "starting your code's process")
            self.isolation = first.get("isolation")
            hello = self._read(self.HELLO_TIMEOUT, "importing your files")
        except SubmissionError as exc:         # the same again next time: do not retry
            self.start_error = str(exc)
            self.dead = self.start_error
            raise
        self.errors = dict(hello.get("errors") or {})

    def _drain_stderr(self, proc) -> None:
        fd = proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            self.err_total += len(chunk)
            self.err_tail = (self.err_tail + chunk)[-4096:]
            if self.err_total > self.max_output and not self.flooded:
                self.flooded = True
                proc.stop()
                return

    def alive(self) -> bool:
        return self.proc is not None and self.dead is None and self.proc.alive()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.proc = None
        self.dead = "closed"

    # -- requests ---------------------------------------------------------------------------
    def request(self, req: dict, timeout: float, what: str):
        """Send one request; its value, or :class:`SubmissionError` with the reason."""
        if self.start_error:
            raise SubmissionError(self.start_error)
        if not self.alive():
            raise SubmissionError(f"{what}: your code's process is not running "
                                  f"({self.dead or 'it ended'})")
        proc = self.proc
        assert proc is not None and proc.stdin is not None     # alive() said so
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._died(what, timed_out=False)
        resp = self._read(timeout, what)
        if resp.get("ok"):
            return resp.get("value")
        raise SubmissionError(str(resp.get("error") or "failed")[:1000])

    def _read(self, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        proc = self.proc
        assert proc is not None and proc.stdout is not None    # request() checked it
        try:
            fd = proc.stdout.fileno()
        except ValueError:                     # closed: the output cap stopped it meanwhile
            self._died(what, timed_out=False)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._died(what, timed_out=True, timeout=timeout)
            try:
                ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            except (OSError, ValueError):
                ready = []
                self._died(what, timed_out=False)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._died(what, timed_out=False)
            self.buf += chunk
            if len(self.buf) > self.max_answer:
                self.dead = "sent too much"
                proc.stop()
                raise SubmissionError(f"{what}: your code returned more than "
                                      f"{self.max_answer >> 20} MB; the grader stopped it")
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError
            return obj
        except ValueError:
            self.dead = "garbled answer"
            proc.stop()
            raise SubmissionError(f"{what}: your code wrote over the grader's channel; "
                                  f"the grader stopped it") from None

    def _died(self, what: str, timed_out: bool, timeout: float = 0.0):
        proc = self.proc
        assert proc is not None
        if timed_out:
            proc.stop()
            reason = (f"did not finish within {timeout:g} s (an endless loop?); "
                      f"the grader stopped it")
        else:
            try:
                proc.proc.wait(3)
            except Exception:                        # noqa: BLE001
                pass
            proc.stop()
            if self.flooded:
                reason = (f"printed more than {self.max_output // 1_000_000 or 1} MB; "
                          f"the grader stopped it")
            else:
                reason = proc.exit_reason(bytes(self.err_tail))
                if reason.startswith("exit status"):
                    reason = f"your code's process exited ({reason})"
                elif reason.startswith("killed by"):
                    reason = f"your code's process was {reason}"
                else:
                    reason = f"your code's process {reason}"
        self.dead = reason
        raise SubmissionError(f"{what}: {reason}")



# --- what isolation held, for the probe ----------------------------------------------------------

def probe_isolation(pkg: Path, lab: Path, tmp: Path, *, uid: int | None = None,
                    gid: int | None = None, unsafe_no_jail: bool = False) -> dict | str:
    """Start a worker exactly as a submission's is started (with an empty submission, in a
    folder made under ``tmp``) and return what it reported (:func:`isolate`), or one line
    saying why it could not start."""
    import tempfile
    from .sandbox import SandboxError
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=tmp))
    try:
        os.chmod(folder, 0o755)
        (folder / "submission").mkdir(mode=0o755)
        (folder / "inbox").mkdir(mode=0o755)
        w = Worker(pkg=pkg, lab=lab, submission=folder / "submission", inbox=folder / "inbox",
                   uid=uid, gid=gid, unsafe_no_jail=unsafe_no_jail)
        try:
            w.start()
        except (SubmissionError, SandboxError) as exc:
            return str(exc)
        finally:
            w.close()
        return w.isolation if isinstance(w.isolation, dict) else "the worker reported nothing"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def isolation_lines(report: dict | str, jail_problem: str | None) -> list[str]:
    """The probe's lines on isolation, each true of what the worker found (``report``, from
    :func:`isolate`), compared with this (the grader's) process; ``jail_problem`` is why
    there was no bwrap jail (:func:`~nattrack.grading.sandbox.bwrap_problem`), if none."""
    if not isinstance(report, dict):
        return [f"Isolation: unknown (the grader could not start a worker to check: {report})."]
    ns, tried = report.get("ns") or {}, report.get("tried") or {}
    mine = _namespaces()                     # the grader's own

    def own(name: str) -> bool:
        return ns.get(name, "?") != "?" and ns.get(name) != mine.get(name)

    filtered = report.get("seccomp") == "on"
    lines = []
    if filtered:
        lines.append("Seccomp filter: on (no network sockets, no ptrace, no new namespaces, "
                     "no mounts).")
    else:
        lines.append(f"Seccomp filter: not installed ({report.get('seccomp')}).")
    if own("net") and set(report.get("interfaces") or ["?"]) <= {"lo"}:
        lines.append("Network: none -- no network in a network namespace of its own "
                     "(loopback only)" + (", and the seccomp filter denies network sockets."
                                          if tried.get("socket(AF_INET)") == "denied" else "."))
    elif tried.get("socket(AF_INET)") == "denied":
        lines.append("Network: cut off by the seccomp filter (no IPv4, IPv6, packet or netlink "
                     "sockets; only local Unix sockets and pipes).")
    else:
        lines.append("Network: NOT cut off -- your code could open network connections.")
    if own("mnt") and not report.get("etc_visible", True):
        lines.append("Files: in a jail that holds only your files and the kit's public ones.")
    else:
        lines.append("Files: without a file-system jail ("
                     + (jail_problem or "the worker shares the grader's file system")
                     + "): only permissions keep your code out of what it should not read.")
    procs = ("hidden (a process namespace of its own)" if own("pid") else "visible in /proc")
    if tried.get("ptrace") == "denied":
        procs += "; ptrace and reading their memory are denied by the seccomp filter"
    else:
        procs += "; ptrace is not filtered (only the uid keeps your code out of them)"
    lines.append(f"Other processes: {procs}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
