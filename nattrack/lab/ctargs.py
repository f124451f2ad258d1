"""``conntrack`` command lines: parsed like conntrack-tools parses them, rebuilt safely.

:func:`parse` reads the options a course uses into a :class:`CtRequest`
(structured, JSON-able: what clients send the lab service); :func:`kernel_argv`
turns a request back into a fixed ``conntrack`` argv for the real tool, after
validating every value (the service runs it as root: nothing a client sends is
ever passed through unchecked).

Like conntrack-tools 1.4.7, ``--sport``/``--dport`` exist only after ``-p`` names
a protocol with ports and ``--state`` only after ``-p tcp`` (before that they are
"unknown option"s).
"""
from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

from ..conntrack.tuple import PORT_PROTOS as PORT_NUMBERS, PROTO_NUMBERS

COMMANDS = {"-L": "L", "--dump": "L", "-E": "E", "--event": "E", "-S": "S", "--stats": "S",
            "-C": "C", "--count": "C", "-F": "F", "--flush": "F", "-D": "D", "--delete": "D"}
COMMAND_NAMES = {"L": "-L", "E": "-E", "S": "-S", "C": "-C", "F": "-F", "D": "-D"}
PORT_PROTOS = tuple(name for name, num in PROTO_NUMBERS.items() if num in PORT_NUMBERS)
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "LISTEN", "SYN_SENT2")
STATUSES = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SNAT", "DNAT", "SEQ_ADJUST",
            "SNAT_DONE", "DNAT_DONE", "DYING", "FIXED_TIMEOUT", "UNREPLIED", "OFFLOAD",
            "HW_OFFLOAD")
OUTPUTS = ("extended", "timestamp", "id")
EVENTS = ("NEW", "UPDATE", "DESTROY", "ALL")

_WITH_ARG = {"-p": "proto", "--protonum": "proto", "--proto": "proto",
             "-s": "src", "--src": "src", "--orig-src": "src",
             "-d": "dst", "--dst": "dst", "--orig-dst": "dst",
             "-r": "reply_src", "--reply-src": "reply_src",
             "-q": "reply_dst", "--reply-dst": "reply_dst",
             "--sport": "sport", "--orig-port-src": "sport",
             "--dport": "dport", "--orig-port-dst": "dport",
             "--state": "state", "-u": "status", "--status": "status",
             "-o": "output", "--output": "output", "-e": "event_mask", "--event-mask": "event_mask",
             "-f": "family", "--family": "family", "--router": "router"}
_OPTIONAL_ARG = {"-n": "src_nat", "--src-nat": "src_nat", "-g": "dst_nat", "--dst-nat": "dst_nat"}
_FLAGS = {"--kernel": "kernel", "--json": "json"}
FILTER_KEYS = ("proto", "src", "dst", "sport", "dport", "state", "status")


class CtUsageError(ValueError):
    """A bad conntrack command line (one line, like the real tool's first line)."""


@dataclass
class CtRequest:
    command: str = "L"
    filters: dict = field(default_factory=dict)      # the router's filter names
    reply_src: str | None = None
    reply_dst: str | None = None
    src_nat: str | bool | None = None                # -n [IP]
    dst_nat: str | bool | None = None                # -g [IP]
    output: list = field(default_factory=list)
    event_mask: list | None = None
    kernel: bool = False
    json: bool = False
    router: str | None = None
    table: str = "conntrack"                         # or "expect": conntrack -L expect

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def client_filters(self) -> bool:
        """Filters the Python router does not know, applied to parsed lines here."""
        return any(v not in (None, False) for v in
                   (self.reply_src, self.reply_dst, self.src_nat, self.dst_nat))


