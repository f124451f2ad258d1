"""Run untrusted (student) programs in a separate, unprivileged, resource-limited process.

:func:`run_untrusted` is the only entry point.  What it does, in order:

1. Checks the grader's own set-up (the folder exists, the sandbox uid is not root, the
   tools are there) -- problems *there* raise :class:`SandboxError`; nothing the student's
   program does ever raises.
2. Makes the submission folder readable to the sandbox user (``o+rX`` on the folder and
   everything in it; with ``writable=True`` the tree is given to the sandbox user).  Every
   folder above it must already be searchable by that user.
3. Starts a small supervisor (``python -I -c``, the grader's uid, a child subreaper) in a
   new session; it starts ``prlimit --as --nproc --cpu --fsize --core=0 -- setpriv ... --
   ARGV`` in a session of its own:

   - as root: ``setpriv --reuid UID --regid GID --clear-groups --no-new-privs
     --bounding-set=-all`` -- the program never runs as root and cannot regain it
     (``no_new_privs`` disables set-uid binaries, file capabilities are gone);
   - not as root: ``setpriv --no-new-privs`` as the current user (``RLIMIT_NPROC`` then
     counts the user's other processes too, so the limit is raised by their number).
4. Gives it a minimal environment (``PATH``, ``HOME`` = the folder, ``LANG``, ``TMPDIR``,
   plus what the caller passes in ``env``) -- nothing of the grader's environment leaks.
5. Reads stdout and stderr together up to ``max_output`` bytes; past that, or past the
   wall-clock ``timeout``, the supervisor is told (SIGTERM) to kill the whole tree.
6. When the program's main process ends, the supervisor SIGKILLs and reaps every process
   it left behind (a background child, a fork bomb, a ``setsid`` double fork: as a
   subreaper it inherits them all), then exits with the program's status.  As a last
   resort the grader sweeps processes carrying the run's marker in their environment or
   (as root) owned by the sandbox uid and started during the run.

Limits of :func:`run_untrusted` (:class:`Untrusted` with a :class:`Jail` adds ``bwrap``):

- The file system is not hidden: the program can read every world-readable file on the
  machine.  Only permissions keep it out of ``/etc/shadow``, root's 0600 files and 0700
  folders.  :class:`Jail` (``bwrap --ro-bind ...``) hides everything else.
- The network is not cut off (:class:`Jail`: ``bwrap --unshare-net``; the grader's worker
  also installs its own seccomp filter, :mod:`nattrack.sandbox.seccomp`, which is what cuts
  it off where bwrap cannot run).
- ``RLIMIT_AS`` limits address space, not resident memory; a program that maps a lot
  without touching it fails early, and memory used through other processes is bounded only
  by ``max_procs`` x ``memory_mb``.  A cgroup (``memory.max``, ``pids.max``,
  ``cgroup.kill``) is the exact tool.
- ``RLIMIT_NPROC`` counts *all* processes of the sandbox uid, so each run gets a fresh uid
  of its own by default (:func:`sandbox_uid`); the last-resort sweep kills any process of
  that uid.
- Without a jail, files the program creates in ``/tmp`` are not removed (with one, ``/tmp``
  is a tmpfs that goes with the process).
"""
from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..lab.procs import pids

__all__ = ["SandboxError", "SandboxResult", "run_untrusted", "Jail", "Untrusted",
           "bwrap_problem", "namespaces_problem", "sandbox_uid"]

MARKER_VAR = "NATTRACK_SANDBOX_RUN"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_MEMORY_HINTS = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc",
                 b"out of memory", b"Out of memory")

