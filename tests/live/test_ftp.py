"""FTP through both routers with a real server and client (issue 14 item 2, docs/helpers.md).

vsftpd (nattrack/lab/ftp.py) serves a file in the server namespace; curl downloads it from
the client through the router under test, in the four ways FTP opens its data connection:
passive EPSV and PASV, active EPRT and PORT (``-P -``).  The rules are a stateful
firewall behind MASQUERADE (FORWARD policy DROP, RELATED accepted, new connections only
from the LAN) and ``-t raw -j CT --helper ftp`` for the control connection.

* python mode: the file arrives intact each time; the helper rewrote the client's address
  in EPRT/PORT to the router's (vsftpd's log says what it got); each expectation appeared
  and was taken by its data connection (``events`` of the expect table); the data
  connections are RELATED (``EXPECTED``) and each master shows ``helper=ftp use=2``.
* kernel mode: the same downloads, and the shadow's tables agree with the kernel's:
  ``conntrack -L``, ``conntrack -E expect``, and ``-L expect`` while an expectation waits.
* without the helper rule (what a student meets since 6.0 removed automatic helpers):
  active FTP fails (vsftpd refuses the private address in EPRT/PORT), passive still works,
  no entry has a helper, nothing is expected.

Runs under the machine-wide lock: ``flock /tmp/nattrack-live.lock pytest tests/live/...``.
"""
from __future__ import annotations

import hashlib
import random
import re
import subprocess
import time
from contextlib import contextmanager

import pytest

from nattrack.lab.ftp import FtpServer
from nattrack.lab.diff import diff_expect, format_expect_rows
from kernel.harness import KernelLab
from nattrack.lab.topo import tbf_cmd

from .conftest import MASQ_RULES, PYTHON, RouterProc
from .netns import CLIENT, ROUTER_WAN, SERVER, sh
from .test_router_kernel import assert_same_tables

PAYLOAD = random.Random(14).randbytes(300_000)
NO_HELPER_RULES = MASQ_RULES.format(masq_opts="")
HELPER_RULES = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "-A PREROUTING -i r-lan -p tcp --dport 21 -j CT --helper ftp\nCOMMIT\n"
                + NO_HELPER_RULES)
# curl's options for each way of opening the data connection.
CURL = {"EPSV": [], "PASV": ["--disable-epsv"], "EPRT": ["-P", "-"],
        "PORT": ["-P", "-", "--disable-eprt"]}
MASKS = "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535"

# An FTP client that stops once the server's announcement (227) or its own (PORT) has
# passed the router, until the test has listed the expectation; then downloads the file.
PAUSED_CLIENT = r"""
import ftplib, hashlib, socket, sys
mode = sys.argv[1]
ftp = ftplib.FTP()
ftp.connect(sys.argv[2], 21, timeout=10)
ftp.login()
ftp.voidcmd("TYPE I")
if mode == "passive":
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
else:
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    ftp.sendport(ftp.sock.getsockname()[0], port)
print("expecting", ftp.sock.getsockname()[1], port, flush=True)
sys.stdin.readline()
if mode == "passive":
    data = socket.create_connection((host, port), timeout=10)
    ftp.sendcmd("RETR data.bin")
else:
    ftp.sendcmd("RETR data.bin")          # the server connects, then says 150
    data, _ = listener.accept()
got = b""
while chunk := data.recv(65536):
    got += chunk
data.close()
ftp.voidresp()
ftp.quit()
print(hashlib.sha256(got).hexdigest(), len(got), flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def classroom_rate(topo):
    """Both ends send at the lab's 100 Mbit/s (topo.py's tbf), within the kernel-mode
    shadow's exact range (bench/README.md): unshaped, a veth moves the file faster than
    the shadow's socket takes it, and the shadow would miss frames."""
    for ns in (topo.client, topo.server):
        topo.exec(ns, *tbf_cmd("eth0", 100).split())