def _ip(value: str, opt: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise CtUsageError(f"{opt} {value!r}: not an IPv4 address") from None


def _port(value, opt: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise CtUsageError(f"{opt} {value!r}: not a port number") from None
    if not 0 <= n <= 65535:
        raise CtUsageError(f"{opt} {value!r}: not a port number")
    return n


def _proto(value: str) -> str:
    v = str(value).lower()
    if v in PROTO_NUMBERS:
        return v
    if v.isdigit() and 0 <= int(v) <= 255:
        return v
    raise CtUsageError(f"`{value}' unsupported protocol")


def _set(req: CtRequest, key: str, value, opt: str) -> None:
    if key == "proto":
        req.filters["proto"] = _proto(value)
    elif key in ("src", "dst"):
        req.filters[key] = _ip(value, opt)
    elif key in ("sport", "dport"):
        proto = req.filters.get("proto")
        if proto not in PORT_PROTOS:
            raise CtUsageError(f"unknown option `{opt}' (conntrack takes it only after "
                               f"-p tcp or -p udp)")
        req.filters[key] = _port(value, opt)
    elif key == "state":
        if req.filters.get("proto") != "tcp":
            raise CtUsageError(f"unknown option `{opt}' (conntrack takes it only after -p tcp)")
        st = str(value).upper()
        if st not in TCP_STATES:
            raise CtUsageError(f"unknown TCP state `{value}'")
        req.filters["state"] = st
    elif key == "status":
        st = str(value).upper()
        if st not in STATUSES:
            raise CtUsageError(f"unknown status `{value}'")
        req.filters["status"] = st
    elif key in ("reply_src", "reply_dst"):
        setattr(req, key, _ip(value, opt))
    elif key == "output":
        outs = [o for o in str(value).split(",") if o]
        for o in outs:
            if o not in OUTPUTS:
                raise CtUsageError(f"-o {o!r}: nattrack knows {', '.join(OUTPUTS)}")
        req.output = sorted(set(req.output) | set(outs), key=OUTPUTS.index)
    elif key == "event_mask":
        ev = [e.upper() for e in str(value).split(",") if e]
        for e in ev:
            if e not in EVENTS:
                raise CtUsageError(f"-e {e!r}: expected NEW, UPDATE, DESTROY or ALL")
        req.event_mask = None if "ALL" in ev else ev
    elif key == "family":
        if str(value).lower() not in ("ipv4", "inet"):
            raise CtUsageError(f"-f {value}: nattrack tracks IPv4 only")
    elif key == "router":
        req.router = str(value)


def parse(argv: list[str]) -> CtRequest:
    """conntrack's command line (getopt_long-style: ``-p tcp``, ``-ptcp``, ``--proto=tcp``)."""
    req = CtRequest(command="")
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        opt, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if not eq and tok.startswith("-") and not tok.startswith("--") and len(tok) > 2 \
                and tok[:2] in _WITH_ARG:
            opt, inline, eq = tok[:2], tok[2:], "="
        if opt in COMMANDS:
            cmd = COMMANDS[opt]
            if req.command and req.command != cmd:
                raise CtUsageError(f"only one command at a time: {COMMAND_NAMES[req.command]} "
                                   f"and {opt}")
            req.command = cmd
            if i < len(argv) and argv[i] in ("conntrack", "expect"):   # -L expect: the table
                req.table = argv[i]
                i += 1
            elif i < len(argv) and argv[i] in ("dying", "unconfirmed"):
                raise CtUsageError(f"table {argv[i]!r}: nattrack shows the conntrack and the "
                                   f"expect table only")
        elif opt in _WITH_ARG:
            if eq:
                value = inline
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise CtUsageError(f"option `{opt}' requires an argument")
            _set(req, _WITH_ARG[opt], value, opt)
        elif opt in _OPTIONAL_ARG:
            key = _OPTIONAL_ARG[opt]
            if eq:
                setattr(req, key, _ip(inline, opt))
            elif i < len(argv) and not argv[i].startswith("-"):
                setattr(req, key, _ip(argv[i], opt))
                i += 1
            else:
                setattr(req, key, True)
        elif opt in _FLAGS:
            setattr(req, _FLAGS[opt], True)
        else:
            raise CtUsageError(f"unknown option `{tok}'")
    if not req.command:
        raise CtUsageError("no command given: one of -L -E -S -C -F -D")
    _check_expect(req)
    return req


def _check_expect(req: CtRequest) -> None:
    """The expect table: -L -E -C -F -S, no filters (conntrack refuses -p and the others
    there), -o timestamp with -E only."""
    if req.table != "expect":
        return
    cmd = COMMAND_NAMES[req.command]
    if req.command == "D":
        raise CtUsageError("-D expect: nattrack deletes entries of the conntrack table only")
    if req.filters or req.client_filters or req.event_mask or req.json:
        raise CtUsageError(f"{cmd} expect takes no filters, -e or --json")
    if [o for o in req.output if o != "timestamp"] or (req.output and req.command != "E"):
        raise CtUsageError(f"{cmd} expect: only -E expect takes -o, and only -o timestamp")


# --- the real tool, for the router's kernel --------------------------------------------------

def validate(req: dict) -> CtRequest:
    """A request that came over the socket, checked value by value (raises CtUsageError)."""
    if not isinstance(req, dict):
        raise CtUsageError("a conntrack request is an object")
    out = CtRequest(command=str(req.get("command") or ""))
    if out.command not in COMMAND_NAMES:
        raise CtUsageError(f"command must be one of {', '.join(COMMAND_NAMES)}")
    filters = req.get("filters") or {}
    if not isinstance(filters, dict) or set(filters) - set(FILTER_KEYS):
        raise CtUsageError(f"filters: known keys are {', '.join(FILTER_KEYS)}")
    for key in ("proto", "src", "dst", "sport", "dport", "state", "status"):
        if filters.get(key) is not None:
            _set(out, key, filters[key], f"--{key}")
    for key in ("reply_src", "reply_dst"):
        if req.get(key) is not None:
            _set(out, key, req[key], f"--{key}")
    for key in ("src_nat", "dst_nat"):
        v = req.get(key)
        if v is True:
            setattr(out, key, True)
        elif v not in (None, False):
            setattr(out, key, _ip(str(v), f"--{key}"))
    if req.get("output"):
        _set(out, "output", ",".join(map(str, req["output"])), "-o")
    if req.get("event_mask"):
        _set(out, "event_mask", ",".join(map(str, req["event_mask"])), "-e")
    table = req.get("table") or "conntrack"
    if table not in ("conntrack", "expect"):
        raise CtUsageError('table must be "conntrack" or "expect"')
    out.table = table
    _check_expect(out)
    return out


def kernel_argv(req: CtRequest) -> list[str]:
    """The fixed argv of the real ``conntrack`` for a validated request."""
    argv = ["conntrack", COMMAND_NAMES[req.command]]
    if req.table == "expect":
        argv.append("expect")
    f = req.filters
    if f.get("proto") is not None:
        argv += ["-p", str(f["proto"])]
    for key, opt in (("src", "-s"), ("dst", "-d")):
        if f.get(key) is not None:
            argv += [opt, str(f[key])]
    for key, opt in (("sport", "--sport"), ("dport", "--dport"), ("state", "--state"),
                     ("status", "-u")):
        if f.get(key) is not None:
            argv += [opt, str(f[key])]
    if req.reply_src:
        argv += ["-r", req.reply_src]
    if req.reply_dst:
        argv += ["-q", req.reply_dst]
    for key, opt in (("src_nat", "-n"), ("dst_nat", "-g")):
        v = getattr(req, key)
        if v is True:
            argv.append(opt)
        elif v:
            argv += [opt, v]
    if req.output:
        argv += ["-o", ",".join(req.output)]
    if req.event_mask and req.command == "E":
        argv += ["-e", ",".join(req.event_mask)]
    return argv


def router_filters(req: CtRequest) -> dict:
    """The filters in the router's vocabulary (docs/control-protocol.md)."""
    return {k: v for k, v in req.filters.items() if v is not None}


def line_matches(req: CtRequest, parsed: dict) -> bool:
    """The client-side filters (-r -q -n -g, and -e for events) on a parsed line."""
    o, r = parsed.get("orig") or {}, parsed.get("reply") or {}
    if req.reply_src and r.get("src") != req.reply_src:
        return False
    if req.reply_dst and r.get("dst") != req.reply_dst:
        return False
    snat = r.get("dst") != o.get("src")           # the reply goes to another address: SNAT
    dnat = r.get("src") != o.get("dst")           # it comes from another address: DNAT
    if req.src_nat is True and not snat:
        return False
    if isinstance(req.src_nat, str) and (not snat or r.get("dst") != req.src_nat):
        return False
    if req.dst_nat is True and not dnat:
        return False
    if isinstance(req.dst_nat, str) and (not dnat or r.get("src") != req.dst_nat):
        return False
    if req.event_mask and parsed.get("kind") and parsed["kind"] not in req.event_mask:
        return False
    return True
