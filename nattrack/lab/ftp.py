"""A real FTP server (vsftpd) in one node or namespace: anonymous, read-only, its own files.

Each :class:`FtpServer` writes its own configuration and files into a fresh temporary
directory and runs ``vsftpd CONFIG`` in the foreground through the caller's ``popen``,
which must start it as the leader of a process group of its own, so that the sessions it
forks end with it: a Mininet node's ``node.popen`` does (``mnexec -d``); for
``ip netns exec NS ...`` pass ``start_new_session=True``.  Nothing is shared with
the machine's own vsftpd (``/etc/vsftpd.conf``, its service: scripts/setup.sh keeps that
one off).  :meth:`FtpServer.stop` ends the server and every session it forked, and
removes the directory.

    srv = FtpServer({"data.bin": payload}, lambda argv, **kw: node.popen(argv, **kw))
    srv.start()
    ...   # curl ftp://ADDR/data.bin          (passive: EPSV, --disable-epsv: PASV)
    ...   # curl -P - ftp://ADDR/data.bin     (active: EPRT, --disable-eprt: PORT)
    srv.protocol()   # the commands and replies as the server saw them (its log)
    srv.stop()

The server keeps vsftpd's defaults where they matter to NAT: it accepts a PORT/EPRT
only for the control connection's own peer address (``port_promiscuous=NO``), so an
active client behind NAT without the FTP helper gets ``500 Illegal PORT command.``,
and it connects from port 20 as Debian's configuration does.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import LabError

Popen = Callable[..., subprocess.Popen]
PASV_PORTS = (30000, 30009)

# Waits (in the server's namespace) until something accepts on the port.
_WAIT_LISTENING = """\
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
"""


class FtpServer:
    """vsftpd serving ``files`` (name -> bytes) anonymously on ``port``."""

    def __init__(self, files: dict[str, bytes], popen: Popen, port: int = 21,
                 pasv_ports: tuple[int, int] = PASV_PORTS) -> None:
        self.files, self.popen, self.port, self.pasv_ports = files, popen, port, pasv_ports
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.group = False                  # vsftpd leads its own process group

    def config_text(self) -> str:
        d = self.dir
        lo, hi = self.pasv_ports
        return "\n".join((
            "listen=YES", "listen_ipv6=NO", f"listen_port={self.port}",
            "background=NO",                       # popen owns the process
            "anonymous_enable=YES", "no_anon_password=YES", f"anon_root={d}/root",
            "local_enable=NO", "write_enable=NO",
            "pasv_enable=YES", f"pasv_min_port={lo}", f"pasv_max_port={hi}",
            "port_enable=YES", "connect_from_port_20=YES",
            # vsftpd 3.0.3's seccomp filter kills it on some newer kernels' syscalls.
            "seccomp_sandbox=NO",
            f"secure_chroot_dir={d}/empty",       # the package's /run/vsftpd/empty may not exist
            "xferlog_enable=YES", "dual_log_enable=NO", "log_ftp_protocol=YES",
            f"vsftpd_log_file={d}/vsftpd.log", "use_localtime=NO", ""))

    def start(self, timeout: float = 10.0) -> None:
        if shutil.which("vsftpd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise LabError("vsftpd is not installed: run scripts/setup.sh as root "
                           "(Debian package vsftpd)")
        self.dir = Path(tempfile.mkdtemp(prefix="nattrack-ftp-"))
        for sub in ("root", "empty"):
            (self.dir / sub).mkdir(mode=0o755)
            (self.dir / sub).chmod(0o755)         # vsftpd's ftp user reads the chroot
        for name, data in self.files.items():
            if "/" in name or name.startswith("."):
                raise LabError(f"ftp file {name!r}: a plain file name, no directories")
            f = self.dir / "root" / name
            f.write_bytes(data)
            f.chmod(0o644)                        # anon_world_readable_only
        (self.dir / "vsftpd.conf").write_text(self.config_text())
        self.proc = self.popen(["vsftpd", str(self.dir / "vsftpd.conf")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        wait = self.popen([sys.executable, "-c", _WAIT_LISTENING, str(self.port), str(timeout)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        ok = wait.wait(timeout + 5) == 0
        try:                                # listening: its popen has set up the group
            self.group = os.getpgid(self.proc.pid) == self.proc.pid
        except ProcessLookupError:
            ok = False
        if not ok or self.proc.poll() is not None:
            err = self._stop_and_read_stderr()
            raise LabError(f"vsftpd did not start listening on port {self.port}: "
                           f"{' '.join(err.split()) or 'no message'}")

    def protocol(self) -> list[str]:
        """The FTP commands and replies the server logged: ``"EPRT |1|203.0.113.1|41234|"``,
        ``"500 Illegal PORT command."`` (the text between the log line's last quotes)."""
        log = self.dir / "vsftpd.log" if self.dir else None
        if log is None or not log.exists():
            return []
        out = []
        for line in log.read_text(errors="replace").splitlines():
            if "FTP command:" in line or "FTP response:" in line:
                out.append(line.split('", "', 1)[-1].rstrip('"'))
        return out

    def _stop_and_read_stderr(self) -> str:
        p = self.proc
        if p is None:
            return ""
        self._signal(p, signal.SIGTERM)            # the listener and its sessions
        try:
            _, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._signal(p, signal.SIGKILL)
            _, err = p.communicate()
        self._signal(p, signal.SIGKILL)            # sessions still finishing a transfer
        return (err or b"").decode(errors="replace")

    def _signal(self, p: subprocess.Popen, sig: int) -> None:
        """The whole group when vsftpd leads one (see the module's note), else vsftpd."""
        try:
            if self.group:
                os.killpg(p.pid, sig)
            elif p.poll() is None:
                p.send_signal(sig)
        except ProcessLookupError:
            pass                                   # nothing left of it

    def stop(self) -> None:
        self._stop_and_read_stderr()
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "FtpServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

