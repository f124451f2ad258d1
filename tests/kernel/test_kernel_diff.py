"""Differential tests: the real kernel against nattrack's engine, scenario by scenario.

For every scenario of scenarios.py the kernel run (conftest ``kernel_runs``) is

1. checked against what the reference documents (``test_kernel_behaves_as_documented``:
   the scenario really exercises what it claims), and
2. replayed through ``nattrack.replay.replay_captures`` from the router's ingress
   captures; the engine's ``-E`` events, ``-L`` table, counters and egress frames are
   compared with the kernel's (``test_engine_matches_kernel``).

Comparison rules (see :func:`compare`):

* entries are keyed by protocol + original tuple (never random: it comes from the
  captured packets); where the kernel's NAT *kept* the source port / ICMP id the engine
  must keep it too; where the kernel *changed* it (random search, port range), the
  engine's value must be in the same class (1-511, 512-599, 600-1023, 1024-65535;
  ICMP ids: any) and in the same configured range, and kernel and engine values must
  correspond one to one per protocol; the kernel values are then renamed to the
  engine's before anything else is compared;
* table: same set of entries; state, flags, reply tuple, mark, helper, use equal;
  timeouts within 1 s;
* events: per connection the same sequence (kind, state, flags, reply tuple, helper,
  timeout within 1 s, or both without a timeout); timestamps are not compared;
* expectations (rules with a helper): ``conntrack -E expect`` and, at the end,
  ``conntrack -L expect``: the same lines in the same order, timeouts within 1 s;
* counters invalid, error, drop, insert_failed, early_drop equal; ``found`` too unless
  the kernel searched for a port;
* egress: per interface the same frames in order (addresses, ports/ids, TCP
  flags/seq/ack, IP id, TTL, fragment offsets, ICMP-error inner tuple), all checksums
  valid; the IP id of an ICMP error the router itself sends is not compared (the kernel
  draws it from a hash keyed per namespace, ip_select_ident()).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from .harness import IFACES, ROUTES, Recording, checksum_errors, check_expectations, summarize
from .scenarios import SCENARIOS

ROUTER_ADDRS = {a.split("/")[0] for a in IFACES.values()}
COMPARED_STATS = ("invalid", "error", "drop", "insert_failed", "early_drop")
TIMEOUT_SLACK = 1


def _ids(sc):
    return sc.name


# ----------------------------------------------------------------------------------------
# Kernel sanity: the scenario does what it says.

@pytest.mark.kernel
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids)
def test_kernel_behaves_as_documented(scenario, kernel_runs):
    rec = kernel_runs.get(scenario.name)
    problems = check_expectations(scenario.expect, rec)
    assert not problems, (f"{scenario.name}: the kernel did not do what the scenario "
                          f"expects:\n  " + "\n  ".join(problems) + "\n" + rec.describe())


# ----------------------------------------------------------------------------------------
# Engine against kernel.

def _diff_params():
    out = []
    for sc in SCENARIOS:
        marks = [pytest.mark.xfail(reason=sc.diff_xfail, strict=False)] if sc.diff_xfail else []
        out.append(pytest.param(sc, id=sc.name, marks=marks))
    return out


SEED = 20240611


def replay_recording(rec: Recording, pub_in=None, seed: int = SEED, on_packet=None):
    try:
        from nattrack.replay import parse_listen_args, replay_captures
    except ImportError as exc:
        pytest.fail(f"nattrack.replay.replay_captures is not available yet ({exc})",
                    pytrace=False)
    return replay_captures(
        sources=[("r-priv", str(rec.pcaps[("r-priv", "in")])),
                 ("r-pub", str(pub_in or rec.pcaps[("r-pub", "in")]))],
        ifaces=dict(IFACES), routes=dict(ROUTES),
        rules_text=rec.rules_text, sysctls=dict(rec.sysctls), now=rec.listed_at, seed=seed,
        listen=parse_listen_args(rec.listen), on_packet=on_packet,
        kernel="running")        # where kernels differ, the engine follows this one's profile


def run_engine(scenario, rec: Recording, tmp_path, on_packet=None):
    """Replay the kernel's ingress captures through the engine.

    When the kernel drew NAT ports/ids at random, crafted replies from pub are addressed
    to the kernel's choice, which the engine (drawing its own) would not recognise. So
    the engine runs twice with the same seed: the first run tells which value the engine
    picked for each of the kernel's, the public-side capture is rewritten accordingly
    (destination port / echo-reply id of packets to the NAT address) and the second run
    is the one compared.
    """
    res = replay_recording(rec, on_packet=on_packet)
    if not scenario.random_ports:
        return res
    first = compare(rec, res, random_ports=True)
    out = tmp_path / "r-pub-in.rewritten.pcap"
    n = rewrite_nat_replies(rec.pcaps[("r-pub", "in")], out, first.port_map,
                            IFACES["r-pub"].split("/")[0])
    return replay_recording(rec, pub_in=out, on_packet=on_packet) if n else res


class ExpectRecorder:
    """The engine's ``conntrack -E expect`` lines and its ``-L expect`` at the end of a
    replay.  Called as ``on_packet``: it hooks the router's table after its first packet
    (no expectation can come before: a helper reads established connections only)."""

    def __init__(self) -> None:
        self.table = None
        self.events: list[str] = []

    def __call__(self, pkt, verdict, router) -> None:
        if router.ct is self.table:
            return
        from nattrack.conntrack.expect import format_expect_event
        self.table, self.events = router.ct, []           # a second replay starts afresh
        hz = router.ct.hz
        router.ct.expect.listeners.append(
            lambda kind, exp, now_j: self.events.append(format_expect_event(kind, exp, now_j, hz)))

    def listing(self) -> list[str]:
        from nattrack.conntrack.expect import format_expect
        if self.table is None:
            return []
        return [format_expect(e, self.table.jiffies(), self.table.hz) for e in self.table.expect]


def rewrite_nat_replies(src, dst, port_map: dict, nat_addr: str) -> int:
    """Copy pcap ``src`` to ``dst`` renaming, in packets sent to ``nat_addr``, destination
    ports (TCP/UDP) and echo-reply ids found in ``port_map`` ((proto, old) -> new);
    checksums are recomputed. Returns how many packets were changed."""
    import struct
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader
    changed = 0
    with RawPcapReader(str(src)) as rd, open(dst, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for data, meta in rd:
            data = bytes(data)
            pkt = Ether(data)
            if IP in pkt and pkt[IP].dst == nat_addr and pkt[IP].frag == 0:
                ip, l4 = pkt[IP], pkt[IP].payload
                if isinstance(l4, (TCP, UDP)):
                    new = port_map.get((ip.proto, l4.dport))
                    if new is not None:
                        l4.dport = new
                        del l4.chksum
                elif isinstance(l4, ICMP) and l4.type in (0, 14, 16, 18):
                    new = port_map.get((1, l4.id))
                    if new is not None:
                        l4.id = new
                        del l4.chksum
                else:
                    new = None
                if new is not None:
                    data = bytes(pkt)
                    changed += 1
            out.write(struct.pack("<IIII", meta.sec, meta.usec, len(data), len(data)) + data)
    return changed


@pytest.mark.kernel
@pytest.mark.parametrize("scenario", _diff_params())
def test_engine_matches_kernel(scenario, kernel_runs, tmp_path):
    rec = kernel_runs.get(scenario.name)
    expect = ExpectRecorder() if rec.expect_events is not None else None
    res = run_engine(scenario, rec, tmp_path, on_packet=expect)
    diff = compare(rec, res, random_ports=scenario.random_ports)
    if expect is not None:
        compare_expect(diff, "-E expect", rec.expect_events, expect.events)
        compare_expect(diff, "-L expect", rec.expect_table, expect.listing())
    assert diff.ok, diff.render(scenario.name, scenario.description)
    assert engine_rule_counters(res) == rec.rule_counters, "per-rule packet/byte counters"


def engine_rule_counters(res) -> dict[tuple[str, str, int], tuple[int, int]]:
    """The engine's per-rule counters, keyed as the harness keys the kernel's."""
    rs = res.ruleset
    return {} if rs is None else {k: tuple(v) for k, v in rs.counters.items()
                                  if k[0] in ("nat", "filter", "raw")}


# ----------------------------------------------------------------------------------------
# Comparison.

def port_class(proto: int, value: int) -> str:
    if proto in (1, 58):
        return "id"
    if value < 512:
        return "1-511"
    if value < 600:
        return "512-599"
    if value < 1024:
        return "600-1023"
    return "1024-65535"


def nat_ranges(rules_text: str) -> list[tuple[int, int]]:
    """Port ranges given to SNAT/DNAT/MASQUERADE/REDIRECT in an iptables-restore text."""
    out = []
    for m in re.finditer(r"--to-(?:source|destination|ports)\s+(\S+)", rules_text):
        spec = m.group(1)
        pm = re.search(r"(?:^|:)(\d+)(?:-(\d+))?$", spec if "--to-ports" in m.group(0)
                       else spec.split(":", 1)[1] if ":" in spec else "")
        if pm:
            lo = int(pm.group(1))
            out.append((lo, int(pm.group(2) or lo)))
    return out


def _parse(line: str) -> dict[str, Any]:
    from nattrack.conntrack.show import parse_conntrack_line
    return parse_conntrack_line(line)


def _proto(p: dict) -> int:
    return int(p["proto"])


def _tkey(t: dict) -> tuple:
    return tuple(sorted((k, t[k]) for k in t))


def conn_key(p: dict) -> tuple:
    return (_proto(p), _tkey(p["orig"]))


def _nat_field(p: dict) -> str:
    """The reply-tuple field SNAT/MASQUERADE chooses: dport for ports, id for ICMP."""
    return "id" if "id" in p["reply"] else "dport"


def _orig_field(p: dict) -> str:
    return "id" if "id" in p["orig"] else "sport"


def _snat_translated(p: dict) -> bool:
    """The reply tuple's destination key differs from the original source key."""
    r, o = p["reply"], p["orig"]
    f, g = _nat_field(p), _orig_field(p)
    return f in r and g in o and r[f] != o[g]


