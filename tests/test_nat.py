"""NAT against docs kernel-conntrack.md §8 (bindings, port search, rewriting, MASQUERADE)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from nattrack.conntrack.conn import IPS_DST_NAT, IPS_SRC_NAT, IP_CT_ESTABLISHED_REPLY
from nattrack.conntrack.tuple import Tuple, ip2int
from nattrack.nat.bysource import nat_forced

from nattrack_lab import (PRIV1, PRIV2, PUB, RTR_PUB, Lab, TcpFlow, UdpFlow, inet_sum,
                          nat_rules, recomputed, tcp_state)


def port_class(port: int) -> range:
    """§8.3: the candidate range of an SRC manip without a port range."""
    if port < 512:
        return range(1, 512)
    if port < 1024:
        return range(600, 1024)
    return range(1024, 65536)


def udp_from(lab, src, sport, dport=5353, dst=PUB, payload=b"q"):
    return lab.send("eth0", IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def sent_ip(v) -> IP:
    assert v.sent, f"dropped: {v.dropped}"
    return IP(v.sent[0].data)


# --------------------------------------------------------------------------------------------
# §8.3 keep the port, change it on a clash, stay in the class
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_masquerade_keeps_source_port_when_free(lab, proto):
    if proto == "udp":
        out = sent_ip(udp_from(lab, PRIV1, 45000))
        assert (out.src, out[UDP].sport) == (RTR_PUB, 45000)
    else:
        f = TcpFlow(lab, sport=45000)
        f.client("S")
        assert (f.last_out.src, f.last_out[TCP].sport) == (RTR_PUB, 45000)
    assert lab.only().status & IPS_SRC_NAT


def test_two_hosts_same_source_port_exp(lab):
    """§8.1 [EXP]: 10.0.0.2:45000 keeps its port, 10.0.0.3:45000 gets another one, and each
    host gets its own answers back."""
    a, b = UdpFlow(lab, PRIV1, 45000), UdpFlow(lab, PRIV2, 45000)
    a.client()
    b.client()
    assert a.nat_port == 45000
    assert b.nat_port != 45000 and b.nat_port in port_class(45000)
    assert sent_ip(a.server()).dst == PRIV1
    out = sent_ip(b.server())
    assert (out.dst, out[UDP].dport) == (PRIV2, 45000)
    lab.advance(3.5)
    assert (f"udp      17 26 src=10.0.0.3 dst=203.0.113.2 sport=45000 dport=5353 "
            f"src=203.0.113.2 dst=203.0.113.1 sport=5353 dport={b.nat_port} mark=0 use=1") in lab.table()


@pytest.mark.parametrize("sport", [500, 700, 40010])
def test_clash_port_stays_in_class_exp(lab, sport):
    """§8.3 [EXP]: 40010 -> 64310, 500 -> 136 (1-511), 700 -> 853 (600-1023)."""
    udp_from(lab, PRIV1, sport, dport=7777)
    out = sent_ip(udp_from(lab, PRIV2, sport, dport=7777))
    assert out[UDP].sport != sport and out[UDP].sport in port_class(sport)


@settings(max_examples=60, deadline=None)
@given(sport=st.integers(1, 65535), proto=st.sampled_from(["udp", "tcp"]), seed=st.integers(0, 2**32))
def test_clash_port_in_same_class_property(sport, proto, seed):
    lab = Lab(seed=seed)
    if proto == "udp":
        udp_from(lab, PRIV1, sport)
        new = sent_ip(udp_from(lab, PRIV2, sport))[UDP].sport
    else:
        TcpFlow(lab, src=PRIV1, sport=sport).client("S")
        f = TcpFlow(lab, src=PRIV2, sport=sport)
        f.client("S")
        new = f.last_out[TCP].sport
    assert new != sport and new in port_class(sport)
    assert lab.stats["found"] >= 1


@settings(max_examples=25, deadline=None)
@given(flows=st.lists(st.tuples(st.sampled_from([PRIV1, PRIV2, "10.0.0.4", "10.0.0.5"]),
                                st.sampled_from([53, 600, 1000, 5000, 40000, 40001])),
                      min_size=2, max_size=10, unique=True),
       seed=st.integers(0, 2**32))
def test_masquerade_reply_tuples_unique_and_replies_reach_their_host(flows, seed):
    """Property: whatever the collisions, every entry has its own reply tuple and each
    answer is delivered to the host (and port) that asked."""
    lab = Lab(seed=seed)
    mapped = {}
    for src, sport in flows:
        out = sent_ip(udp_from(lab, src, sport))
        mapped[(src, sport)] = out[UDP].sport
        assert out[UDP].sport in port_class(sport) or out[UDP].sport == sport
    assert len(set(mapped.values())) == len(flows)
    replies = [c.reply for c in lab.conns()]
    assert len(set(replies)) == len(replies) == len(flows)
    for (src, sport), port in mapped.items():
        back = sent_ip(lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=5353, dport=port) / Raw(b"r")))
        assert (back.dst, back[UDP].dport) == (src, sport)


def test_found_counter_counts_each_clash_exp(lab):
    """§10.1 [EXP]: `found` was 4 after 3 UDP + 1 ICMP clashes."""
    for sport in (40010, 500, 700):
        udp_from(lab, PRIV1, sport, dport=7777)
        udp_from(lab, PRIV2, sport, dport=7777)
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / ICMP(type=8, id=4242))
    lab.send("eth0", IP(src=PRIV2, dst=PUB) / ICMP(type=8, id=4242))
    assert lab.stats["found"] == 4
    assert lab.stats["insert"] == 0


def test_icmp_id_clash_gets_new_id_and_reply_restores_it(lab):
    """§8.3 [EXP]: echo id 4242 from the second host -> 25430, and the echo reply delivered
    to that host carried id 4242 again."""
    lab.send("eth0", IP(src=PRIV1, dst=PUB) / ICMP(type=8, id=4242, seq=1) / Raw(b"a" * 32))
    out = sent_ip(lab.send("eth0", IP(src=PRIV2, dst=PUB) / ICMP(type=8, id=4242, seq=1) / Raw(b"b" * 32)))
    new_id = out[ICMP].id
    assert new_id != 4242 and 0 <= new_id <= 65535
    assert inet_sum(bytes(out)[20:]) == 0xFFFF
    assert (f"icmp     1 30 src=10.0.0.3 dst=203.0.113.2 type=8 code=0 id=4242 [UNREPLIED] "
            f"src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id={new_id} mark=0 use=1") in lab.table()
    back = sent_ip(lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / ICMP(type=0, id=new_id, seq=1) / Raw(b"b" * 32)))
    assert (back.dst, back[ICMP].id) == (PRIV2, 4242)
    assert inet_sum(bytes(back)[20:]) == 0xFFFF
    back1 = sent_ip(lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / ICMP(type=0, id=4242, seq=1) / Raw(b"a" * 32)))
    assert (back1.dst, back1[ICMP].id) == (PRIV1, 4242)


def test_endpoint_independent_mapping_reuses_translated_port(lab):
    """§8.3 step 2 [EXP]: 10.0.0.3:40010 was mapped to port 64310 for destination port 7777,
    and a second flow 10.0.0.3:40010 -> port 7778 reused 64310."""
    udp_from(lab, PRIV1, 40010, dport=7777)
    first = sent_ip(udp_from(lab, PRIV2, 40010, dport=7777))[UDP].sport
    assert first != 40010
    second = sent_ip(udp_from(lab, PRIV2, 40010, dport=7778))[UDP].sport
    assert second == first
    # ...and also to another server altogether
    third = sent_ip(udp_from(lab, PRIV2, 40010, dport=53, dst="203.0.113.50"))[UDP].sport
    assert third == first



def test_null_binding_changes_port_of_unnatted_flow_on_collision(make_lab):
    """§8.1 step 3: without a matching rule a null binding is installed, which still runs the
    uniqueness check: the router's own 203.0.113.1:5000 -> 203.0.113.2:53 would take the
    reply tuple of the masqueraded 10.0.0.2:5000 flow, so its source port changes."""
    lab = make_lab(rules=nat_rules(postrouting=["-s 10.0.0.0/24 -o eth1 -j MASQUERADE"]))
    udp_from(lab, PRIV1, 5000, dport=53)
    v = lab.send_local(IP(src=RTR_PUB, dst=PUB) / UDP(sport=5000, dport=53) / Raw(b"own"))
    out = sent_ip(v)
    assert out.src == RTR_PUB and out[UDP].sport != 5000 and out[UDP].sport in port_class(5000)
    assert len(lab.conns()) == 2


def test_in_range_original_colliding_with_natted_entry_gets_new_port(lab):
    """§8.3 step 1: an original tuple that fits the range is kept only if free; the
    tolerated "exact reverse" case needs both entries un-NATed. Here the router's own
    packet matches MASQUERADE (its source is already the public address) and its reply
    tuple is that of a masqueraded flow."""
    udp_from(lab, PRIV1, 5000, dport=53)
    v = lab.send_local(IP(src=RTR_PUB, dst=PUB) / UDP(sport=5000, dport=53) / Raw(b"own"))
    out = sent_ip(v)
    assert out[UDP].sport != 5000 and out[UDP].sport in port_class(5000)


def test_unnatted_exact_reverse_flow_is_found_not_created(lab):
    """§1.1: a packet matching an existing entry's reply tuple belongs to that entry."""
    lab.send_local(IP(src=RTR_PUB, dst=PUB) / UDP(sport=6000, dport=53) / Raw(b"own"))
    lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=53, dport=6000) / Raw(b"answer"))
    assert len(lab.conns()) == 1 and lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY


# --------------------------------------------------------------------------------------------
# Port ranges, exhaustion, --random
# --------------------------------------------------------------------------------------------

SNAT_2PORTS = nat_rules(postrouting=["-o eth1 -p udp -j SNAT --to-source 203.0.113.1:20000-20001",
                                     "-o eth1 -p tcp -j SNAT --to-source 203.0.113.1:20000-20001"])


def test_snat_port_range_maps_into_range(make_lab):
    lab = make_lab(rules=SNAT_2PORTS)
    out = sent_ip(udp_from(lab, PRIV1, 40000))
    assert out.src == RTR_PUB and out[UDP].sport in (20000, 20001)
    back = sent_ip(lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / UDP(sport=5353, dport=out[UDP].sport)))
    assert (back.dst, back[UDP].dport) == (PRIV1, 40000)


def test_snat_port_in_range_is_kept(make_lab):
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -p udp -j SNAT --to-source 203.0.113.1:20000-30000"]))
    assert sent_ip(udp_from(lab, PRIV1, 25000))[UDP].sport == 25000


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_exhausted_two_port_range_drops_third_flow(make_lab, proto):
    """§8.3: if everything fails the last candidate is kept, the clash is found at confirm
    time and the packet dropped (`insert_failed`, `drop`)."""
    lab = make_lab(rules=SNAT_2PORTS)
    ports, verdicts = [], []
    for sport in (40000, 40001, 40002):
        if proto == "udp":
            v = udp_from(lab, PRIV1, sport)
        else:
            v = TcpFlow(lab, sport=sport).client("S")
        verdicts.append(v)
        if v.sent:
            ports.append(IP(v.sent[0].data).sport)
    assert sorted(ports) == [20000, 20001]
    assert verdicts[2].dropped and not verdicts[2].sent
    assert lab.stats["insert_failed"] == 1 and lab.stats["drop"] == 1
    assert len(lab.conns()) == 2
    assert len([e for e in lab.events if "[NEW]" in e]) == 2


