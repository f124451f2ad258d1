"""The lab service's client: what notebooks, the CLI and the grader use (no root needed).

    from nattrack.lab.client import LabClient
    lab = LabClient()                      # /run/nattrack/lab.sock (NATTRACK_LAB_SOCK)
    lab.status()["nodes"]                  # nodes, interfaces, addresses
    r = lab.exec("h1", ["curl", "-s", "203.0.113.10"])
    r.returncode, r.stdout                 # like subprocess.CompletedProcess
    lab.list()                             # conntrack -L lines of the Python tracker
    lab.list(proto="tcp", dport=80)        # ... with conntrack-tools' filters
    lab.kernel_list()                      # the router kernel's own table
    for line in lab.events(): ...          # conntrack -E, live (break to stop)
    for t in lab.trace(count=5): ...       # each packet's path through the hooks
    lab.sysctl("net.netfilter.nf_conntrack_udp_timeout", 10)
    lab.capture("out.pcapng", duration=5)
    lab.diff()                             # Python tracker vs kernel, entry by entry
    lab.load_rules("classroom-snat-range") # another shipped rules file, swapped in like
                                           # iptables-restore: entries keep their NAT

The caller must be root or in the ``nattrack`` group.  Commands run by ``exec``
run as the caller (root only for root) inside the node's namespace.
"""
from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

from . import GROUP, LabError, client_socket_path, rpc
from .api import ROUTER_STREAMS, ConntrackAPI
from .ctargs import CtRequest


class NoLab(LabError):
    """No lab service answers."""


class ExecResult(subprocess.CompletedProcess):
    timed_out: bool = False


class ExecSession:
    """A command running in a node: stream its output, feed its stdin, signal it."""

    def __init__(self, conn: rpc.Conn, pid: int | None) -> None:
        self.conn, self.pid = conn, pid
        self.returncode: int | None = None
        self.timed_out = False

    def send_stdin(self, data: bytes) -> None:
        self.conn.send({"stdin": base64.b64encode(data).decode()})

    def close_stdin(self) -> None:
        self.conn.send({"stdin_eof": True})

    def signal(self, name: str = "INT") -> None:
        """INT, TERM, KILL, HUP or QUIT to the command's process group."""
        self.conn.send({"signal": name})

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        """("stdout"|"stderr", bytes) chunks until the command exits."""
        while True:
            msg = self.conn.recv()
            if msg is None:
                raise LabError("the lab service closed the connection while the command ran")
            if not msg.get("ok"):
                raise rpc.RemoteError(msg.get("error") or "exec failed")
            for name in ("stdout", "stderr"):
                if name in msg:
                    yield name, base64.b64decode(msg[name])
            if "exit" in msg:
                self.returncode = int(msg["exit"])
                self.timed_out = bool(msg.get("timed_out"))
                return

    def close(self) -> None:
        self.conn.close()


