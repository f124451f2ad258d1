"""Lab 3, part 1 -- UDP in nf_conntrack_proto_udp.c (reference answer).

TODO 1  udp_timeout(replied, age): the timeout a UDP packet refreshes its entry to, and
        whether the entry becomes ASSURED
"""

STREAM_AFTER = 2.0          # seconds: a flow older than this that has replies is a stream


def udp_timeout(replied, age):
    """nf_conntrack_udp_packet()'s decision for one packet.

    replied  the entry had already seen a packet in the reply direction before this one
             (IPS_SEEN_REPLY)
    age      seconds since the entry's first packet

    Returns (sysctl name, assured): "nf_conntrack_udp_timeout" (30 s) or
    "nf_conntrack_udp_timeout_stream" (120 s), and True if the entry is (now) ASSURED.
    """
    if replied and age > STREAM_AFTER:
        return "nf_conntrack_udp_timeout_stream", True
    return "nf_conntrack_udp_timeout", False


if __name__ == "__main__":
    for replied in (False, True):
        for age in (0.5, 2.0, 2.5):
            print(f"replied={replied} age={age}:", udp_timeout(replied, age))
