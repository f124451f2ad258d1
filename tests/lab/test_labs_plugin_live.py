"""A lab submission in the live router: it is imported only after the router gave up root.

``nattrack lab up --plugin LAB=SUBMISSION`` (python mode): the router opens its sockets as
root, forks, and the child becomes ``nobody`` (no groups, no capabilities, no_new_privs,
the grader worker's seccomp filter: no new socket but AF_UNIX) before importing the
submission; the root parent waits and puts the namespace back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.needs_root

SPY = '''\
import os, socket
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    net = "inet socket opened"
except OSError as exc:
    net = "inet socket: %s" % exc.strerror
raise RuntimeError("uid=%s gid=%s groups=%s caps=%s nnp=%s seccomp=%s %s" % (
    os.getresuid(), os.getresgid(), os.getgroups(), status["CapEff"].strip(),
    status["NoNewPrivs"].strip(), status["Seccomp"].strip(), net))
'''


@pytest.fixture
def readable_lab():
    """Lab 2 copied where `nobody` can read it (the checkout may sit under a 0700 folder)."""
    d = Path(tempfile.mkdtemp(prefix="ntlabs-", dir="/tmp"))
    shutil.copytree(REPO / "labs" / "02-tcp-states", d / "02-tcp-states",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (d / "spy").mkdir()
    (d / "spy" / "tcp_states.py").write_text(SPY)
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_submission_is_imported_without_root(fresh_lab, readable_lab):
    lab_dir = readable_lab / "02-tcp-states"
    up = fresh_lab.cli("lab", "up", "--topo", "basic", "--plugin", f"{lab_dir}={readable_lab / 'spy'}")
    assert up.returncode != 0
    err = " ".join(up.stderr.split())
    assert "spy/tcp_states.py does not import: RuntimeError:" in err, err
    assert "uid=(65534, 65534, 65534) gid=(65534, 65534, 65534) groups=[]" in err, err
    assert "caps=0000000000000000 nnp=1" in err, err
    # the grader worker's seccomp filter: no network socket of its own (mode 2 = filter)
    assert "seccomp=2 inet socket: Operation not permitted" in err, err
    assert not (fresh_lab.run_dir / "lab.sock").exists()


def test_solution_forwards_as_nobody_and_the_namespace_is_restored(fresh_lab, readable_lab):
    lab_dir = readable_lab / "02-tcp-states"
    up = fresh_lab.cli("lab", "up", "--topo", "basic", "--plugin", f"{lab_dir}={lab_dir / 'solution'}")
    assert up.returncode == 0, up.stderr
    client = fresh_lab.client()
    r = client.exec("h1", ["curl", "-s", "-m", "5", "http://203.0.113.10/"], timeout=10)
    assert r.returncode == 0
    entries = client.list_json({"proto": "tcp", "dport": 80})
    assert [e["state"] for e in entries] == ["TIME_WAIT"] and entries[0]["assured"]
    pid = client.router_hello()["pid"]              # answered by the unprivileged child
    status = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in l)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].strip() == "" and int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
    parent = int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
    assert Path(f"/proc/{parent}/status").read_text().split("Uid:")[1].split()[0] == "0"
    down = fresh_lab.cli("lab", "down")
    assert down.returncode == 0, down.stderr
    log = (fresh_lab.run_dir / "router-r.log").read_text()
    assert "the unprivileged router" in log and "stopped (status 0)" in log
    assert "could not" not in log.lower()
