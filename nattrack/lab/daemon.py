"""The lab service: owns one Mininet network as root and serves its clients.

Started by ``nattrack lab up`` (never by hand): it builds the topology
(:class:`~nattrack.lab.net.LabNet`), starts the router process(es), then listens
on ``lab.sock`` (mode 0660, group ``nattrack``, created if missing) for JSON lines,
one request per connection.

Verbs (a fixed set; no shell strings anywhere):

=================  ===============================================================
``hello``          who is serving: {service, pid, topo, mode, uid (the caller's)}
``status``         topology, nodes, interfaces and addresses, routers (pid, alive)
``exec``           ``node``, ``argv`` (a list): run it in the node, streaming
                   ``stdout``/``stderr`` (base64) and finally ``exit``; the client
                   may send ``stdin`` (base64), ``stdin_eof``, ``signal``.  A caller
                   other than root runs as itself (uid, gid, groups) with only
                   CAP_NET_RAW and CAP_NET_BIND_SERVICE.
``conntrack``      ``verb`` + ``args`` forwarded to a router's control socket
                   (hello list proc stats count flush delete sysctl missed; streams:
                   events trace); ``router`` picks one (default: the primary)
``kernel_conntrack`` the real ``conntrack`` in the router node, argv built from a
                   validated request (command L E S C F D, filters, output, mask)
``sysctl``         ``key`` [``value``]: the tracker's setting (router verb), or
                   with ``kernel`` the router namespace's own
``capture``        record both sides of a router to pcapng while the client waits;
                   the file comes back over the socket (``data`` chunks)
``rules``          ``name``: load another rules file shipped in examples/rules/ (by
                   name only) into a router as iptables-restore does: the tables
                   the file names are replaced at once (kernel mode: the kernel's
                   too), nothing restarts; the connection tables, their NAT
                   bindings, event streams and captures go on.  Answers {router,
                   rules, pid, tables, entries}; a bad file: one line, old rules kept.
                   Root may send ``text`` instead (any rules, as iptables-restore
                   in the node would take them; lab 07's table-full in python mode)
``down``           answer, then stop everything and exit
=================  ===============================================================
"""
from __future__ import annotations

import argparse
import base64
import grp
import json
import os
import pwd
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from . import GROUP, MARKER_ENV, LabError, Paths, REPO_ROOT
from . import rpc
from .api import ROUTER_STREAMS, ROUTER_VERBS, LocalLab
from .cleanup import write_state
from .ctargs import CtUsageError, kernel_argv, validate
from .procs import kill_all
from .rpcserver import STREAMED, Client, Server, serve

if TYPE_CHECKING:
    from .net import LabNet                 # imported when run() starts: it needs Mininet

SERVICE = "nattrack-lab"
USER_CAPS = "+net_raw,+net_bind_service"
CHUNK = 48 * 1024
SAFE_ENV = ("TERM", "LANG", "LC_ALL", "LC_CTYPE", "COLUMNS", "LINES", "TZ")
VERBS = ("hello", "status", "exec", "conntrack", "kernel_conntrack", "sysctl", "capture", "rules",
         "down")


