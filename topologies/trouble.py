"""trouble: the troubleshooting lab's network (labs/06-troubleshooting), healthy by default.

    h1  10.0.0.10 ---------------+
    web 10.0.0.20 (http :80) ----+-- s1 --- ntr-lan 10.0.0.1 [r] 203.0.113.1 ntr-wan --- s2 --- srv 203.0.113.10
    h2  10.0.0.11 --- [u] -------+                                                        |    (http :80, echo :7)
                      user-space +-- ntr2-lan 10.0.0.2 [r2] 203.0.113.2 ntr2-wan ---------+
                      bridge          (a second way out: plain routing, no NAT)

r is the NAT router (labs/06-troubleshooting/rules/healthy.rules: MASQUERADE out of
ntr-wan, 203.0.113.1:8080 forwarded to web:80, a stateful FORWARD filter).  r2 is a
plain router between the same two networks: the second path an asymmetric route takes.
u is a naive user-space bridge (an AF_PACKET copy loop, the kind of forwarder a
student writes with scapy): it copies frames as it reads them, so a checksum that h2
left to its veth's tx offload reaches r unfinished.  The lab's scenarios break this
network one knob at a time (labs/06-troubleshooting/scenarios/).

No probe: a broken scenario starts with traffic not flowing, on purpose.
"""
# Import-safe for `mn --custom` (which exec()s this file and copies every global it
# defines into mn, hence the underscores): make the repository importable, define classes.
import inspect as _inspect
import os as _os
import subprocess as _subprocess
import sys as _sys

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(_inspect.currentframe().f_code.co_filename)))
if _root not in _sys.path:
    _sys.path.insert(0, _root)

from mininet.node import Node as _Node  # noqa: E402

from nattrack.lab import LabError as _LabError, python_for_nodes as _python  # noqa: E402
from nattrack.lab import topo as _nt  # noqa: E402

_RULES = _os.path.join(_root, "labs", "06-troubleshooting", "rules", "healthy.rules")

# The user-space bridge: every frame read on one side is sent, byte for byte, on the other.
# Read without PACKET_VNET_HDR, a frame whose checksum was left to offload (CHECKSUM_PARTIAL)
# comes with only the pseudo-header sum in its checksum field, and is sent on like that.
_BRIDGE = r"""
import select, socket, sys
ETH_P_ALL, SOL_PACKET, PACKET_IGNORE_OUTGOING = 3, 263, 23
def sock(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.bind((name, ETH_P_ALL))
    return s
a, b = sock(sys.argv[1]), sock(sys.argv[2])
other = {a: b, b: a}
print("ready", flush=True)
while True:
    for s in select.select([a, b], [], [])[0]:
        frame = s.recv(65536)
        try:
            other[s].send(frame)
        except OSError:
            pass
"""


class UserspaceBridge(_Node):
    """A node that bridges its two interfaces with an AF_PACKET copy loop (no kernel bridge)."""

    def config(self, **params):
        r = super().config(**params)
        ports = [str(i) for i in self.intfList() if str(i) != "lo"]
        self.cmd(_nt._node_setup_cmds(self.intfList()))
        self.cmd("; ".join(f"ip link set {p} promisc on up" for p in ports))
        self.bridge = self.popen([_python(), "-c", _BRIDGE, *ports], stdin=_subprocess.DEVNULL,
                                 stdout=_subprocess.PIPE, stderr=_subprocess.DEVNULL, cwd="/")
        line = self.bridge.stdout.readline().decode(errors="replace").strip()
        if line != "ready":
            raise _LabError(f"the user-space bridge in {self.name} did not start")
        return r

    def terminate(self):
        bridge = getattr(self, "bridge", None)
        if bridge is not None and bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        super().terminate()


class TroubleTopo(_nt.NatTopo):
    """The troubleshooting network: a NAT router, a second plain router, a user-space bridge."""
    name = "trouble"
    description = ("h1, web (10.0.0.20:80) and h2 (behind user-space bridge u) on LAN "
                   "10.0.0.0/24; NAT router r (203.0.113.1, 8080 -> web:80) and plain router "
                   "r2 to server srv 203.0.113.10")

    def scene(self):
        self.switch("s1")
        self.switch("s2")
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, rules=_RULES,
                        role="NAT router (MASQUERADE, port forward, stateful filter)")
        self.link("r", "lan", "s1", None)
        self.link("r", "wan", "s2", None)
        self.plain_router("r2", {"lan": "10.0.0.2/24", "wan": "203.0.113.2/24"},
                          role="second router (no NAT)")
        self.link("r2", "lan", "s1", None)
        self.link("r2", "wan", "s2", None)
        self.host("h1", "10.0.0.10/24", on="s1", gw="10.0.0.1", role="private host")
        self.host("web", "10.0.0.20/24", on="s1", gw="10.0.0.1", role="private web server",
                  services=["http"])
        self.addNode("u", cls=UserspaceBridge, ip=None)
        self.nodes_info["u"] = {"kind": "bridge", "role": "user-space bridge (AF_PACKET copy)",
                                "ifaces": {}, "ifroles": {}, "services": []}
        self.host("h2", "10.0.0.11/24", on=("u", "h2"), gw="10.0.0.1",
                  role="private host behind the user-space bridge")
        self.link("u", "lan", "s1", None)
        self.host("srv", "203.0.113.10/24", on="s2", role="public server",
                  services=["http", "echo"])
        self.notes.append("healthy until a scenario breaks it: make -C labs/06-troubleshooting "
                          "run SCENARIO=no-masquerade")


topos = {"trouble": TroubleTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