@dataclasses.dataclass
class Diff:
    problems: list[str] = dataclasses.field(default_factory=list)
    table_rows: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    event_rows: list[tuple[str, str, str, bool]] = dataclasses.field(default_factory=list)
    egress_rows: list[tuple[str, str, str, bool]] = dataclasses.field(default_factory=list)
    port_map: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        return self.problems[0] if self.problems else "no difference"

    def render(self, name: str = "", description: str = "") -> str:
        out = [f"{name}: engine differs from kernel: {self.headline()}"]
        if description:
            out.append(f"  scenario: {description}")
        out.append(f"  {len(self.problems)} problem(s):")
        out += [f"   - {p}" for p in self.problems]
        if self.port_map:
            out.append("  random NAT choices (proto, kernel) -> engine: " +
                       ", ".join(f"{k}->{v}" for k, v in sorted(self.port_map.items())))
        if self.table_rows:
            out.append("  table (kernel | engine):")
            for k, e in self.table_rows:
                out.append(f"    K {k}")
                out.append(f"    E {e}")
        if self.event_rows:
            out.append("  events by connection (kernel | engine):")
            for conn, k, e, same in self.event_rows:
                mark = " " if same else "!"
                out.append(f"   {mark}K {k}")
                out.append(f"   {mark}E {e}")
        if self.egress_rows:
            out.append("  egress frames (kernel | engine):")
            for iface, k, e, same in self.egress_rows:
                mark = " " if same else "!"
                out.append(f"   {mark}{iface} K {k}")
                out.append(f"   {mark}{iface} E {e}")
        return "\n".join(out)


