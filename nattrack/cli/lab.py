"""``nattrack lab up|status|exec|down``: the lab service from the command line.

``up`` (root) starts the service in the background and returns once traffic flows,
printing the nodes and their addresses; ``status`` and ``exec`` work for anyone in
the nattrack group; ``down`` stops it; ``down --force`` (root) clears what a killed
service left behind, and only that.  The work is in :mod:`nattrack.lab.lifecycle`;
here are the options, ``exec``'s terminal and ``--plugin``'s check.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from ..lab import LabError
from ..lab.lifecycle import describe_lines, lab_down, lab_status, lab_up, nattrack_command, runnable

# lifecycle's functions are also imported from here (cli.mininet, cli.notebook, tests)
__all__ = ["cmd_lab", "register", "doctor_register", "describe_lines", "lab_down", "lab_status",
           "lab_up", "lab_exec", "nattrack_command", "runnable"]


def _err(msg: str) -> int:
    print(f"nattrack: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def _plugin_arg(plugin: str | None, mode: str) -> str | None:
    """``LAB_DIR=SUBMISSION_DIR`` checked and made absolute (the service runs in /)."""
    if not plugin:
        return None
    from ..exercises.manifest import load
    from ..exercises.plugin import parse_spec
    if mode != "python":
        raise LabError("--plugin runs a lab submission in the router: python mode only")
    lab_dir, sub = parse_spec(plugin)
    load(lab_dir)
    if not sub.is_dir():
        raise LabError(f"--plugin: {sub}: no such submission folder")
    return f"{lab_dir.resolve()}={sub.resolve()}"


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
            return lab_up(args.topo, args.mode, args.rules, args.sysctl or [],
                          plugin=_plugin_arg(args.plugin, args.mode), listen=args.listen or [],
                          kernel=args.kernel)
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
        print(f"{name:<12} {getattr(cls, 'description', '')}")
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
    up.add_argument("--kernel", metavar="VERSION",
                    help="python mode: the routers behave as this kernel where kernels differ "
                         "(6.1, 6.6, 6.12, 6.18; default: the kernel this machine runs; "
                         "docs/kernel-profiles.md)")
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