def test_single_port_range_is_accepted_even_if_used(make_lab):
    """§8.3 step 4: a range of exactly one port is taken even if used: a second flow to the
    same server then clashes at confirmation; to another server it is fine."""
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -p udp -j SNAT --to-source 203.0.113.1:20000"]))
    assert sent_ip(udp_from(lab, PRIV1, 40000))[UDP].sport == 20000
    assert sent_ip(udp_from(lab, PRIV1, 40001, dst="203.0.113.50"))[UDP].sport == 20000
    v = udp_from(lab, PRIV1, 40002)
    assert v.dropped and lab.stats["insert_failed"] == 1


def test_masquerade_to_ports(make_lab):
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -p udp -j MASQUERADE --to-ports 30000-30010"]))
    ports = {sent_ip(udp_from(lab, PRIV1, 40000 + i))[UDP].sport for i in range(5)}
    assert len(ports) == 5 and ports <= set(range(30000, 30011))


@pytest.mark.parametrize("flag", ["--random", "--random-fully"])
def test_random_picks_random_port_even_when_original_free(make_lab, flag):
    """§8.3: with --random / --random-fully a random port from the range is always chosen."""
    lab = make_lab(rules=nat_rules(postrouting=[f"-o eth1 -j MASQUERADE {flag}"]))
    kept = 0
    for i in range(20):
        p = sent_ip(udp_from(lab, PRIV1, 40000 + i))[UDP].sport
        assert p in port_class(40000)
        kept += p == 40000 + i
    assert kept <= 1
    for i in range(5):
        p = sent_ip(udp_from(lab, PRIV1, 700 + i))[UDP].sport
        assert p in port_class(700)


