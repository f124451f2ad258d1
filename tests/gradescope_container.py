"""An emulated Gradescope container: the autograder zip built into an image and run the way
Gradescope runs it, with the restrictions its Docker containers have.

Gradescope (gradescope/autograder_samples ``manual_docker/Dockerfile``, ``docs/specs.md``):

- image build: the zip unpacked into ``/autograder/source``; ``cp
  /autograder/source/run_autograder /autograder/run_autograder``; ``chmod +x``; ``bash
  /autograder/source/setup.sh`` once, as root; ``rm -rf /tmp/* /var/tmp/*``;
- per submission, in a fresh container of that image: the student's files in
  ``/autograder/submission``, ``/autograder/submission_metadata.json``, then
  ``/autograder/run_autograder`` with cwd ``/autograder``; ``/autograder/results/results.json``
  is the result.

Here the image is a minimal Debian root (``tests/rootfs.py``, with the packages setup.sh
looks for already in it: the build reaches no mirror) and a container is:

- new mount, pid, ipc, uts and network namespaces (``unshare``), the network holding only
  ``lo`` (up), so a listener on 127.0.0.1 inside is the only peer;
- per submission an overlay of a fresh upper folder on the image (Docker's overlay2), so
  nothing one submission writes reaches the next;
- ``/proc`` of its own pid namespace, a small ``/dev`` (null, zero, full, random, urandom,
  tty, shm) and a read-only ``/sys``;
- Docker's default seccomp profile where it matters to a grader: no new namespaces
  (``unshare``, ``setns``, ``clone`` with CLONE_NEW* flags; ``clone3`` gives ENOSYS so libc
  falls back to ``clone``), no mounts, no module or kexec loading, no clock or host name
  changes -- installed like runc does, without ``no_new_privs``;
- only Docker's 14 default capabilities (bounding, permitted, effective and inheritable
  sets; ambient cleared).

Everything it mounts lives in its own mount namespace and its processes in their own pid
namespace: when the container's first process ends (or the host side kills ``unshare
--kill-child``) the kernel removes them all, whatever went wrong.

Host side (root): :func:`build_image` and :func:`run_submission`.  The container side is
this file run as ``python3 gradescope_container.py inside ...`` by ``unshare``.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# What setup.sh needs, in the root beforehand (Gradescope's image would fetch them).
PACKAGES = ["python3", "util-linux"]
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8"}

# Docker's default capabilities (moby oci/caps/defaults.go), by number (linux/capability.h).
DOCKER_CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5,
               "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
               "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}

# clone()'s namespace flags (linux/sched.h): NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET -- Docker's profile allows clone only without them (0x7E020000).
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000)
# Calls Docker's default profile refuses to a container without CAP_SYS_ADMIN & co.
DENIED = ["unshare", "setns", "mount", "umount2", "pivot_root", "open_tree", "move_mount",
          "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at",
          "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
          "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
          "clock_settime", "clock_adjtime", "sethostname", "setdomainname", "bpf",
          "userfaultfd", "lookup_dcookie", "iopl", "ioperm"]


# --- host side -------------------------------------------------------------------------------

def _unshare(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``argv`` as the first process of new mount/pid/ipc/uts/net namespaces."""
    return subprocess.run(["unshare", "--mount", "--pid", "--ipc", "--uts", "--net", "--fork",
                           "--kill-child", "--propagation", "private", "--",
                           sys.executable, "-I", __file__, *argv],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def unzip(zip_path: Path, dest: Path) -> None:
    """Unpack keeping each file's mode (Python's zipfile drops it; Gradescope keeps it)."""
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            target = dest / info.filename
            z.extract(info, dest)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(target, mode & 0o777)


def build_image(zip_path: Path, image: Path, rootfs_tar: Path, timeout: float = 300
                ) -> subprocess.CompletedProcess:
    """The Dockerfile's steps on a fresh copy of the root in ``image`` (an empty folder);
    raises when setup.sh fails."""
    from tests.rootfs import unpack          # here: this file also runs alone, inside
    if rootfs_tar.is_dir():          # rootfs.py's mmdebstrap made a folder of the .tar name
        pack = subprocess.Popen(["tar", "-C", str(rootfs_tar), "-cf", "-", "."],
                                stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", str(image), "--numeric-owner", "-xf", "-"],
                       stdin=pack.stdout, check=True)
        pack.stdout.close()
        if pack.wait() != 0:
            raise RuntimeError(f"could not copy {rootfs_tar}")
    else:
        unpack(rootfs_tar, image)
    unzip(zip_path, image / "autograder" / "source")
    # apt-get update is left out: the packages are in the root, setup.sh finds them there
    build = ("cp /autograder/source/run_autograder /autograder/run_autograder"
             " && chmod +x /autograder/run_autograder"
             " && bash /autograder/source/setup.sh"
             " && rm -rf /tmp/* /var/tmp/*")
    done = _unshare(["inside", "--root", str(image), "--cwd", "/", "--",
                     "/bin/bash", "-c", build], timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the image build failed ({done.returncode}): "
                           + (done.stdout + done.stderr).strip()[-2000:])
    return done


@dataclass
class Run:
    results: dict
    seconds: float
    stdout: str
    connections: list[dict] = field(default_factory=list)   # what the listener received


def run_in(image: Path, work: Path, argv: list[str], cwd: str = "/autograder",
           listen_port: int | None = None, timeout: float = 240
           ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``argv`` in a fresh container of ``image``: its upper layer is ``work/upper`` (what
    is in it already shows above the image).  With ``listen_port``, a TCP listener on
    127.0.0.1 inside records every connection; they are returned with the process."""
    upper, overlay_work, merged = work / "upper", work / "overlay-work", work / "merged"
    for d in (upper, overlay_work, merged):
        d.mkdir(parents=True, exist_ok=True)
    log = work / "listener.json"
    opts = ["inside", "--root", str(merged), "--overlay", f"{image}:{upper}:{overlay_work}",
            "--cwd", cwd]
    if listen_port:
        opts += ["--listen", f"{listen_port}:{log}"]
    done = _unshare([*opts, "--", *argv], timeout)
    return done, json.loads(log.read_text()) if log.is_file() else []


def run_submission(image: Path, work: Path, submission: Path, metadata: dict,
                   listen_port: int | None = None, timeout: float = 240) -> Run:
    """Gradescope's run: ``submission`` and ``metadata`` in a fresh container of ``image``,
    then ``/autograder/run_autograder`` from ``/autograder``; ``work`` (new) holds the
    container's upper layer, where results.json is read."""
    ag = work / "upper" / "autograder"
    (ag / "results").mkdir(parents=True)
    shutil.copytree(submission, ag / "submission", symlinks=True)
    (ag / "submission_metadata.json").write_text(json.dumps(metadata))
    t0 = time.monotonic()
    done, got = run_in(image, work, ["/autograder/run_autograder"], "/autograder",
                       listen_port, timeout)
    seconds = time.monotonic() - t0
    path = ag / "results" / "results.json"
    if not path.is_file():
        raise RuntimeError(f"no results.json (exit {done.returncode}): "
                           + (done.stdout + done.stderr).strip()[-2000:])
    return Run(results=json.loads(path.read_text()), seconds=seconds,
               stdout=done.stdout + done.stderr, connections=got)


# --- container side (PID 1 of the new namespaces) ----------------------------------------------

def _mount_fs(root: Path, overlay: str | None) -> None:
    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)
    if overlay:
        lower, upper, work = overlay.split(":")
        mount("-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={upper},workdir={work}", str(root))
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc"))
    mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(root / "sys"))
    dev = root / "dev"
    mount("-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", str(dev))
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(dev / name, 0o20666, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)
    (dev / "shm").mkdir()
    mount("-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k", "shm",
          str(dev / "shm"))


