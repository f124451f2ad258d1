"""Where a ping's round trip goes through the python-mode router (bench/README.md, "live
data path").

Run as root from the repository root (it builds three network namespaces of its own,
ntl<pid>x0-{c,r,s}, and deletes them; take /tmp/nattrack-live.lock if others run labs)::

    sudo .venv/bin/python -m bench.live_rtt [--count 300]

Three runs of ``ping -i 0.01`` client -> server through the router namespace:

1. ``kernel``: the namespace's kernel forwards (ip_forward=1), no router process;
2. ``relay``: the router process in python mode, its engine bypassed (each frame is
   handed to the other interface as it came): what the loop, the system calls and the
   process wake-ups cost;
3. ``python``: the router process in python mode, the engine in the path.

In runs 2 and 3 the router process stamps (``time.perf_counter``) the epoll return, each
interface's drain (the recvmmsg, the engine, the sendmmsg), and prints per ping the
median of each part; what is left of the round trip is outside the router process: the
kernel's veth paths and the wake-ups of the router and of ping.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))          # the live tests' namespace builder

RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o r-wan -j MASQUERADE
COMMIT
"""

# Runs inside the router namespace: the real router (python -m nattrack.router), with
# perf_counter stamps around its epoll wait, drains, engine calls and batch system calls.
STAMPED_ROUTER = r"""
import atexit, json, select, sys, time
from nattrack.router import batch, dataplane
from nattrack.ipv4.stack import Router, Sent, Verdict
from nattrack.packet.ipv4 import Packet
out_path, bypass = sys.argv[1], sys.argv[2] == "relay"
sys.argv = ["nattrack.router"] + sys.argv[3:]
now = time.perf_counter
log = []                                   # (what, start, end)

real_epoll = select.epoll
class StampedEpoll:
    def __init__(self):
        self.ep = real_epoll()
    def __getattr__(self, name):
        return getattr(self.ep, name)
    def poll(self, timeout=-1):
        t = now()
        ev = self.ep.poll(timeout)
        if ev:
            log.append(("wait", t, now()))
        return ev
dataplane.select.epoll = StampedEpoll

def stamp(cls, name, what):
    orig = getattr(cls, name)
    def wrapper(*a, **k):
        t = now()
        try:
            return orig(*a, **k)
        finally:
            log.append((what, t, now()))
    setattr(cls, name, staticmethod(wrapper) if isinstance(cls.__dict__[name], classmethod) else wrapper)

if bypass:
    OTHER = {"r-lan": "r-wan", "r-wan": "r-lan"}
    def relay(self, pkt, trace=False):
        v = Verdict()
        v.sent.append(Sent(OTHER[pkt.iif], bytes(pkt.buf[pkt.off:pkt.off + pkt.tot_len]), pkt))
        return v
    Router.receive = relay
stamp(Router, "receive", "engine")
stamp(Packet, "parse", "parse")
stamp(batch.RxBatch, "recv", "recvmmsg")
stamp(batch.TxBatch, "flush", "sendmmsg")
orig_drain = dataplane.PythonDataplane._drain
def drain(self, port):
    t = now()
    orig_drain(self, port)
    log.append(("drain " + port.name, t, now()))
dataplane.PythonDataplane._drain = drain
atexit.register(lambda: json.dump(log, open(out_path, "w")))
from nattrack.router.__main__ import main
sys.exit(main())
"""


def ping(topo, count: int) -> list[float]:
    r = topo.exec(topo.client, "ping", "-n", "-q", "-c", "20", "-i", "0.01", "203.0.113.10",
                  check=False, timeout=60)                      # warm-up: ARP, the conntrack entry
    r = topo.exec(topo.client, "ping", "-n", "-c", str(count), "-i", "0.01", "203.0.113.10",
                  timeout=count * 0.05 + 30)
    return [float(x) * 1000 for x in re.findall(r"time[=<]([\d.]+) ms", r.stdout)]