def test_forced_choice_is_taken_instead_of_a_search(make_lab):
    """Kernel mode: the shadow tracker records the port the kernel chose (nat_forced)
    and nf_nat_setup_info() binds to it, even under --random-fully."""
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -j MASQUERADE --random-fully"]))
    orig = Tuple.make(PRIV1, PUB, "udp", 40000, 5353)
    nat_forced(lab.router.ct)[orig] = Tuple.make("203.0.113.1", PUB, "udp", 61234, 5353)
    assert sent_ip(udp_from(lab, PRIV1, 40000))[UDP].sport == 61234
    assert "dport=61234" in lab.table()[0]


# --------------------------------------------------------------------------------------------
# DNAT
# --------------------------------------------------------------------------------------------

PORTFWD = nat_rules(prerouting=["-i eth1 -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
                                "-i eth1 -p udp --dport 6000:6009 -j DNAT --to-destination 10.0.0.3",
                                "-i eth1 -p tcp --dport 9090 -j DNAT --to-destination 10.0.0.2:8000-8010",
                                "-i eth1 -p tcp --dport 9191 -j DNAT --to-destination 10.0.0.2:8000-8999 --random"],
                    postrouting=["-s 10.0.0.0/24 -o eth1 -j MASQUERADE"])
CLIENT = "198.51.100.7"


def test_dnat_port_forwarding_rewrites_destination_and_replies(make_lab):
    lab = make_lab(rules=PORTFWD)
    v = lab.send("eth1", IP(src=CLIENT, dst=RTR_PUB) / TCP(sport=33000, dport=8080, flags="S", seq=10))
    out = sent_ip(v)
    assert v.sent[0].oif == "eth0"
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (CLIENT, 33000, PRIV1, 80)
    ct = lab.only()
    assert ct.status & IPS_DST_NAT and not ct.status & IPS_SRC_NAT
    v = lab.send("eth0", IP(src=PRIV1, dst=CLIENT) / TCP(sport=80, dport=33000, flags="SA", seq=500, ack=11))
    back = sent_ip(v)
    assert v.sent[0].oif == "eth1"
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (RTR_PUB, 8080, CLIENT, 33000)
    assert lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY
    lab.send("eth1", IP(src=CLIENT, dst=RTR_PUB) / TCP(sport=33000, dport=8080, flags="A", seq=11, ack=501))
    assert lab.table() == [
        "tcp      6 432000 ESTABLISHED src=198.51.100.7 dst=203.0.113.1 sport=33000 dport=8080 "
        "src=10.0.0.2 dst=198.51.100.7 sport=80 dport=33000 [ASSURED] mark=0 use=1"]
    for s in (v.sent[0].data,):
        assert recomputed(s)[TCP].chksum == IP(s)[TCP].chksum


