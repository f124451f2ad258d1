"""Frame injector run inside a host namespace by the kernel-oracle harness.

Started as ``ip netns exec NS python agent.py IFACE``.  It opens one raw
AF_PACKET socket bound to IFACE, prints ``ready`` and then reads commands
from stdin, one per line:

* a line of hex digits: the bytes of one Ethernet frame, sent as is;
  answered with ``ok N`` (N = bytes sent) or ``err MESSAGE``;
* ``ping``: answered with ``pong`` (liveness check);
* ``quit`` or end of input: exit.

Only the standard library is used so that the agent starts fast and sends
without scapy's overhead.  Every answer is flushed at once so the harness
can wait for it.
"""
from __future__ import annotations

import socket
import sys

ETH_P_ALL = 0x0003


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: agent.py IFACE", file=sys.stderr)
        return 2
    iface = argv[1]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # We only send: a zero-sized receive buffer keeps the kernel from queueing
    # copies of every frame on the interface for us.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
    sock.bind((iface, 0))
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "quit":
            break
        if line == "ping":
            out.write("pong\n")
            out.flush()
            continue
        try:
            frame = bytes.fromhex(line)
            n = sock.send(frame)
        except (ValueError, OSError) as exc:
            out.write(f"err {exc}\n")
        else:
            out.write(f"ok {n}\n")
        out.flush()
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
