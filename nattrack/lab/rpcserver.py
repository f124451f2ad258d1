"""The server side of :mod:`.rpc`'s protocol: JSON lines over a Unix stream socket.

The lab service (:mod:`.daemon`) and a router's control socket
(:mod:`nattrack.router.control`) both serve with it; each keeps only its table of verbs.
A request is one line ``{"verb": V, "args": {...}}``.  What the verb returns is answered
``{"ok": true, "result": X}``; one of the errors it is known to raise
``{"ok": false, "error": "one line"}``; anything else ``internal error: ...`` (and the
traceback logged), and the server goes on.  A verb that answers on the connection itself
(a stream, an exec, a capture) returns :data:`STREAMED`: it has had the connection, which
then closes.
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import socketserver
import threading
import time
from typing import Any, Callable, Mapping

from .rpc import MAX_LINE

log = logging.getLogger("nattrack.rpc")

STREAMED = object()          # a verb's return value: it answered on the connection itself
REQUEST_SHAPE = 'a request is one line {"verb": "...", "args": {...}}'


class SocketInUse(OSError):
    """Another process answers on the socket's path."""


def one_line(what: BaseException | str) -> str:
    """An error as the one line a client reads (an exception without text: its name)."""
    text = str(what) or (type(what).__name__ if isinstance(what, BaseException) else "")
    return " ".join(text.split())


class Client:
    """One connection, server side: lines in (buffered, with a timeout), JSON objects out
    (whole lines, from any thread)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.wlock = threading.Lock()

    def send(self, obj: dict) -> bool:
        """False when the client has gone."""
        return self.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def write(self, data: bytes) -> bool:
        """Whole lines already encoded (a relayed stream); False when the client has gone."""
        with self.wlock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def error(self, what: BaseException | str) -> bool:
        return self.send({"ok": False, "error": one_line(what)})

    def _read(self, timeout: float | None) -> bool:
        """Read what has come (waiting up to ``timeout``); False when nothing did."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if data:
            self.buf += data
        else:
            self.eof = True
        return True

    def recv_line(self, timeout: float | None) -> bytes | None:
        """The client's next line; None when none came within ``timeout``; b"" once it
        has closed (or sent a line longer than rpc.MAX_LINE)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                line, self.buf = self.buf, b""
                return line
            if len(self.buf) > MAX_LINE:
                self.eof, self.buf = True, b""
                return b""
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._read(left):
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def gone(self) -> bool:
        """True once the client has closed its end (without waiting).  What it sent
        meanwhile is kept for recv_line(); a stream that ignores it keeps the last MB."""
        if not self.eof and self._read(0) and len(self.buf) > MAX_LINE:
            self.buf = self.buf[-(1 << 20):]
        return self.eof


def serve(client: Client, verbs: Mapping[str, Callable[[dict], Any]],
          errors: tuple[type[BaseException], ...], *, once: bool = False,
          timeout: float | None = None, stopping: Callable[[], bool] = lambda: False,
          logger: logging.Logger = log) -> None:
    """Answer the client's requests with ``verbs`` until it closes, a verb returns
    :data:`STREAMED`, ``stopping()`` holds or (``once``) after the first request.
    ``timeout``: how long to wait for a request before closing."""
    while not stopping():
        line = client.recv_line(timeout)
        if not line:                              # timed out or closed
            return
        if line.strip() and answer(client, line, verbs, errors, logger) is STREAMED:
            return
        if once:
            return


def answer(client: Client, line: bytes, verbs: Mapping[str, Callable[[dict], Any]],
           errors: tuple[type[BaseException], ...], logger: logging.Logger = log) -> Any:
    """One request line answered; what the verb returned (None when it was refused)."""
    try:
        req = json.loads(line)
        verb, args = req["verb"], req.get("args") or {}
        if not isinstance(verb, str) or not isinstance(args, dict):
            raise ValueError(REQUEST_SHAPE)
    except (ValueError, KeyError, TypeError, AttributeError):
        client.error(REQUEST_SHAPE)
        return None
    fn = verbs.get(verb)
    if fn is None:
        client.error(f"unknown verb {verb!r}; known: {', '.join(verbs)}")
        return None
    try:
        result = fn(args)
    except errors as exc:
        client.error(exc)
        return None
    except Exception as exc:                      # noqa: BLE001 -- answer, log, go on
        logger.exception("verb %s failed", verb)
        client.error(f"internal error: {one_line(exc)}")
        return None
    if result is not STREAMED:
        client.send({"ok": True, "result": result})
    return result


class _Handler(socketserver.BaseRequestHandler):
    server: "Server"

    def handle(self) -> None:
        self.server.serve_client(Client(self.request))


class Server(socketserver.ThreadingUnixStreamServer):
    """A Unix socket at ``path`` (mode 0660, owner root, group ``gid``) whose every
    connection is a thread running ``serve_client(Client)``; :meth:`start` serves in a
    thread of its own, :meth:`close` stops and removes the socket."""

    daemon_threads = True

    def __init__(self, path: str | os.PathLike, serve_client: Callable[[Client], None],
                 gid: int | None, name: str, poll_interval: float = 0.2) -> None:
        self.path = os.fspath(path)
        claim_path(self.path)
        old = os.umask(0o177)                     # nobody else may connect before chmod
        try:
            super().__init__(self.path, _Handler)
        finally:
            os.umask(old)
        self.serve_client = serve_client
        try:
            os.chown(self.path, 0, gid if gid is not None else 0)
        except PermissionError:                   # not root: the socket stays the user's
            pass
        os.chmod(self.path, 0o660)
        self.thread = threading.Thread(target=self.serve_forever, name=name, daemon=True,
                                       kwargs={"poll_interval": poll_interval})

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def claim_path(path: str) -> None:
    """Remove a stale socket file; refuse a path another process still answers on."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(f"{path}: another process is listening on this socket")


__all__ = ["Client", "Server", "STREAMED", "SocketInUse", "answer", "claim_path", "one_line",
           "serve"]
