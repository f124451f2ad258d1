"""`nattrack replay`: the command line a student runs on a capture, no root needed."""
from __future__ import annotations

import json

import pytest

from nattrack.cli.main import main
from nattrack.conntrack.show import parse_conntrack_line
from nattrack.packet.pcapio import read_capture

DEMO = ["examples/demo/home.pcapng", "--iface", "lan=10.0.0.1/24", "--iface", "wan=203.0.113.1/24",
        "--route", "default=wan", "--rules", "examples/demo/home.rules", "--seed", "1"]
T0 = 1767225600.0


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def run(capsys, *args):
    rc = main(["replay", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_events_are_printed_as_conntrack_E_o_timestamp(capsys):
    rc, out, err = run(capsys, *DEMO, "-E")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == ("[1767225600.000000]\t    [NEW] icmp     1 30 src=10.0.0.10 dst=203.0.113.10 "
                        "type=8 code=0 id=4660 [UNREPLIED] src=203.0.113.10 dst=203.0.113.1 type=0 "
                        "code=0 id=4660")
    kinds = [parse_conntrack_line(l)["kind"] for l in lines]
    assert kinds.count("NEW") == 5
    assert "flow events have been shown." in err


def test_the_table_counts_down_from_now(capsys):
    rc, out, _ = run(capsys, *DEMO, "-L", "--now", str(T0 + 60))
    entries = [parse_conntrack_line(l) for l in out.splitlines()]
    # at +60 s only the assured UDP stream (120 s from +4 s) and TIME_WAIT (120 s from +6 s) live
    assert sorted((e["proto"], e["timeout"]) for e in entries) == [(6, 66), (17, 64)]


def test_json_has_events_table_stats_and_packet_counts(capsys):
    rc, out, _ = run(capsys, *DEMO, "--json")
    data = json.loads(out)
    assert set(data) == {"events", "table", "stats", "packets"}
    assert data["packets"] == {"replayed": 19, "not_ipv4": 0, "ip_header_errors": 0, "dropped": 0}
    assert data["stats"]["invalid"] == 1 and data["stats"]["found"] == 1


def test_proc_lines_have_the_kernel_prefix_and_zone(capsys):
    rc, out, _ = run(capsys, *DEMO, "--proc")
    assert out.splitlines() and all(l.startswith("ipv4     2 ") and " zone=0 use=2" in l
                                    for l in out.splitlines())


def test_write_saves_every_packet_as_it_leaves(capsys, tmp_path):
    path = tmp_path / "out.pcapng"
    rc, _, _ = run(capsys, *DEMO, "-S", "-w", str(path))
    frames = list(read_capture(str(path)))
    assert len(frames) == 19                          # every datagram was forwarded
    assert {f.iface for f in frames} == {"lan", "wan"}


def test_one_capture_per_interface_is_accepted(capsys, tmp_path):
    split = {}
    for f in read_capture("examples/demo/home.pcapng"):
        split.setdefault(f.iface, []).append(f)
    from nattrack.packet.pcapio import PcapngWriter
    args = []
    for iface, frames in split.items():
        p = tmp_path / f"{iface}.pcapng"
        with PcapngWriter(str(p)) as w:
            for f in frames:
                w.write(f.ts, "if0", bytes(f.data))
        args.append(f"{iface}={p}")
    rc, out, _ = run(capsys, *args, *DEMO[1:], "-E")
    rc2, out2, _ = run(capsys, *DEMO, "-E")
    assert out == out2


def test_an_unsupported_rule_option_is_one_line_naming_the_line(capsys, tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text("*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j LOG --log-prefix x\nCOMMIT\n")
    args = [a if a != "examples/demo/home.rules" else str(rules) for a in DEMO]
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == ""
    assert err.startswith("nattrack: ") and "bad.rules:3" in err and len(err.splitlines()) == 1


def test_missing_interfaces_and_unknown_sysctls_are_clear_errors(capsys):
    rc, _, err = run(capsys, "examples/demo/home.pcapng")
    assert rc == 2 and "--iface NAME=ADDR/PREFIX" in err
    rc, _, err = run(capsys, *DEMO, "--sysctl", "net.netfilter.nf_conntrack_nonsense=1")
    assert rc == 2 and "unknown setting" in err


def test_a_truncated_capture_is_replayed_up_to_the_cut_with_a_warning(capsys, tmp_path):
    cut = tmp_path / "cut.pcapng"
    data = open("examples/demo/home.pcapng", "rb").read()
    cut.write_bytes(data[:-30])
    args = [a if a != "examples/demo/home.pcapng" else str(cut) for a in DEMO]
    rc, out, err = run(capsys, *args, "--json")
    assert rc == 0 and json.loads(out)["packets"]["replayed"] == 18
    assert "truncated" in err