def test_dnat_without_port_keeps_port(make_lab):
    lab = make_lab(rules=PORTFWD)
    out = sent_ip(lab.send("eth1", IP(src=CLIENT, dst=RTR_PUB) / UDP(sport=33000, dport=6005) / Raw(b"x")))
    assert (out.dst, out[UDP].dport) == (PRIV2, 6005)


def test_dnat_port_range_starts_at_first_port(make_lab):
    """§8.3: start offset 0 for DNAT without random flags: the first port of the range."""
    lab = make_lab(rules=PORTFWD)
    for i in range(3):
        out = sent_ip(lab.send("eth1", IP(src=CLIENT, dst=RTR_PUB) / TCP(sport=33000 + i, dport=9090, flags="S")))
        assert (out.dst, out[TCP].dport) == (PRIV1, 8000)


def test_dnat_random_picks_random_ports(make_lab):
    lab = make_lab(rules=PORTFWD)
    ports = []
    for i in range(10):
        out = sent_ip(lab.send("eth1", IP(src=CLIENT, dst=RTR_PUB) / TCP(sport=33000 + i, dport=9191, flags="S")))
        assert 8000 <= out[TCP].dport <= 8999
        ports.append(out[TCP].dport)
    assert len(set(ports)) > 1 and ports.count(8000) < 10


# --------------------------------------------------------------------------------------------
# SNAT address ranges
# --------------------------------------------------------------------------------------------

POOL = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]


def pool_rules(extra=""):
    return nat_rules(postrouting=[f"-o eth1 -j SNAT --to-source 203.0.113.10-203.0.113.12 {extra}".strip()])


def test_snat_address_range_is_deterministic_per_client_server_pair(make_lab):
    """§8.3 step 3: hash of the source seeded with the destination: a given client/server
    pair always gets the same public address (whatever the port or the random seed)."""
    chosen = {}
    for seed in (1, 2):
        lab = make_lab(rules=pool_rules(), seed=seed)
        for h in range(2, 12):
            for di, d in enumerate(("203.0.113.2", "198.51.100.9", "192.0.2.33")):
                # distinct source ports: no by-source reuse (§8.3 step 2) across servers
                for sport in (40000 + 10 * di, 40001 + 10 * di):
                    out = sent_ip(udp_from(lab, f"10.0.0.{h}", sport, dst=d))
                    assert out.src in POOL
                    assert chosen.setdefault((h, d), out.src) == out.src
    assert len(set(chosen.values())) > 1
    # without --persistent the server takes part in the choice
    per_client = {}
    for (h, d), a in chosen.items():
        per_client.setdefault(h, set()).add(a)
    assert any(len(s) > 1 for s in per_client.values())


def test_snat_address_range_persistent_depends_on_client_only(make_lab):
    lab = make_lab(rules=pool_rules("--persistent"))
    addrs = {}
    for h in range(2, 12):
        for i, d in enumerate(("203.0.113.2", "198.51.100.9", "192.0.2.33", "203.0.113.77")):
            out = sent_ip(udp_from(lab, f"10.0.0.{h}", 40000 + i, dst=d))
            addrs.setdefault(h, set()).add(out.src)
    assert all(len(s) == 1 for s in addrs.values())
    assert len(set().union(*addrs.values())) > 1


