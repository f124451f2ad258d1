"""Lab 07 (incidents) beyond its solution and skeleton (tests/grading/test_labs_grade.py):
each incident needs its fix (the healthy network passes, the incident alone fails), the
other fixes a student may rightly choose pass too, and bad knobs are one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from nattrack.exercises.scenarios import load_lab_module

LAB = Path(__file__).resolve().parents[2] / "labs" / "07-incidents"
S = load_lab_module(LAB / "scenarios.py", "nattrack_lab07_scenarios")


def problems(name, toml="", rules=None):
    return S.check_offline(name, S.replay(name, S.fix_from_texts(name, toml, rules)))


@pytest.mark.parametrize("name", S.SCENARIOS)
def test_the_incident_is_real_and_the_reference_fixes_it(name):
    assert problems(name), f"{name}: the incident without a fix passes its check"
    sol = LAB / "solution"
    rules = sol / f"{name}.rules"
    assert problems(name, (sol / f"{name}.toml").read_text(),
                    rules.read_text() if rules.exists() else None) == []


def test_healthy_rules_pass_where_only_the_rules_broke():
    """Without the incident's rules (the healthy ones as the 'fix' at t=0), invalid-rst is fine."""
    assert problems("invalid-rst", rules=S.healthy()) == []


def test_other_right_fixes():
    # table-full: idle ESTABLISHED entries that expire make room as well as a bigger table
    assert problems("table-full", '[sysctl]\n"net.netfilter.nf_conntrack_tcp_timeout_established" = 30\n') == []
    # invalid-rst: a liberal window check keeps the segment tracked, so it is un-NATed
    assert problems("invalid-rst", '[sysctl]\n"net.netfilter.nf_conntrack_tcp_be_liberal" = 1\n') == []
    # stale-udp: deleting every UDP entry (conntrack -D -p udp) also works
    assert problems("stale-udp", '[[delete]]\nproto = "udp"\n') == []


def test_wrong_fixes_fail_with_reasons():
    # deleting the wrong entries leaves the stale one
    got = problems("stale-udp", '[[delete]]\nproto = "udp"\ndport = 54\n')
    assert got and "still went to be1" in got[0]
    # new-rule: a DROP for the whole LAN stops h2, and h1 with it: caught
    rules = (LAB / "scenarios" / "new-rule.rules").read_text().replace(
        "-s 10.0.0.11/32 -o ntr-wan -j DROP", "-s 10.0.0.0/24 -o ntr-wan -j DROP")
    got = problems("new-rule", '[[delete]]\nproto = "udp"\n', rules)
    assert any("h1's" in p for p in got), got


