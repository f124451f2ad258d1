"""A three-namespace test topology for the live router, with guaranteed cleanup.

    client (eth0 10.0.0.10/24) -- r-lan 10.0.0.1/24 [router] r-wan 203.0.113.1/24 -- server (eth0 203.0.113.10/24)

Namespaces are named ``ntl<pid>x<n>-{c,r,s}``: unique per run, and a later run
deletes what a dead run left behind (its pid no longer exists).  veth pairs
are created directly inside the namespaces, so no interface name ever exists
in the root namespace.  Offloads are off and IPv6 is disabled on every veth
(checksums on the wire are real, no router solicitations); the client's
default route points at the router; the router's addresses are configured
(as Mininet would) but the router namespace has no forwarding or rules: the
router process under test does that.

:class:`Topology` is a context manager; ``close()`` (idempotent, also run at
interpreter exit) kills every process left in its namespaces and deletes them.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import subprocess

import netns_tools
from netns_tools import kill_netns_pids, list_netns

CLIENT, ROUTER_LAN, ROUTER_WAN, SERVER = "10.0.0.10", "10.0.0.1", "203.0.113.1", "203.0.113.10"
IFACES = {"r-lan": ROUTER_LAN + "/24", "r-wan": ROUTER_WAN + "/24"}
PREFIX_RE = re.compile(r"^ntl(\d+)x\d+-")
_counter = itertools.count()
_live: set["Topology"] = set()


def sh(*cmd: str, check: bool = True, timeout: float = 20, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def cleanup_stale() -> list[str]:
    """Delete namespaces of dead runs (prefix ntl<pid>x with a pid that is gone)."""
    return netns_tools.cleanup_stale(PREFIX_RE)


class Topology:
    def __init__(self) -> None:
        self.prefix = f"ntl{os.getpid()}x{next(_counter)}-"
        self.client, self.router, self.server = (self.prefix + s for s in ("c", "r", "s"))
        self.namespaces = (self.client, self.router, self.server)
        self.macs: dict[str, str] = {}
        self._made: list[str] = []
        self._closed = False

    # -- building -------------------------------------------------------------------------

    def __enter__(self) -> "Topology":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        cleanup_stale()
        _live.add(self)
        for ns in self.namespaces:
            sh("ip", "netns", "add", ns)
            self._made.append(ns)
            self.exec(ns, "ip", "link", "set", "lo", "up")
            self.exec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.exec(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", self.router, "link", "add", "r-lan", "type", "veth",
           "peer", "name", "eth0", "netns", self.client)
        sh("ip", "-n", self.router, "link", "add", "r-wan", "type", "veth",
           "peer", "name", "eth0", "netns", self.server)
        for ns, dev, cidr in ((self.client, "eth0", CLIENT + "/24"), (self.server, "eth0", SERVER + "/24"),
                              (self.router, "r-lan", IFACES["r-lan"]), (self.router, "r-wan", IFACES["r-wan"])):
            for feature in ("rx", "tx", "tso", "gso", "gro"):
                self.exec(ns, "ethtool", "-K", dev, feature, "off", check=False)
            self.exec(ns, "ip", "addr", "add", cidr, "dev", dev)
            self.exec(ns, "ip", "link", "set", dev, "up")
            self.macs[(ns, dev)] = self.exec(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()
        self.exec(self.client, "ip", "route", "add", "default", "via", ROUTER_LAN)

    # -- using --------------------------------------------------------------------------------

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 20,
             input: str | None = None) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout, input=input)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)

    def mac(self, ns: str, dev: str) -> str:
        return self.macs[(ns, dev)]

    # -- cleanup ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self._made):
            kill_netns_pids(ns, grace=2.0)
            sh("ip", "netns", "del", ns, check=False)
        _live.discard(self)

    def remaining(self) -> list[str]:
        """Namespaces of this topology that still exist (empty after close())."""
        return [ns for ns in list_netns() if ns.startswith(self.prefix)]


@atexit.register
def _close_all() -> None:
    for topo in list(_live):
        topo.close()
