"""The end-to-end matrix: every topology in both modes, real traffic through the live lab.

One lab per (topology, mode), brought up once for that combination's tests and torn down
afterwards, even on failure.  In each, from a private host to the far host: a ping,
``curl`` to the small HTTP server, a UDP request/response, a TCP connection closed by the
client first and one closed by the server first; on ``clash`` the same source port from
several private hosts; on ``portforward`` a connection from outside to the router's public
address that reaches the private server; on ``seed`` the seed document's request and its
``conntrack -L`` line; on ``double`` the two NATs in series.

What is checked, for every flow:

* the Python tracker's table (``list_json``) of every NAT router on the way, hop by hop:
  the entry exists once, its reply tuple comes back to that router's public address, TCP
  is ASSURED and in TIME_WAIT (or CLOSE) after the close, UDP and ICMP saw their reply;
* what the far host saw (its servers answer with the source they saw): the last NAT's
  public address and the port the tables say, never the private address;
* python mode: the routers' kernels stay out of it, their own tables EMPTY;
  kernel mode: the Python tracker shadowing the kernel agrees with it entry by entry
  (``LabClient.diff()`` after each flow, ``nattrack diff`` after everything).

Needs root (Mininet): skipped without root when CI is unset, failed under CI=true
(tests/lab/conftest.py's convention).
"""
from __future__ import annotations

import re
import shutil
import time

import pytest

from nattrack.lab.diff import format_rows

from .conftest import Lab, _in_ci, _is_root, make_run_dir, stop_lab
from .e2e_helpers import (PYTHON, SCENES, SERVER_PY, TCP_CLIENT_CLOSES, TCP_SERVER_CLOSES,
                          UDP_PORT, Scene, curl, find, fmt, run_client, split_seen, wait_for)

pytestmark = pytest.mark.needs_root

TOPOS = ("basic", "clash", "seed", "portforward", "double")
MODES = ("python", "kernel")
COMBOS = [f"{t}-{m}" for t in TOPOS for m in MODES]
CLOSED = ("TIME_WAIT", "CLOSE")


def only(*topos: str):
    """Run a test on these topologies only (both modes); the others never generate it, so
    nothing is skipped (a skip under CI=true is a failure)."""
    def mark(fn):
        fn.e2e_topos = topos
        return fn
    return mark


def pytest_generate_tests(metafunc):
    if "net" in metafunc.fixturenames:
        topos = getattr(metafunc.function, "e2e_topos", TOPOS)
        metafunc.parametrize("net", [c for c in COMBOS if c.split("-")[0] in topos],
                             indirect=True, scope="module")


# --- the lab of one combination ------------------------------------------------------------

class Net:
    """A running lab of one (topology, mode), its client, its scene and its far server."""

    def __init__(self, lab: Lab, scene: Scene, mode: str) -> None:
        self.lab, self.scene, self.mode = lab, scene, mode
        self.c = lab.client()
        self.server = None

    def start_server(self) -> None:
        s = self.c.exec_session(self.scene.server, [PYTHON, "-u", "-c", SERVER_PY])
        self.server = s
        s.conn.settimeout(15)                    # never hang the suite on a silent server
        out = b""
        for name, data in s:
            out += data
            if b"ready" in out:
                return
        pytest.fail(f"the tiny server in {self.scene.server} exited: {out.decode()!r}",
                    pytrace=False)

    def stop_server(self) -> None:
        if self.server is not None:
            try:
                self.server.signal("KILL")
            except Exception:                          # noqa: BLE001 -- the lab goes anyway
                pass
            self.server.close()
            self.server = None

    def table(self, router: str) -> list[dict]:
        return self.c.list_json(router=router)

    # -- the check every flow ends with: the router kernels' side ------------------------------
    def kernel_side_ok(self) -> None:
        for r in self.scene.routers:
            if self.mode == "python":
                k = self.c.kernel_list(router=r)
                assert k == [], f"python mode: the kernel of {r} tracked traffic: {k}"
            else:
                rows = wait_for(lambda: self.c.diff(router=r),
                                lambda rows: all(x.agree for x in rows), timeout=3)
                assert all(x.agree for x in rows), \
                    f"kernel mode, router {r}: python and kernel disagree:\n" + \
                    "\n".join(format_rows(rows))


@pytest.fixture(scope="module")
def net(request):
    topo, mode = request.param.split("-")
    if not _is_root():
        if _in_ci():
            pytest.fail("live-lab tests need root (Mininet, namespaces); CI must run them "
                        "as root", pytrace=False)
        pytest.skip("live-lab tests need root; run as root (CI=true makes this a failure)")
    lab = Lab(make_run_dir())
    n = None
    try:
        t0 = time.monotonic()
        up = lab.cli("lab", "up", "--topo", topo, "--mode", mode, timeout=90)
        if up.returncode != 0:
            pytest.fail(f"lab up --topo {topo} --mode {mode} failed: {up.stderr.strip()}",
                        pytrace=False)
        n = Net(lab, SCENES[topo], mode)
        n.up_seconds = time.monotonic() - t0
        n.start_server()
        yield n
    finally:
        if n is not None:
            n.stop_server()
        stop_lab(lab)
        shutil.rmtree(lab.run_dir, ignore_errors=True)


