"""next_state() phones home: it sends the arguments the grader passed it (a hidden test's
inputs) to a listener on this machine's loopback, by every way it knows, and returns what
happened; timeout_for() is right.  Loopback only: the test's listener is its one target."""
import ctypes
import os
import socket

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}
PORT = 47614                                   # tests/test_grading_hostile.py listens here


def _try(what, fn):
    try:
        fn()
        return f"REACHED {what}"
    except Exception as exc:                       # noqa: BLE001
        return f"no {what}: {type(exc).__name__}"


def _tcp(said):
    with socket.create_connection(("127.0.0.1", PORT), timeout=2) as s:
        s.sendall(f"PHONE {said}\n".encode())


def _tcp6(said):
    with socket.create_connection(("::1", PORT), timeout=2) as s:
        s.sendall(f"PHONE {said}\n".encode())


def _raw(family, kind):
    socket.socket(family, kind).close()


def _x32_socket():
    # x86_64's x32 ABI: socket() is 0x40000000 | 41
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(0x40000000 | 41, 2, 1, 0) < 0:
        raise OSError(ctypes.get_errno(), "x32 socket")


def _new_netns():
    # a user and network namespace of its own: where CAP_NET_RAW would be ours
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def next_state(state, direction, flag):
    said = f"{state} {direction} {flag}"
    tries = [
        _try("127.0.0.1", lambda: _tcp(said)),
        _try("::1", lambda: _tcp6(said)),
        _try("a packet socket", lambda: _raw(socket.AF_PACKET, socket.SOCK_RAW)),
        _try("a netlink socket", lambda: _raw(socket.AF_NETLINK, socket.SOCK_RAW)),
        _try("a new network namespace", _new_netns),
    ]
    if os.uname().machine == "x86_64":
        tries.append(_try("an x32 socket", _x32_socket))
    return "\n".join(tries)


def timeout_for(state):
    return TIMEOUTS[state]