# The supervisor: a tiny root-owned (the grader's uid) process between the grader and the
# student's program.  It is a *child subreaper*, so every process the program starts stays
# in its subtree even after ``setsid`` + double fork (orphans are re-parented to it, not to
# PID 1 -- which in a container may never reap them, leaving zombies that still count
# against RLIMIT_NPROC).  When the program's main process ends, or on SIGTERM from the
# grader (timeout, output cap), or when the grader dies (PDEATHSIG), it SIGKILLs and reaps
# everything below it, then ends the way the program's main process ended (same exit
# status, or killed by the same signal).  It runs as ``python -I -c`` so nothing of the
# grader is imported.
_SUPERVISOR = r"""
import ctypes, os, signal, sys, time, resource
class Stop(Exception):
    pass
def on_term(*_):
    raise Stop
signal.signal(signal.SIGTERM, on_term)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                       # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGTERM, 0, 0, 0)           # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(125)
argv = sys.argv[2:]
me = os.getpid()
def children():
    out = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open("/proc/%s/stat" % n, "rb") as f:
                    d = f.read()
            except OSError:
                continue
            rest = d[d.rindex(b")") + 2:].split()
            if int(rest[1]) == me and rest[0] not in (b"Z", b"X"):
                out.append(int(n))
    return out
main = os.fork()
if main == 0:
    try:
        os.setsid()
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
status = None
try:
    while status is None:
        pid, st = os.waitpid(-1, 0)
        if pid == main:
            status = st
except (Stop, ChildProcessError):
    pass
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    try:
        os.killpg(main, signal.SIGKILL)
    except OSError:
        pass
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        while True:
            pid, st = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid == main and status is None:
                status = st
    except ChildProcessError:
        break
    time.sleep(0.002)
if status is None:
    os._exit(124)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    os.kill(me, sig)
    time.sleep(0.5)
    os._exit(128 + sig)
os._exit(os.waitstatus_to_exitcode(status))
"""


class SandboxError(RuntimeError):
    """The *grader's* set-up is wrong (never raised because of the student's program)."""


@dataclass
class SandboxResult:
    returncode: int | None      # negative: killed by that signal (as subprocess reports it)
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None   # None when the program exited with status 0 on its own
    output_truncated: bool
    wall_time: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


# --- small helpers ------------------------------------------------------------------------

def _fmt_seconds(s: float) -> str:
    return f"{s:g} s"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _proc_stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgrp, session, starttime) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return (rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))


def _proc_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])      # the real uid
    except OSError:
        return None
    return None


def _proc_has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _count_user_processes(uid: int) -> int:
    return sum(1 for pid in pids() if _proc_uid(pid) == uid)


def _leftovers(sid: int, marker: bytes, uid: int | None, since: int) -> list[int]:
    """Live (non-zombie) processes that belong to a run."""
    me = os.getpid()
    found = []
    for pid in pids():
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        state, _ppid, pgrp, session, start = st
        if session == sid or pgrp == sid:
            found.append(pid)
        elif uid is not None and start >= since and _proc_uid(pid) == uid:
            found.append(pid)
        elif _proc_has_marker(pid, marker):
            found.append(pid)
    return found


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(sid: int, marker: bytes, uid: int | None, since: int, budget: float = 3.0) -> int:
    """Kill the run's process group and everything left of the run; the number killed."""
    _kill_group(sid)
    killed: set[int] = set()
    deadline = time.monotonic() + budget
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        pids = _leftovers(sid, marker, uid, since)
        if not pids:
            quiet += 1
            time.sleep(0.01)
            continue
        quiet = 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)     # freeze first: a stopped process cannot fork
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    return len(killed)


