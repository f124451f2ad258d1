"""Plug a student's pieces into the engine in place of the reference, and take them out.

``install(lab, submission_dir)`` imports each module a lab's ``[[pieces]]`` name from the
submission folder and hands it to the adapter of its ``kind``; the adapter replaces one
engine name, a table or a decision function the reference calls by name (the seams in the
table below: each is exactly the piece a student writes), with the student's version or
with a thin wrapper that converts the arguments and checks the answer.  Nothing of the
engine is written again here: an engine fix is made once.  ``uninstall()`` puts every
reference object back.  The seams are plain module-level names, not hooks, so the
reference path costs a function call per decision, and an adapter that can precompute
(lab 2's transition table) does so at install time.

Anything wrong with a submission (a missing file or function, a syntax error, a
``NotImplementedError("TODO ...")``, a wrong return value, an exception while packets
flow) is a :class:`PluginError` whose message is one line naming the file and what is
missing.  Submission code runs only where this module is called: the sandboxed grading
worker, ``nattrack replay --plugin`` and the live router after it has dropped root.

Kinds (docs/labs-format.md; each lab's README documents its functions):

=================  ===========================================================================
tcp_state_table    lab 2: ``next_state()`` builds ``proto_tcp.TCP_CONNTRACKS``, ``timeout()``
                   builds ``proto_tcp.TIMEOUT_SYSCTL``
udp                lab 3: ``udp_timeout()`` is ``proto_udp.udp_timeout_choice()``: each UDP
                   packet's timeout and ASSURED
icmp               lab 3: ``reply_type()`` builds ``tuple.ICMP_INVMAP``; ``error_lookup()`` and
                   ``related_ctinfo()`` are ``proto_icmp``'s, nf_conntrack_inet_error()'s decisions
snat_port          lab 4: ``pick_port()`` is ``nat_core.nat_port_choice()``, the port choice of
                   ``get_unique_tuple()``
checksum           lab 4: ``csum_replace2()`` / ``csum_replace4()`` patch every rewritten header
gc_worker          lab 5: ``gc_verdict()`` is ``core.gc_verdict()``, ``next_run()`` ends the
                   scan's ``core.GcAverage``
early_drop         lab 5: ``early_drop()`` is ``core.early_drop_choice()``: what a full table evicts
=================  ===========================================================================
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from .. import compiled_loaded
from ..conntrack import core as ct_core, proto_icmp, proto_tcp, proto_udp
from ..conntrack import tuple as ct_tuple
from ..conntrack.conn import HZ, IP_CT_RELATED, IP_CT_RELATED_REPLY, IPS_ASSURED, IPS_SEEN_REPLY
from ..conntrack.sysctl import DEFAULTS, Sysctl
from ..conntrack.tuple import (IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PROTO_NAMES, PROTO_NUMBERS,
                               Tuple, int2ip, ip2int)
from ..nat import core as nat_core
from ..packet import ipv4 as pkt_ipv4
from .manifest import PIECE_KINDS, Lab, load


class PluginError(ValueError):
    """A submission that cannot be plugged in or failed while plugged in (one line)."""


# --- what is installed, for uninstall() ---------------------------------------------------------

_patches: list[tuple[Any, str, Any, bool]] = []      # (target, name or key, old value, is_item)
_modules: list[tuple[str, Any]] = []                  # (name, what sys.modules had before)
_paths: list[str] = []
_MISSING = object()


def _set(target, name: str, value) -> None:
    _patches.append((target, name, getattr(target, name, _MISSING), False))
    setattr(target, name, value)


def _set_item(target: dict, key, value) -> None:
    _patches.append((target, key, target.get(key, _MISSING), True))
    target[key] = value


def installed() -> bool:
    return bool(_patches or _modules)


def uninstall() -> None:
    """Put every reference object back and forget the submission's modules."""
    while _patches:
        target, name, old, is_item = _patches.pop()
        if is_item:
            if old is _MISSING:
                target.pop(name, None)
            else:
                target[name] = old
        elif old is _MISSING:
            delattr(target, name)
        else:
            setattr(target, name, old)
    while _modules:
        name, old = _modules.pop()
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old
    while _paths:
        folder = _paths.pop()
        if folder in sys.path:
            sys.path.remove(folder)


