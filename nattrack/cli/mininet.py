"""``mininet>`` with nattrack's commands: ``python -m nattrack.cli.mininet [--topo NAME]``.

Builds a topology in this process (root), starts its router process(es), and opens
Mininet's CLI with extra commands:

    ct [conntrack options]     the Python tracker's table: ct (= ct -L), ct -E, ct -S,
                               ct -p tcp --dport 80, ct --kernel -L, ct --router cgn ...
    ctdiff [--router R]        the Python tracker next to the kernel, each difference explained
    trace [-c N] [--format nft] [filters]  each packet's path through the hooks (Ctrl-C ends)
    sysctl KEY[=VALUE]         the tracker's settings (kernel names)
    lab                        the topology: nodes, interfaces, addresses, routers

The same CLI opens under ``sudo mn --custom topologies/basic.py --topo basic`` and
``sudo .venv/bin/python topologies/basic.py``.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from mininet.cli import CLI

from ..lab import LabError
from ..lab.api import LocalLab
from ..lab.ctargs import CtUsageError, parse, router_filters
from .conntrack import TRACE_FORMATS, run_conntrack, run_diff, run_sysctl, run_trace


class _NetView:
    """What LocalLab needs from a net built by someone else (mn)."""

    def __init__(self, net) -> None:
        from ..lab.topo import NatRouter
        self.net = net
        self.topo = getattr(net, "topo", None)
        self._routers = {h.name: h.router for h in net.hosts
                         if isinstance(h, NatRouter) and h.router is not None}

    @property
    def routers(self):
        return self._routers

    def router(self, name=None):
        if name is None:
            name = getattr(self.topo, "primary", None) or next(iter(self._routers), None)
        if name not in self._routers:
            raise LabError(f"{name!r} is not a NAT router here: routers are "
                           f"{', '.join(self._routers) or 'none'}")
        return self._routers[name]

    def node(self, name):
        return self.net[name]


class NattrackCLI(CLI):
    """Mininet's CLI plus ct, ctdiff, trace, sysctl and lab."""

    prompt = "mininet> "

    def __init__(self, mininet, labnet=None, **kwargs):
        self.labnet = labnet if labnet is not None else _NetView(mininet)
        self.api = LocalLab(self.labnet)
        super().__init__(mininet, **kwargs)

    def _split(self, line: str) -> list[str] | None:
        try:
            return shlex.split(line)
        except ValueError as exc:
            print(f"nattrack: {exc}")
            return None

    def _run(self, fn) -> None:
        try:
            fn()
        except (LabError, CtUsageError, ValueError) as exc:
            print(f"nattrack: {' '.join(str(exc).split())}")
        except KeyboardInterrupt:
            print()
        sys.stdout.flush()

    def do_ct(self, line):
        """ct [conntrack options]: the table as conntrack shows it (default -L); ct -E
        follows events until Ctrl-C; --kernel for the router kernel's own table."""
        argv = self._split(line)
        if argv is None:
            return
        if not any(a in argv for a in ("-L", "-E", "-S", "-C", "-F", "-D", "--dump", "--event",
                                       "--stats", "--count", "--flush", "--delete")):
            argv = ["-L", *argv]
        self._run(lambda: run_conntrack(parse(argv), self.api))

    def do_ctdiff(self, line):
        """ctdiff [--router R]: the Python tracker's table next to the kernel's."""
        argv = self._split(line) or []
        p = argparse.ArgumentParser(prog="ctdiff", add_help=False)
        p.add_argument("--router")
        p.add_argument("--tolerance", type=int, default=2)
        try:
            a = p.parse_args(argv)
        except SystemExit:
            return
        self._run(lambda: run_diff(self.api, a.router, a.tolerance))

    def do_trace(self, line):
        """trace [-c N] [--router R] [--format steps|nft] [conntrack filters]: packets
        through the hooks (nft: the lines `nft monitor trace` prints)."""
        argv = self._split(line)
        if argv is None:
            return
        p = argparse.ArgumentParser(prog="trace", add_help=False)
        p.add_argument("-c", "--count", type=int)
        p.add_argument("--router")
        p.add_argument("--format", choices=TRACE_FORMATS, default="steps")
        try:
            a, rest = p.parse_known_args(argv)
        except SystemExit:
            return
        self._run(lambda: run_trace(self.api, router_filters(parse(["-L", *rest])), a.count,
                                    a.router, fmt=a.format))

    def do_sysctl(self, line):
        """sysctl KEY[=VALUE]... [--kernel]: the tracker's settings under kernel names."""
        argv = self._split(line) or []
        kernel = "--kernel" in argv
        items = [a for a in argv if a != "--kernel"]
        self._run(lambda: run_sysctl(self.api, items, kernel=kernel))

    def do_lab(self, line):
        """lab: the topology's nodes, interfaces, addresses and routers."""
        from .lab import describe_lines
        describe = getattr(self.labnet, "describe", None)
        if describe is None:
            print("lab: (built by mn) routers: " + ", ".join(self.labnet.routers))
            return
        for text in describe_lines(describe()):
            print(text)


def main(argv: list[str] | None = None) -> int:
    from mininet.log import setLogLevel
    from ..lab.net import LabNet
    from .lab import describe_lines
    p = argparse.ArgumentParser(prog="python -m nattrack.cli.mininet",
                                description="Build a nattrack topology here and open mininet> "
                                            "with ct, ct -E, ctdiff and trace.")
    p.add_argument("--topo", default="basic", help="a topology name or PATH.py[:NAME]")
    p.add_argument("--mode", choices=("python", "kernel"), default="python")
    p.add_argument("--rules")
    p.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--script", help="run these CLI commands (a file) instead of a prompt")
    p.add_argument("-v", "--verbosity", default="output")
    args = p.parse_args(argv)
    import os
    if os.geteuid() != 0:
        print("nattrack: the Mininet CLI needs root: run it with sudo", file=sys.stderr)
        return 2
    setLogLevel(args.verbosity)
    try:
        sysctls = dict(kv.split("=", 1) for kv in args.sysctl)
    except ValueError:
        print("nattrack: --sysctl takes KEY=VALUE", file=sys.stderr)
        return 2
    from ..lab import Paths, run_dir
    paths = Paths(run_dir() / f"mn-{os.getpid()}")
    lab = None
    try:
        lab = LabNet(args.topo, mode=args.mode, rules=args.rules, sysctls=sysctls, paths=paths)
        lab.start()
        for text in describe_lines(lab.describe()):
            print(text)
        NattrackCLI(lab.net, labnet=lab, script=args.script)
    except LabError as exc:
        print(f"nattrack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        if lab is not None:
            lab.stop()
        try:
            import shutil
            shutil.rmtree(paths.dir, ignore_errors=True)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
