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