def _stop(proc: subprocess.Popen) -> None:
    """Ask the supervisor to kill and reap everything below it; force it if it dawdles."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        _kill_group(proc.pid)
        proc.kill()
        proc.wait()


def _make_accessible(cwd: Path, uid: int, gid: int, writable: bool) -> None:
    """Let the sandbox user read (or own) the submission tree; check the folders above."""
    def fix(path: Path, st: os.stat_result) -> None:
        mode = stat.S_IMODE(st.st_mode)
        want = mode | stat.S_IROTH
        if stat.S_ISDIR(st.st_mode) or mode & 0o111:
            want |= stat.S_IXOTH
        if want != mode:
            os.chmod(path, want)

    for root, dirs, files in os.walk(cwd):
        for name in [root, *(os.path.join(root, d) for d in dirs),
                     *(os.path.join(root, f) for f in files)]:
            p = Path(name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            if writable:
                os.chown(p, uid, gid)
            else:
                fix(p, st)
    for parent in cwd.parents:
        st = os.stat(parent)
        mode = st.st_mode
        ok = (mode & stat.S_IXOTH or (st.st_uid == uid and mode & stat.S_IXUSR)
              or (st.st_gid == gid and mode & stat.S_IXGRP))
        if not ok:
            raise SandboxError(
                f"the sandbox user {uid} cannot reach {cwd}: {parent} is mode "
                f"{stat.S_IMODE(mode):o}; put submissions under a searchable folder "
                f"(e.g. tempfile.mkdtemp() in /tmp)")


def _minimal_env(cwd: Path, marker: str, extra: dict | None) -> dict[str, str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
    }
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    env[MARKER_VAR] = marker          # last: the caller cannot remove the run's marker
    return env


# --- the entry point ----------------------------------------------------------------------

SANDBOX_UID_RANGE = (1_000_000_000, 2_000_000_000)


def sandbox_uid() -> int:
    """A fresh uid (used as the gid too) for one sandboxed process tree: no account, no
    files, no other process.

    Not ``nobody``: that uid is shared (the lab's router drops to it, so do notebook
    kernels), and both ``RLIMIT_NPROC`` and the last-resort sweep work per uid.  A uid of
    its own makes the process limit exact and the sweep touch nothing else.
    """
    lo, hi = SANDBOX_UID_RANGE
    return lo + secrets.randbelow(hi - lo)


def run_untrusted(argv, cwd, *, timeout: float = 10.0, memory_mb: int = 256,
                  max_procs: int = 32, max_output: int = 1_000_000, uid: int | None = None,
                  gid: int | None = None, env: dict | None = None, max_file_mb: int = 64,
                  writable: bool = False, stdin: bytes | None = None) -> SandboxResult:
    """Run ``argv`` in ``cwd`` as an unprivileged, limited process; never raises because of it.

    ``uid``/``gid``: the sandbox user (as root), by default a fresh one (:func:`sandbox_uid`).
    ``max_output`` bounds stdout + stderr together.  ``max_file_mb`` is ``RLIMIT_FSIZE``.
    ``writable`` hands the submission folder to the sandbox user (default: read-only to
    it).  ``stdin`` is sent to the program (default: ``/dev/null``).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise SandboxError("empty argv")
    cwd = Path(cwd).resolve()
    if not cwd.is_dir():
        raise SandboxError(f"{cwd}: not a folder")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SandboxError("setpriv (util-linux) is not installed")
    as_root = os.geteuid() == 0
    if uid is None:
        uid = sandbox_uid()
    if gid is None:
        gid = uid
    if as_root and (uid == 0 or gid == 0):
        raise SandboxError("the sandbox uid/gid must not be root")
    marker = secrets.token_hex(16)

    if as_root:
        _make_accessible(cwd, uid, gid, writable)
        wrapper = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                   "--no-new-privs", "--bounding-set=-all", "--"]
        nproc = max_procs
        sweep_uid: int | None = uid
    else:
        wrapper = [setpriv, "--no-new-privs", "--"]
        nproc = _count_user_processes(os.getuid()) + max_procs
        sweep_uid = None                 # our own uid: never sweep by uid

    mem = int(memory_mb) * 1024 * 1024
    cpu = max(1, int(timeout + 0.999)) + 1
    fsize = int(max_file_mb) * 1024 * 1024
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise SandboxError("prlimit (util-linux) is not installed")
    cmd = [prlimit, f"--as={mem}", f"--nproc={nproc}", f"--cpu={cpu}:{cpu + 1}",
           f"--fsize={fsize}", "--core=0", "--", *wrapper, *argv]

    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SUPERVISOR, str(os.getpid()), *cmd],
            cwd=str(cwd), env=_minimal_env(cwd, marker, env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            start_new_session=True, umask=0o022)
    except OSError as exc:               # the grader's problem, not the student's
        raise SandboxError(f"cannot start the sandbox: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None      # both are pipes
    sid = proc.pid
    st = _proc_stat(sid)
    since = st[4] if st else 0

    if stdin is not None:
        assert proc.stdin is not None                               # a pipe when given
        try:
            proc.stdin.write(stdin)
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass

    out, err = bytearray(), bytearray()
    total = 0
    timed_out = truncated = False
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            # The program is gone but something it started keeps the pipes open: give the
            # pipes a moment to drain, then stop (the sweep kills the rest).
            if exited_at is not None and now - exited_at > 0.2:
                break
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                room = max_output - total
                key.data.extend(chunk[:max(room, 0)])
                total += len(chunk)
                if total > max_output:
                    truncated = True
                    break
            if truncated:
                break
        if timed_out or truncated:
            _stop(proc)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
    finally:
        sel.close()
        for f in (proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if proc.poll() is None:
            _stop(proc)
        _sweep(sid, f"{MARKER_VAR}={marker}".encode(), sweep_uid, since)
    wall = time.monotonic() - t0

    rc = proc.returncode
    reason = _reason(rc, bytes(err), timed_out=timed_out, truncated=truncated,
                     timeout=timeout, max_output=max_output, memory_mb=memory_mb,
                     cpu=cpu, max_file_mb=max_file_mb)
    return SandboxResult(returncode=rc, stdout=out.decode("utf-8", "replace"),
                         stderr=err.decode("utf-8", "replace"), timed_out=timed_out,
                         killed_reason=reason, output_truncated=truncated, wall_time=wall)


def _reason(rc: int | None, stderr: bytes, *, timed_out: bool, truncated: bool,
            timeout: float, max_output: int, memory_mb: int, cpu: int,
            max_file_mb: int) -> str | None:
    """A short sentence for a teacher or a student: why the program did not end normally."""
    if truncated:
        return f"printed more than {_fmt_bytes(max_output)}"
    if timed_out:
        return f"timed out after {_fmt_seconds(timeout)}"
    if rc == 0:
        return None
    memory = f"exceeded {memory_mb} MB of memory"
    tail = stderr[-4096:]
    if any(h in tail for h in _MEMORY_HINTS):
        return memory
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGKILL:           # we did not send it: the OOM killer, most likely
            return f"killed by SIGKILL (probably {memory})"
        if sig == signal.SIGXCPU:
            return f"used more than {cpu - 1} s of CPU time"
        if sig == signal.SIGXFSZ:
            return f"wrote a file larger than {max_file_mb} MB"
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT) and b"alloc" in tail:
            return memory
        return f"killed by {_signal_name(sig)}"
    if rc == 127 and b"setpriv: failed to execute" in tail:
        return "command not found"
    return f"exit status {rc}"


# --- long-lived sandboxed processes (the grader's worker) ------------------------------------

@dataclass
class Jail:
    """What a process started by :class:`Untrusted` sees, through ``bwrap``.

    ``ro_binds`` are ``(host path, path inside)`` pairs mounted read-only; on top of them
    the jail has the interpreter's installation read-only (``/usr`` and ``sys.base_prefix``),
    a private ``/proc`` and ``/dev``, an empty writable ``/tmp`` of ``tmp_mb`` (gone with the
    process), and, unless ``network`` is true, no network at all (a new network namespace with only
    ``lo``, down).  Nothing else of the machine exists inside: not ``/etc``, not ``/home``,
    not the repository or the grader's files.
    """
    ro_binds: list[tuple[str, str]]
    network: bool = False
    chdir: str = "/"
    tmp_mb: int = 64                       # the size of the private /tmp (RAM-backed)


_BWRAP_CACHE: dict[bool, str | None] = {}


def namespaces_problem() -> str | None:
    """None when this process may create namespaces (a jail, a lab), else why not (one line).

    Root tries mount and network namespaces; anyone else a user namespace, as bwrap would.
    Docker's default seccomp profile and a missing CAP_SYS_ADMIN (Gradescope) refuse both."""
    argv = (["unshare", "--mount", "--net", "true"] if os.geteuid() == 0 else
            ["unshare", "--user", "--map-root-user", "--mount", "true"])
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create namespaces here: {exc}"
    if r.returncode == 0:
        return None
    why = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1][:200]
    return f"this machine cannot create namespaces (a container without CAP_SYS_ADMIN?): {why}"


