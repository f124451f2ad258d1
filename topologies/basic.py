"""basic: one private host, the NAT router, one public server.

    h1 10.0.0.10 --- ntr-lan 10.0.0.1 [r] 203.0.113.1 ntr-wan --- srv 203.0.113.10
                                                                 (http :80, echo :7)

Rules: examples/rules/basic.rules (MASQUERADE out of ntr-wan).
Try: `nattrack lab exec h1 -- curl -s 203.0.113.10` then `nattrack conntrack -L`.
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


class BasicTopo(_nt.NatTopo):
    """One private host, the router r, one public server."""
    name = "basic"
    description = "one private host h1, the NAT router r, one public server srv"

    def scene(self):
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"}, rules="basic.rules",
                        role="home router (MASQUERADE)")
        self.host("h1", "10.0.0.10/24", on=("r", "lan"), gw="10.0.0.1", role="private host")
        self.host("srv", "203.0.113.10/24", on=("r", "wan"), role="public server",
                  services=["http", "echo"])
        self.probe("h1", "203.0.113.10")


topos = {"basic": BasicTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
