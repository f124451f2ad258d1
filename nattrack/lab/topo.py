"""Building blocks for the lab's Mininet topologies (``topologies/*.py``).

A topology is a :class:`NatTopo` whose :meth:`NatTopo.scene` places nodes with
a few verbs (:meth:`~NatTopo.nat_router`, :meth:`~NatTopo.plain_router`,
:meth:`~NatTopo.switch`, :meth:`~NatTopo.host`, :meth:`~NatTopo.link`) that
record, besides the Mininet graph, what the lab needs to know: each NAT router's
interfaces (the router process's ``--iface NAME=ADDR/PREFIX``), routes
(``--route DEST=IFACE [via GW]``) and rules file (``examples/rules/*.rules``,
iptables-save or nft syntax, loaded unchanged by the kernel in kernel mode:
iptables-restore or nft -f).

Rules the nodes keep (lab-kit-conventions §1, §2):

* no Open vSwitch and no controller: hosts link straight to a router, or through
  :class:`LabBridge`, a Linux bridge that lives in a namespace of its own, so no
  lab interface and no lab packet ever touches the root namespace (its firewall,
  Docker's FORWARD DROP, br_netfilter);
* every interface is named ``nt<node>-<role>`` (:data:`~nattrack.lab.IFACE_PREFIX`);
* offloads are off on every veth (checksums as sent, no GSO super-frames), IPv6 is
  off (no router solicitations in captures), ``ping`` works unprivileged
  (``net.ipv4.ping_group_range``);
* nothing starts at import: ``sudo mn --custom topologies/basic.py --topo basic``
  and ``import`` both only define classes;
* links are a classroom's, not a veth's: :meth:`~NatTopo.shape` (by default the
  primary router's ``wan`` link, 100 Mbit/s) puts a tbf on both ends when the lab
  starts, so that kernel mode's shadow sees every packet of a bulk transfer
  (bench/README.md, figure 6); ``rate=`` (the lab's ``--rate``,
  ``$NATTRACK_LINK_RATE``) overrides it, 0 = unshaped.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mininet.node import Host, Node, Switch
from mininet.topo import Topo

from ..conntrack.profile import get_profile
from ..netfilter.rulesfile import is_nft, nat_helper_modules
from . import (IFACE_PREFIX, RULES_DIR, LabError, Paths, node_env, python_for_nodes,
               router_available)

IFNAMSIZ = 15
MODES = ("python", "kernel")
OFFLOADS = ("rx", "tx", "tso", "gso", "gro")
# A classroom's uplink, not a veth's 10+ Gbit/s: at this rate kernel mode's shadow sees
# every frame (bench/README.md, "the shadow's exact range").
DEFAULT_UPLINK_MBIT = 100.0
RATE_ENV = "NATTRACK_LINK_RATE"


def parse_rate(value) -> float:
    """A link rate in Mbit/s (``100``, ``2.5``); 0 means unshaped."""
    try:
        mbit = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"link rate {value!r}: expected Mbit/s, e.g. 100 (0: unshaped)") from None
    if not 0 <= mbit <= 100_000:
        raise ValueError(f"link rate {value!r}: expected 0 (unshaped) to 100000 Mbit/s")
    return mbit


def tbf_cmd(ifname: str, mbit: float) -> str:
    """Shape ``ifname``'s egress to ``mbit`` with a token bucket (tc-tbf(8)): a burst of
    4 ms of traffic (at least 16 kB: a few full frames), 20 ms of queue."""
    burst = max(16_000, int(mbit * 1e6 / 8 * 0.004))
    return (f"tc qdisc replace dev {ifname} root tbf rate {mbit:g}mbit burst {burst} "
            f"latency 20ms")


def iface_name(node: str, role: str) -> str:
    name = f"{IFACE_PREFIX}{node}-{role}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters: "
                         f"shorten node {node!r} or role {role!r}")
    return name


def _node_setup_cmds(intfs) -> str:
    """Shell line run once in each node: IPv6 off, unprivileged ping, offloads off."""
    cmds = ["sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            "sysctl -qw net.ipv4.ping_group_range='0 2147483647'"]
    off = " ".join(f"{o} off" for o in OFFLOADS)
    for intf in intfs:
        if str(intf) != "lo":
            cmds.append(f"ethtool -K {intf} {off}")
    return "{ " + "; ".join(cmds) + "; } >/dev/null 2>&1; true"


def _route_cmds(routes: dict[str, str], ifaces: dict[str, str]) -> list[str]:
    out = []
    for dest, via in routes.items():
        iface, _, gw = via.partition(" via ")
        cmd = f"ip route replace {dest} dev {iface}"
        if gw:
            cmd += f" via {gw}"
        out.append(cmd)
    return out


class LabHost(Host):
    """An end host: Mininet's Host, quietened and with offloads off."""

    def config(self, **params):
        r = super().config(**params)
        self.cmd(_node_setup_cmds(self.intfList()))
        return r


