"""The expectation table and the helper in the router's views (docs/helpers.md): the
control socket's ``list``/``count``/``flush``/``stats``/``events`` with ``"table":
"expect"``, ``helper=`` and ``use=`` on the conntrack lines, and ``nattrack conntrack
-L expect`` / ``-E expect`` / ``-C`` / ``-F`` / ``-S`` as conntrack-tools prints them.

A real router (Dataplane, Control on a Unix socket) carries a crafted FTP control
connection through MASQUERADE with ``-j CT --helper ftp``; the live counterparts, with
vsftpd and curl through both routers, are in tests/live/test_ftp.py."""
from __future__ import annotations

import io
import itertools
import json
import socket
import tempfile
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP

from nattrack.cli.conntrack import run_conntrack
from nattrack.lab import rpc
from nattrack.lab.api import ConntrackAPI
from nattrack.lab.ctargs import CtUsageError, kernel_argv, parse, validate
from nattrack.router.control import Control, ControlError
from nattrack.router.dataplane import Dataplane

from nattrack_lab import PRIV1, PUB, RTR_PUB, Lab, TcpFlow, strip_ts

RULES = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
         "-A PREROUTING -p tcp --dport 21 -j CT --helper ftp\nCOMMIT\n"
         "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
         ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n")
# The passive data connection the server's 227 announces (the client's side, before NAT).
EXPECT_LINE = (f"300 proto=6 src={PRIV1} dst={PUB} sport=0 dport=51210 "
               "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
               f"master-src={PRIV1} master-dst={PUB} sport=40000 dport=21 class=0 helper=ftp")
PASV_227 = b"227 Entering Passive Mode (203,0,113,2,200,10).\r\n"