def test_snat_pool_replies_come_back(make_lab):
    lab = make_lab(rules=pool_rules())
    out = sent_ip(udp_from(lab, PRIV1, 40000))
    back = sent_ip(lab.send("eth1", IP(src=PUB, dst=out.src) / UDP(sport=5353, dport=out[UDP].sport) / Raw(b"r")))
    assert (back.dst, back[UDP].dport) == (PRIV1, 40000)


# --------------------------------------------------------------------------------------------
# §8.2 / §8.5 MASQUERADE specifics
# --------------------------------------------------------------------------------------------

def test_masquerade_without_address_drops(make_lab):
    """§8.2: if the interface has no address the packet is dropped ("<dev> ate my IP address")."""
    lab = make_lab(ifaces={"eth0": "10.0.0.1/24", "eth1": []})
    v = udp_from(lab, PRIV1, 40000)
    assert v.dropped and not v.sent
    assert lab.conns() == [] and lab.events == []
    assert any("eth1 ate my IP address" in line for line in lab.ct.log)


def test_masquerade_uses_address_on_next_hop_subnet(make_lab):
    lab = make_lab(ifaces={"eth0": "10.0.0.1/24", "eth1": ["198.51.100.1/24", "203.0.113.1/24"]})
    assert sent_ip(udp_from(lab, PRIV1, 40000)).src == RTR_PUB


THREE_IFACES = {"eth0": "10.0.0.1/24", "eth1": "203.0.113.1/24", "eth2": "198.51.100.1/24"}
MASQ_BOTH = nat_rules(postrouting=["-o eth1 -j MASQUERADE", "-o eth2 -j MASQUERADE"])


def _move_default_route(lab, iface):
    for r in lab.router.routes:
        if r.plen == 0:
            r.iface = iface


@pytest.mark.parametrize("replied", [True, False])
def test_masquerade_oif_change_kills_entry_and_drops(make_lab, replied):
    """§8.1 step 4 / §8.5: an original-direction packet of a masqueraded flow leaving by
    another interface than the recorded one kills the entry and is dropped."""
    lab = make_lab(rules=MASQ_BOTH, ifaces=THREE_IFACES)
    f = UdpFlow(lab, sport=44000, dport=7777, dst="192.0.2.50")   # reached by the default route
    f.client()
    if replied:
        f.server()
    lab.advance(1)
    lab.raw_events.clear()
    _move_default_route(lab, "eth2")
    v = f.client()
    assert v.dropped and not v.sent
    assert lab.conns() == []
    # killed early, so DESTROY carries the time left: the packet refreshed it to 30 s in
    # PRE_ROUTING before POST_ROUTING saw the new output interface
    assert len(lab.events) == 1 and lab.events[0].startswith("[DESTROY] udp      17 30 ")
    out = sent_ip(f.client())                     # the next packet starts over on eth2
    assert out.src == "198.51.100.1"


def test_plain_snat_entry_not_killed_by_route_change(make_lab):
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -j SNAT --to-source 203.0.113.1",
                                                "-o eth2 -j SNAT --to-source 198.51.100.1"]),
                   ifaces=THREE_IFACES)
    f = UdpFlow(lab, sport=44000, dport=7777, dst="192.0.2.50")
    f.client()
    f.server()
    _move_default_route(lab, "eth2")
    out = sent_ip(f.client())
    assert out.src == RTR_PUB and len(lab.conns()) == 1


def test_removing_an_unrelated_address_leaves_masqueraded_flows_alone(make_lab):
    """§8.5 [EXP]: deleting the secondary address 203.0.113.9 left the flow alone."""
    lab = make_lab(ifaces={"eth0": "10.0.0.1/24", "eth1": ["203.0.113.1/24", "203.0.113.9/24"]})
    f = UdpFlow(lab, sport=44000, dport=7777)
    f.client()
    assert lab.router.remove_address("eth1", "203.0.113.9/24") == 0
    assert len(lab.conns()) == 1


