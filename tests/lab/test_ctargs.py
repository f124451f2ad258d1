"""`nattrack conntrack` option parsing: conntrack-tools' rules, the router's filters,
the real tool's argv rebuilt from validated requests only."""
from __future__ import annotations

import io

import pytest

from nattrack.cli.conntrack import _insert_l3, conntrack_main, run_conntrack
from nattrack.conntrack import show
from nattrack.lab.ctargs import (CtUsageError, kernel_argv, line_matches, parse,
                                 router_filters, validate)

LINE = ("tcp      6 431999 ESTABLISHED src=10.0.0.10 dst=203.0.113.10 sport=40212 dport=80 "
        "src=203.0.113.10 dst=203.0.113.1 sport=80 dport=40212 [ASSURED] mark=0 use=1")
DNAT_LINE = ("tcp      6 119 TIME_WAIT src=203.0.113.10 dst=203.0.113.1 sport=5555 dport=8080 "
             "src=10.0.0.10 dst=203.0.113.10 sport=80 dport=5555 [ASSURED] mark=0 use=1")


def test_list_with_every_filter():
    req = parse(["-L", "-p", "tcp", "-s", "10.0.0.10", "-d", "203.0.113.10", "--sport", "40212",
                 "--dport", "80", "--state", "established", "-u", "assured"])
    assert req.command == "L"
    assert router_filters(req) == {"proto": "tcp", "src": "10.0.0.10", "dst": "203.0.113.10",
                                   "sport": 40212, "dport": 80, "state": "ESTABLISHED",
                                   "status": "ASSURED"}


def test_long_forms_inline_values_and_table_name():
    req = parse(["--dump", "conntrack", "--proto=udp", "--orig-src", "10.0.0.11",
                 "--orig-port-dst=53", "-ptcp"])
    assert req.command == "L"
    assert req.filters == {"proto": "tcp", "src": "10.0.0.11", "dport": 53}


@pytest.mark.parametrize("argv, word", [
    (["-L", "--sport", "80"], "--sport"),                 # before -p: unknown, like the tool
    (["-L", "-p", "icmp", "--dport", "3"], "--dport"),    # icmp has no ports
    (["-L", "-p", "udp", "--state", "ESTABLISHED"], "--state"),
    (["-L", "-p", "tcp", "--state", "FOO"], "FOO"),
    (["-L", "-p", "foo"], "foo"),
    (["-L", "-s", "10.0.0"], "10.0.0"),
    (["-L", "-p", "tcp", "--dport", "70000"], "70000"),
    (["-L", "-X"], "-X"),
    (["-L", "-E"], "only one command"),
    (["-p", "tcp"], "no command"),
    (["-L", "-o", "xml"], "xml"),
    (["-E", "-e", "BOGUS"], "BOGUS"),
    (["-L", "-f", "ipv6"], "IPv4"),
    (["-L", "-s"], "requires an argument"),
])
def test_bad_command_lines_are_one_line_errors(argv, word):
    with pytest.raises(CtUsageError) as exc:
        parse(argv)
    assert word in str(exc.value) and "\n" not in str(exc.value)


