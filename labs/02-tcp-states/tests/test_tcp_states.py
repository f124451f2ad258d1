"""Lab 2 public tests: the TCP state machine (tcp_conntracks[][][] and its timeouts)."""
import sys
import time

from nattrack.exercises.checks import partial_credit, same_replay
from nattrack.exercises.testing import test

STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
          "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]
FLAGS = ["SYN", "SYN-ACK", "FIN", "ACK", "RST", "NONE"]
IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
# Every TCP timeout different, so a swapped sysctl name shows in the table.
DISTINCT = {"nf_conntrack_tcp_timeout_syn_sent": 101, "nf_conntrack_tcp_timeout_syn_recv": 62,
            "nf_conntrack_tcp_timeout_established": 4321, "nf_conntrack_tcp_timeout_fin_wait": 103,
            "nf_conntrack_tcp_timeout_close_wait": 64, "nf_conntrack_tcp_timeout_last_ack": 35,
            "nf_conntrack_tcp_timeout_time_wait": 106, "nf_conntrack_tcp_timeout_close": 17,
            "nf_conntrack_tcp_timeout_max_retrans": 308,
            "nf_conntrack_tcp_timeout_unacknowledged": 309}


@test(points=2, number="2.1", name="The three-way handshake: NONE -> SYN_SENT -> SYN_RECV -> ESTABLISHED",
      mode="offline")
def handshake(ctx):
    steps = [("NONE", "ORIGINAL", "SYN", "SYN_SENT"), ("SYN_SENT", "REPLY", "SYN-ACK", "SYN_RECV"),
             ("SYN_RECV", "ORIGINAL", "ACK", "ESTABLISHED")]
    for state, d, flag, want in steps:
        got = ctx.call("tcp_states.next_state", state, d, flag)
        assert got == want, f"{state} --{flag} ({d})--> {got}, expected {want}"


@test(points=4, number="2.2", name="Every cell of the transition table (partial credit)", mode="offline")
def whole_table(ctx):
    from nattrack.conntrack.proto_tcp import TCP_CONNTRACKS, TCP_CONNTRACK_NAMES, sIG, sIV
    names = {sIV: "INVALID", sIG: "IGNORE", **dict(enumerate(TCP_CONNTRACK_NAMES))}
    cases = []
    for di, d in enumerate(("ORIGINAL", "REPLY")):
        for fi, flag in enumerate(FLAGS):
            for si, state in enumerate(STATES):
                got = ctx.call("tcp_states.next_state", state, d, flag)
                cases.append((f"{state} --{flag} ({d})", got, names[TCP_CONNTRACKS[di][fi][si]]))
    return partial_credit(cases)


@test(points=2, number="2.3", name="Each state's timeout: its sysctl and the kernel's default",
      mode="offline")
def timeouts(ctx):
    want = {"SYN_SENT": ["nf_conntrack_tcp_timeout_syn_sent", 120],
            "SYN_RECV": ["nf_conntrack_tcp_timeout_syn_recv", 60],
            "ESTABLISHED": ["nf_conntrack_tcp_timeout_established", 432000],
            "FIN_WAIT": ["nf_conntrack_tcp_timeout_fin_wait", 120],
            "CLOSE_WAIT": ["nf_conntrack_tcp_timeout_close_wait", 60],
            "LAST_ACK": ["nf_conntrack_tcp_timeout_last_ack", 30],
            "TIME_WAIT": ["nf_conntrack_tcp_timeout_time_wait", 120],
            "CLOSE": ["nf_conntrack_tcp_timeout_close", 10],
            "RETRANS": ["nf_conntrack_tcp_timeout_max_retrans", 300],
            "UNACK": ["nf_conntrack_tcp_timeout_unacknowledged", 300]}
    cases = []
    for state, w in want.items():
        got = ctx.call("tcp_states.timeout", state)
        if isinstance(got, list) and got and isinstance(got[0], str):
            got = [got[0].removeprefix("net.netfilter."), *got[1:]]
        cases.append((f"timeout({state!r})", got, w))
    return partial_credit(cases)


def _replay(ctx, **kw):
    args = dict(iface=IFACES, rules=str(ctx.manifest.rules), **kw)
    capture = str(ctx.lab_dir / "data" / "tcp.pcapng")
    return ctx.replay(capture, **args), ctx.reference_replay(capture, **args)


@test(points=3, number="2.4", name="Recorded connections: the same events and table as the kernel",
      mode="offline")
def replay_defaults(ctx):
    got, want = _replay(ctx)
    same_replay(got, want)


@test(points=3, number="2.5", name="Recorded connections with every TCP timeout changed", mode="offline")
def replay_sysctls(ctx):
    got, want = _replay(ctx, sysctl=DISTINCT, now=1767225600.0 + 12)
    same_replay(got, want)


