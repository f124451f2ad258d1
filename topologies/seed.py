"""seed: the scene of the seed document (a guest behind a NAT-ing host).

    guest 192.168.122.148 --- nthost-virbr0 192.168.122.1 [host] 192.168.199.132 nthost-eth0
        --- ntgw-lan 192.168.199.1 [gw] 198.51.100.1 ntgw-wan --- web 198.51.100.12
                                                                (http :80, https :443)

The host masquerades its guest behind 192.168.199.132 like libvirt's default
network (examples/rules/seed.rules); gw is a plain router standing for the
Internet; the web server has a documentation address (RFC 5737).  Then
`nattrack lab exec guest -- curl -sk https://198.51.100.12` and
`nattrack conntrack -L` shows the document's line:
  tcp 6 ... src=192.168.122.148 dst=198.51.100.12 sport=... dport=443
            src=198.51.100.12 dst=192.168.199.132 sport=443 dport=... [ASSURED] ...
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


class SeedTopo(_nt.NatTopo):
    """A guest VM behind its host, which NATs through its uplink to a web server."""
    name = "seed"
    description = ("guest 192.168.122.148 behind host, which NATs through 192.168.199.132 "
                   "(gw, the Internet) to web 198.51.100.12")

    def scene(self):
        self.nat_router("host", {"virbr0": "192.168.122.1/24", "eth0": "192.168.199.132/24"},
                        rules="seed.rules", routes={"default": "eth0 via 192.168.199.1"},
                        role="virtualisation host (libvirt-style MASQUERADE)")
        self.plain_router("gw", {"lan": "192.168.199.1/24", "wan": "198.51.100.1/24"},
                          role="upstream router (the Internet)")
        self.link("host", "eth0", "gw", "lan")
        self.shape("host", "eth0", 100)              # the host's uplink, as a classroom's
        self.host("guest", "192.168.122.148/24", on=("host", "virbr0"), gw="192.168.122.1",
                  role="guest VM")
        self.host("web", "198.51.100.12/24", on=("gw", "wan"), gw="198.51.100.1",
                  role="web server", services=["http", "https"])
        self.probe("guest", "198.51.100.12")
        self.notes.append("the document's request: nattrack lab exec guest -- "
                          "curl -sk https://198.51.100.12")


topos = {"seed": SeedTopo}


def CLI(net, **kwargs):  # noqa: N802 -- mn calls the global named CLI
    """`mn --custom` opens nattrack's mininet> (ct, ct -E, ctdiff, trace)."""
    from nattrack.cli.mininet import NattrackCLI
    return NattrackCLI(net, **kwargs)


if globals().get("__name__") == "__main__":
    from nattrack.cli.mininet import main as _main
    _sys.exit(_main(["--topo", _os.path.abspath(_inspect.currentframe().f_code.co_filename)]
                    + _sys.argv[1:]))
