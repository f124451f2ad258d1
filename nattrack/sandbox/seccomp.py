"""A seccomp-BPF filter that keeps student code off the network and out of other processes.

The grader's worker installs it on itself (:func:`install`) before it imports a submission,
jail or no jail.  Where ``bwrap`` cannot build its jail (Gradescope's Docker containers: no
user namespaces, no CAP_SYS_ADMIN), this filter is what cuts the network off.

It is classic BPF written by hand (no libseccomp: Gradescope's Python may lack it), run by
the kernel's ``seccomp_run_filters()`` on every system call with a ``struct seccomp_data``
(``kernel/seccomp.c``'s ``populate_seccomp_data()``): the call's number, the ABI (``arch``)
and its six arguments.  The program:

1. a call from another ABI than the machine's own (i386 through ``int 0x80`` on x86_64,
   arm32 on aarch64) kills the process: the rules below are written with one ABI's numbers,
   and a second ABI would be a way round them;
2. on x86_64, any call of the x32 ABI (numbers with bit 30 set) fails with EPERM, for the
   same reason;
3. each rule of :data:`RULES`, in order, by system call name: deny (with its errno), or
   deny only when the first argument says so;
4. everything else is allowed.

Only x86_64 and aarch64 have syscall tables here; elsewhere :func:`install` refuses
(:class:`SeccompUnavailable`) and nothing claims the network is cut.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
from dataclasses import dataclass

__all__ = ["SeccompUnavailable", "RULES", "ARCHES", "install", "program", "check",
           "machine_arch"]


class SeccompUnavailable(RuntimeError):
    """The filter could not be installed here; the message says why (one line)."""


# --- the rules --------------------------------------------------------------------------------

# clone()'s namespace flags (include/uapi/linux/sched.h): CLONE_NEWTIME, NEWNS, NEWCGROUP,
# NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.  A new user namespace gives back every capability
# inside it; a new network namespace is a way to get CAP_NET_RAW there.
CLONE_NEW_ANY = (0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
                 | 0x10000000 | 0x20000000 | 0x40000000)


@dataclass(frozen=True)
class Rule:
    syscall: str
    why: str
    errno: int = errno.EPERM
    allow_arg0: int | None = None      # deny unless the first argument is exactly this
    deny_arg0_bits: int = 0            # deny only when the first argument has any of these


RULES: tuple[Rule, ...] = (
    # The network.  Only AF_UNIX sockets are allowed: AF_INET/AF_INET6 reach the internet
    # (or the grader's own loopback services), AF_PACKET/AF_NETLINK the interfaces and the
    # kernel's network configuration; AF_VSOCK, AF_TIPC, AF_RDS, AF_CAN... reach other
    # machines too, so allowing one family beats listing the ones to deny.  The kernel
    # reads the family as an int: the filter compares the argument's low 32 bits.
    Rule("socket", "no network sockets: only AF_UNIX", allow_arg0=socket.AF_UNIX),
    Rule("socketpair", "same as socket()", allow_arg0=socket.AF_UNIX),
    # io_uring runs its own socket()/connect() (IORING_OP_SOCKET) where the rule above
    # does not see them.
    Rule("io_uring_setup", "io_uring opens sockets the socket() rule cannot see"),
    Rule("io_uring_enter", "same as io_uring_setup()"),
    Rule("io_uring_register", "same as io_uring_setup()"),
    # Other processes: the grader's, another student's worker of the same uid range.
    Rule("ptrace", "no tracing or reading other processes"),
    Rule("process_vm_readv", "no reading another process's memory"),
    Rule("process_vm_writev", "no writing another process's memory"),
    # Namespaces: a new user+network namespace is the classic way round "no CAP_NET_RAW".
    # clone3() passes its flags in a struct the filter cannot read: ENOSYS makes glibc
    # fall back to clone() (Docker's default profile does the same).
    Rule("unshare", "no new namespaces"),
    Rule("setns", "no joining other namespaces"),
    Rule("clone", "no new namespaces through clone()", deny_arg0_bits=CLONE_NEW_ANY),
    Rule("clone3", "flags out of the filter's sight: glibc falls back to clone()",
         errno=errno.ENOSYS),
    # The file system tree and the kernel itself: none of it is for a submission.
    Rule("mount", "no mounts"),
    Rule("umount2", "no unmounts"),
    Rule("pivot_root", "no new root"),
    Rule("open_tree", "the new mount API, same as mount()"),
    Rule("move_mount", "the new mount API, same as mount()"),
    Rule("fsopen", "the new mount API, same as mount()"),
    Rule("fsmount", "the new mount API, same as mount()"),
    Rule("fspick", "the new mount API, same as mount()"),
    Rule("mount_setattr", "the new mount API, same as mount()"),
    Rule("bpf", "no BPF programs (they can read kernel memory, attach to sockets)"),
    Rule("perf_event_open", "no performance counters (side channels, kernel addresses)"),
    Rule("userfaultfd", "a classic tool for exploiting kernel races"),
    Rule("keyctl", "the kernel keyrings hold other users' secrets and are not namespaced"),
    Rule("add_key", "same as keyctl()"),
    Rule("request_key", "same as keyctl()"),
    Rule("kexec_load", "no new kernel"),
    Rule("kexec_file_load", "no new kernel"),
    Rule("init_module", "no kernel modules"),
    Rule("finit_module", "no kernel modules"),
    Rule("delete_module", "no kernel modules"),
)

# --- the machines ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    name: str
    audit_arch: int                    # AUDIT_ARCH_* (include/uapi/linux/audit.h)
    numbers: dict                      # syscall name -> number
    x32_bit: int = 0                   # x86_64: numbers with this bit are the x32 ABI


# arch/x86/entry/syscalls/syscall_64.tbl
_X86_64 = dict(
    socket=41, socketpair=53, ptrace=101, process_vm_readv=310, process_vm_writev=311,
    unshare=272, setns=308, clone=56, clone3=435, mount=165, umount2=166, pivot_root=155,
    open_tree=428, move_mount=429, fsopen=430, fsmount=432, fspick=433, mount_setattr=442,
    bpf=321, perf_event_open=298, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
    io_uring_register=427, keyctl=250, add_key=248, request_key=249, kexec_load=246,
    kexec_file_load=320, init_module=175, finit_module=313, delete_module=176, seccomp=317)

# include/uapi/asm-generic/unistd.h (aarch64 uses the generic table)
_AARCH64 = dict(
    socket=198, socketpair=199, ptrace=117, process_vm_readv=270, process_vm_writev=271,
    unshare=97, setns=268, clone=220, clone3=435, mount=40, umount2=39, pivot_root=41,
    open_tree=428, move_mount=429, fsopen=430, fsmount=432, fspick=433, mount_setattr=442,
    bpf=280, perf_event_open=241, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
    io_uring_register=427, keyctl=219, add_key=217, request_key=218, kexec_load=104,
    kexec_file_load=294, init_module=105, finit_module=273, delete_module=106, seccomp=277)

ARCHES = {
    "x86_64": Arch("x86_64", 0xC000003E, _X86_64, x32_bit=0x40000000),
    "aarch64": Arch("aarch64", 0xC00000B7, _AARCH64),
}


def machine_arch() -> Arch:
    """This machine's :class:`Arch`, or :class:`SeccompUnavailable` for one without a table."""
    m = platform.machine()
    arch = ARCHES.get({"amd64": "x86_64", "arm64": "aarch64"}.get(m.lower(), m))
    if arch is None:
        raise SeccompUnavailable(f"no seccomp syscall table for this machine ({m}); only "
                                 f"x86_64 and aarch64 are known")
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        # uname names the kernel: a 32-bit (or x32) Python on it makes its calls in another
        # ABI, which the filter would kill at once
        raise SeccompUnavailable(f"a 32-bit Python on a 64-bit {m} kernel: its system "
                                 f"calls are not the {m} ones the filter knows")
    return arch


