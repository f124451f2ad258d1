"""Finding and ending the processes a lab started, and only those.

A process belongs to a lab when its environment carries the lab's marker
(:data:`~nattrack.lab.MARKER_ENV`) or when it lives in a network namespace the
lab created (recorded by inode in the state file).  The root namespace is never
one of those, whatever a state file says.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Iterable, TypeGuard

from . import MARKER_ENV


def netns_inode(pid: int | str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def host_netns() -> set[int]:
    """Namespaces never to sweep: this process's, its parent's and PID 1's (when readable;
    in some sandboxes PID 1's is not, and this process's is then the one to protect)."""
    out = set()
    for pid in ("self", os.getppid(), 1):
        ino = netns_inode(pid)
        if ino:
            out.add(ino)
    return out


def is_mininet_shell(pid: int) -> bool:
    argv = cmdline(pid)
    return len(argv) >= 2 and argv[0] == "bash" and argv[-1].startswith("mininet:")


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def environ_marker(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    key = MARKER_ENV.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def alive(pid: int | None) -> TypeGuard[int]:      # alive: a pid, not None
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def lab_processes(owns_marker, netns: Iterable[int] = ()) -> list[int]:
    """PIDs marked by a lab (``owns_marker(value)`` true), or inside one of ``netns`` when
    that namespace is the lab's for sure: not a host namespace, and holding a marked
    process or a Mininet node shell.  Strangers are never swept."""
    me = os.getpid()
    spaces = {n for n in netns if n} - host_netns()
    found: list[int] = []
    by_ns: dict[int | None, list[int]] = {}
    confirmed = set()
    for pid in pids():
        if pid in (me, 1):
            continue
        mark = environ_marker(pid)
        ino = netns_inode(pid) if spaces else None
        if mark is not None and owns_marker(mark):
            found.append(pid)
            if ino in spaces:
                confirmed.add(ino)
            continue
        if ino in spaces:
            by_ns.setdefault(ino, []).append(pid)
            if is_mininet_shell(pid):
                confirmed.add(ino)
    for ino in confirmed:
        found += by_ns.get(ino, [])
    return found


def kill_all(pids_: Iterable[int], grace: float = 0.5) -> list[int]:
    """SIGTERM, a short wait, then SIGKILL whatever is left; returns what was signalled."""
    targets = [p for p in pids_ if alive(p)]
    for p in targets:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.02)
    for p in targets:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.02)
    return targets


def processes_in_netns(spaces: Iterable[int], exclude: Iterable[int] = ()) -> list[int]:
    """Every process in ``spaces``, host namespaces excepted (see host_netns())."""
    spaces = {n for n in spaces if n} - host_netns()
    if not spaces:
        return []
    skip = set(exclude) | {os.getpid(), 1}
    return [p for p in pids() if p not in skip and netns_inode(p) in spaces]
