"""incidents: the production-incidents lab's network (labs/07-incidents), healthy by default.

    h1 10.0.0.10 --+                                            +-- be1 10.1.0.11 (http :80, echo :7)
    h2 10.0.0.11 --+-- s1 -- ntr-lan 10.0.0.1 [r] 10.1.0.1 ntr-svc -- s2 --+
                                              |                  +-- be2 10.1.0.12 (http :80, echo :7)
                                    203.0.113.1 ntr-wan
                                              |
                                     srv 203.0.113.10 (http :80, echo :7)

r is the "node": a service address 203.0.113.1 DNAT'ed to a backend (UDP 53, the DNS-like
echo service, and TCP 80, to be1 until a backend restarts), and a many-to-one SNAT
gateway (the LAN leaves masqueraded as 203.0.113.1).  The lab's incidents break it one
at a time (labs/07-incidents/scenarios/).
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

_RULES = _os.path.join(_root, "labs", "07-incidents", "rules", "healthy.rules")


class IncidentsTopo(_nt.NatTopo):
    """A node with a DNAT'ed service and two backends, also the LAN's SNAT gateway."""
    name = "incidents"
    description = ("h1, h2 on LAN 10.0.0.0/24 masqueraded by r (203.0.113.1); r DNATs "
                   "203.0.113.1 udp 53 / tcp 80 to backends be1/be2 (10.1.0.11-12); srv "
                   "203.0.113.10")

    def scene(self):
        self.switch("s1")
        self.switch("s2")
        self.nat_router("r", {"lan": "10.0.0.1/24", "svc": "10.1.0.1/24",
                              "wan": "203.0.113.1/24"}, rules=_RULES,
                        role="node: service DNAT to backends, LAN SNAT gateway")
        self.link("r", "lan", "s1", None)
        self.link("r", "svc", "s2", None)
        for i in (1, 2):
            self.host(f"h{i}", f"10.0.0.{9 + i}/24", on="s1", gw="10.0.0.1", role="private host")
            self.host(f"be{i}", f"10.1.0.{10 + i}/24", on="s2", gw="10.1.0.1",
                      role="service backend", services=["http", "echo"])
        self.host("srv", "203.0.113.10/24", on=("r", "wan"), role="public server and client",
                  services=["http", "echo"])
        self.probe("h1", "203.0.113.10")
        self.notes.append("healthy until an incident breaks it: make -C labs/07-incidents "
                          "run INCIDENT=stale-udp")


topos = {"incidents": IncidentsTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
