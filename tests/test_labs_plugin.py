"""Labs 2-5 and the plug-in mechanism (nattrack.exercises.manifest, nattrack.exercises.plugin).

Offline: manifests and their errors, install/uninstall restoring the reference engine,
every lab's offline tests through a small in-process context (the solution scores full
marks, the skeleton fails exactly the tests of its TODOs, a half-done submission only the
tests of the TODOs still open), and broken submissions failing with one line.  The live
part (the router drops root before importing a submission) is tests/lab/test_labs_plugin_live.py.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from nattrack.cli.main import main as cli
from nattrack.conntrack import core as ct_core, proto_icmp, proto_tcp, proto_udp
from nattrack.conntrack import tuple as ct_tuple
from nattrack.exercises import manifest, plugin
from nattrack.exercises.testing import collect
from nattrack.nat import core as nat_core
from nattrack.packet import ipv4

REPO = Path(__file__).resolve().parents[1]
LABS = {n: REPO / "labs" / d for n, d in
        ((2, "02-tcp-states"), (3, "03-udp-icmp"), (4, "04-snat"), (5, "05-timeouts-gc"))}


@pytest.fixture(autouse=True)
def _clean_plugin():
    plugin.uninstall()
    yield
    plugin.uninstall()


# --- an in-process stand-in for the grader's context (docs/labs-format.md) ---------------------

class Ctx:
    mode = "offline"
    live = None
    variant: dict = {}

    def __init__(self, lab_dir: Path, sub: Path) -> None:
        self.lab_dir, self.submission = lab_dir, sub
        self.manifest = manifest.load(lab_dir)
        self._mods: dict = {}

    def call(self, dotted: str, *args):
        mod, fn = dotted.rsplit(".", 1)
        if mod not in self._mods:
            spec = importlib.util.spec_from_file_location(f"labsub_{mod}", self.submission / f"{mod}.py")
            m = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(m)
            self._mods[mod] = m
        args = json.loads(json.dumps(args))
        return json.loads(json.dumps(getattr(self._mods[mod], fn)(*args)))

    def _run(self, capture, *, iface, route=None, rules=None, sysctl=None, now=None, seed=1,
             spec=None) -> dict:
        argv = ["replay", str(capture), "--json", "--seed", str(seed)]
        argv += [f"--iface={k}={v}" for k, v in iface.items()]
        argv += [f"--route={k}={v}" for k, v in (route or {}).items()]
        argv += [f"--sysctl={k}={v}" for k, v in (sysctl or {}).items()]
        argv += ["--rules", str(rules)] if rules else []
        argv += ["--now", str(now)] if now is not None else []
        argv += ["--plugin", spec] if spec else []
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli(argv)
        finally:
            plugin.uninstall()
        if rc:
            raise RuntimeError(err.getvalue().strip())
        return json.loads(out.getvalue())

    def replay(self, capture, **kw):
        return self._run(capture, spec=f"{self.lab_dir}={self.submission}", **kw)

    def reference_replay(self, capture, **kw):
        return self._run(capture, **kw)


def lab_tests(lab_dir: Path):
    specs = []
    for f in sorted((lab_dir / "tests").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"labtests_{lab_dir.name}_{f.stem}", f)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        specs += collect(vars(m))
    return specs


def scores(lab_dir: Path, sub: Path) -> dict[str, tuple[float, str]]:
    """Offline tests only: number -> (fraction of the points, reason)."""
    ctx = Ctx(lab_dir, sub)
    out = {}
    for t in lab_tests(lab_dir):
        if t.mode == "live":
            continue
        try:
            r = t.func(ctx)
            r = (1.0, "") if r is None else r if isinstance(r, tuple) else (r, "")
            out[t.number] = (float(r[0]), str(r[1]))
        except Exception as exc:              # noqa: BLE001 -- a failed test, with its reason
            out[t.number] = (0.0, f"{type(exc).__name__}: {exc}")
    return out


# --- manifests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", sorted(LABS))
def test_lab_folders_follow_the_contract(n):
    lab = manifest.load(LABS[n])
    assert lab.number == n and lab.name == LABS[n].name
    assert lab.rules is not None and lab.rules.is_file()
    for f in lab.files:
        assert (lab.dir / "student" / f).is_file() and (lab.dir / "solution" / f).is_file()
    for name in ("README.md", "Makefile"):
        assert (lab.dir / name).is_file()
    numbers = {t.number: t for t in lab_tests(lab.dir)}
    assert any(t.mode == "live" for t in numbers.values()), "every lab has a live test"
    todos = lab.todos
    assert 2 <= len(todos) <= 4
    for todo in todos:
        assert todo.tests and set(todo.tests) <= set(numbers), todo
    listed = {n for todo in todos for n in todo.tests}
    assert listed == set(numbers), "every test exercises some TODO"
    assert sum(t.points for t in numbers.values()) > 0
    assert (lab.dir / "data").is_dir() and sum(p.stat().st_size for p in (lab.dir / "data").glob("*.pcapng")) < 64_000


GOOD = textwrap.dedent("""\
    number = 9
    slug = "x"
    title = "X"
    files = ["m.py"]
    [[pieces]]
    module = "m"
    kind = "udp"
    [[todos]]
    id = "TODO 1"
    text = "t"
    tests = ["9.1"]