@pytest.mark.parametrize("toml, rules, message", [
    ('[[delete]]\nproto = "icmp"\n', None, "proto udp or tcp"),
    ('[[delete]]\nproto = "udp"\ndst = "nowhere"\n', None, "expected an IPv4 address"),
    ('[[delete]]\nproto = "udp"\ndport = 70000\n', None, "expected a port 1-65535"),
    ('[[delete]]\nproto = "udp"\nzone = 1\n', None, "unknown key 'zone'"),
    ('[sysctl]\n"net.ipv4.ip_forward" = 0\n', None, "only net.netfilter.nf_conntrack_*"),
    ('down = ["be2"]\n', None, "a fix cannot take hosts down"),
    ('flush = true\n', None, "unknown key 'flush'"),
    ('diagnosis = "x\n', None, "not valid TOML"),
    ("", "*mangle\nCOMMIT\n", "unsupported table 'mangle'"),
    ("", "*filter\n-A FORWARD -j NOPE\nCOMMIT\n", "new-rule.rules"),
])
def test_bad_knobs_are_one_line_errors(toml, rules, message):
    with pytest.raises(S.KnobError, match=None) as err:
        S.fix_from_texts("new-rule", toml, rules)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_replay_command_line(capsys, tmp_path, monkeypatch):
    assert S.main(["replay", "stale-udp", "--dir", str(LAB / "solution")]) == 0
    out = capsys.readouterr().out
    assert "> 10.1.0.12.7" in out and out.rstrip().endswith("fixed on the recorded traffic")
    monkeypatch.setenv("NATTRACK_RUN_DIR", str(tmp_path))         # no lab runs there
    assert S.main(["break", "table-full"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scenarios.py: ") and err.count("\n") == 1, err


def test_every_incident_runs_live_and_table_full_in_python_mode():
    assert set(S.LIVE) == set(S.SCENARIOS)
    assert S.LIVE_MODES == {"table-full": "python"}
    tests = load_lab_module(LAB / "tests" / "test_incidents.py", "nattrack_lab07_public_tests")
    specs = {v.nattrack_test.number: v.nattrack_test for v in vars(tests).values()
             if hasattr(v, "nattrack_test")}
    assert specs["7.14"].name.startswith("table-full") and specs["7.14"].lab_mode == "python"
    assert specs["7.15"].mode == "any"
    assert {s.lab_mode for n, s in specs.items() if n != "7.14"} == {""}


def test_a_fix_in_nft_syntax():
    """NAME.rules may be nft (scenarios/NAME.nft is each incident's rules in nft): the
    reference fixes translated to nft pass, the incidents' own nft rules still fail."""
    from nattrack.cli.rules import translate
    from nattrack.netfilter.rulesfile import parse_rules
    for name in ("invalid-rst", "snat-race"):
        text = (LAB / "solution" / f"{name}.rules").read_text()
        nft = translate(parse_rules(text, name), "nft")
        assert problems(name, "", nft) == [], name
        assert problems(name, "", (LAB / "scenarios" / f"{name}.nft").read_text()), name
    with pytest.raises(S.KnobError, match="new-rule.rules:"):
        S.fix_from_texts("new-rule", "", "table ip nat {\n chain x { nonsense }\n}\n")


def _free_port_pair():
    """A free UDP port whose next one is free too (the lookups' sockets take a range)."""
    import socket
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("0.0.0.0", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
            return port


def test_dns_race_stand_ins_on_loopback():
    """dns-race live: the resolver stand-in answers A at once and AAAA AAAA_DELAY late, from
    the port asked; the lookups' sockets report, per port, the AAAA answer's lateness or
    '-' when it never came."""
    import socket
    import subprocess
    import sys
    import time
    instance = _free_port_pair()
    resolver = subprocess.Popen([sys.executable, "-c", S._RESOLVER, "0.3", str(instance)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert resolver.stdout.readline().strip() == "ready"
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(2)
        got = {}
        t0 = time.monotonic()
        for q in ("AAAA", "A"):
            client.sendto(f"{q}? www.example.\n".encode(), ("127.0.0.1", instance))
        for _ in range(2):
            data, peer = client.recvfrom(100)
            got[data.split()[0].decode()] = (time.monotonic() - t0, peer[1])
        assert got["A"][0] < 0.25 <= 0.3 <= got["AAAA"][0], got
        assert got["A"][1] == got["AAAA"][1] == instance
    finally:
        resolver.kill()
        resolver.wait()
    first = _free_port_pair()
    answers = subprocess.Popen([sys.executable, "-c", S._ANSWERS, str(first), "2", "0.5"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert answers.stdout.readline().strip() == "ready"
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.sendto(b"A www.example. 192.0.2.80\n", ("127.0.0.1", first))
    server.sendto(b"AAAA www.example. 2001:db8::80\n", ("127.0.0.1", first))
    server.sendto(b"A www.example. 192.0.2.80\n", ("127.0.0.1", first + 1))
    time.sleep(0.2)
    out, _ = answers.communicate("", timeout=5)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0][:2] == [str(first), "A"] and float(lines[0][2]) < 0.2, lines
    assert lines[1] == [str(first + 1), "A", "-"], lines
