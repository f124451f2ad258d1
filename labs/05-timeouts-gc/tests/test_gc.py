"""Lab 5 public tests: the gc worker's scan and schedule, a full table, early drop."""
import time

from nattrack.exercises.checks import partial_credit, same_replay
from nattrack.exercises.testing import test

IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
HZ = 250
SHORT = {"nf_conntrack_udp_timeout": 7, "nf_conntrack_icmp_timeout": 4,
         "nf_conntrack_tcp_timeout_time_wait": 11, "nf_conntrack_udp_timeout_stream": 25}


def _replay(ctx, name, **kw):
    args = dict(iface=IFACES, rules=str(ctx.manifest.rules), **kw)
    capture = str(ctx.lab_dir / "data" / name)
    return ctx.replay(capture, **args), ctx.reference_replay(capture, **args)


@test(points=2, number="5.1", name="gc_verdict(): reap, evict, keep (partial credit)", mode="offline")
def verdicts(ctx):
    cases = []
    for args, want in [((-5, True, False, False), "reap"), ((0, False, False, True), "reap"),
                       ((1, False, False, False), "keep"), ((1, False, False, True), "evict"),
                       ((HZ, True, False, True), "keep"), ((HZ, True, True, True), "evict"),
                       ((HZ, True, True, False), "keep"), ((-1, True, True, True), "reap")]:
        cases.append((f"gc_verdict{args}", ctx.call("gc_worker.gc_verdict", *args), want))
    return partial_credit(cases)


def _next_run(lefts, elapsed):
    avg, count = 60 * HZ, 100
    for left in lefts:
        left = min(max(left, HZ), 300 * HZ)
        count += 1
        avg += int((left - avg) / count)
    avg = min(max(avg, HZ), 60 * HZ)
    return avg - elapsed if avg > elapsed else 1


@test(points=3, number="5.2", name="next_run(): the running average of time left (partial credit)",
      mode="offline")
def schedule(ctx):
    cases = []
    for label, lefts, elapsed in [
            ("an empty table", [], 1),
            ("a few long-lived entries", [432000 * HZ] * 3, 1),
            ("entries about to expire", [10, 20, 30] * 20, 1),
            ("a negative step truncates toward zero", [HZ + 7], 1),
            ("a mixed table", [5 * HZ, 400 * HZ, 2 * HZ, 61 * HZ, 3] * 30, 4),
            ("a scan that took longer than the average", [HZ] * 500, 20 * HZ)]:
        cases.append((f"next_run({label})", ctx.call("gc_worker.next_run", lefts, elapsed),
                      _next_run(lefts, elapsed)))
    return partial_credit(cases)


@test(points=3, number="5.3", name="Recorded short flows: DESTROY events when the kernel's gc sends them",
      mode="offline")
def gc_replay(ctx):
    got, want = _replay(ctx, "gc.pcapng", sysctl=SHORT, now=1767225600.0 + 200)
    same_replay(got, want)


@test(points=2, number="5.4", name="early_drop(): reap in passing, spare ASSURED, stop after a chain",
      mode="offline")
def early(ctx):
    A, U, X = ({"assured": True, "expired": False}, {"assured": False, "expired": False},
               {"assured": True, "expired": True})
    cases = []
    for label, chains, want in [
            ("nothing to evict", [[A], [], [A, A]] + [[]] * 5, []),
            ("the first chain's unassured", [[U, A, U], [U]] + [[]] * 6, [[0, 0, "evict"], [0, 2, "evict"]]),
            ("expired entries reaped on the way", [[X, A], [A, U, X]] + [[]] * 6,
             [[0, 0, "reap"], [1, 1, "evict"], [1, 2, "reap"]]),
            ("only expired: no eviction, all chains walked", [[X]] + [[]] * 6 + [[X, U]],
             [[0, 0, "reap"], [7, 0, "reap"], [7, 1, "evict"]])]:
        cases.append((f"early_drop({label})", ctx.call("gc_worker.early_drop", chains), want))
    return partial_credit(cases)


@test(points=4, number="5.5", name="A full table: early drop, then the gc evicts closing connections",
      mode="offline")
def full_replay(ctx):
    got, want = _replay(ctx, "full.pcapng",
                        sysctl={"nf_conntrack_max": 100, "nf_conntrack_buckets": 2},
                        now=1767225600.0 + 80)
    same_replay(got, want, stats=("early_drop", "drop"))


PROBE = r"""
import socket, sys
for port in range(int(sys.argv[1]), int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.7)
    s.bind(("", port))
    s.connect(("203.0.113.10", 9))
    s.send(b"x")
    try:
        s.recv(10)
        print("answer")
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("timeout")
"""


@test(points=4, number="5.6", name="Live: a small table, short UDP timeouts, no error in the router",
      mode="live", timeout=60)
def live(ctx):
    lab = ctx.live
    size = ctx.variant.get("table_max", 4)
    lab.flush()
    lab.sysctl("net.netfilter.nf_conntrack_udp_timeout", 2)
    lab.sysctl("net.netfilter.nf_conntrack_max", size)
    try:
        r = lab.exec("h1", ["python3", "-c", PROBE, "46001", str(46002 + size)], timeout=15)
        got = (r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout).split()
        assert got[:size] == ["refused"] * size, (f"the first {size} flows: {got[:size]}, expected "
                                                  f"{size} refusals (nf_conntrack_max={size})")
        assert got[size:] == ["timeout"], (f"the next flow found the table full ({size} unassured "
                                           f"entries elsewhere in the hash) and must be dropped; "
                                           f"h1 saw {got[size:]}")
        entries = lab.list_json({"proto": "udp", "dport": 9})
        assert len(entries) == size, f"{len(entries)} UDP entries in a table of {size}"
        assert all(e["timeout"] <= 2 for e in entries), "an entry's timeout is above nf_conntrack_udp_timeout=2"
        time.sleep(2.5)
        assert not lab.list_json({"proto": "udp", "dport": 9}), "entries outlived their 2-s timeout"
        r = lab.exec("h1", ["python3", "-c", PROBE, "46010", "46011"], timeout=10)
        assert b"refused" in r.stdout if isinstance(r.stdout, bytes) else "refused" in r.stdout, \
            "after the entries expired a new flow still found the table full"
        errors = lab.stats()["router"].get("router_errors", 0)
        assert errors == 0, f"your code raised {errors} error(s) in the live router (see its log)"
    finally:
        lab.sysctl("net.netfilter.nf_conntrack_max", 262144)
        lab.sysctl("net.netfilter.nf_conntrack_udp_timeout", 30)
