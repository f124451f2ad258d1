"""Race two packets of one new flow through the real kernel, on two CPUs.

The public host of a :class:`~.harness.KernelLab` runs two senders, pinned with
``taskset`` to CPU 0 and CPU 1.  In every round both wait at a barrier (two
counters in a shared memory file) and then send one frame each: the same
5-tuple (a new client port every round), "A?" from CPU 0, "AAAA?" from CPU 1, to
a service the router DNATs.  A frame sent on a veth is processed by the router
on the sending CPU, in the same system call, so the two packets go through
nf_conntrack_in, DNAT and the FORWARD chain at the same time; the router's
FORWARD chain holds ``filler`` rules that match nothing (as a node with many
services has), which widens the window between conntrack_in and confirm.

Each round ends in one of the outcomes of :mod:`nattrack.conntrack.cpus`, read
back from what left the router (the r-priv capture), ``conntrack -L`` (the
visible entry of each client port) and ``conntrack -S`` (summed counters):

* ``sequential``: the second packet found the first one's entry (no race);
* ``merged``: a race, identical entries (same backend): clash_resolve;
* ``nat-clash``: a race, different backends: clash_resolve, the loser's entry in
  the reply direction only (not listed), both packets delivered;
* ``insert-failed``: a race of TCP SYNs: the loser is dropped (drop, insert_failed).

Whether a round raced is not up to us: rounds are repeated until every outcome
the service can have was seen (or the budget runs out).
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

from .harness import (HOST_ADDR, HOST_GATEWAY_IF, MACS, PUB, ROUTER_PUB, KernelLab, LabError,
                      read_pcap)

CLIENT_PORT_BASE = 20000
SERVICES = {
    # name: (protocol, service port, iptables DNAT rule tail; None: not DNATed)
    "udp-random": ("udp", 53, "--to-destination 10.0.0.2:5300-5399 --random"),
    "udp-one": ("udp", 54, "--to-destination 10.0.0.2:5400"),
    "tcp-one": ("tcp", 55, "--to-destination 10.0.0.2:5500"),
    # Two private hosts, one source port, one public server, through MASQUERADE: both keep
    # the port (neither sees the other's unconfirmed entry); the second to confirm finds
    # its reply tuple taken by another flow (insert_failed, even for UDP).
    "udp-snat": ("udp", 53, None),
}
# Which hosts send (CPU 0, CPU 1): the client of the DNAT services, or two SNATed hosts.
SENDERS = {"udp-snat": ("priv1", "priv2")}
BACKEND = "10.0.0.2"


def senders(service: str) -> tuple[str, str]:
    return SENDERS.get(service, ("pub", "pub"))


def has_backend(service: str) -> bool:
    """A DNAT service (to BACKEND), as opposed to traffic SNATed to the public server."""
    return SERVICES[service][2] is not None


def race_rules(filler: int = 300) -> str:
    """The router's ruleset: the three services, and ``filler`` FORWARD rules that
    match nothing (198.18.0.0/15 never appears)."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"]
    for proto, port, target in SERVICES.values():
        if target is not None:
            lines.append(f"-A PREROUTING -d {ROUTER_PUB}/32 -i r-pub -p {proto} -m {proto} "
                         f"--dport {port} -j DNAT {target}")
    lines.append("-A POSTROUTING -s 10.0.0.0/24 -o r-pub -j MASQUERADE")
    lines += ["COMMIT", "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
              ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A FORWARD -s 198.18.{i // 250}.{i % 250 + 1}/32 -j DROP" for i in range(filler)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# The sender, run in the public host's namespace by `taskset -c CPU python -c`.  Only the
# standard library, so it starts fast.  argv: iface role shm frames-file pause
_SENDER = r"""
import mmap, os, socket, struct, sys, time
iface, role, shm, frames = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pause = float(sys.argv[5])
frames = [bytes.fromhex(x) for x in open(frames).read().split()]
fd = os.open(shm, os.O_RDWR)
m = mmap.mmap(fd, 16)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
s.bind((iface, 0))
counter = struct.Struct("<Q")
mine, other = 8 * role, 8 * (1 - role)
print("ready", flush=True)
for r, frame in enumerate(frames, 1):
    counter.pack_into(m, mine, r)
    while counter.unpack_from(m, other)[0] < r:
        pass
    s.send(frame)
    time.sleep(pause)      # the recorders (conntrack -E, tcpdump) need the CPUs too
print("done", flush=True)
"""


# The backend, run in priv1's namespace while UDP rounds race: it answers every UDP
# datagram to 10.0.0.2 at once, from the port it was sent to ("ans:" + the query), as a
# DNS server behind the service would.  It reads frames with AF_PACKET (the host's own IP
# stack drops them, see quiet_hosts) and builds each answer itself; UDP checksum 0 (none).
_RESPONDER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((sys.argv[1], 0))
me = socket.inet_aton(sys.argv[2])
print("ready", flush=True)
while True:
    frame, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING or len(frame) < 42 or frame[23] != 17:
        continue
    ihl = (frame[14] & 15) * 4
    ip, udp = frame[14:14 + ihl], frame[14 + ihl:]
    if ip[16:20] != me:
        continue
    sport, dport, ulen = struct.unpack("!HHH", udp[:6])
    payload = b"ans:" + udp[8:ulen]
    total = 28 + len(payload)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0, me, ip[12:16]))
    c = sum(struct.unpack("!10H", hdr))
    c = (c & 0xFFFF) + (c >> 16)
    c = (c & 0xFFFF) + (c >> 16)
    hdr[10:12] = struct.pack("!H", ~c & 0xFFFF)
    answer = bytes(hdr) + struct.pack("!HHHH", dport, sport, 8 + len(payload), 0) + payload
    s.send(frame[6:12] + frame[0:6] + frame[12:14] + answer)
