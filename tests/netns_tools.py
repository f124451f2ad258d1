"""Network-namespace and process chores shared by the kernel oracle (tests/kernel), the live
router tests (tests/live) and the grading tests: each names its namespaces
``<prefix><pid>x<n>-...`` and clears what dead runs left, never what a live run owns."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def kill_netns_pids(ns: str, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL, every process inside namespace ``ns``."""
    pids = [int(x) for x in _ip("netns", "pids", ns).stdout.split() if x.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return


def cleanup_stale(prefix_re: re.Pattern, log=None) -> list[str]:
    """Delete namespaces whose name carries the pid (group 1 of ``prefix_re``) of a
    run that is gone, after stopping the processes still inside them."""
    gone = []
    for ns in list_netns():
        m = prefix_re.match(ns)
        if not m or pid_alive(int(m.group(1))):
            continue
        kill_netns_pids(ns)
        _ip("netns", "del", ns)
        if log:
            log(f"removed stale namespace {ns}")
        gone.append(ns)
    return gone


def netns_problem(probe: str) -> str | None:
    """None if this machine lets us create a namespace (containers may not), else why."""
    p = _ip("netns", "add", probe)
    if p.returncode != 0:
        return f"cannot create network namespaces: {p.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def live_processes():
    """``(pid, real uid, environ bytes)`` of every live (not zombie) process but this one:
    what the grading tests sift for processes a sandboxed run left behind."""
    for n in os.listdir("/proc"):
        if not n.isdigit() or int(n) == os.getpid():
            continue
        try:
            with open(f"/proc/{n}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{n}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{n}/environ", "rb") as f:
                env = f.read()
        except (OSError, StopIteration):
            continue
        yield int(n), uid, env
