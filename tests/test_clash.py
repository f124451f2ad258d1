"""Insertion races on two CPUs and their clash resolution (nattrack.conntrack.cpus).

Expectations come from nf_conntrack_core.c of 6.18 (docs/clash.md): __nf_conntrack_confirm,
nf_ct_resolve_clash, __nf_ct_resolve_clash / nf_ct_can_merge, nf_ct_resolve_clash_harder.
The kernel itself is raced in tests/kernel/test_race.py.
"""
from __future__ import annotations

import pytest
from nattrack_lab import PRIV1, PUB, RTR_PUB, nat_rules
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack.conn import (
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_FIXED_TIMEOUT,
    IPS_NAT_CLASH,
    IPS_NAT_DONE_MASK,
    Conn,
)
from nattrack.conntrack.core import _can_merge
from nattrack.conntrack.profile import PROFILES
from nattrack.conntrack.tuple import Tuple
from nattrack.nat.bysource import nat_net
from nattrack.conntrack.cpus import (
    INSERT_FAILED,
    INSERTED,
    MERGED,
    NAT_CLASH,
    NO_CONFIRM,
    NOT_REACHED,
    race,
)

CLIENT_PORT = 40000
# A DNS service on the router's public address with several backends: the port is chosen
# at random per new entry (DNAT to a port range with --random), as kube-proxy's random
# endpoint choice would, so two racing queries of one socket usually get different ones.
DNAT_RANDOM = nat_rules(postrouting=(), prerouting=(
    "-i eth1 -p udp --dport 53 -j DNAT --to-destination 10.0.0.2:5300-5399 --random",
    "-i eth1 -p tcp --dport 53 -j DNAT --to-destination 10.0.0.2:5300-5399 --random"))
DNAT_ONE = nat_rules(postrouting=(), prerouting=(
    "-i eth1 -p udp --dport 53 -j DNAT --to-destination 10.0.0.2:5300",))


def query(lab, payload: bytes = b"A?", proto=UDP, sport=CLIENT_PORT):
    """A query from the public client to the router's DNS address, parsed for the router."""
    l4 = proto(sport=sport, dport=53) if proto is UDP else TCP(sport=sport, dport=53, flags="S")
    return lab.parse("eth1", IP(src=PUB, dst=RTR_PUB) / l4 / Raw(payload))


def backend_port(lane) -> int:
    return IP(lane.verdict.sent[0].data)[UDP].dport


def clash_stats(lab) -> dict:
    return {k: lab.stats[k] for k in ("clash_resolve", "insert_failed", "drop")}


# ------------------------------------------------------------------------------------------
# Identical entries: the loser adopts the winner's entry
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_identical_entries_merge_both_packets_pass(make_lab, order):
    lab = make_lab(DNAT_ONE, sysctl={"nf_conntrack_acct": 1})
    a, aaaa = query(lab, b"A?"), query(lab, b"AAAA?")
    lanes = race(lab.router, [a, aaaa], order)
    winner, loser = lanes[order[0]], lanes[order[1]]
    assert (winner.outcome, loser.outcome) == (INSERTED, MERGED)
    assert [backend_port(x) for x in lanes] == [5300, 5300]
    assert clash_stats(lab) == {"clash_resolve": 1, "insert_failed": 0, "drop": 0}
    ct = lab.only()
    assert a.ct is ct and aaaa.ct is ct and loser.packet.ctinfo == IP_CT_NEW
    # nf_ct_acct_merge(): the loser's packet and bytes are added to the winner.
    assert ct.counters == [2, a.tot_len + aaaa.tot_len, 0, 0]
    assert len(lab.events) == 1 and lab.events[0].startswith("    [NEW] udp")
    assert lab.ct.count == 1