# --- following one flow out through each NAT ---------------------------------------------------

def follow(net: Net, proto: str, first: dict, states: tuple[str, ...] | None = None,
           timeout: float = 3.0) -> tuple[list[dict], tuple[str, int]]:
    """The flow's entry in each NAT router's table, client side first.

    ``first`` names the flow as the first router sees it (``sport``/``dport`` or ``id``
    besides the addresses).  Each entry must be there once, its reply tuple coming back
    from the server to that router's public address; the next router sees the flow come
    from that address and the port (or ICMP id) this one chose.  Returns the entries and
    the (address, port or id) the far host must have seen.
    """
    sc = net.scene
    key = dict(first)
    out = []
    for hop in sc.hops:
        def get(hop=hop, key=dict(key)):
            return find(net.table(hop.router), proto, **key)
        ok = (lambda es: len(es) == 1 and (states is None or es[0]["state"] in states))
        es = wait_for(get, ok, timeout=timeout)
        assert len(es) == 1, f"router {hop.router}: expected one {proto} entry with {key}, " \
                             f"got {[fmt(e) for e in es]}; table {[fmt(e) for e in net.table(hop.router)]}"
        e = es[0]
        r = e["reply"]
        assert r["src"] == sc.server_addr, f"{hop.router}: reply source {fmt(e)}"
        assert r["dst"] == hop.public, \
            f"{hop.router}: the reply tuple should come back to {hop.public}: {fmt(e)}"
        if proto == "icmp":
            nxt = {"id": r["id"]}
        else:
            assert r["sport"] == key["dport"], f"{hop.router}: reply sport {fmt(e)}"
            nxt = {"sport": r["dport"], "dport": key["dport"]}
        assert not e["unreplied"] and "SEEN_REPLY" in e["status"], \
            f"{hop.router}: the reply was not seen: {fmt(e)}"
        assert "SRC_NAT" in e["status"], f"{hop.router}: no source NAT: {fmt(e)}"
        if states is not None:
            assert e["state"] in states, f"{hop.router}: state {e['state']}, wanted " \
                                         f"{'/'.join(states)}: {fmt(e)}"
        out.append(e)
        key = {"src": hop.public, "dst": sc.server_addr, **nxt}
    last = out[-1]["reply"]
    return out, (sc.seen, last["id"] if proto == "icmp" else last["dport"])


def assert_far_host_saw(net: Net, seen_addr: str, seen_port: int, want: tuple[str, int]):
    sc = net.scene
    assert seen_addr != sc.client_addr, f"the far host saw the private address {seen_addr}"
    assert (seen_addr, seen_port) == want, \
        f"the far host saw {seen_addr}:{seen_port}, the tables say {want[0]}:{want[1]}"


# --- every topology, both modes ------------------------------------------------------------------

def test_ping_private_to_public(net):
    sc = net.scene
    first = sc.hops[0]
    before = {e["orig"]["id"] for e in find(net.table(first.router), "icmp",
                                             src=sc.client_addr, dst=sc.server_addr)}
    r = net.c.exec(sc.client, ["ping", "-c1", "-W2", sc.server_addr], timeout=10)
    assert r.returncode == 0 and " 1 received" in r.stdout, r.stdout + r.stderr
    new = wait_for(lambda: [e for e in find(net.table(first.router), "icmp", src=sc.client_addr,
                                            dst=sc.server_addr) if e["orig"]["id"] not in before],
                   lambda es: len(es) == 1)
    assert len(new) == 1, f"expected the ping's entry in {first.router}: {new}"
    assert new[0]["orig"]["type"] == 8 and new[0]["reply"]["type"] == 0
    entries, _ = follow(net, "icmp", {"src": sc.client_addr, "dst": sc.server_addr,
                                      "id": new[0]["orig"]["id"]})
    for e in entries:
        assert e["timeout"] is not None and 0 < e["timeout"] <= 30, fmt(e)
    net.kernel_side_ok()


def test_curl_small_http_server(net):
    sc = net.scene
    addr, port, page, local = curl(net.c, sc.client, f"http://{sc.server_addr}:{sc.http}/")
    assert f"({sc.server_addr}:{sc.http})" in page, page
    entries, want = follow(net, "tcp", {"src": sc.client_addr, "dst": sc.server_addr,
                                        "sport": local, "dport": sc.http}, states=CLOSED)
    for e in entries:
        assert e["assured"] and "ASSURED" in e["status"], f"completed TCP not ASSURED: {fmt(e)}"
    assert_far_host_saw(net, addr, port, want)
    net.kernel_side_ok()