def ensure_group() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", GROUP], capture_output=True)
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def peer_creds(sock: socket.socket) -> tuple[int, int, int]:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def peer_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class Session:
    """One client connection (a thread of the socket server), one request."""

    def __init__(self, service: "LabService", client: Client) -> None:
        self.svc, self.client = service, client
        self.conn = client.sock
        self.send, self.error = client.send, client.error
        self.recv_line, self.gone = client.recv_line, client.gone
        self.pid, self.uid, self.gid = peer_creds(self.conn)

    def authorized(self) -> bool:
        if self.uid == 0:
            return True
        gid = self.svc.group_gid
        return gid is not None and (self.gid == gid or gid in peer_groups(self.pid))

    def handle(self) -> None:
        if not self.authorized():
            self.error(f"permission denied: uid {self.uid} is not in group {GROUP}")
            return
        serve(self.client, {verb: getattr(self, f"v_{verb}") for verb in VERBS},
              (LabError, CtUsageError, ValueError), once=True, timeout=30.0)

    # -- verbs ---------------------------------------------------------------------------

    def v_hello(self, args):
        return {"service": SERVICE, "pid": os.getpid(), "topo": self.svc.labnet.topo.name,
                "mode": self.svc.labnet.topo.mode, "uid": self.uid}

    def v_status(self, args):
        return self.svc.status()

    def v_down(self, args):
        self.send({"ok": True, "result": {"stopping": os.getpid()}})
        self.svc.request_stop(f"down requested by uid {self.uid}")
        return STREAMED

    def v_conntrack(self, args):
        verb, inner = args.get("verb"), args.get("args") or {}
        router = args.get("router")
        if not isinstance(inner, dict):
            raise LabError("conntrack: args must be an object")
        if verb in ROUTER_VERBS:
            return self.svc.api.router_call(verb, inner, router)
        if verb in ROUTER_STREAMS:
            r = self.svc.api._router(router)
            self._relay(r.control, verb, inner)
            return STREAMED
        raise LabError(f"conntrack: unknown verb {verb!r}: known are "
                       f"{', '.join(ROUTER_VERBS + ROUTER_STREAMS)}")

    def _relay(self, control, verb: str, inner: dict) -> None:
        """Relay a router stream (its JSON lines as they are) until either side closes."""
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                up.connect(str(control))
            except OSError as exc:
                raise LabError(f"the router's control socket does not answer: {exc}") from None
            up.sendall(json.dumps({"verb": verb, "args": inner}).encode() + b"\n")
            while not self.svc.stopping.is_set():
                r, _, _ = select.select([up, self.conn], [], [], 1.0)
                if self.conn in r and self.gone():
                    return
                if up in r:
                    data = up.recv(65536)
                    if not data:
                        return
                    if not self.client.write(data):
                        return
        finally:
            up.close()

    def v_kernel_conntrack(self, args):
        req = validate(args.get("request") or {})
        node = self.svc.labnet.router(args.get("router")).node
        if req.command != "E":
            return self.svc.api.kernel_conntrack(req, args.get("router"))
        p = node.popen(kernel_argv(req), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        self.send({"ok": True, "started": True})
        self._pump_lines(p)
        return STREAMED

    def _pump_lines(self, p: subprocess.Popen) -> None:
        assert p.stdout is not None                 # started with stdout=PIPE
        fd = p.stdout.fileno()
        watched: list[int | socket.socket] = [fd, self.conn]
        buf = b""
        try:
            while not self.svc.stopping.is_set():
                r, _, _ = select.select(watched, [], [], 1.0)
                if self.conn in r and self.gone():
                    return
                if fd in r:
                    data = os.read(fd, 65536)
                    if not data:
                        err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                        p.wait()
                        self.send({"ok": True, "exit": p.returncode, "stderr": err})
                        return
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not self.send({"ok": True, "line": line.decode(errors="replace")}):
                            return
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(1)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def v_sysctl(self, args):
        key = args.get("key")
        value = args.get("value")
        return self.svc.api.sysctl(key, value, kernel=bool(args.get("kernel")),
                                   router=args.get("router"))

    def v_rules(self, args):
        text = args.get("text")
        if text is not None:
            # any rules at all: what root could load into the kernel with iptables-restore
            if self.uid != 0:
                raise LabError("rules: loading rules text needs root (sudo); others load "
                               "a file of examples/rules/ by name")
            if not isinstance(text, str):
                raise LabError("rules: text must be the rules file's content")
            return self.svc.api.load_rules(args.get("name"), args.get("router"), text=text)
        result = self.svc.api.load_rules(args.get("name"), args.get("router"))
        self.svc.save(record=self.svc.labnet.record())
        return result

    # -- exec ----------------------------------------------------------------------------

    def _exec_env(self, client_env: dict) -> tuple[list[str], dict]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               MARKER_ENV: os.environ.get(MARKER_ENV, "")}
        for k in SAFE_ENV:
            v = client_env.get(k)
            if isinstance(v, str) and "\0" not in v:
                env[k] = v
        if self.uid == 0:
            env.update(HOME="/root", USER="root", LOGNAME="root")
            return [], env
        try:
            pw = pwd.getpwuid(self.uid)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            groups = ["--init-groups"]
        except KeyError:
            env.update(HOME="/")
            groups = ["--clear-groups"]
        wrap = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", *groups, "--no-new-privs",
                f"--inh-caps={USER_CAPS}", f"--ambient-caps={USER_CAPS}", "--"]
        return wrap, env

    def v_exec(self, args):
        node_name, argv = args.get("node"), args.get("argv")
        if not isinstance(node_name, str):
            raise LabError("exec needs a node name")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) and "\0" not in a for a in argv)):
            raise LabError("exec needs argv: a non-empty list of strings")
        node = self.svc.labnet.node(node_name)
        wrap, env = self._exec_env(args.get("env") or {})
        if shutil.which(argv[0], path=env["PATH"]) is None:
            self.send({"ok": False, "error": f"{node_name}: command not found: {argv[0]}",
                       "exit": 127})
            return STREAMED
        cwd = args.get("cwd")
        if not (isinstance(cwd, str) and os.path.isdir(cwd)):
            cwd = "/"
        timeout = args.get("timeout")
        want_stdin = bool(args.get("stdin"))
        p = node.popen(wrap + argv, stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.svc.track(p)
        try:
            self.send({"ok": True, "started": p.pid})
            self._run_exec(p, want_stdin, timeout)
        finally:
            self.svc.untrack(p)
        return STREAMED

    def _run_exec(self, p: subprocess.Popen, want_stdin: bool, timeout) -> None:
        readers = []
        for name, pipe in (("stdout", p.stdout), ("stderr", p.stderr)):
            t = threading.Thread(target=self._pipe_out, args=(name, pipe), daemon=True)
            t.start()
            readers.append(t)
        deadline = time.monotonic() + float(timeout) if timeout else None
        timed_out = False
        client_open = True
        while p.poll() is None:
            if deadline and time.monotonic() > deadline:
                timed_out = True
                _killpg(p, signal.SIGKILL)
                break
            if self.svc.stopping.is_set():
                _killpg(p, signal.SIGKILL)
                break
            if not client_open:
                time.sleep(0.05)
                continue
            line = self.recv_line(0.1)
            if line is None:
                continue
            if not line:                                     # the client went away
                client_open = False
                _killpg(p, signal.SIGKILL)
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "stdin" in msg and want_stdin and p.stdin:
                try:
                    p.stdin.write(base64.b64decode(msg["stdin"]))
                    p.stdin.flush()
                except (OSError, ValueError):
                    pass
            if msg.get("stdin_eof") and p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            sig = msg.get("signal")
            if sig in ("INT", "TERM", "KILL", "HUP", "QUIT"):
                _killpg(p, getattr(signal, f"SIG{sig}"))
        p.wait()
        for t in readers:
            t.join(5)
        rc = p.returncode
        if rc < 0:
            rc = 128 - rc
        self.send({"ok": True, "exit": rc, "timed_out": timed_out})

    def _pipe_out(self, name: str, pipe) -> None:
        fd = pipe.fileno()
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                break
            if not data:
                break
            self.send({"ok": True, name: base64.b64encode(data).decode()})
        pipe.close()

    # -- capture -------------------------------------------------------------------------

    def v_capture(self, args):
        r = self.svc.api._router(args.get("router"))
        duration = args.get("duration")
        caps = self.svc.paths.captures
        caps.mkdir(mode=0o700, exist_ok=True)
        path = caps / f"capture-{r.node.name}-{os.getpid()}-{time.monotonic_ns()}.pcapng"
        rpc.request(r.control, "capture", {"action": "start", "path": str(path)}, timeout=10)
        try:
            self.send({"ok": True, "started": str(path.name)})
            deadline = time.monotonic() + float(duration) if duration else None
            while not self.svc.stopping.is_set():
                if deadline and time.monotonic() > deadline:
                    break
                line = self.recv_line(0.2)
                if line is None:
                    continue
                if not line:
                    return                                     # client gone: drop it all
                try:
                    if json.loads(line).get("stop"):
                        break
                except ValueError:
                    continue
            res = rpc.request(r.control, "capture", {"action": "stop"}, timeout=10)
            path = type(path)(res.get("path") or path)
            size = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    size += len(chunk)
                    if not self.send({"ok": True, "data": base64.b64encode(chunk).decode()}):
                        return
            self.send({"ok": True, "result": {"packets": res.get("packets"), "bytes": size}})
        finally:
            try:
                rpc.request(r.control, "capture", {"action": "stop"}, timeout=5)
            except LabError:
                pass
            try:
                path.unlink()
            except OSError:
                pass
        return STREAMED


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass


class LabService:
    def __init__(self, args) -> None:
        self.args = args
        self.paths = Paths(args.run_dir)
        self.lab_id = args.id
        self.stopping = threading.Event()
        self.stop_reason = ""
        self.labnet: LabNet | None = None
        self.api: LocalLab | None = None
        self.server: Server | None = None
        self.group_gid: int | None = None
        self.procs: set[subprocess.Popen] = set()
        self.plock = threading.Lock()
        self.state = {"pid": os.getpid(), "id": self.lab_id, "topo": args.topo,
                      "mode": args.mode, "phase": "starting", "run_dir": str(self.paths.dir),
                      "started": None, "record": {}}

    # -- bookkeeping ---------------------------------------------------------------------

    def save(self, **changes) -> None:
        self.state.update(changes)
        write_state(self.paths, self.state)

    def on_record(self, rec: dict) -> None:
        self.save(record=rec)

    def track(self, p) -> None:
        with self.plock:
            self.procs.add(p)

    def untrack(self, p) -> None:
        with self.plock:
            self.procs.discard(p)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stopping.set()

    def status(self) -> dict:
        assert self.labnet is not None              # asked once run() has built the lab
        d = self.labnet.describe()
        d.update(pid=os.getpid(), id=self.lab_id, run_dir=str(self.paths.dir),
                 socket=str(self.paths.sock), service=SERVICE)
        return d

    # -- life ----------------------------------------------------------------------------

    def notify(self, obj: dict) -> None:
        fd = self.args.ready_fd
        if fd is None:
            return
        try:
            os.write(fd, json.dumps(obj).encode() + b"\n")
            os.close(fd)
        except OSError:
            pass
        self.args.ready_fd = None

    def run(self) -> int:
        from .net import LabNet
        os.environ[MARKER_ENV] = self.paths.marker(self.lab_id)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, f: self.request_stop(f"signal {s}"))
        self.save()
        try:
            self.group_gid = ensure_group()
            sysctls = dict(kv.split("=", 1) for kv in self.args.sysctl or [])
            self.labnet = labnet = LabNet(
                self.args.topo, mode=self.args.mode, rules=self.args.rules,
                sysctls=sysctls, paths=self.paths,
                progress=lambda m: print(f"lab: {m}", flush=True),
                on_record=self.on_record, plugin=self.args.plugin,
                run_as=self.args.run_as, rate=self.args.rate,
                listen=self.args.listen, kernel=self.args.kernel)
            labnet.start()
            self.api = LocalLab(labnet)
            self._listen()
        except BaseException as exc:             # noqa: BLE001 -- report, clean, exit
            msg = str(exc) if isinstance(exc, LabError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, LabError):
                traceback.print_exc()
            self.notify({"ok": False, "error": " ".join(msg.split())})
            self._teardown()
            return 1
        self.save(phase="running", started=labnet.started, record=labnet.record())
        self.notify({"ok": True, "status": self.status()})
        print(f"lab: serving on {self.paths.sock}", flush=True)
        reported: set[str] = set()                 # routers whose exit was told
        while not self.stopping.wait(0.5):
            for name, r in labnet.routers.items():
                if not r.alive() and name not in reported:
                    reported.add(name)
                    print(f"lab: the router process in {name} exited "
                          f"(status {r.proc.returncode if r.proc else '?'})", flush=True)
        print(f"lab: stopping ({self.stop_reason})", flush=True)
        self._teardown()
        return 0

    def _listen(self) -> None:
        self.server = Server(self.paths.sock, lambda client: Session(self, client).handle(),
                             self.group_gid, "lab-socket")
        self.server.start()

    def _teardown(self) -> None:
        self.stopping.set()
        self.save(phase="stopping")
        if self.server is not None:
            self.server.close()
        try:
            self.paths.sock.unlink()
        except FileNotFoundError:
            pass
        with self.plock:
            procs = list(self.procs)
        kill_all([p.pid for p in procs], grace=0.2)
        if self.labnet is not None:
            self.labnet.stop()
        for f in [self.paths.state, *self.paths.dir.glob("router-*.sock")]:
            try:
                f.unlink()
            except FileNotFoundError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nattrack.lab.daemon",
                                description="nattrack's lab service (started by `nattrack lab up`)")
    p.add_argument("--topo", default="basic")
    p.add_argument("--mode", default="python", choices=("python", "kernel"))
    p.add_argument("--rules")
    p.add_argument("--plugin")                       # LAB_DIR=SUBMISSION_DIR for the primary router
    p.add_argument("--run-as")
    p.add_argument("--sysctl", action="append", default=[])
    p.add_argument("--listen", action="append", default=[])  # PROTO:PORT[,PORT], primary router
    p.add_argument("--kernel")                       # VERSION the routers behave as (python mode)
    p.add_argument("--rate", help="every shaped link's rate in Mbit/s, 0 = unshaped "
                                  "(default: the topology's; also $NATTRACK_LINK_RATE)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--lock-fd", type=int)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("nattrack: the lab service needs root", file=sys.stderr)
        return 2
    for fd in (args.ready_fd, args.lock_fd):
        if fd is not None:
            os.set_inheritable(fd, False)            # children must not keep the lock alive
    os.chdir("/")
    sys.path.insert(0, str(REPO_ROOT)) if str(REPO_ROOT) not in sys.path else None
    return LabService(args).run()


if __name__ == "__main__":
    sys.exit(main())
