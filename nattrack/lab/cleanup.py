"""State file, staleness, and ``nattrack lab down --force``.

The lab service holds an exclusive ``flock`` on ``lab.lock`` for its whole
life; the kernel drops it when the service dies, however it dies (SIGKILL
included).  So: lock free + a state file or marked processes = a crashed lab,
which :func:`force_clean` clears, removing only what nattrack created:

1. the service itself, if its PID (state file) is still a nattrack lab service;
2. every process carrying this run directory's marker in its environment, and
   every process inside a namespace the state file recorded (never the root
   namespace's);
3. root-namespace interfaces named with the lab's prefix (the lab creates none
   there, but an interrupted ``mn`` of a topology could);
4. the service's socket, state file, router sockets and captures.

Killing the processes of a namespace removes the namespace and its veths.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time

from . import IFACE_PREFIX, Paths
from .procs import alive, cmdline, environ_marker, kill_all, lab_processes

PREFIX_RE = re.compile(rf"^{IFACE_PREFIX}[a-z][a-z0-9]*-[a-z0-9]+$")
DAEMON_MODULE = "nattrack.lab.daemon"


# --- the state file ------------------------------------------------------------------------

def read_state(paths: Paths) -> dict:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def write_state(paths: Paths, state: dict) -> None:
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.chmod(tmp, 0o644)
    os.replace(tmp, paths.state)


# --- is a lab running? ---------------------------------------------------------------------

def lock_held(paths: Paths) -> bool:
    """True while a lab service holds the lock (a non-root caller cannot tell: False)."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def is_lab_daemon(pid: int | None, paths: Paths) -> bool:
    if not alive(pid):
        return False
    mark = environ_marker(pid)
    return (DAEMON_MODULE in " ".join(cmdline(pid))
            and (mark is None or paths.owns_marker(mark)))


def root_leftover_ifaces() -> list[str]:
    """Interfaces of the root namespace named like the lab's (nt<node>-<role>)."""
    try:
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if PREFIX_RE.match(name):
                names.append(name)
    return names


def leftovers(paths: Paths, check_lock: bool = True) -> list[str]:
    """What a dead lab left (empty while a lab service runs or when all is clean).
    ``check_lock=False`` when the caller holds the lock itself (lab up)."""
    if check_lock and lock_held(paths):
        return []
    found = []
    state = read_state(paths)
    if paths.state.exists():
        found.append(f"state file {paths.state} (service pid {state.get('pid', '?')}, dead)")
    if paths.sock.exists():
        found.append(f"socket {paths.sock}")
    netns = (state.get("record") or {}).get("netns") or []
    if os.geteuid() == 0:
        procs = lab_processes(paths.owns_marker, netns)
        if procs:
            found.append(f"{len(procs)} lab process(es): {' '.join(map(str, procs[:8]))}")
    ifs = root_leftover_ifaces()
    if ifs:
        found.append(f"interface(s) {' '.join(ifs)}")
    return found


# --- clearing ----------------------------------------------------------------------------

def force_clean(paths: Paths) -> list[str]:
    """Remove everything a lab of this run directory left; returns one line per thing."""
    done: list[str] = []
    state = read_state(paths)
    pid = state.get("pid")
    if pid and is_lab_daemon(pid, paths):
        kill_all([pid], grace=3.0)
        done.append(f"stopped the lab service (pid {pid})")
    netns = (state.get("record") or {}).get("netns") or []
    for _ in range(3):                     # a dying parent may leave a child for a moment
        victims = lab_processes(paths.owns_marker, netns)
        if not victims:
            break
        killed = kill_all(victims)
        done.append(f"killed {len(killed)} lab process(es) ({' '.join(map(str, killed[:12]))}"
                    f"{' ...' if len(killed) > 12 else ''})")
        time.sleep(0.05)
    for name in root_leftover_ifaces():
        p = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True)
        if p.returncode == 0:
            done.append(f"deleted interface {name}")
    files = [paths.sock, paths.state, paths.state.with_suffix(".tmp")]
    files += list(paths.dir.glob("router-*.sock")) if paths.dir.exists() else []
    for f in files:
        try:
            f.unlink()
            done.append(f"removed {f}")
        except FileNotFoundError:
            pass
        except OSError:
            pass
    if paths.captures.exists():
        shutil.rmtree(paths.captures, ignore_errors=True)
        done.append(f"removed {paths.captures}")
    return done


def wait_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ensure_run_dir(paths: Paths) -> None:
    paths.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o755)


__all__ = ["read_state", "write_state", "lock_held", "leftovers", "force_clean",
           "root_leftover_ifaces", "is_lab_daemon", "wait_gone", "ensure_run_dir"]
