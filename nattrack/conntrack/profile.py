"""Kernel behaviour profiles: where the kernels a class runs differ in what a lab sees.

The engine models the newest kernel (6.18).  A class may run Debian 12's 6.1,
Debian 13's 6.12 or another LTS kernel; where those behave differently in
conntrack or NAT, and a lab can see it, the difference is a named behaviour
here, with the upstream commit that introduced it and the first release that
has it.  A :class:`KernelProfile` says which behaviours one kernel series has;
the engine carries one (``ConntrackTable.profile``, default :data:`NEWEST`) and
tests it with one ``if`` at the place the kernel differs.

Stable kernels get fixes backported; a profile follows the series as first
released (``6.1`` = v6.1 plus what Debian 12's 6.1 was seen to do, see
docs/kernel-profiles.md).  Only differences with a cited commit are modelled.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Behaviour:
    """One observable change in conntrack/NAT: present from ``since`` on."""
    name: str
    since: tuple[int, int]
    commit: str
    subject: str
    what: str


BEHAVIOURS: tuple[Behaviour, ...] = (
    Behaviour(
        "snat_evicts_closing", (6, 5), "4589725502871e77d06464f731f92fd9173e2be6",
        "netfilter: snat: evict closing tcp entries on reply tuple collision",
        "a new TCP SYN whose SNAT port search finds only ports held by closing "
        "(TIME_WAIT or later) SNATed entries evicts one in the last 32 tries and reuses its "
        "port; before, the SYN clashes at confirmation (insert_failed) and is dropped"),
    Behaviour(
        "dnat_range_from_start", (6, 8), "0f1ae2821fa4b13ab0f5ad7ff89fa57efcb04fe0",
        "netfilter: nat: restore default DNAT behavior",
        "DNAT to a port range without --random takes the range's first free port; before, "
        "a random port of the range, as if --random were given"),
    Behaviour(
        "gre_clash", (6, 5), "d671fd82eaa9bceedd48ea2b0679a9a6bbcd6532",
        "netfilter: conntrack: allow insertion clash of gre protocol",
        "GRE has allow_clash: two GRE packets of one new flow racing to confirm are resolved "
        "as UDP's are (merged, or the loser inserted in the reply direction only); before, "
        "the later one is dropped (insert_failed)"),
    Behaviour(
        "clash_merge_reverse", (6, 12), "a4e6a1031e7769c63d17b8e97d79e25dd7271fd3",
        "netfilter: conntrack: add clash resolution for reverse collisions",
        "a clashing entry merges with the winner when their tuples are the same either way "
        "round (nf_ct_can_merge: nf_ct_match or nf_ct_match_reverse); before, when they are "
        "the same in the same direction or the winner has no NAT done (no SNAT_DONE or "
        "DNAT_DONE bit: no nat hook saw it), whatever its tuples"),
)
BY_NAME = {b.name: b for b in BEHAVIOURS}


@dataclass(frozen=True)
class KernelProfile:
    """Which behaviours one kernel series has (attribute per :data:`BEHAVIOURS` name)."""
    name: str                       # "6.12"
    version: tuple[int, int]
    snat_evicts_closing: bool
    dnat_range_from_start: bool
    gre_clash: bool
    clash_merge_reverse: bool

    @classmethod
    def of(cls, name: str) -> KernelProfile:
        version = _series(name)
        return cls(name, version, **{b.name: version >= b.since for b in BEHAVIOURS})

    def differences(self) -> list[Behaviour]:
        """The behaviours this kernel lacks, compared with the newest profile."""
        return [b for b in BEHAVIOURS if not getattr(self, b.name)]

    def describe(self) -> str:
        """One line: which kernel is modelled and what it lacks."""
        missing = self.differences()
        if not missing:
            return f"Linux {self.name} (all modelled behaviours of the newest kernel)"
        return (f"Linux {self.name} (without: "
                + ", ".join(f"{b.name} {b.commit[:12]} v{b.since[0]}.{b.since[1]}" for b in missing)
                + ")")


def _series(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"kernel version {text!r}: expected MAJOR.MINOR, e.g. 6.12")
    return int(m.group(1)), int(m.group(2))


PROFILE_NAMES = ("6.1", "6.6", "6.12", "6.18")
PROFILES = {name: KernelProfile.of(name) for name in PROFILE_NAMES}
NEWEST = PROFILES[PROFILE_NAMES[-1]]


def profile_for_release(release: str) -> KernelProfile:
    """The newest profile not newer than ``release`` (``uname -r``, e.g.
    ``6.12.118+deb13-amd64``); a kernel older than every profile gets the oldest,
    a newer one the newest."""
    version = _series(release)
    fitting = [p for p in PROFILES.values() if p.version <= version]
    return fitting[-1] if fitting else PROFILES[PROFILE_NAMES[0]]


def get_profile(name: str | None) -> KernelProfile:
    """``--kernel NAME``: one of :data:`PROFILE_NAMES`, ``running`` (this machine's
    kernel) or None (the newest)."""
    if name is None:
        return NEWEST
    if name == "running":
        return running_profile()
    if name not in PROFILES:
        raise ValueError(f"--kernel {name!r}: expected one of {', '.join(PROFILE_NAMES)} "
                         "or running")
    return PROFILES[name]


def running_profile() -> KernelProfile:
    """The profile of the kernel this process runs on."""
    import os
    return profile_for_release(os.uname().release)
