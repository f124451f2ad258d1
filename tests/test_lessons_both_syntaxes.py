"""Every shipped rules file in both syntaxes (issue 12 item 5).

Each iptables-save lesson (examples/rules/*.rules, examples/demo/home.rules,
labs/*/rules/*.rules, labs/*/scenarios/*.rules) has its nft twin beside it, NAME.nft: the file's leading comments,
one line saying where it comes from, then exactly what `nattrack rules translate NAME.rules`
writes.  This test fails when a twin is missing or no longer equals the translation;
``python tests/test_lessons_both_syntaxes.py --write`` writes them all again.

A lesson written by hand in both syntaxes instead (lab 06's healthy.nft and its scenarios'
.nft files, idiomatic nft) is checked by what it does to recorded traffic, in
tests/grading/test_lab06_nft.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB06 = ROOT / "labs" / "06-troubleshooting"
HAND_WRITTEN = {LAB06 / "rules" / "healthy.nft", *(LAB06 / "scenarios").glob("*.nft")}


def lessons() -> list[Path]:
    return sorted([*ROOT.glob("examples/rules/*.rules"), ROOT / "examples/demo/home.rules",
                   *ROOT.glob("labs/*/rules/*.rules"), *ROOT.glob("labs/*/scenarios/*.rules")])


def twin(path: Path) -> Path:
    return path.with_suffix(".nft")


def nft_twin_text(path: Path) -> str:
    """The twin's text: the lesson's leading comments, where it comes from, the translation."""
    from nattrack.cli.rules import translate
    from nattrack.netfilter.rulesfile import parse_rules
    text = path.read_text(encoding="utf-8")
    head = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        head.append(line + "\n")
    head.append(f"# nft syntax: `nattrack rules translate {path.name}` wrote what follows (edit\n"
                f"# {path.name}, then: python tests/test_lessons_both_syntaxes.py --write)\n")
    return "".join(head) + translate(parse_rules(text, path.name), "nft")


@pytest.mark.parametrize("path", [p for p in lessons() if twin(p) not in HAND_WRITTEN],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_lesson_has_its_nft_twin_equal_to_the_translation(path):
    from nattrack.netfilter.nft import from_iptables
    from nattrack.netfilter.rulesfile import load_rules
    nft = twin(path)
    assert nft.exists(), (f"{nft.relative_to(ROOT)} is missing: "
                          "python tests/test_lessons_both_syntaxes.py --write")
    assert nft.read_text(encoding="utf-8") == nft_twin_text(path), (
        f"{nft.relative_to(ROOT)} is not the translation of {path.name} any more: "
        "python tests/test_lessons_both_syntaxes.py --write")
    assert load_rules(nft) == from_iptables(load_rules(path))


def test_every_nft_file_shipped_has_an_iptables_lesson_or_is_hand_written():
    shipped = {*ROOT.glob("examples/rules/*.nft"), *ROOT.glob("examples/demo/*.nft"),
               *ROOT.glob("labs/*/rules/*.nft"), *ROOT.glob("labs/*/scenarios/*.nft")}
    assert shipped - HAND_WRITTEN == {twin(p) for p in lessons()} - HAND_WRITTEN


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_lessons_both_syntaxes.py --write")
    for p in lessons():
        if twin(p) not in HAND_WRITTEN:
            twin(p).write_text(nft_twin_text(p), encoding="utf-8")
            print(f"wrote {twin(p).relative_to(ROOT)}")
