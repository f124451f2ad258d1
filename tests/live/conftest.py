"""Live router tests: the router process (``python -m nattrack.router``) in a real namespace.

Gate (the repository's convention, as in tests/kernel): not root and CI unset:
skipped; not root under CI: failed; a tool missing or namespaces impossible:
failed, naming the Debian package; as root under CI a skip counts as a failure.

Fixtures and helpers:

* :class:`RouterProc` starts the router inside the topology's router namespace
  (``ip netns exec``), waits for its ``ready`` line and speaks the control
  protocol (``call`` for one answer, ``stream`` for events/trace).
* :data:`SERVER_PY` is the server namespace's program: a UDP echo server on
  5000 and a TCP server on 8080, printing every peer (``udp IP PORT``,
  ``tcp IP PORT``), so tests can check which source address the server saw.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from netns_tools import netns_problem

from .netns import Topology, cleanup_stale

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

TOOLS = {"ip": "iproute2", "iptables": "iptables", "iptables-restore": "iptables",
         "iptables-save": "iptables", "conntrack": "conntrack", "ethtool": "ethtool",
         "ping": "iputils-ping", "curl": "curl"}

MASQ_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o r-wan -j MASQUERADE{masq_opts}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i r-lan -o r-wan -j ACCEPT
COMMIT
"""

SERVER_PY = r"""
import socket, sys, threading
_lock = threading.Lock()
def log(*a):
    with _lock:                             # one whole line at a time (threads)
        sys.stdout.write(" ".join(map(str, a)) + "\n")
        sys.stdout.flush()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5000))
    while True:
        data, peer = s.recvfrom(65535)
        log("udp", peer[0], peer[1])
        s.sendto(data, peer)
def conn(c, peer):
    log("tcp", peer[0], peer[1])
    f = c.makefile("rb")
    first = f.readline()
    if first.startswith(b"GET"):
        while f.readline() not in (b"\r\n", b"\n", b""):
            pass
        body = b"hello from the server\n"
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        c.close()
    elif first.startswith(b"CLOSE-SERVER"):
        c.sendall(b"bye\n")
        c.close()
    else:                                   # ECHO / CLOSE-CLIENT: echo until the client closes
        c.sendall(first)
        for line in f:
            c.sendall(line)
        c.close()
def tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080))
    s.listen(16)
    while True:
        c, peer = s.accept()
        threading.Thread(target=conn, args=(c, peer), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
log("listening")
tcp()
"""


def _is_root() -> bool:
    return os.geteuid() == 0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


_PROBLEM: list[str | None] = []


def live_env_problem() -> str | None:
    if not _PROBLEM:
        problem = None
        if not _is_root():
            problem = "live router tests need root (network namespaces, AF_PACKET, iptables)"
        else:
            missing = {t: p for t, p in TOOLS.items() if shutil.which(t) is None}
            if missing:
                problem = (f"missing tools {', '.join(sorted(missing))}: run `apt-get install "
                           f"{' '.join(sorted(set(missing.values())))}` (or scripts/setup.sh)")
            else:
                problem = netns_problem(f"ntlprobe{os.getpid()}")
        _PROBLEM.append(problem)
    return _PROBLEM[0]


def _is_live(item) -> bool:
    return Path(str(item.fspath)).resolve().parent == Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if _is_root() or _in_ci():
        return
    skip = pytest.mark.skip(reason="live router tests need root; run as root (set CI=true to "
                                   "make this a failure)")
    for item in items:
        if _is_live(item):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and _is_root() and _in_ci() and _is_live(item):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"live test skipped under CI as root, which counts as a failure: {reason}"


@pytest.fixture(scope="module")
def live_env():
    problem = live_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    cleanup_stale()


@pytest.fixture(scope="module")
def topo(live_env):
    with Topology() as t:
        yield t


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="ntl-live-")       # short: a Unix socket path has 108 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


# --- the router process --------------------------------------------------------------------------

class RouterError(AssertionError):
    pass


