"""``nattrack lab up|status|exec|down``: the lab service from the command line.

``up`` (root) starts the service in the background and returns once traffic flows,
printing the nodes and their addresses; ``status`` and ``exec`` work for anyone in
the nattrack group; ``down`` stops it; ``down --force`` (root) clears what a killed
service left behind, and only that.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

from ..lab import LabError, Paths, node_env
from ..lab.cleanup import ensure_run_dir, force_clean, leftovers, read_state, wait_gone

UP_TIMEOUT = 120.0


def _err(msg: str) -> int:
    print(f"nattrack: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


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
    from ..lab import REPO_ROOT
    if not path:
        return "-"
    try:
        return os.path.relpath(path, REPO_ROOT) if path.startswith(str(REPO_ROOT)) else path
    except ValueError:
        return path


# --- up ----------------------------------------------------------------------------------

def lab_up(topo: str, mode: str, rules: str | None, sysctls: list[str],
           paths: Paths | None = None, quiet: bool = False, plugin: str | None = None,
           listen: list[str] | None = None) -> int:
    from ..lab import mininet_available
    paths = paths or Paths()
    _need_root("lab up")
    problem = mininet_available()
    if problem:
        raise LabError(problem)
    from ..lab.topologies import get_topology
    get_topology(topo)                                    # an unknown name fails here, early
    if rules and not os.path.isfile(rules):
        raise LabError(f"--rules {rules}: no such file")
    for kv in sysctls:
        if "=" not in kv:
            raise LabError(f"--sysctl {kv!r}: expected KEY=VALUE, e.g. "
                           f"net.netfilter.nf_conntrack_udp_timeout=10")
    listen = _listen_args(listen or [], mode)
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
        return _spawn(paths, lock_fd, topo, mode, rules, sysctls, quiet, _plugin_arg(plugin, mode),
                      listen)
    finally:
        os.close(lock_fd)


def _plugin_arg(plugin: str | None, mode: str) -> str | None:
    """``LAB_DIR=SUBMISSION_DIR`` checked and made absolute (the service runs in /)."""
    if not plugin:
        return None
    from ..labs.manifest import load
    from ..labs.plugin import parse_spec
    if mode != "python":
        raise LabError("--plugin runs a lab submission in the router: python mode only")
    lab_dir, sub = parse_spec(plugin)
    load(lab_dir)
    if not sub.is_dir():
        raise LabError(f"--plugin: {sub}: no such submission folder")
    return f"{lab_dir.resolve()}={sub.resolve()}"


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


def _spawn(paths: Paths, lock_fd: int, topo: str, mode: str, rules: str | None,
           sysctls: list[str], quiet: bool, plugin: str | None = None,
           listen: list[str] | None = None) -> int:
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
        lines = [l for l in paths.log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "the service died without a word"
    return (lines[-1] if lines else "the service died without a word") + f" (see {paths.log})"


# --- status / down -------------------------------------------------------------------------

def lab_status(as_json: bool = False) -> int:
    from ..lab.client import LabClient, NoLab
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
    from ..lab.client import LabClient, NoLab
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


# --- exec ----------------------------------------------------------------------------------

def lab_exec(node: str, argv: list[str], no_stdin: bool = False,
             timeout: float | None = None) -> int:
    from ..lab import rpc
    from ..lab.client import LabClient
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError(runnable("lab exec needs a command: nattrack lab exec NODE -- CMD [ARGS...]"))
    client = LabClient()
    forward_stdin = not no_stdin
    try:
        s = client.exec_session(node, argv, stdin=forward_stdin, timeout=timeout)
    except rpc.RemoteError as exc:
        print(f"nattrack: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit", None) or 2)
    if forward_stdin:
        threading.Thread(target=_pump_stdin, args=(s,), daemon=True).start()
    interrupts = [0]

    def on_signal(signum, frame):                     # noqa: ARG001
        interrupts[0] += 1
        try:
            s.signal("KILL" if interrupts[0] > 2 else
                     {signal.SIGINT: "INT", signal.SIGTERM: "TERM",
                      signal.SIGHUP: "HUP"}.get(signum, "TERM"))
        except OSError:
            pass

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM,
                                                           signal.SIGHUP)}
    try:
        out, err = sys.stdout.buffer, sys.stderr.buffer
        for name, data in s:
            stream = out if name == "stdout" else err
            stream.write(data)
            stream.flush()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        s.close()
    if s.timed_out:
        print(f"nattrack: {node}: {argv[0]} timed out and was killed", file=sys.stderr)
    return s.returncode if s.returncode is not None else 2


def _pump_stdin(s) -> None:
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):
        s.close_stdin()
        return
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            s.send_stdin(data)
        s.close_stdin()
    except OSError:
        pass


# --- the command line ----------------------------------------------------------------------

def cmd_lab(args) -> int:
    try:
        if args.lab_cmd == "up":
            return lab_up(args.topo, args.mode, args.rules, args.sysctl or [], plugin=args.plugin,
                          listen=args.listen or [])
        if args.lab_cmd == "status":
            return lab_status(args.json)
        if args.lab_cmd == "down":
            return lab_down(args.force)
        if args.lab_cmd == "exec":
            return lab_exec(args.node, args.command, args.no_stdin, args.timeout)
        if args.lab_cmd == "topologies":
            return list_topologies()
        if args.lab_cmd == "check":
            from ..grading.check import lab_check
            return lab_check(args.lab, args.dir, args.live)
    except LabError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130
    return _err(f"unknown lab command {args.lab_cmd!r}")


def list_topologies() -> int:
    from ..lab.topologies import all_topologies
    for name, cls in sorted(all_topologies().items()):
        print(f"{name:<12} {cls.description}")
    return 0


def register(sub) -> None:
    lab = sub.add_parser("lab", help="the live lab: a Mininet network with nattrack's router",
                         description="Run the live lab as a background service (root), "
                                     "use it as any member of the nattrack group.")
    ls = lab.add_subparsers(dest="lab_cmd", required=True)
    up = ls.add_parser("up", help="build the network in the background (root)")
    up.add_argument("--topo", default="basic",
                    help="basic, clash, seed, portforward, double (`nattrack lab topologies`), "
                         "or PATH.py[:NAME]")
    up.add_argument("--mode", choices=("python", "kernel"), default="python",
                    help="python: nattrack forwards (default); kernel: the kernel forwards "
                         "and nattrack shadows it")
    up.add_argument("--rules", metavar="FILE", help="rules for the primary router instead of "
                                                    "the topology's")
    up.add_argument("--listen", action="append", metavar="PROTO:PORT[,PORT]",
                    help="a port open on the primary router's own stack (python mode), e.g. "
                         "tcp:22; every other port answers with a RST or port unreachable")
    up.add_argument("--plugin", metavar="LAB_DIR=SUBMISSION_DIR",
                    help="the router runs a lab submission's pieces in place of the engine's "
                         "(python mode; it drops root to nobody before importing them)")
    up.add_argument("--sysctl", action="append", metavar="KEY=VALUE",
                    help="a conntrack setting (kernel name), repeatable")
    st = ls.add_parser("status", help="the running lab's nodes and addresses")
    st.add_argument("--json", action="store_true")
    ex = ls.add_parser("exec", help="run a command in a node: lab exec NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("command", nargs="...", metavar="-- CMD")
    ex.add_argument("-n", "--no-stdin", action="store_true", help="do not forward stdin")
    ex.add_argument("--timeout", type=float, metavar="S", help="kill the command after S seconds")
    dn = ls.add_parser("down", help="stop the lab")
    dn.add_argument("--force", action="store_true",
                    help="(root) also clear whatever a crashed lab left: its processes, "
                         "namespaces, interfaces, socket and pid files; nothing else")
    ls.add_parser("topologies", help="the topologies lab up knows")
    ck = ls.add_parser("check", help="run a lab's public tests on your folder: one line per "
                                     "unmet TODO")
    ck.add_argument("lab", nargs="?", help="the lab folder (default: the one you are in)")
    ck.add_argument("--dir", metavar="DIR", help="your folder (default: LAB/student)")
    ck.add_argument("--live", action="store_true",
                    help="also the live tests (root: builds the lab with your code)")
    lab.set_defaults(func=cmd_lab)


def doctor_register(sub) -> None:
    d = sub.add_parser("doctor", help="check this machine for the live lab, one line per problem")
    d.set_defaults(func=_doctor)


def _doctor(args) -> int:
    from ..lab.doctor import run_doctor
    return run_doctor()


__all__ = ["register", "doctor_register", "lab_up", "lab_down", "lab_status", "lab_exec",
           "describe_lines"]
