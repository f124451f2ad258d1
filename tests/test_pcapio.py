"""Capture reading/writing: classic pcap, pcapng, link types, bad files, merging."""
from __future__ import annotations

import io
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings, strategies as st
from scapy.all import IP, IPv6, UDP, ARP, Ether, Dot1Q, raw, wrpcap
from scapy.layers.l2 import CookedLinux
from scapy.utils import rdpcap

from nattrack.packet.pcapio import (CaptureError, CaptureReader, Frame, PcapngWriter,
                                    ip_offset, merge_captures, read_capture)

ETH_UDP = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / b"hello"


def _frames(n=3, t0=100.0):
    pkts = []
    for i in range(n):
        p = Ether() / IP(dst=f"10.0.0.{i + 1}") / UDP(sport=1000 + i) / b"x"
        p.time = t0 + i * 0.25
        pkts.append(p)
    return pkts


# --- hand-built pcapng pieces (byte order e = "<" or ">") ------------------------------

def _opt(e, code, val):
    return struct.pack(e + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _block(e, btype, body):
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _shb(e):
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(e, linktype=1, name=None, tsresol=None):
    opts = b""
    if name is not None:
        opts += _opt(e, 2, name.encode())
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if opts:
        opts += b"\0\0\0\0"
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, 65535) + opts)


def _epb(e, ifid, ticks, data):
    return _block(e, 6, struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
                  + data + b"\0" * (-len(data) % 4))


def _spb(e, data):
    return _block(e, 3, struct.pack(e + "I", len(data)) + data + b"\0" * (-len(data) % 4))


# --- classic pcap ----------------------------------------------------------------------

def test_classic_pcap_frames_carry_time_data_and_the_given_iface(tmp_path):
    pkts = _frames()
    wrpcap(str(tmp_path / "a.pcap"), pkts)
    frames = list(read_capture(tmp_path / "a.pcap", iface="eth0"))
    assert [f.ts for f in frames] == pytest.approx([100.0, 100.25, 100.5])
    assert [bytes(f.data) for f in frames] == [raw(p) for p in pkts]
    assert {f.iface for f in frames} == {"eth0"} and {f.linktype for f in frames} == {1}
    assert all(isinstance(f.data, bytearray) for f in frames)


def test_classic_pcap_without_iface_argument_has_no_iface(tmp_path):
    wrpcap(str(tmp_path / "a.pcap"), _frames(1))
    assert next(read_capture(tmp_path / "a.pcap")).iface is None


def test_nanosecond_pcap_keeps_nanoseconds(tmp_path):
    p = ETH_UDP.copy()
    p.time = 5.000000123
    wrpcap(str(tmp_path / "n.pcap"), [p], nano=True)
    (f,) = read_capture(tmp_path / "n.pcap")
    assert f.ts == pytest.approx(5.000000123, abs=1e-9)