class RouterProc:
    """The router under test: started inside the router namespace, driven by its socket."""

    def __init__(self, topo: Topology, workdir: Path, mode: str, rules: str | None = None,
                 sysctls: dict[str, str] | None = None) -> None:
        self.topo, self.mode = topo, mode
        self.sock_path = str(workdir / f"{mode}.sock")
        self.log_path = workdir / f"{mode}.log"
        self.err_path = workdir / f"{mode}.stderr"
        args = [PYTHON, "-m", "nattrack.router", "--mode", mode,
                "--iface", "r-lan=10.0.0.1/24", "--iface", "r-wan=203.0.113.1/24",
                "--route", "default=r-wan", "--control", self.sock_path, "--log", str(self.log_path)]
        if rules is not None:
            rules_path = workdir / f"{mode}.rules"
            rules_path.write_text(rules)
            args += ["--rules", str(rules_path)]
        for k, v in (sysctls or {}).items():
            args += ["--sysctl", f"{k}={v}"]
        self.err = open(self.err_path, "w")
        self.proc = topo.popen(topo.router, *args, stdout=subprocess.PIPE, stderr=self.err,
                               cwd=str(ROOT), text=True)
        self.started = time.monotonic()
        line = self._readline(20.0)
        self.ready_after = time.monotonic() - self.started
        if line != "ready":
            self.kill()
            raise RouterError(f"the router did not say ready (got {line!r}):\n{self.diagnostics()}")

    def _readline(self, timeout: float) -> str | None:
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        return self.proc.stdout.readline().strip()

    def diagnostics(self) -> str:
        self.err.flush()
        out = [f"-- stderr:\n{self.err_path.read_text() if self.err_path.exists() else ''}"]
        if self.log_path.exists():
            out.append(f"-- log:\n{self.log_path.read_text()}")
        return "\n".join(out)

    # -- control protocol ---------------------------------------------------------------------

    def request(self, verb: str, args: dict | None = None, timeout: float = 10.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.sock_path)
            s.sendall((json.dumps({"verb": verb, "args": args or {}}) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def call(self, verb: str, args: dict | None = None):
        ans = self.request(verb, args)
        if not ans.get("ok"):
            raise RouterError(f"{verb} failed: {ans.get('error')}")
        return ans["result"]

    def stream(self, verb: str, args: dict | None = None) -> "Stream":
        return Stream(self.sock_path, verb, args or {})

    # -- life ------------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """The ``stop`` verb, then wait for the exit status."""
        if self.alive():
            try:
                self.call("stop")
            except (OSError, RouterError, ValueError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.err.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.err.closed:
            self.err.close()


class Stream:
    """An events/trace stream: JSON lines until we close."""

    def __init__(self, path: str, verb: str, args: dict) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.sendall((json.dumps({"verb": verb, "args": args}) + "\n").encode())
        self.buf = b""

    def read(self, n: int | None = None, timeout: float = 5.0) -> list[dict]:
        """Messages until ``n`` have come, the server closes, or ``timeout`` passes."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while n is None or len(out) < n:
            while b"\n" in self.buf and (n is None or len(out) < n):
                line, _, self.buf = self.buf.partition(b"\n")
                out.append(json.loads(line))
            if n is not None and len(out) >= n:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            self.buf += chunk
        return out

    def close(self) -> None:
        self.s.close()


# --- traffic helpers ------------------------------------------------------------------------------

class Server:
    """SERVER_PY running in the server namespace; ``peers()`` is what it has seen."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        self.out = workdir / "server.out"
        self.f = open(self.out, "w")
        self.proc = topo.popen(topo.server, PYTHON, "-u", "-c", SERVER_PY, stdout=self.f,
                               stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "listening" not in self.out.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start: {self.out.read_text()}")
            time.sleep(0.02)

    def peers(self, kind: str) -> list[tuple[str, int]]:
        out = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == kind:
                out.append((parts[1], int(parts[2])))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.f.close()


def client_py(topo: Topology, code: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run Python ``code`` in the client namespace; fails the test on a non-zero exit."""
    p = topo.exec(topo.client, PYTHON, "-c", code, check=False, timeout=timeout)
    assert p.returncode == 0, f"client program failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


UDP_CLIENT = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {sport}))
s.settimeout(3)
for i in range({count}):
    s.sendto(b"ping %d" % i, ("203.0.113.10", 5000))
    data, peer = s.recvfrom(100)
    assert data == b"ping %d" % i and peer == ("203.0.113.10", 5000), (data, peer)
print("ok")
"""

TCP_CLIENT = r"""
import socket, time
s = socket.create_connection(("203.0.113.10", 8080), timeout=5, source_address=("0.0.0.0", {sport}))
f = s.makefile("rb")
mode = "{mode}"
if mode == "CLOSE-SERVER":
    s.sendall(b"CLOSE-SERVER\n")
    assert f.readline() == b"bye\n"
    assert f.read() == b""          # the server closed first
    time.sleep(0.1)
    s.close()
else:
    for i in range({lines}):
        s.sendall(b"%s line %d\n" % (mode.encode(), i))
        assert f.readline() == b"%s line %d\n" % (mode.encode(), i)
        time.sleep({gap})
    s.shutdown(socket.SHUT_WR)      # the client closes first
    assert f.read() == b""
    s.close()
print("ok")
"""


def table_lines(router: RouterProc, **filters) -> list[str]:
    return router.call("list", {"filters": filters} if filters else {})


def kernel_conntrack(topo: Topology, *args: str) -> str:
    return topo.exec(topo.router, "conntrack", *args, check=False).stdout