""")


@pytest.mark.parametrize("change, words", [
    (lambda s: s.replace('number = 9\n', ''), "`number` is missing"),
    (lambda s: s.replace('number = 9', 'number = "9"'), "`number` must be an integer"),
    (lambda s: s.replace('kind = "udp"', 'kind = "tcp_magic"'), "unknown kind 'tcp_magic'"),
    (lambda s: s.replace('files = ["m.py"]', 'files = ["n.py"]'), "has no m.py in `files`"),
    (lambda s: 'mode = "fast"\n' + s, "`mode` must be python or kernel"),
    (lambda s: 'rules = "nowhere.rules"\n' + s, "rules file 'nowhere.rules' not found"),
    (lambda s: s.replace('tests = ["9.1"]', 'tests = [1]'), "test numbers as strings"),
    (lambda s: s.replace('title = "X"', 'title = '), "not valid TOML"),
    (lambda s: s + '[variants]\nport = []\n', "variants.port: expected a list of values"),
    (lambda s: s + '[variants]\nport = { min = 9, max = 1 }\n', "variants.port: expected"),
    (lambda s: s + '[variants]\nport = { min = 1, max = 9, step = 0 }\n', "variants.port"),
    (lambda s: s + '[variants]\nport = { min = 1, max = 9, stpe = 2 }\n', "variants.port"),
])
def test_manifest_errors_are_one_line_naming_the_file(tmp_path, change, words):
    (tmp_path / "lab.toml").write_text(change(GOOD))
    with pytest.raises(manifest.ManifestError) as e:
        manifest.load(tmp_path)
    msg = str(e.value)
    assert words in msg and str(tmp_path / "lab.toml") in msg and "\n" not in msg


def test_variants_are_parsed_once_and_picked_from_the_student_id():
    """The pick is a hash of slug, name and id: these values are what students were given."""
    lab = manifest.load(REPO / "labs" / "01-observe")
    assert [v.name for v in lab.variants] == ["udp_port", "udp_timeout"]
    assert lab.variants[0].choices == range(20000, 39991, 10)
    assert lab.variant_for("alice") == {"udp_port": 27930, "udp_timeout": 25}
    assert lab.variant_for("bob") == {"udp_port": 27510, "udp_timeout": 40}
    assert lab.variant_for(None) == {} and lab.label == "lab 1 (observe)"
    assert manifest.load(REPO / "labs" / "04-snat").variant_for("s7") == {"client_port": 24209}


def test_manifest_missing(tmp_path):
    with pytest.raises(manifest.ManifestError, match="no lab.toml here"):
        manifest.load(tmp_path)


# --- install / uninstall ----------------------------------------------------------------------

def _engine_objects():
    return {"TCP_CONNTRACKS": proto_tcp.TCP_CONNTRACKS, "TIMEOUT_SYSCTL": proto_tcp.TIMEOUT_SYSCTL,
            "udp_timeout_choice": proto_udp.udp_timeout_choice,
            "ICMP_INVMAP": ct_tuple.ICMP_INVMAP,
            "error_lookup": proto_icmp.error_lookup,
            "related_ctinfo": proto_icmp.related_ctinfo, "nat_port_choice": nat_core.nat_port_choice,
            "csum_replace2": ipv4.csum_replace2, "csum_replace4": ipv4.csum_replace4,
            "gc_verdict": ct_core.gc_verdict, "GcAverage": ct_core.GcAverage,
            "early_drop_choice": ct_core.early_drop_choice}


def test_install_replaces_and_uninstall_restores_the_reference():
    before = _engine_objects()
    replaced = set()
    for n, lab_dir in LABS.items():
        plugin.install(lab_dir, lab_dir / "solution")
        now = _engine_objects()
        replaced |= {k for k in before if now[k] is not before[k]}
        with pytest.raises(plugin.PluginError, match="already plugged in"):
            plugin.install(lab_dir, lab_dir / "solution")
        plugin.uninstall()
        assert _engine_objects() == before and all(_engine_objects()[k] is before[k] for k in before)
        assert not plugin.installed()
    assert replaced == set(before)
    # the solutions' tables are the kernel's
    plugin.install(LABS[2], LABS[2] / "solution")
    assert proto_tcp.TCP_CONNTRACKS == before["TCP_CONNTRACKS"]
    assert proto_tcp.TIMEOUT_SYSCTL == before["TIMEOUT_SYSCTL"]
    plugin.uninstall()
    plugin.install(LABS[3], LABS[3] / "solution")
    assert ct_tuple.ICMP_INVMAP == before["ICMP_INVMAP"]


def test_an_adapter_swaps_only_the_decision_the_student_wrote():
    """Seams, not copies: with any lab's solution plugged in, the engine's mechanisms
    (the packet handlers, the gc pass, early drop, the NAT search) stay the reference's."""
    mechanisms = {"udp_packet": lambda: ct_core.PROTO_HANDLERS[ct_tuple.IPPROTO_UDP],
                  "icmp_error": lambda: proto_icmp.icmp_error,
                  "get_unique_tuple": lambda: nat_core.get_unique_tuple,
                  "nf_nat_l4proto_unique_tuple": lambda: nat_core.nf_nat_l4proto_unique_tuple,
                  "gc_worker": lambda: ct_core.ConntrackTable.gc_worker,
                  "early_drop": lambda: ct_core.ConntrackTable.early_drop}
    before = {name: get() for name, get in mechanisms.items()}
    for lab_dir in LABS.values():
        plugin.install(lab_dir, lab_dir / "solution")
        try:
            assert all(get() is before[name] for name, get in mechanisms.items()), lab_dir.name
        finally:
            plugin.uninstall()


