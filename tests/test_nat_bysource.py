"""NAT owns its state (issue 13 item 2): nf_nat_bysource in nat/bysource.py, reached by
conntrack only through the destroy hooks NAT registers; a forced choice is a one-point range."""
from __future__ import annotations

import re
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from nattrack.conntrack.conn import IPS_SRC_NAT_DONE, Conn
from nattrack.conntrack.core import ConntrackTable
from nattrack.conntrack.tuple import Tuple
from nattrack.nat import core as nat_core
from nattrack.nat.bysource import NatNet, bysource_key, nat_forced, nat_net
from nattrack.nat.core import NF_NAT_MANIP_DST, NF_NAT_MANIP_SRC, forced_range, range_point

from nattrack_lab import PRIV1, PUB, RTR_PUB, Lab

CONNTRACK = Path(nat_core.__file__).resolve().parents[1] / "conntrack"


def udp(lab: Lab, sport: int, dport: int = 5353) -> None:
    v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=sport, dport=dport) / Raw(b"q"))
    assert v.sent, v.dropped


def test_conntrack_does_not_know_nats_fields():
    """Nothing under conntrack/ names NAT's by-source hash or its forced choices."""
    for path in sorted(CONNTRACK.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"nat_bysource|bysource_key|nat_forced|_nat_cleanup", text), path.name
    table = ConntrackTable(lambda: 0.0)
    assert not [name for name in vars(table) if name.startswith("nat")]


def test_a_masqueraded_flow_is_in_bysource_and_leaves_it_when_killed():
    lab = Lab()
    udp(lab, 40000)
    ct = lab.ct.find(Tuple.make(PRIV1, PUB, "udp", 40000, 5353))[0]
    net = nat_net(lab.ct)
    assert ct.status & IPS_SRC_NAT_DONE
    assert net.bysource == {bysource_key(ct.orig): ct}
    assert net.remove_nat_bysrc in lab.ct.destroy_hooks
    assert lab.ct.kill(ct)
    assert net.bysource == {}


def test_same_source_is_newest_first_and_a_removal_collapses_the_list():
    """hlist_add_head(): the newest entry first; two left become one, none leaves no key."""
    net = NatNet()
    src = Tuple.make(PRIV1, PUB, "udp", 40000, 1)
    a, b, c = (Conn(src._replace(dport=d), src) for d in (1, 2, 3))
    for ct in (a, b, c):
        ct.status |= IPS_SRC_NAT_DONE
        net.add(ct)
    assert list(net.same_source(src)) == [c, b, a]
    net.remove_nat_bysrc(b)
    assert list(net.same_source(src)) == [c, a]
    net.remove_nat_bysrc(c)
    assert net.bysource[bysource_key(src)] is a          # one entry needs no list
    net.remove_nat_bysrc(a)
    assert net.bysource == {} and list(net.same_source(src)) == []


def test_an_entry_never_bound_in_the_source_direction_is_not_looked_for():
    net = NatNet()
    t = Tuple.make(PRIV1, PUB, "udp", 40000, 1)
    bound = Conn(t, t)
    bound.status |= IPS_SRC_NAT_DONE
    net.add(bound)
    net.remove_nat_bysrc(Conn(t, t))                      # same key, not SRC_NAT_DONE
    assert net.bysource[bysource_key(t)] is bound


def test_the_second_flow_from_a_source_reuses_its_mapping():
    """find_appropriate_src() through NAT's own hash: endpoint-independent mapping."""
    lab = Lab()
    udp(lab, 40000, 5353)
    udp(lab, 40000, 5354)
    entries = list(nat_net(lab.ct).same_source(Tuple.make(PRIV1, PUB, "udp", 40000, 0)))
    assert [ct.orig.dport for ct in entries] == [5354, 5353]
    assert {(ct.reply.dst, ct.reply.dport) for ct in entries} == {(Tuple.make(RTR_PUB, PUB, "udp", 1, 1).src, 40000)}


def test_the_forced_choice_is_what_get_unique_tuple_gives_for_its_one_point_range():
    """nf_nat_setup_info() takes a forced choice's point directly; the kernel's algorithm,
    run on the same one-point range in an empty table, comes to the same tuple."""
    orig = Tuple.make(PRIV1, PUB, "udp", 40000, 5353)
    left = Tuple.make(RTR_PUB, PUB, "udp", 61234, 5353)
    for manip, k in ((NF_NAT_MANIP_SRC, left), (NF_NAT_MANIP_DST, left._replace(dst=left.dst + 1, dport=80))):
        rng = forced_range(k, manip)
        assert rng.min_ip == rng.max_ip and rng.min_port == rng.max_port
        table = ConntrackTable(lambda: 0.0, seed=1)
        ct = Conn(orig, orig._replace(src=orig.dst, dst=orig.src, sport=orig.dport, dport=orig.sport))
        assert nat_core.get_unique_tuple(table, orig, rng, ct, manip) == range_point(orig, rng, manip)
    icmp = Tuple.make(PRIV1, PUB, "icmp", 7, 8 << 8)
    assert range_point(icmp, forced_range(icmp._replace(src=1, sport=9), NF_NAT_MANIP_SRC),
                       NF_NAT_MANIP_SRC) == icmp._replace(src=1, sport=9)
    assert range_point(icmp, forced_range(icmp._replace(dst=2, sport=9), NF_NAT_MANIP_DST),
                       NF_NAT_MANIP_DST) == icmp._replace(dst=2)     # a DST manip keeps the id


def test_a_forced_choice_draws_nothing_random():
    """The point is taken as is: the table's random sequence is left for unforced flows."""
    lab = Lab(rules=None)
    state = lab.ct.rng.getstate()
    orig = Tuple.make(PRIV1, PUB, "udp", 40000, 5353)
    nat_forced(lab.ct)[orig] = Tuple.make(RTR_PUB, PUB, "udp", 61234, 5353)
    udp(lab, 40000)
    assert lab.ct.rng.getstate() == state
    assert lab.ct.find(orig)[0].reply.dport == 61234