def test_reverse_entries_merge(make_lab):
    """nf_ct_match_reverse() (6.12+): both ends send the first packet at the same time."""
    lab = make_lab(None, routes={"default": "eth1"})
    out = lab.parse("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=5000, dport=6000) / Raw(b"x"))
    back = lab.parse("eth1", IP(src=PUB, dst=PRIV1) / UDP(sport=6000, dport=5000) / Raw(b"y"))
    lanes = race(lab.router, [out, back])
    assert [x.outcome for x in lanes] == [INSERTED, MERGED]
    assert all(x.verdict.sent for x in lanes)
    assert back.ct is out.ct and back.ctinfo == IP_CT_NEW     # ctinfo stays what it was
    assert lab.stats["clash_resolve"] == 1
    line = ("udp      17 30 src=10.0.0.2 dst=203.0.113.2 sport=5000 dport=6000 [UNREPLIED] "
            "src=203.0.113.2 dst=10.0.0.2 sport=6000 dport=5000 mark=0 use=1")
    assert lab.table() == [line]


# ------------------------------------------------------------------------------------------
# UDP, different NAT: the loser goes in the reply direction only (IPS_NAT_CLASH)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_udp_different_dnat_loser_inserted_reply_direction_only(make_lab, order):
    lab = make_lab(DNAT_RANDOM, seed=3)
    lanes = race(lab.router, [query(lab, b"A?"), query(lab, b"AAAA?")], order)
    winner, loser = lanes[order[0]], lanes[order[1]]
    assert (winner.outcome, loser.outcome) == (INSERTED, NAT_CLASH)
    won, lost = backend_port(winner), backend_port(loser)
    assert won != lost, "test set-up: the seed must give two different backends"
    assert clash_stats(lab) == {"clash_resolve": 1, "insert_failed": 0, "drop": 0}
    # `conntrack -L` shows the winner only; the loser is counted and holds its reply tuple.
    assert len(lab.table()) == 1 and f"sport={won} " in lab.table()[0]
    assert lab.ct.count == 2
    hidden = loser.packet.ct
    assert hidden.status & (IPS_NAT_CLASH | IPS_FIXED_TIMEOUT | IPS_CONFIRMED) == (
        IPS_NAT_CLASH | IPS_FIXED_TIMEOUT | IPS_CONFIRMED)
    assert lab.ct.find(hidden.orig)[0] is winner.packet.ct      # originals find the winner
    assert lab.ct.remaining(hidden) == 1
    # Only the winner's insertion is a NEW event (harder's insert caches none).
    assert len(lab.events) == 1 and f"sport={won} " in lab.events[0]

    # Both answers come back, each un-DNATed by its own entry.
    for port, ct in ((won, winner.packet.ct), (lost, hidden)):
        v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=port, dport=CLIENT_PORT) / Raw(b"r"))
        answer = IP(v.sent[0].data)
        assert (answer.src, answer[UDP].sport) == (RTR_PUB, 53)
        assert lab.last.ct is ct and lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY
    # The clash entry keeps its fixed 1 s and never becomes ASSURED; then it is gone.
    lab.advance(0.6)
    assert lab.ct.remaining(hidden) == 0 and not hidden.status & IPS_ASSURED
    lab.advance(0.5)
    assert lab.ct.find(hidden.reply) is None         # a lookup (or the gc worker) reaps it
    assert lab.ct.count == 1
    assert len(lab.table()) == 1


def test_loser_whose_reply_tuple_is_taken_is_dropped(make_lab):
    """nf_ct_resolve_clash_harder(): the loser's reply tuple held by another flow that
    cannot be merged: drop + insert_failed, even for UDP."""
    probe = make_lab(DNAT_RANDOM, seed=3)
    lost_port = backend_port(race(probe.router, [query(probe), query(probe)])[1])

    lab = make_lab(DNAT_RANDOM, seed=3)
    direct = lab.parse("eth1", IP(src=PUB, dst=PRIV1) / UDP(sport=CLIENT_PORT, dport=lost_port))
    lanes = race(lab.router, [query(lab), query(lab), direct], order=(0, 2, 1))
    assert [x.outcome for x in lanes] == [INSERTED, INSERT_FAILED, INSERTED]
    assert not lanes[1].verdict.sent and lanes[1].packet.ct is None
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 1, "drop": 1}
    assert lab.ct.count == 2 and len(lab.table()) == 2


# ------------------------------------------------------------------------------------------
# TCP: no allow_clash, the loser is dropped
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rules", [nat_rules(), None], ids=["masquerade", "no-nat"])
def test_tcp_clash_is_insert_failed_and_drop(make_lab, rules):
    lab = make_lab(rules)
    syn = IP(src=PRIV1, dst=PUB) / TCP(sport=40001, dport=80, flags="S", seq=1000)
    lanes = race(lab.router, [lab.parse("eth0", syn), lab.parse("eth0", syn)])
    assert [x.outcome for x in lanes] == [INSERTED, INSERT_FAILED]
    assert [bool(x.verdict.sent) for x in lanes] == [True, False]
    assert lanes[1].verdict.dropped.startswith("conntrack confirm")
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 1, "drop": 1}
    assert len(lab.table()) == 1 and lab.ct.count == 1
    assert len(lab.events) == 1 and "[NEW] tcp" in lab.events[0]
    bysource = nat_net(lab.ct).bysource
    assert not bysource or all(c is lanes[0].packet.ct for c in bysource.values())