def test_cli_usage_error_is_one_line_exit_2(capsys):
    assert conntrack_main(["-L", "--sport", "80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nattrack: conntrack: unknown option `--sport'") and err.count("\n") == 1


def test_events_options_and_nat_filters():
    req = parse(["-E", "-o", "timestamp,extended", "-e", "NEW,DESTROY", "-n", "-g", "10.0.0.10",
                 "--kernel", "--router", "cgn"])
    assert req.command == "E" and req.kernel and req.router == "cgn"
    assert req.output == ["extended", "timestamp"] and req.event_mask == ["NEW", "DESTROY"]
    assert req.src_nat is True and req.dst_nat == "10.0.0.10"
    assert parse(["-E", "-e", "ALL"]).event_mask is None


def test_kernel_argv_is_rebuilt_from_validated_values():
    req = parse(["-D", "-p", "tcp", "-s", "10.0.0.10", "--dport", "80", "--state", "TIME_WAIT",
                 "-r", "203.0.113.10", "-n"])
    assert kernel_argv(req) == ["conntrack", "-D", "-p", "tcp", "-s", "10.0.0.10", "--dport",
                                "80", "--state", "TIME_WAIT", "-r", "203.0.113.10", "-n"]
    again = validate(req.to_dict())
    assert kernel_argv(again) == kernel_argv(req)
    ev = parse(["-E", "-o", "timestamp", "-e", "NEW"])
    assert kernel_argv(ev) == ["conntrack", "-E", "-o", "timestamp", "-e", "NEW"]


@pytest.mark.parametrize("bad", [
    {"command": "L; rm -rf /"},
    {"command": "L", "filters": {"src": "10.0.0.1 -F"}},
    {"command": "L", "filters": {"proto": "tcp", "dport": "80 --flush"}},
    {"command": "L", "filters": {"bogus": 1}},
    {"command": "L", "output": ["extended", "--flush"]},
    {"command": "L", "src_nat": "-F"},
    "not an object",
])
def test_validate_refuses_anything_odd(bad):
    with pytest.raises(CtUsageError):
        validate(bad)


def test_client_side_filters_on_parsed_lines():
    p = show.parse_conntrack_line(LINE)
    d = show.parse_conntrack_line(DNAT_LINE)
    assert line_matches(parse(["-L", "-n"]), p) and not line_matches(parse(["-L", "-n"]), d)
    assert line_matches(parse(["-L", "-g"]), d) and not line_matches(parse(["-L", "-g"]), p)
    assert line_matches(parse(["-L", "-n", "203.0.113.1"]), p)
    assert not line_matches(parse(["-L", "-n", "203.0.113.2"]), p)
    assert line_matches(parse(["-L", "-r", "203.0.113.10"]), p)
    assert not line_matches(parse(["-L", "-q", "10.0.0.10"]), p)
    ev = show.parse_conntrack_line("    [NEW] " + LINE.replace(" mark=0 use=1", ""))
    assert not line_matches(parse(["-E", "-e", "DESTROY"]), ev)
    assert line_matches(parse(["-E", "-e", "NEW"]), ev)


def test_extended_event_lines_get_the_l3_columns():
    line = "[1700000000.000001]\t    [NEW] tcp      6 120 SYN_SENT src=1.2.3.4"
    assert _insert_l3(line) == "[1700000000.000001]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=1.2.3.4"


class FakeAPI:
    """The ConntrackAPI surface run_conntrack uses, recording what it was asked."""

    def __init__(self, lines):
        self.lines, self.calls = lines, []

    def list(self, filters, router=None, extended=False, show_id=False):
        self.calls.append(("list", filters, router, extended, show_id))
        return list(self.lines)

    def delete(self, filters, router=None):
        self.calls.append(("delete", filters, router))
        return len(self.lines)

    def count(self, router=None):
        return len(self.lines)

    def flush(self, router=None):
        self.calls.append(("flush",))
        return len(self.lines)

    def stats(self, router=None):
        return {"stats": {"found": 3, "invalid": 1}}

    def events(self, filters, router=None, timestamp=False, json=False):
        def gen():
            yield "    [NEW] " + LINE.replace(" mark=0 use=1", "")
            yield "[DESTROY] " + LINE.replace(" mark=0 use=1", "")
        return gen()


def _run(argv, api):
    out, err = io.StringIO(), io.StringIO()
    rc = run_conntrack(parse(argv), api, out, err)
    return rc, out.getvalue(), err.getvalue()


def test_output_is_the_real_tools():
    api = FakeAPI([LINE, DNAT_LINE])
    rc, out, err = _run(["-L", "-p", "tcp", "--dport", "80", "--router", "r"], api)
    assert rc == 0 and out == LINE + "\n" + DNAT_LINE + "\n"
    assert err == "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
    assert api.calls[0] == ("list", {"proto": "tcp", "dport": 80}, "r", False, False)
    rc, out, err = _run(["-L", "-g"], api)                       # client-side: DNAT only
    assert out == DNAT_LINE + "\n" and "1 flow entries" in err
    rc, out, err = _run(["-S"], api)
    assert out.startswith("cpu=0   \tfound=3 invalid=1 insert=0 ") and out.endswith(" \n")
    assert _run(["-C"], api)[1] == "2\n"
    rc, out, err = _run(["-F"], api)
    assert err == "conntrack v1.4.7 (conntrack-tools): connection tracking table has been emptied.\n"
    rc, out, err = _run(["-D", "-p", "tcp"], api)
    assert rc == 0 and err.endswith("2 flow entries have been deleted.\n") and out.count("\n") == 2
    rc, out, err = _run(["-D"], FakeAPI([]))
    assert rc == 1 and err.endswith("0 flow entries have been deleted.\n")      # as the tool


def test_events_honour_the_event_mask_and_print_the_summary():
    rc, out, err = _run(["-E", "-e", "DESTROY"], FakeAPI([]))
    assert rc == 0 and out.startswith("[DESTROY] tcp") and out.count("\n") == 1
    assert err == "conntrack v1.4.7 (conntrack-tools): 1 flow events have been shown.\n"