@pytest.fixture(scope="module")
def ftpd(topo):
    srv = FtpServer({"data.bin": PAYLOAD},
                    lambda argv, **kw: topo.popen(topo.server, *argv, start_new_session=True, **kw))
    srv.start()
    yield srv
    srv.stop()


@contextmanager
def router(topo, workdir, mode: str, rules: str):
    r = RouterProc(topo, workdir, mode, rules)
    try:
        yield r
    finally:
        r.stop()
        r.kill()


def curl(topo, workdir, how: str) -> tuple[subprocess.CompletedProcess, bytes | None]:
    out = workdir / f"got-{how}.bin"
    out.unlink(missing_ok=True)
    p = topo.exec(topo.client, "curl", "-sS", "--max-time", "20", *CURL[how], "-o", str(out),
                  f"ftp://{SERVER}/data.bin", check=False, timeout=30)
    return p, out.read_bytes() if out.exists() else None


def expect_line(src: str, dst: str, dport: int, cport: int) -> str:
    """The expectation an FTP control connection CLIENT:cport -> SERVER:21 holds, without
    its leading remaining time."""
    return (f"proto=6 src={src} dst={dst} sport=0 dport={dport} {MASKS} "
            f"master-src={CLIENT} master-dst={SERVER} sport={cport} dport=21 class=0 helper=ftp")


def without_time(line: str) -> tuple[str, int]:
    """``    [NEW] 300 proto=...`` -> (``    [NEW] proto=...``, 300)."""
    m = re.match(r"^(\s*(?:\[\w+\] )?)(\d+) (.*)$", line)
    assert m, line
    return m.group(1) + m.group(3), int(m.group(2))


def same_lines(router_lines: list[str], kernel_lines: list[str]) -> None:
    r, k = [without_time(x) for x in router_lines], [without_time(x) for x in kernel_lines]
    assert [x for x, _ in r] == [x for x, _ in k], f"router:\n{router_lines}\nkernel:\n{kernel_lines}"
    assert all(abs(a - b) <= 1 for (_, a), (_, b) in zip(r, k)), (router_lines, kernel_lines)


def download_four_ways(topo, workdir, ftpd) -> dict[str, int]:
    """Each way once; the file must arrive intact.  Returns how -> the data port vsftpd
    used (its 229/227 reply or the client's EPRT/PORT as vsftpd received it)."""
    ports = {}
    for how in CURL:
        seen = len(ftpd.protocol())
        p, got = curl(topo, workdir, how)
        assert p.returncode == 0, f"{how}: curl failed ({p.returncode}): {p.stderr}"
        assert got == PAYLOAD, f"{how}: the file arrived damaged ({len(got or b'')} bytes)"
        said = ftpd.protocol()[seen:]
        if how == "EPSV":
            ports[how] = int(re.search(r"^229 .*\(\|\|\|(\d+)\|\)", "\n".join(said), re.M)[1])
        elif how == "PASV":
            m = re.search(r"^227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", "\n".join(said), re.M)
            ports[how] = int(m[5]) * 256 + int(m[6])
        else:
            # The helper rewrote the client's private address to the router's.
            cmd = next(line for line in said if line.startswith(how + " "))
            if how == "EPRT":
                assert cmd.startswith(f"EPRT |1|{ROUTER_WAN}|"), cmd
                ports[how] = int(cmd.split("|")[3])
            else:
                nums = cmd.split()[1].split(",")
                assert ".".join(nums[:4]) == ROUTER_WAN, cmd
                ports[how] = int(nums[4]) * 256 + int(nums[5])
    return ports


