"""nattrack/router/batch.py without root: the same recvmmsg/sendmmsg calls on a Unix
datagram socket pair (the live router uses them on packet sockets:
tests/live/test_router_batch.py), and the slots' bookkeeping."""
from __future__ import annotations

import socket
import struct

import pytest

from nattrack.router.batch import (MAX_BATCH, RxBatch, SingleRx, SingleTx, TxBatch,
                                   mmsg_problem)

KINDS = {"batch": (RxBatch, TxBatch), "single": (SingleRx, SingleTx)}


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def received(rx, sock) -> list[bytes]:
    out = []
    while n := rx.recv(sock):
        out += [bytes(rx.view[i * rx.slot:i * rx.slot + rx.length(i)]) for i in range(n)]
    return out


def test_batches_are_available_here(pair):
    assert mmsg_problem() is None
    assert mmsg_problem(pair[0]) is None


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_sent_in_batches_arrives_whole_and_in_order(pair, kind):
    Rx, Tx = KINDS[kind]
    a, b = pair
    tx, rx = Tx(16, 200), Rx(16, 256)
    frames = [struct.pack("!I", i) + bytes(i) for i in range(40)]
    sent = refused = 0
    for f in frames:
        if not tx.add(f[:4], f[4:]):
            s, r = tx.flush(a)
            sent, refused = sent + s, refused + r
            assert tx.add(f[:4], f[4:])
    s, r = tx.flush(a)
    assert (sent + s, refused + r) == (40, 0)
    assert tx.queued == 0
    assert received(rx, b) == frames


def test_one_recvmmsg_reads_every_waiting_frame_up_to_the_slot_count(pair):
    a, b = pair
    for i in range(40):
        a.send(bytes([i]) * 10)
    rx = RxBatch(16, 64)
    assert [rx.recv(b), rx.recv(b), rx.recv(b), rx.recv(b)] == [16, 16, 8, 0]
    assert rx.length(7) == 10 and bytes(rx.view[7 * 64:7 * 64 + 10]) == bytes([39]) * 10


def test_a_frame_longer_than_its_slot_is_cut_to_the_slot(pair):
    a, b = pair
    a.send(bytes(range(100)))
    rx = RxBatch(4, 32)
    assert rx.recv(b) == 1
    assert rx.length(0) == 32 and bytes(rx.view[:32]) == bytes(range(32))


def test_the_send_slots_refuse_what_does_not_fit():
    tx = TxBatch(2, 64)
    assert tx.add(b"h" * 14, b"d" * 50)             # exactly a slot
    assert not tx.add(b"h" * 14, b"d" * 51)         # over a slot: nothing queued
    assert tx.queued == 1
    assert tx.add(b"x", b"y")
    assert not tx.add(b"x", b"y")                   # full
    assert bytes(tx.frame(0)) == b"h" * 14 + b"d" * 50 and bytes(tx.frame(1)) == b"xy"


def test_a_refused_frame_is_counted_and_the_others_still_go(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tx = TxBatch(3, 1 << 17)
    tx.add(b"1", b"")
    tx.add(b"2", bytes(1 << 16))                    # over the socket's limit: EMSGSIZE
    tx.add(b"3", b"")
    assert tx.flush(a) == (2, 1)
    assert received(RxBatch(4, 64), b) == [b"1", b"3"]


@pytest.mark.parametrize("count", [0, MAX_BATCH + 1])
def test_a_batch_holds_1_to_1024_frames(count):
    with pytest.raises(ValueError, match="1 to 1024"):
        RxBatch(count, 64)
    with pytest.raises(ValueError, match="1 to 1024"):
        TxBatch(count, 64)
