"""classroom: the notebooks' lab: two private hosts, the NAT router, one public server.

    h1 10.0.0.10 --+
                   +-- [s1] -- ntr-lan 10.0.0.1 [r] 203.0.113.1 ntr-wan -- srv 203.0.113.10
    h2 10.0.0.11 --+                                                       (http :80, echo :7)

Rules: examples/rules/classroom.rules (MASQUERADE, port 8080 forwarded to h2:5080); the
notebooks switch to classroom-snat-range.rules and classroom-firewall.rules with the
service's ``rules`` verb.  The notebooks hand-craft both ends of their connections
(``python -m nattrack.lab.craft``), so the hosts' own stacks must stay quiet on the
crafting ports: every host drops, in its own INPUT chain, TCP and UDP to ports
5000-5999 (hand-made servers) and 40000-40999 (hand-made clients).  Ports outside
those ranges behave normally (srv's closed port 6000 answers RST or port unreachable),
and the hosts' own connections take their source ports from 41000-60999.
"""
# Import-safe for `mn --custom` (which exec()s this file and copies every global it
# defines into mn, hence the underscores): make the repository importable, define classes.
import inspect as _inspect
import os as _os
import sys as _sys

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(_inspect.currentframe().f_code.co_filename)))
if _root not in _sys.path:
    _sys.path.insert(0, _root)

from nattrack.lab import topo as _nt  # noqa: E402

_QUIET_PORTS = ("5000:5999", "40000:40999")


class QuietHost(_nt.LabHost):
    """A lab host whose kernel ignores the crafting ports (no RST, no port unreachable)."""

    def config(self, **params):
        r = super().config(**params)
        cmds = [f"iptables -A INPUT -p {proto} --dport {ports} -j DROP"
                for proto in ("tcp", "udp") for ports in _QUIET_PORTS]
        # the host's own connections (curl, nc) must never pick a quiet port
        cmds.append("sysctl -qw net.ipv4.ip_local_port_range='41000 60999'")
        self.cmd("{ " + "; ".join(cmds) + "; } >/dev/null 2>&1")
        return r


class ClassroomTopo(_nt.NatTopo):
    """h1, h2 on bridge s1 behind router r; srv on the public side."""
    name = "classroom"
    description = ("the notebooks' lab: private hosts h1, h2 (bridge s1) behind router r, "
                   "public server srv; crafting ports 5000-5999 and 40000-40999 kept quiet")

    def scene(self):
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"},
                        rules="classroom.rules", role="home router (MASQUERADE, port 8080 to h2)")
        self.switch("s1")
        self.link("r", "lan", "s1", None)
        for i, name in enumerate(("h1", "h2")):
            self.host(name, f"10.0.0.{10 + i}/24", on="s1", gw="10.0.0.1", role="private host")
        self.host("srv", "203.0.113.10/24", on=("r", "wan"), role="public server",
                  services=["http", "echo"])
        for name in ("h1", "h2", "srv"):
            self.nodeInfo(name)["cls"] = QuietHost
        self.probe("h1", "203.0.113.10")
        self.notes.append("the notebooks: nattrack notebook (hand-made packets: "
                          "python -m nattrack.lab.craft)")


topos = {"classroom": ClassroomTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
