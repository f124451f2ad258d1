"""portforward: DNAT from the router's public address to a private server.

    web 10.0.0.10 (http :80) --- ntr-lan 10.0.0.1 [r] 203.0.113.1 ntr-wan --- ext 203.0.113.10

Rules: examples/rules/portforward.rules: 203.0.113.1:8080 -> 10.0.0.10:80 (DNAT), the LAN
masqueraded, FORWARD DROP but for replies and the forwarded port.
Try: `nattrack lab exec ext -- curl -s 203.0.113.1:8080` (the page says who it saw).
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


class PortForwardTopo(_nt.NatTopo):
    """A private web server reached through the router's public address."""
    name = "portforward"
    description = ("private web server web (10.0.0.10:80) published as 203.0.113.1:8080 "
                   "by router r; outside client ext")

    def scene(self):
        self.nat_router("r", {"lan": "10.0.0.1/24", "wan": "203.0.113.1/24"},
                        rules="portforward.rules", role="router with a port forward (DNAT)")
        self.host("web", "10.0.0.10/24", on=("r", "lan"), gw="10.0.0.1",
                  role="private web server", services=["http"])
        self.host("ext", "203.0.113.10/24", on=("r", "wan"), role="outside client")
        self.probe("web", "203.0.113.10")
        self.notes.append("the port forward: nattrack lab exec ext -- curl -s 203.0.113.1:8080")


topos = {"portforward": PortForwardTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
