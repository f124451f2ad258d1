"""``nattrack doctor``: is this machine ready for the live lab?

One line per problem, each with its fix; notes (things that work but are worth
knowing) start with ``note:`` and do not fail the check.  Exit 0 when there is no
problem, 1 otherwise.  Kernel features are tried in a scratch network namespace
(``unshare --net``) that disappears with the command; nothing on the machine is
changed.
"""
from __future__ import annotations

import grp
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import nattrack

from . import GROUP, Paths, router_available
from .cleanup import leftovers

TOOLS = {"ip": "iproute2", "iptables": "iptables", "iptables-restore": "iptables",
         "nft": "nftables",
         "conntrack": "conntrack", "ethtool": "ethtool",
         "ping": "iputils-ping", "tcpdump": "tcpdump", "mnexec": "mininet",
         "setpriv": "util-linux", "unshare": "util-linux"}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def check_root(rep: Report) -> bool:
    if os.geteuid() != 0:
        rep.problem("not root: the lab service and these checks need it; run "
                    "`sudo nattrack doctor` (lab clients need only the nattrack group)")
        return False
    return True


def check_tools(rep: Report) -> None:
    missing: dict[str, str] = {}
    for tool, pkg in TOOLS.items():
        if shutil.which(tool) is None:
            missing[tool] = pkg
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        rep.problem(f"missing tools {', '.join(sorted(missing))}: run "
                    f"`sudo apt-get install {pkgs}` (or scripts/setup.sh)")


def check_python(rep: Report) -> None:
    from . import mininet_available
    if mininet_available():
        rep.problem(f"Mininet is not importable from {sys.executable}: run "
                    f"`sudo apt-get install mininet` and use the kit's .venv "
                    f"(made with --system-site-packages)")
    if importlib.util.find_spec("scapy") is None:
        rep.problem("scapy is not importable: run scripts/setup.sh (pip install -e .)")
    if not router_available():
        rep.note("the router process (nattrack.router) is missing: lab up works in kernel "
                 "mode only")
    rep.note(f"engine build: {nattrack.BUILD}")


def check_kernel(rep: Report) -> None:
    if not os.path.isdir("/proc/sys/net/netfilter"):
        rep.problem("no /proc/sys/net/netfilter: the kernel lacks connection tracking "
                    "(load nf_conntrack: `sudo modprobe nf_conntrack`, or use a kernel with "
                    "CONFIG_NF_CONNTRACK)")
    script = ("set -e; ip link set lo up; "
              "iptables -t nat -A OUTPUT -d 127.0.0.2 -j DNAT --to-destination 127.0.0.1; "
              "iptables -t nat -L -n >/dev/null; "
              "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=10; "
              "ping -c1 -W1 127.0.0.2 >/dev/null; "
              "conntrack -L -p icmp 2>/dev/null | grep -q 'dst=127.0.0.2 .*src=127.0.0.1' || "
              "{ echo 'no DNAT-ed ICMP entry in conntrack -L'; exit 3; }; "
              "ip link add ntdoc-a type veth peer name ntdoc-b; "
              "ethtool -K ntdoc-a rx off tx off tso off gso off gro off >/dev/null; "
              "ethtool -k ntdoc-a | grep -q 'rx-checksumming: off' || "
              "{ echo 'offloads stay on on a veth'; exit 4; }")
    p = _run(["unshare", "--net", "--", "sh", "-c", script])
    if p.returncode != 0:
        why = _first_line(p.stdout) or _first_line(p.stderr) or f"exit {p.returncode}"
        if "unshare" in (p.stderr or "") and "Operation not permitted" in (p.stderr or ""):
            rep.problem(f"cannot create network namespaces here ({why}): run on a VM or "
                        f"a container with CAP_SYS_ADMIN (not Docker's default seccomp)")
        elif p.returncode == 4:
            rep.problem(f"offloads: {why}: captures will show wrong checksums (update ethtool "
                        f"or the kernel)")
        else:
            rep.problem(f"conntrack/NAT does not work in a scratch namespace ({why}): check "
                        f"the kernel has nf_conntrack, nf_nat and iptable_nat (or nft_nat)")
    p = _run(["unshare", "--net", "--", "sh", "-c",
              "ip link add ntdoc-a type veth peer name ntdoc-b && "
              "tc qdisc add dev ntdoc-a root netem delay 1ms"])
    if p.returncode != 0:
        rep.note("no sch_netem: link delay and loss (TCLink) are unavailable; the lab does "
                 "not need them")


