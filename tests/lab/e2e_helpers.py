"""Helpers for tests/lab/test_e2e_matrix.py: each topology's scene, the tiny server and
client programs run inside the nodes, and the checks on what the routers' tables hold.

Nothing here edits the product: the lab is driven only through the CLI (``lab up``,
``lab down``, ``diff``) and :class:`nattrack.lab.client.LabClient`.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

PYTHON = sys.executable          # the same filesystem inside every node: runs there too

# --- the programs run in the nodes ------------------------------------------------------------

# The far host's tiny server (started with LabClient.exec_session in the server node):
#   UDP 5000  echo, prefixed with the peer it saw ("IP:PORT data")
#   TCP 5001  one line in, "IP:PORT line" out, then waits for the client's FIN: the client
#             closes first
#   TCP 5002  one line in, "IP:PORT line" out, then closes at once: the server closes first
#   TCP 8000  a one-page HTTP/1.0 server ("... you came from IP:PORT"), for topologies whose
#             far host has no http service (portforward's ext)
# Every port prints "ready" once bound.
UDP_PORT, TCP_CLIENT_CLOSES, TCP_SERVER_CLOSES, HTTP_PORT = 5000, 5001, 5002, 8000

SERVER_PY = f"UDP, TCC, TSC, HTTP = {UDP_PORT}, {TCP_CLIENT_CLOSES}, {TCP_SERVER_CLOSES}, {HTTP_PORT}\n" + r"""
import socket, sys, threading

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", UDP))
    return s

def udp_loop(s):
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(("%s:%d " % peer).encode() + data, peer)

def listener(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port))
    l.listen(64)
    return l

def read_until(c, end):
    buf = b""
    while not buf.endswith(end):
        d = c.recv(4096)
        if not d:
            break
        buf += d
    return buf

def handle(c, peer, kind):
    try:
        c.settimeout(10)
        me = "%s:%d" % c.getsockname()
        if kind == "http":
            read_until(c, b"\r\n\r\n")
            body = ("hello from tiny (%s): you came from %s:%d\n" % ((me,) + peer)).encode()
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % len(body) + body)
            return                                   # the server closes first
        line = read_until(c, b"\n")
        c.sendall(("%s:%d " % peer).encode() + line)
        if kind == "server-first":
            return
        while c.recv(4096):                          # the client's FIN first
            pass
    except OSError:
        pass
    finally:
        c.close()

def accept_loop(l, kind):
    while True:
        c, peer = l.accept()
        threading.Thread(target=handle, args=(c, peer, kind), daemon=True).start()

u = udp()
ls = [(listener(TCC), "client-first"), (listener(TSC), "server-first"), (listener(HTTP), "http")]
for l, kind in ls:
    threading.Thread(target=accept_loop, args=(l, kind), daemon=True).start()
print("ready", flush=True)
udp_loop(u)
"""

# The private host's client: prints one JSON line
#   {"local": [addr, port], "answer": "...", "seen": "IP:PORT" (what the server named)}
#   udp HOST PORT [SPORT]
#   tcp HOST PORT [SPORT] client|server   (who is expected to close first)
CLIENT_PY = r"""
import json, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
first = sys.argv[5] if len(sys.argv) > 5 else "client"
msg = b"nattrack e2e\n"
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.settimeout(1.0)
    for attempt in range(3):
        s.sendto(msg, (host, port))
        try:
            data, peer = s.recvfrom(65535)
            break
        except socket.timeout:
            continue
    else:
        sys.exit("no UDP answer")
    rest = b""
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.settimeout(5)
    s.connect((host, port))
    s.sendall(msg)
    data = b""
    while not data.endswith(b"\n"):
        d = s.recv(4096)
        if not d:
            break
        data += d
    if first == "client":
        s.shutdown(socket.SHUT_WR)                   # our FIN goes first
    rest = b""
    while True:                                      # then the server's FIN (EOF)
        d = s.recv(4096)
        if not d:
            break
        rest += d
local = s.getsockname()
s.close()
answer = data.decode()
print(json.dumps({"local": list(local), "answer": answer, "rest": rest.decode(),
                  "seen": answer.split()[0] if answer else ""}))
