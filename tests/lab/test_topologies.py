"""topologies/*.py: import-safe, well-formed, and each builds and stops cleanly."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nattrack.lab import IFACE_PREFIX, TOPOLOGY_DIR

from .conftest import REPO, make_run_dir

NAMES = ("basic", "clash", "seed", "portforward", "double", "incidents")


def _netns_count() -> int:
    from nattrack.lab.procs import netns_inode, pids
    return len({netns_inode(p) for p in pids()} - {None})


def test_import_defines_classes_and_starts_nothing():
    """Importing (as Python does) or exec()ing (as `mn --custom` does) a topology file
    starts no process and no namespace, and defines `topos` (and `CLI` for mn)."""
    code = f"""
import os, sys, glob
from nattrack.lab.procs import netns_inode, pids
before = {{netns_inode(p) for p in pids()}} - {{None}}
nprocs = len(pids())
for f in sorted(glob.glob({str(TOPOLOGY_DIR)!r} + '/[a-z]*.py')):
    g = {{}}
    exec(compile(open(f).read(), f, 'exec'), g, g)      # what mn --custom does
    assert isinstance(g['topos'], dict) and g['topos'], f
    assert callable(g['CLI']), f
    leaked = [k for k in g if not k.startswith('_') and k not in ('topos', 'CLI')
              and not isinstance(g[k], type)]
    assert not leaked, (f, leaked)                      # mn copies every global it sees
import mininet.net
assert mininet.net.Mininet.inited is False, 'something built a network'
after = {{netns_inode(p) for p in pids()}} - {{None}}
assert after == before, 'a namespace appeared'
print('ok', len(pids()) - nprocs)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(REPO), timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok")


def test_the_registry_knows_every_scene():
    from nattrack.lab.topologies import all_topologies, get_topology
    topos = all_topologies()
    assert set(NAMES) <= set(topos)
    assert get_topology(str(TOPOLOGY_DIR / "basic.py")) is get_topology(
        str(TOPOLOGY_DIR / "basic.py") + ":basic")
    from nattrack.lab import LabError
    with pytest.raises(LabError, match="unknown topology 'nope'"):
        get_topology("nope")


@pytest.mark.parametrize("name", NAMES)
def test_topology_metadata(name):
    """Interface names carry the prefix and fit IFNAMSIZ; every NAT router has a rules
    file that nattrack parses; addresses are where the issue puts them."""
    from nattrack.lab.topologies import get_topology
    from nattrack.netfilter.rulesfile import load_rules
    topo = get_topology(name)(mode="python", run_dir="/nonexistent", wait=False)
    d = topo.describe()
    assert d["topo"] == name and d["primary"] in d["routers"] and d["probe"]
    for node, info in d["nodes"].items():
        for ifname in info["ifaces"]:
            assert ifname.startswith(IFACE_PREFIX + node + "-") and len(ifname) <= 15
    for r, spec in d["routers"].items():
        assert Path(spec["rules"]).is_file()
        rs = load_rules(spec["rules"])
        assert rs is not None
        for ifname in spec["ifaces"]:
            assert ifname in d["nodes"][r]["ifaces"]
        rules = [l for l in Path(spec["rules"]).read_text().splitlines() if l.startswith("-A")]
        for word in " ".join(rules).split():
            if word.startswith(IFACE_PREFIX) and "-" in word:
                assert word in spec["ifaces"], f"{spec['rules']} names {word}, not an iface of {r}"
    addrs = {c.split("/")[0] for i in d["nodes"].values() for c in i["ifaces"].values() if c}
    if name in ("basic", "clash", "portforward", "double"):
        assert {"10.0.0.1", "10.0.0.10", "203.0.113.1", "203.0.113.10"} <= addrs
    if name == "seed":
        assert {"192.168.122.148", "192.168.199.132", "198.51.100.12"} <= addrs
    if name == "double":
        assert "100.64.0.1" in addrs and "100.64.0.2" in addrs


@pytest.mark.needs_root
@pytest.mark.parametrize("name", NAMES)
def test_builds_forwards_and_stops_cleanly(name):
    """Under Mininet: up (the probe ping went through nattrack's router), the rules
    load unchanged into the kernel, then down with nothing left."""
    from nattrack.lab import Paths
    from nattrack.lab.cleanup import root_leftover_ifaces
    from nattrack.lab.net import LabNet
    from nattrack.lab.procs import processes_in_netns
    run = make_run_dir()
    ifaces_before = set(root_leftover_ifaces())
    lab = LabNet(name, mode="python", paths=Paths(run))
    t0 = time.monotonic()
    try:
        lab.start()
        assert time.monotonic() - t0 < 20
        netns = list(lab.netns.values())
        assert len(set(netns)) == len(lab.topo.nodes_info)          # one namespace each
        for r in lab.routers.values():
            assert r.alive() and not r.kernel_fallback
            # the same file the router runs goes to a kernel unchanged
            p = subprocess.run(["unshare", "--net", "--", "sh", "-c",
                                f"iptables-restore --test < {r.spec.rules}"],
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
    finally:
        lab.stop()
    assert processes_in_netns(netns) == []
    assert set(root_leftover_ifaces()) <= ifaces_before
    assert not list(run.glob("*.sock"))
    shutil.rmtree(run, ignore_errors=True)
