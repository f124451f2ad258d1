"""The Python tracker's table next to the kernel's, entry by entry.

Entries are paired by their original tuple (what both trackers saw first);
each pair is compared field by field and every disagreement gets one line that
says what differs and what usually causes it.  Expectations (``conntrack -L
expect``: what a helper such as FTP's waits for) are paired by their tuple the same
way (:func:`diff_expect`).  The two tables are read one after
the other, so remaining timeouts may differ by a second or two without meaning
anything (``tolerance``).

In kernel mode the tracker is a shadow that sniffs the kernel's packets and may lose
some when its socket overflows.  ``missed`` (the router's ``missed`` verb) says what it
knows it lost: then a disagreement is put down to that, never to the tracker's
transitions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..conntrack.show import parse_conntrack_line

FLAG_WHY = {
    "ASSURED": "it saw traffic in both directions that assures the entry; the other did not",
    "UNREPLIED": "it has seen no reply yet; the other has",
    "OFFLOAD": "the flow was offloaded",
}


@dataclass
class Row:
    key: tuple
    python: dict | None
    kernel: dict | None
    problems: list[str] = field(default_factory=list)
    missed: int = 0                      # packets of this flow the shadow knows it missed

    def either(self) -> dict:
        """The flow's entry on either side: a row exists because one side lists it."""
        side = self.python or self.kernel
        assert side is not None
        return side

    @property
    def agree(self) -> bool:
        return not self.problems


def _key(p: dict) -> tuple:
    o = p["orig"]
    return (p["proto"],) + tuple(sorted((k, str(v)) for k, v in o.items()))


def _endpoint(t: dict, side: str) -> str:
    addr = t.get(side)
    port = t.get("sport" if side == "src" else "dport")
    if port is None and "id" in t:                       # ICMP: the id stands for the port
        return f"{addr} id {t['id']}" if side == "src" else str(addr)
    return f"{addr}:{port}" if port is not None else str(addr)


def flow_text(p: dict) -> str:
    o = p["orig"]
    return f"{p['proto_name']} {_endpoint(o, 'src')} > {_endpoint(o, 'dst')}"


def nat_text(p: dict) -> str:
    """How the reply direction shows NAT: who the reply comes from and goes to."""
    o, r = p["orig"], p["reply"]
    parts = []
    if r.get("dst") != o.get("src") or r.get("dport") != o.get("sport"):
        parts.append(f"snat {_endpoint(r, 'dst')}")
    if r.get("src") != o.get("dst") or r.get("sport") != o.get("dport"):
        parts.append(f"dnat {_endpoint(r, 'src')}")
    return " ".join(parts)


def side_text(p: dict | None) -> str:
    if p is None:
        return "-"
    bits = [x for x in (p.get("state"), None if p.get("timeout") is None else f"{p['timeout']}s")
            if x]
    bits += sorted(p["flags"])
    nat = nat_text(p)
    if nat:
        bits.append(nat)
    return " ".join(bits)


def compare(py: dict, k: dict, tolerance: int = 2, lossy: bool = False) -> list[str]:
    """One line per difference; with ``lossy`` (the shadow missed packets) no line says
    the trackers took different transitions: they did not see the same packets."""
    out = []
    if py.get("state") != k.get("state"):
        why = "" if lossy else " (the trackers took different transitions on the same packets)"
        out.append(f"TCP state differs: python {py.get('state')}, kernel {k.get('state')}{why}")
    if py["reply"] != k["reply"]:
        out.append(f"reply tuple differs: python expects the reply {_endpoint(py['reply'], 'src')}"
                   f" > {_endpoint(py['reply'], 'dst')}, kernel {_endpoint(k['reply'], 'src')} > "
                   f"{_endpoint(k['reply'], 'dst')} (NAT chose another address or port)")
    for flag in ("ASSURED", "UNREPLIED", "OFFLOAD"):
        a, b = flag in py["flags"], flag in k["flags"]
        if a != b:
            who = "python" if a else "kernel"
            out.append(f"{flag} only in {who}: {FLAG_WHY[flag]}")
    ta, tb = py.get("timeout"), k.get("timeout")
    if ta is not None and tb is not None and abs(ta - tb) > tolerance:
        why = "" if lossy else " (other timeout settings, or a packet refreshed only one of them)"
        out.append(f"timeout differs by {abs(ta - tb)} s: python {ta}, kernel {tb}{why}")
    if (py.get("mark") or 0) != (k.get("mark") or 0):
        out.append(f"mark differs: python {py.get('mark')}, kernel {k.get('mark')}")
    if py.get("counters") and k.get("counters") and py["counters"] != k["counters"]:
        out.append(f"counters differ: python {py['counters']}, kernel {k['counters']} "
                   f"[orig packets, bytes, reply packets, bytes] (one of them missed packets)")
    return out


def missed_text(n: int) -> str:
    return (f"the shadow missed {n} packet{'s' if n != 1 else ''} of this flow; "
            f"the difference may come from that")


def drops_text(drops: int) -> str:
    return (f"the shadow's socket dropped {drops} frame{'s' if drops != 1 else ''} under load "
            f"(it cannot tell whose); the difference may come from that")


def _paired(py: dict, kern: dict) -> list:
    """Every key of either side: python's in its order, then the kernel's others."""
    return list(py) + [k for k in kern if k not in py]