def _full_table(sysctl):
    from nattrack.conntrack.conn import IPS_CONFIRMED, Conn
    now = [0.0]
    table = ct_core.ConntrackTable(lambda: now[0], sysctl)
    for i in range(6):
        t = ct_tuple.Tuple(0x0A000002, 0xCB00710A, ct_tuple.IPPROTO_UDP, 40000 + i, 53)
        ct = Conn(t, ct_tuple.invert_tuple(t))
        ct.timeout, ct.status = 250 * (1 + i), ct.status | IPS_CONFIRMED
        table.hash[ct.orig] = table.hash[ct.reply] = ct
        table._bucket_add(ct)
        table.count += 1
    return table, now


def test_the_students_gc_decisions_run_inside_the_reference_scan(tmp_path):
    """gc_verdict() says keep for everything and next_run() says 7: the reference's
    gc_worker() reaps nothing and schedules the next scan 7 jiffies on."""
    _sub(tmp_path, "gc_worker.py", """\
        seen = []
        def gc_verdict(left, assured, closing, near_full):
            seen.append(left)
            return "keep"
        def next_run(lefts, elapsed):
            seen.append(("next_run", len(lefts), elapsed))
            return 7
        def early_drop(chains):
            return [[0, 0, "evict"]] if chains[0] else []
        """)
    table, now = _full_table({"nf_conntrack_max": 6, "nf_conntrack_buckets": 4})
    now[0] = 100.0                                  # every entry expired long ago
    plugin.install(LABS[5], tmp_path)
    assert table.gc_worker() == 7 and table.count == 6
    import gc_worker as student
    assert sorted(student.seen[:6]) == sorted(250 * (1 + i) - 25000 for i in range(6))
    assert student.seen[6:] == [("next_run", 6, 1)]
    plugin.uninstall()
    assert table.gc_worker() > 7 and table.count == 0      # the reference reaps them


