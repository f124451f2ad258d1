"""Live lab benchmark: nattrack's router in python mode against the kernel, through `basic`.

Run from the repository root, as root (it builds the lab's network namespaces)::

    sudo .venv/bin/python -m bench.lab            # full run, about 1.5 minutes
    sudo .venv/bin/python -m bench.lab --quick    # each measurement briefly, about 35 s
    sudo .venv/bin/python -m bench.lab --json     # the same figures as one JSON object
    sudo .venv/bin/python -m bench.lab --no-batch # one frame per system call (before batches)

One run brings the `basic` lab up in python mode, measures, brings it down,
then does the same in kernel mode, and prints both side by side with the ratio
python/kernel:

1. small-packet UDP (64-byte frames) carried with < 0.1 % loss, and the loss
   at each offered rate;
2. one TCP stream's throughput;
3. the round-trip time the router adds;
4. the router process's CPU during the UDP test;
5. kernel mode: the share of forwarded packets the shadow tracker missed.

Like bench/engine.py it prints figures next to their targets and never fails
on a missed target.  Progress goes to stderr.  All traffic stays inside the
lab's namespaces.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

from .engine import cpu_model, git_rev, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPO = "basic"
ROUTER = "r"
SRV_IP = "203.0.113.10"
IPERF_PORT = 5201
SINK_PORT = 9000
UDP_PAYLOAD = 18            # 14 Ethernet + 20 IP + 8 UDP + 18 + 4 FCS = a 64-byte frame
LOSS_OK = 0.001             # "no loss": under 0.1 %
PING_COUNT = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {                         # issue 11's
    "udp_pps": (">=", 150_000, "pkt/s"),
    "tcp_mbps": (">=", 1_500, "Mbit/s"),
    "rtt_added_us": ("<=", 100, "us"),
    "shadow_missed_pct": ("<=", 0, "%"),
}

SIZES = {
    # name: (full, quick)
    "rates": ((10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000),
              (10_000, 25_000, 50_000, 100_000, 150_000)),
    "udp_s": (3, 1),
    "bisect": (2, 0),               # extra rates between the last pass and the first failure
    "tcp_s": (5, 2),
    "shadow_rates": ((1_000, 5_000, 10_000), (1_000, 5_000, 10_000)),
    "shadow_s": (3, 1),
    # the shadow's exact range: the uplink shaped at each rate (Mbit/s, 0 = unshaped)
    "range_mbit": ((25, 50, 100, 150, 200, 300, 400, 0), (50, 100, 200, 0)),
    "range_s": (4, 2),
}


def size(name: str, quick: bool):
    full, small = SIZES[name]
    return small if quick else full


class BenchError(Exception):
    pass


class LabBusy(BenchError):
    """Someone else's lab is running: it is left alone."""


# --- small programs run inside the nodes ------------------------------------------------

# A paced UDP sender: `rate` datagrams/s of `size` bytes for `dur` s, a sequence number
# in the first four bytes.  Prints what it did as JSON.
SENDER = r"""
import json, socket, struct, sys, time
dst, port, rate, dur, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, port))
buf = bytearray(size)
pack = struct.Struct("!I").pack_into
total = int(rate * dur)
n = errors = 0
t0 = time.monotonic()
while n < total:
    due = min(total, int((time.monotonic() - t0) * rate) + 1)
    while n < due:
        pack(buf, 0, n)
        try:
            s.send(buf)
        except OSError:
            errors += 1
        n += 1
    wait = t0 + n / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
print(json.dumps({"attempted": n, "errors": errors, "seconds": time.monotonic() - t0}))
"""

# A UDP sink that counts: says "ready", then counts datagrams until `idle` s pass
# without one (after the first) or `limit` s in all.
SINK = r"""
import json, socket, sys, time
port, idle, limit = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", port))
print("ready", flush=True)
buf = bytearray(2048)
n, hi = 0, -1
s.settimeout(limit)
try:
    while True:
        k = s.recv_into(buf)
        n += 1
        if k >= 4:
            hi = max(hi, int.from_bytes(buf[:4], "big"))
        if n == 1:
            s.settimeout(idle)
except socket.timeout:
    pass
print(json.dumps({"received": n, "highest_seq": hi}))
"""


# --- the lab: up, down, and what it is made of ------------------------------------------

def _cli(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """`nattrack lab ...` in its own session, so a Ctrl-C reaches it only through us."""
    argv = [sys.executable, "-m", "nattrack.cli.main", "lab", *args]
    p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, **(env or {})))
    try:
        out, err = p.communicate(timeout=timeout)
    except KeyboardInterrupt:
        # `lab up` stops and clears a half-started lab on SIGINT: let it.
        p.send_signal(signal.SIGINT)
        with _no_sigint():
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        raise
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return subprocess.CompletedProcess(argv, 124, out, err + f"\n(timed out after {timeout:.0f} s)")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


class _no_sigint:
    """Ctrl-C is ignored inside (the lab must come down whole)."""

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:              # not the main thread
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def lab_up(mode: str) -> float:
    """The lab with its links unshaped: the router's own limits are measured (the shadow's
    range sets its own rates with tc)."""
    from nattrack.lab.topo import RATE_ENV
    t = time.monotonic()
    r = _cli(["up", "--topo", TOPO, "--mode", mode], timeout=180, env={RATE_ENV: "0"})
    if r.returncode != 0:
        msg = " ".join((r.stderr or r.stdout).split())
        if "already running" in msg:
            raise LabBusy(msg)
        raise BenchError(f"lab up --mode {mode} failed: {msg}")
    return time.monotonic() - t


def lab_down() -> tuple[float, str | None]:
    """Bring the lab down, whatever happens (Ctrl-C ignored meanwhile).  Returns the time
    it took and a problem, if any."""
    t = time.monotonic()
    with _no_sigint():
        r = _cli(["down"], timeout=90)
        problem = None
        if r.returncode != 0:
            msg = " ".join((r.stderr or r.stdout).split())
            if "no lab is running" in msg and "crashed" not in msg:
                problem = None
            else:
                r2 = _cli(["down", "--force"], timeout=90)
                problem = f"`lab down` said: {msg}; `lab down --force`: exit {r2.returncode}"
    return time.monotonic() - t, problem


