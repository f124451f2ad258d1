"""Kernel behaviour profiles (nattrack/conntrack/profile.py): each difference between the
kernels a class runs, seen from outside the engine (packets in, packets and table out).

The expectations come from the commits that changed the kernel (cited in the profile
module and docs/kernel-profiles.md) and were checked against real 6.1 and 6.18 kernels
by tests/kernel (scenarios snat_evicts_time_wait, dnat_range_first_port).  The clash
behaviours (gre_clash, clash_merge_reverse) are tested in tests/test_clash.py, with races.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from nattrack_lab import PRIV1, PRIV2, PUB, RTR_PUB, Lab, TcpFlow, nat_rules, tcp_state
from scapy.layers.inet import IP, TCP

import nattrack
from nattrack.conntrack.profile import (
    BEHAVIOURS,
    NEWEST,
    PROFILES,
    get_profile,
    profile_for_release,
    running_profile,
)

SNAT_TWO_PORTS = nat_rules(postrouting=("-o eth1 -p tcp -j SNAT --to-source 203.0.113.1:2000-2001",))
DNAT_RANGE = nat_rules(prerouting=(("-i eth1 -p tcp --dport 32000:32001 -j DNAT "
                                    "--to-destination 10.0.0.2:21000-21010"),))


def lab_for(kernel: str, rules: str) -> Lab:
    lab = Lab(rules)
    lab.router.ct.profile = PROFILES[kernel]
    return lab


# --- the model ---------------------------------------------------------------------------

@pytest.mark.parametrize("release, name", [
    ("6.1.0-57-amd64", "6.1"), ("6.1.158", "6.1"), ("6.5.3", "6.1"), ("6.6.0", "6.6"),
    ("6.8.0-50-generic", "6.6"), ("6.12.118+deb13-amd64", "6.12"), ("6.17.1", "6.12"),
    ("6.18.44-fc-v1272", "6.18"), ("7.2.0", "6.18"), ("5.10.0-30-amd64", "6.1"),
])
def test_profile_for_release_picks_the_newest_not_newer(release, name):
    assert profile_for_release(release).name == name


def test_profiles_differ_only_by_cited_behaviours():
    assert NEWEST.name == "6.18" and not NEWEST.differences()
    assert [b.name for b in PROFILES["6.1"].differences()] == [
        "snat_evicts_closing", "dnat_range_from_start", "gre_clash", "clash_merge_reverse"]
    assert [b.name for b in PROFILES["6.6"].differences()] == ["dnat_range_from_start",
                                                               "clash_merge_reverse"]
    assert not PROFILES["6.12"].differences()
    for b in BEHAVIOURS:
        assert re.fullmatch(r"[0-9a-f]{40}", b.commit) and b.subject.startswith("netfilter: ")
    assert "0f1ae2821fa4" in PROFILES["6.6"].describe()


def test_each_behaviour_is_one_cited_if_in_the_engine():
    """Every behaviour is read by the engine (``profile.NAME``) with its commit's first 12
    digits in a comment within three lines: the place the kernel differs, and why."""
    sources = {p: p.read_text().splitlines() for p in Path(nattrack.__file__).parent.rglob("*.py")
               if p.name != "profile.py"}
    for b in BEHAVIOURS:
        uses = [(p, i) for p, lines in sources.items() for i, line in enumerate(lines)
                if f"profile.{b.name}" in line]
        assert uses, f"{b.name}: no engine code reads it"
        for p, i in uses:
            near = "\n".join(sources[p][max(0, i - 3):i + 4])
            assert b.commit[:12] in near, f"{p.name}:{i + 1}: {b.name} without {b.commit[:12]}"


def test_get_profile_names_and_one_line_error():
    assert get_profile(None) is NEWEST
    assert get_profile("6.1") is PROFILES["6.1"]
    assert get_profile("running") is running_profile()
    with pytest.raises(ValueError, match=r"--kernel '5\.4': expected one of 6\.1, 6\.6, 6\.12, 6\.18"):
        get_profile("5.4")


def test_engine_defaults_to_the_newest_profile():
    assert Lab().router.ct.profile is NEWEST


# --- 4589725502871e (v6.5): SNAT evicts a closing entry that holds the last port ------------

def _two_ports_one_closing(lab: Lab) -> tuple[TcpFlow, TcpFlow, TcpFlow]:
    """B (10.0.0.2:40001) established, A (10.0.0.2:40000) closed into TIME_WAIT: both
    ports of 2000-2001 toward PUB:80 are held; then C (10.0.0.3:40002) sends its SYN,
    with a sequence number past A's."""
    b = TcpFlow(lab, sport=40001, dport=80, iss=2000)
    b.handshake()
    a = TcpFlow(lab, sport=40000, dport=80, iss=1000)
    a.handshake()
    a.active_close()
    assert {a.nat_port, b.nat_port} == {2000, 2001}
    assert sorted(tcp_state(ct) for ct in lab.conns()) == ["ESTABLISHED", "TIME_WAIT"]
    c = TcpFlow(lab, src=PRIV2, sport=40002, dport=80, iss=900000)
    return a, b, c


