"""Kernel mode's shadow parses an egress copy where recvmmsg left it (a memoryview of its
receive slot) instead of copying it out: what it reads there must be what a copy gives.
"""
from __future__ import annotations

import mmap

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from nattrack.conntrack.tuple import get_tuple
from nattrack.packet.ipv4 import Packet
from nattrack.router.shadow import nat_invariant_key

QUOTED = bytes(IP(src="203.0.113.1", dst="203.0.113.10") / UDP(sport=40000, dport=53) / Raw(b"q" * 8))

FRAMES = {
    "tcp": IP(src="10.0.0.10", dst="203.0.113.10", id=7) / TCP(sport=41000, dport=80, flags="S", seq=1234),
    "udp": IP(src="10.0.0.10", dst="203.0.113.10", id=8) / UDP(sport=41001, dport=5000) / Raw(b"x" * 40),
    "echo": IP(src="10.0.0.10", dst="203.0.113.10", id=9) / ICMP(type=8, id=77, seq=3) / Raw(b"ping"),
    "error": IP(src="203.0.113.10", dst="203.0.113.1", id=10) / ICMP(type=3, code=3) / Raw(QUOTED),
    "fragment": IP(src="10.0.0.10", dst="203.0.113.10", id=11, flags="MF") / UDP(sport=1, dport=2) / Raw(b"f" * 16),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_an_egress_copy_reads_the_same_in_its_slot(name):
    frame = bytes(Ether() / FRAMES[name])
    area = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)          # a receive slot, as batch.py makes them
    view = memoryview(area)
    view[100:100 + len(frame)] = frame
    in_slot = Packet.parse(view[100:100 + len(frame)], 14, None, 0.0)
    copied = Packet.parse(bytearray(frame), 14, None, 0.0)
    assert in_slot is not None and copied is not None
    assert nat_invariant_key(in_slot) == nat_invariant_key(copied)
    assert get_tuple(in_slot) == get_tuple(copied)
    assert in_slot.summary() == copied.summary()
    # a damaged header is refused the same way in the slot
    view[100 + 14 + 10] ^= 0xFF
    assert Packet.parse(view[100:100 + len(frame)], 14, None, 0.0) is None
    del in_slot, view
    area.close()