# --- classic BPF ----------------------------------------------------------------------------

_LD_W_ABS = 0x20            # BPF_LD | BPF_W | BPF_ABS: A = the 32-bit word at offset k
_JEQ = 0x15                 # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35                 # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45                # BPF_JMP | BPF_JSET | BPF_K: jump if A & k
_RET = 0x06                 # BPF_RET | BPF_K

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
# Both machines are little-endian: an argument's low 32 bits come first.
_NR, _ARCH, _ARG0_LOW = 0, 4, 16


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _rule_block(rule: Rule) -> list:
    """What runs once the call's number matched: it always ends in a return."""
    deny = _ins(_RET, RET_ERRNO | rule.errno)
    allow = _ins(_RET, RET_ALLOW)
    if rule.allow_arg0 is not None:
        return [_ins(_LD_W_ABS, _ARG0_LOW), _ins(_JEQ, rule.allow_arg0, 0, 1), allow, deny]
    if rule.deny_arg0_bits:
        return [_ins(_LD_W_ABS, _ARG0_LOW), _ins(_JSET, rule.deny_arg0_bits, 0, 1), deny, allow]
    return [deny]


def program(arch: Arch) -> list[tuple[int, int, int, int]]:
    """The filter for ``arch``, as ``(code, jt, jf, k)`` instructions."""
    prog = [_ins(_LD_W_ABS, _ARCH),
            _ins(_JEQ, arch.audit_arch, 1, 0),
            _ins(_RET, RET_KILL_PROCESS),
            _ins(_LD_W_ABS, _NR)]
    if arch.x32_bit:
        prog += [_ins(_JGE, arch.x32_bit, 0, 1), _ins(_RET, RET_ERRNO | errno.EPERM)]
    for rule in RULES:
        block = _rule_block(rule)
        # not this call: skip its block (A still holds the number: blocks end in a return)
        prog.append(_ins(_JEQ, arch.numbers[rule.syscall], 0, len(block)))
        prog += block
    prog.append(_ins(_RET, RET_ALLOW))
    return prog


