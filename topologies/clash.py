"""clash: several private hosts that will reuse the same source ports.

    h1 10.0.0.10 --+
    h2 10.0.0.11 --+-- [s1] -- ntr-lan 10.0.0.1 [r] 203.0.113.1 ntr-wan -- srv 203.0.113.10
    h3 10.0.0.12 --+                                                      (http :80, echo :7)

Rules: examples/rules/clash.rules (MASQUERADE).  Send from the same source port on two
hosts (`nattrack lab exec h1 -- nc -u -p 5000 -w1 203.0.113.10 7`, then on h2): the
second mapping cannot keep port 5000 and NAT picks another.
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


class ClashTopo(_nt.NatTopo):
    """Three private hosts on a bridge behind one router and one public address."""
    name = "clash"
    description = ("three private hosts h1-h3 on bridge s1 behind router r: same source "
                   "ports, one public address")

    def scene(self):
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, rules="clash.rules",
                        role="home router (MASQUERADE)")
        self.switch("s1")
        self.link("r", "lan", "s1", None)
        for i in range(3):
            self.host(f"h{i + 1}", f"10.0.0.{10 + i}/24", on="s1", gw="10.0.0.1",
                      role="private host")
        self.host("srv", "203.0.113.10/24", on=("r", "wan"), role="public server",
                  services=["http", "echo"])
        self.probe("h1", "203.0.113.10")
        self.notes.append("same source port from two hosts: nattrack lab exec h1 -- "
                          "nc -u -p 5000 -w1 203.0.113.10 7 (then h2), nattrack conntrack -L")


topos = {"clash": ClashTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
