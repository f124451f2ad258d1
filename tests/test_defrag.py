"""IPv4 reassembly (ip_defrag) and refragmentation (ip_do_fragment) as the kernel does them."""
from __future__ import annotations

import random
import struct

from hypothesis import given, settings, strategies as st
from scapy.all import IP, UDP, fragment, raw

from nattrack.packet.checksum import checksum
from nattrack.packet.defrag import Defrag, refragment
from nattrack.packet.ipv4 import Packet

SRC, DST = 0x0A000001, 0xC0A80102
DF, MF = 0x4000, 0x2000


def datagram(payload: bytes, ident=0x1234, proto=253, flags=0, tos=0, options=b"", ttl=64) -> bytes:
    """A whole IPv4 datagram built by hand (independent of the code under test)."""
    ihl = 20 + len(options)
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl // 4, tos, ihl + len(payload), ident,
                                flags, ttl, proto, 0, SRC, DST) + options)
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + payload


def cut(dgram: bytes, bounds: list[int], flags=0, tos=None) -> list[bytes]:
    """Fragments of a whole datagram cut at payload offsets ``bounds`` (multiples of 8)."""
    ihl = (dgram[0] & 15) * 4
    payload = dgram[ihl:]
    edges = [0, *bounds, len(payload)]
    out = []
    for a, b in zip(edges, edges[1:]):
        hdr = bytearray(dgram[:ihl])
        fo = a // 8 | flags | (MF if b < len(payload) else 0)
        struct.pack_into("!HHH", hdr, 2, ihl + b - a, struct.unpack_from("!H", hdr, 4)[0], fo)
        if tos is not None:
            hdr[1] = tos
        hdr[10:12] = b"\0\0"
        struct.pack_into("!H", hdr, 10, checksum(hdr))
        out.append(bytes(hdr) + payload[a:b])
    return out


def frag(data: bytes, off=0, mf=False, ident=0x1234, flags=0, tos=0, ihl_opts=b"") -> bytes:
    """One hand-made fragment: payload ``data`` at byte offset ``off``."""
    ihl = 20 + len(ihl_opts)
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl // 4, tos, ihl + len(data), ident,
                                off // 8 | flags | (MF if mf else 0), 64, 253, 0, SRC, DST) + ihl_opts)
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + data


def pkt(b: bytes, iif="eth0", ts=0.0) -> Packet:
    p = Packet.parse(bytearray(b), 0, iif=iif, ts=ts)
    assert p is not None
    return p


def feed(d: Defrag, frags: list[bytes], now=0.0):
    results = [d.add(pkt(f, ts=now + i), now + i * 0.001) for i, f in enumerate(frags)]
    return results


def payload_of(n: int, seed=0) -> bytes:
    return random.Random(seed).randbytes(n)


def frag_off(b: bytes) -> int:
    return struct.unpack_from("!H", b, 6)[0]


# --- reassembly ------------------------------------------------------------------------

def test_non_fragment_is_returned_as_is_and_not_counted():
    d = Defrag()
    p = pkt(raw(IP(dst="1.2.3.4") / UDP() / b"abc"))
    assert d.add(p, 0.0) is p
    assert d.stats["ReasmReqds"] == 0 and len(d) == 0


def test_scapy_fragments_in_order_reassemble_to_the_original_datagram():
    orig = raw(IP(src="10.0.0.1", dst="10.0.0.2", id=99) / UDP(sport=5, dport=6) / payload_of(3000))
    frags = fragment(IP(orig), 1400)
    d = Defrag()
    *pending, out = feed(d, [raw(f) for f in frags])
    assert pending == [None] * (len(frags) - 1)
    assert out.ip_bytes() == orig and out.sport == 5 and out.dport == 6 and out.l4ok
    assert d.stats == {"ReasmReqds": 3, "ReasmOKs": 1, "ReasmFails": 0, "ReasmTimeout": 0,
                       "ReasmOverlaps": 0, "ReasmDuplicates": 0}
    assert len(d) == 0 and d.mem == 0


def test_reassembled_packet_is_new_with_iif_ts_of_completing_fragment_and_arrival_sizes():
    dg = datagram(payload_of(100))
    f0, f1, f2 = cut(dg, [40, 80])
    d = Defrag()
    p2 = pkt(f2, iif="wan", ts=1.0)
    assert d.add(p2, 1.0) is None
    assert d.add(pkt(f0, iif="wan", ts=2.0), 2.0) is None
    last = pkt(f1, iif="lan", ts=3.0)
    out = d.add(last, 3.0)
    assert out is not last and out.buf is not last.buf and out.off == 0
    assert (out.iif, out.ts) == ("lan", 3.0)
    assert out.frag_sizes == [40, 60, 60]
    assert out.ip_bytes() == dg and out.frag == 0 and not out.mf


