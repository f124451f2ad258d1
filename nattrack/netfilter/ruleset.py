"""A loaded rule set and its evaluation: the tables of chains of rules, walked for a packet.

Models ipt_do_table() (ip_tables.c) for an iptables rule set and nft_do_chain() with the
base chains' registration on their hooks (nf_register_net_hook() orders them by priority)
for an nft one.  The engine asks it for a NAT rule (``first_match``), a filter verdict
(``decide``/``verdict``) and the raw chains' notrack and helper (``raw``, ``raw_helper``).
A rule set comes from a parser (``iptables.py``, ``nft.py``); ``rulesfile.py`` reads a file
in either syntax and writes one out.
"""
from __future__ import annotations

from typing import Iterable

from ..conntrack.uapi import NF_IP_PRI_CONNTRACK, NF_IP_PRI_RAW
from .xtables import BUILTIN_CHAINS, BUILTIN_TARGETS, Rule, match

__all__ = ["Ruleset"]

_JUMP, _RETURN, _NONE, _FINAL = range(4)


class Ruleset:
    """The parsed file: ``tables[table][chain] -> [Rule]`` and ``policies[table][chain]``.

    Every built-in chain of a table present in the file is in ``tables`` (maybe
    empty) and in ``policies`` (ACCEPT unless a ``:CHAIN POLICY`` line says
    otherwise: the policy of a fresh namespace); user chains are in
    ``tables`` only.  Tables appear in file order.
    """

    def __init__(self, tables: dict[str, dict[str, list[Rule]]] | None = None,
                 policies: dict[str, dict[str, str]] | None = None,
                 filename: str = "<rules>", bases: dict | None = None,
                 sets: dict | None = None) -> None:
        self.tables = tables if tables is not None else {}
        self.policies = policies if policies is not None else {}
        self.filename = filename
        # nft only: bases[table][chain] = (type, HOOK, priority) for each base
        # chain, sets[table][name] = nft.NamedSet.  Empty for iptables files.
        self.bases = bases if bases is not None else {}
        self.sets = sets if sets is not None else {}
        # (type, HOOK) -> [(priority, table, chain)], in the kernel's order
        # (nf_register_net_hook() sorts a hook's entries by priority).
        self.hooks: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        for table, chains in self.bases.items():
            for chain, (kind, hook, prio) in chains.items():
                if kind == "filter" and prio <= NF_IP_PRI_CONNTRACK:
                    kind = "raw"                 # runs before conntrack: raw()
                self.hooks.setdefault((kind, hook), []).append((prio, table, chain))
        if not self.bases and "raw" in self.tables:      # iptables' raw table (NF_IP_PRI_RAW)
            for chain in BUILTIN_CHAINS["raw"]:
                self.hooks[("raw", chain)] = [(NF_IP_PRI_RAW, "raw", chain)]
        for entries in self.hooks.values():
            entries.sort(key=lambda e: e[0])
        # Does any rule attach a conntrack helper?  (Then the router asks raw_helper().)
        self.helpers = any(r.helper for chains in self.tables.values()
                           for rules in chains.values() for r in rules)
        self._helper_pending: tuple | None = None
        # (table, chain, index) -> [packets, bytes] each rule matched, as the kernel's
        # per-rule counters count (ipt_do_table()'s ADD_COUNTER, nft's `counter`).
        self.counters: dict[tuple[str, str, int], list[int]] = {}
        # table -> chain -> [(rule, predicates, kind, counter)], for first_match().
        self._compiled: dict[str, dict[str, list[tuple]]] = {}
        for table, chains in self.tables.items():
            comp = self._compiled[table] = {}
            for chain, rules in chains.items():
                comp[chain] = [(r, r._preds, _kind(r, chains),
                                self.counters.setdefault((table, chain, i), [0, 0]))
                               for i, r in enumerate(rules)]

    @property
    def syntax(self) -> str:
        """"nft" for a rule set read from nft syntax, else "iptables"."""
        return "nft" if self.bases else "iptables"

    # --- evaluation ------------------------------------------------------------------------

    match = staticmethod(match)

    def first_match(self, table: str, chain: str, pkt, ctinfo: int | None,
                    iif: str | None, oif: str | None) -> Rule | None:
        """The rule whose verdict applies to ``pkt`` in ``table``/``chain``, or None.

        Walks the chain in order, following jumps into user chains and coming
        back on RETURN or at their end (ipt_do_table()'s stack).  Returns the
        first matching rule with a final target (ACCEPT, DROP, SNAT, DNAT,
        MASQUERADE); None when the built-in chain runs out or RETURNs, i.e.
        when its policy applies.  Rules without a target are skipped, and a
        table missing from the file gives None.

        For an nft rule set, ``first_match("nat", HOOK, ...)`` runs the nat
        base chains on that hook in priority order like nf_nat_inet_fn(): an
        accept ends one chain only, the first NAT (or drop) rule wins.
        """
        if self.bases and (table, chain) in _HOOK_KINDS:
            found = None
            for _prio, tkey, base in self.hooks.get((table, chain), ()):
                rule = self._walk(tkey, base, pkt, ctinfo, iif, oif)
                if rule is not None and rule.target != "ACCEPT":
                    return rule
                found = found or rule
            return found
        return self._walk(table, chain, pkt, ctinfo, iif, oif)

    def _walk(self, table: str, chain: str, pkt, ctinfo: int | None,
              iif: str | None, oif: str | None) -> Rule | None:
        """ipt_do_table() / nft_do_chain() over one base chain: see first_match()."""
        chains = self._compiled.get(table)
        if chains is None:
            return None
        rules = chains.get(chain)
        if rules is None:
            raise KeyError(f"table {table} has no chain {chain!r}")
        stack: list[tuple[list, int]] = []
        i = 0
        while True:
            if i < len(rules):
                rule, preds, kind, count = rules[i]
                i += 1
                for pred in preds:
                    if not pred(pkt, ctinfo, iif, oif):
                        break
                else:
                    count[0] += 1
                    count[1] += pkt.tot_len
                    if rule.helper and (self._helper_pending is None
                                        or self._helper_pending[0] is not pkt):
                        self._helper_pending = (pkt, rule.helper)   # nft `ct helper set`
                    if kind == _FINAL:
                        return rule
                    if kind == _JUMP:
                        if not rule.goto:
                            stack.append((rules, i))
                        rules, i = chains[rule.target], 0
                    elif kind == _RETURN:
                        if not stack:
                            return None
                        rules, i = stack.pop()
            elif stack:
                rules, i = stack.pop()
            else:
                return None

    def raw(self, hook: str, pkt, iif: str | None, oif: str | None) -> tuple[bool, bool]:
        """(drop, notrack) for ``pkt`` in the raw-priority filter chains on ``hook``
        (PREROUTING, OUTPUT), which run before conntrack (NF_IP_PRI_RAW): the packet has
        no entry yet (ct state is invalid there).  A ``notrack`` rule marks the packet and
        the chain goes on; accept ends the chain, drop the packet.  No jumps (nft.py
        refuses them there)."""
        notrack = False
        for _prio, tkey, base in self.hooks.get(("raw", hook), ()):
            for rule, preds, _kind, count in self._compiled[tkey][base]:
                if all(pred(pkt, None, iif, oif) for pred in preds):
                    count[0] += 1
                    count[1] += pkt.tot_len
                    notrack = notrack or rule.notrack
                    if rule.target == "DROP":
                        return True, notrack
                    if rule.target == "ACCEPT":
                        break
            else:
                if self.policies[tkey][base] == "DROP":
                    return True, notrack
        return False, notrack

    def take_helper(self, pkt) -> str:
        """The helper an nft ``ct helper set`` gave ``pkt`` in the chains just walked ("")
        (nft_ct_helper_obj_eval(): the first one counts)."""
        pending, self._helper_pending = self._helper_pending, None
        return pending[1] if pending is not None and pending[0] is pkt else ""

    def raw_helper(self, hook: str, pkt, iif: str | None, oif: str | None) -> str:
        """The helper the raw chains on ``hook`` give a new entry of ``pkt`` ("" for none):
        the first matching ``-j CT --helper`` (xt_ct_target() leaves a packet that already
        has a template alone), walked as raw() walks."""
        for _prio, tkey, base in self.hooks.get(("raw", hook), ()):
            for rule, preds, _kind, _count in self._compiled[tkey][base]:
                if all(pred(pkt, None, iif, oif) for pred in preds):
                    if rule.helper or rule.notrack:
                        return rule.helper
                    if rule.target in ("ACCEPT", "DROP"):
                        break
        return ""

    def verdict(self, chain: str, pkt, ctinfo: int | None, iif: str | None,
                oif: str | None) -> str:
        """"ACCEPT", "DROP" or "REJECT" for ``pkt`` in filter ``chain`` (INPUT, FORWARD,
        OUTPUT): decide() without the rule."""
        return self.decide(chain, pkt, ctinfo, iif, oif)[0]

    def decide(self, chain: str, pkt, ctinfo: int | None, iif: str | None,
               oif: str | None) -> tuple[str, Rule | None]:
        """The verdict for ``pkt`` in filter ``chain`` and the rule that gave it (None
        when a policy did).

        The chain's policy applies when no rule decides; without a filter
        table everything is accepted.  An nft rule set runs every filter base
        chain on the hook, in priority order: accept ends one chain, a drop or
        reject (rule or policy) ends the packet.
        """
        if self.bases:
            for _prio, tkey, base in self.hooks.get(("filter", chain), ()):
                rule = self._walk(tkey, base, pkt, ctinfo, iif, oif)
                decided = rule.target if rule is not None else self.policies[tkey][base]
                if decided != "ACCEPT":
                    return decided, rule
            return "ACCEPT", None
        policies = self.policies.get("filter")
        if policies is None:
            return "ACCEPT", None
        if chain not in policies:
            raise KeyError(f"the filter table has no built-in chain {chain!r}")
        rule = self.first_match("filter", chain, pkt, ctinfo, iif, oif)
        return (rule.target, rule) if rule is not None else (policies[chain], None)

    def rules(self) -> Iterable[Rule]:
        for chains in self.tables.values():
            for rules in chains.values():
                yield from rules

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ruleset):
            return NotImplemented
        return (self.tables == other.tables and self.policies == other.policies
                and self.bases == other.bases and self.sets == other.sets)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = sum(1 for _ in self.rules())
        return f"<Ruleset {self.filename} tables={list(self.tables)} rules={n}>"


# The (type, chain) pairs the engine asks for: nat/core.py and ipv4/stack.py.
_HOOK_KINDS = {("nat", c) for c in BUILTIN_CHAINS["nat"]} | {
    ("filter", c) for c in BUILTIN_CHAINS["filter"]}


def _kind(rule: Rule, chains: dict) -> int:
    if rule.target == "RETURN":
        return _RETURN
    if not rule.target:
        return _NONE
    if rule.target in chains and rule.target not in BUILTIN_TARGETS:
        return _JUMP
    return _FINAL
