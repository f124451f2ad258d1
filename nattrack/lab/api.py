"""One Python API over a lab's trackers, whoever talks to them.

:class:`ConntrackAPI` is what notebooks, the CLI and the grader call
(``lab.list()``, ``lab.events()``, ``lab.trace()``, ``lab.kernel_list()``...).  Two
classes provide its four primitives: :class:`~nattrack.lab.client.LabClient`
(through the lab service's socket, unprivileged) and :class:`LocalLab` (in the
process that owns the Mininet net: the service itself and the Mininet CLI).

Filters are conntrack-tools' names as keyword arguments: ``proto``, ``src``,
``dst`` (original direction), ``sport``, ``dport``, ``state``, ``status``.
"""
from __future__ import annotations

import builtins            # builtins.list in annotations: ConntrackAPI.list is a method
import subprocess
from typing import Any, Iterator

from . import LabError, rpc
from .ctargs import CtRequest, kernel_argv, validate

ROUTER_VERBS = ("hello", "list", "proc", "stats", "count", "flush", "delete", "sysctl", "missed",
                "ruleset")
ROUTER_STREAMS = ("events", "trace")


def _filters(filters: dict | None, kw: dict) -> dict:
    out = dict(filters or {})
    out.update({k: v for k, v in kw.items() if v is not None})
    return out


class ConntrackAPI:
    """The conntrack verbs, on the Python tracker (default) or the router's kernel."""

    # -- primitives (subclasses) -------------------------------------------------------
    def router_call(self, verb: str, args: dict | None = None, router: str | None = None) -> Any:
        raise NotImplementedError

    def router_stream(self, verb: str, args: dict | None = None,
                      router: str | None = None) -> Iterator[dict]:
        raise NotImplementedError

    def kernel_conntrack(self, req: CtRequest | dict, router: str | None = None) -> dict:
        """The real ``conntrack`` in the router node: {"rc", "stdout", "stderr"}."""
        raise NotImplementedError

    def kernel_events(self, req: CtRequest | dict, router: str | None = None) -> Iterator[str]:
        raise NotImplementedError

    def sysctl(self, key: str, value: int | str | None = None, kernel: bool = False,
               router: str | None = None) -> int | str:
        raise NotImplementedError

    # -- the Python tracker -------------------------------------------------------------
    def list(self, filters: dict | None = None, router: str | None = None,
             extended: bool = False, show_id: bool = False, **kw) -> list[str]:
        """``conntrack -L`` lines."""
        return self.router_call("list", {"filters": _filters(filters, kw), "format": "text",
                                         "extended": extended, "show_id": show_id}, router)

    def list_json(self, filters: dict | None = None, router: str | None = None, **kw) -> builtins.list[dict]:
        return self.router_call("list", {"filters": _filters(filters, kw), "format": "json"},
                                router)

    def proc(self, router: str | None = None) -> builtins.list[str]:
        """``/proc/net/nf_conntrack`` lines."""
        return self.router_call("proc", {}, router)

    def stats(self, router: str | None = None) -> dict:
        return self.router_call("stats", {}, router)

    def count(self, router: str | None = None) -> int:
        return self.router_call("count", {}, router)

    def flush(self, router: str | None = None) -> int:
        return self.router_call("flush", {}, router)

    def delete(self, filters: dict | None = None, router: str | None = None, **kw) -> int:
        return self.router_call("delete", {"filters": _filters(filters, kw)}, router)

    def router_hello(self, router: str | None = None) -> dict:
        return self.router_call("hello", {}, router)

    def events(self, filters: dict | None = None, router: str | None = None,
               timestamp: bool = False, json: bool = False, **kw) -> Iterator:
        """``conntrack -E`` lines (or dicts with ``json=True``) as they happen; close the
        generator (or break out of the loop) to stop."""
        key = "event_json" if json else "event"
        for msg in self.router_stream("events", {"filters": _filters(filters, kw),
                                                 "timestamp": timestamp, "json": json}, router):
            if key in msg:
                yield msg[key]

    def trace(self, filters: dict | None = None, count: int | None = None,
              router: str | None = None, **kw) -> Iterator[dict]:
        """Each matching packet's path through the hooks: {"ts", "steps", "before",
        "after", "dropped"}."""
        args: dict[str, object] = {"filters": _filters(filters, kw)}
        if count is not None:
            args["count"] = count
        for msg in self.router_stream("trace", args, router):
            if "trace" in msg:
                yield msg["trace"]

    # -- the Python tracker's expectations (conntrack ... expect) ------------------------
    def expect_list(self, router: str | None = None) -> builtins.list[str]:
        """``conntrack -L expect`` lines."""
        return self.router_call("list", {"table": "expect"}, router)

    def expect_events(self, router: str | None = None, timestamp: bool = False) -> Iterator[str]:
        """``conntrack -E expect`` lines as they happen; close the generator to stop."""
        for msg in self.router_stream("events", {"table": "expect", "timestamp": timestamp},
                                      router):
            if "event" in msg:
                yield msg["event"]

    # -- the kernel ----------------------------------------------------------------------
    def kernel_list(self, filters: dict | None = None, router: str | None = None,
                    **kw) -> builtins.list[str]:
        """The router kernel's ``conntrack -L`` lines."""
        req = CtRequest(command="L", filters=_filters(filters, kw))
        res = self.kernel_conntrack(req, router)
        if res["rc"] != 0:
            raise LabError(f"conntrack -L failed in the router: {res['stderr'].strip()}")
        return [l for l in res["stdout"].splitlines() if l.strip()]

    def diff(self, router: str | None = None, tolerance: int = 2):
        """The Python tracker's table next to the kernel's (see nattrack.lab.diff)."""
        from .diff import diff_tables
        python, kernel = self.list(router=router), self.kernel_list(router=router)
        return diff_tables(python, kernel, tolerance=tolerance, missed=self.missed(router))

    def diff_expect(self, router: str | None = None, tolerance: int = 2):
        """The two expect tables, paired by tuple (see nattrack.lab.diff.diff_expect)."""
        from .diff import diff_expect
        res = self.kernel_conntrack(CtRequest(command="L", table="expect"), router)
        if res["rc"] != 0:
            raise LabError(f"conntrack -L expect failed in the router: {res['stderr'].strip()}")
        return diff_expect(self.expect_list(router), res["stdout"].splitlines(), tolerance)

    def missed(self, router: str | None = None) -> dict | None:
        """What the kernel-mode shadow knows it missed (per flow, socket drops); None in
        python mode, where the tracker is the data path."""
        res = self.router_call("missed", {}, router)
        return res if res.get("mode") == "kernel" else None