# Test 2.6 closes two connections, each the same way every run: who sends the first FIN is
# decided by the programs, and every ACK that could ride on a FIN is held back by PAUSE
# (longer than Linux's 200-ms longest delayed ACK), so it travels alone.  (A curl to srv's
# web page did not do that: srv's FIN rode on the page or followed it, curl closed when the
# page was complete, and whether "ORIGINAL ACK in LAST_ACK" was ever used was luck.)
PORT, PAUSE = 8000, 0.5
SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(2)
s.settimeout(20)
print("ready", flush=True)
for first in ("srv", "h1"):                  # who closes first
    c, _ = s.accept()
    c.settimeout(10)
    c.recv(100)
    c.sendall(b"answer\n")
    if first == "h1":
        while c.recv(100):                   # until h1's FIN
            pass
    time.sleep(float(sys.argv[2]))           # h1's ACK of the answer, or ours of its FIN, alone
    c.close()
"""
CLIENT = r"""
import socket, sys, time
for first in ("srv", "h1"):
    c = socket.create_connection(("203.0.113.10", int(sys.argv[1])), timeout=10)
    print(c.getsockname()[1], flush=True)
    c.sendall(b"question\n")
    c.recv(100)
    if first == "h1":
        c.shutdown(socket.SHUT_WR)           # our FIN first
    while c.recv(100):                       # until srv's FIN
        pass
    time.sleep(float(sys.argv[2]))           # our ACK of srv's FIN alone, then our FIN
    c.close()
"""
CLOSES = {"srv": "srv closes first (srv FIN, h1 ACK, h1 FIN, srv ACK)",
          "h1": "h1 closes first (h1 FIN, srv ACK, srv FIN, h1 ACK)"}


def _settled(lab, filters, done, wait=3.0) -> list[dict]:
    """The router's entries matching ``filters`` once ``done(entries)`` holds, or as they are
    after ``wait`` seconds (the last packets may still be on their way through the router)."""
    end = time.monotonic() + wait
    while True:
        entries = lab.list_json(filters)
        if done(entries) or time.monotonic() > end:
            return entries
        time.sleep(0.1)


@test(points=4, number="2.6", name="Live: connections through your state machine, closed by "
      "either side", mode="live", timeout=60)
def live_close(ctx):
    lab = ctx.live
    tw = ctx.variant.get("time_wait", 77)
    lab.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", tw)
    lab.flush()
    r = lab.exec("h1", ["curl", "-s", "-m", "5", "http://203.0.113.10/"], timeout=10)
    assert r.returncode == 0, f"curl from h1 through the router failed (status {r.returncode})"
    server = lab.exec_session("srv", [sys.executable, "-c", SERVER, str(PORT), str(PAUSE)],
                              timeout=30)
    try:
        said = b""
        for _, chunk in server:
            said += chunk
            if b"ready" in said:
                break
        assert b"ready" in said, f"the test's server on srv did not start: {said[-200:]!r}"
        r = lab.exec("h1", [sys.executable, "-c", CLIENT, str(PORT), str(PAUSE)], timeout=20)
        assert r.returncode == 0, (f"h1's connections to srv port {PORT} through the router "
                                   f"failed: {r.stderr.strip().splitlines()[-1:]}")
    finally:
        try:
            server.signal("KILL")              # done by now, or stuck: never left behind
        except OSError:
            pass
        server.close()
    ports = dict(zip(CLOSES, map(int, r.stdout.split())))
    flt = {"proto": "tcp", "dport": PORT}
    entries = {e["orig"]["sport"]: e for e in _settled(
        lab, flt, lambda es: sum(e["state"] == "TIME_WAIT" for e in es) == 2)}
    found = {first: entries.get(port, {}) for first, port in ports.items()}
    assert all(found.values()), f"no entry in the router's table for h1's connection to port {PORT}"
    srv_first = found["srv"]
    cases = [(f"{what}: the state after it", found[first]["state"], "TIME_WAIT")
             for first, what in CLOSES.items()]
    cases.append(("data went both ways: ASSURED", bool(srv_first["assured"]), True))
    if srv_first["state"] == "TIME_WAIT":
        cases.append((f"the TIME_WAIT timeout with nf_conntrack_tcp_timeout_time_wait={tw}",
                      tw - 7 <= srv_first["timeout"] <= tw, True))
    r = lab.exec("h1", ["curl", "-s", "-m", "3", "http://203.0.113.10:9/"], timeout=10)
    assert r.returncode != 0, "a connection to a closed port succeeded?"
    left = _settled(lab, {"proto": "tcp", "dport": 9}, lambda es: not es)
    cases.append(("a SYN answered by a RST: the entry is deleted at once (the kernel does)",
                  [e["state"] for e in left], []))
    return partial_credit(cases)
