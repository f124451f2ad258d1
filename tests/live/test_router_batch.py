"""Frames in batches (nattrack/router/batch.py) on a real veth pair, and the python-mode
router forwarding with and without them.

The ctypes layer runs in a namespace of its own (``ntl<pid>x900-v``) holding both ends
of one veth pair, ``va`` and ``vb``: a child process inside it sends and receives
through packet sockets opened as the router opens them (quiet.packet_socket) and
prints what it saw as JSON.  Every check runs for the batch classes (recvmmsg/sendmmsg)
and for the one-frame-per-call fallback, which must behave the same.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from .burst import BURST, server  # noqa: F401 -- the fixture, used by name
from .conftest import MASQ_RULES, PYTHON, ROOT, RouterProc
from .netns import SERVER, sh

NS = f"ntl{os.getpid()}x900-v"

# Runs inside NS.  Frames are Ethernet with the local experimental type 0x88B5 and a
# sequence number; IPv6 is off, so nothing else is on the wire, but the checks filter
# on the type anyway.
CHILD = r"""
import json, socket, struct, sys, time
from nattrack.router import batch
from nattrack.router.quiet import VNET_LEN, VNET_ZERO, iface_info, packet_socket
kind = sys.argv[1]
Rx, Tx = (batch.RxBatch, batch.TxBatch) if kind == "batch" else (batch.SingleRx, batch.SingleTx)
a, b = packet_socket("va"), packet_socket("vb")
watch = packet_socket("va")             # another socket on va: sees a's sends as outgoing
b.setsockopt(263, 23, 1)                                   # PACKET_IGNORE_OUTGOING on vb only
mac_a, mac_b = iface_info("va")[1], iface_info("vb")[1]
HDR = VNET_ZERO + mac_b + mac_a + b"\x88\xb5"

def frame(seq, size=60):
    return HDR + struct.pack("!I", seq) + bytes(size - 18)

def drain(rx, sock, want, limit=5.0):
    # (calls, [(seq, length, pkttype, ifindex)...]) until `want` test frames came
    got, calls, deadline = [], [], time.monotonic() + limit
    while len(got) < want and time.monotonic() < deadline:
        n = rx.recv(sock)
        if not n:
            time.sleep(0.001)
            continue
        calls.append(n)
        for i in range(n):
            off, size = i * rx.slot, rx.length(i)
            f = rx.view[off + VNET_LEN:off + size]
            if bytes(f[12:14]) == b"\x88\xb5":
                got.append((struct.unpack("!I", f[14:18])[0], size - VNET_LEN, rx.pkttype(i),
                            rx.ifindex(i)))
    return calls, got

out = {"problem": batch.mmsg_problem(a)}
# 1. a burst of 150 frames sent one by one, read back in batches of at most 64
for i in range(150):
    a.send(frame(i))
time.sleep(0.05)
rx = Rx(64, 65536 + VNET_LEN)
calls, got = drain(rx, b, 150)
out["burst"] = {"calls": calls, "seqs": [g[0] for g in got], "lens": sorted({g[1] for g in got}),
                "ifindexes": sorted({g[3] for g in got})}
out["index"] = {"va": socket.if_nametoindex("va"), "vb": socket.if_nametoindex("vb")}
# 2. nothing waiting: recv answers 0 at once
t = time.monotonic()
out["empty"] = {"got": rx.recv(b), "seconds": time.monotonic() - t}
# 3. 150 frames of growing sizes through a batch of 64 slots (flushed when full)
tx = Tx(64, 1514 + VNET_LEN)
sent = refused = 0
for i in range(150):
    f = frame(1000 + i, 60 + i * 9)
    if not tx.add(f[:len(HDR)], f[len(HDR):]):
        s, r = tx.flush(a); sent += s; refused += r
        assert tx.add(f[:len(HDR)], f[len(HDR):])
