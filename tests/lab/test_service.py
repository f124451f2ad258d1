"""The lab service end to end: lab up/status/exec/down, conntrack through it, clients
without root, a second lab up, faults, SIGKILL and lab down --force, doctor."""
from __future__ import annotations

import grp
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO, lab_leftovers, readable_package_copy

pytestmark = pytest.mark.needs_root
NOBODY = 65534


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("nattrack: "), p.stderr
    return lines[0]


def test_up_prints_nodes_and_addresses(basic_lab):
    out = basic_lab.up_result.stdout
    assert basic_lab.up_seconds < 30
    for text in ("h1", "nth1-eth0 10.0.0.10/24", "ntr-lan 10.0.0.1/24", "ntr-wan 203.0.113.1/24",
                 "ntsrv-eth0 203.0.113.10/24", "python mode"):
        assert text in out
    sock = basic_lab.sock
    st = os.stat(sock)
    assert oct(st.st_mode & 0o777) == "0o660"
    assert grp.getgrgid(st.st_gid).gr_name == "nattrack"


def test_status_and_exec_round_trip(basic_lab):
    st = basic_lab.cli("lab", "status", "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["topo"] == "basic" and status["routers"]["r"]["alive"]
    ping = basic_lab.cli("lab", "exec", "h1", "--", "ping", "-c1", "-W2", "203.0.113.10")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "1 received" in ping.stdout
    curl = basic_lab.cli("lab", "exec", "h1", "--", "curl", "-s", "203.0.113.10")
    assert "you came from 203.0.113.1:" in curl.stdout           # the server saw the NAT
    rc = basic_lab.cli("lab", "exec", "-n", "h1", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (rc.returncode, rc.stdout, rc.stderr) == (7, "out\n", "err\n")
    cat = basic_lab.cli("lab", "exec", "srv", "--", "cat", input="through stdin\n")
    assert cat.stdout == "through stdin\n"
    nf = basic_lab.cli("lab", "exec", "h1", "--", "no-such-command")
    assert nf.returncode == 127 and "command not found" in nf.stderr
    bad = basic_lab.cli("lab", "exec", "nonode", "--", "true")
    assert "no node 'nonode'" in _one_error_line(bad)


def test_conntrack_through_the_service(basic_lab):
    basic_lab.cli("lab", "exec", "h1", "--", "curl", "-s", "203.0.113.10")
    L = basic_lab.cli("conntrack", "-L", "-p", "tcp", "--dport", "80")
    assert L.returncode == 0
    assert L.stderr.endswith("flow entries have been shown.\n")
    line = L.stdout.splitlines()[-1]
    assert line.startswith("tcp      6 ") and "src=10.0.0.10 dst=203.0.113.10" in line
    assert "dst=203.0.113.1 sport=80" in line and "[ASSURED]" in line
    K = basic_lab.cli("conntrack", "-L", "--kernel")        # python mode: the kernel is out
    assert K.returncode == 0 and K.stdout == "" and "0 flow entries" in K.stderr
    S = basic_lab.cli("conntrack", "-S")
    assert S.stdout.startswith("cpu=0   \tfound=")
    s = basic_lab.cli("sysctl", "net.netfilter.nf_conntrack_udp_timeout=12")
    assert s.stdout == "net.netfilter.nf_conntrack_udp_timeout = 12\n"
    d = basic_lab.cli("diff")
    assert d.returncode == 1 and "only in python" in d.stdout and d.stdout.startswith("note: python")


def test_events_and_trace_stream(basic_lab):
    env = basic_lab.env
    ev = subprocess.Popen([sys.executable, "-m", "nattrack.cli.main", "conntrack", "-E",
                           "-p", "udp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
    tr = subprocess.Popen([sys.executable, "-m", "nattrack.cli.main", "trace", "-c", "1",
                           "-p", "udp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
    time.sleep(1.0)
    basic_lab.cli("lab", "exec", "h1", "--", "sh", "-c",
                  "echo hi | nc -u -w1 -p 5000 203.0.113.10 7")
    out, _ = tr.communicate(timeout=20)
    assert out.startswith("#1 ") and "udp" in out and "POST_ROUTING" in out
    time.sleep(0.3)
    ev.send_signal(signal.SIGINT)
    out, err = ev.communicate(timeout=20)
    assert "[NEW] udp      17 " in out and "sport=5000 dport=7" in out
    assert err.strip().endswith("flow events have been shown.")


def test_capture_writes_pcapng(basic_lab, tmp_path):
    path = tmp_path / "c.pcapng"
    cap = subprocess.Popen([sys.executable, "-m", "nattrack.cli.main", "capture", "-w", str(path),
                            "-G", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=basic_lab.env)
    time.sleep(0.7)
    basic_lab.cli("lab", "exec", "h1", "--", "ping", "-c1", "203.0.113.10")
    _, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    assert path.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"       # a pcapng section header
    assert "packets" in err


def test_second_up_fails_and_leaves_the_first(basic_lab):
    pid = basic_lab.state()["pid"]
    p = basic_lab.cli("lab", "up", "--topo", "clash")
    assert "a lab is already running (topology basic" in _one_error_line(p)
    assert basic_lab.state()["pid"] == pid
    assert basic_lab.cli("lab", "exec", "h1", "--", "true").returncode == 0


def test_unprivileged_clients(basic_lab):
    gid = grp.getgrnam("nattrack").gr_gid
    denied = basic_lab.cli("lab", "status", user=NOBODY)
    assert "permission denied" in _one_error_line(denied)
    who = basic_lab.cli("lab", "exec", "h1", "--", "id", "-u", user=NOBODY, groups=str(gid))
    assert who.returncode == 0 and who.stdout.strip() == str(NOBODY)   # runs as the caller
    ping = basic_lab.cli("lab", "exec", "h1", "--", "ping", "-c1", "-W2", "203.0.113.10",
                         user=NOBODY, groups=str(gid))
    assert ping.returncode == 0
    shadow = basic_lab.cli("lab", "exec", "h1", "--", "cat", "/etc/shadow", user=NOBODY,
                           groups=str(gid))
    assert shadow.returncode != 0
    L = basic_lab.cli("conntrack", "-L", user=NOBODY, groups=str(gid))
    assert L.returncode == 0 and "flow entries have been shown" in L.stderr
    up = basic_lab.cli("lab", "up", user=NOBODY, groups=str(gid))
    assert "needs root" in _one_error_line(up)
    # rules as text (any rules at all) are root's; others load shipped files by name
    code = ("import sys; from nattrack.lab.client import LabClient; "
            "LabClient(sys.argv[1]).load_rules('mine', text='*nat\\nCOMMIT\\n')")
    text = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           f"--groups={gid}", "--", "/usr/bin/python3", "-c", code,
                           str(basic_lab.sock)], capture_output=True, text=True, timeout=60,
                          cwd="/", env=dict(basic_lab.env, PYTHONPATH=str(readable_package_copy())))
    assert text.returncode != 0 and "loading rules text needs root" in text.stderr, text.stderr


def test_python_client_api(basic_lab):
    c = basic_lab.client()
    assert c.hello()["topo"] == "basic"
    r = c.exec("h1", ["curl", "-s", "203.0.113.10"])
    assert r.returncode == 0 and "hello from srv" in r.stdout
    assert any("dport=80" in l for l in c.list(proto="tcp"))
    assert all(row["proto"] == "tcp" for row in c.list_json(proto="tcp"))
    assert c.count() >= 1 and "stats" in c.stats()
    assert c.sysctl("net.netfilter.nf_conntrack_icmp_timeout", kernel=True) == 30
    with pytest.raises(Exception, match="only net.netfilter.nf_conntrack_"):
        c.sysctl("kernel.panic", 1, kernel=True)
    assert c.exec("h1", ["sleep", "5"], timeout=0.5).timed_out


def test_rules_reload_through_the_service_restarts_nothing(basic_lab):
    """The service's rules verb (what the notebooks call): no router restart, the table and
    its NAT kept, the event stream opened before still delivering, a new flow on the new
    rules; a bad name is one line and changes nothing."""
    c = basic_lab.client()
    pid = c.status()["routers"]["r"]["pid"]
    ev = subprocess.Popen([sys.executable, "-m", "nattrack.cli.main", "conntrack", "-E",
                           "-p", "udp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=basic_lab.env)
    udp = ["sh", "-c", "echo hi | nc -u -w1 -p {} 203.0.113.10 7"]

    def entry(sport):
        lines = c.list(proto="udp", sport=sport)
        assert len(lines) == 1, lines
        return re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", lines[0])      # without the timeout

    try:
        time.sleep(1.0)
        c.exec("h1", [a.format(5001) if "{}" in a else a for a in udp])
        old = entry(5001)
        res = c.load_rules("classroom-snat-range")
        assert res["pid"] == pid and res["tables"] == ["nat"] and res["entries"] >= 1, res
        assert c.status()["routers"]["r"]["pid"] == pid
        assert c.status()["routers"]["r"]["rules"].endswith("classroom-snat-range.rules")
        assert entry(5001) == old                    # kept, with the NAT MASQUERADE gave it
        c.exec("h1", [a.format(5002) if "{}" in a else a for a in udp])
        nat_port = int(re.findall(r"dport=(\d+)", entry(5002))[1])
        assert 20000 <= nat_port <= 20009, entry(5002)
        with pytest.raises(Exception, match="no such file in examples/rules/"):
            c.load_rules("no-such-rules")
        # root may send the rules themselves: the nat table swapped back in, 5001 kept
        basic = (REPO / "examples" / "rules" / "basic.rules").read_text()
        res = c.load_rules("basic, as text", text=basic)
        assert res["tables"] == ["nat"], res
        assert entry(5001) == old
        c.exec("h1", [a.format(5003) if "{}" in a else a for a in udp])
        assert int(re.findall(r"dport=(\d+)", entry(5003))[1]) == 5003, entry(5003)
        assert c.status()["routers"]["r"]["pid"] == pid
        time.sleep(0.3)
    finally:
        ev.send_signal(signal.SIGINT)
        out, _ = ev.communicate(timeout=20)
        c.load_rules("basic")
    assert "sport=5001 dport=7" in out and "sport=5002 dport=7" in out, out


def test_failed_topology_leaves_nothing(fresh_lab, tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text("*nat\n-A POSTROUTING -j NOSUCHTARGET\nCOMMIT\n")
    p = fresh_lab.cli("lab", "up", "--topo", "basic", "--rules", str(bad))
    line = _one_error_line(p)
    assert "failed to start" in line and "nothing was left behind" in line
    left = lab_leftovers(fresh_lab, [])
    assert left["marked"] == [] and not (fresh_lab.run_dir / "lab.sock").exists()
    assert not (fresh_lab.run_dir / "lab.json").exists()
    assert "unknown topology" in _one_error_line(fresh_lab.cli("lab", "up", "--topo", "nope"))


def test_missing_mininet_is_one_line(fresh_lab):
    code = ("import sys; sys.modules['mininet'] = None; sys.modules['mininet.net'] = None\n"
            "from nattrack.cli.main import main; sys.exit(main(['lab', 'up']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=fresh_lab.env, timeout=60)
    assert "Mininet is not installed" in _one_error_line(p)


def test_sigkill_then_force_down_leaves_nothing(fresh_lab):
    up = fresh_lab.cli("lab", "up", "--topo", "clash")
    assert up.returncode == 0, up.stderr
    # the clash scene: the same source port from two hosts, two different mappings
    seen = []
    for host in ("h1", "h2"):
        r = fresh_lab.cli("lab", "exec", host, "--", "sh", "-c",
                          "echo hi | nc -u -w1 -p 5000 203.0.113.10 7")
        seen.append(r.stdout.split()[0])                  # what the echo server saw
    assert seen[0] == "203.0.113.1:5000" and seen[1].startswith("203.0.113.1:")
    assert seen[1] != seen[0]
    state = fresh_lab.state()
    netns = state["record"]["netns"]
    s = fresh_lab.client().exec_session("h2", ["sleep", "60"])     # a client's process too
    os.kill(state["pid"], signal.SIGKILL)
    time.sleep(0.3)
    s.close()
    assert lab_leftovers(fresh_lab, netns)["marked"], "expected orphans to clear"
    st = fresh_lab.cli("lab", "status")
    assert "crashed" in _one_error_line(st)
    down = fresh_lab.cli("lab", "down", "--force")
    assert down.returncode == 0, down.stderr
    left = lab_leftovers(fresh_lab, netns)
    assert left == {"marked": [], "in_netns": [], "ifaces": []}, left
    assert not (fresh_lab.run_dir / "lab.sock").exists()
    # and the next lab up would have cleared it by itself
    again = fresh_lab.cli("lab", "up", "--topo", "basic")
    assert again.returncode == 0, again.stderr
    os.kill(fresh_lab.state()["pid"], signal.SIGKILL)
    time.sleep(0.2)
    third = fresh_lab.cli("lab", "up", "--topo", "basic")
    assert third.returncode == 0 and "cleared what a crashed lab left" in third.stderr
    assert fresh_lab.cli("lab", "down").returncode == 0
    assert lab_leftovers(fresh_lab, [])["marked"] == []


def test_doctor_is_happy_here():
    p = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "doctor"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.rstrip().endswith("doctor: all fine")


def test_seed_scene_in_kernel_mode_diff_agrees(fresh_lab):
    """The seed document's request, with the kernel forwarding and nattrack shadowing it:
    its conntrack line, and the two trackers agreeing entry by entry."""
    up = fresh_lab.cli("lab", "up", "--topo", "seed", "--mode", "kernel")
    assert up.returncode == 0, up.stderr
    assert "guest" in up.stdout and "nthost-eth0 192.168.199.132/24" in up.stdout
    curl = fresh_lab.cli("lab", "exec", "guest", "--", "curl", "-sk", "https://198.51.100.12")
    assert curl.returncode == 0 and "you came from 192.168.199.132:" in curl.stdout
    for kernel in ((), ("--kernel",)):
        L = fresh_lab.cli("conntrack", "-L", "-p", "tcp", "--dport", "443", *kernel)
        line = L.stdout.strip()
        # the document shows `tcp 6 8 CLOSE ...`: TLS servers end with a RST, as here
        assert line.startswith("tcp      6 ") and line.split()[3] in ("CLOSE", "TIME_WAIT")
        assert " src=192.168.122.148 " in line, line
        assert "dst=198.51.100.12 sport=" in line and "dport=443 src=198.51.100.12 " \
            "dst=192.168.199.132 sport=443 dport=" in line and "[ASSURED]" in line
    d = fresh_lab.cli("diff")
    assert d.returncode == 0, d.stdout
    assert d.stdout.splitlines()[-1].endswith("0 differ")
    assert fresh_lab.cli("lab", "down").returncode == 0