@pytest.mark.parametrize("magic,scale", [(0xA1B2C3D4, 1e-6), (0xA1B23C4D, 1e-9)])
def test_big_endian_pcap_is_read(tmp_path, magic, scale):
    data = raw(ETH_UDP)
    blob = (struct.pack(">IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
            + struct.pack(">IIII", 7, 500, len(data), len(data)) + data)
    (tmp_path / "be.pcap").write_bytes(blob)
    (f,) = read_capture(tmp_path / "be.pcap", "wan")
    assert f.ts == pytest.approx(7 + 500 * scale) and bytes(f.data) == data and f.iface == "wan"


def test_raw_ip_pcap_has_ip_at_offset_zero(tmp_path):
    wrpcap(str(tmp_path / "r.pcap"), [IP(dst="1.2.3.4") / UDP()], linktype=101)
    (f,) = read_capture(tmp_path / "r.pcap")
    assert f.linktype == 101 and ip_offset(f) == 0


def test_reader_accepts_a_binary_file_object(tmp_path):
    wrpcap(str(tmp_path / "a.pcap"), _frames(2))
    stream = io.BytesIO((tmp_path / "a.pcap").read_bytes())
    assert len(list(CaptureReader(stream, "eth0"))) == 2


# --- link types ------------------------------------------------------------------------

def _sll2(proto: int) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\0" * 8)


@pytest.mark.parametrize("linktype,data,expected", [
    (1, raw(ETH_UDP), 14),
    (1, raw(Ether() / Dot1Q(vlan=7) / IP() / UDP()), 18),
    (1, raw(Ether() / Dot1Q(vlan=7) / IPv6()), None),
    (1, raw(Ether() / IPv6() / UDP()), None),
    (1, raw(Ether() / ARP()), None),
    (1, b"\x02" * 10, None),
    (101, raw(IP() / UDP()), 0),
    (101, raw(IPv6()), None),
    (12, raw(IP()), 0),
    (228, raw(IP()), 0),
    (228, b"", None),
    (113, raw(CookedLinux(proto=0x0800) / IP()), 16),
    (113, raw(CookedLinux(proto=0x86DD) / IPv6()), None),
    (276, _sll2(0x0800) + raw(IP()), 20),
    (276, _sll2(0x0806) + b"\0" * 28, None),
    (147, raw(IP()), None),
])
def test_ip_offset_per_link_type(linktype, data, expected):
    assert ip_offset(Frame(0.0, None, linktype, bytearray(data))) == expected


def test_ip_offset_points_at_a_parseable_ipv4_header():
    from nattrack.packet.ipv4 import Packet
    f = Frame(0.0, "eth0", 1, bytearray(raw(Ether() / Dot1Q(vlan=3) / IP(dst="9.9.9.9") / UDP(dport=99))))
    p = Packet.parse(f.data, ip_offset(f))
    assert p is not None and p.dport == 99


# --- pcapng writer ---------------------------------------------------------------------

def test_pcapng_writer_round_trips_names_times_and_bytes(tmp_path):
    path = tmp_path / "w.pcapng"
    with PcapngWriter(path) as w:
        assert w.add_interface("eth0") == 0
        w.write(1.5, "eth0", raw(ETH_UDP))
        w.write(2.000001, "eth1", bytearray(raw(ETH_UDP)))   # auto-declared
        w.write(3.25, "eth0", memoryview(raw(ETH_UDP)[:-1]))
    frames = list(read_capture(path))
    assert [(f.iface, f.linktype) for f in frames] == [("eth0", 1), ("eth1", 1), ("eth0", 1)]
    assert [f.ts for f in frames] == pytest.approx([1.5, 2.000001, 3.25], abs=1e-7)
    assert bytes(frames[2].data) == raw(ETH_UDP)[:-1]


def test_pcapng_writer_output_is_read_by_scapy(tmp_path):
    path = tmp_path / "w.pcapng"
    with PcapngWriter(path) as w:
        w.write(10.0, "lan", raw(ETH_UDP))
        w.add_interface("tun0", 101)
        w.write(11.0, "tun0", raw(IP(dst="8.8.8.8") / UDP()))
    pkts = rdpcap(str(path))
    assert len(pkts) == 2 and raw(pkts[0]) == raw(ETH_UDP)
    assert pkts[1][IP].dst == "8.8.8.8"
    assert [p.sniffed_on for p in pkts] == ["lan", "tun0"]
    assert [float(p.time) for p in pkts] == [10.0, 11.0]


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed")
def test_pcapng_writer_output_is_read_by_tcpdump(tmp_path):
    path = tmp_path / "w.pcapng"
    with PcapngWriter(path) as w:       # libpcap wants one link type per file
        w.write(1.0, "eth0", raw(ETH_UDP))
        w.write(2.0, "eth1", raw(ETH_UDP))
    out = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and "10.0.0.1.1000 > 10.0.0.2.53" in lines[0]


def test_pcapng_writer_writes_to_a_file_object_and_leaves_it_open():
    buf = io.BytesIO()
    with PcapngWriter(buf) as w:
        w.write(1.0, "eth0", raw(ETH_UDP))
    assert not buf.closed
    buf.seek(0)
    assert [f.iface for f in CaptureReader(buf)] == ["eth0"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.sampled_from(["eth0", "eth1", "wlan0"]),
                          st.binary(max_size=70)), max_size=20))
def test_pcapng_writer_reader_round_trip_any_frames(frames):
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    for us, name, data in frames:
        w.write(us / 1e6, name, data)
    w.close()
    buf.seek(0)
    got = [(round(f.ts * 1e6), f.iface, bytes(f.data)) for f in CaptureReader(buf)]
    assert got == frames


# --- pcapng reader on hand-built files -------------------------------------------------

