"""`nattrack notebook`: its checks and choices (no Jupyter), and as root the whole
command: it starts the classroom lab, serves Jupyter as nobody, and on Ctrl-C stops
Jupyter and the lab it started."""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nattrack.cli import notebook as nbcli
from nattrack.cli.main import main
from nattrack.lab import LabError

from .conftest import need_root
from .nbrun import REPO


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["notebook", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, says", [
    (["--port", "0"], "--port 0: a TCP port is 1..65535"),
    (["--port", "70000"], "--port 70000"),
    (["--ip", "localhost:80"], "--ip localhost:80: an IPv4 or IPv6 address"),
])
def test_bad_arguments_are_one_line(capsys, argv, says):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("nattrack: " + says) and err.count("\n") == 1


def test_jupyter_never_runs_as_root():
    with pytest.raises(LabError, match="never runs as root"):
        nbcli.resolve_account("root")
    with pytest.raises(LabError, match="no such user"):
        nbcli.resolve_account("no-such-user-nattrack")


def test_root_needs_a_user(monkeypatch):
    monkeypatch.delenv("SUDO_USER", raising=False)
    with pytest.raises(LabError, match="pass --user USER"):
        nbcli.resolve_account(None)
    monkeypatch.setenv("SUDO_USER", "nobody")
    acct = nbcli.resolve_account(None)
    assert (acct.name, acct.uid) == ("nobody", pwd.getpwnam("nobody").pw_uid)


def test_user_only_as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    args = argparse.Namespace(port=8888, ip="127.0.0.1", no_lab=True, user="nobody")
    with pytest.raises(LabError, match="--user only applies when the launcher runs as root"):
        nbcli.run_notebook(args)


def test_without_root_and_lab_it_says_so_and_goes_on(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("NATTRACK_RUN_DIR", str(tmp_path))
    assert nbcli.ensure_lab(no_lab=False) is False
    out = capsys.readouterr().out
    assert out == ("nattrack: no lab is running: run `sudo nattrack notebook` to start one; "
                   "continuing in replay mode\n")


def test_url_and_environment():
    assert nbcli.url_for("127.0.0.1", 8888, "abc") == "http://127.0.0.1:8888/lab?token=abc"
    assert nbcli.url_for("0.0.0.0", 9000, "t") == "http://127.0.0.1:9000/lab?token=t"
    acct = nbcli.Account("nobody", 65534, 65534, [65534], "/nonexistent")
    scratch = Path(tempfile.mkdtemp())
    try:
        env = nbcli.jupyter_env("tok", acct, scratch)
    finally:
        os.rmdir(scratch)
    assert env["JUPYTER_TOKEN"] == "tok" and env["HOME"] == str(scratch)
    assert str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    assert not any(k.startswith("SUDO_") for k in env)
    argv = nbcli.jupyter_argv("127.0.0.1", 8888, REPO / "notebooks", scratch)
    assert "tok" not in " ".join(argv)                     # the token is not in `ps`
    assert nbcli.drop_privileges_argv(acct)[:3] == ["setpriv", "--reuid=65534", "--regid=65534"]


def test_launcher_starts_the_lab_and_stops_it(tmp_path):
    """As root, without --no-lab: the classroom lab comes up, Jupyter runs as nobody,
    Ctrl-C stops Jupyter and the lab (nothing left)."""
    need_root("the launcher's lab start")
    from nattrack.cli.notebook import lab_wanted
    from .test_browser import free_port, jupyter_pids
    run_dir = Path(tempfile.mkdtemp(prefix="ntnb-launch-", dir="/tmp"))
    os.chmod(run_dir, 0o755)
    env = dict(os.environ, NATTRACK_RUN_DIR=str(run_dir), PYTHONPATH=str(REPO))
    env.pop("SUDO_USER", None)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nattrack.cli.main", "notebook", "--user",
                             "nobody", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "token=" in line:
                break
        assert any("token=" in l for l in lines), "".join(lines) + proc.stderr.read()
        topo, mode = lab_wanted()
        assert f"starting the lab ({topo}, {mode} mode)" in "".join(lines)
        assert "JupyterLab as nobody" in "".join(lines)
        st = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "lab", "status"],
                            env=env, capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and f"lab {topo} ({mode} mode)" in st.stdout
        users = {pwd.getpwuid(os.stat(f"/proc/{p}").st_uid).pw_name for p in jupyter_pids(port)}
        assert users == {"nobody"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert jupyter_pids(port) == []
        assert not (run_dir / "lab.sock").exists(), "the lab it started is still up"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        subprocess.run([sys.executable, "-m", "nattrack.cli.main", "lab", "down", "--force"],
                       env=env, capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", str(run_dir)])


def test_an_account_that_cannot_reach_the_kit_is_told_so():
    """Jupyter runs as the account: the launcher checks first that it can import what it
    needs from where it is, instead of failing later with a guess about the port."""
    need_root("running Jupyter as another user")
    acct = nbcli.Account("nobody", 65534, 65534, [65534], "/nonexistent")
    private = Path(tempfile.mkdtemp(prefix="ntnb-private-"))       # 0700, like a home
    try:
        (private / "ntprobe_mod.py").write_text("")
        why = nbcli.import_problem(acct, str(private), "ntprobe_mod")
        assert "No module named 'ntprobe_mod'" in why
        os.chmod(private, 0o755)
        assert nbcli.import_problem(acct, str(private), "ntprobe_mod") == ""
        assert nbcli.import_problem(acct, str(REPO), "jupyterlab, ipywidgets, nattrack") == ""
    finally:
        shutil.rmtree(private, ignore_errors=True)