class LocalLab(ConntrackAPI):
    """The API in the process that owns the net (root): talks to routers and nodes directly."""

    def __init__(self, labnet) -> None:
        self.labnet = labnet

    def _router(self, router: str | None):
        r = self.labnet.router(router)
        if r.kernel_fallback:
            raise LabError(f"router {r.node.name} runs without the router process (interim "
                           f"kernel mode): only --kernel views exist")
        if not r.alive():
            raise LabError(f"the router process in {r.node.name} is not running (see {r.log})")
        return r

    def router_call(self, verb, args=None, router=None):
        if verb not in ROUTER_VERBS:
            raise LabError(f"unknown router verb {verb!r}")
        return rpc.request(self._router(router).control, verb, args or {}, timeout=20,
                           what="router control socket")

    def router_stream(self, verb, args=None, router=None):
        if verb not in ROUTER_STREAMS:
            raise LabError(f"unknown router stream {verb!r}")
        return rpc.stream(self._router(router).control, verb, args or {},
                          what="router control socket")

    def _node(self, router):
        return self.labnet.router(router).node

    def kernel_conntrack(self, req, router=None):
        req = validate(req.to_dict() if isinstance(req, CtRequest) else req)
        if req.command == "E":
            raise LabError("use kernel_events() for -E")
        p = self._node(router).popen(kernel_argv(req), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        return {"rc": p.returncode, "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace")}

    def kernel_events(self, req, router=None):
        req = validate(req.to_dict() if isinstance(req, CtRequest) else req)
        req.command = "E"
        p = self._node(router).popen(kernel_argv(req), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return _lines_until_closed(p)

    def load_rules(self, name, router=None, text: str | None = None) -> dict:
        """Load ``examples/rules/NAME`` into a running router as iptables-restore does
        (an nft file: as ``nft -f`` does, the whole rule set replaced) (the router's
        ``rules`` verb; kernel mode: the kernel's tables too).  Nothing
        restarts: the connection tables, their NAT bindings, event streams and captures
        go on; established flows keep their NAT.  Only shipped files, by name; or, with
        ``text`` (the service lets only root send it), that text, NAME only naming it."""
        r = self.labnet.router(router)
        path = None
        if text is None:
            path = shipped_rules(name)
            if r.kernel_fallback:
                from .topo import kernel_load_command
                out = r.node.cmd(kernel_load_command(str(path)) + " && echo __rules_ok__")
                if "__rules_ok__" not in out:
                    raise LabError(f"the kernel refused {path.name}: "
                                   f"{' '.join(out.split())[:200]}")
                r.spec.rules = str(path)
                return {"router": r.node.name, "rules": path.name, "pid": None}
            text, name = path.read_text(encoding="utf-8"), path.name
        res = rpc.request(self._router(router).control, "rules",
                          {"text": text, "name": str(name or "<rules>")},
                          timeout=30, what="router control socket")
        if path is not None:
            r.spec.rules = str(path)               # status shows it; a restart keeps it
        return {"router": r.node.name, "rules": name, "pid": r.pid,
                "tables": res["tables"], "entries": res["entries"]}

    def sysctl(self, key, value=None, kernel=False, router=None):
        if not kernel:
            args = {"key": key}
            if value is not None:
                args["value"] = value
            return self.router_call("sysctl", args, router)
        key, value = check_sysctl(key, value)
        argv = ["sysctl", "-n", key] if value is None else ["sysctl", "-w", f"{key}={value}"]
        p = self._node(router).popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=10)
        if p.returncode != 0:
            raise LabError(f"sysctl {key}: {err.decode(errors='replace').strip()}")
        text = out.decode().strip()
        if value is not None:
            text = text.rpartition("=")[2].strip()
        return int(text) if text.lstrip("-").isdigit() else text