class _Listener:
    """A TCP listener on 127.0.0.1:PORT (root, outside the chroot) that records what it
    receives; bound before the grader starts, so a connection can never be early."""

    def __init__(self, port: int, log: Path) -> None:
        self.log, self.got = log, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            data = b""
            try:
                while len(data) < 65536 and (chunk := conn.recv(4096)):
                    data += chunk
            except OSError:
                pass
            conn.close()
            self.got.append({"peer": list(peer), "data": data.decode(errors="replace")})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.log.write_text(json.dumps(self.got))


def _seccomp():
    """Docker's default profile, the parts a grader meets (see DENIED), to be loaded as
    runc does: with CAP_SYS_ADMIN still held, so without no_new_privs.  Made before the
    chroot (libseccomp's binding is the host's)."""
    import seccomp
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    f.set_attr(seccomp.Attr.CTL_NNP, 0)
    for name in DENIED:
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for flag in CLONE_NEW_FLAGS:
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                   seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


def _capabilities() -> None:
    """Only DOCKER_CAPS: out of the bounding set (root's exec gets no more), and out of
    the effective, permitted and inheritable sets now; no ambient ones."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    keep = set(DOCKER_CAPS.values())
    for cap in range(last + 1):
        if cap not in keep and libc.prctl(24, cap, 0, 0, 0) != 0:        # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
    libc.prctl(47, 4, 0, 0, 0)                          # PR_CAP_AMBIENT, _CLEAR_ALL
    mask = sum(1 << c for c in keep)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)       # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, mask & 0xFFFFFFFF,
                                 mask >> 32, mask >> 32, mask >> 32)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def inside(argv: list[str]) -> int:
    opts, cmd = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    o = dict(zip(opts[::2], opts[1::2]))
    root = Path(o["--root"])
    _mount_fs(root, o.get("--overlay"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
    listener = None
    if "--listen" in o:
        port, log = o["--listen"].split(":", 1)
        listener = _Listener(int(port), Path(log))
    docker_profile = _seccomp()
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir(o["--cwd"])
            socket.sethostname(os.urandom(6).hex())      # Docker: the container's id
            docker_profile.load()
            _capabilities()
            os.execve(cmd[0], cmd, ENV)
        except BaseException as exc:                      # noqa: BLE001
            print(f"gradescope_container: {type(exc).__name__}: {exc}", file=sys.stderr)
        os._exit(127)
    if listener:
        listener.thread.start()
    status = 0
    while True:                                          # PID 1 reaps every orphan
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(st)
            break
    if listener:
        listener.close()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    if sys.argv[1:2] == ["inside"]:
        sys.exit(inside(sys.argv[2:]))
    print("usage: gradescope_container.py inside --root DIR [--overlay LOWER:UPPER:WORK] "
          "[--listen PORT:LOG] --cwd DIR -- ARGV...", file=sys.stderr)
    sys.exit(2)