class Router(ConntrackAPI):
    """The lab's API over one router's control socket (what LocalLab does for a node)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def router_call(self, verb, args=None, router=None):
        return rpc.request(self.path, verb, args or {}, timeout=10)

    def router_stream(self, verb, args=None, router=None):
        return rpc.stream(self.path, verb, args or {}, timeout=10)


@pytest.fixture
def ftp():
    lab = Lab(rules=RULES)
    dp = Dataplane(lab.router, {"eth0": ["10.0.0.1/24"], "eth1": ["203.0.113.1/24"]})
    with tempfile.TemporaryDirectory(prefix="ntex-") as d:
        ctl = Control(dp, f"{d}/ctl.sock")
        ctl.start()
        flow = TcpFlow(lab, sport=40000, dport=21)
        flow.nat_addr = RTR_PUB
        flow.handshake()
        # The first line each way only teaches the helper where lines start.
        flow.server("PA", b"220 hi\r\n")
        flow.client("PA", b"USER anonymous\r\n")
        ctl.lab, ctl.flow, ctl.api = lab, flow, Router(ctl.path)
        try:
            yield ctl
        finally:
            ctl.close()
            dp.close()


class Events:
    """An ``events`` client of the control socket, connected and subscribed at once."""

    def __init__(self, ctl: Control, args: dict) -> None:
        n = len(ctl.events)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(ctl.path)
        self.sock.sendall((json.dumps({"verb": "events", "args": args}) + "\n").encode())
        self.file = self.sock.makefile("rb")
        deadline = time.monotonic() + 5
        while len(ctl.events) <= n:                # the server registers it in its thread
            assert time.monotonic() < deadline, "the events client was never registered"
            time.sleep(0.01)

    def read(self, n: int) -> list[str]:
        return [json.loads(self.file.readline())["event"] for _ in range(n)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def data_syn(ctl: Control):
    return ctl.lab.send("eth0", IP(src=PRIV1, dst=PUB) / TCP(sport=36150, dport=51210,
                                                             flags="S", seq=7000))


def test_list_count_events_and_stats_follow_the_expectation(ftp):
    master = ftp.call("list", {})
    assert len(master) == 1 and master[0].endswith(" [ASSURED] mark=0 helper=ftp use=1")
    assert ftp.call("list", {"table": "expect"}) == [] and ftp.call("count", {"table": "expect"}) == 0
    exp_events, ct_events = Events(ftp, {"table": "expect"}), Events(ftp, {})
    try:
        ftp.flow.server("PA", PASV_227)
        assert ftp.call("list", {"table": "expect"}) == [EXPECT_LINE]
        assert ftp.call("count", {"table": "expect"}) == 1
        assert exp_events.read(1) == [f"    [NEW] {EXPECT_LINE}"]

        v = data_syn(ftp)
        assert v.sent and v.sent[0].oif == "eth1"
        assert exp_events.read(1) == [f"[DESTROY] {EXPECT_LINE}"]   # taken by the data connection
        assert ftp.call("list", {"table": "expect"}) == []
        lines = ftp.call("list", {})
        master = [x for x in lines if "dport=21 " in x]
        data = [x for x in lines if "dport=51210 " in x]
        assert master[0].endswith(" helper=ftp use=2")          # the data connection holds it
        assert data[0].endswith(" mark=0 use=1")                 # no helper of its own
        # conntrack -E: the data connection's NEW has no helper= (it has none).
        new = [e for e in ct_events.read(1) if e.startswith("    [NEW]")]
        assert new and "dport=51210" in new[0] and "helper=" not in new[0]

        ftp.flow.server("PA", PASV_227)                          # the same again
        assert ftp.call("flush", {"table": "expect"}) == 1       # conntrack -F expect
        assert exp_events.read(2) == [f"    [NEW] {EXPECT_LINE}", f"[DESTROY] {EXPECT_LINE}"]
        assert ftp.call("list", {})[0] == lines[0]               # the entries stay
    finally:
        exp_events.close()
        ct_events.close()
    assert ftp.call("stats", {})["expect"] == {"expect_new": 1, "expect_create": 2,
                                                "expect_delete": 2}


@pytest.mark.parametrize("verb, args, says", [
    ("list", {"table": "dying"}, "table must be"),
    ("list", {"table": "expect", "filters": {"proto": "tcp"}}, "no filters"),
    ("list", {"table": "expect", "format": "json"}, "no json"),
    ("count", {"table": 7}, "table must be"),
    ("flush", {"table": "unconfirmed"}, "table must be"),
])
def test_bad_table_requests_are_one_line_errors(ftp, verb, args, says):
    with pytest.raises(ControlError) as e:
        ftp.call(verb, args)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert ftp.call("count", {}) == 1                            # nothing was flushed


# --- nattrack conntrack ... expect -------------------------------------------------------------

def cli(ftp, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = run_conntrack(parse(list(argv)), ftp.api, out, err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_lists_counts_flushes_and_shows_statistics(ftp):
    assert cli(ftp, "-L", "expect") == (0, "", "conntrack v1.4.7 (conntrack-tools): "
                                              "0 expectations have been shown.\n")
    ftp.flow.server("PA", PASV_227)
    assert cli(ftp, "-L", "expect") == (0, EXPECT_LINE + "\n", "conntrack v1.4.7 "
                                        "(conntrack-tools): 1 expectations have been shown.\n")
    assert cli(ftp, "-C", "expect") == (0, "1\n", "")
    rc, out, _ = cli(ftp, "-L")
    assert rc == 0 and "helper=ftp use=1\n" in out
    assert cli(ftp, "-F", "expect") == (0, "", "conntrack v1.4.7 (conntrack-tools): "
                                              "expectation table has been emptied.\n")
    assert cli(ftp, "-C", "expect") == (0, "0\n", "")
    assert cli(ftp, "-S", "expect") == (0, "cpu=0   \texpect_new=0 expect_create=1 "
                                           "expect_delete=1 \n", "")


def test_cli_events_of_the_expect_table(ftp):
    class TwoEvents(Router):
        """The real stream, ended after two lines (as Ctrl-C would)."""
        def expect_events(self, router=None, timestamp=False):
            gen = super().expect_events(router, timestamp)
            try:
                yield from itertools.islice(gen, 2)
            finally:
                gen.close()

    second = int(ftp.lab.now()) + 1
    ftp.lab.clock.set(second + 0.000123)

    def traffic():
        while len(ftp.events) < 1:
            time.sleep(0.01)
        ftp.flow.server("PA", PASV_227)
        data_syn(ftp)

    t = threading.Thread(target=traffic)
    t.start()
    out, err = io.StringIO(), io.StringIO()
    rc = run_conntrack(parse(["-E", "expect", "-o", "timestamp"]), TwoEvents(ftp.path), out, err)
    t.join()
    lines = out.getvalue().splitlines()
    assert rc == 0 and len(lines) == 2, out.getvalue()
    assert [strip_ts(x) for x in lines] == [f"    [NEW] {EXPECT_LINE}", f"[DESTROY] {EXPECT_LINE}"]
    # event_exp_cb()'s "[%-8ld.%-6ld]\t": both numbers padded with spaces on the right
    # (the lab's clock starts at 1000 s), the microseconds not with zeros.
    assert lines[0].startswith(f"[{second}    .123   ]\t") and second < 10000, lines[0]
    assert err.getvalue() == ("conntrack v1.4.7 (conntrack-tools): 2 expectation events "
                              "have been shown.\n")


@pytest.mark.parametrize("argv, says", [
    (["-L", "expect", "-p", "tcp"], "takes no filters"),
    (["-E", "expect", "-e", "NEW"], "takes no filters"),
    (["-L", "expect", "--json"], "takes no filters"),
    (["-L", "expect", "-o", "timestamp"], "only -E expect takes -o"),
    (["-E", "expect", "-o", "extended"], "only -o timestamp"),
    (["-D", "expect"], "conntrack table only"),
    (["-L", "dying"], "conntrack and the expect table"),
])
def test_cli_refuses_what_the_expect_table_does_not_take(argv, says):
    with pytest.raises(CtUsageError) as e:
        parse(argv)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_kernels_tool_gets_the_table_name():
    req = parse(["-E", "expect", "-o", "timestamp", "--kernel"])
    assert kernel_argv(req) == ["conntrack", "-E", "expect", "-o", "timestamp"]
    again = validate(req.to_dict())                 # what the lab service checks
    assert again.table == "expect" and kernel_argv(again) == kernel_argv(req)
    assert kernel_argv(parse(["-L", "conntrack"])) == ["conntrack", "-L"]
    with pytest.raises(CtUsageError):
        validate({**req.to_dict(), "table": "dying"})
    with pytest.raises(CtUsageError):
        validate({**parse(["-L", "expect"]).to_dict(), "filters": {"proto": "tcp"}})
