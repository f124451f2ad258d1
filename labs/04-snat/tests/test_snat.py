"""Lab 4 public tests: the port choice of source NAT and incremental checksums."""
import random
import time

from nattrack.exercises.checks import partial_credit, same_replay
from nattrack.exercises.testing import test

IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}


@test(points=2, number="4.1", name="port_range(): privileged ports stay privileged", mode="offline")
def ranges(ctx):
    cases = [(f"port_range({p})", ctx.call("snat.port_range", p), want)
             for p, want in [(1, [1, 511]), (80, [1, 511]), (511, [1, 511]), (512, [600, 1023]),
                             (700, [600, 1023]), (1023, [600, 1023]), (1024, [1024, 65535]),
                             (41000, [1024, 65535]), (65535, [1024, 65535])]]
    return partial_credit(cases)


@test(points=4, number="4.2", name="pick_port(): keep, search, wrap around, --to-ports (partial credit)",
      mode="offline")
def picks(ctx):
    cases = [
        ("a free port stays", [41000, None, 5, []], 41000),
        ("a taken port moves to lo + offset", [41000, None, 5, [41000]], 1029),
        ("taken candidates are skipped", [41000, None, 5, [41000, 1029, 1030]], 1031),
        ("the search wraps around the range", [700, None, 423, [700, 1023]], 600),
        ("the offset is taken modulo the range size", [700, None, 424 + 3, [700]], 603),
        ("the offset wraps at 65536", [100, None, 65535, [100, 128, 1, 2]], 3),
        ("a port inside --to-ports stays", [5001, [5000, 5003], 2, []], 5001),
        ("a port outside --to-ports moves", [41000, [5000, 5003], 2, []], 5002),
        ("a one-port range is kept, taken or not", [5000, [5000, 5000], 0, [5000]], 5000),
        ("a full range gives the last one tried", [41000, [5000, 5003], 1, [5000, 5001, 5002, 5003]], 5000),
    ]
    results = [(label, ctx.call("snat.pick_port", *args), want) for label, args, want in cases]
    return partial_credit(results)


def _full(words):
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@test(points=3, number="4.3", name="csum_replace2/4 agree with a full recomputation (partial credit)",
      mode="offline")
def checksums(ctx):
    rng = random.Random(4)
    cases = []
    for i in range(40):
        words = [rng.randrange(0x10000) for _ in range(10)]
        if i == 0:
            words = [0xFFFF] * 10
        check = _full(words)
        if i % 2:
            at, new = rng.randrange(10), rng.randrange(0x10000)
            got = ctx.call("snat.csum_replace2", check, words[at], new)
            words[at] = new
            label = f"csum_replace2({check:#06x}, ...)"
        else:
            old = words[2] << 16 | words[3]
            new = rng.randrange(1 << 32)
            got = ctx.call("snat.csum_replace4", check, old, new)
            words[2], words[3] = new >> 16, new & 0xFFFF
            label = f"csum_replace4({check:#06x}, {old:#010x}, {new:#010x})"
        cases.append((label, got, _full(words)))
    return partial_credit(cases)


@test(points=4, number="4.4", name="Recorded clashes: the same NAT choices as the kernel, right checksums",
      mode="offline")
def replay(ctx):
    args = dict(iface=IFACES, rules=str(ctx.manifest.rules), seed=7)
    capture = str(ctx.lab_dir / "data" / "snat.pcapng")
    got, want = ctx.replay(capture, **args), ctx.reference_replay(capture, **args)
    same_replay(got, want, stats=("found", "insert_failed"))


ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.bind(("", int(sys.argv[1])))
s.sendto(b"hi", ("203.0.113.10", 7))
print(s.recv(200).decode().split()[0])
"""


@test(points=4, number="4.5", name="Live: two hosts, one source port; h3 inside its port range",
      mode="live", timeout=60)
def live(ctx):
    lab = ctx.live
    lab.flush()
    port = ctx.variant.get("client_port", 5555)
    seen = {}
    for host in ("h1", "h2", "h3"):
        r = lab.exec(host, ["python3", "-c", ECHO, str(port)], timeout=10)
        out = (r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout).strip()
        assert r.returncode == 0 and ":" in out, f"{host}'s UDP from port {port} got no echo through the router"
        addr, public_port = out.rsplit(":", 1)
        assert addr == "203.0.113.1", f"the server saw {host} as {addr}, expected the router 203.0.113.1"
        seen[host] = int(public_port)
    assert seen["h1"] == port, f"h1's free port {port} was changed to {seen['h1']}"
    assert seen["h2"] != port and seen["h2"] >= 1024, f"h2's clashing port {port} became {seen['h2']}"
    assert 5000 <= seen["h3"] <= 5003, f"h3's UDP left from port {seen['h3']}, outside --to-ports 5000-5003"
    r = lab.exec("h2", ["curl", "-s", "-m", "5", "http://203.0.113.10/"], timeout=10)
    assert r.returncode == 0, "a web request from h2 failed: are the rewritten TCP checksums right?"
