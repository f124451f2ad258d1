"""Lab 2 public tests: the TCP state machine (tcp_conntracks[][][] and its timeouts)."""
import time

from nattrack.labs.checks import partial_credit, same_replay
from nattrack.labs.testing import test

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


@test(points=4, number="2.6", name="Live: a web request through your state machine", mode="live",
      timeout=60)
def live_web(ctx):
    lab = ctx.live
    tw = ctx.variant.get("time_wait", 77)
    lab.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", tw)
    lab.flush()
    r = lab.exec("h1", ["curl", "-s", "-m", "5", "http://203.0.113.10/"], timeout=10)
    assert r.returncode == 0, f"curl from h1 through the router failed (status {r.returncode})"
    time.sleep(0.3)
    entries = [e for e in lab.list_json({"proto": "tcp", "dport": 80}) if e["orig"]["src"] == "10.0.0.10"]
    assert entries, "no TCP entry for h1's web request in the router's table"
    e = entries[-1]
    assert e["state"] == "TIME_WAIT", f"after the close the entry is {e['state']}, expected TIME_WAIT"
    assert e["assured"], "the entry carried data both ways but is not ASSURED"
    assert tw - 7 <= e["timeout"] <= tw, (f"TIME_WAIT timeout {e['timeout']} s with "
                                          f"nf_conntrack_tcp_timeout_time_wait={tw}")
    r = lab.exec("h1", ["curl", "-s", "-m", "3", "http://203.0.113.10:9/"], timeout=10)
    assert r.returncode != 0, "a connection to a closed port succeeded?"
    time.sleep(0.3)
    left = lab.list_json({"proto": "tcp", "dport": 9})
    assert not left, (f"the SYN answered by a RST left an entry ({left[0]['state']}); "
                      f"the kernel deletes it at once")