def _build_port_map(diff: Diff, kernel: list[dict], engine: list[dict],
                    ranges: list[tuple[int, int]]) -> None:
    """Pair kernel and engine records by connection and learn the random NAT choices."""
    first_engine: dict[tuple, dict] = {}
    for p in engine:
        first_engine.setdefault(conn_key(p), p)
    inverse: dict[tuple[int, int], int] = {}
    seen: set[tuple] = set()
    for kp in kernel:
        key = conn_key(kp)
        if key in seen or key not in first_engine:
            continue
        seen.add(key)
        ep = first_engine[key]
        proto = _proto(kp)
        f = _nat_field(kp)
        kval, eval_ = kp["reply"].get(f), ep["reply"].get(f)
        if kval is None or eval_ is None:
            continue
        if not _snat_translated(kp):
            if _snat_translated(ep):
                diff.problems.append(
                    f"{_conn_name(kp)}: kernel kept {f}={kval}, engine changed it to {eval_}")
            continue
        if not _snat_translated(ep):
            diff.problems.append(f"{_conn_name(kp)}: kernel changed the source "
                                 f"{'id' if f == 'id' else 'port'} to {kval}, engine kept {eval_}")
        if port_class(proto, kval) != port_class(proto, eval_):
            diff.problems.append(f"{_conn_name(kp)}: kernel chose {kval} "
                                 f"({port_class(proto, kval)}), engine {eval_} "
                                 f"({port_class(proto, eval_)})")
        for lo, hi in ranges:
            if lo <= kval <= hi and not lo <= eval_ <= hi:
                diff.problems.append(f"{_conn_name(kp)}: kernel chose {kval} in the range "
                                     f"{lo}-{hi}, engine {eval_} outside it")
        prev = diff.port_map.get((proto, kval))
        if prev is not None and prev != eval_:
            diff.problems.append(f"{_conn_name(kp)}: kernel reused {kval} (as for another "
                                 f"connection), engine used {eval_} here and {prev} there")
        prev_k = inverse.get((proto, eval_))
        if prev_k is not None and prev_k != kval:
            diff.problems.append(f"{_conn_name(kp)}: engine gave {eval_} to two connections "
                                 f"the kernel kept apart ({prev_k} and {kval})")
        diff.port_map[(proto, kval)] = eval_
        inverse[(proto, eval_)] = kval


