"""The router's ``rules`` verb without a network: the tables swapped as iptables-restore
swaps them, the connection table and its NAT bindings untouched (docs/control-protocol.md).

The live counterparts (python and kernel mode, under traffic, against the kernel) are in
tests/live/test_rules_reload.py."""
from __future__ import annotations

import tempfile

import pytest
from scapy.layers.inet import IP, TCP, UDP

from nattrack.router.control import Control, ControlError
from nattrack.router.dataplane import Dataplane

from nattrack_lab import PRIV1, PRIV2, PUB, RTR_PUB, Lab, TcpFlow, UdpFlow, nat_rules

MASQ_AND_FILTER = nat_rules(forward=("-p udp --dport 9999 -j DROP",))
SNAT_RANGE = nat_rules(postrouting=tuple(f"-o eth1 -p {p} -j SNAT --to-source {RTR_PUB}:61000-61010"
                                          for p in ("udp", "tcp")))


@pytest.fixture
def control():
    lab = Lab(rules=MASQ_AND_FILTER)
    dp = Dataplane(lab.router, {"eth0": ["10.0.0.1/24"], "eth1": ["203.0.113.1/24"]})
    with tempfile.TemporaryDirectory(prefix="ntsw-") as d:
        ctl = Control(dp, f"{d}/ctl.sock")
        ctl.start()
        ctl.lab = lab
        try:
            yield ctl
        finally:
            ctl.close()
            dp.close()


def test_new_rules_leave_established_flows_and_their_nat_alone(control):
    lab = control.lab
    udp, tcp = UdpFlow(lab, PRIV1, 41000), TcpFlow(lab, sport=40001)
    udp.client()
    udp.server()
    tcp.handshake()
    before = lab.table()
    assert len(before) == 2

    res = control.call("rules", {"text": SNAT_RANGE, "name": "snat-range.rules"})
    assert res == {"name": "snat-range.rules", "tables": ["nat"], "entries": 2}
    assert lab.table() == before                        # same entries, same NAT, same timers
    # Established flows keep the binding MASQUERADE gave them ...
    assert udp.client().sent and udp.last_out[UDP].sport == 41000
    assert tcp.client("A", b"more").sent and tcp.last_out[TCP].sport == 40001
    # ... new ones meet the new rule.
    new = UdpFlow(lab, PRIV2, 41000)
    new.client()
    assert new.last_out.src == RTR_PUB and 61000 <= new.last_out[UDP].sport <= 61010


def test_tables_the_file_does_not_name_stay(control):
    control.call("rules", {"text": SNAT_RANGE})
    now = control.call("rules", {})["text"]
    assert "-A FORWARD -p udp --dport 9999 -j DROP" in now and "SNAT --to-source" in now
    assert "MASQUERADE" not in now
    v = control.lab.send("eth0", IP(src=PRIV1, dst=PUB) / UDP(sport=41001, dport=9999))
    assert not v.sent and v.dropped                                  # the filter table still drops it


@pytest.mark.parametrize("text, says", [
    ("*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j BOGUS\nCOMMIT\n", "BOGUS"),
    ("*nat\n:POSTROUTING ACCEPT [0:0]\n", "COMMIT"),
    ("# nothing\n", "no table"),
    ("", "text must be"),
])
def test_bad_rules_are_one_line_and_change_nothing(control, text, says):
    before = control.call("rules", {})
    with pytest.raises(ControlError) as e:
        control.call("rules", {"text": text, "name": "bad.rules"})
    msg = str(e.value)
    assert "\n" not in msg and says in msg, msg
    assert control.call("rules", {}) == before


def test_python_mode_reports_no_shadow_losses(control):
    assert control.call("missed", {}) == {"mode": "?", "socket_drops": 0, "flows": [],
                                           "unattributed": 0, "shadow_missed": 0}
