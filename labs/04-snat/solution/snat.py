"""Lab 4 -- source NAT's port choice and checksum rewriting (reference answer).

TODO 1  port_range(port): the kernel's default range for a port that must move
TODO 2  pick_port(port, to_ports, offset, in_use): keep the port if it is free, else search
        (get_unique_tuple() and nf_nat_l4proto_unique_tuple() in nf_nat_core.c)
TODO 3  csum_replace2() / csum_replace4(): incremental checksum update (RFC 1624), used for
        every address, port and TTL the router rewrites
"""


def port_range(port):
    """(lo, hi): where a source port that cannot stay is moved to when the rule gives no
    --to-ports: privileged ports stay privileged, the others stay above 1023."""
    if port < 512:
        return 1, 511
    if port < 1024:
        return 600, 1023
    return 1024, 65535


def pick_port(port, to_ports, offset, in_use):
    """The source port the connection gets after SNAT.

    port      the connection's source port
    to_ports  [lo, hi] of the rule's --to-ports, or None
    offset    where the search starts (the kernel draws it at random)
    in_use    `p in in_use` is True if another connection already has that source port
              (towards the same destination, with the same new address)

    Keep `port` if it is free (and inside --to-ports if there are any; a one-port range is
    always kept).  Else try lo + ((offset + i) % 65536) % size for i = 0, 1, ... and take
    the first that is free; if none is, return the last one tried.
    """
    if to_ports is None:
        if port not in in_use:
            return port
        lo, hi = port_range(port)
    else:
        lo, hi = to_ports
        if lo <= port <= hi and (lo == hi or port not in in_use):
            return port
    size = hi - lo + 1
    candidate = port
    for i in range(size):
        candidate = lo + ((offset + i) % 65536) % size
        if candidate not in in_use:
            return candidate
    return candidate


def csum_replace2(check, old, new):
    """The Internet checksum `check` after a 16-bit field changes from `old` to `new`
    (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'), in one's-complement arithmetic)."""
    s = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_replace4(check, old, new):
    """The same for a 32-bit field (an IPv4 address): two 16-bit halves."""
    return csum_replace2(csum_replace2(check, old >> 16, new >> 16), old & 0xFFFF, new & 0xFFFF)


if __name__ == "__main__":
    print(port_range(80), port_range(700), port_range(41000))
    print(pick_port(41000, None, 123, {41000}), pick_port(5001, [5000, 5003], 0, set()))
    print(hex(csum_replace4(0x1234, 0x0A00000A, 0xCB007101)))
