"""Lab 2 -- the TCP state machine of nf_conntrack_proto_tcp.c.

TODO 1  next_state(state, direction, flag): one cell of the kernel's tcp_conntracks[][][]
TODO 2  timeout(state): the sysctl that sets a state's timeout, and its default

This skeleton runs but is expected to fail every test until its TODOs are done:
`make check` says which TODO is unmet, `make test` grades it, `make run` plugs it into
the live router.  Read README.md first.
"""

STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
          "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]
FLAGS = ["SYN", "SYN-ACK", "FIN", "ACK", "RST", "NONE"]
DIRECTIONS = ["ORIGINAL", "REPLY"]


def next_state(state, direction, flag):
    """The state after a packet with `flag` travels in `direction` while the entry is in
    `state` -- or "INVALID" (the packet is invalid) or "IGNORE" (let it through, change
    nothing).

    state      one of STATES
    direction  "ORIGINAL" (same way as the first packet) or "REPLY"
    flag       one of FLAGS: what get_conntrack_index() makes of the TCP flags
               (RST wins, then SYN or SYN-ACK, then FIN, then ACK, else NONE)

    Example: next_state("NONE", "ORIGINAL", "SYN") == "SYN_SENT".
    """
    raise NotImplementedError("TODO 1: next_state() -- the transition table "
                              "(nf_conntrack_proto_tcp.c, tcp_conntracks)")


def timeout(state):
    """(sysctl name, default seconds) of the timeout an entry gets in `state`.

    state is one of SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK,
    TIME_WAIT, CLOSE, and the two timeout classes RETRANS (too many retransmissions)
    and UNACK (data not yet acknowledged).

    Example: timeout("CLOSE") == ("nf_conntrack_tcp_timeout_close", 10).
    """
    raise NotImplementedError("TODO 2: timeout() -- each state's sysctl and default "
                              "(nf_conntrack_proto_tcp.c, tcp_timeouts)")


if __name__ == "__main__":
    print("(this skeleton is expected to fail until TODO 1 and TODO 2 are done)")
    try:
        for d in DIRECTIONS:
            print(d)
            print("  %-8s" % "" + "".join("%-12s" % s for s in STATES))
            for f in FLAGS:
                print("  %-8s" % f + "".join("%-12s" % next_state(s, d, f) for s in STATES))
        for s in STATES[1:9] + ["RETRANS", "UNACK"]:
            print(s, *timeout(s))
    except NotImplementedError as exc:
        print(f"not done yet: {exc}")
