"""Send one hand-made IPv4 packet with a raw socket (run inside a lab node).

    python -m nattrack.lab.craft tcp --src 10.0.0.10 --dst 203.0.113.10 --sport 40001 \\
        --dport 5001 --flags S --seq 1000 [--ack N] [--payload TEXT] [--ttl N] [--id N]
    python -m nattrack.lab.craft udp --src .. --dst .. --sport .. --dport .. --payload hi
    python -m nattrack.lab.craft icmp --src .. --dst .. --icmp-id 7 --icmp-seq 1   (echo request)

The notebooks step connections by hand: both ends are played by this tool (through
the lab service's ``exec``), while the hosts' own stacks ignore the crafting ports
(topologies/classroom.py).  It needs CAP_NET_RAW, which the lab service gives
every exec.  Prints the packet it sent as hex on stdout.  Like a raw socket with
IP_HDRINCL in raw_send_hdrinc(), every header field is ours, checksums included.
"""
from __future__ import annotations

import argparse
import socket
import struct
import sys

from ..conntrack.tuple import ip2int
from ..packet.checksum import checksum, pseudo_header_sum
from ..packet.ipv4 import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, TH_URG

FLAG_BITS = {"F": TH_FIN, "S": TH_SYN, "R": TH_RST, "P": TH_PSH, "A": TH_ACK, "U": TH_URG}
PROTOS = {"icmp": 1, "tcp": 6, "udp": 17}


def tcp_flags(text: str) -> int:
    """``SA``, ``FA``, ``R``... (tcpdump's letters; ``.`` is a bare ACK)."""
    bits = 0
    for ch in text.upper():
        if ch == ".":
            bits |= TH_ACK
        elif ch in FLAG_BITS:
            bits |= FLAG_BITS[ch]
        else:
            raise ValueError(f"TCP flag {ch!r}: use the letters F S R P A U (e.g. SA)")
    return bits


def build(proto: str, src: str, dst: str, sport: int = 0, dport: int = 0, flags: str = "",
          seq: int = 0, ack: int = 0, window: int = 64240, payload: bytes = b"", ttl: int = 64,
          ipid: int = 1, icmp_type: int = 8, icmp_code: int = 0, icmp_id: int = 0,
          icmp_seq: int = 0) -> bytes:
    """The whole datagram (IP header first), every checksum computed."""
    num = PROTOS.get(proto)
    if num is None:
        raise ValueError(f"protocol {proto!r}: tcp, udp or icmp")
    s, d = ip2int(src), ip2int(dst)
    if num == 6:
        hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          5 << 4, tcp_flags(flags), window, 0, 0)
        l4 = bytearray(hdr + payload)
        struct.pack_into("!H", l4, 16, checksum(l4, pseudo_header_sum(s, d, 6, len(l4))))
    elif num == 17:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
        c = checksum(l4, pseudo_header_sum(s, d, 17, len(l4))) or 0xFFFF
        struct.pack_into("!H", l4, 6, c)
    else:
        l4 = bytearray(struct.pack("!BBHHH", icmp_type, icmp_code, 0, icmp_id, icmp_seq) + payload)
        struct.pack_into("!H", l4, 2, checksum(l4))
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(l4), ipid & 0xFFFF, 0x4000,
                               ttl, num, 0, s, d))
    struct.pack_into("!H", ip, 10, checksum(ip))
    return bytes(ip + l4)


# What the notebooks run in a node (``python3 -c SEND_SNIPPET HEX...``): send datagrams
# built by build() elsewhere, so the node needs no access to the package's files.
SEND_SNIPPET = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n"
    "for h in sys.argv[1:]:\n"
    "    b=bytes.fromhex(h); s.sendto(b,(socket.inet_ntoa(b[16:20]),0))\n")


def send(packet: bytes) -> None:
    """sendto() on a raw IPPROTO_RAW socket (IP_HDRINCL implied): sent as it is."""
    dst = socket.inet_ntoa(packet[16:20])
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(packet, (dst, 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nattrack.lab.craft",
                                description="send one hand-made IPv4 packet (raw socket)")
    p.add_argument("proto", choices=sorted(PROTOS))
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--dport", type=int, default=0)
    p.add_argument("--flags", default="", help="TCP flags as letters: S, SA, A, PA, FA, R")
    p.add_argument("--seq", type=int, default=0)
    p.add_argument("--ack", type=int, default=0)
    p.add_argument("--window", type=int, default=64240)
    p.add_argument("--payload", default="", help="text carried after the header")
    p.add_argument("--ttl", type=int, default=64)
    p.add_argument("--id", type=int, default=1, dest="ipid", help="the IP id")
    p.add_argument("--icmp-type", type=int, default=8)
    p.add_argument("--icmp-code", type=int, default=0)
    p.add_argument("--icmp-id", type=int, default=0)
    p.add_argument("--icmp-seq", type=int, default=0)
    a = p.parse_args(argv)
    try:
        pkt = build(a.proto, a.src, a.dst, a.sport, a.dport, a.flags, a.seq, a.ack, a.window,
                    a.payload.encode(), a.ttl, a.ipid, a.icmp_type, a.icmp_code, a.icmp_id,
                    a.icmp_seq)
        send(pkt)
    except (ValueError, OSError, struct.error) as exc:
        msg = str(exc)
        if isinstance(exc, PermissionError):
            msg += " (a raw socket needs CAP_NET_RAW: run it through `nattrack lab exec`)"
        print(f"craft: {msg}", file=sys.stderr)
        return 2
    print(pkt.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