def check_expect_events(lines: list[str], ports: dict[str, int]) -> None:
    """Per download one expectation, NEW then DESTROY (taken by its data connection):
    passive ones for the client's connection to the server, active ones for the server's
    connection to the router's address."""
    assert len(lines) == 2 * len(ports), lines
    for i, (how, port) in enumerate(ports.items()):
        new, gone = lines[2 * i], lines[2 * i + 1]
        src, dst = (CLIENT, SERVER) if how in ("EPSV", "PASV") else (SERVER, ROUTER_WAN)
        want = re.escape(f"proto=6 src={src} dst={dst} sport=0 dport={port} {MASKS} "
                         f"master-src={CLIENT} master-dst={SERVER} sport=") + r"\d+" + \
            re.escape(" dport=21 class=0 helper=ftp")
        assert re.fullmatch(r"    \[NEW\] 300 " + want, new), (how, new)
        assert re.fullmatch(r"\[DESTROY\] \d+ " + want, gone), (how, gone)
        assert new.split("master-")[1] == gone.split("master-")[1]


def check_table(lines: list[str], rows: list[dict], ports: dict[str, int]) -> None:
    """Four masters with the helper, each holding one data connection (use=2); each data
    connection RELATED (EXPECTED), the active ones DNATed back to the client."""
    masters = [x for x in lines if " dport=21 " in x]
    assert len(masters) == 4 and all(x.endswith(" helper=ftp use=2") for x in masters), lines
    data = [r for r in rows if r["orig"]["dport"] != 21]
    assert len(data) == 4 and all("EXPECTED" in r["status"] for r in data), rows
    for how, port in ports.items():
        r = next(r for r in data if r["orig"]["dport"] == port)
        if how in ("EPSV", "PASV"):
            assert (r["orig"]["src"], r["reply"]["dst"]) == (CLIENT, ROUTER_WAN), r
        else:
            assert (r["orig"]["src"], r["orig"]["sport"], r["orig"]["dst"]) == \
                (SERVER, 20, ROUTER_WAN), r
            assert (r["reply"]["src"], r["reply"]["sport"]) == (CLIENT, port), r   # DNATed
        assert r["assured"], r