class PlainRouter(Node):
    """A router without NAT (the Internet between two NATs): the kernel forwards."""

    def config(self, routes=None, **params):
        r = super().config(**params)
        cmds = [_node_setup_cmds(self.intfList()), "sysctl -qw net.ipv4.ip_forward=1"]
        cmds += _route_cmds(routes or {}, {})
        self.cmd("; ".join(cmds))
        return r


class LabBridge(Switch):
    """A Linux bridge in its own namespace (no root-namespace interfaces, no br_netfilter),
    made with iproute2 (Mininet's LinuxBridge needs brctl and lives in the root namespace)."""

    def __init__(self, name, **params):
        params["inNamespace"] = True                # Mininet passes False for switches
        params.setdefault("dpid", "1")             # unused (no OpenFlow); any name is fine
        super().__init__(name, **params)

    def connected(self):
        return True

    def start(self, _controllers):
        ports = [str(i) for i in self.intfList() if str(i) != "lo"]
        cmds = ["sysctl -qw net.bridge.bridge-nf-call-iptables=0 "
                "net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
                f"ip link add name {self.name} type bridge stp_state 0 forward_delay 0",
                "ip link set lo up"]
        cmds += [f"ip link set {p} master {self.name}" for p in ports]
        cmds += [f"ip link set {p} up" for p in ports] + [f"ip link set {self.name} up"]
        self.cmd("{ " + "; ".join(cmds) + "; } >/dev/null 2>&1")
        self.cmd(_node_setup_cmds(ports))

    def stop(self, deleteIntfs=True):
        self.cmd(f"ip link del {self.name} >/dev/null 2>&1")
        super().stop(deleteIntfs)

    def ports_forwarding(self) -> bool:
        out = self.cmd("bridge link show")
        ports = [line for line in out.splitlines() if "master" in line]
        return bool(ports) and all("state forwarding" in line for line in ports)


