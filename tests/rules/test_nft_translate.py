"""Between the two syntaxes: `nattrack rules translate`, checked against the
iptables package's own translators (iptables-restore-translate and
iptables-translate, nf_tables backend: Debian's iptables package ships them,
so a missing one is a failure), and a round trip for every shipped rules file."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from nattrack.cli.main import main
from nattrack.cli.rules import translate, _conntrack_states
from nattrack.netfilter.nft import from_iptables, parse_nft, to_iptables
from nattrack.netfilter.rulesfile import load_rules, parse_rules, to_nft

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("examples/rules/*.rules"), *ROOT.glob("labs/*/rules/*.rules")])


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} missing: scripts/setup.sh installs the iptables package"
    return path


def test_there_are_shipped_rules_files():
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_round_trips_and_agrees_with_iptables_restore_translate(path):
    rs = load_rules(path)
    nft_text = translate(rs, "nft")
    again = parse_rules(nft_text, "again.nft")
    assert again == from_iptables(rs)                     # parse -> write -> parse
    assert _conntrack_states(to_iptables(again)) == _conntrack_states(rs)
    assert parse_rules(translate(again, "iptables")) == to_iptables(again)
    out = subprocess.run([tool("iptables-restore-translate"), "-f", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert parse_nft(out, "iptables-restore-translate") == again


IPTABLES_LINES = [
    ("nat", "-A POSTROUTING -o wan -p udp -j MASQUERADE --to-ports 1000-2000 --random-fully"),
    ("nat", "-A POSTROUTING -s 10.0.0.0/24 ! -d 10.0.0.0/24 -o wan+ -j MASQUERADE --random"),
    ("nat", "-A POSTROUTING -p tcp -j SNAT --to-source 203.0.113.5-203.0.113.9:1024-2047 "
            "--persistent"),
    ("nat", "-A PREROUTING -i wan -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.10:80"),
    ("nat", "-A PREROUTING -p udp -m udp ! --sport 53 -j DNAT --to-destination 10.0.0.2-10.0.0.5"),
    ("filter", "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ("filter", "-A FORWARD ! -i lan -p tcp -m tcp --sport 1:1023 --dport 22 -j DROP"),
    ("filter", "-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT"),
    ("filter", "-A INPUT ! -p udp -j ACCEPT"),
    ("filter", '-A INPUT -p tcp --dport 80 -m comment --comment "public web" -j ACCEPT'),
]


@pytest.mark.parametrize("table, line", IPTABLES_LINES)
def test_one_rule_agrees_with_iptables_translate(table, line):
    chain = line.split()[1]
    rs = parse_rules(f"*{table}\n{line}\nCOMMIT\n")
    (mine,) = [r for r in parse_rules(translate(rs, "nft")).rules()]
    out = subprocess.run([tool("iptables-translate"), "-t", table, *shlex.split(line)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("nft '") and out.endswith("'"), out
    prio = -100 if chain in ("PREROUTING", "OUTPUT") and table == "nat" else \
        (100 if table == "nat" else 0)
    theirs = parse_nft(f"add table ip {table}\nadd chain ip {table} {chain} {{ type {table} hook "
                       f"{chain.lower()} priority {prio}; }}\n{out[5:-1]}\n")
    (ref,) = theirs.rules()
    assert replace(ref, line=0) == replace(mine, line=0)


def test_nft_only_constructs_are_refused_towards_iptables():
    rs = parse_nft("table ip t {\n\tchain c {\n\t\ttype filter hook forward priority 0;\n"
                   "\t\tip saddr { 10.0.0.1, 10.0.0.9 } accept\n\t}\n}\n")
    with pytest.raises(ValueError, match="one rule per element"):
        translate(rs, "iptables")
    two = parse_nft("table ip a { chain x { type filter hook input priority 0; } }\n"
                    "table ip b { chain y { type filter hook input priority 0; } }\n")
    with pytest.raises(ValueError, match="one chain per hook"):
        translate(two, "iptables")
    odd = parse_nft("table ip a { chain x { type filter hook input priority 10; } }\n")
    with pytest.raises(ValueError, match="priority 10"):
        translate(odd, "iptables")


def test_cli_translates_both_ways(tmp_path, capsys):
    src = ROOT / "examples/rules/classroom-firewall.rules"
    out = tmp_path / "fw.nft"
    assert main(["rules", "translate", str(src), "-o", str(out)]) == 0
    assert out.read_text().startswith("table ip nat {")
    assert load_rules(out) == from_iptables(load_rules(src))
    assert main(["rules", "translate", str(out)]) == 0
    back = capsys.readouterr().out
    assert back.startswith("*nat\n")
    assert parse_rules(back) == load_rules(src)
    assert main(["rules", "translate", str(out), "--to", "nft"]) == 0
    assert capsys.readouterr().out == out.read_text()


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.nft"
    bad.write_text("table ip t {\n\tchain c {\n\t\tnotrack\n\t}\n}\n")
    assert main(["rules", "translate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"nattrack: {bad}:3: 'notrack' outside a base chain at raw priority (-300): " \
                  "after conntrack (-200) the packet already has its entry\n"
    rej = tmp_path / "reject.nft"
    rej.write_text("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0;\n"
                   "\t\ttcp dport 23 reject\n\t}\n}\n")
    assert main(["rules", "translate", str(rej)]) == 2
    err = capsys.readouterr().err
    assert err == f"nattrack: {rej}: line 4: 'reject' has no iptables form nattrack reads " \
                  "(-j REJECT is not in its iptables subset)\n"
    sets = tmp_path / "sets.nft"
    sets.write_text("table ip t {\n\tchain c {\n\t\ttype filter hook input priority 0;\n"
                    "\t\ttcp dport { 22, 80 } accept\n\t}\n}\n")
    assert main(["rules", "translate", str(sets)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nattrack: {sets}: ") and err.count("\n") == 1


def test_replay_gives_the_same_events_and_table_with_either_syntax(tmp_path, capsys):
    """`nattrack replay --rules` reads an nft file (load_rules tells the syntax) and the
    engine does exactly what it does with the iptables file."""
    nft = tmp_path / "home.nft"
    assert main(["rules", "translate", str(ROOT / "examples/demo/home.rules"), "-o",
                 str(nft)]) == 0
    capsys.readouterr()
    outs = []
    for rules in (ROOT / "examples/demo/home.rules", nft):
        assert main(["replay", str(ROOT / "examples/demo/home.pcapng"), "--iface",
                     "lan=10.0.0.1/24", "--iface", "wan=203.0.113.1/24", "--route",
                     "default=wan", "--rules", str(rules), "--seed", "1", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        for entry in out["events"] + out["table"]:
            entry.pop("id", None)              # the conntrack id differs on every run
        outs.append(out)
    assert outs[0] == outs[1] and outs[0]["table"] and outs[0]["events"]


def test_reloading_an_nft_rule_set_replaces_the_whole_rule_set():
    """The router's reload (merge_rules) keeps iptables-restore's per-table swap for
    iptables text; an nft rule set replaces everything (its base chains included)."""
    from nattrack.router.dataplane import merge_rules
    ipt = load_rules(ROOT / "examples/rules/portforward.rules")
    nft = parse_rules(to_nft(load_rules(ROOT / "examples/rules/basic.rules")))
    merged = merge_rules(ipt, nft)
    assert merged == nft and merged.hooks == nft.hooks
    assert merge_rules(nft, ipt) == ipt