# --- loading the submission --------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[Path, Path]:
    """``LAB_DIR=SUBMISSION_DIR`` (the command-line form) -> both folders."""
    lab, sep, sub = spec.partition("=")
    if not sep or not lab or not sub:
        raise PluginError(f"--plugin {spec!r}: expected LAB_DIR=SUBMISSION_DIR, "
                          f"e.g. labs/02-tcp-states=labs/02-tcp-states/solution")
    return Path(lab), Path(sub)


def label(submission_dir: Path, module: str) -> str:
    """How messages name a submission file: its folder's name and the file."""
    return f"{Path(submission_dir).name}/{module}.py"


def load_module(submission_dir: str | Path, module: str):
    """Import ``SUBMISSION_DIR/MODULE.py`` as module ``MODULE`` (siblings importable too)."""
    submission_dir = Path(submission_dir).resolve()
    where = label(submission_dir, module)
    path = submission_dir / f"{module}.py"
    if not submission_dir.is_dir():
        raise PluginError(f"{submission_dir}: no such submission folder")
    if not path.is_file():
        raise PluginError(f"{where}: the file is missing (the lab needs {module}.py in "
                          f"{submission_dir})")
    for py in sorted(submission_dir.glob("*.py")):
        check_own_code(py, label(submission_dir, py.stem))
    folder = str(submission_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)
        _paths.append(folder)
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{where} cannot be imported (not a Python source file)")
    mod = importlib.util.module_from_spec(spec)
    _modules.append((module, sys.modules.get(module)))
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as exc:
        raise PluginError(f"{where}: line {exc.lineno}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:   # noqa: BLE001 -- student code: anything may come
        raise PluginError(f"{where} does not import: {_one_line(exc)}") from None
    return mod


def check_own_code(path: Path, where: str) -> None:
    """Refuse a submission that reaches for the reference engine (the answer is in it).

    A static check, so it names the line: an import of ``nattrack`` or a string naming
    one of its modules (``importlib.import_module("nattrack...")``, ``sys.modules[...]``).
    A deterrent, not a wall: the reference is loaded in this process and obfuscated code
    can still reach it; variants and hidden tests are what make copying not pay.
    """
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError):
        return                                # exec_module reports it with the line
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value.startswith("nattrack") else []
        else:
            continue
        for name in names:
            if name == "nattrack" or name.startswith("nattrack."):
                raise PluginError(f"{where}: line {node.lineno}: uses {name!r}, the reference "
                                  "implementation; a submission must be your own code")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _NotDone:
    """Stands in for a table a TODO should have built: the engine may run everything
    else, and the first use says which TODO is missing."""

    def __init__(self, error: PluginError) -> None:
        self.error = error

    def __getitem__(self, key):
        raise self.error

    def get(self, key, default=None):
        raise self.error


def _built(build: Callable[[], Any]):
    """build() the table, or a :class:`_NotDone` if the student's function is not written yet."""
    try:
        return build()
    except _TodoError as exc:
        return _NotDone(exc)


class _TodoError(PluginError):
    """A student function raised NotImplementedError (its TODO is not done)."""


class _Student:
    """The functions of one submission module, called with one-line errors."""

    def __init__(self, mod, where: str) -> None:
        self.mod, self.where = mod, where

    def fn(self, name: str, todo: str) -> Callable:
        f = getattr(self.mod, name, None)
        if not callable(f):
            raise PluginError(f"{self.where}: no function {name}() ({todo})")
        return f

    def call(self, f: Callable, *args):
        try:
            return f(*args)
        except NotImplementedError as exc:
            raise _TodoError(f"{self.where}: {f.__name__}() is not done yet: "
                              f"{' '.join(str(exc).split()) or 'NotImplementedError'}") from None
        except RecursionError:
            raise PluginError(f"{self.where}: {f.__name__}{_args(args)} recursed too deeply") from None
        except (Exception, SystemExit) as exc:   # noqa: BLE001 -- student code
            raise PluginError(f"{self.where}: {f.__name__}{_args(args)} raised {_one_line(exc)}") from None

    def bad(self, f: Callable, args: tuple, value, want: str) -> PluginError:
        return PluginError(f"{self.where}: {f.__name__}{_args(args)} returned {value!r}; "
                           f"expected {want}")


