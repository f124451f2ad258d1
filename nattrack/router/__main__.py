"""``python -m nattrack.router``: the live lab's router process (run it inside the
router's network namespace).

    python -m nattrack.router --mode python|kernel --iface NAME=ADDR/PREFIX ...
        [--route DEST=IFACE[ via GW]]... [--rules FILE] [--sysctl KEY=VALUE]...
        --control SOCKET [--log FILE] [--seed N] [--listen PROTO:PORT[,PORT]]...
        [--plugin LAB_DIR=SUBMISSION_DIR [--run-as USER]]

Prints ``ready`` on stdout once it forwards (python mode) or shadows (kernel
mode) and the control socket answers.  SIGTERM, SIGINT and the ``stop`` verb end
it cleanly: the namespace is put back as it was and the socket removed.
Exit status: 0 after a clean stop, 2 for bad arguments, 1 when the namespace
could not be prepared.

With ``--plugin`` (python mode, root) a student's pieces replace the engine's
(:mod:`nattrack.exercises.plugin`): the process prepares the namespace, opens its packet
sockets and the control socket as root, then forks; the child gives up root for good
(:func:`drop_privileges`) *before* it imports the submission, and forwards; the parent
stays root only to wait for it, pass signals on, and put the namespace back.
A submission that cannot be plugged in ends the child with status 2 and one line on
stderr, before ``ready``.
"""
from __future__ import annotations

import argparse
import logging
import os
import pwd
import resource
import signal
import sys
import time

from ..conntrack.core import tune_gc
from ..conntrack.profile import get_profile
from ..conntrack.sysctl import DEFAULTS, PREFIX, SysctlError, Sysctl
from ..netfilter.rulesfile import load_rules
from ..netfilter.xtables import RulesError
from ..ipv4.stack import Router
from ..replay import parse_iface_args, parse_kv_args, parse_listen_args
from .control import Control, ControlError
from .dataplane import Dataplane, PythonDataplane
from .quiet import SetupError

log = logging.getLogger("nattrack.router")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nattrack.router",
                                description="nattrack's live router (run inside the router namespace)")
    p.add_argument("--mode", choices=("python", "kernel"), required=True,
                   help="python: nattrack forwards, the kernel stays out; kernel: the kernel "
                        "forwards and nattrack shadows it")
    p.add_argument("--iface", action="append", default=[], metavar="NAME=ADDR/PREFIX",
                   help="a router interface and its address (repeatable)")
    p.add_argument("--route", action="append", default=[], metavar="DEST=IFACE",
                   help="DEST is default or NET/LEN; IFACE may be 'IFACE via GATEWAY'")
    p.add_argument("--rules", metavar="FILE", help="iptables-save rules (the same file the kernel loads)")
    p.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                   help="kernel names, e.g. net.netfilter.nf_conntrack_udp_timeout=10")
    p.add_argument("--control", required=True, metavar="SOCKET", help="the control socket's path")
    p.add_argument("--log", metavar="FILE", help="log file (default: stderr)")
    p.add_argument("--seed", type=int, help="seed of the engine's random choices (tests)")
    p.add_argument("--listen", action="append", default=[], metavar="PROTO:PORT[,PORT]",
                   help="python mode: a port open on the router's own stack, answered as a "
                        "listener would (e.g. tcp:22, udp:53); every other port gets a RST or "
                        "a port unreachable (repeatable)")
    p.add_argument("--kernel", default="running", metavar="VERSION",
                   help="behave as this kernel where kernels differ: 6.1, 6.6, 6.12, 6.18 or "
                        "running (default: the kernel this machine runs)")
    p.add_argument("--plugin", metavar="LAB_DIR=SUBMISSION_DIR",
                   help="run a lab submission's pieces in place of the engine's (python mode); "
                        "the submission is imported only after root is dropped")
    p.add_argument("--run-as", default=os.environ.get("NATTRACK_PLUGIN_RUN_AS") or "nobody",
                   metavar="USER",
                   help="the user (a name, or a numeric uid that needs no account: it is the "
                        "gid too) the router becomes before importing a --plugin submission "
                        "(default $NATTRACK_PLUGIN_RUN_AS, else nobody)")
    return p


