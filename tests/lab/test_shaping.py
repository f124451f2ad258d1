"""Link shaping of the lab's topologies (nattrack.lab.topo): which links, at what rate,
the override and its errors.  The live effect (tbf in place, a download at the rate,
the shadow exact at it) is tested in test_shadow_range.py."""
from __future__ import annotations

import pytest

from nattrack.lab.topo import DEFAULT_UPLINK_MBIT, RATE_ENV, parse_rate, tbf_cmd
from nattrack.lab.topologies import get_topology


@pytest.mark.parametrize("name, shaped", [
    ("basic", [("r", "ntr-wan", DEFAULT_UPLINK_MBIT)]),
    ("classroom", [("r", "ntr-wan", DEFAULT_UPLINK_MBIT)]),
    ("seed", [("host", "nthost-eth0", 100.0)]),          # shapes its own uplink
])
def test_each_topology_shapes_its_uplink(monkeypatch, name, shaped):
    monkeypatch.delenv(RATE_ENV, raising=False)
    topo = get_topology(name)()
    assert topo.shaped == shaped
    assert topo.describe()["shaping"] == [{"node": n, "iface": i, "mbit": m} for n, i, m in shaped]


def test_the_rate_override_and_zero(monkeypatch):
    monkeypatch.delenv(RATE_ENV, raising=False)
    basic = get_topology("basic")
    assert basic(rate="250").shaped == [("r", "ntr-wan", 250.0)]
    assert basic(rate=0).shaped == []
    monkeypatch.setenv(RATE_ENV, "0")
    assert basic().shaped == []
    assert basic(rate=40).shaped == [("r", "ntr-wan", 40.0)]      # the argument wins


@pytest.mark.parametrize("bad", ["fast", "-1", "1e9", None])
def test_a_bad_rate_is_one_line(bad):
    with pytest.raises(ValueError) as e:
        parse_rate(bad)
    assert "\n" not in str(e.value) and "Mbit/s" in str(e.value)


def test_tbf_burst_holds_a_few_frames_and_4_ms():
    assert tbf_cmd("ntr-wan", 100) == ("tc qdisc replace dev ntr-wan root tbf rate 100mbit "
                                       "burst 50000 latency 20ms")
    assert " burst 16000 " in tbf_cmd("x", 1)