def _args(args: tuple) -> str:
    text = ", ".join(repr(a) for a in args)
    return f"({text[:120]}{'...' if len(text) > 120 else ''})"


# --- tuples as students see them ---------------------------------------------------------------

def tuple_to_dict(t: Tuple) -> dict:
    """A conntrack tuple as plain data: addresses as dotted quads, ICMP keys by name."""
    d = {"proto": PROTO_NAMES.get(t.proto, t.proto), "src": int2ip(t.src), "dst": int2ip(t.dst)}
    if t.proto == IPPROTO_ICMP:
        d.update(type=t.dport >> 8, code=t.dport & 0xFF, id=t.sport)
    elif t.proto in ct_tuple.PORT_PROTOS:
        d.update(sport=t.sport, dport=t.dport)
    return d


def dict_to_tuple(d) -> Tuple:
    """The inverse of :func:`tuple_to_dict`; ValueError says what is wrong."""
    if not isinstance(d, dict):
        raise ValueError("a tuple dict like {'proto': 'udp', 'src': ..., 'dst': ..., 'sport': ..., 'dport': ...}")
    proto = d.get("proto")
    proto = PROTO_NUMBERS.get(proto, proto) if isinstance(proto, str) else proto
    if not isinstance(proto, int):
        raise ValueError(f"a tuple with a protocol name such as 'udp' (got proto={d.get('proto')!r})")
    try:
        src, dst = ip2int(d["src"]), ip2int(d["dst"])
        if proto == IPPROTO_ICMP:
            return Tuple(src, dst, proto, _u16(d["id"]), _u8(d["type"]) << 8 | _u8(d["code"]))
        if proto in ct_tuple.PORT_PROTOS:
            return Tuple(src, dst, proto, _u16(d["sport"]), _u16(d["dport"]))
        return Tuple(src, dst, proto, 0, 0)
    except KeyError as exc:
        raise ValueError(f"a tuple with the key {exc.args[0]!r}") from None
    except (OSError, TypeError):
        raise ValueError("a tuple whose src and dst are dotted quads like '10.0.0.10'") from None


def _u16(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF:
        raise TypeError
    return v


def _u8(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
        raise TypeError
    return v


# --- lab 2: the TCP state machine ----------------------------------------------------------------

TCP_STATES = proto_tcp.TCP_CONNTRACK_NAMES                 # NONE ... SYN_SENT2
DIRECTIONS = ("ORIGINAL", "REPLY")
TCP_FLAGS = proto_tcp.INDEX_NAMES                          # SYN, SYN-ACK, FIN, ACK, RST, NONE
_TCP_CODE = {**{n: i for i, n in enumerate(TCP_STATES)},
             "INVALID": proto_tcp.sIV, "IGNORE": proto_tcp.sIG}
TIMEOUT_NAMES = {**{s: TCP_STATES[s] for s in proto_tcp.TIMEOUT_SYSCTL if s < len(TCP_STATES)},
                 proto_tcp.TCP_CONNTRACK_RETRANS: "RETRANS", proto_tcp.TCP_CONNTRACK_UNACK: "UNACK"}


def adapt_tcp_state_table(s: _Student) -> None:
    """nf_conntrack_proto_tcp.c's tcp_conntracks[][][] and tcp_timeouts[], from two functions."""
    next_state = s.fn("next_state", "TODO 1")
    timeout = s.fn("timeout", "TODO 2")

    def table():
        out = []
        for d in DIRECTIONS:
            rows = []
            for flag in TCP_FLAGS:
                row = []
                for state in TCP_STATES:
                    args = (state, d, flag)
                    new = s.call(next_state, *args)
                    if new not in _TCP_CODE:
                        raise s.bad(next_state, args, new, "a state name, INVALID or IGNORE")
                    row.append(_TCP_CODE[new])
                rows.append(tuple(row))
            out.append(tuple(rows))
        return tuple(out)

    def sysctls():
        out = {}
        for code, name in TIMEOUT_NAMES.items():
            value = s.call(timeout, name)
            if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str)
                    or Sysctl.short(value[0]) not in DEFAULTS
                    or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 0):
                raise s.bad(timeout, (name,), value,
                            "(sysctl name, default seconds), e.g. ('nf_conntrack_tcp_timeout_close', 10)")
            out[code] = Sysctl.short(value[0])
        return out

    _set(proto_tcp, "TCP_CONNTRACKS", _built(table))
    _set(proto_tcp, "TIMEOUT_SYSCTL", _built(sysctls))