"""


@dataclasses.dataclass
class Round:
    """One round as the kernel showed it."""
    sport: int
    sent: dict[str, int | None]          # payload ("A?", "AAAA?") -> backend port it left to
    listed: list[int]                    # backend ports of the `conntrack -L` entries
    answered: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    # ^ payload -> (source address, port) of its answer as it left r-pub to the client
    outcome: str = ""
    winner: str | None = None            # payload of the packet whose entry is listed


@dataclasses.dataclass
class RaceRun:
    service: str
    rounds: list[Round]
    stats: dict[str, int]                # `conntrack -S` deltas over the run
    events: list[str]
    seconds: float
    pcaps: dict                          # (iface, "in"/"out") -> pcap path, as recorded

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rounds:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


PAYLOADS = ("A?", "AAAA?")


def frames_for(service: str, rounds: int, base: int) -> list[list[bytes]]:
    """Per CPU, one frame a round (client port base + round)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    proto, port, _ = SERVICES[service]
    out: list[list[bytes]] = [[], []]
    for r in range(rounds):
        for cpu, (host, payload) in enumerate(zip(senders(service), PAYLOADS)):
            if has_backend(service):
                ip = IP(src=PUB, dst=ROUTER_PUB, id=cpu)     # the IP id tells the CPU
            else:       # SNAT may change the port: the payload names the round
                ip = IP(src=HOST_ADDR[host], dst=PUB, id=cpu)
                payload = f"{payload} {base + r}"
            if proto == "udp":
                pkt = ip / UDP(sport=base + r, dport=port) / Raw(payload.encode())
            else:       # two identical SYNs: a connect() the kernel would send once
                pkt = ip / TCP(sport=base + r, dport=port, flags="S", seq=1000, window=64240)
            ether = Ether(src=MACS[host], dst=MACS[HOST_GATEWAY_IF[host]])
            out[cpu].append(bytes(ether / pkt))
    return out


