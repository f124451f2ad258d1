"""Lab 3, part 1 -- UDP in nf_conntrack_proto_udp.c.

TODO 1  udp_timeout(replied, age): the timeout a UDP packet refreshes its entry to, and
        whether the entry becomes ASSURED

This skeleton runs but is expected to fail the tests of TODO 1 until it is done
(`make check` says which TODO is unmet).  Read README.md first.
"""


def udp_timeout(replied, age):
    """nf_conntrack_udp_packet()'s decision for one packet.

    replied  True if the entry had already seen a packet in the reply direction before
             this one (IPS_SEEN_REPLY; the first reply itself still sees False)
    age      seconds since the entry's first packet (a float)

    Returns (sysctl name, assured):
      - "nf_conntrack_udp_timeout" (30 s) or "nf_conntrack_udp_timeout_stream" (120 s),
      - True if the entry is, from this packet on, ASSURED (a table that is full never
        evicts an ASSURED entry).
    A flow is a stream once it has replies and is more than 2 s old (strictly more).
    """
    raise NotImplementedError("TODO 1: udp_timeout() -- nf_conntrack_udp_packet()")


if __name__ == "__main__":
    print("(this skeleton is expected to fail until TODO 1 is done)")
    for replied in (False, True):
        for age in (0.5, 2.0, 2.5):
            try:
                print(f"replied={replied} age={age}:", udp_timeout(replied, age))
            except NotImplementedError as exc:
                print(f"replied={replied} age={age}: not done yet: {exc}")