def kernel_load_command(path: str) -> str:
    """The shell command that loads a rules file into the kernel of the node it runs in:
    ``iptables-restore`` for the iptables-save syntax; ``nft -f`` for nft syntax, after a
    ``flush ruleset`` in the same transaction (the file replaces the whole rule set).
    Rules that attach a helper load its NAT module first (nat_helper_modules()), as the
    shadow router does."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    quoted = shlex.quote(path)
    first = "".join(f"modprobe -q {m} 2>/dev/null; " for m in nat_helper_modules(text))
    if is_nft(text):
        return f"{first}{{ echo 'flush ruleset'; cat {quoted}; }} | nft -f -"
    return f"{first}iptables-restore -w < {quoted}"


@dataclass
class RouterSpec:
    """What the router process needs: ``--iface``, ``--route``, ``--rules``."""
    node: str
    ifaces: dict[str, str]                       # interface name -> ADDR/PREFIX
    routes: dict[str, str] = field(default_factory=dict)   # DEST -> "IFACE [via GW]"
    rules: str = ""
    role: str = "NAT router"
    plugin: str = ""                             # LAB_DIR=SUBMISSION_DIR (a lab submission)
    run_as: str = ""                             # the user it runs as (router default: nobody)
    listen: list[str] = field(default_factory=list)   # --listen PROTO:PORT[,PORT] (python mode)
    kernel: str = ""                             # --kernel VERSION (python mode; default running)

    def router_args(self) -> list[str]:
        args = []
        for name, cidr in self.ifaces.items():
            args += ["--iface", f"{name}={cidr}"]
        for dest, via in self.routes.items():
            args += ["--route", f"{dest}={via}"]
        if self.rules:
            args += ["--rules", self.rules]
        if self.plugin:
            args += ["--plugin", self.plugin]
            if self.run_as:
                args += ["--run-as", self.run_as]
        for item in self.listen:
            args += ["--listen", item]
        if self.kernel:
            args += ["--kernel", self.kernel]
        return args


class RouterProcess:
    """``python -m nattrack.router`` running inside a router node, or the interim
    kernel-forwarding stand-in when that module does not exist yet.

    Its stdout is read by a thread (so it can never block on a full pipe) into the
    router's log; ``ready`` on a line of its own means it forwards.
    """

    def __init__(self, node: "NatRouter", spec: RouterSpec, mode: str, sysctls: dict[str, str],
                 control: Path, log: Path) -> None:
        self.node, self.spec, self.mode, self.sysctls = node, spec, mode, dict(sysctls)
        self.control, self.log = control, log
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.kernel_fallback = False
        self.tail: list[str] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        argv = [python_for_nodes(), "-m", "nattrack.router", "--mode", self.mode]
        argv += self.spec.router_args()
        for k, v in self.sysctls.items():
            argv += ["--sysctl", f"{k}={v}"]
        return argv + ["--control", str(self.control)]

    def start(self) -> None:
        if not router_available():
            if self.mode != "kernel":
                raise LabError("the router process (python -m nattrack.router) is not installed "
                               "yet: use --mode kernel for now")
            self._start_kernel_fallback()
            return
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab", buffering=0)
        try:
            self.proc = self.node.popen(self.argv(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=logf,
                                        env=node_env(), cwd="/")
        finally:
            logf.close()
        threading.Thread(target=self._drain, name=f"router-{self.node.name}-stdout",
                         daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "ab", buffering=0) as logf:
            for raw in self.proc.stdout:
                logf.write(raw)
                line = raw.decode(errors="replace").strip()
                self.tail = (self.tail + [line])[-5:]
                if line == "ready":
                    self.ready.set()

    def _start_kernel_fallback(self) -> None:
        """Interim kernel mode: the node's kernel forwards and NATs with the same rules."""
        self.kernel_fallback = True
        cmds = ["sysctl -qw net.ipv4.ip_forward=1"]
        for k, v in self.sysctls.items():
            cmds.append(f"sysctl -qw {shlex.quote(k)}={shlex.quote(str(v))}")
        out = self.node.cmd("; ".join(cmds))
        if self.spec.rules:
            out += self.node.cmd(kernel_load_command(self.spec.rules) + " && echo __rules_ok__")
            if "__rules_ok__" not in out:
                raise LabError(f"router {self.node.name}: the kernel rejected "
                               f"{self.spec.rules}: {' '.join(out.split())[:200]}")
        self.ready.set()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.1)                  # let the drain thread catch the last lines
                raise LabError(f"router process in {self.node.name} exited with status "
                               f"{self.proc.returncode} before it was ready: "
                               f"{self._last_words()}")
            if time.monotonic() > deadline:
                raise LabError(f"router process in {self.node.name} did not print `ready` "
                               f"within {timeout:.0f} s (see {self.log})")

    def _last_words(self) -> str:
        try:
            lines = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
        except OSError:
            lines = self.tail
        return lines[-1].strip() if lines else f"no output (see {self.log})"

    def alive(self) -> bool:
        if self.kernel_fallback:
            return True
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            from .rpc import request
            request(self.control, "stop", {}, timeout=1.0)
        except Exception:                          # noqa: BLE001 -- then it is signalled
            pass
        for sig, wait in ((None, timeout), (15, 1.0), (9, 1.0)):
            if sig is not None:
                try:
                    os.kill(self.proc.pid, sig)
                except ProcessLookupError:
                    break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            self.control.unlink()
        except FileNotFoundError:
            pass


class NatRouter(Node):
    """The NAT router node: its addresses and routes in the kernel, and the router
    process (:class:`RouterProcess`) started in it when the node is configured."""

    def __init__(self, name, **params):
        self.router: RouterProcess | None = None
        self._own_run_dir = None
        super().__init__(name, **params)

    def config(self, lab_router=None, lab_mode="python", lab_sysctls=None, lab_run_dir=None,
               lab_wait=True, **params):
        r = super().config(**params)
        spec: RouterSpec = lab_router
        cmds = [_node_setup_cmds(self.intfList())]
        cmds += _route_cmds(spec.routes, spec.ifaces)
        self.cmd("; ".join(cmds))
        paths = Paths(lab_run_dir) if lab_run_dir else Paths(_mn_run_dir())
        self._own_run_dir = None if lab_run_dir else paths.dir     # mn's: removed at the end
        paths.dir.mkdir(parents=True, exist_ok=True)
        self.router = RouterProcess(self, spec, lab_mode, lab_sysctls or {},
                                    paths.router_sock(self.name), paths.router_log(self.name))
        self.router.start()
        if lab_wait:
            self.router.wait_ready()
        return r

    def terminate(self):
        if self.router is not None:
            self.router.stop()
        own = getattr(self, "_own_run_dir", None)
        if own is not None:
            import shutil
            shutil.rmtree(own, ignore_errors=True)
        super().terminate()