@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_reads_either_byte_order_with_tsresol_and_spb(tmp_path, e):
    d1, d2, d3 = raw(ETH_UDP), raw(IP() / UDP()), raw(ETH_UDP)[:30]
    blob = (_shb(e) + _idb(e, 1, "eth0", tsresol=9) + _block(e, 0xBAD, b"junk")
            + _idb(e, 101, "tun0", tsresol=0x80 | 10)
            + _epb(e, 0, 3_500_000_000, d1) + _epb(e, 1, 5 * 1024, d2) + _spb(e, d3))
    (tmp_path / "h.pcapng").write_bytes(blob)
    frames = list(read_capture(tmp_path / "h.pcapng"))
    assert [(f.iface, f.linktype, bytes(f.data)) for f in frames] == [
        ("eth0", 1, d1), ("tun0", 101, d2), ("eth0", 1, d3)]
    assert frames[0].ts == pytest.approx(3.5)
    assert frames[1].ts == pytest.approx(5.0)         # 2^-10 s units
    assert frames[2].ts == frames[1].ts               # an SPB has no time of its own


def test_pcapng_new_section_resets_interfaces_and_may_switch_byte_order(tmp_path):
    d = raw(ETH_UDP)
    blob = (_shb("<") + _idb("<", 1, "a0") + _epb("<", 0, 1_000_000, d)
            + _shb(">") + _idb(">", 1, "b0") + _idb(">", 1, "b1") + _epb(">", 1, 2_000_000, d))
    (tmp_path / "s.pcapng").write_bytes(blob)
    assert [(f.iface, f.ts) for f in read_capture(tmp_path / "s.pcapng")] == [("a0", 1.0), ("b1", 2.0)]


def test_pcapng_unnamed_interface_reads_as_ifN_or_the_iface_argument(tmp_path):
    d = raw(ETH_UDP)
    blob = _shb("<") + _idb("<", 1, "named") + _idb("<") + _epb("<", 1, 0, d) + _epb("<", 0, 0, d)
    (tmp_path / "u.pcapng").write_bytes(blob)
    assert [f.iface for f in read_capture(tmp_path / "u.pcapng")] == ["if1", "named"]
    assert [f.iface for f in read_capture(tmp_path / "u.pcapng", "eth9")] == ["eth9", "named"]


# --- bad and truncated files -----------------------------------------------------------

def test_truncated_last_pcap_record_is_tolerated_and_flagged(tmp_path):
    wrpcap(str(tmp_path / "a.pcap"), _frames(3))
    blob = (tmp_path / "a.pcap").read_bytes()
    for cut in (5, 16, 17):                          # inside data, header, just after header
        (tmp_path / "t.pcap").write_bytes(blob[:-cut])
        r = CaptureReader(tmp_path / "t.pcap")
        assert len(list(r)) == 2 and r.truncated
    r = CaptureReader(tmp_path / "a.pcap")
    assert len(list(r)) == 3 and not r.truncated


def test_truncated_last_pcapng_block_is_tolerated_and_flagged(tmp_path):
    path = tmp_path / "w.pcapng"
    with PcapngWriter(path) as w:
        for i in range(3):
            w.write(float(i), "eth0", raw(ETH_UDP))
    blob = path.read_bytes()
    for cut in (1, 4, 40, len(raw(ETH_UDP)) + 30):
        (tmp_path / "t.pcapng").write_bytes(blob[:-cut])
        r = CaptureReader(tmp_path / "t.pcapng")
        assert len(list(r)) == 2 and r.truncated, cut


@pytest.mark.parametrize("blob,what,at", [
    (b"", "empty file", 0),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "too short", 0),
    (b"GIF89a" + b"\0" * 40, "unknown magic", 0),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "unsupported link type 105", 20),
])
def test_bad_header_raises_capture_error_naming_file_and_offset(tmp_path, blob, what, at):
    (tmp_path / "bad.cap").write_bytes(blob)
    with pytest.raises(CaptureError) as exc:
        list(read_capture(tmp_path / "bad.cap"))
    msg = str(exc.value)
    assert what in msg and "bad.cap" in msg and f"at byte {at}" in msg and "\n" not in msg
    assert isinstance(exc.value, ValueError)


