"""A running lab network: the Mininet net of one topology, its routers and services.

Used by the lab service (:mod:`nattrack.lab.daemon`), by the Mininet CLI
(``python -m nattrack.cli.mininet``) and by the tests.  ``start()`` returns once
traffic flows (the topology's probe ping went through the routers); ``stop()``
ends every process the lab started in its nodes, then lets Mininet remove the
nodes, whose namespaces take their interfaces with them.
"""
from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, Callable

from . import LabError, Paths, mininet_available, node_env, python_for_nodes
from .procs import host_netns, kill_all, netns_inode, processes_in_netns
from .topo import LabBridge, NatRouter, NatTopo, RouterProcess
from .topologies import get_topology

if TYPE_CHECKING:
    from mininet.net import Mininet


class LabNet:
    def __init__(self, topo: str | NatTopo = "basic", mode: str = "python",
                 rules: str | None = None, sysctls: dict[str, str] | None = None,
                 paths: Paths | None = None, progress: Callable[[str], None] | None = None,
                 on_record: Callable[[dict], None] | None = None,
                 plugin: str | None = None, run_as: str | None = None,
                 rate: float | str | None = None, listen: list[str] | None = None,
                 kernel: str | None = None) -> None:
        problem = mininet_available()
        if problem:
            raise LabError(problem)
        self.paths = paths or Paths()
        self.progress = progress or (lambda msg: None)
        self.on_record = on_record or (lambda rec: None)
        if isinstance(topo, NatTopo):
            self.topo = topo
        else:
            cls = get_topology(topo)
            try:
                self.topo = cls(mode=mode, rules=rules, sysctls=sysctls or {},
                                run_dir=str(self.paths.dir), wait=False, plugin=plugin,
                                run_as=run_as, rate=rate, listen=listen, kernel=kernel)
            except ValueError as exc:                # a bad mode, rate ...: one line
                raise LabError(str(exc)) from None
        self.net: Mininet | None = None
        self.services: dict[str, subprocess.Popen] = {}
        self.netns: dict[str, int] = {}
        self.started: float | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self, probe_timeout: float = 15.0) -> "LabNet":
        from mininet.net import Mininet
        Mininet.inited = True            # skip fixLimits(): leave the host's sysctls alone
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.progress(f"building {self.topo.name}")
            self.net = Mininet(topo=self.topo, controller=None, build=False,
                               autoSetMacs=False, waitConnected=False)
            self._build()
            self.progress("starting bridges")
            self.net.start()
            self._shape_links()
            self._wait_bridges()
            self.progress("waiting for the router process(es)")
            for r in self.routers.values():
                r.wait_ready()
            self._record()
            self._start_services()
            self._record()
            self._probe(probe_timeout)
            self.started = time.time()
            return self
        except BaseException:
            self.stop()
            raise

    def _build(self) -> None:
        """Mininet's build(), recording each node's namespace as soon as it exists."""
        net = self.net
        assert net is not None                      # start() made it
        orig_add_host, orig_add_switch = net.addHost, net.addSwitch

        def add_host(name, cls=None, **params):
            node = orig_add_host(name, cls=cls, **params)
            self._note_node(node)
            return node

        def add_switch(name, cls=None, **params):
            node = orig_add_switch(name, cls=cls, **params)
            self._note_node(node)
            return node

        net.addHost, net.addSwitch = add_host, add_switch
        try:
            net.build()
        except LabError:
            raise
        except Exception as exc:                    # Mininet raises bare Exceptions
            raise LabError(f"Mininet could not build {self.topo.name}: "
                           f"{' '.join(str(exc).split())}") from exc
        finally:
            net.addHost, net.addSwitch = orig_add_host, orig_add_switch

    def _note_node(self, node) -> None:
        ino = netns_inode(node.pid)
        if ino is None or ino in host_netns():
            raise LabError(f"node {node.name} is not in a network namespace of its own: "
                           f"every lab node must be (use nattrack.lab.topo's node classes)")
        self.netns[node.name] = ino
        self._record()

    def _shape_links(self) -> None:
        """tbf on both ends of each shaped link (NatTopo.shape), inside their nodes."""
        from .topo import tbf_cmd
        for node_name, ifname, mbit in self.topo.shaped:
            node = self.node(node_name)
            intf = node.intf(ifname)
            link = intf.link
            peer = link.intf2 if link.intf1 is intf else link.intf1
            for n, i in ((node, intf.name), (peer.node, peer.name)):
                out = n.cmd(tbf_cmd(i, mbit) + " 2>&1; echo __rc=$?")
                if "__rc=0" not in out:
                    raise LabError(f"tc could not shape {i} in {n.name} to {mbit:g} Mbit/s: "
                                   f"{' '.join(out.replace('__rc=', 'exit ').split())}")
            self.progress(f"{node_name} {ifname}: {mbit:g} Mbit/s both ways")

    def _wait_bridges(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.net is not None                 # start() made it
        for sw in self.net.switches:
            if isinstance(sw, LabBridge):
                while not sw.ports_forwarding() and time.monotonic() < deadline:
                    time.sleep(0.05)

    def _start_services(self) -> None:
        for name, info in self.topo.nodes_info.items():
            if not info.get("services"):
                continue
            log = open(self.paths.dir / f"service-{name}.log", "ab", buffering=0)
            try:
                p = self.node(name).popen(
                    [python_for_nodes(), "-m", "nattrack.lab.services", name, *info["services"]],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    env=node_env(), cwd="/")
            finally:
                log.close()
            self.services[name] = p
        for name, p in self.services.items():
            line = p.stdout.readline().decode(errors="replace").strip() if p.stdout else ""
            if line != "ready":
                raise LabError(f"the services on {name} did not start "
                               f"(see {self.paths.dir / f'service-{name}.log'})")
            if p.stdout is not None:
                p.stdout.close()

    def _probe(self, timeout: float) -> None:
        if not self.topo.probe_pair:
            return
        src, dst = self.topo.probe_pair
        self.progress(f"checking that {src} reaches {dst}")
        deadline = time.monotonic() + timeout
        while True:
            p = self.node(src).popen(["ping", "-c1", "-W1", "-n", dst], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            p.communicate(timeout=5)
            if p.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"traffic does not flow: {src} cannot ping {dst} through the "
                               f"router within {timeout:.0f} s (router logs in {self.paths.dir})")
            for name, r in self.routers.items():
                if not r.alive():
                    raise LabError(f"the router process in {name} died (see {r.log})")

    def stop(self) -> None:
        """Stop routers and services, end every process in the lab's namespaces, remove nodes."""
        net, self.net = self.net, None
        for r in self.routers_of(net).values():
            try:
                r.stop()
            except Exception:                        # noqa: BLE001 -- cleanup goes on
                pass
        for p in self.services.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.services.clear()
        shells: set[int] = {n.pid for n in (net.hosts + net.switches)} if net else set()
        kill_all(processes_in_netns(self.netns.values(), exclude=shells))
        if net is not None:
            try:
                net.stop()
            except Exception:                        # noqa: BLE001 -- then kill by namespace
                pass
        kill_all(processes_in_netns(self.netns.values()))

    # -- what it offers --------------------------------------------------------------

    def node(self, name: str):
        if self.net is None or name not in self.net:
            raise LabError(f"no node {name!r} in {self.topo.name}: nodes are "
                           f"{', '.join(self.topo.nodes_info)}")
        return self.net[name]

    @staticmethod
    def routers_of(net) -> dict[str, RouterProcess]:
        if net is None:
            return {}
        return {h.name: h.router for h in net.hosts
                if isinstance(h, NatRouter) and h.router is not None}

    @property
    def routers(self) -> dict[str, RouterProcess]:
        return self.routers_of(self.net)

    def router(self, name: str | None = None) -> RouterProcess:
        name = name or self.topo.primary
        r = self.routers.get(name)
        if r is None:
            raise LabError(f"{name!r} is not a NAT router of {self.topo.name}: routers are "
                           f"{', '.join(self.topo.routers)}")
        return r

    def record(self) -> dict:
        """What a force cleanup needs: node PIDs, namespaces, router and service PIDs."""
        nodes: dict[str, dict[str, int | None]] = {}
        routers: dict[str, dict[str, object]] = {}
        services: dict[str, int] = {}
        rec = {"nodes": nodes, "netns": sorted(set(self.netns.values())), "routers": routers,
               "services": services}
        if self.net is not None:
            for n in self.net.hosts + self.net.switches:
                nodes[n.name] = {"pid": n.pid, "netns": self.netns.get(n.name)}
        for name, r in self.routers.items():
            routers[name] = {"pid": r.pid, "control": str(r.control), "log": str(r.log),
                             "kernel_fallback": r.kernel_fallback}
        for name, p in self.services.items():
            services[name] = p.pid
        return rec

    def _record(self) -> None:
        self.on_record(self.record())

    def describe(self) -> dict:
        d = self.topo.describe()
        d["started"] = self.started
        for name, r in self.routers.items():
            d["routers"][name].update(pid=r.pid, alive=r.alive(), control=str(r.control),
                                      mode=("kernel (interim: kernel forwarding, no router "
                                            "process)" if r.kernel_fallback else self.topo.mode))
        if self.net is not None:
            for n in self.net.hosts + self.net.switches:
                d["nodes"][n.name]["pid"] = n.pid
        return d