class LabClient(ConntrackAPI):
    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else client_socket_path()
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> rpc.Conn:
        try:
            return rpc.Conn(self.path, timeout, what="lab service")
        except LabError as exc:
            text = str(exc)
            if text.startswith("permission denied"):
                raise LabError(f"permission denied on {self.path}: join the {GROUP} group "
                               f"(`sudo adduser $USER {GROUP}`, then log in again) or use sudo"
                               ) from None
            raise NoLab(f"no lab is running ({text}): start one with `sudo nattrack lab up`"
                        ) from None

    def call(self, verb: str, args: dict | None = None, timeout: float | None = None) -> Any:
        with self._connect(timeout or self.timeout) as c:
            c.send({"verb": verb, "args": args or {}})
            return rpc.check(c.recv(), self.path).get("result")

    def stream(self, verb: str, args: dict | None = None) -> Iterator[dict]:
        c = self._connect(self.timeout)
        try:
            c.send({"verb": verb, "args": args or {}})
            c.settimeout(None)
            while True:
                msg = c.recv()
                if msg is None:
                    return
                yield rpc.check(msg, self.path)
        finally:
            c.close()

    # -- the lab -------------------------------------------------------------------------------

    def hello(self) -> dict:
        return self.call("hello")

    def status(self) -> dict:
        return self.call("status")

    def nodes(self) -> dict:
        return self.status()["nodes"]

    def load_rules(self, name: str, router: str | None = None, text: str | None = None) -> dict:
        """Load ``examples/rules/NAME`` into the router (kernel and tracker start over);
        with ``text`` (root only), those rules, NAME naming them."""
        args = {"name": name, "router": router}
        if text is not None:
            args["text"] = text
        return self.call("rules", args, timeout=60)

    def down(self) -> dict:
        return self.call("down")

    def exec_session(self, node: str, argv: list[str], stdin: bool = False,
                     timeout: float | None = None, cwd: str | None = None,
                     env: dict | None = None) -> ExecSession:
        if isinstance(argv, str):
            raise TypeError("argv is a list of strings (no shell strings)")
        c = self._connect(self.timeout)
        try:
            args = {"node": node, "argv": list(argv), "stdin": stdin,
                    "cwd": cwd if cwd is not None else os.getcwd(),
                    "env": env if env is not None else {k: os.environ[k] for k in
                                                        ("TERM", "LANG", "LC_ALL") if k in os.environ}}
            if timeout:
                args["timeout"] = timeout
            c.send({"verb": "exec", "args": args})
            msg = c.recv()
            if msg is None:
                raise LabError("the lab service closed the connection")
            if not msg.get("ok"):
                err = rpc.RemoteError(msg.get("error") or "exec failed")
                err.exit = msg.get("exit")
                raise err
            c.settimeout(None)
            return ExecSession(c, msg.get("started"))
        except BaseException:
            c.close()
            raise

    def exec(self, node: str, argv: list[str], input: bytes | str | None = None,
             timeout: float | None = None, text: bool = True, check: bool = False,
             on_output: Callable[[str, bytes], None] | None = None) -> ExecResult:
        """Run ``argv`` in ``node`` and wait: an :class:`ExecResult` (returncode, stdout,
        stderr; str unless ``text=False``).  ``on_output(stream, bytes)`` sees chunks live."""
        try:
            s = self.exec_session(node, argv, stdin=input is not None, timeout=timeout)
        except rpc.RemoteError as exc:
            if getattr(exc, "exit", None) == 127:
                res = ExecResult(list(argv), 127, "" if text else b"",
                                 (str(exc) + "\n") if text else (str(exc) + "\n").encode())
                if check:
                    raise subprocess.CalledProcessError(127, argv, res.stdout, res.stderr) from None
                return res
            raise
        out = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            if input is not None:
                s.send_stdin(input.encode() if isinstance(input, str) else input)
                s.close_stdin()
            for name, data in s:
                out[name] += data
                if on_output:
                    on_output(name, data)
        finally:
            s.close()
        ob, eb = bytes(out["stdout"]), bytes(out["stderr"])
        o, e = (ob.decode(errors="replace"), eb.decode(errors="replace")) if text else (ob, eb)
        assert s.returncode is not None     # the iteration above ends at the exit message
        res = ExecResult(list(argv), s.returncode, o, e)
        res.timed_out = s.timed_out
        if check and res.returncode:
            raise subprocess.CalledProcessError(res.returncode, argv, o, e)
        return res

    # -- ConntrackAPI primitives ---------------------------------------------------------------

    def router_call(self, verb, args=None, router=None):
        return self.call("conntrack", {"verb": verb, "args": args or {}, "router": router})

    def router_stream(self, verb, args=None, router=None):
        if verb not in ROUTER_STREAMS:
            raise LabError(f"unknown stream {verb!r}")
        return self.stream("conntrack", {"verb": verb, "args": args or {}, "router": router})

    def kernel_conntrack(self, req, router=None):
        req = req.to_dict() if isinstance(req, CtRequest) else dict(req)
        return self.call("kernel_conntrack", {"request": req, "router": router}, timeout=60)

    def kernel_events(self, req, router=None):
        req = req.to_dict() if isinstance(req, CtRequest) else dict(req)
        req["command"] = "E"
        for msg in self.stream("kernel_conntrack", {"request": req, "router": router}):
            if "line" in msg:
                yield msg["line"]
            elif "exit" in msg:
                if msg.get("exit"):
                    raise LabError(f"conntrack -E failed in the router: "
                                   f"{msg.get('stderr') or 'exit ' + str(msg['exit'])}")
                return

    def sysctl(self, key, value=None, kernel=False, router=None):
        args = {"key": key, "kernel": kernel, "router": router}
        if value is not None:
            args["value"] = value
        return self.call("sysctl", args)

    # -- capture -------------------------------------------------------------------------------

    def capture(self, path: str | os.PathLike, duration: float | None = None,
                router: str | None = None, started: Callable[[], None] | None = None,
                stop: Callable[[], bool] | None = None) -> dict:
        """Record the router's both sides into ``path`` (pcapng) for ``duration`` seconds,
        or until ``stop()`` returns true (polled) or KeyboardInterrupt; returns
        {"packets", "bytes"}."""
        c = self._connect(self.timeout)
        tmp = Path(str(path) + ".part")
        try:
            c.send({"verb": "capture", "args": {"router": router, "duration": duration}})
            rpc.check(c.recv(), self.path)
            if started:
                started()
            c.settimeout(0.2)
            stopping = False
            with open(tmp, "wb") as f:
                while True:
                    try:
                        msg = c.recv()
                    except rpc.Timeout:               # nothing yet
                        msg = {}
                    except KeyboardInterrupt:
                        if not stopping:
                            c.send({"stop": True})
                            stopping = True
                        continue
                    if msg is None:
                        raise LabError("the lab service closed the capture early")
                    if msg and not msg.get("ok"):
                        raise rpc.RemoteError(msg.get("error") or "capture failed")
                    if "data" in msg:
                        f.write(base64.b64decode(msg["data"]))
                    if "result" in msg:
                        os.replace(tmp, path)
                        return msg["result"]
                    if not stopping and stop is not None and stop():
                        c.send({"stop": True})
                        stopping = True
        finally:
            c.close()
            if tmp.exists():
                tmp.unlink()


def default_client() -> LabClient:
    return LabClient()


__all__ = ["LabClient", "ExecResult", "ExecSession", "NoLab", "default_client"]
