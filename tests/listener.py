"""A TCP listener for tests that prove something does NOT reach the network.

``with Listener() as ear:`` binds 127.0.0.1 (or ``host``/``family``) before the code under
test starts, so a connection can never come early; ``ear.port`` is its port and ``ear.got``
what each connection sent (``b""`` for one that sent nothing).  Shared by the seccomp and
hostile-submission tests.
"""
from __future__ import annotations

import socket
import threading


class Listener:
    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 family: socket.AddressFamily = socket.AF_INET) -> None:
        self.got: list[bytes] = []
        self.sock = socket.socket(family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                self.got.append(conn.recv(200))
            except OSError:
                self.got.append(b"")
            conn.close()

    def __enter__(self) -> "Listener":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