def bwrap_problem() -> str | None:
    """None when ``bwrap`` can build a jail here, else why not (one line, cached)."""
    as_root = os.geteuid() == 0
    if os.environ.get("NATTRACK_NO_BWRAP"):     # tests, or a teacher checking the fallback
        return "bwrap disabled by NATTRACK_NO_BWRAP"
    if as_root in _BWRAP_CACHE:
        return _BWRAP_CACHE[as_root]
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        # Where no namespace can be made, installing bwrap would not help: say so instead.
        problem: str | None = (namespaces_problem() or
                               "bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    else:
        argv = [bwrap, *_jail_args(Jail([]), as_root), "--", "/bin/true"]
        try:
            r = subprocess.run(argv, capture_output=True, timeout=10)
            problem = (None if r.returncode == 0 else
                       "bwrap cannot create namespaces here: "
                       + (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1])
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"bwrap does not run: {exc}"
    _BWRAP_CACHE[as_root] = problem
    return problem


def _jail_args(jail: Jail, as_root: bool) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / link
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), f"/{link}"]
        elif p.is_dir():
            args += ["--ro-bind", str(p), f"/{link}"]
    base = os.path.realpath(sys.base_prefix)
    if base != "/usr" and not base.startswith("/usr/"):
        args += ["--ro-bind", base, base]
    made: set[str] = set()
    for src, dst in jail.ro_binds:
        for parent in reversed(Path(dst).parents[:-1]):      # bwrap would make them 0700
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(src), str(dst)]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(jail.tmp_mb << 20),
             "--tmpfs", "/tmp",
             "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--chdir", jail.chdir]
    if not jail.network:
        args.append("--unshare-net")
    if not as_root:
        args.append("--unshare-user")          # unprivileged: a user namespace of its own
    return args


