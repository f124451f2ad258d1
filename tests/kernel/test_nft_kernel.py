"""The nft form of a ruleset in the real kernel (issue 12): a few scenarios run twice,
once with their iptables rules (iptables-restore) and once with the nft text
`nattrack rules translate` writes (nft -f), in labs of their own; the kernel must give
the same events, table, counters, egress frames and per-rule packet/byte counters."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from nattrack.netfilter.rules import Ruleset

from .harness import KernelLab
from .scenarios import BY_NAME

# One group per ruleset: a masquerade, a port forward, stateful filter chains.
GROUPS = [("tcp_client_close", "tcp_rst_established"), ("dnat_port_forward",),
          ("forward_drop_policy",), ("ctstate_invalid_drop",), ("local_input_drop",)]


def _rule_counters(lab: KernelLab, nft: bool) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(table type, chain, index) -> (packets, bytes) of every rule, as the kernel counts."""
    out: dict[tuple[str, str, int], tuple[int, int]] = {}
    if nft:
        text = lab.exec("rtr", "nft", "list", "ruleset").stdout
        table = chain = None
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["table"]:
                table = words[2]
            elif words[:1] == ["chain"]:
                chain, idx = words[1], 0
            elif "counter packets" in line and table in ("nat", "filter"):
                m = re.search(r"counter packets (\d+) bytes (\d+)", line)
                out[(table, chain, idx)] = (int(m.group(1)), int(m.group(2)))
                idx += 1
        return out
    for table in ("nat", "filter"):
        text = lab.exec("rtr", "iptables-save", "-c", "-t", table).stdout
        idx: dict[str, int] = {}
        for line in text.splitlines():
            m = re.match(r"\[(\d+):(\d+)\] -A (\S+)", line)
            if m:
                i = idx.get(m.group(3), 0)
                idx[m.group(3)] = i + 1
                out[(table, m.group(3), i)] = (int(m.group(1)), int(m.group(2)))
    return out


def _listed_ruleset(lab: KernelLab) -> Ruleset:
    """`nft list ruleset` in the router, read by nattrack's parser; the harness's own
    ``ip mangle`` table (iptables' FORCE_TRACKING rule) is left out."""
    text = lab.exec("rtr", "nft", "list", "ruleset").stdout
    blocks = re.split(r"(?m)^(?=table )", text)
    return Ruleset.parse("".join(b for b in blocks if not b.startswith("table ip mangle ")),
                         "nft list ruleset")


def _run(names, rules_text: str, nft: bool, workdir):
    recs = []
    scenarios = [replace(BY_NAME[n], rules=rules_text) for n in names]
    extra = tuple(sorted({a for s in scenarios for a in s.public_extra}))
    with KernelLab(rules_text, public_extra=extra, workdir=workdir) as lab:
        if nft:      # what the kernel holds reads back as the rules nattrack wrote
            assert _listed_ruleset(lab) == Ruleset.parse(rules_text)
        for sc in scenarios:
            rec = lab.run_scenario(sc)
            recs.append((rec, _rule_counters(lab, nft)))
    return recs


def _table(rec):
    # Remaining timeouts differ by the time between the two runs: compare all but them.
    return sorted(re.sub(r"^(\S+\s+\d+\s+)\d+", r"\1T", line) for line in rec.table)


@pytest.mark.kernel
@pytest.mark.parametrize("names", GROUPS, ids=lambda g: g[0])
def test_nft_form_gives_the_kernel_the_same_behaviour(names, tmp_path):
    ipt_text = BY_NAME[names[0]].rules
    nft_text = Ruleset.parse(ipt_text).to_nft()
    assert Ruleset.parse(nft_text).syntax == "nft"
    ipt = _run(names, ipt_text, False, tmp_path / "iptables")
    nft = _run(names, nft_text, True, tmp_path / "nft")
    for name, (a, ca), (b, cb) in zip(names, ipt, nft):
        assert not a.problems and not b.problems, (a.problems, b.problems)
        assert a.events_stripped() == b.events_stripped(), name
        assert _table(a) == _table(b), name
        assert a.stats == b.stats, name
        for key in a.pcaps:
            assert a.summaries(*key) == b.summaries(*key), (name, key)
        assert ca and ca == cb, (name, ca, cb)


@pytest.mark.kernel
def test_every_construct_survives_the_kernel_and_nft_list_ruleset():
    """The writer's text for the parser tests' widest ruleset is accepted by `nft -f`, and
    what `nft list ruleset` then prints reads back as the same rules (tcp flags, sets,
    ct status/direction, goto, log, several base chains, named priorities)."""
    import importlib.util
    import os
    import subprocess
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "rules" / "test_nft_parse.py"
    spec = importlib.util.spec_from_file_location("nft_parse_cases", path)
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    WIDE = cases.WIDE
    rs = Ruleset.parse(WIDE, "wide.nft")
    ns = f"ntknft{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = lambda *cmd, **kw: subprocess.run(["ip", "netns", "exec", ns, *cmd],  # noqa: E731
                                                check=True, capture_output=True, text=True, **kw)
        run("nft", "-f", "-", input=rs.to_nft())
        listed = run("nft", "list", "ruleset").stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert Ruleset.parse(listed, "nft list ruleset") == rs, listed


# --- kernel mode's router process loads and swaps an nft file with nft -f ----------------------

DEMO_NFT = """table inet demo {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "r-pub" ip saddr 10.0.0.0/24 counter masquerade
\t}
\tchain myforward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tudp dport 9999 counter drop
\t}
}
"""
DEMO_IPT = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o r-pub -p udp -j SNAT --to-source 203.0.113.1:40000-40009\nCOMMIT\n"