def test_snat_evicts_time_wait_entry_on_618():
    lab = lab_for("6.18", SNAT_TWO_PORTS)
    a, _, c = _two_ports_one_closing(lab)
    lab.take_events()
    v = c.client("S")
    assert v.sent and IP(v.sent[0].data)[TCP].sport == a.nat_port
    ev = [e.strip() for e in lab.take_events()]
    assert any(e.startswith("[DESTROY] tcp") and "TIME_WAIT" in e and "sport=40000" in e for e in ev), ev
    assert any(e.startswith("[NEW] tcp") and "sport=40002" in e for e in ev), ev
    assert lab.stats["insert_failed"] == 0 and len(lab.conns()) == 2


def test_snat_clashes_with_time_wait_entry_on_61():
    lab = lab_for("6.1", SNAT_TWO_PORTS)
    _two_ports_one_closing(lab)
    lab.take_events()
    v = TcpFlow(lab, src=PRIV2, sport=40002, dport=80, iss=900000).client("S")
    assert not v.sent and v.dropped
    assert lab.take_events() == []
    assert lab.stats["insert_failed"] == 1 and lab.stats["drop"] == 1
    assert sorted(tcp_state(ct) for ct in lab.conns()) == ["ESTABLISHED", "TIME_WAIT"]


def test_snat_does_not_evict_an_established_entry_on_any_kernel():
    for kernel in ("6.1", "6.18"):
        lab = lab_for(kernel, SNAT_TWO_PORTS)
        TcpFlow(lab, sport=40000, dport=80).handshake()
        TcpFlow(lab, sport=40001, dport=80).handshake()
        v = TcpFlow(lab, src=PRIV2, sport=40002, dport=80, iss=900000).client("S")
        assert not v.sent and lab.stats["insert_failed"] == 1, kernel


# --- 0f1ae2821fa4 (v6.8): DNAT to a port range starts at the range's first port -----------

def _dnat_ports(lab: Lab, n: int = 8) -> list[int]:
    ports = []
    for i in range(n):
        v = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / TCP(sport=50000 + i, dport=32000,
                                                             flags="S", seq=7))
        out = IP(v.sent[0].data)
        assert out.dst == PRIV1
        ports.append(out[TCP].dport)
    return ports


@pytest.mark.parametrize("kernel", ["6.12", "6.18"])
def test_dnat_range_takes_the_first_port(kernel):
    lab = lab_for(kernel, DNAT_RANGE)
    assert _dnat_ports(lab) == [21000] * 8


@pytest.mark.parametrize("kernel", ["6.1", "6.6"])
def test_dnat_range_is_random_before_68(kernel):
    lab = lab_for(kernel, DNAT_RANGE)
    ports = _dnat_ports(lab)
    assert all(21000 <= p <= 21010 for p in ports)
    assert len(set(ports)) > 1


def test_dnat_range_moves_on_when_the_first_port_is_taken():
    """The same public client port to both forwarded ports: the second connection's reply
    tuple with 21000 is the first's, so it gets 21001 (the commit's own example)."""
    lab = lab_for("6.18", DNAT_RANGE)
    for dport, expected in ((32000, 21000), (32001, 21001), (32001, 21001)):
        v = lab.send("eth1", IP(src=PUB, dst=RTR_PUB) / TCP(sport=50000, dport=dport, flags="S"))
        assert IP(v.sent[0].data)[TCP].dport == expected, dport
    assert len(lab.conns()) == 2


# --- the command line ----------------------------------------------------------------------