"""


# --- the scenes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    """One NAT router on the way out: its node, the address it sees the flow come from,
    and the public address it translates that to (the reply tuple's destination)."""
    router: str
    inside: str
    public: str


@dataclass(frozen=True)
class Scene:
    topo: str
    client: str                  # the private host that starts the traffic
    client_addr: str
    server: str                  # the far host
    server_addr: str
    http: int                    # the far host's HTTP port (80: the lab's service)
    hops: tuple[Hop, ...]        # NAT routers in order, client side first
    others: tuple[tuple[str, str], ...] = ()    # more private hosts (clash)

    @property
    def seen(self) -> str:
        """The source address the far host sees: the last NAT's public address."""
        return self.hops[-1].public

    @property
    def routers(self) -> list[str]:
        return [h.router for h in self.hops]


SCENES: dict[str, Scene] = {
    "basic": Scene("basic", "h1", "10.0.0.10", "srv", "203.0.113.10", 80,
                   (Hop("r", "10.0.0.10", "203.0.113.1"),)),
    "clash": Scene("clash", "h1", "10.0.0.10", "srv", "203.0.113.10", 80,
                   (Hop("r", "10.0.0.10", "203.0.113.1"),),
                   others=(("h2", "10.0.0.11"), ("h3", "10.0.0.12"))),
    "seed": Scene("seed", "guest", "192.168.122.148", "web", "198.51.100.12", 80,
                  (Hop("host", "192.168.122.148", "192.168.199.132"),)),
    "portforward": Scene("portforward", "web", "10.0.0.10", "ext", "203.0.113.10", HTTP_PORT,
                         (Hop("r", "10.0.0.10", "203.0.113.1"),)),
    "double": Scene("double", "h1", "10.0.0.10", "srv", "203.0.113.10", 80,
                    (Hop("r", "10.0.0.10", "100.64.0.2"), Hop("cgn", "100.64.0.2", "203.0.113.1"))),
}


# --- small tools ----------------------------------------------------------------------------------

def wait_for(fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 3.0,
             step: float = 0.1) -> Any:
    """Call ``fn`` until ``ok(value)`` or ``timeout``; the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if ok(v) or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def run_client(c, node: str, *args: Any, timeout: float = 15) -> dict:
    r = c.exec(node, [PYTHON, "-c", CLIENT_PY, *map(str, args)], timeout=timeout)
    assert r.returncode == 0, f"client in {node} {args}: rc={r.returncode} {r.stderr.strip()}"
    return json.loads(r.stdout.strip().splitlines()[-1])


SEEN_RE = re.compile(r"you came from (\d+\.\d+\.\d+\.\d+):(\d+)")


def curl(c, node: str, url: str, extra: tuple[str, ...] = (), tries: int = 1,
         timeout: float = 15) -> tuple[str, int, str, int]:
    """curl from ``node``: (seen address, seen port, the page, curl's local port)."""
    argv = ["curl", "-s", "-m", "5", *extra, "-w", "\\nLOCAL %{local_ip}:%{local_port}\\n", url]
    for attempt in range(tries):
        r = c.exec(node, argv, timeout=timeout)
        if r.returncode == 0:
            break
        time.sleep(0.5)
    assert r.returncode == 0, f"curl {url} from {node}: rc={r.returncode} {r.stderr.strip()}"
    page, _, local = r.stdout.rpartition("\nLOCAL ")
    m = SEEN_RE.search(page)
    assert m, f"the server did not say whom it saw: {page!r}"
    return m.group(1), int(m.group(2)), page, int(local.strip().rpartition(":")[2])


def split_seen(seen: str) -> tuple[str, int]:
    a, _, p = seen.rpartition(":")
    return a, int(p)


def find(entries: list[dict], proto: str, **orig: Any) -> list[dict]:
    """Entries of ``proto`` whose original tuple has every given field."""
    return [e for e in entries if e["proto"] == proto
            and all(e["orig"].get(k) == v for k, v in orig.items())]


def fmt(e: dict) -> str:
    return json.dumps({k: e.get(k) for k in ("proto", "state", "orig", "reply", "status",
                                              "assured", "timeout")})
