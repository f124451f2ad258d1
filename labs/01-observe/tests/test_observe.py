"""Lab 01's public tests: the student's answers (answers.toml) and the tables they saw
(tables.txt), checked against their own variant: offline against the recorded traffic
replayed through the reference engine, live against the lab's tracker and kernel."""
import tempfile
import time
import tomllib
from pathlib import Path

from nattrack.conntrack.show import parse_conntrack_line
from nattrack.conntrack.sysctl import DEFAULTS
from nattrack.exercises.checks import explain
from nattrack.exercises.testing import test

H1, SRV, PUBLIC = "10.0.0.10", "203.0.113.10", "203.0.113.1"
RECORDED_PORT = 40000                # h1's UDP source port in data/observe.pcapng
UDP_TIMEOUT = "net.netfilter.nf_conntrack_udp_timeout"
IFACES = {"ntr-lan": "10.0.0.1/24", "ntr-wan": "203.0.113.1/24"}
SLACK = 6                            # seconds between an exchange and reading the table

# key: (section, name, type, what the question asks)
QUESTIONS = {
    "ping.reply_type": (int, "the ICMP type in the reply tuple of your ping's entry"),
    "udp.reply_dst": (str, "the reply tuple's destination address of your UDP entry"),
    "udp.reply_dport": (int, "the reply tuple's destination port of your UDP entry"),
    "udp.timeout_after_first_exchange": (int, "the UDP entry's remaining timeout just after "
                                              "the first question and answer"),
    "udp.timeout_after_second_exchange": (int, "... just after the second exchange, 3 s later"),
    "tcp.state_after_curl": (str, "the state of curl's entry once curl has finished"),
    "tcp.flag_after_handshake": (str, "the flag -L shows on curl's entry after the handshake"),
    "flags.no_reply_flag": (str, "the flag -L shows on an entry that has seen no reply"),
    "flags.seen_reply_status": (str, "the status bit conntrack sets when the first reply passes"),
    "compare.kernel_agrees": (str, "do nattrack diff's two tables agree? yes or no"),
}


def variant(ctx, a: dict) -> tuple[int, int]:
    """(the UDP source port, the UDP timeout) the student's lab ran with: their variant's,
    or, without a student id (``lab check``), what answers.toml says they used."""
    return (int(ctx.variant.get("udp_port", a["udp_sport"])),
            int(ctx.variant.get("udp_timeout", a["udp_timeout"])))