def _count_rules(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-A "))


def iptables_backend() -> tuple[str, str]:
    """(backend, version line): ``iptables -V`` ends in "(nf_tables)" or "(legacy)";
    backend "" when it says neither (or iptables is missing)."""
    version = _first_line(_run(["iptables", "-V"]).stdout)
    return ("nf_tables" if "(nf_tables)" in version else "legacy" if "(legacy)" in version
            else ""), version


def legacy_table_missing(table: str = "nat") -> str | None:
    """The error line when the kernel has no legacy xtables TABLE (Linux 6.17+ without
    CONFIG_NETFILTER_XTABLES_LEGACY: "Table does not exist"), tried in a scratch
    namespace; None when it exists or iptables-legacy is not installed."""
    if shutil.which("iptables-legacy") is None:
        return None
    p = _run(["unshare", "--net", "--", "iptables-legacy", "-t", table, "-L", "-n"])
    if p.returncode != 0 and "Table does not exist" in p.stderr + p.stdout:
        return _first_line(p.stderr) or _first_line(p.stdout)
    return None


def check_backends(rep: Report) -> None:
    current, version = iptables_backend()
    if not current:
        return
    rep.note(f"iptables backend: {current} ({version}); kernel mode loads nft rules files "
             f"with nft -f either way")
    missing = legacy_table_missing()
    if missing and current == "legacy":
        rep.problem(f"`iptables` is the legacy backend but this kernel has no legacy tables "
                    f"({missing}): switch to nf_tables with `sudo update-alternatives --set "
                    f"iptables /usr/sbin/iptables-nft` (or boot a kernel built with "
                    f"CONFIG_NETFILTER_XTABLES_LEGACY=y)")
    elif missing:
        rep.note("this kernel has no legacy iptables tables (CONFIG_NETFILTER_XTABLES_LEGACY "
                 "off: iptables-legacy says \"Table does not exist\"): fine, the kit uses "
                 "nf_tables; keep `iptables` on iptables-nft (`sudo update-alternatives --set "
                 "iptables /usr/sbin/iptables-nft`)")
    other = "iptables-legacy-save" if current == "nf_tables" else "iptables-nft-save"
    if shutil.which(other) is None:
        return
    q = _run([other])
    n = _count_rules(q.stdout) if q.returncode == 0 else 0
    if n:
        name = "legacy" if current == "nf_tables" else "nf_tables"
        rep.problem(f"iptables backends mixed: `iptables` is {current} but {n} rule(s) sit in "
                    f"the {name} backend ({other}), where `iptables -L` never shows them: move "
                    f"them ({other} | iptables-restore) or choose one backend with "
                    f"`update-alternatives --config iptables`")


def check_leaks(rep: Report) -> None:
    """Rules of other software that would see bridged lab traffic in the root namespace."""
    save = _run(["iptables-save", "-t", "filter"]).stdout
    docker = "DOCKER" in save or ":DOCKER-USER" in save
    fwd_drop = ":FORWARD DROP" in save
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
            brnf = f.read().strip() == "1"
    except OSError:
        brnf = False
    what = " and ".join(x for x in (("Docker's chains" if docker else ""),
                                    ("a FORWARD DROP policy" if fwd_drop else "")) if x)
    if what and brnf:
        rep.problem(f"{what} in the root namespace filter bridged traffic "
                    f"(bridge-nf-call-iptables=1): nattrack's lab keeps its bridges in their own "
                    f"namespaces and is not affected, but `mn --switch lxbr` labs are; fix: "
                    f"`sudo sysctl -w net.bridge.bridge-nf-call-iptables=0` (or "
                    f"`iptables -I DOCKER-USER -i s+ -j ACCEPT`)")
    elif what:
        rep.note(f"{what} in the root namespace: the lab's traffic never crosses it")


def check_strays(rep: Report) -> None:
    left = leftovers(Paths())
    if left:
        rep.problem(f"a crashed lab left {'; '.join(left)}: run `sudo nattrack lab down --force`")


def check_group(rep: Report) -> None:
    try:
        g = grp.getgrnam(GROUP)
    except KeyError:
        rep.note(f"no {GROUP} group yet: `lab up` creates it; add users with "
                 f"`sudo adduser USER {GROUP}`")
        return
    user = os.environ.get("SUDO_USER")
    if user and user != "root" and user not in g.gr_mem:
        rep.note(f"{user} is not in the {GROUP} group: `sudo adduser {user} {GROUP}` to use "
                 f"the lab without sudo")


def check_kernel_profile(rep: Report) -> None:
    """Which kernel's behaviour the engine follows here (``--kernel``, default running)."""
    from ..conntrack.profile import running_profile
    rep.note(f"kernel {os.uname().release}: the engine follows "
             f"{running_profile().describe()} (docs/kernel-profiles.md)")


def doctor() -> Report:
    rep = Report()
    root = check_root(rep)
    check_kernel_profile(rep)
    check_tools(rep)
    check_python(rep)
    if root:
        check_kernel(rep)
        check_backends(rep)
        check_leaks(rep)
        check_strays(rep)
    check_group(rep)
    return rep


def run_doctor(out=None) -> int:
    out = out or sys.stdout
    from .lifecycle import runnable             # the fixes name nattrack as it runs here
    rep = doctor()
    for p in rep.problems:
        out.write(f"nattrack: doctor: {runnable(p)}\n")
    for n in rep.notes:
        out.write(f"note: {runnable(n)}\n")
    if not rep.problems:
        out.write("doctor: all fine\n")
    return 1 if rep.problems else 0
