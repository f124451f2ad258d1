"""JSON lines over a Unix stream socket: the shape both the router's control socket
(docs/control-protocol.md) and the lab service speak.

Request ``{"verb": V, "args": {...}}``; answer ``{"ok": true, "result": X}`` or
``{"ok": false, "error": "one line"}``; a streaming verb answers with several
``{"ok": true, KEY: ...}`` lines until one side closes.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from . import LabError

MAX_LINE = 16 * 1024 * 1024


class RemoteError(LabError):
    """The other side answered ``ok: false``."""
    exit: int | None = None        # exec: the exit status it reported (127: no such command)


class Timeout(LabError):
    """Nothing arrived in time (the connection stays usable)."""


class Conn:
    """One connection: write JSON objects, read them back line by line."""

    def __init__(self, path: str | os.PathLike, timeout: float | None = 10.0,
                 what: str = "socket") -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except FileNotFoundError:
            self.sock.close()
            raise LabError(f"no {what} at {self.path}") from None
        except PermissionError:
            self.sock.close()
            raise LabError(f"permission denied on {self.path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise LabError(f"nothing answers on {self.path} (stale socket)") from None
        self.buf = b""
        self.eof = False

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """A whole line is already buffered."""
        return b"\n" in self.buf

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def recv(self) -> dict | None:
        """The next object, or None at end of stream; :class:`Timeout` when the socket's
        timeout passes first (nothing is lost: call again)."""
        while b"\n" not in self.buf:
            if self.eof:
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout(f"no answer from {self.path} (timed out)") from None
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.eof = True
                break
            self.buf += data
            if len(self.buf) > MAX_LINE:
                raise LabError(f"{self.path} sent a line longer than {MAX_LINE} bytes")
        if not self.buf.strip() and self.eof:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise LabError(f"{self.path} sent something that is not JSON: {line[:80]!r}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check(msg: dict | None, path: Path) -> dict:
    if msg is None:
        raise LabError(f"{path} closed the connection without an answer")
    if not msg.get("ok"):
        raise RemoteError(str(msg.get("error") or "failed (no reason given)"))
    return msg


def request(path: str | os.PathLike, verb: str, args: dict | None = None,
            timeout: float | None = 10.0, what: str = "socket") -> Any:
    """One request, one answer: the ``result``."""
    with Conn(path, timeout, what) as c:
        c.send({"verb": verb, "args": args or {}})
        return check(c.recv(), c.path).get("result")


def stream(path: str | os.PathLike, verb: str, args: dict | None = None,
           timeout: float | None = None, what: str = "socket") -> Iterator[dict]:
    """A streaming verb: yields each answer object until the other side closes.
    Closing the generator closes the connection (which ends the stream there)."""
    c = Conn(path, timeout, what)
    try:
        c.send({"verb": verb, "args": args or {}})
        while True:
            msg = c.recv()
            if msg is None:
                return
            yield check(msg, c.path)
    finally:
        c.close()