def test_header_of_reassembled_datagram_is_the_first_fragments_with_new_length_and_checksum():
    dg = datagram(payload_of(64), ttl=9, tos=0x10)
    frags = cut(dg, [32])
    other = bytearray(frags[1])
    other[8] = 200                                   # a different TTL on the second fragment
    other[10:12] = b"\0\0"
    struct.pack_into("!H", other, 10, checksum(other[:20]))
    out = feed(Defrag(), [bytes(other), frags[0]])[-1]
    assert out.ttl == 9 and out.buf[1] == 0x10 and out.tot_len == 84
    assert checksum(out.buf[:20]) == 0 and out.ip_bytes() == dg


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_permutation_of_fragments_of_a_random_datagram_reassembles_to_the_original(data):
    n = data.draw(st.integers(9, 3000), label="payload length")
    cuts = sorted(data.draw(st.sets(st.integers(1, (n - 1) // 8), min_size=1, max_size=12), label="cuts"))
    dg = datagram(data.draw(st.binary(min_size=n, max_size=n)), ident=data.draw(st.integers(0, 0xFFFF)))
    frags = cut(dg, [c * 8 for c in cuts])
    order = data.draw(st.permutations(frags), label="order")
    dups = data.draw(st.lists(st.sampled_from(order[:-1]), max_size=3), label="duplicates")
    stream = list(order[:-1]) + dups + [order[-1]]      # retransmissions of received fragments
    d = Defrag()
    results = feed(d, stream)
    done = [r for r in results if r is not None]
    assert len(done) == 1 and results[-1] is done[0]
    assert done[0].ip_bytes() == dg
    assert sorted(done[0].frag_sizes) == sorted(len(f) for f in frags)
    assert d.stats["ReasmOKs"] == 1 and d.stats["ReasmFails"] == 0 and d.mem == 0


def test_fragments_of_different_datagrams_are_kept_apart():
    a, b = datagram(payload_of(48, 1), ident=1), datagram(payload_of(48, 2), ident=1, proto=17)
    fa, fb = cut(a, [24]), cut(b, [24])
    d = Defrag()
    res = feed(d, [fa[0], fb[1], fa[1], fb[0]])
    assert res[0] is None and res[1] is None
    assert res[2].ip_bytes() == a and res[3].ip_bytes() == b


def test_identical_duplicate_fragment_is_dropped_alone():
    dg = datagram(payload_of(48))
    f = cut(dg, [16, 32])
    d = Defrag()
    res = feed(d, [f[0], f[0], f[1], f[2]])
    assert res[-1].ip_bytes() == dg and res[-1].frag_sizes == [36, 36, 36]
    assert d.stats["ReasmDuplicates"] == 1 and d.stats["ReasmFails"] == 0


def test_fragment_inside_a_contiguous_run_is_a_duplicate_even_if_its_bytes_differ():
    dg = datagram(payload_of(48))
    f = cut(dg, [16, 32])
    d = Defrag()
    assert feed(d, [f[0], f[1]]) == [None, None]          # one run [0, 32)
    assert d.add(pkt(frag(b"Z" * 16, off=8, mf=True)), 0.1) is None   # straddles both fragments
    out = d.add(pkt(f[2]), 0.2)
    assert out.ip_bytes() == dg and d.stats["ReasmDuplicates"] == 1


def test_partial_overlap_discards_the_whole_datagram():
    dg = datagram(payload_of(48))
    f = cut(dg, [16, 32])
    d = Defrag()
    feed(d, [f[0]])
    assert d.add(pkt(frag(b"Z" * 16, off=8, mf=True)), 0.1) is None    # [8, 24) over [0, 16)
    assert len(d) == 0 and d.mem == 0
    assert d.stats["ReasmOverlaps"] == 1 and d.stats["ReasmFails"] == 1
    # the remaining genuine fragments start a fresh queue that cannot complete
    assert feed(d, [f[1], f[2]]) == [None, None] and len(d) == 1


def test_overlap_found_by_the_tree_search_also_discards_the_datagram():
    d = Defrag()
    feed(d, [frag(b"a" * 8, off=0, mf=True), frag(b"c" * 8, off=32, mf=False)])
    assert d.add(pkt(frag(b"b" * 16, off=24, mf=True)), 0.1) is None   # [24, 40) over [32, 40)
    assert d.stats["ReasmOverlaps"] == 1 and len(d) == 0


def test_out_of_order_neighbours_form_separate_runs_like_the_kernel():
    # [0,8) then [16,24) then [8,16): the middle one is a new run, so a fragment
    # spanning [0,16) is not inside one run: an overlap, not a duplicate.
    d = Defrag()
    feed(d, [frag(b"a" * 8, 0, True), frag(b"c" * 8, 16, True), frag(b"b" * 8, 8, True)])
    assert d.add(pkt(frag(b"ab" * 8, 0, True)), 0.1) is None
    assert d.stats["ReasmOverlaps"] == 1 and len(d) == 0


def test_non_last_fragment_length_is_rounded_down_to_a_multiple_of_8():
    d = Defrag()
    assert d.add(pkt(frag(b"A" * 13, off=0, mf=True)), 0.0) is None   # keeps 8 bytes
    out = d.add(pkt(frag(b"B" * 5, off=8)), 0.1)
    assert out.ip_bytes()[20:] == b"A" * 8 + b"B" * 5
    assert out.frag_sizes == [28, 25]


def test_non_last_fragment_shorter_than_8_bytes_kills_the_queue():
    d = Defrag()
    feed(d, [frag(b"A" * 8, 8, True)])
    assert d.add(pkt(frag(b"x" * 7, 0, True)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and len(d) == 0


def test_second_last_fragment_with_a_different_end_kills_the_queue():
    d = Defrag()
    feed(d, [frag(b"A" * 8, 0, True), frag(b"C" * 8, 16)])
    assert d.add(pkt(frag(b"C" * 16, 16)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and len(d) == 0


def test_last_fragment_ending_before_queued_data_kills_the_queue():
    d = Defrag()
    feed(d, [frag(b"A" * 16, 16, True)])
    assert d.add(pkt(frag(b"B" * 8, 8)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and len(d) == 0


def test_fragment_beyond_the_known_end_kills_the_queue():
    d = Defrag()
    feed(d, [frag(b"Z" * 8, 16)])
    assert d.add(pkt(frag(b"A" * 16, 8, True)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and len(d) == 0


def test_datagram_longer_than_65535_bytes_fails_once_complete():
    d = Defrag()
    assert d.add(pkt(frag(b"\0" * 65512, 0, True)), 0.0) is None
    assert d.add(pkt(frag(b"\0" * 100, 65512)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and d.stats["ReasmOKs"] == 0 and len(d) == 0 and d.mem == 0


def test_largest_datagram_of_65535_bytes_reassembles():
    d = Defrag()
    d.add(pkt(frag(b"\1" * 65512, 0, True)), 0.0)
    out = d.add(pkt(frag(b"\2" * 3, 65512)), 0.1)
    assert out is not None and out.tot_len == 65535


def test_reassembled_datagram_has_df_only_if_the_largest_fragment_had_df():
    dg = datagram(payload_of(40))
    big_df = cut(dg, [32], flags=DF)
    out = feed(Defrag(), big_df)[-1]
    assert frag_off(out.ip_bytes()) == DF
    mixed = cut(dg, [32])
    mixed[1] = cut(dg, [32], flags=DF)[1]               # only the small last fragment has DF
    out = feed(Defrag(), mixed)[-1]
    assert frag_off(out.ip_bytes()) == 0


def test_ce_on_any_fragment_marks_the_datagram_ce():
    dg = datagram(payload_of(40), tos=0x02)
    f = cut(dg, [16])
    f[1] = cut(dg, [16], tos=0x03)[1]
    out = feed(Defrag(), f)[-1]
    assert out.buf[1] & 3 == 3 and checksum(out.buf[:20]) == 0


def test_not_ect_mixed_with_ect_fails_the_datagram():
    dg = datagram(payload_of(40), tos=0x00)
    f = cut(dg, [16])
    f[1] = cut(dg, [16], tos=0x02)[1]
    d = Defrag()
    assert feed(d, f) == [None, None] and d.stats["ReasmFails"] == 1


# --- timers ----------------------------------------------------------------------------

def test_expired_queue_with_first_fragment_returns_it_for_icmp_time_exceeded():
    dg = datagram(payload_of(48))
    f = cut(dg, [16, 32])
    d = Defrag()
    d.add(pkt(f[0], iif="lan", ts=10.0), 10.0)
    d.add(pkt(f[2]), 25.0)                              # does not push the timer back
    assert d.expire(39.9) == []
    (first,) = d.expire(40.0)
    assert first.ip_bytes() == f[0] and first.frag == 0 and first.mf and first.iif == "lan"
    assert d.stats["ReasmTimeout"] == 1 and d.stats["ReasmFails"] == 1
    assert len(d) == 0 and d.mem == 0 and d.expire(100.0) == []


def test_expired_queue_without_first_fragment_is_discarded_silently():
    d = Defrag(ipfrag_time=5)
    d.add(pkt(frag(b"x" * 8, 8)), 0.0)
    assert d.expire(5.0) == [] and d.stats["ReasmTimeout"] == 1 and len(d) == 0


def test_fragment_arriving_after_the_timeout_starts_a_new_queue():
    dg = datagram(payload_of(32))
    f = cut(dg, [16])
    d = Defrag()
    d.add(pkt(f[0]), 0.0)
    assert d.add(pkt(f[1]), 30.0) is None               # old queue expired first
    assert len(d) == 1 and d.stats["ReasmTimeout"] == 1
    assert [p.ip_bytes() for p in d.expire(30.0)] == [f[0]]   # timed out during add()
    assert d.add(pkt(f[0]), 31.0).ip_bytes() == dg


# --- memory limits ---------------------------------------------------------------------

def test_memory_above_high_thresh_evicts_least_recently_used_queues_down_to_low():
    d = Defrag(ipfrag_high_thresh=500, ipfrag_low_thresh=250)
    for ident in range(1, 5):                            # 4 queues of 108 bytes each
        d.add(pkt(frag(b"x" * 88, 0, True, ident=ident)), 0.0)
    d.add(pkt(frag(b"y" * 88, 88, True, ident=1)), 0.1) # queue 1 becomes most recent
    assert d.mem == 540 and len(d) == 4
    d.add(pkt(frag(b"z" * 8, 0, True, ident=9)), 0.2)   # over 500: evict 2, 3, 4 (LRU) to <= 250
    assert len(d) == 2 and d.mem == 216 + 28
    assert d.stats["ReasmFails"] == 3
    out = d.add(pkt(frag(b"w" * 8, 176, False, ident=1)), 0.3)
    assert out is not None and out.tot_len == 20 + 184


def test_memory_above_high_thresh_refuses_fragments_without_eviction_like_linux_4_17():
    d = Defrag(ipfrag_high_thresh=200, ipfrag_low_thresh=100, evict=False)
    for ident in (1, 2):
        d.add(pkt(frag(b"x" * 88, 0, True, ident=ident)), 0.0)
    assert d.mem == 216
    assert d.add(pkt(frag(b"y" * 8, 88, False, ident=1)), 0.1) is None
    assert d.stats["ReasmFails"] == 1 and len(d) == 2 and d.mem == 216
    d.expire(30.0)
    assert d.mem == 0 and d.add(pkt(frag(b"x" * 8, 0, True, ident=3)), 31.0) is None and len(d) == 1


# --- robustness ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 4), st.booleans(),
                          st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=25),
       st.floats(0, 100))
def test_any_sequence_of_fragments_never_raises_and_keeps_memory_accounting(spec, step):
    d = Defrag(ipfrag_high_thresh=2000, ipfrag_low_thresh=1000)
    now = 0.0
    for units, length8, mf, ident, tos in spec:
        data = bytes([units]) * (length8 * 8 + (ident if not mf else 0))
        out = d.add(pkt(frag(data, units * 8, mf, ident=ident, tos=tos)), now)
        if out is not None:
            assert checksum(out.buf[:out.ihl]) == 0 and out.tot_len == len(out.buf)
        now += step
        assert d.mem == sum(q.mem for q in d._queues.values()) >= 0
    d.expire(now + 31)
    assert len(d) == 0 and d.mem == 0


# --- refragmentation -------------------------------------------------------------------

def test_refragment_returns_an_unfragmented_datagram_whole():
    p = pkt(datagram(payload_of(2000)))
    assert refragment(p) == [p.ip_bytes()]
    assert refragment(p, mtu=2020) == [p.ip_bytes()]


def test_refragment_gives_back_scapy_fragments_byte_for_byte():
    orig = raw(IP(src="10.0.0.1", dst="10.0.0.2", id=42) / UDP() / payload_of(4000))
    frags = [raw(f) for f in fragment(IP(orig), 1200)]
    shuffled = frags[:]
    random.Random(3).shuffle(shuffled)
    out = feed(Defrag(), shuffled)[-1]
    assert max(out.frag_sizes) == 1220
    assert refragment(out) == frags


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_refragment_of_reassembled_fragments_gives_back_the_same_sizes(data):
    n = data.draw(st.integers(17, 5000), label="payload")
    step = 8 * data.draw(st.integers(1, max(1, (n - 1) // 8)), label="step/8")
    dg = datagram(data.draw(st.binary(min_size=n, max_size=n)))
    frags = cut(dg, list(range(step, n, step)))
    out = feed(Defrag(), data.draw(st.permutations(frags)))[-1]
    again = refragment(out)
    assert [len(f) for f in again] == [len(f) for f in frags]
    assert again == frags


def test_refragment_cuts_at_the_smaller_of_mtu_and_largest_fragment():
    dg = datagram(payload_of(3000))
    out = feed(Defrag(), cut(dg, [1480]))[-1]          # sizes 1500, 1540
    assert [len(f) for f in refragment(out)] == [1540, 1500]
    assert [len(f) for f in refragment(out, mtu=1000)] == [996, 996, 996, 92]
    assert [len(f) for f in refragment(pkt(dg), mtu=576)] == [572] * 5 + [20 + 3000 - 5 * 552]


def test_refragmented_pieces_are_valid_fragments_that_reassemble():
    dg = datagram(payload_of(3001))
    pieces = refragment(pkt(dg), mtu=1006)                 # room 986 -> 984 per piece
    parsed = [pkt(b) for b in pieces]
    assert all(checksum(b[:20]) == 0 for b in pieces)
    assert [p.frag for p in parsed] == [0, 984, 1968, 2952]
    assert [p.mf for p in parsed] == [True, True, True, False]
    assert all((p.tot_len - 20) % 8 == 0 for p in parsed[:-1])
    assert feed(Defrag(), pieces[::-1])[-1].ip_bytes() == dg


def test_refragment_last_piece_is_not_rounded_down():
    dg = datagram(payload_of(1403))
    assert [len(b) for b in refragment(pkt(dg), mtu=1425)] == [1423]
    assert [len(b) for b in refragment(pkt(dg), mtu=1422)] == [1420, 20 + 3]


def test_refragment_df_datagram_too_big_for_mtu_needs_icmp_frag_needed():
    p = pkt(datagram(payload_of(1600), flags=DF))
    assert refragment(p, mtu=1500) == []
    assert refragment(p, mtu=1620) == [p.ip_bytes()]


def test_refragment_reassembled_df_datagram_leaves_without_df_when_fragments_fit():
    # ip_do_fragment()'s fast path writes frag_off from offset and MF only (the kernel
    # suite's icmp_send_df_fragments scenario shows Linux 6.18 doing so)
    dg = datagram(payload_of(3000), flags=DF)
    out = feed(Defrag(), cut(dg, [1400, 2800], flags=DF))[-1]
    pieces = refragment(out, mtu=1500)
    assert [len(b) for b in pieces] == [1420, 1420, 220]
    assert [frag_off(b) & DF for b in pieces] == [0, 0, 0]
    assert refragment(out, mtu=1400) == []                # an original fragment exceeds mtu


def test_refragment_nops_out_non_copied_options_after_the_first_fragment():
    opts = bytes([0x94, 4, 0, 0,                          # router alert: copied
                  7, 7, 4, 0, 0, 0, 0,                    # record route: not copied
                  0])                                     # end of options
    dg = datagram(payload_of(100), options=opts)
    pieces = refragment(pkt(dg), mtu=32 + 48)
    assert len(pieces) == 3 and all(b[0] == 0x48 for b in pieces)
    assert pieces[0][20:32] == opts
    for b in pieces[1:]:
        assert b[20:32] == bytes([0x94, 4, 0, 0]) + b"\x01" * 7 + b"\0"
        assert checksum(b[:32]) == 0
    assert feed(Defrag(), pieces)[-1].ip_bytes() == dg


def test_refragment_of_a_fragment_keeps_its_offset_and_more_fragments_flag():
    p = pkt(frag(payload_of(64), off=800, mf=True))
    pieces = [pkt(b) for b in refragment(p, mtu=52)]
    assert [(q.frag, q.mf, q.tot_len) for q in pieces] == [(800, True, 52), (832, True, 52)]


def test_refragment_returns_nothing_when_mtu_leaves_no_room_for_8_bytes():
    assert refragment(pkt(datagram(payload_of(100))), mtu=27) == []