# --- every lab's offline tests: solution, skeleton, half done ------------------------------------

@pytest.mark.parametrize("n", sorted(LABS))
def test_solution_scores_full_marks_offline(n):
    got = scores(LABS[n], LABS[n] / "solution")
    assert got and all(score == 1.0 for score, _ in got.values()), got


@pytest.mark.parametrize("n", sorted(LABS))
def test_skeleton_fails_exactly_the_tests_of_its_todos(n):
    lab = manifest.load(LABS[n])
    got = scores(LABS[n], LABS[n] / "student")
    todo_tests = {t for todo in lab.todos for t in todo.tests}
    assert {k for k, (s, _) in got.items() if s < 1.0} == todo_tests & set(got)
    for number, (_, why) in got.items():
        assert "TODO" in why and "\n" not in why, (number, why)


def test_half_done_submission_fails_only_the_open_todos(tmp_path):
    """Lab 3 with udp.py done and icmp.py not: the UDP tests pass, the ICMP ones fail."""
    lab = manifest.load(LABS[3])
    shutil.copy(LABS[3] / "solution" / "udp.py", tmp_path / "udp.py")
    shutil.copy(LABS[3] / "student" / "icmp.py", tmp_path / "icmp.py")
    got = scores(LABS[3], tmp_path)
    open_todos = {t for todo in lab.todos if todo.id != "TODO 1" for t in todo.tests}
    assert {k for k, (s, _) in got.items() if s < 1.0} == open_todos & set(got)


def test_a_wrong_cell_costs_partial_credit_and_fails_the_replays(tmp_path):
    src = (LABS[2] / "solution" / "tcp_states.py").read_text()
    wrong = src.replace('"ACK":     [sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV]',
                        '"ACK":     [sES, sIV, sES, sES, sCW, sCW, sCL, sTW, sCL, sIV]')
    assert wrong != src
    (tmp_path / "tcp_states.py").write_text(wrong)
    got = scores(LABS[2], tmp_path)
    assert 0.99 < got["2.2"][0] < 1.0
    assert got["2.2"][1] == ("119 of 120 cases right; first wrong: LAST_ACK --ACK (ORIGINAL): "
                             "yours 'CLOSE', expected 'TIME_WAIT'")
    assert got["2.4"][0] == 0 and "CLOSE" in got["2.4"][1]
    assert got["2.1"][0] == got["2.3"][0] == 1.0


# --- broken submissions: one line naming the file and what is missing ---------------------------