def test_replay_kernel_option(tmp_path):
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap
    frames = [Ether() / IP(src=PUB, dst=RTR_PUB) / TCP(sport=50000 + i, dport=32000, flags="S")
              for i in range(6)]
    pcap = tmp_path / "pub.pcap"
    wrpcap(str(pcap), frames)
    rules = tmp_path / "rules"
    rules.write_text(DNAT_RANGE)

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "nattrack.cli.main", "replay",
                               f"eth1={pcap}", "--iface", "eth0=10.0.0.1/24",
                               "--iface", "eth1=203.0.113.1/24", "--rules", str(rules),
                               "--seed", "3", "-L", *extra],
                              check=False, capture_output=True, text=True, timeout=60)
    new = run()
    assert new.returncode == 0, new.stderr
    assert re.findall(r"src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=(\d+)", new.stdout) == ["21000"] * 6
    old = run("--kernel", "6.1")
    assert old.returncode == 0, old.stderr
    ports = re.findall(r"src=10\.0\.0\.2 dst=203\.0\.113\.2 sport=(\d+)", old.stdout)
    assert len(ports) == 6 and len(set(ports)) > 1
    bad = run("--kernel", "5.4")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "nattrack: --kernel '5.4': expected one of 6.1, 6.6, 6.12, 6.18 or running"]


def test_router_process_rejects_unknown_kernel(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nattrack.router", "--mode", "python",
                        "--iface", "eth0=10.0.0.1/24", "--control", str(tmp_path / "s"),
                        "--kernel", "4.19"], check=False, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == ("nattrack.router: --kernel '4.19': expected one of 6.1, 6.6, "
                                "6.12, 6.18 or running")


def test_doctor_names_the_profile_it_follows():
    import os

    from nattrack.lab.doctor import Report, check_kernel_profile
    rep = Report()
    check_kernel_profile(rep)
    note = (f"kernel {os.uname().release}: the engine follows "
            f"{running_profile().describe()} (docs/kernel-profiles.md)")
    assert rep.notes == [note]
    assert f"Linux {running_profile().name} " in rep.notes[0] and not rep.problems


def test_notebook_engine_behaves_as_the_recorded_kernel():
    from nattrack.notebook import scenarios as sc
    from nattrack.notebook.engine import Engine
    rec = {"rules_text": DNAT_RANGE, "sysctls": {}, "t0": 0.0,
           "router": {"ifaces": sc.ROUTER_IFACES, "routes": sc.ROUTER_ROUTES}}
    assert Engine({**rec, "kernel": "6.1.0-57-amd64"}, {}).router.ct.profile is PROFILES["6.1"]
    assert Engine({**rec, "kernel": "6.12.118+deb13-amd64"}, {}).router.ct.profile is PROFILES["6.12"]
    assert Engine(rec, {}).router.ct.profile is running_profile()      # live: this kernel


def test_lab_passes_kernel_to_every_router_in_python_mode_only():
    from nattrack.lab.topo import RouterSpec
    from nattrack.lab.topologies import get_topology
    assert RouterSpec("r", {"r-wan": "203.0.113.1/24"}, kernel="6.1").router_args()[-2:] == [
        "--kernel", "6.1"]
    assert "--kernel" not in RouterSpec("r", {"r-wan": "203.0.113.1/24"}).router_args()
    topo = get_topology("double")(mode="python", kernel="6.12", wait=False)
    assert len(topo.routers) == 2
    assert all(s.router_args()[-2:] == ["--kernel", "6.12"] for s in topo.routers.values())
    with pytest.raises(ValueError, match="python mode only"):
        get_topology("basic")(mode="kernel", kernel="6.1")
    with pytest.raises(ValueError, match=r"--kernel '6\.2': expected one of"):
        get_topology("basic")(mode="python", kernel="6.2")


def test_lab_up_checks_kernel_before_starting():
    from nattrack.lab import LabError
    from nattrack.lab.lifecycle import _kernel_arg
    _kernel_arg(None, "kernel")
    _kernel_arg("6.1", "python")
    with pytest.raises(LabError, match="python mode only"):
        _kernel_arg("6.1", "kernel")
    with pytest.raises(LabError, match=r"--kernel 'latest': expected one of 6\.1, 6\.6"):
        _kernel_arg("latest", "python")
