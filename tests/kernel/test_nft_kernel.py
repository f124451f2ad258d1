"""The nft form of every scenario's rules in the real kernel (issue 12 item 3).

Each scenario of scenarios.py runs once more, with the nft text `nattrack rules
translate` writes for its rules, loaded with ``nft -f`` (labs of their own, one per
rule set, as conftest's ``kernel_runs`` does for the iptables form); the kernel must give
the same events, table, conntrack counters and egress frames (compared as
test_kernel_diff compares the engine with the kernel: the kernel's random NAT choices
are matched one to one) and the same per-rule packet/byte counters.  What `nft list
ruleset` then holds reads back as the rules written.  NOT_IN_NFT lists the scenarios
whose rules have no nft form, with the reason (none: raw_notrack's raw table is
``table ip raw`` at priority -300 with ``notrack``)."""
from __future__ import annotations

import re
from dataclasses import replace
from types import SimpleNamespace

import pytest

from nattrack.netfilter.ruleset import Ruleset
from nattrack.netfilter.rulesfile import parse_rules, to_nft
from nattrack.netfilter.xtables import RulesError

from .harness import IFACES, KernelLab, Recording
from .scenarios import BY_NAME, SCENARIOS
from .test_kernel_diff import compare

# scenario -> why its rules have no nft form
_CT_HELPER = ("-j CT --helper in the raw table has no nft translation (iptables-translate "
              "refuses it too); ftp_helper_nft is the same exchange written in nft")
NOT_IN_NFT: dict[str, str] = {name: _CT_HELPER for name in
                              ("ftp_helper", "ftp_helper_masq", "ftp_helper_parsing",
                               "ftp_expect_nat")}


def _listed_ruleset(lab: KernelLab) -> Ruleset:
    """`nft list ruleset` in the router, read by nattrack's parser; the harness's own
    ``ip mangle`` table (iptables' FORCE_TRACKING rule) is left out."""
    text = lab.exec("rtr", "nft", "list", "ruleset").stdout
    blocks = re.split(r"(?m)^(?=table )", text)
    return parse_rules("".join(b for b in blocks if not b.startswith("table ip mangle ")),
                         "nft list ruleset")


class NftRuns:
    """Each scenario through the kernel with the nft form of its rules, lazily, one lab
    per rule set (conftest.KernelRuns with nft -f)."""

    def __init__(self, base_dir):
        self.base_dir = base_dir
        self.recordings: dict[str, Recording] = {}
        self.errors: dict[str, BaseException] = {}
        self.labs = 0

    def get(self, name: str) -> Recording:
        if name not in self.recordings and name not in self.errors:
            self._run_group(BY_NAME[name].rules)
        if name in self.errors:
            raise RuntimeError(f"nft run of {name} failed: {self.errors[name]!r}") \
                from self.errors[name]
        return self.recordings[name]

    def _run_group(self, rules: str) -> None:
        group = [s for s in SCENARIOS if s.rules == rules and s.name not in self.recordings]
        nft_text = to_nft(parse_rules(rules))
        extra = tuple(sorted({a for s in group for a in s.public_extra}))
        self.labs += 1
        try:
            with KernelLab(nft_text, public_extra=extra,
                           workdir=self.base_dir / f"nft{self.labs}") as lab:
                listed = _listed_ruleset(lab)
                if listed != parse_rules(nft_text):
                    raise AssertionError(f"nft list ruleset reads back otherwise:\n{listed}")
                for sc in group:
                    try:
                        self.recordings[sc.name] = lab.run_scenario(replace(sc, rules=nft_text))
                    except Exception as exc:        # noqa: BLE001 -- reported per scenario
                        self.errors[sc.name] = exc
        except Exception as exc:                    # noqa: BLE001 -- lab could not be built
            for sc in group:
                self.errors.setdefault(sc.name, exc)


@pytest.fixture(scope="session")
def nft_runs(tmp_path_factory):
    return NftRuns(tmp_path_factory.mktemp("kernel-nft"))


def _as_result(rec: Recording) -> SimpleNamespace:
    """A kernel recording in the shape test_kernel_diff.compare() takes for the engine."""
    egress = [(ts, iface, frame) for iface in IFACES for ts, frame in rec.frames(iface, "out")]
    return SimpleNamespace(events=rec.events, table=rec.table, stats=rec.stats, egress=egress)