def _sub(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize("lab_n, files, words", [
    (2, {}, "tcp_states.py: the file is missing"),
    (2, {"tcp_states.py": "def next_state(s, d, f)\n    return s\n"}, "tcp_states.py: line 1:"),
    (2, {"tcp_states.py": "import nonexistent_module_xyz\n"},
     "tcp_states.py does not import: ModuleNotFoundError"),
    (2, {"tcp_states.py": "def next_state(s, d, f):\n    return 'SYN_SENT'\n"},
     "tcp_states.py: no function timeout() (TODO 2)"),
    (2, {"tcp_states.py": "def next_state(s, d, f):\n    return 42\n"
                          "def timeout(s):\n    return ('nf_conntrack_tcp_timeout_close', 10)\n"},
     "next_state('NONE', 'ORIGINAL', 'SYN') returned 42; expected a state name"),
    (2, {"tcp_states.py": "import sys\nsys.exit(3)\n"}, "tcp_states.py does not import: SystemExit"),
    (4, {"snat.py": "def pick_port(*a):\n    return 1\n"}, "snat.py: no function csum_replace2() (TODO 3)"),
    # the answer is in the reference engine: a submission may not reach for it
    (2, {"tcp_states.py": "x = 1\nfrom nattrack.conntrack.proto_tcp import TCP_CONNTRACKS\n"},
     "tcp_states.py: line 2: uses 'nattrack.conntrack.proto_tcp', the reference"),
    (2, {"tcp_states.py": "import importlib\nt = importlib.import_module('nattrack.conntrack')\n"},
     "tcp_states.py: line 2: uses 'nattrack.conntrack'"),
    (2, {"tcp_states.py": "from helper import *\n", "helper.py": "import nattrack\n"},
     "helper.py: line 1: uses 'nattrack'"),
])
def test_broken_submission_is_one_line(tmp_path, lab_n, files, words):
    for name, text in files.items():
        _sub(tmp_path, name, text)
    with pytest.raises(plugin.PluginError) as e:
        plugin.install(LABS[lab_n], tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not plugin.installed()


def _replay_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli(argv)
    finally:
        plugin.uninstall()
    return rc, out.getvalue(), err.getvalue()


def test_a_submission_failing_while_packets_flow_ends_replay_with_one_line(tmp_path):
    shutil.copy(LABS[3] / "solution" / "icmp.py", tmp_path / "icmp.py")
    _sub(tmp_path, "udp.py", """\
        def udp_timeout(replied, age):
            return "nf_conntrack_udp_timeout", 1 / 0
    """)
    rc, out, err = _replay_cli(["replay", str(LABS[3] / "data" / "udp.pcapng"),
                                "--iface", "ntr-lan=10.0.0.1/24", "--iface", "ntr-wan=203.0.113.1/24",
                                "--plugin", f"{LABS[3]}={tmp_path}"])
    assert rc == 2 and out == ""
    assert err.strip() == (f"nattrack: {tmp_path.name}/udp.py: udp_timeout(False, 0.0) raised "
                           f"ZeroDivisionError: division by zero")


def test_replay_plugin_argument_errors(tmp_path):
    rc, _, err = _replay_cli(["replay", str(LABS[3] / "data" / "udp.pcapng"), "--iface",
                              "ntr-lan=10.0.0.1/24", "--plugin", "labs-without-equals"])
    assert rc == 2 and "expected LAB_DIR=SUBMISSION_DIR" in err and err.count("\n") == 1
    rc, _, err = _replay_cli(["replay", str(LABS[3] / "data" / "udp.pcapng"), "--iface",
                              "ntr-lan=10.0.0.1/24", "--plugin", f"{tmp_path}={tmp_path}"])
    assert rc == 2 and "no lab.toml here" in err


def test_wrong_checksums_are_counted_on_the_way_out(tmp_path):
    src = (LABS[4] / "solution" / "snat.py").read_text()
    (tmp_path / "snat.py").write_text(src.replace("return ~s & 0xFFFF", "return s & 0xFFFF"))
    rc, out, err = _replay_cli(["replay", str(LABS[4] / "data" / "snat.pcapng"), "--json",
                                "--iface", "ntr-lan=10.0.0.1/24", "--iface", "ntr-wan=203.0.113.1/24",
                                "--rules", str(LABS[4] / "rules" / "snat.rules"),
                                "--plugin", f"{LABS[4]}={tmp_path}"])
    assert rc == 0, err
    assert json.loads(out)["packets"]["bad_checksums_out"] > 10


@pytest.mark.parametrize("args, words", [
    (["--mode", "kernel", "--plugin", f"{LABS[2]}={LABS[2] / 'solution'}"], "python mode only"),
    (["--mode", "python", "--plugin", f"{LABS[2]}=/nonexistent"], "/nonexistent: no such submission folder"),
    (["--mode", "python", "--plugin", f"{LABS[2]}={LABS[2] / 'solution'}", "--run-as", "nosuchuser"],
     "--run-as nosuchuser: no such user"),
    (["--mode", "python", "--plugin", "nonsense"], "expected LAB_DIR=SUBMISSION_DIR"),
])
def test_router_plugin_argument_errors_are_one_line(tmp_path, args, words):
    """Checked before the router touches any namespace (so no root is needed here)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "nattrack.router", "--iface", "a=10.0.0.1/24",
                        "--control", str(tmp_path / "c.sock"), *args],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr
