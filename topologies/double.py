"""double: two NATs in series, a home router behind a carrier-grade NAT.

    h1 10.0.0.10 --- ntr-lan 10.0.0.1 [r] 100.64.0.2 ntr-wan
        --- ntcgn-lan 100.64.0.1 [cgn] 203.0.113.1 ntcgn-wan --- srv 203.0.113.10

The carrier side uses the shared address space 100.64.0.0/10 (RFC 6598).  Both
routers run nattrack (examples/rules/double-home.rules, double-cgn.rules): a
connection from h1 has an entry in each table (`nattrack conntrack -L` and
`nattrack conntrack -L --router cgn`), translated twice.
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


class DoubleTopo(_nt.NatTopo):
    """A home router (r) behind a carrier-grade NAT (cgn)."""
    name = "double"
    description = ("h1 behind home router r (10.0.0.0/24 -> 100.64.0.2), behind carrier NAT "
                   "cgn (100.64.0.0/10 -> 203.0.113.1), server srv")

    def scene(self):
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "100.64.0.2/10"},
                        rules="double-home.rules", routes={"default": "wan via 100.64.0.1"},
                        role="home router (MASQUERADE)")
        self.nat_router("cgn", {"lan": "100.64.0.1/10", "wan": "203.0.113.1/24"},
                        rules="double-cgn.rules", role="carrier-grade NAT (SNAT)")
        self.link("r", "wan", "cgn", "lan")
        self.host("h1", "10.0.0.10/24", on=("r", "lan"), gw="10.0.0.1", role="private host")
        self.host("srv", "203.0.113.10/24", on=("cgn", "wan"), role="public server",
                  services=["http", "echo"])
        self.probe("h1", "203.0.113.10")
        self.notes.append("one connection, two entries: nattrack conntrack -L; "
                          "nattrack conntrack -L --router cgn")


topos = {"double": DoubleTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
