"""Lab 3 public tests: UDP timeouts and ASSURED, ICMP queries, ICMP errors as RELATED."""
import time

from nattrack.exercises.checks import partial_credit, same_replay
from nattrack.exercises.testing import test

IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
ROUTES = {"default": "ntr-wan"}


def _replay(ctx, name, **kw):
    args = dict(iface=IFACES, route=ROUTES, rules=str(ctx.manifest.rules), **kw)
    capture = str(ctx.lab_dir / "data" / name)
    return ctx.replay(capture, **args), ctx.reference_replay(capture, **args)


@test(points=2, number="3.1", name="udp_timeout(): unreplied, replied, stream (partial credit)",
      mode="offline")
def udp_decisions(ctx):
    plain, stream = "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"
    cases = []
    for replied, age, want in [(False, 0.0, [plain, False]), (False, 5.0, [plain, False]),
                               (True, 0.5, [plain, False]), (True, 2.0, [plain, False]),
                               (True, 2.004, [stream, True]), (True, 300.0, [stream, True])]:
        got = ctx.call("udp.udp_timeout", replied, age)
        if isinstance(got, list) and got and isinstance(got[0], str):
            got = [got[0].removeprefix("net.netfilter."), *got[1:]]
        cases.append((f"udp_timeout({replied}, {age})", got, want))
    return partial_credit(cases)


@test(points=3, number="3.2", name="Recorded UDP flows: the same events and table as the kernel",
      mode="offline")
def udp_replay(ctx):
    got, want = _replay(ctx, "udp.pcapng")
    same_replay(got, want)


@test(points=2, number="3.3", name="reply_type() for every ICMP type (partial credit)", mode="offline")
def reply_types(ctx):
    from nattrack.conntrack.tuple import ICMP_INVMAP
    cases = [(f"reply_type({t})", ctx.call("icmp.reply_type", t), ICMP_INVMAP.get(t)) for t in range(41)]
    return partial_credit(cases)


@test(points=2, number="3.4", name="Recorded pings and other ICMP queries", mode="offline")
def ping_replay(ctx):
    got, want = _replay(ctx, "ping.pcapng")
    same_replay(got, want, stats=("invalid",))


@test(points=3, number="3.5", name="error_lookup() and related_ctinfo() (partial credit)", mode="offline")
def error_functions(ctx):
    udp = {"proto": "udp", "src": "203.0.113.1", "dst": "203.0.113.10", "sport": 41002, "dport": 9999}
    echo = {"proto": "icmp", "src": "203.0.113.1", "dst": "198.51.100.7", "type": 8, "code": 0, "id": 17185}
    reply = dict(echo, type=0)
    dest_unreach = dict(echo, type=3, id=0)
    cases = [
        ("error_lookup(a quoted UDP datagram)", ctx.call("icmp.error_lookup", udp),
         {"proto": "udp", "src": "203.0.113.10", "dst": "203.0.113.1", "sport": 9999, "dport": 41002}),
        ("error_lookup(a quoted echo request)", ctx.call("icmp.error_lookup", echo),
         dict(echo, src="198.51.100.7", dst="203.0.113.1", type=0)),
        ("error_lookup(a quoted echo reply)", ctx.call("icmp.error_lookup", reply),
         dict(echo, src="198.51.100.7", dst="203.0.113.1", type=8)),
        ("error_lookup(a quoted ICMP error)", ctx.call("icmp.error_lookup", dest_unreach), None),
        ("related_ctinfo('REPLY', same destination)",
         ctx.call("icmp.related_ctinfo", "REPLY", "203.0.113.1", "203.0.113.1"), "RELATED_REPLY"),
        ("related_ctinfo('ORIGINAL', same destination)",
         ctx.call("icmp.related_ctinfo", "ORIGINAL", "203.0.113.10", "203.0.113.10"), "RELATED"),
        ("related_ctinfo('REPLY', another destination)",
         ctx.call("icmp.related_ctinfo", "REPLY", "203.0.113.50", "203.0.113.1"), None),
    ]
    return partial_credit(cases)


@test(points=3, number="3.6", name="Recorded ICMP errors: RELATED ones pass the filter, forged ones do not",
      mode="offline")
def errors_replay(ctx):
    got, want = _replay(ctx, "errors.pcapng")
    same_replay(got, want, stats=("error", "invalid"))


PROBE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("203.0.113.10", 9999))
s.send(b"anyone?")
try:
    s.recv(100)
    print("answer")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e.settimeout(2)
e.bind(("", 41234))
e.connect(("203.0.113.10", 7))
for i in range(2):
    e.send(b"hello")
    print("echo" if e.recv(100).endswith(b" hello") else "wrong")
    time.sleep(2.3)
"""


@test(points=4, number="3.7", name="Live: ping, a refused UDP port and a UDP stream through your code",
      mode="live", timeout=60)
def live(ctx):
    lab = ctx.live
    lab.flush()
    r = lab.exec("h1", ["ping", "-c", "2", "-i", "0.3", "-W", "2", "203.0.113.10"], timeout=15)
    assert r.returncode == 0, "ping from h1 to the server got no answer through the router"
    r = lab.exec("h1", ["python3", "-c", PROBE], timeout=20)
    out = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
    lines = out.split()
    assert lines[:1] == ["refused"], (f"UDP to a closed port: h1 saw {lines[:1] or 'nothing'}, expected "
                                      f"the port unreachable error (RELATED, translated back)")
    assert lines[1:3] == ["echo", "echo"], f"the UDP echo exchange failed: {lines[1:]}"
    entries = [e for e in lab.list_json({"proto": "udp", "sport": 41234})]
    assert entries, "no UDP entry for h1's echo flow in the router's table"
    e = entries[0]
    assert e["assured"], "a UDP flow with replies, older than 2 s, is not ASSURED"
    assert e["timeout"] > 100, f"the stream's timeout is {e['timeout']} s, expected about 120"