def test_removing_the_masquerade_address_destroys_its_flows(make_lab):
    """§8.5 [EXP]: deleting 203.0.113.1 produced the DESTROY of the masqueraded flow,
    with its remaining time (killed early)."""
    lab = make_lab()
    f = UdpFlow(lab, sport=44000, dport=7777)
    f.client()
    lab.advance(1)
    lab.raw_events.clear()
    assert lab.router.remove_address("eth1", "203.0.113.1/24") == 1
    assert lab.conns() == []
    assert lab.events == ["[DESTROY] udp      17 29 src=10.0.0.2 dst=203.0.113.2 sport=44000 dport=7777 "
                          "[UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=7777 dport=44000"]


def test_interface_down_destroys_masqueraded_flows_but_not_snat(make_lab):
    """§8.5: NETDEV_DOWN deletes every entry masqueraded out of that interface;
    plain SNAT entries are not flushed."""
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -p udp -j MASQUERADE",
                                                "-o eth1 -p tcp -j SNAT --to-source 203.0.113.1"]))
    UdpFlow(lab, sport=44000, dport=7777).client()
    TcpFlow(lab).client("S")
    assert lab.router.iface_down("eth1") == 1
    assert [c.orig.proto for c in lab.conns()] == [6]


def test_rules_not_consulted_for_established_flow(make_lab):
    """§8.1 step 4: NAT decides once per connection."""
    lab = make_lab(rules=nat_rules(postrouting=["-o eth1 -p udp --dport 7777 -j SNAT --to-source 203.0.113.1:20000"]))
    f = UdpFlow(lab, sport=44000, dport=7777)
    f.client()
    assert f.nat_port == 20000
    lab.router.ruleset = Lab(rules=nat_rules(postrouting=[])).router.ruleset
    assert sent_ip(f.client())[UDP].sport == 20000


# --------------------------------------------------------------------------------------------
# §8.3 attempt limit, TIME_WAIT eviction, generic protocols, 0.0.0.0
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,checks", [(100, 100), (300, 248)])
def test_port_search_gives_up_after_bounded_attempts(make_lab, size, checks):
    """§8.3: rounds of min(range, 128) tries, halving, give up after a round that covered
    the range or had < 16 tries: worst case 128+64+32+16+8 = 248 checks (each a `found`).
    The last candidate is kept and the clash found at confirmation (drop, insert_failed)."""
    hi = 20000 + size - 1
    lab = make_lab(rules=nat_rules(postrouting=[f"-o eth1 -p udp -j SNAT --to-source 203.0.113.1:20000-{hi}"]))
    for port in range(20000, hi + 1):       # in range and free: every port is kept (step 4)
        assert sent_ip(udp_from(lab, PRIV1, port))[UDP].sport == port
    assert lab.stats["found"] == 0
    v = udp_from(lab, PRIV1, 40000)
    assert v.dropped
    assert lab.stats["found"] == checks
    assert (lab.stats["insert_failed"], lab.stats["drop"]) == (1, 1)


SNAT_TCP_2PORTS = nat_rules(postrouting=["-o eth1 -p tcp -j SNAT --to-source 203.0.113.1:20000-20001"])


@pytest.mark.parametrize("ahead", [True, False])
def test_new_syn_evicts_time_wait_entry_when_sequence_advanced(make_lab, ahead):
    """§8.3 (v6.5): in the last 32 tries for a new TCP SYN a colliding SNATed entry in
    TIME_WAIT or later may be killed and its port reused, if the new SYN's sequence number
    is ahead of the old connection's."""
    lab = make_lab(rules=SNAT_TCP_2PORTS)
    for sport in (40000, 40001):
        f = TcpFlow(lab, sport=sport, dport=80, iss=1_000_000)
        f.handshake()
        f.active_close()
    assert sorted(c.reply.dport for c in lab.conns()) == [20000, 20001]
    lab.raw_events.clear()
    f = TcpFlow(lab, sport=40002, dport=80, iss=2_000_000 if ahead else 500_000)
    v = f.client("S")
    if ahead:
        assert v.sent and f.last_out[TCP].sport in (20000, 20001)
        kinds = [e.split()[0] for e in lab.events]
        assert kinds == ["[DESTROY]", "[NEW]"]
        assert re.match(r"\[DESTROY\] tcp      6 \d+ TIME_WAIT", lab.events[0])
    else:
        assert v.dropped and lab.stats["insert_failed"] == 1


