"""`nattrack rules list` and the router's `ruleset` verb: the rules as `nft list ruleset`
prints them, each counter with the packets and bytes the engine counted for its rule
(issue 12 item 2).  The engine's counts are compared with the kernel's for every
scenario in tests/kernel/test_kernel_diff.py; here: the listing itself."""
from __future__ import annotations

import re
import tempfile

import pytest
from scapy.layers.inet import IP, UDP

from nattrack.cli.main import main
from nattrack.netfilter.nft import from_iptables
from nattrack.netfilter.rulesfile import load_rules, parse_rules
from nattrack.replay import parse_iface_args, replay_captures
from nattrack.router.control import Control
from nattrack.router.dataplane import Dataplane

from nattrack_lab import PRIV1, PUB, Lab

DEMO = ["examples/demo/home.pcapng", "--iface", "lan=10.0.0.1/24", "--iface",
        "wan=203.0.113.1/24", "--route", "default=wan", "--seed", "1"]
FILTERED_NFT = """table inet home {
\tchain post {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "wan" ip saddr 10.0.0.0/24 counter masquerade
\t}
\tchain fw {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established counter accept
\t\tudp dport 53 counter
\t\tcounter accept
\t}
}
"""


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def _list(capsys, *args) -> tuple[int, str, str]:
    rc = main(["rules", "list", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _counters(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"counter packets (\d+) bytes (\d+)", text)]


def _replay(rules_path: str):
    return replay_captures([(None, "examples/demo/home.pcapng")],
                           parse_iface_args(["lan=10.0.0.1/24", "wan=203.0.113.1/24"]),
                           {"default": "wan"}, rules_path=rules_path, seed=1)


def test_a_replay_lists_an_iptables_file_in_its_nft_form_with_counts(capsys):
    rc, out, err = _list(capsys, *DEMO, "--rules", "examples/demo/home.rules")
    assert rc == 0 and err == ""
    # The masquerade rule sees each connection's first packet only (the nat chain is
    # not consulted for an entry that has its binding): one per NEW event.
    res = _replay("examples/demo/home.rules")
    new = [e for e in res.events if "[NEW]" in e]
    assert _counters(out) == [(len(new), _first_packet_bytes(res))]
    assert "oifname \"wan\" ip saddr 10.0.0.0/24 counter packets" in out
    # What it prints reads back as the rules (the values are read and dropped).
    assert parse_rules(out) == from_iptables(load_rules("examples/demo/home.rules"))


def _first_packet_bytes(res) -> int:
    """The IP length of each tracked connection's first packet (a NEW event's original
    tuple), from the capture itself; an untracked (INVALID) packet never meets NAT."""
    from nattrack.conntrack.tuple import int2ip
    from nattrack.packet.ipv4 import Packet
    from nattrack.packet.pcapio import ip_offset, read_capture
    new = [e for e in res.events if "[NEW]" in e]
    seen, total = set(), 0
    for frame in read_capture("examples/demo/home.pcapng"):
        pkt = Packet.parse(frame.data, ip_offset(frame), iif=frame.iface)
        if frame.iface != "lan" or pkt is None:
            continue
        orig = f"src={int2ip(pkt.src)} dst={int2ip(pkt.dst)} " + (
            f"sport={pkt.sport} dport={pkt.dport} " if pkt.proto in (6, 17) else "type=8")
        if orig not in seen and any(orig in e.split("[UNREPLIED]")[0] for e in new):
            seen.add(orig)
            total += pkt.tot_len
    assert len(seen) == len(new)
    return total


def test_an_nft_file_counts_only_where_it_says_counter(capsys, tmp_path):
    path = tmp_path / "home.nft"
    path.write_text(FILTERED_NFT)
    rc, out, err = _list(capsys, *DEMO, "--rules", str(path))
    assert rc == 0, err
    res = _replay(str(path))
    fwd = sum(1 for _ in res.egress)
    masq, est, dns, rest = _counters(out)
    assert est[0] + rest[0] == fwd          # every forwarded packet ended in one accept
    assert rest[0] >= dns[0]                # a rule without a verdict counts, then goes on
    assert masq[0] == sum(1 for e in res.events if "[NEW]" in e)
    assert parse_rules(out) == parse_rules(FILTERED_NFT)


def test_bad_requests_are_one_line(capsys):
    rc, out, err = _list(capsys, "--rules", "examples/demo/home.rules")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "captures" in err
    rc, out, err = _list(capsys, "examples/demo/home.pcapng")
    assert rc == 2 and err.count("\n") == 1 and "--iface" in err


def test_the_router_answers_ruleset_with_its_counts():
    lab = Lab(rules=FILTERED_NFT.replace('"wan"', '"eth1"'))
    dp = Dataplane(lab.router, {"eth0": ["10.0.0.1/24"], "eth1": ["203.0.113.1/24"]})
    with tempfile.TemporaryDirectory(prefix="ntls-") as d:
        ctl = Control(dp, f"{d}/ctl.sock")
        ctl.start()
        try:
            before = ctl.call("ruleset", {})
            assert before["syntax"] == "nft" and _counters(before["text"]) == [(0, 0)] * 4
            for sport in (41000, 41001):
                v = lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=sport, dport=53) / b"q")
                assert v.sent
            after = ctl.call("ruleset", {})["text"]
            size = 20 + 8 + 1
            assert _counters(after) == [(2, 2 * size), (0, 0), (2, 2 * size), (2, 2 * size)]
        finally:
            ctl.close()
            dp.close()
