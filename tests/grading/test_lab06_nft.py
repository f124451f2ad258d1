"""Lab 06's nft variant (issue 12 item 5): the same six scenarios, r's rules written in nft.

``student/nft/`` and ``solution/nft/`` hold the same NAME.toml as ``student/`` and
``solution/``, and NAME.rules in nft syntax (inside solution/, which no package ships) (the lab reads either syntax; the live grader
loads nft with ``nft -f``).  Through the real grader the nft solution scores full marks
and the nft skeleton fails exactly the tests its TODOs list, offline and (as root) live;
each scenario's broken rules in nft (scenarios/NAME.nft) and the healthy ones
(rules/healthy.nft) do to the recorded traffic exactly what their iptables forms do.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nattrack.exercises.scenarios import load_lab_module
from nattrack.netfilter.rulesfile import load_rules, parse_rules

from .test_labs_grade import check_lab

LAB = Path(__file__).resolve().parents[2] / "labs" / "06-troubleshooting"
ROOT = os.geteuid() == 0
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _scenarios():
    return load_lab_module(LAB / "scenarios.py", "nattrack_lab06_scenarios")


def _check(mode: str) -> None:
    check_lab(LAB, mode, "nft")


def test_the_nft_variant_has_every_file_in_nft():
    S = _scenarios()
    for folder in ("student/nft", "solution/nft"):
        for name in S.SCENARIOS:
            text = (LAB / folder / f"{name}.rules").read_text()
            assert parse_rules(text, name).syntax == "nft", (folder, name)
            toml = (LAB / folder / f"{name}.toml").read_text()
            assert toml.replace("`nft list chain ip filter forward`", "`iptables -L FORWARD -v`") \
                == (LAB / folder).parent.joinpath(f"{name}.toml").read_text()
    assert load_rules(LAB / "rules" / "healthy.nft").syntax == "nft"


def test_no_package_ships_the_nft_answers(tmp_path):
    from nattrack.grading.package import _kit
    kit = _kit(tmp_path, LAB, None)
    shipped = {p.read_bytes() for p in kit.rglob("*") if p.is_file()}
    given = {q.read_bytes() for d in ("student/nft", "scenarios") for q in (LAB / d).iterdir()}
    answers = [p for p in (LAB / "solution" / "nft").iterdir() if p.read_bytes() not in given]
    assert answers and not [p.name for p in answers if p.read_bytes() in shipped]


def _outcome(o):
    return ([(oif, str(p), p.checksum_ok) for oif, p in o.sent], o.dropped, o.not_reaching_r)


@pytest.mark.parametrize("name", _scenarios().SCENARIOS)
def test_a_scenarios_nft_rules_do_what_its_iptables_rules_do(name):
    S = _scenarios()
    ipt, nft = (S.effective(name, None, syntax) for syntax in ("iptables", "nft"))
    assert parse_rules(nft.rules).syntax == "nft" and parse_rules(ipt.rules).syntax != "nft"
    assert _outcome(S.replay(name, nft)) == _outcome(S.replay(name, ipt))
    healthy = S.Config((LAB / "rules" / "healthy.nft").read_text())
    assert _outcome(S.replay(name, ipt.then(healthy))) == \
        _outcome(S.replay(name, ipt.then(S.Config((LAB / "rules" / "healthy.rules").read_text()))))


def test_an_nft_fix_that_does_not_parse_is_one_line_naming_the_file():
    S = _scenarios()
    with pytest.raises(S.KnobError, match=r"^no-masquerade\.rules:2: unsupported .bogus."):
        S.fix_from_texts("no-masquerade", None, "table ip nat {\n\tchain x { bogus }\n}\n")
    with pytest.raises(S.KnobError, match="no table"):
        S.fix_from_texts("no-masquerade", None, "flush ruleset\n")


def test_lab06_nft_offline():
    _check("offline")


def test_lab06_nft_live():
    if not ROOT:
        if CI:
            pytest.fail("live grading needs root (CI must run as root)", pytrace=False)
        pytest.skip("live grading needs root")
    _check("live")