def run_race(lab: KernelLab, service: str, rounds: int, base: int, pause: float = 0.002,
             timeout: float = 60.0, reap_wait: float = 20.0) -> RaceRun:
    """Send ``rounds`` racing pairs to ``service`` and read back every round's outcome."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise LabError(f"the race needs two CPUs to pin its senders to; this process may use "
                       f"only CPU {allowed}")
    name = f"race-{service}-{base}"
    work = lab.workdir / f"{name}-input"         # start_recording() empties its own dir
    work.mkdir(parents=True, exist_ok=True)
    shm = work / "barrier"
    shm.write_bytes(bytes(16))
    per_cpu = frames_for(service, rounds, base)
    files = []
    for cpu, frames in enumerate(per_cpu):
        path = work / f"frames-{cpu}.hex"
        path.write_text("\n".join(f.hex() for f in frames) + "\n")
        files.append(path)
    lab.flush()
    before = proc_count(lab)
    lab.start_recording(name)
    backend = None
    if SERVICES[service][0] == "udp" and has_backend(service):
        backend = lab._spawn("priv1", [sys.executable, "-c", _RESPONDER, "eth0", BACKEND],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        if backend.stdout.readline().strip() != "ready":
            raise LabError("the answering backend did not start")
    t0 = time.monotonic()
    procs = [lab._spawn(host, ["taskset", "-c", str(allowed[cpu]), sys.executable, "-c", _SENDER,
                               "eth0", str(cpu), str(shm), str(files[cpu]), str(pause)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
             for cpu, host in enumerate(senders(service))]
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0 or "done" not in out:
                raise LabError(f"race sender failed ({p.returncode}): {err.strip()[-300:]}")
    finally:
        for p in procs:
            lab._stop_proc(p)
    seconds = time.monotonic() - t0
    # Every round leaves one visible entry; a losing clash entry lives 1 s more, until the
    # gc worker reaps it (with a DESTROY event): wait for that, within reason.
    deadline = time.monotonic() + (reap_wait if has_backend(service) else 0)
    while proc_count(lab) > before + rounds and time.monotonic() < deadline:
        time.sleep(0.2)
    if backend is not None:
        lab._stop_proc(backend)
    rec = lab.stop_recording(settle=0.5)
    if rec.problems:
        raise LabError("; ".join(rec.problems))
    run = RaceRun(service, _rounds(rec, service, rounds, base), rec.stats, rec.events, seconds,
                  rec.pcaps)
    for r in run.rounds:
        classify(service, r)
    return run


def _rounds(rec, service: str, rounds: int, base: int) -> list[Round]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    proto = SERVICES[service][0]
    l4 = UDP if proto == "udp" else TCP
    by_port = {base + r: Round(base + r, {p: None for p in PAYLOADS}, []) for r in range(rounds)}
    if not has_backend(service):
        return _snat_rounds(rec, by_port)
    for _, frame in read_pcap(rec.pcaps[("r-priv", "out")]):
        pkt = Ether(frame)
        if IP not in pkt or l4 not in pkt or pkt[IP].dst != BACKEND:
            continue
        r = by_port.get(pkt[l4].sport)
        if r is None:
            continue
        if proto == "udp":
            r.sent[bytes(pkt[l4].payload).decode()] = pkt[l4].dport
        else:                                 # identical SYNs: IP id tells the CPU
            r.sent[PAYLOADS[pkt[IP].id % 2]] = pkt[l4].dport
    for _, frame in read_pcap(rec.pcaps[("r-pub", "out")]):
        pkt = Ether(frame)
        if IP in pkt and UDP in pkt and pkt[IP].dst == PUB:
            r = by_port.get(pkt[UDP].dport)
            text = bytes(pkt[UDP].payload).decode(errors="replace")
            if r is not None and text.startswith("ans:"):
                r.answered[text[4:]] = (pkt[IP].src, pkt[UDP].sport)
    for line in rec.table:
        m = re.search(rf"sport=(\d+) dport=\d+ .*src={BACKEND} dst=\S+ sport=(\d+)", line)
        if m and int(m.group(1)) in by_port:
            by_port[int(m.group(1))].listed.append(int(m.group(2)))
    return list(by_port.values())


def _snat_rounds(rec, by_port: dict[int, Round]) -> list[Round]:
    """SNAT rounds: ``sent`` is the source port each host's datagram left r-pub with."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    for _, frame in read_pcap(rec.pcaps[("r-pub", "out")]):
        pkt = Ether(frame)
        if IP not in pkt or UDP not in pkt or pkt[IP].dst != PUB:
            continue
        payload, _, port = bytes(pkt[UDP].payload).decode(errors="replace").partition(" ")
        r = by_port.get(int(port)) if port.isdigit() else None
        if r is not None and payload in r.sent:
            r.sent[payload] = pkt[UDP].sport
    for line in rec.table:
        m = re.search(rf"src=10\.0\.0\.\d+ dst={PUB} sport=(\d+) dport=\d+ .*"
                      rf"dst={ROUTER_PUB} sport=\d+ dport=(\d+)", line)
        if m and int(m.group(1)) in by_port:
            by_port[int(m.group(1))].listed.append(int(m.group(2)))
    return list(by_port.values())


def classify(service: str, r: Round) -> None:
    """The outcome class of one round, from what the kernel showed."""
    ports = [p for p in r.sent.values() if p is not None]
    if not has_backend(service):
        # Who kept the client's port confirmed first; a second one was remapped (no race)
        # or dropped (the race).
        r.winner = next((k for k, p in r.sent.items() if p == r.sport), None)
        if ports and r.winner is None:
            # An earlier round's entry holds the client port (NAT remapped one of its flows
            # to exactly this port at random): both were remapped, nothing raced for it.
            r.outcome = "port-taken"
        elif len(ports) == 2 and len(set(ports)) == 2 and sorted(r.listed) == sorted(ports):
            r.outcome = "sequential"
        elif len(ports) == 1 and r.listed == ports:
            r.outcome = "insert-failed"
        else:
            r.outcome = f"odd: sent {ports}, listed {r.listed}"
        return
    if len(r.listed) == 1:
        r.winner = next((k for k, p in r.sent.items() if p == r.listed[0]), None)
    if len(r.listed) != 1:
        r.outcome = f"odd: {len(r.listed)} listed entries"
    elif len(ports) == 1:
        r.outcome = "insert-failed"
    elif len(ports) == 2 and ports[0] != ports[1]:
        r.outcome = "nat-clash"
    elif len(ports) == 2:
        r.outcome = "same-backend"          # sequential, or a race resolved by a merge
    else:
        r.outcome = "odd: nothing left the router"


def proc_count(lab: KernelLab) -> int:
    """nf_conntrack_count of the router: every entry, the hidden clash entries too."""
    return int(lab.read_sysctl("rtr", "net.netfilter.nf_conntrack_count"))