def flood(topo, rate: int, seconds: float, pid: int) -> dict:
    """bench.lab's paced UDP sender (64-byte frames) client -> a counting sink in the
    server; the router process's CPU meanwhile."""
    from .lab import SENDER, SINK, UDP_PAYLOAD, proc_cpu_s
    sink = topo.popen(topo.server, sys.executable, "-c", SINK, "9000", "0.7", str(seconds + 15),
                      stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    cpu0 = proc_cpu_s(pid)
    snd = topo.exec(topo.client, sys.executable, "-c", SENDER, "203.0.113.10", "9000", str(rate),
                    str(seconds), str(UDP_PAYLOAD), timeout=seconds + 30)
    cpu1 = proc_cpu_s(pid)
    got = json.loads(sink.communicate(timeout=seconds + 20)[0])
    sent = json.loads(snd.stdout)
    return {"sent": sent["attempted"] - sent["errors"], "received": got["received"],
            "seconds": sent["seconds"], "router_cpu_s": cpu1 - cpu0}


def router_run(topo, mode: str, work: str, traffic) -> dict:
    """The stamped router in python mode (``relay``: its engine bypassed) while
    ``traffic(pid)`` runs; returns what traffic returned and the raw stamps."""
    stamps = os.path.join(work, f"{mode}.json")
    rules = os.path.join(work, "rules")
    with open(rules, "w") as f:
        f.write(RULES)
    argv = [sys.executable, "-c", STAMPED_ROUTER, stamps, mode, "--mode", "python",
            "--iface", "r-lan=10.0.0.1/24", "--iface", "r-wan=203.0.113.1/24",
            "--rules", rules, "--control", os.path.join(work, f"{mode}.sock"),
            "--log", os.path.join(work, f"{mode}.log")]
    proc = topo.popen(topo.router, *argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the router did not start; see {work}/{mode}.log")
        result = traffic(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    with open(stamps) as f:
        return result, json.load(f)


def totals(log: list) -> dict[str, tuple[int, float]]:
    """Each stamped part: (calls, seconds in all)."""
    out: dict[str, tuple[int, float]] = {}
    for what, t0, t1 in log:
        n, s = out.get(what, (0, 0.0))
        out[what] = (n + 1, s + t1 - t0)
    return out


def parts(log: list) -> dict[str, float]:
    """Median per ping of each stamped part (the last ``count`` request/reply pairs)."""
    per: dict[str, list[float]] = {}
    i = 0
    pings = []
    while i < len(log):                  # one ping: a wait, drain r-lan, a wait, drain r-wan
        if log[i][0] == "drain r-lan":
            j = next((k for k in range(i + 1, min(i + 12, len(log))) if log[k][0] == "drain r-wan"), None)
            if j is not None:
                pings.append((i, j))
                i = j
        i += 1
    for i, j in pings:
        lan, wan = log[i], log[j]
        inner = [e for e in log[i - 8:j + 1] if e[1] >= lan[1] and e[2] <= wan[2]]
        total = {}
        for what, t0, t1 in inner:
            total[what] = total.get(what, 0.0) + (t1 - t0)
        total["between the two drains"] = wan[1] - lan[2]
        for k, v in total.items():
            per.setdefault(k, []).append(v * 1e6)
    return {k: statistics.median(v) for k, v in per.items()} | {"pings": len(pings)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.live_rtt", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=300, help="pings per run (default 300)")
    ap.add_argument("--flood", type=int, default=40_000, metavar="PKT/S",
                    help="then a UDP flood at this rate for 3 s, per-frame costs (default 40000, 0: none)")
    ap.add_argument("--keep", metavar="DIR", help="keep the raw stamps (DIR/relay.json, DIR/python.json)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.live_rtt needs root (network namespaces)", file=sys.stderr)
        return 2
    from live.netns import Topology
    res = {}
    with tempfile.TemporaryDirectory() as tmp, Topology() as topo:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        os.chmod(work, 0o755)
        topo.exec(topo.server, "ip", "route", "add", "10.0.0.0/24", "via", "203.0.113.1")   # the relay does no NAT
        topo.exec(topo.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        res["kernel"] = {"rtt": ping(topo, args.count)}
        topo.exec(topo.router, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        for mode in ("relay", "python"):
            rtts, log = router_run(topo, mode, work, lambda pid: ping(topo, args.count))
            res[mode] = {"rtt": rtts, "parts": parts(log)}
            time.sleep(0.5)
        if args.flood:
            fl, log = router_run(topo, "flood", work, lambda pid: flood(topo, args.flood, 3.0, pid))
            fl["totals"] = totals(log)
    print(f"ping -i 0.01 client -> server through the router namespace, {args.count} pings per run; "
          f"medians in us")
    for mode, r in res.items():
        q = statistics.quantiles(r["rtt"], n=10)
        print(f"  {mode:<7} round trip {statistics.median(r['rtt']):7.1f}  (p10 {q[0]:.1f}, p90 {q[8]:.1f})")
        p = r.get("parts")
        if p:
            inside = sum(p.get(k, 0.0) for k in ("drain r-lan", "drain r-wan", "between the two drains"))
            print(f"          in the router process {inside:.1f} = drain r-lan {p.get('drain r-lan', 0):.1f}"
                  f" + between the drains {p.get('between the two drains', 0):.1f}"
                  f" + drain r-wan {p.get('drain r-wan', 0):.1f}; of which engine {p.get('engine', 0):.1f},"
                  f" recvmmsg {p.get('recvmmsg', 0):.1f}, sendmmsg {p.get('sendmmsg', 0):.1f}"
                  f" ({p['pings']} pings matched)")
            print(f"          outside it (wake-ups, the kernel's veth paths): "
                  f"{statistics.median(r['rtt']) - inside:.1f}")
    if args.flood:
        t = fl["totals"]
        frames = t.get("engine", (0, 0.0))[0] or 1
        drains = sum(v[1] for k, v in t.items() if k.startswith("drain"))
        per = {k: 1e6 * v[1] / frames for k, v in t.items()}
        rest = 1e6 * drains / frames - sum(per.get(k, 0.0) for k in ("engine", "parse", "recvmmsg", "sendmmsg"))
        print(f"UDP flood, 64-byte frames, {args.flood:,}/s offered for 3 s: sent {fl['sent']:,}, "
              f"received {fl['received']:,} ({100 * (1 - fl['received'] / max(1, fl['sent'])):.2f} % lost)")
        print(f"  router process CPU {1e6 * fl['router_cpu_s'] / frames:.1f} us per frame "
              f"({100 * fl['router_cpu_s'] / fl['seconds']:.0f} % of a CPU); inside its drains "
              f"{1e6 * drains / frames:.1f} us: Packet.parse {per.get('parse', 0):.1f}, "
              f"Router.receive {per.get('engine', 0):.1f}, recvmmsg {per.get('recvmmsg', 0):.1f} "
              f"({t.get('recvmmsg', (0,))[0] and frames / t['recvmmsg'][0]:.1f} frames per call), "
              f"sendmmsg {per.get('sendmmsg', 0):.1f} "
              f"({t.get('sendmmsg', (0,))[0] and frames / t['sendmmsg'][0]:.1f} per call), "
              f"the loop's own work {rest:.1f}")
        print("  (each stamp costs about half a microsecond itself)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