def _lines_until_closed(p: subprocess.Popen) -> Iterator[str]:
    try:
        assert p.stdout is not None
        for raw in p.stdout:
            yield raw.decode(errors="replace").rstrip("\n")
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def shipped_rules(name):
    """``examples/rules/NAME[.rules]`` or ``NAME.nft``: a file shipped with the kit, named
    without a path."""
    import re
    from . import RULES_DIR
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise LabError(f"rules {name!r}: give the name of a file in examples/rules/, "
                       f"e.g. classroom-snat-range")
    if not name.endswith((".rules", ".nft")):
        name += ".rules"
    path = RULES_DIR / name
    if not path.is_file():
        known = ", ".join(sorted(p.name if p.suffix == ".nft" else p.stem
                                 for p in RULES_DIR.glob("*") if p.suffix in (".rules", ".nft")))
        raise LabError(f"rules {name!r}: no such file in examples/rules/ (known: {known})")
    return path


def check_sysctl(key: str, value) -> tuple[str, str | None]:
    """Only the namespace's conntrack settings, only whole numbers."""
    import re
    if not isinstance(key, str) or not re.fullmatch(r"(net\.netfilter\.)?nf_conntrack_[a-z0-9_]+",
                                                    key):
        raise LabError(f"sysctl {key!r}: only net.netfilter.nf_conntrack_* settings")
    if not key.startswith("net.netfilter."):
        key = "net.netfilter." + key
    if value is None:
        return key, None
    if not re.fullmatch(r"\d{1,12}", str(value)):
        raise LabError(f"sysctl {key}={value!r}: expected a whole number")
    return key, str(value)
