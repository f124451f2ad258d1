"""``nattrack notebook``: JupyterLab on ``notebooks/`` for a class.

    sudo nattrack notebook                 # lab up (if none), Jupyter as $SUDO_USER
    nattrack notebook                      # no root: uses a running lab, else replay mode
    nattrack notebook --ip 0.0.0.0         # inside the classroom VM (port forwarded to
                                           # the host's 127.0.0.1 by the Vagrantfile)

Jupyter listens on 127.0.0.1 with a fresh random token (passed in the environment,
not on the command line, so ``ps`` does not show it) and the URL with the token is
printed once the server answers.  The lab service runs as root; Jupyter and its
notebook kernels never do: as root the launcher starts the lab the notebooks use,
then runs Jupyter as ``--user`` (or ``$SUDO_USER``) with the ``nattrack`` group
added for this process only, so the kernels may talk to the lab socket.  A lab the
launcher started is stopped when Jupyter stops (Ctrl-C).
"""
from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..lab import GROUP, REPO_ROOT, LabError, Paths

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
READY_TIMEOUT = 60.0


@dataclass
class Account:
    """Who Jupyter runs as when the launcher is root."""
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str


def lab_wanted() -> tuple[str, str]:
    """(topology, mode) of the lab the notebooks use, as nattrack.notebook declares it."""
    from ..notebook import scenarios as sc
    return sc.TOPOLOGY, sc.LAB_MODE


def lab_answers(paths: Paths | None = None) -> dict | None:
    """The running lab's status, or None when no lab service answers."""
    from ..lab.client import LabClient
    try:
        return LabClient((paths or Paths()).sock, timeout=5).status()
    except LabError:
        return None


def resolve_account(user: str | None) -> Account:
    """The ordinary account Jupyter runs as (root only): --user, else $SUDO_USER."""
    name = user or os.environ.get("SUDO_USER")
    if not name:
        raise LabError("as root, Jupyter runs as an ordinary user: pass --user USER "
                       "(or run `sudo nattrack notebook` from your own account)")
    try:
        pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise LabError(f"--user {name}: no such user") from None
    if pw.pw_uid == 0:
        raise LabError("Jupyter never runs as root (its kernels run the notebooks' code): "
                       "pass --user USER, an ordinary account")
    groups = sorted({g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem} | {pw.pw_gid})
    try:
        groups = sorted(set(groups) | {grp.getgrnam(GROUP).gr_gid})
    except KeyError:
        pass                                # no lab ever ran here: the socket is root's only
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


# JupyterLab settings defaults for a class (offline): no news prompt, no update check, and
# the notebooks' own kernel started without asking (JupyterLab otherwise sometimes opens
# a "Select Kernel" dialog when a notebook is opened by its URL).
SETTINGS_OVERRIDES = {"@jupyterlab/apputils-extension:notification":
                      {"fetchNews": "false", "checkForUpdates": False},
                      "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True}}


def jupyter_argv(ip: str, port: int, root_dir: Path, settings_dir: Path) -> list[str]:
    """JupyterLab, offline-friendly: no browser, no news feed, no update check."""
    return [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={ip}",
            f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root_dir}",
            "--LabApp.news_url=None", f"--LabApp.app_settings_dir={settings_dir}",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements."
            "NeverCheckForUpdate"]


def make_scratch(account: Account | None) -> Path:
    """A private directory for this run: the settings overrides, and HOME for an account
    without a usable home (e.g. nobody)."""
    scratch = Path(tempfile.mkdtemp(prefix="nattrack-jupyter-"))
    (scratch / "settings").mkdir()
    (scratch / "settings" / "overrides.json").write_text(json.dumps(SETTINGS_OVERRIDES))
    if account is not None:
        for p in (scratch, scratch / "settings", scratch / "settings" / "overrides.json"):
            os.chown(p, account.uid, account.gid)
    return scratch


def jupyter_env(token: str, account: Account | None, scratch: Path) -> dict[str, str]:
    env = dict(os.environ, JUPYTER_TOKEN=token)
    pp = env.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in pp.split(os.pathsep):   # the kernels import this checkout's nattrack
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    for k in ("SUDO_USER", "SUDO_UID", "SUDO_GID", "SUDO_COMMAND", "MAIL"):
        env.pop(k, None)
    if account is not None:
        env.update(USER=account.name, LOGNAME=account.name, HOME=account.home)
        if not _home_usable(account):            # no writable home (e.g. nobody)
            env["HOME"] = str(scratch)
    return env


def _home_usable(account: Account) -> bool:
    try:
        st = os.stat(account.home)
    except OSError:
        return False
    return st.st_uid == account.uid and bool(st.st_mode & 0o200)


def drop_privileges_argv(account: Account) -> list[str]:
    return ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}",
            f"--groups={','.join(map(str, account.groups))}", "--"]