def paused_download(topo, mode: str):
    """Start PAUSED_CLIENT; returns (process, control port, data port) once it waits."""
    p = topo.popen(topo.client, PYTHON, "-c", PAUSED_CLIENT, mode, SERVER, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    assert line[:1] == ["expecting"], (line, p.stderr.read() if p.poll() is not None else "")
    return p, int(line[1]), int(line[2])


def finish(p: subprocess.Popen) -> None:
    out, err = p.communicate("go\n", timeout=30)
    assert p.returncode == 0, err
    assert out.split() == [hashlib.sha256(PAYLOAD).hexdigest(), str(len(PAYLOAD))], out


# --- python mode ------------------------------------------------------------------------------------

def test_python_router_carries_ftp_four_ways_with_the_helper(topo, workdir, ftpd):
    with router(topo, workdir, "python", HELPER_RULES) as r:
        events = r.stream("events", {"table": "expect"})
        try:
            time.sleep(0.3)                                  # the subscription is in place
            ports = download_four_ways(topo, workdir, ftpd)
            check_expect_events([m["event"] for m in events.read(8, timeout=5)], ports)
        finally:
            events.close()
        check_table(r.call("list"), r.call("list", {"format": "json"}), ports)
        assert r.call("list", {"table": "expect"}) == []      # every one was taken
        # One expectation while it waits, exactly as conntrack -L expect prints it.
        for mode in ("passive", "active"):
            p, cport, dport = paused_download(topo, mode)
            try:
                src, dst = (CLIENT, SERVER) if mode == "passive" else (SERVER, ROUTER_WAN)
                listed = r.call("list", {"table": "expect"})
                assert [without_time(x)[0] for x in listed] == [expect_line(src, dst, dport, cport)]
                assert 299 <= without_time(listed[0])[1] <= 300
            finally:
                finish(p)
        assert r.call("stats")["expect"] == {"expect_new": 6, "expect_create": 6,
                                             "expect_delete": 6}
        assert r.call("stats")["router"]["router_errors"] == 0


# --- kernel mode --------------------------------------------------------------------------------------

def kernel_lines(topo, *args: str) -> list[str]:
    out = topo.exec(topo.router, "conntrack", *args, check=False).stdout
    return [x for x in out.splitlines() if x.strip()]


def test_kernel_router_and_its_shadow_agree_on_ftp(topo, workdir, ftpd):
    with router(topo, workdir, "kernel", HELPER_RULES) as r:
        assert "-A PREROUTING -i r-lan -p tcp -m tcp --dport 21 -j CT --helper ftp" in \
            topo.exec(topo.router, "iptables-save", "-t", "raw").stdout
        kernel_events = topo.popen(topo.router, "conntrack", "-E", "expect",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = r.stream("events", {"table": "expect"})
        try:
            deadline = time.monotonic() + 10
            while not KernelLab._netlink_listening(kernel_events.pid):   # conntrack -E is
                assert time.monotonic() < deadline and kernel_events.poll() is None  # listening
                time.sleep(0.02)
            time.sleep(0.3)                      # and the router's subscription is in place
            ports = download_four_ways(topo, workdir, ftpd)
            shadow_events = [m["event"] for m in events.read(8, timeout=5)]
        finally:
            events.close()
            time.sleep(0.3)
            kernel_events.terminate()
            kout, _ = kernel_events.communicate(timeout=10)
        check_expect_events(shadow_events, ports)
        same_lines(shadow_events, [x for x in kout.splitlines() if x.strip()])
        time.sleep(0.3)
        shadow = r.call("list")
        assert_same_tables(shadow, kernel_lines(topo, "-L"))
        check_table(shadow, r.call("list", {"format": "json"}), ports)
        for mode in ("passive", "active"):
            p, _, _ = paused_download(topo, mode)
            try:
                time.sleep(0.2)                  # the announcement has reached the shadow
                listed = r.call("list", {"table": "expect"})
                assert len(listed) == 1
                kernel_expect = kernel_lines(topo, "-L", "expect")
                same_lines(listed, kernel_expect)
                rows = diff_expect(listed, kernel_expect)          # what `nattrack diff` shows
                assert [row.agree for row in rows] == [True], format_expect_rows(rows)
            finally:
                finish(p)
        time.sleep(0.3)
        assert_same_tables(r.call("list"), kernel_lines(topo, "-L"))
        st = r.call("stats")["router"]
        assert st["shadow_missed"] == 0 and st["socket_drops"] == 0, (st, r.diagnostics())
        assert st["shadow_disagrees"] == 0 and st["router_errors"] == 0, st


# --- without the helper rule --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["python", "kernel"])
def test_without_the_helper_rule_active_ftp_fails_and_passive_works(topo, workdir, ftpd, mode):
    with router(topo, workdir, mode, NO_HELPER_RULES) as r:
        for how in ("EPRT", "PORT"):
            seen = len(ftpd.protocol())
            p, got = curl(topo, workdir, how)
            assert p.returncode != 0 and got != PAYLOAD, (how, p.returncode)
            said = ftpd.protocol()[seen:]
            # Nothing rewrote the client's own address: vsftpd refuses it.
            private = CLIENT if how == "EPRT" else CLIENT.replace(".", ",")
            assert any(x.startswith(f"{how} ") and private in x for x in said), said
            assert f"500 Illegal {how} command." in said, said
        p, got = curl(topo, workdir, "EPSV")
        assert p.returncode == 0 and got == PAYLOAD, p.stderr
        time.sleep(0.3)                          # (kernel mode) the shadow has caught up
        lines = r.call("list")
        assert lines and not any("helper=" in x for x in lines), \
            (lines, kernel_lines(topo, "-L"), r.call("stats"), r.diagnostics())
        assert r.call("list", {"table": "expect"}) == []
        if mode == "kernel":
            assert not any("helper=" in x for x in kernel_lines(topo, "-L"))
            assert kernel_lines(topo, "-L", "expect") == []


def test_the_server_stops_and_leaves_nothing(topo, ftpd):
    ftpd.stop()
    left = sh("ip", "netns", "pids", topo.server).stdout.split()
    assert left == [], f"processes left in the server namespace: {left}"