# Limits of the unprivileged router that runs a submission.
PLUGIN_LIMITS = {
    resource.RLIMIT_CORE: 0,
    resource.RLIMIT_NPROC: 256,                  # threads count too (control clients)
    resource.RLIMIT_FSIZE: 256 << 20,            # the log, a capture
    resource.RLIMIT_AS: 4 << 30,
}
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def _prctl(option: int, arg: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _user(user: str):
    """``user``'s passwd entry; a number is a uid (and gid) that needs no account."""
    if user.isdigit():
        import types
        return types.SimpleNamespace(pw_uid=int(user), pw_gid=int(user), pw_name=user)
    return pwd.getpwnam(user)


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: no supplementary groups, real/effective/saved ids of the
    user (which clears every capability), no_new_privs (no set-uid binary or file
    capability can give root back), resource limits, and SIGKILL if the root parent dies."""
    pw = _user(user)
    if pw.pw_uid == 0:
        raise ValueError(f"--run-as {user}: that is root; give an unprivileged user such as nobody")
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    for limit, value in PLUGIN_LIMITS.items():
        soft, hard = resource.getrlimit(limit)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("root could be regained after dropping privileges")


def _check_plugin(args):
    """The lab's manifest (read as root, trusted) and a submission folder the user can read."""
    from ..exercises.manifest import load
    from ..exercises.plugin import parse_spec
    if args.mode != "python":
        raise ValueError("--plugin works in python mode only (kernel mode's tracker is a shadow)")
    lab_dir, sub = parse_spec(args.plugin)
    lab = load(lab_dir)
    if not sub.is_dir():
        raise ValueError(f"--plugin: {sub}: no such submission folder")
    try:
        pw = _user(args.run_as)
    except KeyError:
        raise ValueError(f"--run-as {args.run_as}: no such user") from None
    if os.geteuid() == 0 and pw.pw_uid != 0 and not _readable_by(sub, pw):
        raise ValueError(f"--plugin: {sub} is not readable by {args.run_as}: make it and the "
                         f"folders above it world-readable (chmod o+rX)")
    return lab, sub.resolve()


def _readable_by(path, pw) -> bool:
    """Could ``pw`` list ``path`` (every folder on the way searchable, the folder readable)?"""
    import stat
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        st = os.stat(p)
        need = stat.S_IXOTH | (stat.S_IROTH if p == path else 0)
        if st.st_uid == pw.pw_uid:
            need <<= 6
        elif st.st_gid == pw.pw_gid:
            need <<= 3
        if st.st_mode & need != need:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    try:
        if not args.iface:
            raise ValueError("at least one --iface NAME=ADDR/PREFIX is needed")
        ifaces = parse_iface_args(args.iface)
        routes = parse_kv_args(args.route, "--route")
        sysctls = parse_kv_args(args.sysctl, "--sysctl")
        engine_sysctls = {k: v for k, v in sysctls.items() if Sysctl.short(k) in DEFAULTS}
        if args.mode == "python":
            unknown = sorted(set(sysctls) - set(engine_sysctls))
            if unknown:
                raise ValueError(f"--sysctl {unknown[0]}: not a conntrack setting nattrack knows "
                                 f"(python mode keeps the kernel out of the data path)")
        Sysctl(engine_sysctls)                        # validate values now
        kernel_sysctls = {(k if "." in k else PREFIX + k): v for k, v in sysctls.items()}
        ruleset = load_rules(args.rules) if args.rules else None
        rules_text = open(args.rules, encoding="utf-8").read() if args.rules else None
        listen = parse_listen_args(args.listen)
        if listen and args.mode != "python":
            raise ValueError("--listen works in python mode only (in kernel mode the router "
                             "namespace's own sockets answer)")
        # Python mode: the engine's stack answers what is addressed to the router, as the
        # kernel's would.  Kernel mode: the kernel answers, and the shadow runs the kernel's
        # answers through LOCAL_OUT as they leave; its own would count each one twice.
        router = Router(ifaces, routes, ruleset, engine_sysctls, time.time, seed=args.seed,
                        local_stack=args.mode == "python", listen=listen,
                        profile=get_profile(args.kernel))
        plugin = _check_plugin(args) if args.plugin else None
    except (ValueError, RulesError, SysctlError, OSError) as exc:
        print(f"nattrack.router: {exc}", file=sys.stderr)
        return 2

    if args.mode == "python":
        dp: Dataplane = PythonDataplane(router, ifaces)
    else:
        from .shadow import ShadowDataplane
        dp = ShadowDataplane(router, ifaces, rules_text, kernel_sysctls, routes)

    def on_signal(signum, frame):             # noqa: ARG001
        log.info("signal %d: stopping", signum)
        dp.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    control = None
    status = 0
    last_words = None
    try:
        dp.setup()
        control = Control(dp, args.control)
        if plugin is not None:
            status, last_words = _run_plugin(args, plugin, dp, control)
        else:
            control.start()
            tune_gc()
            log.info("ready: %s mode, pid %d, control %s, engine as %s", dp.mode, os.getpid(),
                     args.control, router.ct.profile.describe())
            try:
                print("ready", flush=True)
            except OSError:
                pass
            dp.run()
    except (SetupError, ControlError, OSError) as exc:
        log.error("%s", exc)
        if args.log:                          # else the log line above was already on stderr
            print(f"nattrack.router: {exc}", file=sys.stderr)
        status = 1
    except Exception:                         # noqa: BLE001 -- log it, then undo everything
        log.exception("the router failed")
        status = 1
    finally:
        if control is not None and plugin is None:
            control.close()
        elif control is not None:             # the child served it; nothing to shut down here
            control.server.server_close()
            try:
                os.unlink(args.control)
            except FileNotFoundError:
                pass
        problems = dp.close()
        for p in problems:
            print(f"nattrack.router: {p}", file=sys.stderr)
        log.info("stopped (status %d)", status)
        if last_words:                        # the submission's one-line error, said last
            print(f"nattrack.router: {last_words}", file=sys.stderr, flush=True)
    return status


def _run_plugin(args, plugin, dp, control) -> tuple[int, str | None]:
    """Fork: the child drops root, plugs the submission in and forwards; the parent waits,
    passes SIGTERM/SIGINT on, and returns the child's status and, if the submission could
    not be plugged in, its one-line reason (main() then cleans up as root)."""
    from ..exercises.plugin import PluginError, install
    lab, sub = plugin
    sys.stdout.flush()
    sys.stderr.flush()
    why_r, why_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(why_r)
            signal.signal(signal.SIGTERM, lambda s, f: dp.stop())
            signal.signal(signal.SIGINT, lambda s, f: dp.stop())
            drop_privileges(args.run_as)
            # Its packet and control sockets are open already: from here on no new socket
            # but AF_UNIX, no ptrace, no namespaces -- the grader worker's own filter, so a
            # submission reaches the network only through the router's frames.
            from ..sandbox import seccomp
            try:
                seccomp.install()
            except seccomp.SeccompUnavailable as exc:
                log.warning("the submission runs without a seccomp filter: %s", exc)
            try:
                install(lab, sub)
            except PluginError as exc:
                msg = " ".join(str(exc).split())
                log.error("the submission cannot be plugged in: %s", msg)
                os.write(why_w, msg.encode()[:4000])
                status = 2
                return status, None           # (the finally below exits with it)
            os.close(why_w)
            control.start()
            tune_gc()
            log.info("ready: python mode with %s plugged in, pid %d as %s, control %s",
                     sub, os.getpid(), args.run_as, args.control)
            try:
                print("ready", flush=True)
            except OSError:
                pass
            dp.run()
            status = 0
        except BaseException:                 # noqa: BLE001 -- say it, never return into main()
            log.exception("the router (running %s) failed", sub)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)

    os.close(why_w)

    def forward(signum, frame):               # noqa: ARG001
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    _, wstatus = os.waitpid(child, 0)
    with os.fdopen(why_r, "rb") as f:
        why = f.read().decode(errors="replace").strip() or None
    code = os.waitstatus_to_exitcode(wstatus)
    log.info("the unprivileged router (pid %d) ended with status %d", child, code)
    return (code if code >= 0 else 1), why


if __name__ == "__main__":
    sys.exit(main())