class Untrusted:
    """A long-lived untrusted process with pipes: the grader's sandboxed worker.

    The same layers as :func:`run_untrusted` (the subreaper supervisor, ``prlimit``,
    ``setpriv`` to an unprivileged uid with ``no_new_privs`` and no capabilities) plus,
    when ``jail`` is given and ``bwrap`` works here, a ``bwrap`` jail between ``prlimit``
    and ``setpriv``: ``prlimit -- bwrap ... -- setpriv ... -- ARGV``.  ``cpu_seconds`` is
    the CPU budget of the process's whole life (RLIMIT_CPU); wall time per request is the
    caller's business (:meth:`stop` kills everything).  ``stdin``/``stdout``/``stderr`` are
    the process's pipes.
    """

    def __init__(self, argv, *, jail: Jail | None = None, cpu_seconds: int = 120,
                 memory_mb: int = 512, max_procs: int = 32, max_file_mb: int = 16,
                 uid: int | None = None, gid: int | None = None,
                 env: dict | None = None) -> None:
        argv = [str(a) for a in argv]
        as_root = os.geteuid() == 0
        uid = sandbox_uid() if uid is None else uid
        gid = uid if gid is None else gid
        if as_root and (uid == 0 or gid == 0):
            raise SandboxError("the sandbox uid/gid must not be root")
        setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
        if setpriv is None or prlimit is None:
            raise SandboxError("setpriv and prlimit (util-linux) are needed")
        self.marker = secrets.token_hex(16)
        self.uid = uid if as_root else None
        self.memory_mb, self.cpu_seconds, self.max_file_mb = memory_mb, cpu_seconds, max_file_mb
        if as_root:
            drop = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                    "--no-new-privs", "--bounding-set=-all", "--"]
            nproc = max_procs
        else:
            drop = [setpriv, "--no-new-privs", "--"]
            nproc = _count_user_processes(os.getuid()) + max_procs
        self.jailed = jail is not None and bwrap_problem() is None
        inner = [*drop, *argv]
        if self.jailed and jail is not None:
            inner = [shutil.which("bwrap"), *_jail_args(jail, as_root), "--", *inner]
        cpu = max(1, int(cpu_seconds))
        cmd = [prlimit, f"--as={int(memory_mb) << 20}", f"--nproc={nproc}",
               f"--cpu={cpu}:{cpu + 1}", f"--fsize={int(max_file_mb) << 20}", "--core=0",
               "--", *inner]
        cwd = jail.chdir if jail is not None and not self.jailed else "/"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SUPERVISOR, str(os.getpid()), *cmd],
                cwd=cwd, env=_minimal_env(Path(cwd), self.marker, env),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True, start_new_session=True, umask=0o022)
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox: {exc}") from exc
        st = _proc_stat(self.proc.pid)
        self.since = st[4] if st else 0
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the process and everything it started; close the pipes."""
        for f in (self.stdin, self.stdout, self.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            _stop(self.proc)
        _sweep(self.proc.pid, f"{MARKER_VAR}={self.marker}".encode(), self.uid, self.since)

    def exit_reason(self, stderr_tail: bytes = b"") -> str:
        """Why the process ended, in a few words (call after it ended)."""
        rc = self.proc.poll()
        return _reason(rc, stderr_tail, timed_out=False, truncated=False, timeout=0,
                       max_output=0, memory_mb=self.memory_mb, cpu=self.cpu_seconds + 1,
                       max_file_mb=self.max_file_mb) or "exited"
