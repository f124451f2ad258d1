"""The grader's seccomp filter (nattrack/grading/seccomp.py), in two ways:

- the BPF program itself, run by a small classic-BPF interpreter here on ``seccomp_data``
  of both machines (x86_64 and aarch64), with the syscall numbers checked against
  libseccomp's own tables (python3-seccomp);
- the real kernel: a child process installs the filter and tries the network (a listener
  on 127.0.0.1 started by the test), ptrace, namespaces, mounts...; the same child without
  the filter shows each of those works (or at least is not refused with EPERM), so every
  check here can fail.  As root, and as an unprivileged uid.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from listener import Listener
from nattrack.grading import seccomp
from nattrack.grading.sandbox import sandbox_uid

REPO = Path(__file__).resolve().parents[1]
ROOT = os.geteuid() == 0
HERE = seccomp.machine_arch()


# --- the program, interpreted -------------------------------------------------------------

def run_filter(prog, nr: int, audit_arch: int, args=(0,) * 6) -> int:
    """What the kernel's classic BPF would return for this ``seccomp_data``."""
    args = [int(a) & (2 ** 64 - 1) for a in args] + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, audit_arch, 0, *args)
    pc, acc = 0, 0
    for _ in range(len(prog)):                    # classic BPF only jumps forward
        code, jt, jf, k = prog[pc]
        if code == 0x20:                          # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):          # jeq, jge, jset
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:                        # ret k
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x} at {pc}")
    raise AssertionError("fell off the end of the program")


EPERM = seccomp.RET_ERRNO | errno.EPERM
ALLOW = seccomp.RET_ALLOW


@pytest.mark.parametrize("name", sorted(seccomp.ARCHES))
def test_the_numbers_are_libseccomps(name):
    import seccomp as libseccomp            # python3-seccomp: an independent table
    arch = seccomp.ARCHES[name]
    lib_arch = {"x86_64": libseccomp.Arch.X86_64, "aarch64": libseccomp.Arch.AARCH64}[name]
    assert int(lib_arch) & 0xFFFFFFFF == arch.audit_arch
    for call, nr in arch.numbers.items():
        assert libseccomp.resolve_syscall(lib_arch, call) == nr, (name, call)
    assert {r.syscall for r in seccomp.RULES} <= set(arch.numbers)


@pytest.mark.parametrize("name", sorted(seccomp.ARCHES))
def test_the_program_decides_as_the_table_says(name):
    arch = seccomp.ARCHES[name]
    prog = seccomp.program(arch)
    assert len(prog) < 4096                              # BPF_MAXINSNS
    n = arch.numbers

    def verdict(call, *args, nr=None, audit=arch.audit_arch):
        return run_filter(prog, n[call] if nr is None else nr, audit, args or (0,) * 6)

    for rule in seccomp.RULES:
        if rule.allow_arg0 is None and not rule.deny_arg0_bits:
            assert verdict(rule.syscall) == seccomp.RET_ERRNO | rule.errno, rule
    assert verdict("clone3") == seccomp.RET_ERRNO | errno.ENOSYS
    for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET, socket.AF_NETLINK, 40, 30):
        assert verdict("socket", fam, socket.SOCK_STREAM, 0) == EPERM, fam       # 40 VSOCK
        assert verdict("socketpair", fam, socket.SOCK_STREAM, 0) == EPERM, fam
    assert verdict("socket", socket.AF_UNIX, socket.SOCK_STREAM, 0) == ALLOW
    assert verdict("socket", socket.AF_UNIX | (1 << 32)) == ALLOW    # the kernel reads an int
    assert verdict("socketpair", socket.AF_UNIX) == ALLOW
    sigchld = 17
    assert verdict("clone", sigchld | 0x00011F00) == ALLOW           # fork, threads
    for bit in range(32):
        flag = 1 << bit
        want = EPERM if flag & seccomp.CLONE_NEW_ANY else ALLOW
        assert verdict("clone", flag | sigchld) == want, hex(flag)
    # calls no rule names pass: read, write, openat, and a number past every table
    for nr in (0, 1, 63, 64, 56 if name == "aarch64" else 257, 460):
        assert run_filter(prog, nr, arch.audit_arch) == ALLOW, nr
    # another ABI on the same machine is killed: i386 (0x40000003), arm (0x40000028)
    for other in (0x40000003, 0x40000028, 0xC00000B7 ^ arch.audit_arch ^ 0xC000003E):
        assert run_filter(prog, 0, other) == seccomp.RET_KILL_PROCESS, hex(other)
    if arch.x32_bit:                                     # x32: socket() and read() alike
        assert run_filter(prog, arch.x32_bit | 41, arch.audit_arch, (2, 1, 0, 0, 0, 0)) == EPERM
        assert run_filter(prog, arch.x32_bit | 0, arch.audit_arch) == EPERM