s, r = tx.flush(a); sent += s; refused += r
calls, got = drain(rx, b, 150)
out["tx"] = {"sent": sent, "refused": refused, "seqs": [g[0] for g in got],
             "lens": [g[1] for g in got]}
# 4. a frame over the slot is not taken; one over the MTU is refused by the kernel,
#    counted, and the frames around it still go
big = Tx(4, 9000)
out["over_slot"] = Tx(4, 100).add(HDR, bytes(200))
big.add(HDR, struct.pack("!I", 2000) + bytes(60))
big.add(HDR, struct.pack("!I", 2001) + bytes(3000))      # over va's MTU of 1500: EMSGSIZE
big.add(HDR, struct.pack("!I", 2002) + bytes(60))
out["refusal"] = list(big.flush(a))
calls, got = drain(rx, b, 2, limit=1.0)
out["refusal_seqs"] = [g[0] for g in got]
# 5. another socket on va sees what a sent as PACKET_OUTGOING (4): the router skips those
calls, got = drain(rx, watch, 1, limit=1.0)
out["outgoing_pkttypes"] = sorted({g[2] for g in got})
out["outgoing_ifindexes"] = sorted({g[3] for g in got})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def veth_ns(live_env):
    sh("ip", "netns", "add", NS)
    try:
        for cmd in (["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"],
                    ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                    ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
                    ["ip", "link", "set", "va", "up"], ["ip", "link", "set", "vb", "up"]):
            sh("ip", "netns", "exec", NS, *cmd)
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)


@pytest.mark.parametrize("kind", ["batch", "single"])
def test_frames_in_batches_on_a_veth_pair(veth_ns, kind):
    p = subprocess.run(["ip", "netns", "exec", veth_ns, PYTHON, "-c", CHILD, kind], check=False, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["problem"] is None                     # recvmmsg/sendmmsg work on this machine
    burst = out["burst"]
    assert burst["seqs"] == list(range(150))          # all of them, in order
    assert burst["lens"] == [60]
    assert burst["ifindexes"] == [out["index"]["vb"]]  # sll_ifindex: the frames came in by vb
    if kind == "batch":
        assert max(burst["calls"]) == 64 and len(burst["calls"]) <= 4   # 64 per call at most
    else:
        assert set(burst["calls"]) == {1}
    assert out["empty"]["got"] == 0 and out["empty"]["seconds"] < 0.05
    tx = out["tx"]
    assert (tx["sent"], tx["refused"]) == (150, 0)
    assert tx["seqs"] == list(range(1000, 1150))
    assert tx["lens"] == [60 + i * 9 for i in range(150)]
    if kind == "batch":
        assert out["over_slot"] is False
    assert out["refusal"] == [2, 1]
    assert out["refusal_seqs"] == [2000, 2002]
    assert out["outgoing_pkttypes"] == [4]
    assert out["outgoing_ifindexes"] == [out["index"]["va"]]


# --- the router, batched and not ---------------------------------------------------------------

RULES = MASQ_RULES.format(masq_opts="")

@pytest.mark.usefixtures("server")
@pytest.mark.parametrize("no_batch", ["0", "1"])
def test_router_forwards_with_and_without_batches(topo, workdir, monkeypatch, no_batch):
    monkeypatch.setenv("NATTRACK_NO_BATCH", no_batch)
    r = RouterProc(topo, workdir, "python", RULES)
    try:
        ping = topo.exec(topo.client, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", SERVER, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        before = r.call("stats")["router"]
        # 200 echoes in a burst: the server answers each, so both directions batch
        p = topo.exec(topo.client, PYTHON, "-c", BURST, SERVER, "200", timeout=30)
        assert int(p.stdout) >= 198, p.stdout       # UDP: a socket may drop one or two
        after = r.call("stats")["router"]
        assert after["tx_frames"] - before["tx_frames"] >= 2 * 198
        assert after["router_errors"] == after["tx_errors"] == 0
        log = r.log_path.read_text()
        assert ("one frame per system call" in log) == (no_batch == "1"), log
    finally:
        assert r.stop() == 0
