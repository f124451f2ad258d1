"""Bringing the lab service up and down, and saying what runs: what ``nattrack lab up|status|
down`` do (nattrack.cli.lab parses their options), the demo and the notebook launcher too.

``lab_up`` (root) starts the service (``python -m nattrack.lab.daemon``) in the background
and returns once traffic flows; ``lab_down`` stops it; ``lab_down(force=True)`` (root)
clears what a killed service left behind, and only that.  ``runnable`` writes the kit's
command in a hint the way it runs here.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import uuid

from . import REPO_ROOT, LabError, Paths, mininet_available, node_env
from .cleanup import ensure_run_dir, force_clean, leftovers, read_state, wait_gone
from .client import LabClient, NoLab
from .topologies import get_topology

UP_TIMEOUT = 120.0


def nattrack_command() -> str:
    """How to type this nattrack in a shell here: ``nattrack`` when PATH finds this very
    program (the VM links it into /usr/local/bin), else its absolute path (a clone's
    ``.venv/bin/nattrack`` is on no PATH)."""
    mine = os.path.join(os.path.dirname(sys.executable), "nattrack")
    if not os.path.exists(mine):                # not installed as a script: run the module
        return f"{sys.executable} -m nattrack.cli.main"
    found = shutil.which("nattrack")
    if found and os.path.realpath(found) == os.path.realpath(mine):
        return "nattrack"
    return mine


_KIT_COMMAND = re.compile(r"(?<![\w/.-])nattrack(?= (lab|conntrack|diff|trace|sysctl|capture|"
                          r"notebook|doctor|replay|grade|record)\b)")


def runnable(text: str) -> str:
    """``text`` with each ``nattrack SUBCOMMAND`` it suggests typed as it runs here."""
    return _KIT_COMMAND.sub(lambda _: nattrack_command(), text)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(runnable(f"{what} needs root (it builds network namespaces): run "
                                f"`sudo nattrack {what}`; the lab's clients (status, exec, "
                                f"conntrack) need only the nattrack group"))


# --- printing ------------------------------------------------------------------------------

def describe_lines(st: dict) -> list[str]:
    mode = st.get("mode")
    lines = [f"lab {st.get('topo')} ({mode} mode): {st.get('description', '')}".rstrip(": ")]
    width = max((len(n) for n in st.get("nodes", {})), default=4)
    rwidth = max((len(n.get("role", "")) for n in st.get("nodes", {}).values()), default=8)
    for name, node in st.get("nodes", {}).items():
        addrs = ", ".join(f"{i} {c}" for i, c in node.get("ifaces", {}).items() if c)
        if node.get("kind") == "switch":
            addrs = "Linux bridge"
        extra = []
        if node.get("gw"):
            extra.append(f"via {node['gw']}")
        if node.get("services"):
            extra.append("serves " + " ".join(node["services"]))
        r = st.get("routers", {}).get(name)
        if r:
            extra.append(f"rules {_short_path(r.get('rules'))}")
            if r.get("pid"):
                extra.append(f"router pid {r['pid']}{'' if r.get('alive', True) else ' (DEAD)'}")
            elif "interim" in str(r.get("mode", "")):
                extra.append("kernel forwarding (interim, no router process)")
        role = node.get("role", "")
        lines.append(f"  {name:<{width}}  {role:<{rwidth}}  {addrs}"
                     + (f"  [{'; '.join(extra)}]" if extra else ""))
    if st.get("notes"):
        for note in st["notes"]:
            lines.append(f"  try: {runnable(note)}")
    if st.get("socket"):
        lines.append(f"  service pid {st.get('pid')}, socket {st['socket']}")
    return lines


def _short_path(path: str | None) -> str:
    if not path:
        return "-"
    try:
        return os.path.relpath(path, REPO_ROOT) if path.startswith(str(REPO_ROOT)) else path
    except ValueError:
        return path


# --- up ----------------------------------------------------------------------------------

def lab_up(topo: str, mode: str, rules: str | None, sysctls: list[str],
           paths: Paths | None = None, quiet: bool = False, plugin: str | None = None,
           listen: list[str] | None = None, kernel: str | None = None) -> int:
    """``plugin``: a checked ``LAB_DIR=SUBMISSION_DIR``, both absolute (the service runs in /).
    ``kernel``: the kernel the routers behave as where kernels differ (python mode)."""
    paths = paths or Paths()
    _need_root("lab up")
    problem = mininet_available()
    if problem:
        raise LabError(problem)
    get_topology(topo)                                    # an unknown name fails here, early
    if rules and not os.path.isfile(rules):
        raise LabError(f"--rules {rules}: no such file")
    for kv in sysctls:
        if "=" not in kv:
            raise LabError(f"--sysctl {kv!r}: expected KEY=VALUE, e.g. "
                           f"net.netfilter.nf_conntrack_udp_timeout=10")
    listen = _listen_args(listen or [], mode)
    _kernel_arg(kernel, mode)
    ensure_run_dir(paths)
    lock_fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            st = read_state(paths)
            since = time.strftime("%H:%M", time.localtime(st["started"])) if st.get("started") \
                else "starting"
            raise LabError(f"a lab is already running (topology {st.get('topo', '?')}, "
                           f"service pid {st.get('pid', '?')}, since {since}): "
                           + runnable("`nattrack lab down` first")) from None
        left = leftovers(paths, check_lock=False)
        if left:
            done = force_clean(paths)
            print(f"nattrack: cleared what a crashed lab left behind ({len(done)} item(s))",
                  file=sys.stderr)
        return _spawn(paths, lock_fd, topo, mode, rules, sysctls, quiet, plugin, listen, kernel)
    finally:
        os.close(lock_fd)


def _listen_args(items: list[str], mode: str) -> list[str]:
    """``--listen PROTO:PORT[,PORT]``: checked here, so a typo fails before the lab starts."""
    from ..replay import parse_listen_args
    try:
        parse_listen_args(items)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if items and mode != "python":
        raise LabError("--listen opens ports of nattrack's own stack: python mode only "
                       "(in kernel mode the router's own sockets answer)")
    return items


def _kernel_arg(kernel: str | None, mode: str) -> None:
    """``--kernel VERSION``: checked here, so a typo fails before the lab starts."""
    if kernel is None:
        return
    from ..conntrack.profile import get_profile
    try:
        get_profile(kernel)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if mode != "python":
        raise LabError("--kernel makes nattrack behave as another kernel: python mode only "
                       "(in kernel mode the kernel is this machine's, and the shadow follows it)")


def _spawn(paths: Paths, lock_fd: int, topo: str, mode: str, rules: str | None,
           sysctls: list[str], quiet: bool, plugin: str | None = None,
           listen: list[str] | None = None, kernel: str | None = None) -> int:
    lab_id = uuid.uuid4().hex[:12]
    argv = [sys.executable, "-m", "nattrack.lab.daemon", "--topo", topo, "--mode", mode,
            "--run-dir", str(paths.dir), "--id", lab_id]
    if rules:
        argv += ["--rules", os.path.abspath(rules)]
    if plugin:
        argv += ["--plugin", plugin]
    for kv in sysctls:
        argv += ["--sysctl", kv]
    for item in listen or ():
        argv += ["--listen", item]
    if kernel:
        argv += ["--kernel", kernel]
    r, w = os.pipe()
    argv += ["--ready-fd", str(w), "--lock-fd", str(lock_fd)]
    log = open(paths.log, "ab")
    os.chmod(paths.log, 0o644)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(w, lock_fd), start_new_session=True, cwd="/",
                                env=node_env())
    finally:
        log.close()
        os.close(w)
    try:
        msg = _wait_ready(r, proc)
    except KeyboardInterrupt:
        proc.terminate()
        wait_gone(proc.pid, 15)
        force_clean(paths)
        raise LabError("interrupted: the lab was stopped and cleared") from None
    finally:
        os.close(r)
    if msg is None or not msg.get("ok"):
        reason = (msg or {}).get("error") or _log_tail(paths)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        force_clean(paths)
        raise LabError(f"topology {topo} failed to start: {reason}; nothing was left behind")
    if not quiet:
        for line in describe_lines(msg["status"]):
            print(line)
    return 0


def _wait_ready(fd: int, proc: subprocess.Popen) -> dict | None:
    buf = b""
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            buf += data
            if b"\n" in buf:
                break
        elif proc.poll() is not None:
            break
    if not buf.strip():
        if proc.poll() is None:
            proc.terminate()
        return None
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return None


def _log_tail(paths: Paths) -> str:
    try:
        lines = [line for line in paths.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "the service died without a word"
    return (lines[-1] if lines else "the service died without a word") + f" (see {paths.log})"


# --- status / down -------------------------------------------------------------------------

def lab_status(as_json: bool = False) -> int:
    try:
        st = LabClient().status()
    except NoLab:
        left = leftovers(Paths())
        if left:
            raise LabError(f"no lab is running, but a crashed one left {'; '.join(left)}: "
                           + runnable("run `sudo nattrack lab down --force`")) from None
        raise
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        for line in describe_lines(st):
            print(line)
    return 0


def lab_down(force: bool = False, paths: Paths | None = None) -> int:
    paths = paths or Paths()
    if force:
        _need_root("lab down --force")
    state = read_state(paths)
    pid = state.get("pid")
    stopped = False
    try:
        LabClient(paths.sock).down()
        stopped = True
    except NoLab:
        if not force:
            left = leftovers(paths)
            if left:
                raise LabError(f"no lab answers, but a crashed one left {'; '.join(left)}: "
                               + runnable("run `sudo nattrack lab down --force`")) from None
            raise LabError("no lab is running") from None
    except LabError:
        if not force:
            raise
    if stopped and not wait_gone(pid, 30) and not force:
        raise LabError(f"the lab service (pid {pid}) did not stop within 30 s: "
                       + runnable("run `sudo nattrack lab down --force`"))
    if stopped:
        print(f"lab {state.get('topo', '')} stopped".replace("  ", " "))
    if force:
        done = force_clean(paths)
        for line in done:
            print(f"  {line}")
        if not stopped and not done:
            print("nothing to clear: no lab and nothing left by one")
    return 0