def test_udp_request_response(net):
    sc = net.scene
    out = run_client(net.c, sc.client, "udp", sc.server_addr, UDP_PORT)
    assert out["answer"].endswith("nattrack e2e\n"), out
    local = out["local"][1]
    entries, want = follow(net, "udp", {"src": sc.client_addr, "dst": sc.server_addr,
                                        "sport": local, "dport": UDP_PORT})
    for e in entries:        # one request, one reply: not a stream, the 30 s UDP timeout
        assert e["state"] is None and e["timeout"] is not None and 0 < e["timeout"] <= 30, fmt(e)
        assert not e["assured"], f"one request/response does not assure UDP: {fmt(e)}"
    assert_far_host_saw(net, *split_seen(out["seen"]), want)
    net.kernel_side_ok()


@pytest.mark.parametrize("closer", ["client", "server"])
def test_tcp_closed_by_each_side(net, closer):
    """The client's FIN first (port 5001 waits for it) or the server's (5002 closes at
    once): both ends are graceful, so the entry must end in TIME_WAIT, ASSURED."""
    sc = net.scene
    port = TCP_CLIENT_CLOSES if closer == "client" else TCP_SERVER_CLOSES
    out = run_client(net.c, sc.client, "tcp", sc.server_addr, port, 0, closer)
    assert out["answer"].endswith("nattrack e2e\n") and out["rest"] == "", out
    local = out["local"][1]
    entries, want = follow(net, "tcp", {"src": sc.client_addr, "dst": sc.server_addr,
                                        "sport": local, "dport": port}, states=("TIME_WAIT",))
    for e in entries:
        assert e["assured"] and "ASSURED" in e["status"], f"completed TCP not ASSURED: {fmt(e)}"
        assert e["timeout"] is not None and 100 <= e["timeout"] <= 120, fmt(e)
    assert_far_host_saw(net, *split_seen(out["seen"]), want)
    net.kernel_side_ok()


# --- topology by topology ---------------------------------------------------------------------

@only("clash")
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_clash_same_source_port_from_several_hosts(net, proto):
    """h1, h2, h3 all send from the same source port to the same server port: h1 keeps
    its port, the others cannot (the reply tuple would be the same) and get other ports."""
    sc = net.scene
    sport, dport = (45000, UDP_PORT) if proto == "udp" else (46000, TCP_CLIENT_CLOSES)
    hop = sc.hops[0]
    mapped = []
    for host, addr in ((sc.client, sc.client_addr),) + sc.others:
        out = run_client(net.c, host, proto, sc.server_addr, dport, sport, "client")
        assert out["local"][1] == sport, out
        seen_addr, seen_port = split_seen(out["seen"])
        assert seen_addr == hop.public, f"{host}: the server saw {seen_addr}"
        states = ("TIME_WAIT",) if proto == "tcp" else None
        es = wait_for(lambda: find(net.table(hop.router), proto, src=addr, sport=sport,
                                   dport=dport),
                      lambda es: len(es) == 1 and (states is None or es[0]["state"] in states))
        assert len(es) == 1, f"{host}: expected one entry, got {[fmt(e) for e in es]}"
        e = es[0]
        assert e["reply"]["dst"] == hop.public and e["reply"]["src"] == sc.server_addr, fmt(e)
        assert e["reply"]["dport"] == seen_port, \
            f"{host}: the table maps to port {e['reply']['dport']}, the server saw {seen_port}"
        assert not e["unreplied"], fmt(e)
        if proto == "tcp":
            assert e["state"] == "TIME_WAIT" and e["assured"], fmt(e)
        mapped.append(seen_port)
    assert mapped[0] == sport, f"the first host should keep its port {sport}: {mapped}"
    assert all(p != sport for p in mapped[1:]), f"a clashing host kept port {sport}: {mapped}"
    assert len(set(mapped)) == len(mapped), f"two hosts share one mapping: {mapped}"
    net.kernel_side_ok()


