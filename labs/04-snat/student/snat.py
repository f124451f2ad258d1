"""Lab 4 -- source NAT's port choice and checksum rewriting.

TODO 1  port_range(port): the kernel's default range for a port that must move
TODO 2  pick_port(port, to_ports, offset, in_use): keep the port if it is free, else search
        (get_unique_tuple() and nf_nat_l4proto_unique_tuple() in nf_nat_core.c)
TODO 3  csum_replace2() / csum_replace4(): incremental checksum update (RFC 1624), used for
        every address, port and TTL the router rewrites

This skeleton runs but is expected to fail the tests of its TODOs until they are done
(`make check` says which TODO is unmet).  Read README.md first.
"""


def port_range(port):
    """(lo, hi): where a source port that cannot stay is moved to when the rule gives no
    --to-ports.  Privileged ports stay privileged: below 512 -> 1-511, below 1024 ->
    600-1023, the others -> 1024-65535."""
    raise NotImplementedError("TODO 1: port_range() -- nf_nat_l4proto_unique_tuple()")


def pick_port(port, to_ports, offset, in_use):
    """The source port the connection gets after SNAT.

    port      the connection's source port
    to_ports  [lo, hi] of the rule's --to-ports, or None (then: port_range(port))
    offset    where the search starts (the kernel draws it at random)
    in_use    `p in in_use` is True if another connection already has source port p
              (towards the same destination, with the same new address)

    Keep `port` if it is free (and inside --to-ports if the rule has them; a one-port range
    is always kept).  Else try lo + ((offset + i) % 65536) % size for i = 0, 1, ... and
    take the first free one; if none is free, return the last one tried (the packet is
    then dropped when the entry is confirmed).
    """
    raise NotImplementedError("TODO 2: pick_port() -- get_unique_tuple()")


def csum_replace2(check, old, new):
    """The Internet checksum `check` after a 16-bit field changed from `old` to `new`,
    without summing the packet again (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'))."""
    raise NotImplementedError("TODO 3: csum_replace2() -- RFC 1624")


def csum_replace4(check, old, new):
    """The same for a 32-bit field (an IPv4 address)."""
    raise NotImplementedError("TODO 3: csum_replace4() -- RFC 1624")


if __name__ == "__main__":
    print("(this skeleton is expected to fail until TODO 1, TODO 2 and TODO 3 are done)")
    try:
        print(port_range(80), port_range(700), port_range(41000))
        print(pick_port(41000, None, 123, {41000}), pick_port(5001, [5000, 5003], 0, set()))
        print(hex(csum_replace4(0x1234, 0x0A00000A, 0xCB007101)))
    except NotImplementedError as exc:
        print(f"not done yet: {exc}")
