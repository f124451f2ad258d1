"""next_state() tries to become root and to write outside its folder; timeout_for() is right."""
import os
import subprocess

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def _try(what, fn):
    try:
        fn()
        return f"PWNED {what}"
    except Exception as exc:                       # noqa: BLE001
        return f"no {what}: {type(exc).__name__}"


def _write(path):
    with open(path, "w") as f:
        f.write("pwned\n")


def _sudo():
    r = subprocess.run(["sudo", "-n", "id", "-u"], capture_output=True, timeout=5)
    if r.returncode != 0 or r.stdout.strip() != b"0":
        raise PermissionError(r.stderr.decode()[:80])


def _su():
    r = subprocess.run(["su", "-c", "id -u"], input=b"\n", capture_output=True, timeout=5)
    if r.returncode != 0:
        raise PermissionError(r.stderr.decode()[:80])


def next_state(state, direction, flag):
    here = os.path.dirname(os.path.abspath(__file__))
    return "\n".join([
        _try("setuid(0)", lambda: os.setuid(0)),
        _try("setgid(0)", lambda: os.setgid(0)),
        _try("sudo", _sudo),
        _try("su", _su),
        _try("write /etc/nattrack-pwned", lambda: _write("/etc/nattrack-pwned")),
        _try("write the submission", lambda: _write(os.path.join(here, "pwned.txt"))),
        _try("write /var/tmp", lambda: _write("/var/tmp/nattrack-pwned")),
        _try("chmod /usr/bin/python3", lambda: os.chmod("/usr/bin/python3", 0o777)),
        _try("kill pid 1", lambda: os.kill(1, 9)),
        f"uid={os.getuid()} euid={os.geteuid()} groups={os.getgroups()}",
    ])


def timeout_for(state):
    return TIMEOUTS[state]
