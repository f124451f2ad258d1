"""``python -m nattrack.router``: the live lab's router process (run it inside the
router's network namespace).

    python -m nattrack.router --mode python|kernel --iface NAME=ADDR/PREFIX ...
        [--route DEST=IFACE[ via GW]]... [--rules FILE] [--sysctl KEY=VALUE]...
        --control SOCKET [--log FILE] [--seed N]

Prints ``ready`` on stdout once it forwards (python mode) or shadows (kernel
mode) and the control socket answers.  SIGTERM, SIGINT and the ``stop`` verb end
it cleanly: the namespace is put back as it was and the socket removed.
Exit status: 0 after a clean stop, 2 for bad arguments, 1 when the namespace
could not be prepared.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from ..conntrack.core import tune_gc
from ..conntrack.sysctl import DEFAULTS, PREFIX, SysctlError, Sysctl
from ..netfilter.rules import Ruleset, RulesError
from ..netfilter.stack import Router
from ..replay import parse_iface_args
from .control import Control, ControlError
from .dataplane import PythonDataplane
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
    return p


def _kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


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
        routes = _kv(args.route, "--route")
        sysctls = _kv(args.sysctl, "--sysctl")
        engine_sysctls = {k: v for k, v in sysctls.items() if Sysctl.short(k) in DEFAULTS}
        if args.mode == "python":
            unknown = sorted(set(sysctls) - set(engine_sysctls))
            if unknown:
                raise ValueError(f"--sysctl {unknown[0]}: not a conntrack setting nattrack knows "
                                 f"(python mode keeps the kernel out of the data path)")
        Sysctl(engine_sysctls)                        # validate values now
        kernel_sysctls = {(k if "." in k else PREFIX + k): v for k, v in sysctls.items()}
        ruleset = Ruleset.load(args.rules) if args.rules else None
        rules_text = open(args.rules, encoding="utf-8").read() if args.rules else None
        router = Router(ifaces, routes, ruleset, engine_sysctls, time.time, seed=args.seed)
    except (ValueError, RulesError, SysctlError, OSError) as exc:
        print(f"nattrack.router: {exc}", file=sys.stderr)
        return 2

    if args.mode == "python":
        dp = PythonDataplane(router, ifaces)
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
    try:
        dp.setup()
        control = Control(dp, args.control)
        control.start()
        tune_gc()
        log.info("ready: %s mode, pid %d, control %s", dp.mode, os.getpid(), args.control)
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
        if control is not None:
            control.close()
        problems = dp.close()
        for p in problems:
            print(f"nattrack.router: {p}", file=sys.stderr)
        log.info("stopped (status %d)", status)
    return status


if __name__ == "__main__":
    sys.exit(main())