def _conn_name(p: dict) -> str:
    o = p["orig"]
    name = {1: "icmp", 6: "tcp", 17: "udp"}.get(_proto(p), str(_proto(p)))
    if "sport" in o:
        return f"{name} {o['src']}:{o['sport']} > {o['dst']}:{o['dport']}"
    return f"{name} {o['src']} > {o['dst']} id={o.get('id')} type={o.get('type')}"


def _mapped(p: dict, port_map: dict) -> dict:
    """A copy of parsed kernel record ``p`` with random NAT choices renamed."""
    q = dict(p)
    q["reply"] = dict(p["reply"])
    f = _nat_field(p)
    if _snat_translated(p) and (_proto(p), p["reply"][f]) in port_map:
        q["reply"][f] = port_map[(_proto(p), p["reply"][f])]
    return q


def _timeouts_match(k: int | None, e: int | None) -> bool:
    if k is None or e is None:
        return k is None and e is None
    return abs(k - e) <= TIMEOUT_SLACK


def _same_record(k: dict, e: dict, with_use: bool) -> list[str]:
    why = []
    if k["kind"] != e["kind"]:
        why.append(f"kind {k['kind']} vs {e['kind']}")
    if k["state"] != e["state"]:
        why.append(f"state {k['state']} vs {e['state']}")
    if set(k["flags"]) != set(e["flags"]):
        why.append(f"flags {sorted(k['flags'])} vs {sorted(e['flags'])}")
    if k["reply"] != e["reply"]:
        why.append(f"reply tuple {k['reply']} vs {e['reply']}")
    if not _timeouts_match(k["timeout"], e["timeout"]):
        why.append(f"timeout {k['timeout']} vs {e['timeout']}")
    if k.get("mark") != e.get("mark"):
        why.append(f"mark {k.get('mark')} vs {e.get('mark')}")
    if with_use and k.get("use") != e.get("use"):
        why.append(f"use {k.get('use')} vs {e.get('use')}")
    if k["extras"].get("helper") != e["extras"].get("helper"):
        why.append(f"helper {k['extras'].get('helper')} vs {e['extras'].get('helper')}")
    return why


def _strip_summary(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.strip() and "have been shown" not in ln]


def compare_tables(diff: Diff, ktable: list[str], etable: list[str]) -> None:
    kp = {conn_key(p): (line, _mapped(p, diff.port_map)) for line, p in
          ((line, _parse(line)) for line in ktable)}
    ep = {conn_key(p): (line, p) for line, p in ((line, _parse(line)) for line in etable)}
    for key in sorted(set(kp) | set(ep), key=repr):
        if key not in ep:
            diff.problems.append(f"table: engine lacks {kp[key][0]}")
            diff.table_rows.append((kp[key][0], "(missing)"))
        elif key not in kp:
            diff.problems.append(f"table: engine has an extra entry {ep[key][0]}")
            diff.table_rows.append(("(missing)", ep[key][0]))
        else:
            why = _same_record(kp[key][1], ep[key][1], with_use=True)
            if why:
                diff.problems.append(f"table {_conn_name(ep[key][1])}: {'; '.join(why)}")
                diff.table_rows.append((kp[key][0], ep[key][0]))