def test_masqueraded_generic_protocol_clash_is_dropped(lab):
    """§8.3: protocols without ports cannot be remapped (generic): a second host speaking the
    same protocol to the same server clashes at confirmation and is dropped."""
    assert lab.send("eth0", IP(src=PRIV1, dst=PUB, proto=253) / Raw(b"a")).sent
    v = lab.send("eth0", IP(src=PRIV2, dst=PUB, proto=253) / Raw(b"b"))
    assert v.dropped and lab.stats["insert_failed"] == 1 and lab.stats["drop"] == 1


def test_source_0_0_0_0_is_not_masqueraded(lab):
    """§8.2: packets whose original source is 0.0.0.0 are not masqueraded."""
    v = lab.send_local(IP(src="0.0.0.0", dst=PUB) / UDP(sport=68, dport=67) / Raw(b"dhcp"))
    assert sent_ip(v).src == "0.0.0.0"


def test_entry_dropped_at_confirmation_leaves_no_mapping_behind(make_lab):
    """§1.5 + §8.3 step 2: only existing connections lend their mapping. 10.0.0.3:40005 is
    dropped at confirmation (single-port SNAT already used); its next flow, masqueraded,
    must keep its own port 40005 (step 4), not re-use the dead entry's 20000."""
    lab = make_lab(rules=nat_rules(postrouting=[
        "-o eth1 -p udp --dport 53 -j SNAT --to-source 203.0.113.1:20000",
        "-o eth1 -j MASQUERADE"]))
    assert sent_ip(udp_from(lab, PRIV1, 40000, dport=53))[UDP].sport == 20000
    assert udp_from(lab, PRIV2, 40005, dport=53).dropped
    out = sent_ip(udp_from(lab, PRIV2, 40005, dport=7777))
    assert out[UDP].sport == 40005


def test_dnat_of_locally_generated_packet_is_rerouted(make_lab):
    """§8.1: DNAT in LOCAL_OUT, followed by routing on the new destination; the answer is
    un-DNATed and delivered to the router itself."""
    lab = make_lab(rules=nat_rules(output=["-d 203.0.113.1/32 -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"],
                                   postrouting=["-s 10.0.0.0/24 -o eth1 -j MASQUERADE"]))
    v = lab.send_local(IP(src=RTR_PUB, dst=RTR_PUB) / TCP(sport=50000, dport=8080, flags="S"))
    out = sent_ip(v)
    assert v.sent[0].oif == "eth0" and (out.dst, out[TCP].dport) == (PRIV1, 80)
    ct = lab.only()
    assert ct.status & IPS_DST_NAT
    v = lab.send("eth0", IP(src=PRIV1, dst=RTR_PUB) / TCP(sport=80, dport=50000, flags="SA", ack=1))
    assert lab.last.ct is ct and lab.last.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert (lab.last.src, lab.last.sport) == (ip2int(RTR_PUB), 8080)
    # Delivered locally, where no socket owns port 50000 (the SYN had none behind it), so
    # the router's stack answers the SYN-ACK with a RST (tcp_v4_send_reset(): seq = its
    # ack); the RST is the connection's own and leaves DNATed as the SYN did.
    out = sent_ip(v)
    assert len(v.sent) == 1 and v.sent[0].oif == "eth0"
    assert (out.dst, out[TCP].dport, out[TCP].flags, out[TCP].seq) == (PRIV1, 80, "R", 1)
    assert tcp_state(ct) == "CLOSE" and lab.stats["invalid"] == 0