# --- installing it --------------------------------------------------------------------------

_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1     # every thread of the process, not only the caller


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on this process, for good (it is inherited by every child and
    cannot be removed).  Sets ``no_new_privs`` first, which lets an unprivileged process
    install a filter.  Raises :class:`SeccompUnavailable` with one line when it cannot."""
    arch = machine_arch()
    insns = program(arch)
    raw = b"".join(struct.pack("=HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS): "
                                 f"{os.strerror(ctypes.get_errno())}")
    rc = libc.syscall(ctypes.c_long(arch.numbers["seccomp"]),
                      ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if rc != 0:
        err = ctypes.get_errno()
        raise SeccompUnavailable(f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}"
                                 + (" (a kernel without seccomp filters?)"
                                    if err == errno.EINVAL else ""))


# --- what holds, tried for real -------------------------------------------------------------

def _try(fn) -> str:
    """'denied' when the call failed with EPERM (what the filter answers), else 'allowed'
    or the error it met."""
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return "denied" if exc.errno == errno.EPERM else errno.errorcode.get(exc.errno or 0, "error")


def _inet_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def _ptrace_nobody() -> None:
    # PTRACE_ATTACH to pid 0: no such process (ESRCH) unless the filter answers first
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, 0, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unshare_nothing() -> None:
    # unshare(0) changes nothing; only the filter makes it fail
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def check() -> dict[str, str]:
    """Try what the filter should deny, harmlessly, in this process: ``{"socket(AF_INET)":
    "denied"|"allowed"|errno name, "ptrace": ..., "unshare": ...}`` and ``"seccomp"``, the
    ``Seccomp:`` mode of /proc/self/status ("2" once a filter is on)."""
    mode = "?"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    mode = line.split()[1]
    except OSError:
        pass
    return {"seccomp": mode, "socket(AF_INET)": _try(_inet_socket),
            "ptrace": _try(_ptrace_nobody), "unshare": _try(_unshare_nothing)}
