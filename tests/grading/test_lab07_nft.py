"""Lab 07's nft variant: the same incidents, r's rules written in nft (as lab 06's).

``student/nft/`` and ``solution/nft/`` hold the same NAME.toml as ``student/`` and
``solution/``, and NAME.rules in nft syntax.  Through the real grader the nft solution
scores full marks and the nft skeleton fails exactly the tests its TODOs list, offline and
(as root) live; each incident's broken rules in nft (scenarios/NAME.nft) do to the recorded
traffic exactly what their iptables forms do.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nattrack.exercises.scenarios import load_lab_module
from nattrack.netfilter.rulesfile import parse_rules

from .test_labs_grade import check_lab

LAB = Path(__file__).resolve().parents[2] / "labs" / "07-incidents"
ROOT = os.geteuid() == 0
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _scenarios():
    return load_lab_module(LAB / "scenarios.py", "nattrack_lab07_scenarios")


def _check(mode: str) -> None:
    check_lab(LAB, mode, "nft")


def test_the_nft_variant_has_every_file_in_nft():
    S = _scenarios()
    for folder in ("student/nft", "solution/nft"):
        for name in S.SCENARIOS:
            text = (LAB / folder / f"{name}.rules").read_text()
            assert parse_rules(text, name).syntax == "nft", (folder, name)
            assert (LAB / folder / f"{name}.toml").read_text() == \
                (LAB / folder).parent.joinpath(f"{name}.toml").read_text()


def _outcome(o):
    return ([(oif, str(p)) for oif, p in o.sent], o.dropped, o.races, o.stats)


@pytest.mark.parametrize("name", _scenarios().SCENARIOS)
def test_an_incidents_nft_rules_do_what_its_iptables_rules_do(name):
    S = _scenarios()
    assert _outcome(S.replay(name, None, syntax="nft")) == _outcome(S.replay(name, None))
    solution = {syntax: S.fix_from_dir(name, LAB / folder)
                for syntax, folder in (("iptables", "solution"), ("nft", "solution/nft"))}
    assert _outcome(S.replay(name, solution["nft"])) == _outcome(S.replay(name, solution["iptables"]))


def test_lab07_nft_offline():
    _check("offline")


def test_lab07_nft_live():
    if not ROOT:
        if CI:
            pytest.fail("live grading needs root (CI must run as root)", pytrace=False)
        pytest.skip("live grading needs root")
    _check("live")
