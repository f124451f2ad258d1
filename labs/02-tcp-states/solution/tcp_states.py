"""Lab 2 -- the TCP state machine of nf_conntrack_proto_tcp.c (reference answer).

TODO 1  next_state(state, direction, flag): one cell of the kernel's tcp_conntracks[][][]
TODO 2  timeout(state): the sysctl that sets a state's timeout, and its default

Run `python tcp_states.py` to print your table; `make test` grades it.
"""

STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
          "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]
FLAGS = ["SYN", "SYN-ACK", "FIN", "ACK", "RST", "NONE"]
DIRECTIONS = ["ORIGINAL", "REPLY"]

# Short names, as in the kernel's source.
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = STATES
sIV, sIG = "INVALID", "IGNORE"

# tcp_conntracks[direction][flag] -> the new state for each old state, columns:
#            sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
TABLE = {
    "ORIGINAL": {
        "SYN":     [sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2],
        "SYN-ACK": [sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR],
        "FIN":     [sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV],
        "ACK":     [sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV],
        "RST":     [sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
        "NONE":    [sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV],
    },
    "REPLY": {
        "SYN":     [sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2],
        "SYN-ACK": [sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR],
        "FIN":     [sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV],
        "ACK":     [sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG],
        "RST":     [sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
        "NONE":    [sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV],
    },
}


def next_state(state, direction, flag):
    """The state after a packet with `flag` travels in `direction` while the entry is in
    `state`, or "INVALID" (the packet is invalid) or "IGNORE" (let it through, change nothing)."""
    return TABLE[direction][flag][STATES.index(state)]


TIMEOUTS = {
    "SYN_SENT": ("nf_conntrack_tcp_timeout_syn_sent", 120),
    "SYN_RECV": ("nf_conntrack_tcp_timeout_syn_recv", 60),
    "ESTABLISHED": ("nf_conntrack_tcp_timeout_established", 432000),
    "FIN_WAIT": ("nf_conntrack_tcp_timeout_fin_wait", 120),
    "CLOSE_WAIT": ("nf_conntrack_tcp_timeout_close_wait", 60),
    "LAST_ACK": ("nf_conntrack_tcp_timeout_last_ack", 30),
    "TIME_WAIT": ("nf_conntrack_tcp_timeout_time_wait", 120),
    "CLOSE": ("nf_conntrack_tcp_timeout_close", 10),
    "RETRANS": ("nf_conntrack_tcp_timeout_max_retrans", 300),
    "UNACK": ("nf_conntrack_tcp_timeout_unacknowledged", 300),
}


def timeout(state):
    """(sysctl name, default in seconds) of the timeout an entry gets in `state`
    (RETRANS and UNACK are the two timeout classes for retransmissions and unacknowledged data)."""
    return TIMEOUTS[state]


if __name__ == "__main__":
    for d in DIRECTIONS:
        print(d)
        print("  %-8s" % "" + "".join("%-12s" % s for s in STATES))
        for f in FLAGS:
            print("  %-8s" % f + "".join("%-12s" % next_state(s, d, f) for s in STATES))
    for s in TIMEOUTS:
        print(s, *timeout(s))