def test_garbage_pcap_record_length_raises_with_its_offset(tmp_path):
    wrpcap(str(tmp_path / "a.pcap"), _frames(2))
    blob = bytearray((tmp_path / "a.pcap").read_bytes())
    second = 24 + 16 + len(raw(_frames(1)[0]))
    struct.pack_into("<I", blob, second + 8, 0x7FFFFFFF)
    (tmp_path / "g.pcap").write_bytes(blob)
    r = CaptureReader(tmp_path / "g.pcap")
    it = iter(r)
    next(it)
    with pytest.raises(CaptureError, match=f"record length .* at byte {second}"):
        next(it)


@pytest.mark.parametrize("length", [7, 13, 0x7FFFFFF0])
def test_garbage_pcapng_block_length_raises_with_its_offset(tmp_path, length):
    d = raw(ETH_UDP)
    good = _shb("<") + _idb("<", 1, "eth0")
    bad = bytearray(_epb("<", 0, 0, d))
    struct.pack_into("<I", bad, 4, length)
    (tmp_path / "g.pcapng").write_bytes(good + bad + _epb("<", 0, 0, d))
    with pytest.raises(CaptureError, match=f"block length {length} at byte {len(good)}"):
        list(read_capture(tmp_path / "g.pcapng"))


def test_pcapng_trailer_mismatch_raises(tmp_path):
    good = _shb("<") + _idb("<", 1, "eth0")
    bad = bytearray(_epb("<", 0, 0, raw(ETH_UDP)))
    struct.pack_into("<I", bad, len(bad) - 4, 12)
    (tmp_path / "m.pcapng").write_bytes(good + bad)
    with pytest.raises(CaptureError, match="trailer"):
        list(read_capture(tmp_path / "m.pcapng"))


def test_pcapng_packet_on_undeclared_interface_raises(tmp_path):
    (tmp_path / "i.pcapng").write_bytes(_shb("<") + _idb("<") + _epb("<", 3, 0, b"abcd"))
    with pytest.raises(CaptureError, match="undeclared interface 3"):
        list(read_capture(tmp_path / "i.pcapng"))


# --- merging ---------------------------------------------------------------------------

def test_merge_captures_orders_by_time_and_keeps_ties_in_source_then_file_order(tmp_path):
    a = _frames(3, t0=1.0)                  # 1.0 1.25 1.5
    b = _frames(2, t0=1.25)                 # 1.25 1.5
    a[2].time = 1.5
    wrpcap(str(tmp_path / "a.pcap"), a)
    wrpcap(str(tmp_path / "b.pcap"), b)
    with PcapngWriter(tmp_path / "c.pcapng") as w:
        w.write(0.5, "lo", raw(ETH_UDP))
        w.write(1.25, "lo", raw(ETH_UDP))
    merged = list(merge_captures([("eth0", tmp_path / "a.pcap"), ("eth1", tmp_path / "b.pcap"),
                                  (None, tmp_path / "c.pcapng")]))
    assert [(f.ts, f.iface) for f in merged] == [
        (0.5, "lo"), (1.0, "eth0"), (1.25, "eth0"), (1.25, "eth1"), (1.25, "lo"),
        (1.5, "eth0"), (1.5, "eth1")]


def test_merge_captures_accepts_readers_so_truncation_can_be_reported(tmp_path):
    wrpcap(str(tmp_path / "a.pcap"), _frames(2))
    (tmp_path / "t.pcap").write_bytes((tmp_path / "a.pcap").read_bytes()[:-3])
    r1, r2 = CaptureReader(tmp_path / "a.pcap", "eth0"), CaptureReader(tmp_path / "t.pcap", "eth1")
    assert len(list(merge_captures([r1, r2]))) == 3
    assert (r1.truncated, r2.truncated) == (False, True)


def test_pcapng_cut_inside_its_section_header_is_an_error_not_a_truncation(tmp_path):
    (tmp_path / "s.pcapng").write_bytes(_shb("<")[:20])
    with pytest.raises(CaptureError, match="too short .* at byte 0"):
        CaptureReader(tmp_path / "s.pcapng")


def test_pcapng_obsolete_packet_block_is_read(tmp_path):
    d = raw(ETH_UDP)
    opb = _block("<", 2, struct.pack("<HHIIII", 0, 0, 0, 2_000_000, len(d), len(d)) + d + b"\0" * (-len(d) % 4))
    (tmp_path / "o.pcapng").write_bytes(_shb("<") + _idb("<", 1, "eth0") + opb)
    (f,) = read_capture(tmp_path / "o.pcapng")
    assert (f.iface, f.ts, bytes(f.data)) == ("eth0", 2.0, d)