def _nft_params():
    def marks(sc):
        if sc.name in NOT_IN_NFT:
            return [pytest.mark.xfail(reason=NOT_IN_NFT[sc.name], strict=True)]
        if sc.diff_xfail:       # two random draws of this kernel (e.g. DNAT ports on 6.1)
            return [pytest.mark.xfail(reason=sc.diff_xfail, strict=False)]
        return []
    return [pytest.param(sc, id=sc.name, marks=marks(sc)) for sc in SCENARIOS]


def test_every_scenarios_rules_have_an_nft_form_or_a_reason():
    for sc in SCENARIOS:
        try:
            text = to_nft(parse_rules(sc.rules))
        except RulesError as exc:
            assert sc.name in NOT_IN_NFT, f"{sc.name}: no nft form ({exc}) and no reason given"
            continue
        assert sc.name not in NOT_IN_NFT, f"{sc.name} has an nft form now"
        assert parse_rules(text).syntax == "nft"
        if parse_rules(sc.rules).syntax == "iptables":    # iptables always counts
            assert "counter" in text


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", _nft_params())
def test_nft_form_gives_the_kernel_the_same_behaviour(scenario, kernel_runs, nft_runs):
    ipt = kernel_runs.get(scenario.name)
    nft = nft_runs.get(scenario.name)
    assert not nft.problems, nft.problems
    diff = compare(ipt, _as_result(nft), random_ports=scenario.random_ports)
    assert diff.ok, diff.render(scenario.name + " (iptables form vs nft form, both the kernel)")
    assert ipt.rule_counters == nft.rule_counters, \
        (ipt.rule_counters, nft.rule_counters)


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
    rs = parse_rules(WIDE, "wide.nft")
    ns = f"ntknft{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = lambda *cmd, **kw: subprocess.run(["ip", "netns", "exec", ns, *cmd],  # noqa: E731
                                                check=True, capture_output=True, text=True, **kw)
        run("nft", "-f", "-", input=to_nft(rs))
        listed = run("nft", "list", "ruleset").stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert parse_rules(listed, "nft list ruleset") == rs, listed


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
        # a helper rule: nf_nat_ftp first (a modular kernel loads only the conntrack half)
        helper = tmp_path / "ftp.rules"
        helper.write_text("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                          "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\nCOMMIT\n")
        command = kernel_load_command(str(helper))
        assert command.startswith("modprobe -q nf_nat_ftp")
        assert not kernel_load_command(str(ipt_file)).startswith("modprobe")
        lab.exec("rtr", "sh", "-c", command)
        assert "--helper ftp" in lab.exec("rtr", "iptables-save", "-t", "raw").stdout


# --- reject: the kernel's answers, and the engine's, for the same packets ------------------------

REJECT_NFT = """table ip nat {
\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "r-pub" counter masquerade
\t}
}
table inet filter {
\tchain fwd_filter {
\t\ttype filter hook forward priority filter; policy accept;
\t\ttcp dport 23 counter reject
\t\ttcp dport 24 counter reject with tcp reset
\t\tudp dport 25 counter reject with icmp host-unreachable
\t\tudp dport 26 counter reject with icmpx admin-prohibited
\t\tct state established counter accept
\t}
\tchain in_filter {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 2222 counter reject with tcp reset
\t\tudp dport 5353 counter reject with icmp prot-unreachable
\t}
}
"""


def _reject_scenarios():
    from .harness import Expect, Scenario
    from .scenarios import Tcp, ev, udp
    telnet, rst, rst_ack = Tcp.masq(40100, 23), Tcp.masq(40101, 24), Tcp.masq(40102, 24)
    local = Tcp("priv1", "10.0.0.2", 40103, "10.0.0.1", 2222, "pub", "10.0.0.1", 2222,
                "10.0.0.2", 40103)
    ok = Tcp.masq(40104, 80)
    return [
        Scenario("nft_reject_forward",
                 "nft reject in forward: ICMP port unreachable (default), a RST (RST|ACK for a "
                 "SYN, RST with seq = ack for an ACK), host unreachable, admin prohibited; the "
                 "rejected packets' entries never confirmed; an allowed flow goes on",
                 REJECT_NFT,
                 (telnet.c("S"), rst.c("S"), rst_ack.c("A", ack=777), udp("priv1", 40105, 25),
                  udp("priv1", 40106, 26), *ok.handshake()),
                 expect=Expect(
                     events=(ev("NEW", r"tcp .* SYN_SENT .*sport=40104 dport=80"),),
                     no_events=(r"dport=2[3456] ",),
                     egress=(("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=3 "),
                             ("r-priv", r"tcp 203\.0\.113\.2:24 > 10\.0\.0\.2:40101 \[RA\]"),
                             ("r-priv", r"tcp 203\.0\.113\.2:24 > 10\.0\.0\.2:40102 \[R\]"),
                             ("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=1 "),
                             ("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=13 ")))),
        Scenario("nft_reject_input",
                 "nft reject in input: a RST (TOS 0, not the local stack's) and protocol "
                 "unreachable from the router's own address",
                 REJECT_NFT,
                 (local.c("S"), udp("priv1", 40107, 5353, dst="10.0.0.1")),
                 expect=Expect(
                     egress=(("r-priv", r"tcp 10\.0\.0\.1:2222 > 10\.0\.0\.2:40103 \[RA\]"),
                             ("r-priv", r"icmp 10\.0\.0\.1 > 10\.0\.0\.2 type=3 code=2 ")))),
    ]


REJECT_SCENARIOS = _reject_scenarios()


# --- notrack: raw-priority chains, before conntrack ----------------------------------------------

NOTRACK_NFT = """table ip nat {
\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "r-pub" counter masquerade
\t}
}
table ip filter {
\tchain raw_pre {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tudp dport 5300 counter notrack
\t\tudp sport 5300 counter notrack
\t\tudp dport 5399 counter drop
\t}
\tchain fwd_filter {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state untracked counter accept
\t\tct state new,established counter accept
\t}
}
"""


def _notrack_scenarios():
    from .harness import Expect, Scenario
    from .scenarios import ev, udp, udp_reply
    return [Scenario(
        "nft_notrack",
        "nft notrack in a raw-priority prerouting chain: no entry, not invalid, not NATed "
        "(so the reply is for the router, which answers port unreachable), ct state "
        "untracked in forward; a drop there; other traffic tracked and NATed",
        NOTRACK_NFT,
        (udp("priv1", 41400, 5300), udp_reply(5300, 41400), udp("priv1", 41401, 5301),
         udp("priv1", 41402, 5399)),
        expect=Expect(
            events=(ev("NEW", r"udp .*sport=41401 dport=5301 "),),
            no_events=(r"sport=41400", r"dport=5399"), table_count=1, stats={"invalid": 0},
            egress=(("r-pub", r"udp 10\.0\.0\.2:41400 > 203\.0\.113\.2:5300"),
                    # the reply, not un-NATed, is for the router: port unreachable
                    ("r-pub", r"icmp 203\.0\.113\.1 > 203\.0\.113\.2 type=3 code=3 "),
                    ("r-pub", r"udp 203\.0\.113\.1:41401 > 203\.0\.113\.2:5301")),
            no_egress=(("r-pub", r"dport=5399|:5399"),)))]


@pytest.mark.kernel
@pytest.mark.parametrize("rules, scenarios", [(REJECT_NFT, "reject"), (NOTRACK_NFT, "notrack")],
                         ids=["reject", "notrack"])
def test_the_engine_answers_as_the_kernel_does(rules, scenarios, tmp_path):
    """reject and notrack: the kernel runs the scenarios with the nft rules (nft -f), the
    engine replays the captures; frames, events, table, counters and per-rule counters
    must agree (test_kernel_diff's comparison)."""
    from .harness import check_expectations
    from .test_kernel_diff import run_engine
    group = REJECT_SCENARIOS if scenarios == "reject" else _notrack_scenarios()
    with KernelLab(rules, workdir=tmp_path / "lab") as lab:
        assert _listed_ruleset(lab) == parse_rules(rules)      # read back as written
        recs = [(sc, lab.run_scenario(sc)) for sc in group]
    for sc, rec in recs:
        problems = check_expectations(sc.expect, rec)
        assert not problems, f"{sc.name}: the kernel did otherwise: {problems}\n{rec.describe()}"
        res = run_engine(sc, rec, tmp_path / sc.name)
        diff = compare(rec, res)
        assert diff.ok, diff.render(sc.name, sc.description)
        engine = {(k[0].split()[-1], k[1], k[2]): tuple(v)      # "inet filter" -> "filter"
                  for k, v in res.ruleset.counters.items()}
        assert engine == rec.rule_counters, sc.name


@pytest.mark.kernel
def test_typeof_sets_survive_the_kernel_and_nft_list_ruleset(tmp_path):
    """A rule set with sets declared `typeof EXPR`, auto-merge and flags constant, as
    tutorials write them: nft -f takes it, and `nft list ruleset` reads back the same."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "rules" / "test_nft_parse.py"
    spec = importlib.util.spec_from_file_location("nft_parse_cases", path)
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    with KernelLab(cases.TYPEOF_SETS, workdir=tmp_path / "lab") as lab:
        assert _listed_ruleset(lab) == parse_rules(cases.TYPEOF_SETS)
