"""A nat chain's rule that maps nothing: ACCEPT (iptables and nft; the parsers refuse DROP there).

nf_nat_inet_fn(): the nat chain's verdict is returned if it is not NF_ACCEPT; after an
accept the connection gets the null binding (__nf_nat_alloc_null_binding()), as when no
rule matches.  Found by typing nat/core.py: such a rule has no range, and the hook passed
None to nf_nat_setup_info().
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP

from nattrack.conntrack.conn import IPS_DST_NAT_DONE, IPS_NAT_MASK, IPS_SRC_NAT_DONE
from nattrack.conntrack.tuple import ip2int

from nattrack_lab import PRIV1, PUB, RTR_PUB, Lab

IPT_ACCEPT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -p udp --dport 53 -j ACCEPT
-A POSTROUTING -o eth1 -j MASQUERADE
COMMIT
"""

NFT = """table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		udp dport 53 %s
		oifname "eth1" masquerade
	}
}
"""


def _udp(lab: Lab, dport: int):
    return lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=4000, dport=dport) / b"q")


@pytest.mark.parametrize("rules", [IPT_ACCEPT, NFT % "accept"], ids=["iptables", "nft"])
def test_accept_in_the_nat_chain_leaves_the_flow_unmapped(rules):
    lab = Lab(rules=rules)
    v = _udp(lab, 53)
    assert v.dropped is None and len(v.sent) == 1
    assert v.sent[0].pkt is not None and v.sent[0].pkt.src == ip2int(PRIV1)   # not masqueraded
    (ct,) = lab.conns()
    assert ct.status & (IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE) == IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE
    assert not ct.status & IPS_NAT_MASK                                       # the null binding
    other = _udp(lab, 5353)                                                   # the next rule still runs
    assert other.sent and other.sent[0].pkt is not None and other.sent[0].pkt.src == ip2int(RTR_PUB)

