"""Kernel mode under bulk traffic (issue 10, item 4): at the lab's default link rate the
shadow sees every packet and `nattrack diff` is empty; with the links unshaped (far
above the shadow's range, bench/README.md) the shadow loses frames and the diff puts
any difference down to that, never to the trackers' transitions."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from nattrack.lab.topo import DEFAULT_UPLINK_MBIT, RATE_ENV

from .conftest import Lab, make_run_dir, stop_lab

pytestmark = pytest.mark.needs_root
SRV = "203.0.113.10"


@pytest.fixture
def kernel_lab(request):
    lab = Lab(make_run_dir())
    rate = getattr(request, "param", None)
    if rate is not None:
        lab.env[RATE_ENV] = str(rate)
    try:
        up = lab.cli("lab", "up", "--topo", "basic", "--mode", "kernel")
        assert up.returncode == 0, up.stderr
        yield lab
    finally:
        stop_lab(lab)
        shutil.rmtree(lab.run_dir, ignore_errors=True)


def download(lab: Lab, seconds: int) -> float:
    """iperf3 -R (srv sends) for ``seconds``; the Mbit/s h1 received."""
    server = lab.client().exec_session("srv", ["iperf3", "-s", "-1", "-p", "5201"])
    try:
        for _ in range(50):
            c = lab.cli("lab", "exec", "h1", "--", "iperf3", "-c", SRV, "-p", "5201", "-R", "-J",
                        "-t", str(seconds), timeout=seconds + 30)
            if c.returncode == 0 or "refused" not in c.stdout + c.stderr:
                break
            time.sleep(0.1)                     # the server is not listening yet
        assert c.returncode == 0, c.stdout[-500:] + c.stderr
        return json.loads(c.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        try:
            server.signal("TERM")               # iperf3 -1 has ended by now, unless it failed
        except Exception:                       # noqa: BLE001 -- gone already
            pass
        server.close()


def test_at_the_default_rate_the_shadow_sees_everything(kernel_lab):
    qd = kernel_lab.cli("lab", "exec", "r", "--", "tc", "qdisc", "show", "dev", "ntr-wan")
    assert "tbf" in qd.stdout and f"rate {DEFAULT_UPLINK_MBIT:g}Mbit" in qd.stdout, qd.stdout
    mbps = download(kernel_lab, 3)
    assert 0.6 * DEFAULT_UPLINK_MBIT < mbps <= 1.05 * DEFAULT_UPLINK_MBIT, mbps
    time.sleep(0.5)
    client = kernel_lab.client()
    router = client.stats()["router"]
    assert router["socket_drops"] == 0 and router["shadow_missed"] == 0, router
    assert router["rx_frames"] > 20_000, router           # it did carry the transfer
    assert client.missed()["flows"] == []
    d = kernel_lab.cli("diff")
    assert d.returncode == 0, d.stdout
    assert d.stdout.splitlines()[-1].endswith(" 0 differ"), d.stdout


@pytest.mark.parametrize("kernel_lab", [0], indirect=True)
def test_unshaped_the_diff_names_the_missed_packets(kernel_lab):
    qd = kernel_lab.cli("lab", "exec", "r", "--", "tc", "qdisc", "show", "dev", "ntr-wan")
    assert "tbf" not in qd.stdout, qd.stdout
    mbps = download(kernel_lab, 2)
    assert mbps > 2 * DEFAULT_UPLINK_MBIT, mbps
    time.sleep(0.5)
    client = kernel_lab.client()
    router = client.stats()["router"]
    assert router["socket_drops"] > 0, f"the shadow kept up at {mbps:.0f} Mbit/s: {router}"
    missed = client.missed()
    data = [f for f in missed["flows"] if "dport=5201" in f["line"] and f["missed"] > 0]
    assert data, missed                         # the transfer's own flow knows its losses
    d = kernel_lab.cli("diff")
    assert "different transitions" not in d.stdout, d.stdout
    notes = [l for l in d.stdout.splitlines() if l.startswith("  ! ")]
    differing = int(d.stdout.splitlines()[-1].split(" agree, ")[1].split()[0])
    if differing:                               # each differing flow carries the loss note
        assert d.returncode == 1
        assert sum("the difference may come from that" in l for l in notes) == differing, d.stdout
