"""The kernel-oracle harness itself: builds, records, stays quiet, cleans up.

These need root (namespaces); the pure helpers at the end do not.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from .harness import (MACS, PRIV1, PUB, ROUTER_PUB, KernelLab, LabError, checksum_errors,
                      cleanup_stale, list_netns, parse_stats, strip_timestamp, summarize)
from .scenarios import MASQ


def _netns_inodes(lab: KernelLab) -> dict[str, int]:
    return {name: os.stat(f"/run/netns/{name}").st_ino for name in lab.namespaces}


def _procs_in_netns(inodes: set[int]) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if link.startswith("net:[") and int(link[5:-1]) in inodes:
            found.append(int(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours would still answer kill 0: look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _assert_clean(lab: KernelLab, inodes: dict[str, int], pids: list[int]) -> None:
    left = [n for n in list_netns() if n.startswith(lab.prefix)]
    assert not left, f"namespaces left behind: {left}"
    alive = [p for p in pids if _alive(p)]
    assert not alive, f"processes left behind: {alive}"
    inside = _procs_in_netns(set(inodes.values()))
    assert not inside, f"processes still in the lab's namespaces: {inside}"


@pytest.mark.kernel
def test_udp_exchange_is_recorded_and_lab_cleaned_up(tmp_path):
    with KernelLab(MASQ, workdir=tmp_path) as lab:
        assert sorted(n for n in list_netns() if n.startswith(lab.prefix)) == sorted(lab.namespaces)
        inodes = _netns_inodes(lab)
        lab.start_recording("udp")
        lab.send("priv1", IP(src=PRIV1, dst=PUB) / UDP(sport=41000, dport=5353) / b"query")
        time.sleep(0.05)
        lab.send("pub", IP(src=PUB, dst=ROUTER_PUB) / UDP(sport=5353, dport=41000) / b"answer")
        rec = lab.stop_recording()
        pids = list(lab.started_pids)
        assert len(pids) >= 3 + 5          # three agents, four tcpdumps, conntrack -E
        # lab.conntrack() works and the table is still there after the recording
        assert "sport=41000" in lab.conntrack("-L")
    _assert_clean(lab, inodes, pids)

    events = rec.events_stripped()
    assert len(events) == 2, rec.describe()
    # (a loaded or emulated machine may let a jiffy pass before the event is built: 29)
    assert re.fullmatch(r"    \[NEW\] udp      17 (30|29) src=10\.0\.0\.2 dst=203\.0\.113\.2 "
                        r"sport=41000 dport=5353 \[UNREPLIED\] src=203\.0\.113\.2 "
                        r"dst=203\.0\.113\.1 sport=5353 dport=41000", events[0]), rec.describe()
    # (the printed timeout may be a jiffy short of 30 when the event goes out)
    assert re.fullmatch(r" \[UPDATE\] udp      17 (30|29) src=10\.0\.0\.2 dst=203\.0\.113\.2 "
                        r"sport=41000 dport=5353 src=203\.0\.113\.2 dst=203\.0\.113\.1 "
                        r"sport=5353 dport=41000", events[1]), rec.describe()
    assert all(e.startswith("[") and "]\t" in e for e in rec.events), rec.events
    assert len(rec.table) == 1, rec.table
    assert rec.table[0].startswith("udp      17 ")
    assert rec.table[0].endswith("src=10.0.0.2 dst=203.0.113.2 sport=41000 dport=5353 "
                                 "src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=41000 "
                                 "mark=0 use=1")
    assert int(rec.table[0].split()[2]) in (29, 30)
    assert rec.started_at < rec.listed_at <= time.time()
    assert rec.problems == []
    assert set(rec.stats) >= {"found", "invalid", "insert_failed", "drop", "error"}
    assert rec.stats["invalid"] == 0 and rec.stats["drop"] == 0

    # captures: ingress as sent, egress translated, checksums right, in time order
    assert rec.summaries("r-priv", "in") == ["udp 10.0.0.2:41000 > 203.0.113.2:5353 len=5 ipid=1"]
    assert rec.summaries("r-pub", "out") == ["udp 203.0.113.1:41000 > 203.0.113.2:5353 len=5 ipid=1"]
    assert rec.summaries("r-pub", "in") == ["udp 203.0.113.2:5353 > 203.0.113.1:41000 len=6 ipid=1"]
    assert rec.summaries("r-priv", "out") == ["udp 203.0.113.2:5353 > 10.0.0.2:41000 len=6 ipid=1"]
    (t_in, f_in), = rec.frames("r-priv", "in")
    (t_rep, _), = rec.frames("r-pub", "in")
    assert rec.started_at <= t_in < t_rep < rec.listed_at
    eth = Ether(f_in)
    assert eth.src == MACS["priv1"] and eth.dst == MACS["r-priv"]
    ts_new = float(rec.events[0][1:rec.events[0].index("]")])
    assert abs(ts_new - t_in) < 0.5


@pytest.mark.kernel
@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_hosts_do_not_answer(quiet, tmp_path):
    """pub's kernel answers a datagram to a closed port only when hosts are not quiet."""
    with KernelLab(MASQ, quiet_hosts=quiet, workdir=tmp_path) as lab:
        lab.start_recording("quiet")
        lab.send("priv1", IP(src=PRIV1, dst=PUB) / UDP(sport=41100, dport=9) / b"x")
        time.sleep(0.2)
        rec = lab.stop_recording()
    back = [s for s in rec.summaries("r-pub", "in") if s.startswith("icmp")]
    if quiet:
        assert back == [], back
    else:
        assert back and "type=3 code=3" in back[0], rec.describe()