def test_an_unknown_machine_is_refused(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    before = seccomp.check()["seccomp"]
    with pytest.raises(seccomp.SeccompUnavailable,
                       match=r"^no seccomp syscall table for this machine \(riscv64\)"):
        seccomp.install()
    assert seccomp.check()["seccomp"] == before         # nothing was installed here


def test_a_32_bit_python_on_a_64_bit_kernel_is_refused(monkeypatch):
    import ctypes
    monkeypatch.setattr(ctypes, "sizeof", lambda t: 4)
    with pytest.raises(seccomp.SeccompUnavailable, match=r"^a 32-bit Python on a 64-bit"):
        seccomp.install()


# --- the real kernel ---------------------------------------------------------------------

CHILD = r"""
import ctypes, errno, json, os, signal, socket, subprocess, sys, threading, time
from nattrack.grading import seccomp
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
arch = seccomp.machine_arch()
port, filtered = int(sys.argv[1]), sys.argv[2] == "filter"
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17

def raw(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

def call(name, *args):
    return lambda: raw(arch.numbers[name], *args)

def in_child(fn):
    # namespaces change the caller: try in a forked child, report its errno back
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os.write(w, b"0")
        except OSError as e:
            os.write(w, str(e.errno).encode())
        os._exit(0)
    os.close(w)
    got = int(os.read(r, 16) or b"-1")
    os.waitpid(pid, 0)
    if got:
        raise OSError(got, os.strerror(got))

def clone_new(flags):
    def go():
        pid = raw(arch.numbers["clone"], flags | SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return go

def family(fam, kind=socket.SOCK_DGRAM):
    return lambda: socket.socket(fam, kind).close()

def phone_home():
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PHONE " + (b"filtered" if filtered else b"open"))

def ptrace_my_child():
    pid = os.fork()
    if pid == 0:
        time.sleep(10)
        os._exit(0)
    try:
        if libc.ptrace(16, pid, None, None) != 0:            # PTRACE_ATTACH
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

def unix_and_pipes():
    a, b = socket.socketpair()
    a.sendall(b"u")
    assert b.recv(1) == b"u"
    r, w = os.pipe()
    os.write(w, b"p")
    assert os.read(r, 1) == b"p"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.close()
    out = []
    t = threading.Thread(target=out.append, args=(1,))
    t.start()
    t.join()
    assert out == [1]
    assert subprocess.run(["/bin/true"]).returncode == 0

checks = {
    "AF_INET": family(socket.AF_INET, socket.SOCK_STREAM),
    "AF_INET6": family(socket.AF_INET6),
    "AF_PACKET": family(socket.AF_PACKET, socket.SOCK_RAW),
    "AF_NETLINK": family(socket.AF_NETLINK, socket.SOCK_RAW),
    "connect 127.0.0.1": phone_home,
    "ptrace": ptrace_my_child,
    "process_vm_readv": call("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0),
    "unshare NEWUSER": lambda: in_child(call("unshare", CLONE_NEWUSER)),
    "unshare NEWNET": lambda: in_child(call("unshare", CLONE_NEWNET)),
    "clone NEWUSER": lambda: in_child(clone_new(CLONE_NEWUSER)),
    "setns": lambda: in_child(lambda: raw(arch.numbers["setns"],
                                          os.open("/proc/self/ns/net", os.O_RDONLY), 0)),
    "clone3": call("clone3", 0, 0),
    "mount": call("mount", 0, 0, 0, 0, 0),
    "umount2": call("umount2", 0, 0),
    "pivot_root": call("pivot_root", 0, 0),
    "bpf": call("bpf", 0xFFFF, 0, 0),
    "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
    "io_uring_setup": call("io_uring_setup", 1, 0),
    "userfaultfd": call("userfaultfd", 0xFFFF),
    "keyctl": call("keyctl", 0xFFFF),
    "init_module": call("init_module", 0, 0, 0),
    "unix, pipes, threads, subprocess": unix_and_pipes,
}
if arch.x32_bit:
    checks["x32 socket"] = lambda: raw(arch.x32_bit | 41, 2, 1, 0)
if filtered:
    seccomp.install()
out = {}
for name, fn in checks.items():
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
out["status"] = seccomp.check()
print(json.dumps(out))
"""

DENIED_EPERM = ["AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK", "connect 127.0.0.1",
                "ptrace", "process_vm_readv", "unshare NEWUSER", "unshare NEWNET",
                "clone NEWUSER", "setns", "mount", "umount2", "pivot_root", "bpf",
                "perf_event_open", "io_uring_setup", "userfaultfd", "keyctl", "init_module"]
# what works without the filter for anyone (the rest needs root or is refused anyway)
WORKS_UNFILTERED = ["AF_INET", "AF_INET6", "AF_NETLINK", "connect 127.0.0.1", "ptrace",
                    "process_vm_readv"]
WORKS_UNFILTERED_ROOT = WORKS_UNFILTERED + ["AF_PACKET", "unshare NEWUSER", "unshare NEWNET",
                                            "clone NEWUSER", "setns"]


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1: its port, and what every connection sent it."""
    with Listener() as ear:
        yield ear.port, ear.got


def run_child(port: int, mode: str, uid: int | None) -> dict:
    pre = []
    if uid is not None:
        pre = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    r = subprocess.run([*pre, sys.executable, "-s", "-c", CHILD, str(port), mode],
                       capture_output=True, text=True, timeout=60, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


WHO = ["root", "unprivileged"] if ROOT else ["unprivileged"]


@pytest.mark.parametrize("who", WHO)
def test_a_filtered_process_is_off_the_network_and_out_of_others(listener, who):
    port, got = listener
    uid = sandbox_uid() if who == "unprivileged" and ROOT else None
    open_ = run_child(port, "open", uid)
    assert open_["status"]["seccomp"] == seccomp.check()["seccomp"], open_    # as we are
    works = WORKS_UNFILTERED_ROOT if who == "root" else WORKS_UNFILTERED
    assert {k: open_[k] for k in works} == {k: "ok" for k in works}, open_
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:      # its thread may lag the child
        time.sleep(0.05)
    assert got == [b"PHONE open"], got                  # the listener hears an open child
    assert open_["unix, pipes, threads, subprocess"] == "ok"

    filt = run_child(port, "filter", uid)
    assert filt["status"] == {"seccomp": "2", "socket(AF_INET)": "denied",
                              "ptrace": "denied", "unshare": "denied"}, filt
    assert {k: filt[k] for k in DENIED_EPERM} == {k: "EPERM" for k in DENIED_EPERM}, filt
    assert filt["clone3"] == "ENOSYS"                    # so glibc falls back to clone()
    if HERE.x32_bit:
        assert filt["x32 socket"] == "EPERM"
    assert filt["unix, pipes, threads, subprocess"] == "ok"
    assert got == [b"PHONE open"], got                  # nothing more: the filtered one
                                                        # never reached it
