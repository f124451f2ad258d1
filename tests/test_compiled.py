"""The compiled engine (issue 11 item 2): scripts/build-compiled and the selection in
nattrack/__init__.py.

The build is real (mypyc and gcc, as scripts/setup.sh runs them), the selection is seen
from fresh interpreters, and a student's plugin is shown to run its own piece on a
machine that has the compiled modules.  Whether this process runs compiled or pure is
the suite's choice (scripts/test runs it both ways); these tests hold in both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nattrack

REPO = Path(__file__).resolve().parents[1]
BUILD = [sys.executable, str(REPO / "scripts" / "build-compiled")]
LAB4 = REPO / "labs" / "04-snat"


def run(argv, env=None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("NATTRACK_PURE", "NATTRACK_COMPILED_DIR")}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**base, **(env or {})})


def where(module: str, env=None, pythonpath: Path | None = None) -> tuple[str, str]:
    """(nattrack.BUILD, module.__file__) in a fresh interpreter (importing from ``pythonpath``)."""
    code = f"import nattrack, {module} as m; print(nattrack.BUILD); print(m.__file__)"
    env = dict(env or {})
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    r = run([sys.executable, "-c", code], env=env, cwd=pythonpath or REPO)
    assert r.returncode == 0, r.stderr
    build, file = r.stdout.splitlines()
    return build, file


def test_every_compiled_module_has_its_source():
    """A module renamed or moved must be renamed in MODULES too (the build would refuse)."""
    assert [m for m in nattrack.MODULES if not nattrack.source_path(m).is_file()] == []


def test_the_default_is_the_compiled_build_and_pure_is_one_variable_away():
    """scripts/setup.sh built it: without NATTRACK_PURE every engine module loads compiled."""
    build, file = where("nattrack.conntrack.proto_tcp")
    assert build.startswith("compiled"), build
    assert file.endswith(nattrack.EXT_SUFFIX) and file.startswith(str(nattrack.BUILD_DIR))
    build, file = where("nattrack.conntrack.proto_tcp", {"NATTRACK_PURE": "1"})
    assert build == "pure (NATTRACK_PURE=1)"
    assert file == str(REPO / "nattrack" / "conntrack" / "proto_tcp.py")


def test_an_edited_source_is_never_shadowed_by_its_stale_build(tmp_path):
    """A copy of the package with one compiled module changed: the pure Python runs."""
    shutil.copytree(REPO / "nattrack", tmp_path / "nattrack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    udp = tmp_path / "nattrack" / "conntrack" / "proto_udp.py"
    udp.write_text(udp.read_text() + "\n# edited\n")
    build, file = where("nattrack.conntrack.proto_udp", pythonpath=tmp_path)
    assert build == ("pure (nattrack/conntrack/proto_udp.py changed since the build "
                     "(scripts/setup.sh rebuilds it))")
    assert file == str(udp)
    # the same copy unedited is fresh: the compiled build runs
    udp.write_text((REPO / "nattrack" / "conntrack" / "proto_udp.py").read_text())
    assert where("nattrack.conntrack.proto_udp", pythonpath=tmp_path)[0].startswith("compiled")


def test_a_plugin_refuses_the_compiled_engine_in_its_process():
    """Compiled modules call each other directly: a replaced piece would silently not run,
    so install() over them fails with one line (in a fresh interpreter: this one may be pure)."""
    code = ("import nattrack.conntrack.core\n"
            "from nattrack.exercises import plugin\n"
            f"try:\n    plugin.install({str(LAB4)!r}, {str(LAB4 / 'solution')!r})\n"
            "except plugin.PluginError as e:\n    print(e, plugin.installed())\n")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("this process runs the compiled engine, which a plugin cannot replace pieces "
                        "of: run it with NATTRACK_PURE=1 (--plugin on the command line does) False\n")


def _replay_ports(extra: list[str], env=None) -> set[int]:
    r = run([sys.executable, "-m", "nattrack.cli.main", "replay", str(LAB4 / "data" / "snat.pcapng"),
             "--iface=ntr-lan=10.0.0.1/24", "--iface=ntr-wan=203.0.113.1/24",
             "--rules", str(LAB4 / "rules" / "snat.rules"), "--seed", "7", "--json", "--list", *extra],
            env=env)
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)["table"]
    return {e["reply"]["dport"] for e in table if "dport" in e["reply"]}


def test_a_students_piece_runs_with_the_compiled_modules_present(tmp_path):
    """`nattrack replay --plugin` selects the pure engine before importing it, so the
    student's pick_port() decides; without the plugin the compiled reference keeps 41000."""
    assert nattrack.why_not_compiled() in (None, "NATTRACK_PURE=1")   # the build is there
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "snat.py").write_text((LAB4 / "solution" / "snat.py").read_text() + """

_reference_pick_port = pick_port


def pick_port(port, to_ports, offset, in_use):   # this student moves every free port to 61234
    if to_ports is None and 61234 not in in_use:
        return 61234
    return _reference_pick_port(port, to_ports, offset, in_use)
""")
    reference = _replay_ports([])
    assert 61234 not in reference and 41000 in reference
    students = _replay_ports(["--plugin", f"{LAB4}={sub}"])
    assert 61234 in students


def test_the_build_is_idempotent_and_falls_back_in_one_line(tmp_path):
    """A real build into a scratch folder: its modules load from there; a second run
    compiles nothing; with no C compiler it says why in one line and pure Python runs."""
    env = {"NATTRACK_COMPILED_DIR": str(tmp_path / "built")}
    first = run(BUILD, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "compiled engine built" in first.stdout
    build, file = where("nattrack.packet.checksum", env)
    assert build.startswith("compiled") and file.startswith(str(tmp_path / "built"))
    again = run(BUILD, env)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")     # setup.sh's second run is a no-op

    env = {"NATTRACK_COMPILED_DIR": str(tmp_path / "nocc"), "PATH": str(tmp_path / "empty")}
    r = run(BUILD + ["--force"], env)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("nattrack: compiled engine not built (no C compiler")
    assert lines[0].endswith("the pure-Python engine runs")
    build, file = where("nattrack.packet.checksum", env)
    assert build.startswith("pure (the build failed: no C compiler") and file.endswith(".py")