@pytest.mark.kernel
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cleanup_after_exception(exc, tmp_path):
    lab = KernelLab(MASQ, workdir=tmp_path)
    inodes: dict[str, int] = {}
    pids: list[int] = []
    with pytest.raises(exc):
        with lab:
            inodes = _netns_inodes(lab)
            lab.start_recording("interrupted")
            lab.send("priv1", IP(src=PRIV1, dst=PUB) / ICMP(id=1) / b"x")
            pids = list(lab.started_pids)
            raise exc("boom")
    _assert_clean(lab, inodes, pids)


@pytest.mark.kernel
def test_router_sysctls_and_bad_rules(tmp_path):
    with KernelLab(MASQ, sysctls={"net.netfilter.nf_conntrack_udp_timeout": "7"},
                   workdir=tmp_path / "a") as lab:
        get = lambda k: lab.read_sysctl("rtr", k)   # noqa: E731
        assert get("net.netfilter.nf_conntrack_udp_timeout") == "7"
        assert get("net.ipv4.ip_forward") == "1"
        lab.set_sysctls({"net.netfilter.nf_conntrack_tcp_loose": "0"})
        assert get("net.netfilter.nf_conntrack_tcp_loose") == "0"
        lab.set_sysctls({})
        assert get("net.netfilter.nf_conntrack_tcp_loose") == "1"
        assert get("net.netfilter.nf_conntrack_udp_timeout") == "7"    # base sysctl stays
        # host kernels keep forwarding off and IPv6 off
        assert lab.read_sysctl("priv1", "net.ipv6.conf.all.disable_ipv6") == "1"
        assert lab.read_sysctl("rtr", "net.ipv4.conf.all.rp_filter") == "0"
        # conntrack is active in the router even with a ruleset that needs none
        assert "ctstate" in lab.exec("rtr", "iptables-save", "-t", "mangle").stdout
    bad = KernelLab("*nat\n-A NOSUCHCHAIN -j ACCEPT\nCOMMIT\n", workdir=tmp_path / "b")
    with pytest.raises(LabError):
        with bad:
            pass
    assert not [n for n in list_netns() if n.startswith(bad.prefix)]


@pytest.mark.kernel
def test_cleanup_stale_removes_dead_runs_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"ntk{dead.pid}x0-stale"
    mine = f"ntk{os.getpid()}x999-mine"
    for n in (name, mine):
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        removed = cleanup_stale()
        assert name in removed and mine not in removed
        assert name not in list_netns() and mine in list_netns()
    finally:
        for n in (name, mine):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


# ---- pure helpers (no root needed) -----------------------------------------------------

def test_parse_stats_sums_cpus():
    text = ("cpu=0   \tfound=3 invalid=3 insert=0 insert_failed=0 drop=0 early_drop=0 error=0 "
            "search_restart=0 clash_resolve=0 chaintoolong=0 \n"
            "cpu=1   \tfound=1 invalid=3 insert=0 insert_failed=1 drop=2 early_drop=0 error=0 "
            "search_restart=0 clash_resolve=0 chaintoolong=0 \n")
    st = parse_stats(text)
    assert st["found"] == 4 and st["invalid"] == 6 and st["drop"] == 2 and st["insert_failed"] == 1


def test_summaries_and_checksums():
    good = bytes(Ether() / IP(src="10.0.0.2", dst="203.0.113.2", id=5) / UDP(sport=1, dport=2) / b"ab")
    assert summarize(good) == "udp 10.0.0.2:1 > 203.0.113.2:2 len=2 ipid=5"
    ip = bytearray(good[14:])
    assert checksum_errors(bytes(ip)) == []
    ip[-1] ^= 0xFF
    assert checksum_errors(bytes(ip)) == ["udp"]
    ip[8] ^= 1                                     # TTL: IP header checksum now wrong
    assert checksum_errors(bytes(ip)) == ["ip", "udp"]
    err = bytes(Ether() / IP(src="203.0.113.2", dst="10.0.0.2") / ICMP(type=3, code=3)
                / bytes(IP(src="10.0.0.2", dst="203.0.113.2") / UDP(sport=7, dport=9))[:28])
    assert "[inner: udp 10.0.0.2:7 > 203.0.113.2:9]" in summarize(err)
    assert strip_timestamp("[1700000000.000001]\t    [NEW] x") == "    [NEW] x"


@pytest.mark.kernel
def test_router_tracks_even_without_conntrack_rules(tmp_path):
    """A ruleset that needs no conntrack: the router still tracks (and does not NAT)."""
    rules = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    with KernelLab(rules, workdir=tmp_path) as lab:
        lab.start_recording("plain")
        lab.send("priv1", IP(src=PRIV1, dst=PUB) / UDP(sport=41200, dport=53) / b"x")
        rec = lab.stop_recording()
    assert [strip_timestamp(e) for e in rec.events] == [
        "    [NEW] udp      17 30 src=10.0.0.2 dst=203.0.113.2 sport=41200 dport=53 [UNREPLIED] "
        "src=203.0.113.2 dst=10.0.0.2 sport=53 dport=41200"], rec.describe()
    assert rec.summaries("r-pub", "out") == ["udp 10.0.0.2:41200 > 203.0.113.2:53 len=1 ipid=1"]