def diff_tables(python_lines: list[str], kernel_lines: list[str],
                tolerance: int = 2, missed: dict | None = None) -> list[Row]:
    """Pair the two tables' entries and explain each disagreement.  ``missed`` is the
    shadow's account of what it lost (the router's ``missed`` verb): a differing flow it
    lost packets of says so instead of blaming a transition; after unattributed socket
    drops every differing flow says that."""
    per_flow: dict[tuple, int] = {}
    for f in (missed or {}).get("flows") or []:
        key = _key(parse_conntrack_line(f["line"]))
        per_flow[key] = per_flow.get(key, 0) + int(f["missed"])
    drops = int((missed or {}).get("socket_drops") or 0)
    py = {}
    for line in python_lines:
        if line.strip():
            p = parse_conntrack_line(line)
            py[_key(p)] = p
    kern = {}
    for line in kernel_lines:
        if line.strip():
            p = parse_conntrack_line(line)
            kern[_key(p)] = p
    rows = []
    for key in _paired(py, kern):
        a, b = py.get(key), kern.get(key)
        row = Row(key, a, b, missed=per_flow.get(key, 0))
        lossy = bool(row.missed or drops)
        if b is None:
            row.problems.append("only in python: the kernel has no such entry (it never "
                                "tracked this flow, or its entry already ended there)")
        elif a is None:
            row.problems.append("only in the kernel: nattrack has no such entry (it never "
                                "saw this flow, or its entry already ended)")
        else:
            row.problems += compare(a, b, tolerance, lossy=lossy)
        if row.problems and row.missed:
            row.problems.append(missed_text(row.missed))
        elif row.problems and drops:
            row.problems.append(drops_text(drops))
        rows.append(row)
    return rows


def parse_expect_line(line: str) -> dict:
    """A ``conntrack -L expect`` line: its remaining time, its tuple (the text up to
    ``mask-src=``) and everything after (mask, master, class, helper, flags)."""
    timeout, _, rest = line.strip().partition(" ")
    tuple_text, sep, tail = rest.partition(" mask-src=")
    if not timeout.isdigit() or not sep:
        raise ValueError(f"not a conntrack -L expect line: {line.strip()!r}")
    return {"timeout": int(timeout), "tuple": tuple_text, "rest": "mask-src=" + tail}


def diff_expect(python_lines: list[str], kernel_lines: list[str],
                tolerance: int = 2) -> list[Row]:
    """Pair the two expect tables by tuple; one line per disagreement."""
    py = {e["tuple"]: e for e in map(parse_expect_line, filter(str.strip, python_lines))}
    kern = {e["tuple"]: e for e in map(parse_expect_line, filter(str.strip, kernel_lines))}
    rows = []
    for key in _paired(py, kern):
        a, b = py.get(key), kern.get(key)
        row = Row((key,), a, b)
        if b is None:
            row.problems.append("only in python: the kernel expects no such connection (its "
                                "helper did not read the announcement, or the data "
                                "connection already came)")
        elif a is None:
            row.problems.append("only in the kernel: nattrack expects no such connection")
        else:
            if a["rest"] != b["rest"]:
                row.problems.append(f"mask, master or helper differ: python {a['rest']}, "
                                    f"kernel {b['rest']}")
            if abs(a["timeout"] - b["timeout"]) > tolerance:
                row.problems.append(f"timeout differs by {abs(a['timeout'] - b['timeout'])} "
                                    f"s: python {a['timeout']}, kernel {b['timeout']}")
        rows.append(row)
    return rows


def format_expect_rows(rows: list[Row]) -> list[str]:
    """The expectations side by side (remaining time on each side), as format_rows()."""
    if not rows:
        return []
    cells = [(r.key[0], "-" if r.python is None else f"{r.python['timeout']}s",
              "-" if r.kernel is None else f"{r.kernel['timeout']}s") for r in rows]
    out = _side_by_side(("EXPECTATION (tuple)", "PYTHON", "KERNEL"), cells, rows)
    same = sum(1 for r in rows if r.agree)
    out.append(f"{len(rows)} expectation(s): {same} agree, {len(rows) - same} differ")
    return out


def _side_by_side(heads: tuple[str, str, str], cells: list[tuple[str, str, str]],
                  rows: list[Row]) -> list[str]:
    """The header and one line per row, in columns, each row's problems under it."""
    w0 = max([len(heads[0])] + [len(c[0]) for c in cells])
    w1 = max([len(heads[1])] + [len(c[1]) for c in cells])
    out = [f"{heads[0]:<{w0}}  {heads[1]:<{w1}}  {heads[2]}".rstrip()]
    for r, c in zip(rows, cells):
        out.append(f"{c[0]:<{w0}}  {c[1]:<{w1}}  {c[2]}".rstrip())
        out += [f"  ! {prob}" for prob in r.problems]
    return out


def format_rows(rows: list[Row]) -> list[str]:
    """Side by side: the flow, what python has, what the kernel has; then one line per
    disagreement; then a summary line."""
    cells = [(flow_text(r.either()), side_text(r.python), side_text(r.kernel))
             for r in rows]
    out = _side_by_side(("FLOW (original direction)", "PYTHON", "KERNEL"), cells, rows)
    same = sum(1 for r in rows if r.agree)
    lost = sum(1 for r in rows if not r.agree and r.missed)
    tail = f" ({lost} where the shadow missed packets)" if lost else ""
    out.append(f"{len(rows)} flow(s): {same} agree, {len(rows) - same} differ{tail}")
    return out