def lab_running() -> bool:
    from nattrack.lab.client import LabClient, NoLab
    try:
        LabClient().status()
        return True
    except NoLab:
        return False


class Node:
    """Counters read straight from /proc/<pid of a process in the node>/net (no exec)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid

    def snmp(self, proto: str = "Udp") -> dict[str, int]:
        with open(f"/proc/{self.pid}/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith(proto + ":")]
        return dict(zip(rows[0][1:], map(int, rows[1][1:])))

    def listening(self, port: int) -> bool:
        want = f":{port:04X}"
        for name in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{self.pid}/net/{name}") as f:
                    next(f)
                    for line in f:
                        cols = line.split()
                        if cols[1].endswith(want) and cols[3] == "0A":
                            return True
            except OSError:
                pass
        return False


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None



def other_labs(own: set[int]) -> list[str]:
    """Lab services and router processes that are not this run's (tests' labs, say):
    they share the CPUs, so figures measured meanwhile are low."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in own:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for mod in (b"nattrack.lab.daemon", b"nattrack.router"):
            if mod in argv[:4]:
                found.append(f"{name} {mod.decode()}")
    return found


class Background:
    """A command running in a node (LabClient.exec in a thread); `ready` is set when its
    stdout says `ready_text`, or when it ends."""

    def __init__(self, lab, node: str, argv: list[str], timeout: float,
                 ready_text: str | None = None) -> None:
        self.lab, self.node, self.argv, self.timeout = lab, node, argv, timeout
        self.ready_text = ready_text
        self.out = b""
        self.result = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"bench-{node}")
        self.thread.start()

    def _on_output(self, name: str, data: bytes) -> None:
        if name == "stdout":
            self.out += data
            if self.ready_text and self.ready_text.encode() in self.out:
                self.ready.set()

    def _run(self) -> None:
        try:
            self.result = self.lab.exec(self.node, self.argv, timeout=self.timeout,
                                        on_output=self._on_output)
        except BaseException as exc:           # noqa: BLE001 -- reported by the caller
            self.error = exc
        finally:
            self.ready.set()

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


# --- one mode ------------------------------------------------------------------------------

