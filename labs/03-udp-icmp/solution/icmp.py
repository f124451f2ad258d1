"""Lab 3, part 2 -- ICMP and RELATED errors (reference answer).

TODO 2  reply_type(type): the answer to each ICMP query type (invmap[] of
        nf_conntrack_proto_icmp.c), None for types that have none
TODO 3  error_lookup(quoted) and related_ctinfo(...): how nf_conntrack_inet_error() finds the
        connection an ICMP error is about, and marks the error RELATED
"""

# Query types and their answers: echo, timestamp, information, address mask.
REPLIES = {8: 0, 13: 14, 15: 16, 17: 18}


def reply_type(icmp_type):
    """The type of the answer to a message of `icmp_type` -- both ways: a request's reply
    and a reply's request (what nf_ct_invert_tuple() needs) -- or None if it has none."""
    for request, reply in REPLIES.items():
        if icmp_type == request:
            return reply
        if icmp_type == reply:
            return request
    return None


def error_lookup(quoted):
    """The tuple to look up for an ICMP error that quotes a packet whose tuple is `quoted`.

    The quoted packet went the other way (from the error's destination), so the error
    belongs to the connection whose tuple is the quoted one inverted: addresses and
    ports swapped, and for a quoted ICMP query its type answered (id and code kept).
    None if it cannot be inverted.
    """
    t = dict(quoted, src=quoted["dst"], dst=quoted["src"])
    if quoted["proto"] == "icmp":
        answer = reply_type(quoted["type"])
        if answer is None:
            return None
        t["type"] = answer
    elif "sport" in quoted:
        t["sport"], t["dport"] = quoted["dport"], quoted["sport"]
    return t


def related_ctinfo(direction, outer_dst, entry_dst):
    """What the error is to the connection found, or None (INVALID).

    direction  the direction of the tuple that matched ("ORIGINAL" or "REPLY")
    outer_dst  the destination address of the ICMP error itself
    entry_dst  the destination address of the matched tuple

    Only an error addressed where that direction's packets go is believed (else anybody
    could forge "related" errors); it is RELATED, or RELATED_REPLY in the reply direction.
    """
    if outer_dst != entry_dst:
        return None
    return "RELATED_REPLY" if direction == "REPLY" else "RELATED"


if __name__ == "__main__":
    print({t: reply_type(t) for t in range(19) if reply_type(t) is not None})
    q = {"proto": "udp", "src": "203.0.113.1", "dst": "203.0.113.10", "sport": 41002, "dport": 9999}
    print(error_lookup(q))
    print(related_ctinfo("REPLY", "203.0.113.1", "203.0.113.1"))