def compare_events(diff: Diff, kevents: list[str], eevents: list[str]) -> None:
    def group(lines, mapped):
        out: dict[tuple, list[tuple[str, dict]]] = {}
        for line in lines:
            p = _parse(line)
            out.setdefault(conn_key(p), []).append(
                (line, _mapped(p, diff.port_map) if mapped else p))
        return out
    kg, eg = group(kevents, True), group(eevents, False)
    for key in sorted(set(kg) | set(eg), key=repr):
        ks, es = kg.get(key, []), eg.get(key, [])
        name = _conn_name((ks or es)[0][1])
        bad = len(ks) != len(es)
        for i in range(max(len(ks), len(es))):
            kline = _short(ks[i][0]) if i < len(ks) else "(none)"
            eline = _short(es[i][0]) if i < len(es) else "(none)"
            same = False
            if i < len(ks) and i < len(es):
                why = _same_record(ks[i][1], es[i][1], with_use=False)
                same = not why
                if why:
                    bad = True
                    diff.problems.append(f"event {i + 1} of {name}: {'; '.join(why)}")
            diff.event_rows.append((name, kline, eline, same))
        if len(ks) != len(es):
            diff.problems.append(f"events of {name}: kernel {len(ks)}, engine {len(es)} "
                                 f"({', '.join(p['kind'] for _, p in ks)} vs "
                                 f"{', '.join(p['kind'] for _, p in es)})")
        if not bad:        # keep the listing short: only connections that differ
            del diff.event_rows[-max(len(ks), len(es)):]


def _short(line: str) -> str:
    """The line without its ``-o timestamp`` prefix (``-E expect`` pads it with spaces)."""
    return re.sub(r"^\[\d+ *\.\d+ *\]\t", "", line)


_EXPECT_LINE = re.compile(r"^\s*(?:\[(\w+)\] )?(\d+) (proto=.*)$")


def compare_expect(diff: Diff, what: str, klines: list[str], elines: list[str]) -> None:
    """``conntrack -E expect`` / ``-L expect`` lines, in order: the same kind and text,
    the remaining time within TIMEOUT_SLACK (the tools print it first)."""
    ks, es = [_short(x) for x in klines], list(elines)
    bad = len(ks) != len(es)
    rows = []
    for i in range(max(len(ks), len(es))):
        k, e = (ks[i] if i < len(ks) else None), (es[i] if i < len(es) else None)
        km, em = (k and _EXPECT_LINE.match(k)), (e and _EXPECT_LINE.match(e))
        same = bool(km and em and km.group(1) == em.group(1) and km.group(3) == em.group(3)
                    and abs(int(km.group(2)) - int(em.group(2))) <= TIMEOUT_SLACK)
        bad = bad or not same
        rows.append((what, k or "(none)", e or "(none)", same))
    if bad:
        diff.problems.append(f"{what}: kernel {len(ks)} line(s), engine {len(es)}, "
                             f"first difference at line "
                             f"{next(i for i, r in enumerate(rows) if not r[3]) + 1}")
        diff.event_rows += rows


def compare_stats(diff: Diff, kstats: dict, estats: dict, with_found: bool) -> None:
    keys = COMPARED_STATS + (("found",) if with_found else ())
    for k in keys:
        if kstats.get(k, 0) != estats.get(k, 0):
            diff.problems.append(f"counter {k}: kernel {kstats.get(k, 0)}, engine {estats.get(k, 0)}")