class Mode:
    def __init__(self, mode: str, quick: bool) -> None:
        from nattrack.lab import Paths
        from nattrack.lab.client import LabClient
        self.mode, self.quick = mode, quick
        self.lab = LabClient(timeout=30)
        st = self.lab.status()
        self.nodes = {n: Node(n, d["pid"]) for n, d in st["nodes"].items() if d.get("pid")}
        r = st["routers"][ROUTER]
        self.router_pid = r.get("pid")
        if not self.router_pid or not r.get("alive", True):
            raise BenchError(f"{self.mode} mode: no live router process in {ROUTER} ({r})")
        self.log_path = str(Paths().router_log(ROUTER))
        try:
            self.log_start = os.path.getsize(self.log_path)
        except OSError:
            self.log_start = 0
        self.problems: list[str] = []
        self.own = {os.getpid(), st.get("pid") or 0, self.router_pid}
        self.others: set[str] = set()
        self.res: dict = {"mode": mode, "router_pid": self.router_pid}

    def look_for_others(self) -> None:
        found = other_labs(self.own)
        if found and not self.others.issuperset(found):
            progress(f"{self.mode} mode: other nattrack labs are running meanwhile: {', '.join(found)}")
        self.others.update(found)

    def note(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)
            progress(f"{self.mode} mode: PROBLEM: {text}")

    def router_counters(self) -> dict:
        try:
            return self.lab.stats()["router"]
        except Exception as exc:                # noqa: BLE001
            self.note(f"the router's stats verb failed: {exc}")
            return {}

    def check_router(self, when: str) -> None:
        try:
            r = self.lab.status()["routers"][ROUTER]
        except Exception as exc:                # noqa: BLE001
            self.note(f"lab status failed {when}: {exc}")
            return
        if not r.get("alive", True) or proc_cpu_s(self.router_pid) is None:
            self.note(f"the router process (pid {self.router_pid}) is gone {when}")
        elif r.get("pid") != self.router_pid:
            self.note(f"the router process changed {when}: pid {self.router_pid} -> {r.get('pid')}")

    def check_tables(self, when: str) -> None:
        """Python mode: r's kernel must have tracked nothing (the engine did the work).
        Kernel mode: the shadow's table next to the kernel's (`lab diff`)."""
        time.sleep(0.3)
        try:
            if self.mode == "python":
                lines = self.lab.kernel_list()
                rec = {"after": when, "kernel_entries": len(lines)}
                if lines:
                    self.note(f"r's kernel tracked {len(lines)} flow(s) in python mode ({when}): {lines[0][:120]}")
            else:
                from nattrack.lab.diff import flow_text
                rows = self.lab.diff()
                bad = [r for r in rows if not r.agree]
                rec = {"after": when, "flows": len(rows), "differ": len(bad),
                       "examples": [f"{flow_text(r.python or r.kernel)}: {'; '.join(r.problems)}" for r in bad[:5]]}
                rec["socket_drops_so_far"] = self.router_counters().get("socket_drops")
                if bad:
                    self.note(f"lab diff {when}: {len(bad)} of {len(rows)} flows differ between the shadow "
                              f"and the kernel (the shadow's socket dropped {rec['socket_drops_so_far']:,} "
                              f"frames so far), e.g. {rec['examples'][0][:200]}")
        except Exception as exc:                # noqa: BLE001
            rec = {"after": when, "error": str(exc)}
            self.note(f"comparing the tables {when} failed: {exc}")
        self.res.setdefault("tables", []).append(rec)

    # -- 3. round-trip times -------------------------------------------------------------

    def ping(self, node: str, count: int = PING_COUNT) -> dict:
        r = self.lab.exec(node, ["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", SRV_IP],
                          timeout=count * 0.01 + 15)
        rtts = [float(x) * 1000 for x in re.findall(r"time[=<]([\d.]+) ms", r.stdout)]
        out = {"from": node, "sent": count, "received": len(rtts)}
        if rtts:
            q = statistics.quantiles(rtts, n=10) if len(rtts) >= 2 else [rtts[0]] * 9
            out.update(median_us=statistics.median(rtts), min_us=min(rtts), p90_us=q[8],
                       max_us=max(rtts))
        return out

    def measure_rtt(self) -> None:
        progress(f"{self.mode} mode: ping h1 -> srv")
        through = self.ping("h1")
        if through["received"] < through["sent"]:
            self.note(f"ping h1 -> srv through the router: {through['received']}/{through['sent']} "
                      f"replies with an idle router")
        direct = self.ping(ROUTER)
        if direct["received"] == 0:
            direct["why_not"] = ("r's own kernel answers nothing in python mode (a raw-table DROP "
                                 "per router interface: the engine owns them)")
        self.res["rtt"] = {"through": through, "direct": direct}

    # -- 2. TCP ---------------------------------------------------------------------------

    def iperf_server(self, dur: float) -> Background:
        srv = self.nodes["srv"]
        bg = Background(self.lab, "srv", ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)], timeout=dur + 30)
        deadline = time.monotonic() + 10
        while not srv.listening(IPERF_PORT):
            if bg.ready.is_set() or time.monotonic() > deadline:
                err = bg.error or (bg.result.stderr if bg.result else "no listener")
                raise BenchError(f"iperf3 server in srv did not start: {err}")
            time.sleep(0.02)
        return bg

    def iperf(self, extra: list[str], dur: float) -> tuple[dict, float]:
        """One iperf3 client run h1 -> srv; returns its JSON and the router's CPU seconds."""
        bg = self.iperf_server(dur)
        cpu0 = proc_cpu_s(self.router_pid)
        try:
            r = self.lab.exec("h1", ["iperf3", "-c", SRV_IP, "-p", str(IPERF_PORT), "-J", "-t", str(dur),
                                     *extra], timeout=dur + 30)
        finally:
            bg.wait(10)
        cpu1 = proc_cpu_s(self.router_pid)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"iperf3 {' '.join(extra)}: no JSON (exit {r.returncode}): "
                             f"{(r.stderr or r.stdout)[-300:]}") from None
        if data.get("error"):
            raise BenchError(f"iperf3 {' '.join(extra)}: {data['error']}")
        cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else float("nan")
        return data, cpu

    def measure_tcp(self) -> None:
        dur = size("tcp_s", self.quick)
        progress(f"{self.mode} mode: one TCP stream, {dur} s")
        c0 = self.router_counters()
        try:
            data, cpu = self.iperf([], dur)
        except BenchError as exc:
            self.note(f"TCP test failed: {exc}")
            return
        time.sleep(0.3)
        c1 = self.router_counters()
        end = data["end"]
        secs = end["sum_received"]["seconds"] or dur
        self.res["tcp"] = {"seconds": dur, "mbps": end["sum_received"]["bits_per_second"] / 1e6,
                           "retransmits": end["sum_sent"].get("retransmits"),
                           "router_cpu_pct": 100 * cpu / secs,
                           "router": {k: c1.get(k, 0) - c0.get(k, 0) for k in
                                      ("forwarded", "rx_frames", "socket_drops", "router_errors", "tx_errors",
                                       "shadow_missed") if k in c1}}

    # -- 1 and 4. small-packet UDP ----------------------------------------------------------

    def udp_step(self, rate: int, dur: float) -> dict:
        self.look_for_others()
        h1, srv = self.nodes["h1"], self.nodes["srv"]
        c0, h0, s0 = self.router_counters(), h1.snmp(), srv.snmp()
        data, cpu = self.iperf(["-u", "-l", str(UDP_PAYLOAD), "-b", str(rate * UDP_PAYLOAD * 8)], dur)
        time.sleep(0.3)                 # what the router still holds drains; drop counters update
        c1, h1s, s1 = self.router_counters(), h1.snmp(), srv.snmp()
        d = lambda a, b, k: b.get(k, 0) - a.get(k, 0)        # noqa: E731
        end = data["end"]
        secs = end["sum_sent"]["seconds"] or dur
        sent = d(h0, h1s, "OutDatagrams")
        # Everything that reached srv's UDP layer: read, dropped at a full socket, or after
        # iperf3 closed its socket (NoPorts).  Their difference from `sent` is lost on the way.
        arrived = d(s0, s1, "InDatagrams") + d(s0, s1, "InErrors") + d(s0, s1, "NoPorts")
        rx = end["sum_received"]
        iperf_lost, iperf_pkts = rx.get("lost_packets", 0), rx.get("packets", 0)
        step = {
            "offered_pps": rate, "seconds": secs, "sent": sent, "sent_pps": sent / secs,
            "send_errors": d(h0, h1s, "SndbufErrors"),
            "arrived": arrived, "carried_pps": arrived / secs,
            "loss": max(0, sent - arrived) / sent if sent else None,
            "iperf3_received": iperf_pkts - iperf_lost,
            "iperf3_loss": iperf_lost / iperf_pkts if iperf_pkts else None,
            "receiver_rcvbuf_drops": d(s0, s1, "RcvbufErrors"),
            "receiver_csum_errors": d(s0, s1, "InCsumErrors"),
            "router_cpu_s": cpu, "router_cpu_pct": 100 * cpu / secs,
            "router_cpu_us_per_pkt": 1e6 * cpu / sent if sent else None,
            "router": {k: d(c0, c1, k) for k in ("forwarded", "rx_frames", "tx_frames", "socket_drops",
                                                 "router_errors", "tx_errors", "shadow_missed", "held",
                                                 "hold_timeouts", "shadow_disagrees")
                       if k in c1},
        }
        if arrived > sent:
            self.note(f"UDP at {rate:,}/s: srv got {arrived - sent} datagrams more than h1 sent")
        if step["receiver_csum_errors"]:
            self.note(f"UDP at {rate:,}/s: {step['receiver_csum_errors']} datagrams reached srv with a "
                      f"bad checksum")
        for k in ("router_errors", "tx_errors", "shadow_disagrees"):
            if step["router"].get(k):
                self.note(f"UDP at {rate:,}/s: the router counted {step['router'][k]} {k}")
        if self.mode == "python" and step["router"].get("forwarded", arrived) < arrived:
            self.note(f"UDP at {rate:,}/s: srv got {arrived} datagrams, the router counted "
                      f"{step['router']['forwarded']} forwarded")
        fwd = step["router"].get("forwarded")
        step["router_cpu_us_per_handled"] = 1e6 * cpu / fwd if fwd else None
        if self.mode == "kernel" and fwd is not None:
            # The shadow's share of what the kernel forwarded (a few dozen iperf3 control
            # segments are in `forwarded` too, so this is approximate).
            step["shadow_seen"] = min(fwd, arrived) / arrived if arrived else None
            step["shadow_missed_approx"] = max(0, arrived - fwd)
        progress(f"{self.mode} mode: UDP {rate:,}/s offered: sent {step['sent_pps']:,.0f}/s, "
                 f"loss {100 * (step['loss'] or 0):.2f} %, router CPU {step['router_cpu_pct']:.0f} %")
        return step

    def try_step(self, fn, rate: int, dur: float, what: str) -> dict | None:
        """One step; a failure (a tool that got no answer, say) is noted, not fatal."""
        try:
            return fn(rate, dur)
        except BenchError as exc:
            self.note(f"{what} at {rate:,}/s failed: {exc}")
            return None

    def measure_udp(self) -> None:
        dur = size("udp_s", self.quick)
        steps = [s for rate in size("rates", self.quick)
                 if (s := self.try_step(self.udp_step, rate, dur, "UDP")) is not None]
        if not steps:
            self.res["udp"] = {}
            return
        for _ in range(size("bisect", self.quick)):
            ok = [s["offered_pps"] for s in steps if s["loss"] is not None and s["loss"] < LOSS_OK]
            bad = [s["offered_pps"] for s in steps if s["loss"] is None or s["loss"] >= LOSS_OK]
            lo = max([r for r in ok if all(r < b for b in bad)], default=0)
            hi = min([b for b in bad if b > lo], default=None)
            if hi is None or hi - lo <= 10_000:
                break
            mid = (lo + hi) // 2 // 5_000 * 5_000
            step = self.try_step(self.udp_step, mid, dur, "UDP")
            if step is None:
                break
            steps.append(step)
        steps.sort(key=lambda s: s["offered_pps"])
        best = None
        for s in steps:                   # the highest rate below which every rate passed
            if s["loss"] is None or s["loss"] >= LOSS_OK:
                break
            if best is None or s["sent_pps"] > best["sent_pps"]:
                best = s                  # (a sender short of the offered rate sends less)
        top = max(steps, key=lambda s: s["carried_pps"])
        self.res["udp"] = {"seconds": dur, "steps": steps,
                           "best_pps": best["sent_pps"] if best else 0.0,
                           "best_offered": best["offered_pps"] if best else None,
                           "best_router_cpu_pct": best["router_cpu_pct"] if best else None,
                           "max_carried_pps": top["carried_pps"],
                           "max_carried_router_cpu_pct": top["router_cpu_pct"],
                           "cpu_us_per_pkt": statistics.median(
                               [s["router_cpu_us_per_handled"] for s in steps if s["router_cpu_us_per_handled"]]
                               or [float("nan")])}
        if self.mode == "kernel":
            worst = max(steps, key=lambda s: s.get("shadow_missed_approx") or 0)
            m = worst.get("shadow_missed_approx") or 0
            if m > 100 and worst["router"].get("shadow_missed", 0) < m / 2:
                self.note(f"UDP at {worst['offered_pps']:,}/s: the shadow missed about {m:,} of the "
                          f"{worst['arrived']:,} datagrams the kernel forwarded, but its shadow_missed "
                          f"counter grew by {worst['router'].get('shadow_missed', 0):,} only (socket_drops "
                          f"{worst['router'].get('socket_drops', 0):,} frames): a datagram whose two copies "
                          f"were both dropped is counted nowhere")
        # Does it still forward after the overload?
        after = self.ping("h1", count=10)
        self.res["udp"]["ping_after"] = after
        if after["received"] < after["sent"]:
            self.note(f"after the UDP test, ping h1 -> srv got {after['received']}/{after['sent']} replies")

    # -- 5. kernel mode: what the shadow missed ------------------------------------------------

    def shadow_step(self, rate: int, dur: float) -> dict:
        self.look_for_others()
        srv = self.nodes["srv"]
        sink = Background(self.lab, "srv", [sys.executable, "-c", SINK, str(SINK_PORT), "0.7", str(dur + 15)],
                          timeout=dur + 30, ready_text="ready")
        if not sink.ready.wait(15) or sink.error or sink.result is not None:
            raise BenchError(f"the UDP sink in srv did not start: {sink.error or sink.result}")
        c0, s0 = self.router_counters(), srv.snmp()
        cpu0 = proc_cpu_s(self.router_pid)
        r = self.lab.exec("h1", [sys.executable, "-c", SENDER, SRV_IP, str(SINK_PORT), str(rate), str(dur),
                                 str(UDP_PAYLOAD)], timeout=dur + 30)
        sink.wait(dur + 20)
        time.sleep(0.3)                 # held datagrams are released (50 ms), counters settle
        cpu1 = proc_cpu_s(self.router_pid)
        c1, s1 = self.router_counters(), srv.snmp()
        try:
            snd = json.loads(r.stdout)
            rcv = json.loads(sink.result.stdout.split("ready", 1)[1])
        except (ValueError, AttributeError, IndexError):
            raise BenchError(f"shadow test at {rate}/s: sender said {r.stdout!r} {r.stderr[-200:]!r}, "
                             f"sink said {getattr(sink.result, 'stdout', sink.error)!r}") from None
        d = lambda k: c1.get(k, 0) - c0.get(k, 0)          # noqa: E731
        kernel_fwd = (s1["InDatagrams"] - s0["InDatagrams"]) + (s1["InErrors"] - s0["InErrors"]) \
            + (s1["NoPorts"] - s0["NoPorts"])
        seen = d("forwarded")
        step = {"offered_pps": rate, "seconds": snd["seconds"], "sent": snd["attempted"] - snd["errors"],
                "kernel_forwarded": kernel_fwd, "sink_received": rcv["received"], "shadow_counted": seen,
                "missed": kernel_fwd - seen,
                "missed_share": (kernel_fwd - seen) / kernel_fwd if kernel_fwd else None,
                "shadow_missed_counter": d("shadow_missed"), "socket_drops": d("socket_drops"),
                "held": d("held"), "hold_timeouts": d("hold_timeouts"),
                "router_cpu_pct": 100 * (cpu1 - cpu0) / max(1e-9, snd["seconds"])
                if cpu0 is not None and cpu1 is not None else None}
        if seen > kernel_fwd:
            self.note(f"shadow at {rate:,}/s: it counted {seen} forwarded, the kernel forwarded {kernel_fwd}")
        if step["missed"] > 0 and step["shadow_missed_counter"] != step["missed"]:
            self.note(f"shadow at {rate:,}/s: {step['missed']} datagrams missed, but its shadow_missed "
                      f"counter says {step['shadow_missed_counter']} (socket_drops "
                      f"{step['socket_drops']})")
        progress(f"kernel mode: shadow at {rate:,}/s: kernel forwarded {kernel_fwd}, shadow counted {seen}")
        return step

    def measure_shadow(self) -> None:
        dur = size("shadow_s", self.quick)
        steps = [self.try_step(self.shadow_step, r, dur, "shadow test") for r in size("shadow_rates", self.quick)]
        self.res["shadow"] = {"seconds": dur, "steps": [s for s in steps if s is not None]}

    # -- 6. kernel mode: the shadow's exact range ----------------------------------------------

    UPLINK = (("r", "ntr-wan"), ("srv", "ntsrv-eth0"))

    def set_rate(self, mbit: float) -> None:
        """Shape the uplink both ways as the topology does (tbf), or unshape it (0)."""
        from nattrack.lab.topo import tbf_cmd
        for node, dev in self.UPLINK:
            argv = tbf_cmd(dev, mbit).split() if mbit else ["tc", "qdisc", "del", "dev", dev, "root"]
            r = self.lab.exec(node, argv, timeout=10)
            if mbit and r.returncode != 0:
                raise BenchError(f"tc in {node}: {r.stderr.strip()}")

    def range_step(self, mbit: float, dur: float) -> dict:
        """A TCP download (iperf3 -R) through the uplink shaped at ``mbit``; then what the
        shadow knows it missed and what `nattrack diff` says."""
        from nattrack.lab.ctargs import CtRequest
        self.look_for_others()
        self.set_rate(mbit)
        self.lab.kernel_conntrack(CtRequest(command="F"))     # both tables start empty
        self.lab.flush()
        c0 = self.router_counters()
        data, cpu = self.iperf(["-R"], dur)
        time.sleep(0.5)
        c1 = self.router_counters()
        rows = self.lab.diff()
        missed = self.lab.missed() or {}
        d = lambda k: c1.get(k, 0) - c0.get(k, 0)             # noqa: E731
        end = data["end"]
        secs = end["sum_received"]["seconds"] or dur
        bad = [r for r in rows if not r.agree]
        step = {"mbit": mbit, "throughput_mbps": end["sum_received"]["bits_per_second"] / 1e6,
                "frames": d("rx_frames"), "socket_drops": d("socket_drops"),
                "shadow_missed": d("shadow_missed"),
                "flow_missed": sum(f["missed"] for f in missed.get("flows", [])),
                "flows": len(rows), "differ": len(bad),
                "differ_put_down_to_losses": sum(1 for r in bad if r.missed or d("socket_drops")),
                "blamed_transitions": sum(1 for r in bad for p in r.problems
                                          if "different transitions" in p),
                "router_cpu_pct": 100 * cpu / secs}
        step["exact"] = not (step["socket_drops"] or step["shadow_missed"] or step["differ"])
        progress(f"kernel mode: uplink {mbit:g} Mbit/s{' (unshaped)' if not mbit else ''}: "
                 f"{step['throughput_mbps']:.0f} Mbit/s carried, socket drops {step['socket_drops']:,}, "
                 f"diff {step['differ']} of {step['flows']} differ -> "
                 f"{'exact' if step['exact'] else 'NOT exact'}")
        return step

    def measure_shadow_range(self) -> None:
        dur = size("range_s", self.quick)
        steps = []
        for mbit in size("range_mbit", self.quick):
            try:
                steps.append(self.range_step(mbit, dur))
            except BenchError as exc:
                self.note(f"shadow range at {mbit:g} Mbit/s failed: {exc}")
        exact = 0.0
        for st in sorted((s for s in steps if s["mbit"]), key=lambda s: s["mbit"]):
            if not st["exact"]:
                break
            exact = st["mbit"]
        for st in steps:
            if st["blamed_transitions"]:
                self.note(f"at {st['mbit']:g} Mbit/s `nattrack diff` blamed transitions on "
                          f"{st['blamed_transitions']} flow(s) although the shadow lost frames")
        self.res["shadow_range"] = {"seconds": dur, "steps": steps, "exact_up_to_mbit": exact}
        self.set_rate(0)

    # -- the whole mode ----------------------------------------------------------------------

    def run(self) -> dict:
        self.look_for_others()
        self.measure_rtt()
        self.check_router("after the ping test")
        if self.mode == "kernel":
            self.check_tables("after the ping test")
        self.measure_tcp()
        self.check_router("after the TCP test")
        if self.mode == "kernel":
            self.check_tables("after the TCP test")
        self.measure_udp()
        self.check_router("after the UDP test")
        self.check_tables("after the UDP test")
        if self.mode == "kernel":
            self.measure_shadow()
            self.check_router("after the shadow test")
            self.check_tables("after the shadow test")
            self.measure_shadow_range()
            self.check_router("after the shadow's range")
        self.look_for_others()
        self.res["other_labs"] = sorted(self.others)
        self.res["router_log"] = self.read_log()
        self.res["problems"] = self.problems
        return self.res

    def read_log(self) -> dict:
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(self.log_start)
                lines = f.read().splitlines()
        except OSError:
            return {"lines": 0, "bad": []}
        bad = [line for line in lines if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", line)]
        for line in bad[:3]:
            self.note(f"router log: {line[:200]}")
        never = sum(1 for line in lines if "never seen arriving" in line)
        return {"lines": len(lines), "bad": bad[:20], "bad_count": len(bad), "never_seen_arriving": never}


def run_mode(mode: str, quick: bool, only_range: bool = False) -> dict:
    progress(f"{mode} mode: nattrack lab up --topo {TOPO} --mode {mode}")
    up_s = None
    try:
        up_s = lab_up(mode)
        m = Mode(mode, quick)
        if only_range:
            m.measure_shadow_range()
            m.res["problems"] = m.problems
            res = m.res
        else:
            res = m.run()
    except LabBusy:
        raise
    except BaseException:
        progress(f"{mode} mode: stopping the lab")
        lab_down()
        raise
    progress(f"{mode} mode: nattrack lab down")
    down_s, problem = lab_down()
    res["lab_up_s"], res["lab_down_s"] = up_s, down_s
    if problem:
        res["problems"].append(f"lab down: {problem}")
    return res


# --- report ---------------------------------------------------------------------------------

def range_lines(rng: dict) -> list[str]:
    """Section 6: the shadow's exact range, one row per uplink rate."""
    L = [f"6. Kernel mode: the shadow's exact range (a TCP download, iperf3 -R, {rng['seconds']} s, through "
         f"the uplink shaped with tbf both ways; after each, `nattrack diff`)",
         f"   {'uplink':>10} {'carried':>9} {'frames':>9} {'sock drops':>10} {'missed':>7} "
         f"{'flows':>5} {'differ':>6} {'blamed':>6} {'CPU':>5}  exact"]
    for s in rng["steps"]:
        rate = f"{s['mbit']:g} Mbit" if s["mbit"] else "unshaped"
        L.append(f"   {rate:>10} {s['throughput_mbps']:>6.0f} Mb {s['frames']:>9,} {s['socket_drops']:>10,} "
                 f"{s['flow_missed'] + s['shadow_missed']:>7,} {s['flows']:>5} {s['differ']:>6} "
                 f"{s['blamed_transitions']:>6} {s['router_cpu_pct']:>4.0f}%  {'yes' if s['exact'] else 'NO'}")
    L.append(f"   exact (no frame lost, diff empty) up to {rng['exact_up_to_mbit']:g} Mbit/s; missed = "
             f"packets the shadow knows it lost (TCP holes, unmatched copies); blamed = diff lines that "
             f"put a difference down to transitions (must be 0)")
    return L


def met(key: str, value) -> str:
    if value is None:
        return "n/a"
    op, target, _unit = TARGETS[key]
    return "yes" if (value >= target if op == ">=" else value <= target) else "NO"


def fmt_target(key: str) -> str:
    op, target, unit = TARGETS[key]
    return f"{op} {target:,} {unit}"


def ratio(p, k) -> str:
    if p is None or k is None or not k:
        return "n/a"
    return f"{p / k:.2f}x"


def build_report(args, header: dict, modes: dict) -> tuple[list[str], dict]:
    P, K = modes.get("python", {}), modes.get("kernel", {})
    L: list[str] = []
    summary = []

    def side(label, p, k, fmt, key=None, r=True, target_mode="python"):
        ps = fmt(p) if p is not None else "n/a"
        ks = fmt(k) if k is not None else "n/a"
        tgt = f"{fmt_target(key)} ({target_mode})" if key else ""
        L.append(f"  {label:<40} {ps:>16} {ks:>16} {ratio(p, k) if r else '':>9}   {tgt}".rstrip())

    def row(fig, key, label, value, shown, mode="python"):
        summary.append({"figure": fig, "metric": label, "mode": mode, "measured": value, "shown": shown,
                        "target": fmt_target(key), "met": met(key, value)})

    head = f"  {'':<40} {'python mode':>16} {'kernel mode':>16} {'py/kern':>9}"
    L.append(f"nattrack live lab benchmark: topology {TOPO} (h1 10.0.0.10 -- r -- srv {SRV_IP})"
             + (" (--quick)" if args.quick else ""))
    for k in ("cpu", "python", "platform", "nattrack", "data path", "tools", "date"):
        L.append(f"  {k + ':':<10} {header[k]}")
    L.append("  Both modes ran on this machine in this run, one after the other; the sender (h1), the"
             " router and")
    L.append("  the receiver (srv) share its CPUs, so a busy receiver or sender shows in the figures.")
    for name, M in (("python", P), ("kernel", K)):
        if M.get("other_labs"):
            L.append(f"  WARNING: other nattrack labs ran during the {name}-mode measurements (pids "
                     f"{', '.join(x.split()[0] for x in M['other_labs'][:6])}): they took CPU, the figures are low")
    L.append("")

    # 1 ---------------------------------------------------------------------------------------
    PU, KU = P.get("udp", {}), K.get("udp", {})
    L.append(f"1. Small-packet UDP h1 -> srv: iperf3 -u -l {UDP_PAYLOAD} (64-byte frames), "
             f"{PU.get('seconds', KU.get('seconds', '?'))} s per rate")
    L.append("   loss = sent by h1's UDP layer but never reached srv's (kernel counters in both nodes);")
    L.append("   rcvbuf = reached srv but dropped at the full iperf3 socket (the receiver, not the router);")
    L.append("   sockdrops = frames the router process's packet socket dropped (python mode: the datagram is")
    L.append("   lost; kernel mode: the shadow did not see that copy, two copies per datagram); shadow saw =")
    L.append("   share of the carried datagrams the shadow counted forwarded; shadow_missed = its own counter")
    for name, U in (("python", PU), ("kernel", KU)):
        if not U:
            continue
        L.append(f"   {name} mode")
        extra = (f"{'shadow saw':>10} {'shadow_missed':>13}" if name == "kernel" else f"{'':>10} {'':>13}")
        L.append(f"   {'offered/s':>9} {'sent/s':>9} {'carried/s':>9} {'loss':>9} {'iperf3 loss':>11} "
                 f"{'rcvbuf':>7} {'sockdrops':>9} {extra} {'router CPU':>10}")
        for s in U["steps"]:
            if name == "kernel":
                saw = f"{100 * s['shadow_seen']:.1f} %" if s.get("shadow_seen") is not None else "n/a"
                ex = f"{saw:>10} {s['router'].get('shadow_missed', 0):>13,}"
            else:
                ex = f"{'':>10} {'':>13}"
            il = f"{100 * s['iperf3_loss']:.2f} %" if s["iperf3_loss"] is not None else "n/a"
            L.append(f"   {s['offered_pps']:>9,} {s['sent_pps']:>9,.0f} {s['carried_pps']:>9,.0f} "
                     f"{100 * (s['loss'] or 0):>7.3f} % {il:>11} {s['receiver_rcvbuf_drops']:>7,} "
                     f"{s['router'].get('socket_drops', 0):>9,} {ex} "
                     f"{s['router_cpu_pct']:>8.0f} %")
    L.append(head)
    side("highest rate with < 0.1 % loss (sent/s)", PU.get("best_pps"), KU.get("best_pps"),
         lambda v: f"{v:,.0f} pkt/s", "udp_pps")
    side("most carried at any rate", PU.get("max_carried_pps"), KU.get("max_carried_pps"),
         lambda v: f"{v:,.0f} pkt/s")
    pa, ka = PU.get("ping_after"), KU.get("ping_after")
    side("ping h1 -> srv right after (replies)", pa and pa["received"], ka and ka["received"],
         lambda v: f"{v}/10", r=False)
    if PU:
        row(1, "udp_pps", "UDP 64 B carried, < 0.1 % loss", PU["best_pps"], f"{PU['best_pps']:,.0f} pkt/s")
    L.append("")

    # 2 ---------------------------------------------------------------------------------------
    PT, KT = P.get("tcp", {}), K.get("tcp", {})
    L.append(f"2. One TCP stream h1 -> srv: iperf3 -t {PT.get('seconds', KT.get('seconds', '?'))}")
    L.append(head)
    side("throughput", PT.get("mbps"), KT.get("mbps"), lambda v: f"{v:,.0f} Mbit/s", "tcp_mbps")
    side("  retransmitted segments", PT.get("retransmits"), KT.get("retransmits"), lambda v: f"{v:,}", r=False)
    side("  router process CPU", PT.get("router_cpu_pct"), KT.get("router_cpu_pct"), lambda v: f"{v:.0f} %")
    side("  frames its packet socket(s) dropped", PT.get("router", {}).get("socket_drops"),
         KT.get("router", {}).get("socket_drops"), lambda v: f"{v:,}", r=False)
    if PT:
        row(2, "tcp_mbps", "one TCP stream", PT["mbps"], f"{PT['mbps']:,.0f} Mbit/s")
    L.append("")

    # 3 ---------------------------------------------------------------------------------------
    PR, KR = P.get("rtt", {}), K.get("rtt", {})
    direct = None
    for R in (KR, PR):              # the direct path r -> srv answers in kernel mode only
        dd = R.get("direct") or {}
        if dd.get("received"):
            direct = dd
            break
    L.append(f"3. Round-trip time added by the router: median of ping -c {PING_COUNT} -i 0.01 h1 -> srv minus")
    L.append("   the median of the direct path r -> srv (measured in kernel mode: in python mode r's own")
    L.append("   kernel receives nothing)")
    L.append(head)
    pt, kt = PR.get("through", {}), KR.get("through", {})
    side("ping h1 -> srv, median", pt.get("median_us"), kt.get("median_us"), lambda v: f"{v:,.0f} us")
    side("  min / p90", pt.get("median_us") and (pt["min_us"], pt["p90_us"]),
         kt.get("median_us") and (kt["min_us"], kt["p90_us"]), lambda v: f"{v[0]:.0f} / {v[1]:.0f} us", r=False)
    side("  replies", pt.get("received"), kt.get("received"), lambda v: f"{v}/{PING_COUNT}", r=False)
    pd, kd = (PR.get("direct") or {}), (KR.get("direct") or {})
    side("direct r -> srv, median", pd.get("median_us"), kd.get("median_us"), lambda v: f"{v:,.0f} us", r=False)
    p_add = pt["median_us"] - direct["median_us"] if direct and pt.get("median_us") else None
    k_add = kt["median_us"] - direct["median_us"] if direct and kt.get("median_us") else None
    side("added by the router (median - direct)", p_add, k_add, lambda v: f"{v:,.0f} us", "rtt_added_us")
    if PR:
        row(3, "rtt_added_us", "RTT added by the router", p_add, f"{p_add:,.0f} us" if p_add is not None else "n/a")
    L.append("")

    # 4 ---------------------------------------------------------------------------------------
    L.append("4. CPU of the router process (/proc/PID/stat utime+stime) during the UDP test")
    L.append("   python mode: the whole data path, including the kernel work of its own sends (veth to srv);")
    L.append("   kernel mode: only the shadow tracker (the kernel's forwarding runs in softirq, billed elsewhere)")
    L.append(head)
    side("at the highest no-loss rate", PU.get("best_router_cpu_pct"), KU.get("best_router_cpu_pct"),
         lambda v: f"{v:.0f} %")
    side("at the rate that carried most", PU.get("max_carried_router_cpu_pct"),
         KU.get("max_carried_router_cpu_pct"), lambda v: f"{v:.0f} %")
    side("CPU per packet it handled (median)", PU.get("cpu_us_per_pkt"), KU.get("cpu_us_per_pkt"),
         lambda v: f"{v:.1f} us")
    L.append("")

    # 5 ---------------------------------------------------------------------------------------
    KS = K.get("shadow")
    worst = None
    if KS:
        L.append(f"5. Kernel mode: datagrams the shadow tracker missed (a paced sender in h1, a counting sink in "
                 f"srv, {KS['seconds']} s per rate)")
        L.append("   missed = what the kernel forwarded (reached srv's UDP layer) - what the shadow counted "
                 "forwarded (stats verb)")
        L.append(f"   {'offered/s':>10} {'forwarded':>10} {'sink got':>9} {'shadow':>9} {'missed':>8} "
                 f"{'missed %':>9} {'shadow_missed':>13} {'sock drops':>10} {'held':>6} {'CPU':>6}")
        for s in KS["steps"]:
            ms = f"{100 * s['missed_share']:.3f}" if s["missed_share"] is not None else "n/a"
            cpu = f"{s['router_cpu_pct']:.0f} %" if s["router_cpu_pct"] is not None else "n/a"
            L.append(f"   {s['offered_pps']:>10,} {s['kernel_forwarded']:>10,} {s['sink_received']:>9,} "
                     f"{s['shadow_counted']:>9,} {s['missed']:>8,} {ms:>9} {s['shadow_missed_counter']:>13,} "
                     f"{s['socket_drops']:>10,} {s['held']:>6,} {cpu:>6}")
        shares = [s["missed_share"] for s in KS["steps"] if s["missed_share"] is not None]
        worst = 100 * max(shares) if shares else None
        L.append(f"  {'worst missed share up to 10,000 pkt/s':<40} "
                 f"{(f'{worst:.3f} %' if worst is not None else 'n/a'):>16}   "
                 f"target {fmt_target('shadow_missed_pct')} (kernel)")
        row(5, "shadow_missed_pct", "shadow missed, <= 10k pkt/s", worst,
            f"{worst:.3f} %" if worst is not None else "n/a", mode="kernel")
        L.append("")
    if K.get("shadow_range"):
        L += range_lines(K["shadow_range"]) + [""]

    # problems -----------------------------------------------------------------------------------
    L.append("Router process: what was seen")
    for name, M in (("python", P), ("kernel", K)):
        if not M:
            continue
        lg = M.get("router_log", {})
        L.append(f"  {name} mode (pid {M.get('router_pid')}; lab up {M.get('lab_up_s') or 0:.1f} s, "
                 f"down {M.get('lab_down_s') or 0:.1f} s; router log: {lg.get('lines', 0)} lines, "
                 f"{lg.get('bad_count', 0)} warnings/errors"
                 + (f", {lg['never_seen_arriving']} 'never seen arriving'" if lg.get("never_seen_arriving") else "")
                 + ")")
        for t in M.get("tables", []):
            if "error" in t:
                continue
            if name == "python":
                L.append(f"    r's kernel conntrack table {t['after']}: {t['kernel_entries']} entries (0 expected)")
            else:
                L.append(f"    lab diff (shadow vs kernel) {t['after']}: {t['flows'] - t['differ']} of {t['flows']} "
                         f"flows agree")
        for p in M.get("problems") or ["nothing wrong seen"]:
            L.append(f"    - {p}")
    L.append("")

    L.append("Summary")
    L.append(f"  {'fig':<4}{'figure':<32}{'mode':<8}{'measured':>16}   {'target':<18}{'met'}")
    for s in summary:
        L.append(f"  {s['figure']:<4}{s['metric']:<32}{s['mode']:<8}{s['shown']:>16}   {s['target']:<18}{s['met']}")
    data = {"header": header, "modes": modes, "direct_rtt": direct,
            "rtt_added_us": {"python": p_add, "kernel": k_add},
            "summary": [{k: v for k, v in s.items() if k != "shown"} for s in summary], "text": L}
    return L, data


def tool_versions() -> str:
    out = []
    for argv in (["iperf3", "--version"], ["ping", "-V"]):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out.append((r.stdout or r.stderr).splitlines()[0].strip())
        except (OSError, subprocess.SubprocessError, IndexError):
            out.append(f"{argv[0]}: n/a")
    return "; ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lab", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="each measurement briefly (under 90 s in all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--no-batch", action="store_true",
                    help="python mode's data path and kernel mode's shadow read (and send) one frame "
                         "per system call, as before the recvmmsg/sendmmsg batches (NATTRACK_NO_BATCH=1 "
                         "in the router)")
    ap.add_argument("--shadow-range", action="store_true",
                    help="only the shadow's exact range (kernel mode, section 6), about 1 minute")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.lab needs root (it brings the lab's network namespaces up and down): run "
              "`sudo .venv/bin/python -m bench.lab [--quick] [--json]` from the repository root",
              file=sys.stderr)
        return 2
    missing = [t for t in ("iperf3", "ping") if shutil.which(t) is None]
    if missing:
        print(f"bench.lab: missing {', '.join(missing)} (scripts/setup.sh installs them)", file=sys.stderr)
        return 2
    if lab_running():
        print("bench.lab: a lab is already running; it is left alone. Stop it first "
              "(`sudo .venv/bin/nattrack lab down`), then run the benchmark again", file=sys.stderr)
        return 2

    def on_term(signum, frame):                    # noqa: ARG001 -- finally blocks run
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if args.no_batch:
        os.environ["NATTRACK_NO_BATCH"] = "1"          # the lab service passes it to the router
    header = {"cpu": f"{cpu_model()} ({os.cpu_count()} CPUs)",
              "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
              "platform": platform.platform(), "nattrack": f"git {git_rev()}", "tools": tool_versions(),
              "data path": "python mode and the shadow: " + ("one frame per system call (--no-batch)"
                                                             if args.no_batch else "recvmmsg/sendmmsg batches"),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    t0 = time.monotonic()
    modes: dict = {}
    try:
        if args.shadow_range:
            res = run_mode("kernel", args.quick, only_range=True)
            if args.json:
                print(json.dumps({"header": header, "kernel": res}, indent=1, default=str))
            else:
                print("\n".join(range_lines(res["shadow_range"]) +
                                [f"   PROBLEM: {p}" for p in res["problems"]]))
            return 0
        for mode in ("python", "kernel"):
            modes[mode] = run_mode(mode, args.quick)
    except LabBusy as exc:
        print(f"bench.lab: another lab started meanwhile ({exc}); it is left alone", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench.lab: interrupted; the lab was brought down", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench.lab: {exc} (the lab was brought down)", file=sys.stderr)
        return 1
    header["elapsed_s"] = round(time.monotonic() - t0, 1)
    lines, data = build_report(args, header, modes)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
    else:
        print("\n".join(lines))
        print(f"\n(elapsed {header['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