def _nft_tables(lab: KernelLab) -> list[str]:
    return lab.exec("rtr", "nft", "list", "tables").stdout.split("\n")


def _udp(lab: KernelLab, sport: int, dport: int = 7000) -> str:
    """Send one datagram priv1 -> pub and return the kernel's conntrack line for it."""
    from scapy.layers.inet import IP, UDP
    from .harness import PRIV1, PUB
    lab.send("priv1", IP(src=PRIV1, dst=PUB) / UDP(sport=sport, dport=dport) / b"x")
    lab.sleep(0.2)
    return lab.conntrack("-L", "-p", "udp", "--sport", str(sport))


@pytest.mark.kernel
def test_kernel_mode_router_loads_swaps_and_removes_nft_rules(tmp_path):
    """`python -m nattrack.router --mode kernel --rules F.nft` loads F with nft -f (its
    tables, not an iptables translation), the kernel NATs and filters by it, a `rules`
    reload swaps to iptables (the nft tables go) and back to nft (the iptables rules go,
    FORCE_TRACKING stays), and the router's exit removes its tables."""
    import subprocess
    import sys

    from nattrack.lab import rpc
    from .harness import IFACES
    nft_file = tmp_path / "demo.nft"
    nft_file.write_text(DEMO_NFT)
    sock = tmp_path / "ctl.sock"
    with KernelLab("", workdir=tmp_path / "lab") as lab:
        router = lab._spawn("rtr", [sys.executable, "-m", "nattrack.router", "--mode", "kernel",
                                    *[a for n, c in IFACES.items() for a in ("--iface", f"{n}={c}")],
                                    "--route", "default=r-pub", "--rules", str(nft_file),
                                    "--control", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert router.stdout.readline().strip() == "ready", router.stderr.read()
            assert "table inet demo" in _nft_tables(lab)
            assert "-A POSTROUTING" not in lab.exec("rtr", "iptables-save", "-t", "nat").stdout
            line = _udp(lab, 41000)
            assert "dst=203.0.113.1 sport=7000 dport=41000" in line, line     # masqueraded
            listed = lab.exec("rtr", "nft", "list", "table", "inet", "demo").stdout
            assert "counter packets 1 bytes 29 masquerade" in listed, listed

            res = rpc.request(sock, "rules", {"text": DEMO_IPT, "name": "snat.rules"})
            assert res["tables"] == ["nat"]
            assert "table inet demo" not in _nft_tables(lab)
            line = _udp(lab, 41001)
            assert "dst=203.0.113.1 sport=7000 dport=4000" in line, line      # SNAT range
            now = rpc.request(sock, "rules", {})["text"]
            assert "--to-source 203.0.113.1:40000-40009" in now

            rpc.request(sock, "rules", {"text": DEMO_NFT, "name": "demo.nft"})
            assert "table inet demo" in _nft_tables(lab)
            assert "-A POSTROUTING" not in lab.exec("rtr", "iptables-save", "-t", "nat").stdout
            assert lab.exec("rtr", "iptables", "-t", "mangle", "-C", "PREROUTING", "-m",
                            "conntrack", "!", "--ctstate", "UNTRACKED", check=False).returncode == 0
            assert "table inet demo {" in rpc.request(sock, "rules", {})["text"]
            assert "dport=41002" in _udp(lab, 41002)
            _udp(lab, 41003, 9999)
            listed = lab.exec("rtr", "nft", "list", "table", "inet", "demo").stdout
            assert "udp dport 9999 counter packets 1 bytes 29 drop" in listed, listed
        finally:
            if router.poll() is None:
                rpc.request(sock, "stop", {}, timeout=5)
                router.wait(10)
        err = router.stderr.read()
        assert router.returncode == 0 and "undo" not in err, err
        assert "table inet demo" not in _nft_tables(lab)
        assert "-A POSTROUTING" not in lab.exec("rtr", "iptables-save", "-t", "nat").stdout


@pytest.mark.kernel
def test_kernel_load_command_loads_either_syntax(tmp_path):
    """The shell command the lab's kernel fallback and `lab rules` run in a node: nft -f
    after a flush for an nft file, iptables-restore for an iptables one."""
    from nattrack.lab.topo import kernel_load_command
    nft_file, ipt_file = tmp_path / "demo.nft", tmp_path / "snat.rules"
    nft_file.write_text(DEMO_NFT)
    ipt_file.write_text(DEMO_IPT)
    with KernelLab("", workdir=tmp_path / "lab") as lab:
        lab.exec("rtr", "sh", "-c", kernel_load_command(str(nft_file)))
        assert "table inet demo" in _nft_tables(lab)
        lab.exec("rtr", "sh", "-c", kernel_load_command(str(ipt_file)))
        assert "--to-source 203.0.113.1:40000-40009" in lab.exec(
            "rtr", "iptables-save", "-t", "nat").stdout
        lab.exec("rtr", "sh", "-c", kernel_load_command(str(nft_file)))    # flush ruleset first
        assert "-A POSTROUTING" not in lab.exec("rtr", "iptables-save", "-t", "nat").stdout
        bad = tmp_path / "bad.nft"
        bad.write_text("table ip t {\n\tchain c {\n\t\tbogus\n\t}\n}\n")
        p = lab.exec("rtr", "sh", "-c", kernel_load_command(str(bad)), check=False)
        assert p.returncode != 0 and "table inet demo" in _nft_tables(lab)   # all or nothing
