"""`nattrack diff`: pairing the two tables and explaining each disagreement in one line."""
from __future__ import annotations

from nattrack.lab.diff import diff_tables, format_rows

PY = ("tcp      6 431999 ESTABLISHED src=10.0.0.10 dst=203.0.113.10 sport=40212 dport=80 "
      "src=203.0.113.10 dst=203.0.113.1 sport=80 dport=40212 [ASSURED] mark=0 use=1")
UDP = ("udp      17 28 src=10.0.0.10 dst=203.0.113.10 sport=5000 dport=7 src=203.0.113.10 "
       "dst=203.0.113.1 sport=7 dport=5000 mark=0 use=1")
ICMP = ("icmp     1 29 src=10.0.0.10 dst=203.0.113.10 type=8 code=0 id=7 src=203.0.113.10 "
        "dst=203.0.113.1 type=0 code=0 id=7 mark=0 use=1")


def test_identical_tables_agree_within_the_tolerance():
    k = PY.replace("431999", "432000")
    rows = diff_tables([PY, UDP], [k, UDP])
    assert all(r.agree for r in rows)
    lines = format_rows(rows)
    assert lines[0].split() == ["FLOW", "(original", "direction)", "PYTHON", "KERNEL"]
    assert lines[-1] == "2 flow(s): 2 agree, 0 differ"
    assert not any(l.startswith("  !") for l in lines)


def test_each_disagreement_is_one_explained_line():
    kernel = [PY.replace("ESTABLISHED", "SYN_RECV").replace("431999", "59")
                .replace("[ASSURED] ", "").replace("dst=203.0.113.1 sport=80 dport=40212",
                                                   "dst=203.0.113.1 sport=80 dport=1024"),
              ICMP]
    rows = diff_tables([PY, UDP], kernel)
    by_proto = {r.key[0]: r for r in rows}
    tcp = by_proto[6].problems
    assert any(p.startswith("TCP state differs: python ESTABLISHED, kernel SYN_RECV") for p in tcp)
    assert any(p.startswith("reply tuple differs") and "203.0.113.1:1024" in p for p in tcp)
    assert any(p.startswith("ASSURED only in python") for p in tcp)
    assert any(p.startswith("timeout differs by 431940 s") for p in tcp)
    assert by_proto[17].problems[0].startswith("only in python")
    assert by_proto[1].problems[0].startswith("only in the kernel")
    out = format_rows(rows)
    assert out[-1] == "3 flow(s): 0 agree, 3 differ"
    for line in out:
        if line.startswith("  ! "):
            assert "\n" not in line
    # side by side: the flow, then the python side, then the kernel side on one row
    row = next(l for l in out if l.startswith("tcp 10.0.0.10:40212 > 203.0.113.10:80"))
    assert "ESTABLISHED 431999s ASSURED snat 203.0.113.1:40212" in row
    assert row.rstrip().endswith("SYN_RECV 59s snat 203.0.113.1:1024")
    icmp = next(l for l in out if l.startswith("icmp"))
    assert icmp.split()[:5] == ["icmp", "10.0.0.10", "id", "7", ">"] and " - " in icmp


def test_dnat_shows_on_the_side():
    dnat = ("tcp      6 119 TIME_WAIT src=203.0.113.10 dst=203.0.113.1 sport=5555 dport=8080 "
            "src=10.0.0.10 dst=203.0.113.10 sport=80 dport=5555 [ASSURED] mark=0 use=1")
    out = format_rows(diff_tables([dnat], [dnat]))
    assert "dnat 10.0.0.10:80" in out[1]


def test_counters_compared_when_both_have_them():
    a = UDP.replace("dport=7 src", "dport=7 packets=2 bytes=60 src").replace(
        "dport=5000 mark", "dport=5000 packets=2 bytes=60 mark")
    b = a.replace("packets=2 bytes=60 mark", "packets=1 bytes=30 mark")
    rows = diff_tables([a], [b])
    assert rows[0].problems and rows[0].problems[0].startswith("counters differ")


def test_a_flow_the_shadow_lost_packets_of_is_not_blamed_on_transitions():
    kernel = PY.replace("ESTABLISHED", "TIME_WAIT").replace("431999", "118")
    missed = {"mode": "kernel", "socket_drops": 4200, "flows": [{"line": PY, "missed": 37}]}
    rows = diff_tables([PY, UDP], [kernel, UDP], missed=missed)
    tcp = next(r for r in rows if r.key[0] == 6)
    assert tcp.missed == 37 and not tcp.agree
    assert not any("different transitions" in p for p in tcp.problems), tcp.problems
    assert tcp.problems[0] == "TCP state differs: python ESTABLISHED, kernel TIME_WAIT"
    assert tcp.problems[1] == "timeout differs by 431881 s: python 431999, kernel 118"
    assert tcp.problems[-1] == ("the shadow missed 37 packets of this flow; "
                                "the difference may come from that")
    udp = next(r for r in rows if r.key[0] == 17)
    assert udp.agree and udp.problems == []             # an agreeing flow gets no note
    out = format_rows(rows)
    assert out[-1] == "2 flow(s): 1 agree, 1 differ (1 where the shadow missed packets)"


def test_socket_drops_without_a_flow_say_so_and_blame_no_transition():
    kernel = PY.replace("ESTABLISHED", "TIME_WAIT").replace("431999", "118")
    rows = diff_tables([PY], [kernel, ICMP], missed={"socket_drops": 12, "flows": []})
    for r in rows:
        assert not any("different transitions" in p for p in r.problems)
        assert r.problems[-1].startswith("the shadow's socket dropped 12 frames")


def test_without_losses_a_state_difference_is_a_transition_difference():
    kernel = PY.replace("ESTABLISHED", "TIME_WAIT").replace("431999", "118")
    rows = diff_tables([PY], [kernel], missed={"socket_drops": 0, "flows": []})
    assert "(the trackers took different transitions on the same packets)" in rows[0].problems[0]
    assert len(rows[0].problems) == 2                   # state and timeout, no loss note


# An expectation as 6.18's conntrack -L expect printed it (tests/kernel ftp_expect_nat)
EXP = ("300 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=50002 "
       "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
       "master-src=10.0.0.2 master-dst=203.0.113.2 sport=40000 dport=21 class=0 helper=ftp")


def test_expectations_are_paired_by_tuple_and_explained():
    from nattrack.lab.diff import diff_expect, format_expect_rows
    rows = diff_expect([EXP.replace("300 ", "299 ", 1)], [EXP])
    assert [r.agree for r in rows] == [True]
    out = format_expect_rows(rows)
    assert out[0].split() == ["EXPECTATION", "(tuple)", "PYTHON", "KERNEL"]
    assert out[1].startswith("proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=50002")
    assert out[1].split()[-2:] == ["299s", "300s"]
    assert out[-1] == "1 expectation(s): 1 agree, 0 differ"
    other = EXP.replace("dport=50002", "dport=50003")
    rows = diff_expect([EXP.replace("sport=40000", "sport=40001"), other], [EXP])
    problems = {r.key[0].split()[-1]: r.problems for r in rows}
    assert problems["dport=50002"][0].startswith("mask, master or helper differ")
    assert problems["dport=50003"][0].startswith("only in python")
    assert diff_expect([], [EXP])[0].problems[0].startswith("only in the kernel")
    assert format_expect_rows([]) == []