def answers(ctx) -> dict:
    """answers.toml as {"section.name": value}, every question answered (else AssertionError)."""
    try:
        doc = tomllib.loads(ctx.read("answers.toml"))
    except tomllib.TOMLDecodeError as exc:
        raise AssertionError(f"answers.toml is not valid TOML: {exc}") from None
    out = {"udp_sport": doc.get("udp_sport"), "udp_timeout": doc.get("udp_timeout")}
    todo = [k for k, v in out.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
    for key in QUESTIONS:
        section, name = key.split(".")
        value = (doc.get(section) or {}).get(name)
        if value == 0 and key != "ping.reply_type" or isinstance(value, str) and "TODO" in value:
            todo.append(key)
    if todo:
        raise AssertionError(f"answers.toml: still TODO: {', '.join(todo)}")
    for key, (typ, what) in QUESTIONS.items():
        section, name = key.split(".")
        value = (doc.get(section) or {}).get(name)
        if value is None:
            raise AssertionError(f"answers.toml: [{section}] {name} is missing ({what})")
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise AssertionError(f"answers.toml: [{section}] {name} = {value!r}: a number, please")
        if typ is str:
            if not isinstance(value, str):
                raise AssertionError(f"answers.toml: [{section}] {name} = {value!r}: a string")
            value = value.strip().strip("[]").upper()
        out[key] = value
    return out


def grade(cases) -> tuple[float, str]:
    """cases: (label, answer, accepted: a value or a (low, high) range).  The message names
    the wrong answers, never the right ones: finding them is the lab."""
    wrong = []
    for label, got, want in cases:
        ok = (want[0] <= got <= want[1]) if isinstance(want, tuple) else got == want
        if ok:
            continue
        if want is True:                       # a thing tables.txt should show
            wrong.append(f"not yet: {label}")
            continue
        what = QUESTIONS.get(label.split(" ")[0], (None, ""))[1]
        wrong.append(f"{label}: yours {got!r} is not right yet"
                     + (f" (look again at {what})" if what else ""))
    score, why = explain(len(cases), wrong)
    assert score > 0, why
    return score, why


# --- 1.1: the answers file ------------------------------------------------------------------

@test(points=1, number="1.1", name="answers.toml answers every question, with your UDP port",
      mode="offline")
def answers_complete(ctx):
    a = answers(ctx)
    port, timeout = variant(ctx, a)
    assert a["udp_sport"] == port, (
        f"answers.toml: udp_sport = {a['udp_sport']!r}, but your UDP source port is {port} "
        f"(`make variant ID=...` shows your variant)")
    assert a["udp_timeout"] == timeout, (
        f"answers.toml: udp_timeout = {a['udp_timeout']!r}, but your lab's UDP timeout is "
        f"{timeout} (`make variant ID=...`, then `sudo make run UDP_TIMEOUT={timeout}`)")
    assert 1024 <= port <= 65535, f"answers.toml: udp_sport = {port}: use a port above 1023"


# --- 1.2: the tables the student saw ------------------------------------------------------------

def _sections(text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            cur = "kernel" if "--kernel" in s else "tracker" if "conntrack -L" in s else None
            if cur:
                out[cur] = []
        elif cur and s and not s.startswith("conntrack v"):
            try:
                out[cur].append(parse_conntrack_line(s))
            except Exception:                  # noqa: BLE001 -- not a table line
                raise AssertionError(f"tables.txt: not a conntrack -L line: {s[:80]}") from None
    return out


def _key(e: dict) -> tuple:
    return (e["proto_name"],) + tuple(sorted((k, str(v)) for k, v in e["orig"].items()
                                             if k not in ("id",)))


@test(points=2, number="1.2", name="tables.txt shows your traffic in both tables (make tables)",
      mode="offline")
def tables_show_traffic(ctx):
    port = ctx.variant.get("udp_port")
    if port is None:                       # no student id: the port answers.toml names, if any
        try:
            port = tomllib.loads(ctx.read("answers.toml")).get("udp_sport")
        except (AssertionError, tomllib.TOMLDecodeError):
            port = None
    sec = _sections(ctx.read("tables.txt"))
    assert sec.get("tracker") or sec.get("kernel"), (
        "tables.txt has no tables: with the lab running and your traffic made, run `make tables`")
    cases = []
    for name in ("tracker", "kernel"):
        rows = sec.get(name, [])
        o = [e for e in rows if str(e["orig"].get("src")) == H1 and str(e["orig"].get("dst")) == SRV]
        cases += [
            (f"{name}: your ping's entry", any(e["proto_name"] == "icmp" for e in o), True),
            (f"{name}: your UDP entry from port {port} to srv's port 7",
             any(e["proto_name"] == "udp" and e["orig"].get("dport") == 7
                 and (not isinstance(port, int) or not port or e["orig"].get("sport") == port)
                 for e in o), True),
            (f"{name}: curl's entry (TCP to port 80) in TIME_WAIT",
             any(e["proto_name"] == "tcp" and e["orig"].get("dport") == 80
                 and e["state"] == "TIME_WAIT" for e in o), True),
        ]
    tracker = {_key(e) for e in sec.get("tracker", []) if e["proto_name"] in ("udp", "tcp")}
    kernel = {_key(e) for e in sec.get("kernel", []) if e["proto_name"] in ("udp", "tcp")}
    cases.append(("the tracker and the kernel list the same UDP and TCP connections",
                  bool(tracker) and tracker == kernel, True))
    return grade(cases)


# --- 1.3: the answers against the recorded traffic ------------------------------------------------

def _recorded_with_port(ctx, port: int, out: Path, until: float | None = None) -> Path:
    """data/observe.pcapng with h1's UDP port rewritten to the student's (checksums kept
    right), up to time ``until`` (all of it without)."""
    from nattrack.packet.ipv4 import Packet
    from nattrack.packet.pcapio import CaptureReader, PcapngWriter, ip_offset
    with PcapngWriter(str(out)) as w:
        for name in IFACES:
            w.add_interface(name)
        for frame in CaptureReader(str(ctx.lab_dir / "data" / "observe.pcapng")):
            if until is not None and frame.ts > until:
                break
            buf = bytearray(frame.data)
            off = ip_offset(frame)
            pkt = Packet.parse(buf, off) if off is not None else None
            if pkt is not None and pkt.proto == 17:
                if pkt.sport == RECORDED_PORT:
                    pkt.set_port(True, port)
                if pkt.dport == RECORDED_PORT:
                    pkt.set_port(False, port)
            w.write(frame.ts, frame.iface, buf)
    return out


def _udp_answers_ts(capture: Path) -> list[float]:
    from nattrack.packet.ipv4 import Packet
    from nattrack.packet.pcapio import CaptureReader, ip_offset
    out = []
    for frame in CaptureReader(str(capture)):
        off = ip_offset(frame)
        pkt = Packet.parse(bytearray(frame.data), off) if off is not None else None
        if pkt is not None and pkt.proto == 17 and frame.iface == "ntr-wan":
            out.append(frame.ts)
    return out


def _entry(table: list[dict], proto: str) -> dict:
    found = [e for e in table if e["proto"] == proto and e["orig"]["src"] == H1]
    assert found, f"the reference table has no {proto} entry (a broken data file?)"
    return found[0]


@test(points=3, number="1.3", name="Your answers match what conntrack does with the recorded "
      "traffic (your port, your UDP timeout)", mode="offline")
def answers_match_recording(ctx):
    a = answers(ctx)
    port, timeout = variant(ctx, a)
    with tempfile.TemporaryDirectory() as tmp:
        rules = str(ctx.manifest.rules) if getattr(ctx.manifest, "rules", None) else None

        def run(until=None):
            cap = _recorded_with_port(ctx, port, Path(tmp) / f"upto-{until}.pcapng", until)
            return ctx.reference_replay(str(cap), iface=IFACES, rules=rules,
                                        sysctl={UDP_TIMEOUT: timeout})
        full = run()
        first, second = _udp_answers_ts(ctx.lab_dir / "data" / "observe.pcapng")[:2]
        after_first = _entry(run(first)["table"], "udp")["timeout"]
        after_second = _entry(run(second)["table"], "udp")["timeout"]
    icmp, udp, tcp = (_entry(full["table"], p) for p in ("icmp", "udp", "tcp"))
    unreplied = [e for e in full["events"] if e["event"] == "NEW"]
    return grade([
        ("ping.reply_type", a["ping.reply_type"], icmp["reply"]["type"]),
        ("udp.reply_dst", a["udp.reply_dst"], udp["reply"]["dst"]),
        ("udp.reply_dport", a["udp.reply_dport"], udp["reply"]["dport"]),
        ("udp.timeout_after_first_exchange", a["udp.timeout_after_first_exchange"],
         (after_first - SLACK, after_first)),
        ("udp.timeout_after_second_exchange", a["udp.timeout_after_second_exchange"],
         (after_second - SLACK, after_second)),
        ("tcp.state_after_curl", a["tcp.state_after_curl"], tcp["state"]),
        ("tcp.flag_after_handshake", a["tcp.flag_after_handshake"],
         "ASSURED" if tcp["assured"] else "?"),
        ("flags.no_reply_flag", a["flags.no_reply_flag"],
         "UNREPLIED" if unreplied and all(e["unreplied"] for e in unreplied) else "?"),
        ("flags.seen_reply_status", a["flags.seen_reply_status"],
         "SEEN_REPLY" if "SEEN_REPLY" in udp["status"] else "?"),
    ])


# --- 1.4: the answers against the live lab ----------------------------------------------------------

def _udp_exchange(lab, port: int, word: str) -> None:
    res = lab.exec("h1", ["nc", "-u", "-w", "1", "-p", str(port), SRV, "7"], input=word + "\n",
                   timeout=10)
    assert word in res.stdout, f"h1's UDP question from port {port} got no answer: {res.stderr.strip()}"


def _live_entry(lines: list[str], proto: str, **orig) -> dict:
    for line in lines:
        e = parse_conntrack_line(line)
        if e["proto_name"] == proto and all(e["orig"].get(k) == v for k, v in orig.items()):
            return e
    # not the table itself: its values are the answers this lab asks for
    raise AssertionError(f"no {proto} entry {orig} in the grader's lab ({len(lines)} entries)")


@test(points=3, number="1.4", name="Your answers match the live lab: the tracker and the kernel, "
      "with your port and UDP timeout", mode="live", timeout=60)
def answers_match_live(ctx):
    a = answers(ctx)
    port, timeout = variant(ctx, a)
    lab = ctx.live
    lab.sysctl(UDP_TIMEOUT, timeout)
    lab.sysctl(UDP_TIMEOUT, timeout, kernel=True)
    lab.kernel_conntrack({"command": "F"})
    lab.flush()
    res = lab.exec("h1", ["ping", "-c", "1", "-n", "-W", "2", SRV], timeout=10)
    assert res.returncode == 0, "h1 cannot ping srv in the grader's lab"
    _udp_exchange(lab, port, "question-1")
    first = {"tracker": _live_entry(lab.list(), "udp", sport=port),
             "kernel": _live_entry(lab.kernel_list(), "udp", sport=port)}
    time.sleep(3)
    _udp_exchange(lab, port, "question-2")
    second = {"tracker": _live_entry(lab.list(), "udp", sport=port),
              "kernel": _live_entry(lab.kernel_list(), "udp", sport=port)}
    res = lab.exec("h1", ["curl", "-s", "-m", "5", f"http://{SRV}/"], timeout=10)
    assert res.returncode == 0, "h1 cannot fetch srv's page in the grader's lab"
    time.sleep(0.5)
    cases = []
    tables = {"tracker": lab.list(), "kernel": lab.kernel_list()}
    for name, lines in tables.items():
        icmp = _live_entry(lines, "icmp")
        udp = _live_entry(lines, "udp", sport=port)
        tcp = _live_entry(lines, "tcp", dport=80)
        t1, t2 = first[name]["timeout"], second[name]["timeout"]
        cases += [
            (f"ping.reply_type ({name})", a["ping.reply_type"], icmp["reply"]["type"]),
            (f"udp.reply_dst ({name})", a["udp.reply_dst"], str(udp["reply"]["dst"])),
            (f"udp.reply_dport ({name})", a["udp.reply_dport"], udp["reply"]["dport"]),
            (f"udp.timeout_after_first_exchange ({name})",
             a["udp.timeout_after_first_exchange"], (t1 - SLACK, t1 + 1)),
            (f"udp.timeout_after_second_exchange ({name})",
             a["udp.timeout_after_second_exchange"], (t2 - SLACK, t2 + 1)),
            (f"tcp.state_after_curl ({name})", a["tcp.state_after_curl"], tcp["state"]),
            (f"tcp.flag_after_handshake ({name})", a["tcp.flag_after_handshake"],
             "ASSURED" if "ASSURED" in tcp["flags"] else "?"),
        ]
    agree = all(row.agree for row in lab.diff())
    cases.append(("compare.kernel_agrees", a["compare.kernel_agrees"], "YES" if agree else "NO"))
    return grade(cases)
