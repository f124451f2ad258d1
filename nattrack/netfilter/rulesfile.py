"""A rules file in either syntax: iptables-save text or an nft script, read into one Ruleset.

The one place that knows both parsers (userspace: ``iptables.py`` reads what
iptables-restore reads, ``nft.py`` what ``nft -f`` reads), so that the rule model and the
rule set below them know neither.  ``is_nft()`` tells the two apart; ``to_nft()`` and
``to_iptables_restore()`` write a rule set of either syntax in the other's (or its own).
"""
from __future__ import annotations

import os

from .iptables import parse_iptables, write_iptables
from .nft import parse_nft, to_iptables, write_nft
from .ruleset import Ruleset

__all__ = ["is_nft", "nat_helper_modules", "parse_rules", "load_rules", "to_nft",
           "to_iptables_restore"]


def is_nft(text: str) -> bool:
    """Is this rules text nft syntax?  Its first line that is not blank or a
    comment starts with ``table``, ``flush ruleset``, ``add`` or ``define``,
    or the file starts with an nft ``#!`` line; iptables-save text starts
    with ``*TABLE``."""
    if text.startswith("#!") and "nft" in text.split("\n", 1)[0]:
        return True
    for line in text.split("\n"):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        return words[0] in ("table", "add", "define") or words[:2] == ["flush", "ruleset"]
    return False


def nat_helper_modules(text: str) -> list[str]:
    """The kernel modules a rules text needs loaded by hand: a rule that attaches a helper
    (``-j CT --helper``, ``ct helper``) makes the kernel load only the helper's conntrack
    half (nf_conntrack_helper_try_module_get()); on a modular kernel (Debian's) its NAT
    half, nf_nat_ftp, must be asked for, or FTP through NAT keeps the private address in
    PORT.  Built in (as on this project's 6.18), loading it is a no-op."""
    return ["nf_nat_ftp"] if "helper" in text else []


def parse_rules(text: str, filename: str = "<rules>") -> Ruleset:
    """Parse iptables-save or nft text (told apart by is_nft()); raise
    RulesError on anything unsupported."""
    if is_nft(text):
        return parse_nft(text, filename)
    return parse_iptables(text, filename)


def load_rules(path: str | os.PathLike) -> Ruleset:
    """parse_rules() of the file at ``path``, named by it in errors."""
    name = os.fspath(path)
    with open(name, encoding="utf-8", newline="") as f:
        return parse_rules(f.read(), name)


def to_nft(rs: Ruleset) -> str:
    """The rule set as an ``nft -f`` file (nft.write_nft(); an iptables one translated)."""
    return write_nft(rs)


def to_iptables_restore(rs: Ruleset, canonical: bool = False) -> str:
    """The rule set as ``iptables-restore`` text (iptables.write_iptables()).  An nft rule
    set is translated first (nft.to_iptables(), an error where iptables has no equivalent)
    and written as iptables-save would."""
    if rs.bases:
        return write_iptables(to_iptables(rs), canonical=True)
    return write_iptables(rs, canonical)