# --- lab 3: UDP, ICMP and RELATED ----------------------------------------------------------------

UDP_TIMEOUTS = ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream")


def adapt_udp(s: _Student) -> None:
    """proto_udp.udp_timeout_choice(), nf_conntrack_udp_packet()'s decision: the student's
    udp_timeout(replied, age) says which timeout, and whether the entry is ASSURED."""
    decide = s.fn("udp_timeout", "TODO 1")
    stream_delay = proto_udp.STREAM_DELAY * HZ

    def udp_timeout_choice(ct, now_j):
        # stream_ts is the first packet's time plus STREAM_DELAY: the age is counted from it
        args = (bool(ct.status & IPS_SEEN_REPLY), (now_j - (ct.proto - stream_delay)) / HZ)
        value = s.call(decide, *args)
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or Sysctl.short(str(value[0])) not in UDP_TIMEOUTS or not isinstance(value[1], bool)):
            raise s.bad(decide, args, value, "(sysctl name, assured), e.g. ('nf_conntrack_udp_timeout', False)")
        return Sysctl.short(value[0]), value[1]

    _set(proto_udp, "udp_timeout_choice", udp_timeout_choice)


def adapt_icmp(s: _Student) -> None:
    """The ICMP type map of nf_ct_invert_tuple(), and nf_conntrack_inet_error()'s two
    decisions: proto_icmp.error_lookup() and proto_icmp.related_ctinfo()."""
    reply_type = s.fn("reply_type", "TODO 2")

    def invmap():
        out = {}
        for t in range(256):
            r = s.call(reply_type, t)
            if r is None:
                continue
            if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 255:
                raise s.bad(reply_type, (t,), r, "an ICMP type 0-255 or None")
            out[t] = r
        return out
    lookup = s.fn("error_lookup", "TODO 3")
    related = s.fn("related_ctinfo", "TODO 3")
    ctinfos = {"RELATED": IP_CT_RELATED, "RELATED_REPLY": IP_CT_RELATED_REPLY}

    def error_lookup(quoted):
        args = (tuple_to_dict(quoted),)
        want = s.call(lookup, *args)
        if want is None:
            return None
        try:
            return dict_to_tuple(want)
        except ValueError as exc:
            raise s.bad(lookup, args, want, f"None or {exc}") from None

    def related_ctinfo(direction, outer_dst, entry_dst):
        args = (DIRECTIONS[direction], int2ip(outer_dst), int2ip(entry_dst))
        answer = s.call(related, *args)
        if answer is not None and answer not in ctinfos:
            raise s.bad(related, args, answer, "'RELATED', 'RELATED_REPLY' or None")
        return None if answer is None else ctinfos[answer]

    _set(ct_tuple, "ICMP_INVMAP", _built(invmap))
    _set(proto_icmp, "error_lookup", error_lookup)
    _set(proto_icmp, "related_ctinfo", related_ctinfo)


# --- lab 4: SNAT ---------------------------------------------------------------------------------

class _InUse:
    """``port in in_use``: would the reply to ``t`` with that source port clash
    (nf_nat_used_tuple(), which also counts `found` and reaps an expired entry)."""

    def __init__(self, table, t: Tuple, ct) -> None:
        self.table, self.t, self.ct = table, t, ct

    def __contains__(self, port) -> bool:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            return False
        return nat_core.nf_nat_used_tuple(self.table, self.t._replace(sport=port), self.ct)

    def __repr__(self) -> str:
        return "<ports in use>"


def _taken_quietly(table, t: Tuple, ct) -> bool:
    """tuple_taken() without counting or reaping: only to know whether the kernel would
    have drawn a random offset, so that the random sequence stays the reference's."""
    other = table.hash.get(ct_tuple.invert_tuple(t))
    return (other is not None and other is not ct and other.orig != ct.orig
            and not table.is_expired(other))


def adapt_snat_port(s: _Student) -> None:
    """nat_core.nat_port_choice(), get_unique_tuple() steps 4-5, for TCP/UDP source NAT
    without a random flag: the student's pick_port() keeps the port or searches one."""
    pick = s.fn("pick_port", "TODO 2")
    reference = nat_core.nat_port_choice

    def nat_port_choice(table, t, rng, manip, ct):
        if (manip != nat_core.NF_NAT_MANIP_SRC or t.proto not in (IPPROTO_TCP, IPPROTO_UDP)
                or rng.flags & nat_core.NF_NAT_RANGE_PROTO_RANDOM_ALL):
            return reference(table, t, rng, manip, ct)
        if rng.flags & nat_core.NF_NAT_RANGE_PROTO_SPECIFIED:
            to_ports = [rng.min_port, rng.max_port]
            stays = (rng.min_port <= t.sport <= rng.max_port
                     and (rng.min_port == rng.max_port or not _taken_quietly(table, t, ct)))
        else:
            to_ports = None
            stays = not _taken_quietly(table, t, ct)
        offset = 0 if stays else table.rng.getrandbits(16)
        args = (t.sport, to_ports, offset, _InUse(table, t, ct))
        port = s.call(pick, *args)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            raise s.bad(pick, args, port, "a port number 0-65535")
        return t._replace(sport=port)

    _set(nat_core, "nat_port_choice", nat_port_choice)


def adapt_checksum(s: _Student) -> None:
    """csum_replace2() / csum_replace4() (RFC 1624) for every header nattrack rewrites."""
    for name, todo in (("csum_replace2", "TODO 3"), ("csum_replace4", "TODO 3")):
        f = s.fn(name, todo)

        def wrapped(check, old, new, f=f):
            value = s.call(f, check, old, new)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
                raise s.bad(f, (check, old, new), value, "a 16-bit checksum 0-65535")
            return value
        _set(pkt_ipv4, name, wrapped)


# --- lab 5: timeouts, garbage collection, a full table ----------------------------------------

GC_VERDICTS = {"keep": ct_core.GC_KEEP, "reap": ct_core.GC_REAP, "evict": ct_core.GC_EVICT}


def adapt_gc_worker(s: _Student) -> None:
    """gc_worker()'s two decisions: core.gc_verdict() for each entry is the student's
    gc_verdict(left, assured, closing, near_full); core.GcAverage, the running average that
    says when the next scan starts, hands the student's next_run(lefts, elapsed) the time
    left of every entry the scan kept or evicted."""
    verdict = s.fn("gc_verdict", "TODO 1")
    next_run = s.fn("next_run", "TODO 2")

    def gc_verdict(ct, left, near_full):
        closing = (ct.orig.proto == IPPROTO_TCP and ct.proto is not None
                   and proto_tcp.tcp_can_early_drop(ct.proto))
        args = (left, bool(ct.status & IPS_ASSURED), closing, near_full)
        v = s.call(verdict, *args)
        if v not in GC_VERDICTS:
            raise s.bad(verdict, args, v, "'reap', 'evict' or 'keep'")
        return GC_VERDICTS[v]

    class StudentAverage:
        def __init__(self, hz: int) -> None:
            self.lefts: list[int] = []

        def add(self, left: int) -> None:
            self.lefts.append(left)

        def next_run(self, elapsed: int) -> int:
            delay = s.call(next_run, self.lefts, elapsed)
            if not isinstance(delay, int) or isinstance(delay, bool) or delay < 1:
                raise s.bad(next_run, (f"<{len(self.lefts)} entries>", elapsed), delay,
                            "a delay of at least 1 jiffy")
            return delay

    _set(ct_core, "gc_verdict", gc_verdict)
    _set(ct_core, "GcAverage", StudentAverage)


def adapt_early_drop(s: _Student) -> None:
    """core.early_drop_choice(): the student's early_drop(chains) walks the 8 chains and
    says what to reap and evict."""
    choose = s.fn("early_drop", "TODO 3")

    def early_drop_choice(chains, now_j):
        view = [[{"assured": bool(ct.status & IPS_ASSURED), "expired": ct.timeout - now_j <= 0}
                 for ct in chain] for chain in chains]
        args = (view,)
        actions = s.call(choose, *args)
        if not isinstance(actions, (list, tuple)):
            raise s.bad(choose, args, actions, "a list of [chain, entry, 'reap' or 'evict']")
        out = []
        for a in actions:
            try:
                c, i, what = a
                chains[c][i]
                if what not in ("reap", "evict") or isinstance(c, bool) or isinstance(i, bool):
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                raise s.bad(choose, args, a, "[chain 0-7, entry index, 'reap' or 'evict']") from None
            out.append((c, i, what == "evict"))
        return out

    _set(ct_core, "early_drop_choice", early_drop_choice)


ADAPTERS: dict[str, Callable[[_Student], None]] = {
    "tcp_state_table": adapt_tcp_state_table,
    "udp": adapt_udp,
    "icmp": adapt_icmp,
    "snat_port": adapt_snat_port,
    "checksum": adapt_checksum,
    "gc_worker": adapt_gc_worker,
    "early_drop": adapt_early_drop,
}
if ADAPTERS.keys() != set(PIECE_KINDS):
    raise ImportError("nattrack.exercises: manifest.PIECE_KINDS and plugin.ADAPTERS must name the same kinds")


# --- the entry points ----------------------------------------------------------------------------

def install(lab, submission_dir: str | Path) -> None:
    """Import the submission's modules and plug every piece of ``lab`` into the engine.

    ``lab`` is a :class:`~nattrack.exercises.manifest.Lab` or a lab folder.  On any error
    nothing stays installed and :class:`PluginError` says what is wrong.
    """
    if not isinstance(lab, Lab):
        lab = load(lab)
    if installed():
        raise PluginError("a submission is already plugged in: uninstall() it first")
    if compiled_loaded():    # compiled modules call each other directly: a patch would not run
        raise PluginError("this process runs the compiled engine, which a plugin cannot replace "
                          "pieces of: run it with NATTRACK_PURE=1 (--plugin on the command line does)")
    submission_dir = Path(submission_dir).resolve()
    try:
        for piece in lab.pieces:
            mod = sys.modules.get(piece.module) if any(n == piece.module for n, _ in _modules) else None
            if mod is None:
                mod = load_module(submission_dir, piece.module)
            ADAPTERS[piece.kind](_Student(mod, label(submission_dir, piece.module)))
    except BaseException:
        uninstall()
        raise


def install_spec(spec: str) -> None:
    """``install()`` from the command line's ``LAB_DIR=SUBMISSION_DIR``."""
    lab_dir, sub = parse_spec(spec)
    install(lab_dir, sub)


__all__ = ["PluginError", "install", "install_spec", "uninstall", "installed", "load_module",
           "parse_spec", "tuple_to_dict", "dict_to_tuple", "ADAPTERS"]