@only("portforward")
def test_port_forward_from_outside_reaches_private_server(net):
    """ext connects to the router's public address 203.0.113.1:8080 and reaches web's
    http service (10.0.0.10:80), which sees ext's own address (no source NAT inbound)."""
    sc = net.scene
    hop = sc.hops[0]
    addr, port, page, local = curl(net.c, "ext", f"http://{hop.public}:8080/")
    assert "hello from web (10.0.0.10:80)" in page, page
    assert (addr, port) == ("203.0.113.10", local), page
    es = wait_for(lambda: find(net.table(hop.router), "tcp", src="203.0.113.10",
                               dst=hop.public, sport=local, dport=8080),
                  lambda es: len(es) == 1 and es[0]["state"] in CLOSED)
    assert len(es) == 1, f"expected the forwarded connection's entry: {[fmt(e) for e in es]}"
    e = es[0]
    assert e["reply"] == {"src": "10.0.0.10", "dst": "203.0.113.10", "sport": 80,
                          "dport": local}, fmt(e)
    assert "DST_NAT" in e["status"] and e["assured"] and e["state"] in CLOSED, fmt(e)
    # the port forward opens only 8080: the router's public address has nothing on 80
    r = net.c.exec("ext", ["curl", "-s", "-m", "1", f"http://{hop.public}:80/"], timeout=10)
    assert r.returncode != 0 and "you came from" not in r.stdout
    net.kernel_side_ok()


SEED_LINE = re.compile(
    r"^tcp      6 \d+ (?P<state>CLOSE|TIME_WAIT) src=192\.168\.122\.148 dst=198\.51\.100\.12 "
    r"sport=(?P<sport>\d+) dport=443 src=198\.51\.100\.12 dst=192\.168\.199\.132 sport=443 "
    r"dport=(?P<dport>\d+) \[ASSURED\] mark=0 use=1$")


@only("seed")
def test_seed_document_scene(net):
    """The seed document: the guest 192.168.122.148 fetches https://198.51.100.12 through
    the NAT host 192.168.199.132; `conntrack -L` shows the document's line."""
    addr, port, page, local = curl(net.c, "guest", "https://198.51.100.12", extra=("-k",),
                                   tries=10)        # the https service makes its key first
    assert addr == "192.168.199.132", page
    views = [("python", lambda: net.c.list(proto="tcp", dport=443, router="host"))]
    if net.mode == "kernel":
        views.append(("kernel", lambda: net.c.kernel_list(proto="tcp", dport=443,
                                                          router="host")))
    for who, get in views:
        lines = wait_for(get, lambda ls: any(SEED_LINE.match(l) and
                                             f" sport={local} " in l for l in ls))
        mine = [l for l in lines if f" sport={local} " in l]
        assert len(mine) == 1, f"{who}: expected the request's line among {lines}"
        m = SEED_LINE.match(mine[0])
        assert m, f"{who}: the line does not have the document's shape: {mine[0]}"
        assert int(m["sport"]) == local and int(m["dport"]) == port, mine[0]
    net.kernel_side_ok()


@only("double")
def test_double_nat_one_connection_two_entries(net):
    """h1's connection is translated twice: r's entry comes back to 100.64.0.2, cgn's (the
    same connection, as r sent it) to 203.0.113.1, and the far host sees only the carrier's
    address."""
    sc = net.scene
    out = run_client(net.c, sc.client, "tcp", sc.server_addr, TCP_SERVER_CLOSES, 0, "server")
    addr, port = split_seen(out["seen"])
    assert addr == "203.0.113.1", f"the far host should see the carrier NAT: {out}"
    assert addr not in ("10.0.0.10", "100.64.0.2")
    (home, cgn), want = follow(net, "tcp", {"src": sc.client_addr, "dst": sc.server_addr,
                                            "sport": out["local"][1],
                                            "dport": TCP_SERVER_CLOSES},
                               states=("TIME_WAIT",))
    assert home["reply"]["dst"] == "100.64.0.2" and cgn["orig"]["src"] == "100.64.0.2"
    assert cgn["orig"]["sport"] == home["reply"]["dport"]
    assert cgn["reply"]["dst"] == "203.0.113.1" and want == (addr, port)
    net.kernel_side_ok()


# --- after all the traffic: the kernels' side, through the CLI -----------------------------------

def test_kernel_side_after_all_traffic(net):
    """python mode: `nattrack conntrack -L --kernel` shows no entry in any NAT router;
    kernel mode: `nattrack diff` finds no disagreement in any NAT router."""
    for r in net.scene.routers:
        py = net.c.list_json(router=r)
        assert py, f"{r}: the Python tracker's table is empty after the traffic"
        if net.mode == "python":
            k = net.lab.cli("conntrack", "-L", "--kernel", "--router", r)
            assert k.returncode == 0, k.stderr
            assert k.stdout == "" and "0 flow entries" in k.stderr, k.stdout + k.stderr
            assert net.c.kernel_list(router=r) == []
        else:
            def diff(r=r):
                return net.lab.cli("diff", "--router", r)
            d = wait_for(diff, lambda d: d.returncode == 0, timeout=3)
            assert d.returncode == 0, f"nattrack diff --router {r}:\n{d.stdout}{d.stderr}"
            last = d.stdout.splitlines()[-1]
            assert last.endswith(" 0 differ") and not last.startswith("0 flow"), d.stdout
