"""Lab 3, part 2 -- ICMP and RELATED errors.

TODO 2  reply_type(type): the answer to each ICMP query type (invmap[] of
        nf_conntrack_proto_icmp.c), None for types that have none
TODO 3  error_lookup(quoted) and related_ctinfo(...): how nf_conntrack_inet_error() finds the
        connection an ICMP error is about, and marks the error RELATED

Tuples are dicts: {"proto": "udp", "src": "10.0.0.10", "dst": "203.0.113.10", "sport": 41000,
"dport": 53} for TCP and UDP, {"proto": "icmp", "src": ..., "dst": ..., "type": 8, "code": 0,
"id": 4660} for ICMP.

This skeleton runs but is expected to fail the tests of TODO 2 and TODO 3 until they are
done (`make check` says which TODO is unmet).  Read README.md first.
"""


def reply_type(icmp_type):
    """The type of the answer to a message of `icmp_type`, both ways (a request's reply and a
    reply's request: nf_ct_invert_tuple() needs both), or None if it has none.

    Example: reply_type(8) == 0 (echo request -> echo reply), reply_type(3) is None.
    """
    raise NotImplementedError("TODO 2: reply_type() -- invmap[] of nf_conntrack_proto_icmp.c")


def error_lookup(quoted):
    """The tuple to look up for an ICMP error that quotes a packet whose tuple is `quoted`,
    or None if there is none.

    Hint: the quoted packet travelled the other way.
    """
    raise NotImplementedError("TODO 3: error_lookup() -- nf_conntrack_inet_error()")


def related_ctinfo(direction, outer_dst, entry_dst):
    """What the error is to the connection whose tuple matched: "RELATED", "RELATED_REPLY",
    or None (the error is INVALID).

    direction  the direction of the tuple that matched ("ORIGINAL" or "REPLY")
    outer_dst  the destination address of the ICMP error itself
    entry_dst  the destination address of the matched tuple
    """
    raise NotImplementedError("TODO 3: related_ctinfo() -- nf_conntrack_inet_error()")


if __name__ == "__main__":
    print("(this skeleton is expected to fail until TODO 2 and TODO 3 are done)")
    try:
        print({t: reply_type(t) for t in range(19) if reply_type(t) is not None})
        q = {"proto": "udp", "src": "203.0.113.1", "dst": "203.0.113.10", "sport": 41002, "dport": 9999}
        print(error_lookup(q))
        print(related_ctinfo("REPLY", "203.0.113.1", "203.0.113.1"))
    except NotImplementedError as exc:
        print(f"not done yet: {exc}")