def import_problem(account: Account, pythonpath: str, modules: str) -> str:
    """'' when ``account`` can import ``modules`` with this interpreter, else the error line.

    Jupyter runs as the account: a checkout (or virtualenv) it cannot reach would otherwise
    end in 'No module named jupyterlab' and a guess about the port."""
    r = subprocess.run(drop_privileges_argv(account) + [sys.executable, "-c", f"import {modules}"],
                       capture_output=True, text=True, cwd="/", timeout=60,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                            "PYTHONPATH": pythonpath, "HOME": "/"})
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = READY_TIMEOUT) -> bool:
    """True once something answers on 127.0.0.1:port (False if Jupyter died or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def url_for(ip: str, port: int, token: str) -> str:
    """The URL to open: 127.0.0.1 also for 0.0.0.0 (the VM's forwarded port)."""
    host = ip
    try:
        if ipaddress.ip_address(ip).is_unspecified:
            host = "127.0.0.1"
    except ValueError:
        pass
    return f"http://{host}:{port}/lab?token={token}"


def _check_args(args) -> None:
    if not 1 <= args.port <= 65535:
        raise LabError(f"--port {args.port}: a TCP port is 1..65535 (default 8888)")
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise LabError(f"--ip {args.ip}: an IPv4 or IPv6 address, e.g. 127.0.0.1 or 0.0.0.0 "
                       f"inside the classroom VM") from None
    if not NOTEBOOK_DIR.is_dir():
        raise LabError(f"{NOTEBOOK_DIR} is missing: run this from a full clone of the kit")


def ensure_lab(no_lab: bool) -> bool:
    """Make sure the lab the notebooks use is up; True when this call started it."""
    if no_lab:
        print("nattrack: --no-lab: the notebooks run in replay mode unless a lab is up")
        return False
    st = lab_answers()
    if st is not None:
        topo, _mode = lab_wanted()
        if st.get("topo") != topo:
            print(f"nattrack: the running lab is {st.get('topo')!r}, the notebooks need {topo!r}: "
                  f"they use replay mode until you stop it (`sudo nattrack lab down`) and run "
                  f"`sudo nattrack notebook` again")
        else:
            print(f"nattrack: using the running lab ({st.get('topo')}, {st.get('mode')} mode)")
        return False
    if os.geteuid() != 0:
        print("nattrack: no lab is running: run `sudo nattrack notebook` to start one; "
              "continuing in replay mode")
        return False
    from .lab import lab_up
    topo, mode = lab_wanted()
    print(f"nattrack: starting the lab ({topo}, {mode} mode) ...", flush=True)
    lab_up(topo, mode, None, [], quiet=True)
    return True


def run_notebook(args) -> int:
    _check_args(args)
    account = resolve_account(args.user) if os.geteuid() == 0 else None
    if account is None and args.user:
        raise LabError("--user only applies when the launcher runs as root (sudo)")
    if account is not None:
        why = import_problem(account, str(REPO_ROOT), "jupyterlab, ipywidgets, nattrack")
        if why:
            raise LabError(f"{account.name} cannot run JupyterLab from {sys.executable} ({why}): "
                           f"the checkout and its .venv must be readable by {account.name}, "
                           f"e.g. chmod o+x on the folders above {REPO_ROOT}")
    started_lab = ensure_lab(args.no_lab)
    scratch = None
    try:
        scratch = make_scratch(account)
        token = secrets.token_hex(24)
        argv = jupyter_argv(args.ip, args.port, NOTEBOOK_DIR, scratch / "settings")
        if account is not None:
            argv = drop_privileges_argv(account) + argv
        proc = subprocess.Popen(argv, env=jupyter_env(token, account, scratch),
                                cwd=str(NOTEBOOK_DIR), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return _serve(proc, args, token, account)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if started_lab:
            from .lab import lab_down
            try:
                lab_down()
            except LabError as exc:
                print(f"nattrack: {exc}", file=sys.stderr)


def _serve(proc: subprocess.Popen, args, token: str, account: Account | None) -> int:
    stopping = []

    def on_signal(signum, frame):                   # noqa: ARG001
        stopping.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if wait_ready(args.port, proc):
            who = f" as {account.name}" if account else ""
            print(f"JupyterLab{who} on {args.ip}:{args.port}; open:\n  "
                  f"{url_for(args.ip, args.port, token)}", flush=True)
            if not ipaddress.ip_address(args.ip).is_loopback:
                print(f"nattrack: listening on {args.ip}: anyone who reaches port {args.port} "
                      f"with the token runs code here; use it only in a VM whose port is "
                      f"forwarded to the host's 127.0.0.1", flush=True)
        elif not stopping:
            rc = proc.poll()
            _stop(proc)
            raise LabError(f"JupyterLab did not start on port {args.port}"
                           + (f" (exit {rc})" if rc is not None else "")
                           + ": is the port in use? try --port 8889")
        while proc.poll() is None:
            try:
                proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
        return 0 if stopping else (proc.returncode or 0)
    finally:
        _stop(proc)
        for s, h in old.items():
            signal.signal(s, h)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to Jupyter's process group (its kernels too), SIGKILL after 10 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:                                            # kernels left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cmd_notebook(args) -> int:
    try:
        return run_notebook(args)
    except LabError as exc:
        print(f"nattrack: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def register(sub) -> None:
    """Add the `notebook` subcommand to the top-level parser."""
    p = sub.add_parser("notebook", help="JupyterLab on the kit's notebooks, for a class",
                       description="Start JupyterLab on notebooks/ (127.0.0.1, with a token). "
                                   "As root: bring up the lab the notebooks use, then run "
                                   "Jupyter as --user or $SUDO_USER, never as root.")
    p.add_argument("--port", type=int, default=8888, help="TCP port (default 8888)")
    p.add_argument("--ip", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 inside the classroom "
                        "VM whose port is forwarded to the host's 127.0.0.1)")
    p.add_argument("--no-lab", action="store_true",
                   help="do not start the lab (the notebooks use replay mode unless one is up)")
    p.add_argument("--user", metavar="USER",
                   help="(root) the ordinary account Jupyter runs as (default $SUDO_USER)")
    p.set_defaults(func=cmd_notebook)