def test_tcp_to_dnat_service_loser_dropped(make_lab):
    lab = make_lab(DNAT_RANDOM, seed=3)
    lanes = race(lab.router, [query(lab, proto=TCP), query(lab, proto=TCP)], order=(1, 0))
    assert [x.outcome for x in lanes] == [INSERT_FAILED, INSERTED]
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 1, "drop": 1}


# ------------------------------------------------------------------------------------------
# The driver itself
# ------------------------------------------------------------------------------------------

def test_one_lane_is_the_normal_path(make_lab):
    lab = make_lab(DNAT_ONE)
    (lane,) = race(lab.router, [query(lab)])
    assert lane.outcome == INSERTED and lane.verdict.sent
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 0, "drop": 0}
    assert "confirm" not in vars(lab.ct)           # the held confirm is gone afterwards


def test_sequential_packets_do_not_clash(make_lab):
    """The same two queries one after the other: the second finds the first's entry."""
    lab = make_lab(DNAT_RANDOM, seed=3)
    first = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=CLIENT_PORT, dport=53))
    second = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=CLIENT_PORT, dport=53))
    assert IP(first.sent[0].data)[UDP].dport == IP(second.sent[0].data)[UDP].dport
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 0, "drop": 0}


def test_packet_dropped_before_confirm_and_established_packets(make_lab):
    rules = nat_rules(forward=("-p udp --dport 9 -j DROP",))
    lab = make_lab(rules)
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=41000, dport=5353))
    dropped = lab.parse("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=41001, dport=9))
    again = lab.parse("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=41000, dport=5353))
    lanes = race(lab.router, [dropped, again])
    assert [x.outcome for x in lanes] == [NOT_REACHED, NO_CONFIRM]
    assert lanes[0].verdict.dropped == "filter FORWARD" and lanes[1].verdict.sent


@pytest.mark.parametrize("order", [(0,), (0, 0), (1, 2), (0, 1, 2)])
def test_bad_confirm_order_is_one_clear_error(make_lab, order):
    lab = make_lab(DNAT_ONE)
    with pytest.raises(ValueError, match="name each of the 2 packets"):
        race(lab.router, [query(lab), query(lab)], order)
    assert "confirm" not in vars(lab.ct) and lab.ct.count == 0


def test_lane_describe_names_the_outcome(make_lab):
    lab = make_lab(DNAT_RANDOM, seed=3)
    lanes = race(lab.router, [query(lab), query(lab)], trace=True)
    assert lanes[0].describe() == ("CPU 0: confirm #1, no entry in its way: its entry is "
                                   "inserted; packet sent")
    assert "reply direction only" in lanes[1].describe()
    assert lanes[1].verdict.steps[-1] == ("CPU 1", lanes[1].describe())
    assert lanes[1].verdict.steps[0][0] == "received"


# ------------------------------------------------------------------------------------------
# Other protocols, and the many-to-one SNAT race (two hosts, one source port)
# ------------------------------------------------------------------------------------------

def test_icmp_has_no_clash_resolution_in_6_18(make_lab):
    """ICMP's tracker gets allow_clash only after 6.18: two echo requests of one id racing
    through MASQUERADE: the second is dropped."""
    lab = make_lab()
    ping = IP(src=PRIV1, dst=PUB) / ICMP(id=7, seq=1)
    lanes = race(lab.router, [lab.parse("eth0", ping), lab.parse("eth0", ping)])
    assert [x.outcome for x in lanes] == [INSERTED, INSERT_FAILED]
    assert clash_stats(lab) == {"clash_resolve": 0, "insert_failed": 1, "drop": 1}


def test_generic_protocol_identical_entries_merge(make_lab):
    lab = make_lab(None)
    generic = IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"x")
    lanes = race(lab.router, [lab.parse("eth0", generic), lab.parse("eth0", generic)])
    assert [x.outcome for x in lanes] == [INSERTED, MERGED]


@pytest.mark.parametrize("flag, outcomes", [
    ("", [INSERTED, INSERT_FAILED]),
    (" --random-fully", [INSERTED, INSERTED]),
])
def test_two_hosts_same_source_port_race_through_snat(make_lab, flag, outcomes):
    """Two hosts' first datagrams from one source port to one server, at the same time:
    neither sees the other's unconfirmed entry, so NAT keeps the port for both; the
    second to confirm finds its reply tuple taken by a different flow: dropped even for
    UDP.  --random-fully draws a port per entry and so (almost always) avoids it."""
    lab = make_lab(nat_rules(postrouting=(f"-o eth1 -j MASQUERADE{flag}",)), seed=5)
    pkts = [lab.parse("eth0", IP(src=src, dst=PUB) / UDP(sport=33000, dport=53) / Raw(b"q"))
            for src in (PRIV1, "10.0.0.3")]
    lanes = race(lab.router, pkts)
    assert [x.outcome for x in lanes] == outcomes
    assert lab.stats["insert_failed"] == (outcomes[1] == INSERT_FAILED)


# ------------------------------------------------------------------------------------------
# Older kernels (nattrack/conntrack/profile.py): where their clash rules differ from 6.18's
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, outcomes", [
    ("6.18", [INSERTED, MERGED]), ("6.12", [INSERTED, MERGED]),
    ("6.6", [INSERTED, INSERT_FAILED]), ("6.1", [INSERTED, INSERT_FAILED]),
])
def test_reverse_merge_since_6_12(make_lab, kernel, outcomes):
    """nf_ct_match_reverse() came with a4e6a1031e77 (6.12).  Before, the winner here has
    NAT done (the nat hooks gave it null bindings), so only identical tuples merge; the
    loser's reply tuple is the winner's original one, so clash_resolve_harder cannot insert
    it either: the second end's first datagram is dropped."""
    lab = make_lab(None, routes={"default": "eth1"})
    lab.router.ct.profile = PROFILES[kernel]
    out = lab.parse("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=5000, dport=6000) / Raw(b"x"))
    back = lab.parse("eth1", IP(src=PUB, dst=PRIV1) / UDP(sport=6000, dport=5000) / Raw(b"y"))
    lanes = race(lab.router, [out, back])
    assert [x.outcome for x in lanes] == outcomes
    failed = int(outcomes[1] == INSERT_FAILED)
    assert clash_stats(lab) == {"clash_resolve": 1 - failed, "insert_failed": failed,
                                "drop": failed}
    assert lab.ct.count == 1 and bool(lanes[1].verdict.sent) == (not failed)


def test_before_6_12_a_winner_without_nat_done_merges_whatever_its_tuples():
    """__nf_ct_resolve_clash() before a4e6a1031e77: ``(ct->status & IPS_NAT_DONE_MASK) == 0
    || nf_ct_match(ct, loser_ct)``.  (The engine always runs the nat hooks, as a kernel with
    a nat table loaded, so its winners have NAT done: here the bits are left out.)"""
    there = Tuple.make(PRIV1, PUB, "udp", 5000, 6000)
    back = Tuple.make(PUB, PRIV1, "udp", 6000, 5000)
    winner, reverse = Conn(there, back), Conn(back, there)
    other = Conn(Tuple.make("10.0.0.3", PUB, "udp", 5000, 6000), back)
    for status, old, new in ((IPS_NAT_DONE_MASK, False, True), (0, True, True)):
        winner.status = status
        assert _can_merge(winner, reverse, PROFILES["6.1"]) is old
        assert _can_merge(winner, reverse, PROFILES["6.18"]) is new
    winner.status = 0                     # 6.1: no NAT done merges even a different flow
    assert _can_merge(winner, other, PROFILES["6.1"]) is True
    assert _can_merge(winner, other, PROFILES["6.18"]) is False


@pytest.mark.parametrize("kernel, outcomes", [
    ("6.18", [INSERTED, MERGED]), ("6.6", [INSERTED, MERGED]),
    ("6.1", [INSERTED, INSERT_FAILED]),
])
def test_gre_clash_resolution_since_6_5(make_lab, kernel, outcomes):
    """GRE's tracker got allow_clash with d671fd82eaa9 (6.5): two GRE packets of one new
    flow through MASQUERADE racing on two CPUs merge; before, the second is dropped."""
    lab = make_lab()
    lab.router.ct.profile = PROFILES[kernel]
    gre = IP(src=PRIV1, dst=PUB, proto=47) / Raw(b"\x00\x00\x08\x00" + bytes(20))
    lanes = race(lab.router, [lab.parse("eth0", gre), lab.parse("eth0", gre)])
    assert [x.outcome for x in lanes] == outcomes
    failed = int(outcomes[1] == INSERT_FAILED)
    assert clash_stats(lab) == {"clash_resolve": 1 - failed, "insert_failed": failed,
                                "drop": failed}