def _mn_run_dir() -> Path:
    """Run directory for a network built outside the lab service (``mn``, the Mininet CLI)."""
    from . import run_dir
    return run_dir() / f"mn-{os.getpid()}"


class NatTopo(Topo):
    """A topology that knows its NAT routers, hosts and rules.

    Parameters (also from ``mn --topo NAME,mode=kernel,rules=FILE``): ``mode``
    (python or kernel), ``rules`` (a rules file for the primary router instead of
    its own), ``sysctls`` ({kernel name: value}), ``run_dir`` (where router sockets
    and logs go), ``wait`` (wait for each router's ``ready`` while building),
    ``plugin`` (``LAB_DIR=SUBMISSION_DIR``: the primary router runs a lab submission's
    pieces, python mode) and ``run_as`` (the user that router drops to, default nobody).
    """

    name = ""
    description = ""

    def __init__(self, mode: str = "python", rules: str | None = None,
                 sysctls: dict[str, str] | None = None, run_dir: str | None = None,
                 wait: bool = True, plugin: str | None = None, run_as: str | None = None,
                 rate: float | str | None = None, listen: list[str] | None = None,
                 kernel: str | None = None, **opts) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected python or kernel")
        if rate is None and os.environ.get(RATE_ENV, "").strip():
            rate = os.environ[RATE_ENV].strip()
        self.rate_override = None if rate is None else parse_rate(rate)
        self.shaped: list[tuple[str, str, float]] = []       # (node, interface, Mbit/s)
        if plugin and mode != "python":
            raise ValueError("a plugin (a lab submission) runs in python mode only")
        if listen and mode != "python":
            raise ValueError("--listen opens ports of nattrack's own stack: python mode only "
                             "(in kernel mode the router's own sockets answer)")
        self.listen = list(listen or ())
        if kernel and mode != "python":
            raise ValueError("--kernel makes nattrack behave as another kernel: python mode only "
                             "(in kernel mode the kernel is this machine's, and the shadow "
                             "follows it)")
        if kernel:
            get_profile(kernel)                          # a bad name fails here, in one line
        self.kernel = kernel or ""
        self.mode, self.rules_override = mode, rules
        self.plugin, self.run_as = plugin or "", run_as or ""
        self.sysctls = dict(sysctls or {})
        self.run_dir, self.wait = run_dir, wait
        self.routers: dict[str, RouterSpec] = {}
        self.nodes_info: dict[str, dict] = {}
        self.probe_pair: tuple[str, str] | None = None
        self.notes: list[str] = []
        self._switch_ports: dict[str, int] = {}
        super().__init__(**opts)

    # -- what subclasses call ---------------------------------------------------------

    def build(self, *_args, **_params):
        self.scene()
        if not self.shaped and self.routers and "wan" in self.nodes_info[self.primary]["ifroles"]:
            self.shape(self.primary, "wan", DEFAULT_UPLINK_MBIT)
        if self.rate_override is not None:
            self.shaped = [(n, i, self.rate_override) for n, i, _ in self.shaped]
        self.shaped = [s for s in self.shaped if s[2] > 0]
        if self.rules_override:
            self.routers[self.primary].rules = str(Path(self.rules_override).resolve())
        if self.plugin:
            spec = self.routers[self.primary]
            spec.plugin, spec.run_as = self.plugin, self.run_as
        if self.listen:
            self.routers[self.primary].listen = list(self.listen)
        for spec in self.routers.values():
            spec.kernel = self.kernel

    def scene(self) -> None:
        raise NotImplementedError

    def nat_router(self, name: str, ifaces: dict[str, str], rules: str,
                   routes: dict[str, str] | None = None, role: str = "NAT router") -> str:
        """A router running nattrack: ``ifaces`` maps roles (lan, wan...) to ADDR/PREFIX,
        ``routes`` maps DEST to ``ROLE [via GW]``, ``rules`` names examples/rules/FILE."""
        names = {iface_name(name, r): cidr for r, cidr in ifaces.items()}
        rts = {}
        for dest, via in (routes or {}).items():
            r, _, gw = via.partition(" via ")
            rts[dest] = iface_name(name, r) + (f" via {gw}" if gw else "")
        rules_path = Path(rules) if os.path.isabs(rules) else RULES_DIR / rules
        spec = RouterSpec(name, names, rts, str(rules_path), role)
        self.routers[name] = spec
        self.addNode(name, cls=NatRouter, ip=None, lab_router=spec, lab_mode=self.mode,
                     lab_sysctls=self.sysctls, lab_run_dir=self.run_dir, lab_wait=self.wait)
        self.nodes_info[name] = {"kind": "nat-router", "role": role, "ifaces": dict(names),
                                 "ifroles": dict(ifaces), "services": []}
        return name

    def plain_router(self, name: str, ifaces: dict[str, str],
                     routes: dict[str, str] | None = None, role: str = "router") -> str:
        names = {iface_name(name, r): cidr for r, cidr in ifaces.items()}
        rts = {}
        for dest, via in (routes or {}).items():
            r, _, gw = via.partition(" via ")
            rts[dest] = iface_name(name, r) + (f" via {gw}" if gw else "")
        self.addNode(name, cls=PlainRouter, ip=None, routes=rts)
        self.nodes_info[name] = {"kind": "router", "role": role, "ifaces": dict(names),
                                 "ifroles": dict(ifaces), "services": []}
        return name

    def switch(self, name: str) -> str:
        self.addSwitch(name, cls=LabBridge)
        self._switch_ports[name] = 0
        self.nodes_info[name] = {"kind": "switch", "role": "Linux bridge", "ifaces": {},
                                 "ifroles": {}, "services": []}
        return name

    def host(self, name: str, cidr: str, on: tuple[str, str] | str, gw: str | None = None,
             role: str = "host", services: tuple[str, ...] | list[str] = ()) -> str:
        """An end host with one interface ``nt<name>-eth0`` at ``cidr``, linked to a
        router's interface (``on=(router, role)``) or to a switch (``on=switch``)."""
        params = {"ip": cidr}
        if gw:
            params["defaultRoute"] = f"via {gw}"
        self.addHost(name, cls=LabHost, **params)
        self.nodes_info[name] = {"kind": "host", "role": role, "ifaces": {}, "ifroles": {},
                                 "services": list(services), "gw": gw}
        self.link(name, "eth0", on if isinstance(on, str) else on[0],
                  None if isinstance(on, str) else on[1], cidr1=cidr)
        return name

    def link(self, a: str, role_a: str | None, b: str, role_b: str | None,
             cidr1: str | None = None, cidr2: str | None = None) -> None:
        """Link two nodes by interface role (None on a switch: its next port)."""
        ends: list[tuple[str, str | None]] = []
        for node, role, cidr in ((a, role_a, cidr1), (b, role_b, cidr2)):
            info = self.nodes_info[node]
            if info["kind"] == "switch":
                self._switch_ports[node] += 1
                ends.append((iface_name(node, f"eth{self._switch_ports[node]}"), None))
                continue
            assert role is not None, f"{node} is not a switch: its link end needs a role"
            ifname = iface_name(node, role)
            cidr = cidr or info["ifroles"].get(role)
            info["ifaces"][ifname] = cidr
            info["ifroles"][role] = cidr
            ends.append((ifname, cidr))
        (n1, ip1), (n2, ip2) = ends
        self.addLink(a, b, intfName1=n1, intfName2=n2,
                     params1={"ip": ip1} if ip1 else {}, params2={"ip": ip2} if ip2 else {})

    def shape(self, node: str, role: str, mbit: float) -> None:
        """Shape the link on ``node``'s ``role`` interface to ``mbit`` Mbit/s, both ways
        (tbf on the egress of both ends, set when the net starts).  A topology that
        shapes nothing gets its primary router's ``wan`` link at DEFAULT_UPLINK_MBIT;
        the lab's ``--rate`` (or $NATTRACK_LINK_RATE) overrides every rate, 0 = none."""
        self.shaped.append((node, iface_name(node, role), parse_rate(mbit)))

    def probe(self, src: str, dst: str) -> None:
        """The check that traffic flows: ``src`` pings ``dst`` (an address)."""
        self.probe_pair = (src, dst)

    # -- what the lab reads -------------------------------------------------------------

    @property
    def primary(self) -> str:
        """The router ``nattrack conntrack`` talks to unless told otherwise."""
        return next(iter(self.routers))

    def describe(self) -> dict:
        """JSON-able description: nodes, interfaces and addresses, routers and rules."""
        return {
            "topo": self.name, "description": self.description, "mode": self.mode,
            "primary": self.primary if self.routers else None,
            "nodes": {n: {k: v for k, v in i.items() if k != "ifroles"}
                      for n, i in self.nodes_info.items()},
            "routers": {n: {"ifaces": s.ifaces, "routes": s.routes, "rules": s.rules,
                            "role": s.role} for n, s in self.routers.items()},
            "probe": list(self.probe_pair) if self.probe_pair else None,
            "shaping": [{"node": n, "iface": i, "mbit": m} for n, i, m in self.shaped],
            "notes": list(self.notes),
        }
