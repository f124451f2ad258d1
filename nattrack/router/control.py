"""The router's control socket: docs/control-protocol.md.

A ThreadingUnixStreamServer in its own thread; one JSON object per line each
way.  Every verb that reads or changes the table runs under the data path's
lock (``Dataplane.lock``), so a verb and a batch of packets never interleave.

Streams never block the data path: the conntrack event listener and the trace
tap only format and ``put_nowait`` into a bounded per-client queue (full:
the item is dropped and counted), and the client's own handler thread writes.
The event listener is registered on the table only while an ``events`` client
exists, and ``receive(trace=True)`` is asked for only while a ``trace`` client
exists and the packet matches its filters.  The transport (JSON lines on a Unix socket,
one thread per client) is nattrack.lab.rpcserver's, shared with the lab service.
"""
from __future__ import annotations

import grp
import logging
import os
import queue
import time
from typing import Any, Callable

from ..conntrack import show
from ..lab.rpcserver import STREAMED, Client, Server, serve
from ..conntrack.conn import IPCT_PROTOINFO, IPS_SEEN_REPLY, STATUS_NAMES, Conn
from ..conntrack.tuple import get_tuple
from ..conntrack.expect import Expectation, format_expect, format_expect_event
from ..conntrack.proto_tcp import TCP_CONNTRACK_NAMES
from ..conntrack.sysctl import SysctlError
from ..conntrack.tuple import PORT_PROTOS, PROTO_NUMBERS, ip2int
from ..netfilter.rulesfile import parse_rules, to_iptables_restore, to_nft
from ..netfilter.xtables import RulesError
from .dataplane import Capture, Dataplane
from .quiet import SetupError

log = logging.getLogger("nattrack.router")

QUEUE_MAX = 10000
FILTER_KEYS = ("proto", "src", "dst", "sport", "dport", "state", "status")
TABLES = ("conntrack", "expect")            # conntrack -L [conntrack|expect]
_STATUS_BITS = {name: bit for bit, name in STATUS_NAMES.items()}


class ControlError(Exception):
    """A request that cannot be served; its message is the one-line ``error``."""


# --- filters ------------------------------------------------------------------------------------

class Filters:
    """conntrack-tools filter names over original-direction fields."""

    def __init__(self, filters: Any) -> None:
        if filters is None:
            filters = {}
        if not isinstance(filters, dict):
            raise ControlError("filters must be an object")
        unknown = sorted(set(filters) - set(FILTER_KEYS))
        if unknown:
            raise ControlError(f"unknown filter {unknown[0]!r}; known: {', '.join(FILTER_KEYS)}")
        self.empty = not any(v is not None for v in filters.values())
        self.proto = _proto(filters.get("proto"))
        self.src = _addr(filters.get("src"), "src")
        self.dst = _addr(filters.get("dst"), "dst")
        self.sport = _port(filters.get("sport"), "sport")
        self.dport = _port(filters.get("dport"), "dport")
        state = filters.get("state")
        if state is not None:
            state = str(state).upper()
            if state not in TCP_CONNTRACK_NAMES:
                raise ControlError(f"unknown state {state!r}; known: {', '.join(TCP_CONNTRACK_NAMES[1:])}")
        self.state = state
        status = filters.get("status")
        if status is not None:
            status = str(status).upper()
            if status != "UNREPLIED" and status not in _STATUS_BITS:
                raise ControlError(f"unknown status {status!r}; known: UNREPLIED, {', '.join(_STATUS_BITS)}")
        self.status = status
        self.needs_conn = state is not None or status is not None

    def conn(self, ct: Conn) -> bool:
        o = ct.orig
        if self.proto is not None and o.proto != self.proto:
            return False
        if self.src is not None and o.src != self.src:
            return False
        if self.dst is not None and o.dst != self.dst:
            return False
        if self.sport is not None and (o.proto not in PORT_PROTOS or o.sport != self.sport):
            return False
        if self.dport is not None and (o.proto not in PORT_PROTOS or o.dport != self.dport):
            return False
        if self.state is not None and show.state_name(ct) != self.state:
            return False
        if self.status is not None:
            if self.status == "UNREPLIED":
                return not ct.status & IPS_SEEN_REPLY
            return bool(ct.status & _STATUS_BITS[self.status])
        return True

    def packet(self, pkt, table) -> bool:
        """A packet matches when its own header does (original direction), or when the
        entry it belongs to does (so replies of a matching connection are traced too)."""
        if self.empty:
            return True
        if not self.needs_conn and self._header(pkt):
            return True
        t = get_tuple(pkt)
        ct = table.hash.get(t) if t is not None else None
        return ct is not None and self.conn(ct)

    def _header(self, pkt) -> bool:
        if self.proto is not None and pkt.proto != self.proto:
            return False
        if self.src is not None and pkt.src != self.src:
            return False
        if self.dst is not None and pkt.dst != self.dst:
            return False
        if self.sport is not None and (pkt.proto not in PORT_PROTOS or pkt.sport != self.sport):
            return False
        if self.dport is not None and (pkt.proto not in PORT_PROTOS or pkt.dport != self.dport):
            return False
        return True


def _proto(v):
    if v is None:
        return None
    if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
        return int(v)
    num = PROTO_NUMBERS.get(str(v).lower())
    if num is None:
        raise ControlError(f"unknown proto {v!r}")
    return num


def _addr(v, what: str):
    if v is None:
        return None
    try:
        return ip2int(str(v))
    except OSError:
        raise ControlError(f"{what}: {v!r} is not an IPv4 address") from None


def _port(v, what: str):
    if v is None:
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ControlError(f"{what}: {v!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise ControlError(f"{what}: {v!r} is not a port number")
    return n


# --- stream subscribers -------------------------------------------------------------------------

class Stream:
    """A bounded queue between the data path (producer) and one client's thread."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(QUEUE_MAX)
        self.dropped = 0
        self.done = False

    def put(self, item: dict) -> None:
        try:
            self.q.put_nowait(item)
        except queue.Full:
            self.dropped += 1


class EventSub(Stream):
    def __init__(self, filters: Filters, timestamp: bool, as_json: bool,
                 table: str = "conntrack") -> None:
        super().__init__()
        self.filters, self.timestamp, self.json, self.table = filters, timestamp, as_json, table


class Tracer(Stream):
    """A ``trace`` client: the data path asks ``matches`` per packet and ``push``es."""

    def __init__(self, filters: Filters, count: int | None) -> None:
        super().__init__()
        self.filters = filters
        self.left = count

    def matches(self, pkt, table) -> bool:
        return not self.done and self.filters.packet(pkt, table)

    def push(self, rec: dict) -> None:
        self.put({"ok": True, "trace": rec})
        if self.left is not None:
            self.left -= 1
            if self.left <= 0:
                self.done = True


def _group_gid() -> int | None:
    try:
        return grp.getgrnam("nattrack").gr_gid
    except KeyError:
        return None


def _table(args: dict, filters: Filters | None = None, as_json: bool = False) -> str:
    """The ``table`` argument: "conntrack" (the default) or "expect", which takes no
    filters and no JSON (conntrack -L expect refuses -p and the rest)."""
    table = args.get("table", "conntrack")
    if table not in TABLES:
        raise ControlError(f'table must be "conntrack" or "expect", not {table!r}')
    if table == "expect" and ((filters is not None and not filters.empty) or as_json):
        raise ControlError("the expect table takes no filters and no json")
    return table


class Control:
    """The verbs of docs/control-protocol.md over a Dataplane."""

    def __init__(self, dp: Dataplane, path: str) -> None:
        self.dp = dp
        self.path = path
        self.closing = False
        self.events: list[EventSub] = []
        self._listener_on = False
        self._expect_listener_on = False
        self.events_dropped = 0
        self.server = Server(path, self._serve, _group_gid(), "control", poll_interval=0.1)
        self.verbs: dict[str, Callable[[dict], Any]] = {
            "hello": self.v_hello, "list": self.v_list, "proc": self.v_proc, "stats": self.v_stats,
            "count": self.v_count, "flush": self.v_flush, "delete": self.v_delete,
            "sysctl": self.v_sysctl, "capture": self.v_capture, "rules": self.v_rules,
            "missed": self.v_missed, "ruleset": self.v_ruleset, "stop": self.v_stop,
        }

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.closing = True
        for sub in list(self.events):
            sub.done = True
        for tr in list(self.dp.tracers):
            tr.done = True
        self.server.close()

    # --- dispatch ---------------------------------------------------------------------------

    def _serve(self, client: Client) -> None:
        """One connection: its requests until it closes; events and trace take it over,
        and so does stop (answered, then the data path stops)."""
        verbs = {**self.verbs, "events": lambda args: self.stream("events", args, client),
                 "trace": lambda args: self.stream("trace", args, client),
                 "stop": lambda args: self._stop(client)}
        serve(client, verbs, (ControlError, SysctlError), stopping=lambda: self.closing,
              logger=log)

    def _stop(self, client: Client) -> object:
        client.send({"ok": True, "result": self.v_stop({})})
        self.dp.stop()
        return STREAMED

    def call(self, verb: str, args: dict) -> Any:
        fn = self.verbs.get(verb)
        if fn is None:
            raise ControlError(f"unknown verb {verb!r}; known: {', '.join([*self.verbs, 'events', 'trace'])}")
        return fn(args)

    # --- verbs -------------------------------------------------------------------------------

    def v_hello(self, args: dict) -> dict:
        return self.dp.hello()

    def _matching(self, filters: Filters) -> tuple[list[Conn], int]:
        table = self.dp.router.ct
        conns = [ct for ct in table.conns() if filters.conn(ct)]
        return conns, table.jiffies()

    def v_list(self, args: dict) -> list:
        filters = Filters(args.get("filters"))
        fmt = args.get("format", "text")
        if fmt not in ("text", "json"):
            raise ControlError(f"format must be \"text\" or \"json\", not {fmt!r}")
        table = _table(args, filters, fmt == "json")
        with self.dp.lock:
            if table == "expect":
                ct = self.dp.router.ct
                now_j = ct.jiffies()
                return [format_expect(exp, now_j, ct.hz) for exp in ct.expect]
            conns, now_j = self._matching(filters)
            ct = self.dp.router.ct
            if fmt == "json":
                return [show.conn_json(c, now_j, use=ct.use(c)) for c in conns]
            return [show.format_conn(c, now_j, extended=bool(args.get("extended")),
                                     show_id=bool(args.get("show_id")),
                                     helper=ct.helper_name(c), use=ct.use(c)) for c in conns]

    def v_proc(self, args: dict) -> list:
        with self.dp.lock:
            conns, now_j = self._matching(Filters(None))
            return [show.format_proc(ct, now_j) for ct in conns]

    def v_stats(self, args: dict) -> dict:
        with self.dp.lock:
            table = self.dp.router.ct
            router = self.dp.router_stats()
            router["events_dropped"] = self.events_dropped + sum(s.dropped for s in self.events)
            return {"stats": dict(table.stats), "count": table.count, "router": router,
                    "expect": dict(table.expect.stats)}

    def v_count(self, args: dict) -> int:
        table = _table(args)
        with self.dp.lock:
            ct = self.dp.router.ct
            return len(ct.expect) if table == "expect" else ct.count

    def v_flush(self, args: dict) -> int:
        table = _table(args)
        with self.dp.lock:
            ct = self.dp.router.ct
            return ct.expect.flush() if table == "expect" else ct.flush()

    def v_delete(self, args: dict) -> int:
        filters = Filters(args.get("filters"))
        with self.dp.lock:
            conns, _ = self._matching(filters)
            return sum(1 for ct in conns if self.dp.router.ct.kill(ct))

    def v_sysctl(self, args: dict) -> int:
        key = args.get("key")
        if not isinstance(key, str) or not key:
            raise ControlError("sysctl needs a key, e.g. net.netfilter.nf_conntrack_udp_timeout")
        with self.dp.lock:
            settings = self.dp.router.ct.sysctl
            current = settings.get_full(key)          # unknown keys -> SysctlError
            value = args.get("value")
            if value is not None:
                probe = type(settings)({})
                probe.set(key, value)                  # validate before touching the kernel
                try:
                    self.dp.set_kernel_sysctl(settings.short(key), probe.get_full(key))
                except Exception as exc:               # noqa: BLE001
                    raise ControlError(f"the kernel refused {key}={value}: {exc}") from None
                settings.set(key, value)
                current = settings.get_full(key)
            return current

    def v_capture(self, args: dict) -> Any:
        action = args.get("action")
        dp = self.dp
        if action == "start":
            path = args.get("path") or f"/tmp/nattrack-router-{os.getpid()}-{int(time.time())}.pcapng"
            with dp.lock:
                if dp.capture is not None:
                    raise ControlError(f"a capture is already running ({dp.capture.path})")
                try:
                    dp.capture = Capture(str(path), list(dp.ports))
                except OSError as exc:
                    raise ControlError(f"cannot write {path}: {exc.strerror or exc}") from None
            return str(path)
        if action == "stop":
            with dp.lock:
                cap, dp.capture = dp.capture, None
            if cap is None:
                raise ControlError("no capture is running")
            cap.close()
            return {"path": cap.path, "packets": cap.packets}
        raise ControlError('capture needs action "start" or "stop"')

    def v_rules(self, args: dict) -> dict:
        """Without ``text``: the rules in force.  With it: replace the tables it names, as
        iptables-restore does (Dataplane.replace_rules); bad text changes nothing."""
        text = args.get("text")
        if text is None:
            with self.dp.lock:
                rs = self.dp.router.ruleset
                text = "" if rs is None else to_nft(rs) if rs.syntax == "nft" else \
                    to_iptables_restore(rs)
                return {"name": rs.filename if rs else None, "text": text}
        if not isinstance(text, str) or not text.strip():
            raise ControlError("rules: text must be the rules file's content (iptables-save "
                               "or nft syntax)")
        name = str(args.get("name") or "<rules>")
        try:
            new = parse_rules(text, name)
        except RulesError as exc:
            raise ControlError(f"{exc} (the old rules stay)") from None
        if not new.tables:
            raise ControlError(f"{name}: no table in it (*nat ... COMMIT); the old rules stay")
        with self.dp.lock:
            try:
                tables = self.dp.replace_rules(new)
            except SetupError as exc:
                raise ControlError(f"the kernel refused {name} (the old rules stay): {exc}") from None
            count = self.dp.router.ct.count
        log.info("rules: %s replaced table(s) %s; %d entries kept", name, ",".join(tables), count)
        return {"name": name, "tables": tables, "entries": count}

    def v_ruleset(self, args: dict) -> dict:
        """The rules in force as `nft list ruleset` prints them, each rule's ``counter``
        with the packets and bytes the engine counted (an iptables file shown in its nft
        form, a counter on every rule, as iptables-nft shows it)."""
        from ..netfilter.nft import write_nft
        with self.dp.lock:
            rs = self.dp.router.ruleset
            return {"name": rs.filename if rs else None, "syntax": rs.syntax if rs else None,
                    "text": write_nft(rs, counters=True) if rs else ""}

    def v_missed(self, args: dict) -> dict:
        """What the shadow (kernel mode) knows it missed: see ShadowDataplane.missed()."""
        with self.dp.lock:
            return self.dp.missed()

    def v_stop(self, args: dict) -> bool:
        return True

    # --- streams -------------------------------------------------------------------------------

    def stream(self, verb: str, args: dict, client: Client) -> object:
        """``events`` or ``trace``: the client's connection carries the stream until it
        closes (or the trace's count is reached)."""
        try:
            filters = Filters(args.get("filters"))
            if verb == "events":
                as_json = bool(args.get("json"))
                sub: Stream = EventSub(filters, bool(args.get("timestamp")), as_json,
                                       _table(args, filters, as_json))
            else:
                count = args.get("count")
                if count is not None:
                    count = int(count)
                    if count <= 0:
                        raise ControlError("count must be a positive number")
                sub = Tracer(filters, count)
        except (ControlError, ValueError, TypeError) as exc:
            client.error(exc)
            return STREAMED
        with self.dp.lock:
            if isinstance(sub, EventSub):        # verb "events"
                self.events.append(sub)
                self._listen()
            else:
                self.dp.tracers = [*self.dp.tracers, sub]
        try:
            self._pump(sub, client)
        finally:
            with self.dp.lock:
                if isinstance(sub, EventSub):    # verb "events"
                    self.events.remove(sub)
                    self.events_dropped += sub.dropped
                    self._listen()
                else:
                    sub.done = True
                    self.dp.tracers = [t for t in self.dp.tracers if t is not sub]
        return STREAMED

    def _pump(self, sub: Stream, client: Client) -> None:
        last_check = time.monotonic()
        while not self.closing:
            try:
                item = sub.q.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is not None:
                if not client.send(item):
                    return
            elif sub.done:
                return                                  # a finished trace: everything sent
            now = time.monotonic()
            if item is None or now - last_check > 0.5:
                last_check = now
                if client.gone():
                    return

    def _listen(self) -> None:
        """Listen on the conntrack and the expect table while a client streams its events
        (under the lock); nothing is formatted for a table nobody watches."""
        ct = self.dp.router.ct
        want = {sub.table for sub in self.events}
        if ("conntrack" in want) != self._listener_on:
            if self._listener_on:
                ct.listeners.remove(self._on_event)
            else:
                ct.listeners.append(self._on_event)
            self._listener_on = not self._listener_on
        if ("expect" in want) != self._expect_listener_on:
            if self._expect_listener_on:
                ct.expect.listeners.remove(self._on_expect_event)
            else:
                ct.expect.listeners.append(self._on_expect_event)
            self._expect_listener_on = not self._expect_listener_on

    def _on_expect_event(self, kind: str, exp: Expectation, now_j: int) -> None:
        """The expect table's listener (data path thread, under the lock): ``conntrack -E
        expect`` lines."""
        table = self.dp.router.ct
        line = format_expect_event(kind, exp, now_j, table.hz)
        # conntrack-tools' event_exp_cb(): printf("[%-8ld.%-6ld]\t"), spaces, not zeros,
        # pad the microseconds (-E's own prefix is show.format_timestamp()).
        sec, usec = divmod(round(table.clock() * 1_000_000), 1_000_000)
        stamp = f"[{sec:<8d}.{usec:<6d}]\t"
        for sub in self.events:
            if sub.table == "expect":
                sub.put({"ok": True, "event": stamp + line if sub.timestamp else line})

    def _on_event(self, kind: str, ct: Conn, table, bits: int) -> None:
        """The table listener (data path thread, under the lock): format and enqueue."""
        now_j = table.jiffies()
        ts = table.clock()
        destroy_timeout = ct.remaining(now_j) if kind == "DESTROY" else None
        text: dict[bool, str] = {}           # the line, with and without a timestamp
        for sub in self.events:
            if sub.table != "conntrack":
                continue
            if not sub.filters.empty and not sub.filters.conn(ct):
                continue
            if sub.json:
                item = {"ok": True, "event_json": show.event_json(kind, ct, now_j, ts=ts,
                                                                  destroy_timeout=destroy_timeout)}
            else:
                line = text.get(sub.timestamp)
                if line is None:
                    line = text[sub.timestamp] = show.format_event(
                        kind, ct, now_j, ts=ts if sub.timestamp else None,
                        destroy_timeout=destroy_timeout, protoinfo=bool(bits & IPCT_PROTOINFO),
                        helper=table.helper_name(ct))
                item = {"ok": True, "event": line}
            sub.put(item)


__all__ = ["Control", "ControlError", "Filters", "Tracer", "EventSub"]