def frame_fields(frame: bytes, port_map: dict | None = None, nat_addr: str | None = None,
                 listening: frozenset = frozenset()) -> tuple:
    """The header fields compared for an egress frame (random NAT choices renamed; the
    sequence number of a SYN-ACK from a router port in ``listening`` is left out)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.l2 import Ether
    pkt = Ether(frame)
    if IP not in pkt:
        return ("non-ip", bytes(frame).hex())
    ip = pkt[IP]
    fields: list[Any] = [ip.src, ip.dst, ip.proto, ip.id, ip.ttl, int(ip.flags), ip.frag]
    l4 = ip.payload if ip.frag == 0 else None

    def m(proto, value, addr):
        if port_map and addr == nat_addr and (proto, value) in port_map:
            return port_map[(proto, value)]
        return value
    if isinstance(l4, TCP):
        seq = l4.seq
        if ip.src in ROUTER_ADDRS and l4.sport in listening and l4.flags.S and l4.flags.A:
            seq = "secure_tcp_seq"               # a listener's ISN: a keyed hash in the kernel
        fields += [m(6, l4.sport, ip.src), l4.dport, str(l4.flags), seq, l4.ack,
                   len(bytes(l4.payload))]
    elif isinstance(l4, UDP):
        fields += [m(17, l4.sport, ip.src), l4.dport, len(bytes(l4.payload))]
    elif isinstance(l4, ICMP):
        fields += [l4.type, l4.code]
        if l4.type in (0, 8, 13, 14, 15, 16, 17, 18):
            fields += [m(1, l4.id, ip.src), l4.seq]
        else:
            fields.append(bytes(l4)[4:8].hex())            # unused / MTU field
            if ip.src in ROUTER_ADDRS:                      # the router's own (icmp_send()):
                fields[3] = "ip_select_ident"               # its IP id is a keyed hash
            inner = l4.payload
            if isinstance(inner, IPerror):
                fields += ["inner", inner.src, inner.dst, inner.proto]
                if isinstance(inner.payload, (TCPerror, UDPerror)):
                    fields += [inner.payload.sport, inner.payload.dport]
    elif l4 is not None:
        fields.append(bytes(l4).hex())
    fields.append(tuple(checksum_errors(bytes(ip))))
    return tuple(fields)


def compare_egress(diff: Diff, rec: Recording, egress: list) -> None:
    nat_addr = IFACES["r-pub"].split("/")[0]
    listening = frozenset(int(s.split(":")[1]) for s in rec.listen if s.startswith("tcp:"))
    for iface in ("r-priv", "r-pub"):
        kframes = [f for _, f in rec.frames(iface, "out")]
        eframes = [bytes(f) for _, i, f in egress if i == iface]
        kf = [frame_fields(f, diff.port_map, nat_addr, listening) for f in kframes]
        ef = [frame_fields(f, listening=listening) for f in eframes]
        for f, fr in zip(ef, eframes):
            if f[-1]:
                diff.problems.append(f"egress {iface}: engine frame with bad checksum "
                                     f"{','.join(f[-1])}: {summarize(fr)}")
        if kf == ef:
            continue
        first = next((i for i, (a, b) in enumerate(zip(kf, ef)) if a != b), min(len(kf), len(ef)))
        diff.problems.append(f"egress {iface}: {len(kframes)} kernel vs {len(eframes)} engine "
                             f"frames, first difference at frame {first + 1}")
        for i in range(max(len(kframes), len(eframes))):
            k = summarize(kframes[i]) if i < len(kframes) else "(none)"
            e = summarize(eframes[i]) if i < len(eframes) else "(none)"
            same = i < len(kf) and i < len(ef) and kf[i] == ef[i]
            if i < len(kf) and i < len(ef) and not same and k == e:
                k += f"  {kf[i]}"
                e += f"  {ef[i]}"
            diff.egress_rows.append((iface, k, e, same))


def compare(rec: Recording, res, random_ports: bool = False) -> Diff:
    diff = Diff()
    kevents, eevents = _strip_summary(rec.events), _strip_summary(list(res.events))
    ktable, etable = _strip_summary(rec.table), _strip_summary(list(res.table))
    kparsed = [_parse(x) for x in kevents + ktable]
    eparsed = [_parse(x) for x in eevents + etable]
    _build_port_map(diff, kparsed, eparsed, nat_ranges(rec.rules_text))
    searched = random_ports or any(_snat_translated(p) for p in kparsed)
    compare_tables(diff, ktable, etable)
    compare_events(diff, kevents, eevents)
    compare_stats(diff, rec.stats, dict(res.stats), with_found=not searched)
    compare_egress(diff, rec, list(res.egress))
    return diff


# ----------------------------------------------------------------------------------------
# The comparison itself (no kernel needed).

def _fake_recording(tmp_path, events, table, stats=None, rules="") -> Recording:
    from pathlib import Path
    return Recording(name="fake", pcaps={(i, d): Path(tmp_path) / f"{i}-{d}.pcap"
                                         for i in IFACES for d in ("in", "out")},
                     events=events, table=table, listed_at=0.0, stats=stats or {},
                     stats_total={}, rules_text=rules, sysctls={}, started_at=0.0,
                     workdir=Path(tmp_path))


def _fake_result(events, table, stats=None, egress=()):
    from types import SimpleNamespace
    return SimpleNamespace(events=events, table=table, stats=stats or {}, egress=list(egress))


_K_TABLE = [
    "udp      17 29 src=10.0.0.2 dst=203.0.113.2 sport=45000 dport=5353 [UNREPLIED] "
    "src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=45000 mark=0 use=1",
    "udp      17 26 src=10.0.0.3 dst=203.0.113.2 sport=45000 dport=5353 [UNREPLIED] "
    "src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=12244 mark=0 use=1",
    "icmp     1 29 src=10.0.0.3 dst=203.0.113.2 type=8 code=0 id=4242 [UNREPLIED] "
    "src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=25430 mark=0 use=1",
]
_K_EVENTS = [
    "[1795317416.045571]\t    [NEW] udp      17 30 src=10.0.0.3 dst=203.0.113.2 sport=45000 "
    "dport=5353 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=5353 dport=12244",
]


def _swap(lines, old, new):
    return [ln.replace(old, new) for ln in lines]


def test_compare_accepts_renamed_random_choices(tmp_path):
    pytest.importorskip("nattrack.conntrack.show")
    rec = _fake_recording(tmp_path, _K_EVENTS, _K_TABLE, {"invalid": 0, "found": 2})
    same = compare(rec, _fake_result(_K_EVENTS, _K_TABLE, {"invalid": 0, "found": 2}))
    assert same.ok, same.render()
    ev = _swap(_K_EVENTS, "dport=12244", "dport=30001")
    tb = _swap(_swap(_swap(_K_TABLE, "dport=12244", "dport=30001"), "id=25430 mark", "id=7 mark"),
               " 26 ", " 27 ")
    renamed = compare(rec, _fake_result(ev, tb, {"invalid": 0, "found": 9}), random_ports=True)
    assert renamed.ok, renamed.render()
    assert renamed.port_map == {(17, 12244): 30001, (1, 25430): 7}


def test_compare_reports_wrong_class_kept_port_and_timeouts(tmp_path):
    pytest.importorskip("nattrack.conntrack.show")
    rec = _fake_recording(tmp_path, _K_EVENTS, _K_TABLE, {"invalid": 1})
    tb = _swap(_K_TABLE, "dport=12244", "dport=800")                 # class 600-1023
    tb = _swap(tb, "sport=5353 dport=45000", "sport=5353 dport=45001")  # did not keep
    tb = _swap(tb, "icmp     1 29", "icmp     1 25")                   # timeout off by 4
    ev = _swap(_K_EVENTS, "dport=12244", "dport=800")
    d = compare(rec, _fake_result(ev, tb, {"invalid": 0}))
    text = d.render("fake")
    assert not d.ok
    assert "1024-65535" in text and "engine changed it to 45001" in text
    assert "timeout 29 vs 25" in text and "counter invalid: kernel 1, engine 0" in text
    d2 = compare(rec, _fake_result([], _K_TABLE[:2], {"invalid": 1}))
    assert "engine lacks icmp" in d2.render() and "events of udp 10.0.0.3:45000" in d2.render()


def test_nat_ranges_and_classes():
    from .scenarios import DNAT_FORWARD, MASQ, SNAT_RANGE
    assert nat_ranges(SNAT_RANGE) == [(1024, 1030), (1024, 1030)]
    assert nat_ranges(DNAT_FORWARD) == [(80, 80)]
    assert nat_ranges(MASQ) == []
    assert [port_class(17, p) for p in (1, 511, 512, 600, 1023, 1024, 65535)] == [
        "1-511", "1-511", "512-599", "600-1023", "600-1023", "1024-65535", "1024-65535"]


def test_compare_expect_allows_a_second_and_nothing_else():
    line = ("300 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport=50002 "
            "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
            "master-src=10.0.0.2 master-dst=203.0.113.2 sport=40000 dport=21 class=0 helper=ftp")
    kernel = [f"[1796577053.78357 ]\t    [NEW] {line}", f"[1796577054.1]\t[DESTROY] {line}"]
    engine = [f"    [NEW] {line.replace('300 ', '299 ', 1)}", f"[DESTROY] {line}"]
    diff = Diff()
    compare_expect(diff, "-E expect", kernel, engine)
    assert diff.ok, diff.problems
    for wrong in ([engine[0]], [engine[0], engine[1].replace("dport=50002", "dport=50003")],
                  [f"    [NEW] {line.replace('300 ', '298 ', 1)}", engine[1]],
                  [engine[1], engine[0]]):
        diff = Diff()
        compare_expect(diff, "-E expect", kernel, wrong)
        assert not diff.ok and "-E expect" in diff.render("x"), wrong
