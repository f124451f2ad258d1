"""The set-up gives a fresh Debian 12 or 13 machine every command the kit and its tests run.

* The code is read (not run) for the external commands it executes: argv lists given to
  subprocess and to the kit's own wrappers, ``lab exec NODE -- CMD``, ``ip netns exec NS
  CMD``, ``sh -c`` scripts and Mininet's ``node.cmd()`` lines.  Each must be a row of
  ``scripts/commands.txt`` (command -> Debian package), whose packages ``scripts/setup.sh``
  installs; the tool lists of ``doctor`` and of the live and kernel tests agree with it.
* ``setup.sh --tests --probe`` finds every listed command on this machine.
* As root: ``scripts/setup.sh --tests`` in fresh bookworm and trixie roots (mmdebstrap, a
  clone of HEAD as CI has it, this machine's pip configuration), the probe inside, each
  command owned by its listed package there, and a second run that changes nothing.
* Lab READMEs only tell students to run commands a fresh machine has.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"
COMMANDS_TXT = ROOT / "scripts" / "commands.txt"
SCANNED = ("nattrack", "tests", "labs")
# Student code the grader must contain (it tries sudo, su ...): not the suite's commands.
NOT_SCANNED = ("tests/grading/hostile",)
# Names the suite runs on purpose to see them fail.
NOT_COMMANDS = {"no-such-command"}


def listed_commands() -> dict[str, tuple[str, str]]:
    """scripts/commands.txt: command -> (package, kit|tests)."""
    rows = {}
    for line in COMMANDS_TXT.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            cmd, pkg, scope = words
            assert scope in ("kit", "tests"), line
            rows[cmd] = (pkg, scope)
    return rows


def setup_packages(*args: str) -> set[str]:
    out = subprocess.run([str(SETUP), *args, "--list-packages"], capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


# --- reading the code for the commands it runs ---------------------------------------------

# f([cmd, arg, ...]) or f(node, [cmd, ...]): subprocess's, Mininet's popen, the lab client's
LIST_RUNNERS = {"run", "Popen", "check_output", "check_call", "_run", "exec", "popen",
                "execvp", "execv", "execvpe"}
# f(cmd, arg, ...) / f(node, cmd, arg, ...): the tests' own helpers; value = args to skip
VARARG_RUNNERS = {"_run": 0, "sh": 0, "exec": 1, "popen": 1}
SHELL_RUNNERS = {"cmd", "sendCmd", "system"}          # one shell line (Mininet's node.cmd)
WHICH = {"_tool", "which"}                            # _tool("ip") as an argv element
SHELLS = {"sh", "bash"}
WORD = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*$")
PREFIXES = {"if", "then", "else", "elif", "do", "while", "until", "exec", "!", "time"}
BUILTINS = {"fi", "done", "esac", "set", "export", "echo", "cd", "read", "test", "[", "exit",
            "true", "false", "trap", "wait", "kill", "printf", "return", "local", "shift",
            ":", "for", "case"}


def _text(node) -> str | None:
    """A string constant; an f-string with its fields as NUL (never a command word)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
    if (isinstance(node, ast.Call) and node.args and _name(node.func) in WHICH):
        return _text(node.args[0])
    return None


def _name(func) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def shell_commands(script: str) -> list[str]:
    """The command word of each simple command of a shell line (builtins left out)."""
    out = []
    for part in re.split(r"[;&|\n(){}`]|\$\(", script):
        words = part.split()
        while words and (words[0] in PREFIXES or "=" in words[0] or words[0][0] in "<>0123456789"):
            words = words[2:] if words[0] in ("<", ">", ">>") else words[1:]
        if words and WORD.match(words[0]) and words[0] not in BUILTINS:
            out.append(words[0])
    return out


def argv_commands(argv: list) -> list[str]:
    """What an argv runs: its head, and what it wraps (after `--`, `ip netns exec NS`,
    a shell's -c script)."""
    if not argv:
        return []
    head, out = argv[0], []
    if head and WORD.match(head):
        out.append(head)
    if head in SHELLS and "-c" in argv[:-1]:
        return out + shell_commands(argv[argv.index("-c") + 1] or "")
    if "--" in argv:
        out += argv_commands(argv[argv.index("--") + 1:])
    elif argv[:3] == ["ip", "netns", "exec"]:
        out += argv_commands(argv[4:])
    return out


def call_commands(call: ast.Call) -> list[str]:
    name = _name(call.func)
    if name in SHELL_RUNNERS:
        return shell_commands(_text(call.args[0]) or "") if call.args else []
    if name == "cli":                         # the kit's CLI: only `lab exec NODE -- CMD`
        argv = [_text(a) for a in call.args]
        return argv_commands(argv[argv.index("--") + 1:]) if "--" in argv else []
    lists = [a for a in call.args if isinstance(a, (ast.List, ast.Tuple))]
    if lists and name in LIST_RUNNERS:
        elts = lists[0].elts
    elif name in VARARG_RUNNERS:
        elts = call.args[VARARG_RUNNERS[name]:]
    else:
        return []
    return argv_commands([None if isinstance(e, ast.Starred) else _text(e) for e in elts])


def commands_run_by_the_code() -> dict[str, list[str]]:
    """command -> where ('path:line') for every Python file of SCANNED."""
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(NOT_SCANNED) or "/.venv/" in rel:
                continue
            try:
                tree = ast.parse(path.read_text(), rel)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    for cmd in call_commands(node):
                        found.setdefault(cmd, []).append(f"{rel}:{node.lineno}")
    for mk in sorted([*ROOT.glob("labs/*/Makefile"), *ROOT.glob("labs/*.mk")]):
        rel = mk.relative_to(ROOT).as_posix()
        for n, line in enumerate(mk.read_text().splitlines(), 1):
            if line.startswith("\t"):          # a recipe line; $(NATTRACK) is the kit's
                line = re.sub(r"'[^']*'", "''", line.lstrip("\t@-"))
                line = re.sub(r"\$\(NATTRACK\) lab exec \S+ --", ";", line)
                for cmd in shell_commands(re.sub(r"\$\(\w+\)", "\0", line)):
                    found.setdefault(cmd, []).append(f"{rel}:{n}")
    return found


def test_the_scan_finds_commands_in_every_form_the_code_uses():
    """The reader itself: each way of running a command seen in the code."""
    src = '''
subprocess.run(["conntrack", "-L"])
subprocess.run([_tool("ip"), "netns", "exec", ns, _tool("iptables-save")])
_run("ip", "netns", "exec", b, "nft", "add", "table", "ip", "t")
topo.popen(topo.client, "hping3", "-S")
lab.exec("rtr", "ethtool", "-K")
net.c.exec("ext", ["curl", "-s"])
basic_lab.cli("lab", "exec", "h1", "--", "sh", "-c", "echo hi | nc -u -w1 x 7; sleep 1")
node.cmd(f"ip link del {name} >/dev/null 2>&1; x=1 bridge link show")
subprocess.run(["unshare", "--net", "--", "tc", "qdisc"])
subprocess.run([sys.executable, "-c", "print(1)"])
session.run("handshake")
'''
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call):
            found += call_commands(node)
    assert sorted(set(found)) == ["bridge", "conntrack", "curl", "ethtool", "hping3", "ip",
                                  "iptables-save", "nc", "nft", "sh", "sleep", "tc",
                                  "unshare"]


def test_every_command_the_code_runs_is_listed_with_its_package():
    listed = listed_commands()
    found = commands_run_by_the_code()
    assert len(found) > 20, found                      # the reader still reads
    unlisted = {c: where[:3] for c, where in found.items()
                if c not in listed and c not in NOT_COMMANDS}
    assert not unlisted, (f"commands run by the code but missing from {COMMANDS_TXT.name} "
                          f"(add `COMMAND PACKAGE kit|tests`): {unlisted}")


def test_setup_installs_the_package_of_every_listed_command():
    listed = listed_commands()
    kit, tests = setup_packages(), setup_packages("--tests")
    assert kit <= tests
    for cmd, (pkg, scope) in listed.items():
        assert pkg in (kit if scope == "kit" else tests), (cmd, pkg, scope)
    assert "nftables" in tests                         # issue 9: test_show.py runs nft
    assert {"python3-venv", "mininet"} <= kit


def test_the_kits_tool_lists_agree_with_commands_txt():
    from nattrack.lab import doctor
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from kernel.harness import TOOLS as kernel_tools
        from live.conftest import TOOLS as live_tools
    finally:
        sys.path.remove(str(ROOT / "tests"))
    listed = listed_commands()
    for where, tools in (("doctor", doctor.TOOLS), ("tests/kernel", kernel_tools),
                         ("tests/live", live_tools)):
        for cmd, pkg in tools.items():
            assert cmd in listed and listed[cmd][0] == pkg, (where, cmd, pkg, listed.get(cmd))
    assert all(listed[cmd][1] == "kit" for cmd in doctor.TOOLS)   # the lab's, without --tests


def test_setup_rejects_an_unknown_option_in_one_line():
    p = subprocess.run([str(SETUP), "--test"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "unknown option '--test'" in p.stderr


def test_tool_probe_finds_every_command_here():
    """What `scripts/test` just installed: every listed command resolves on this machine."""
    p = subprocess.run([str(SETUP), "--tests", "--probe"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_tool_probe_names_what_is_missing(tmp_path):
    """The probe can fail: a copy of the scripts with one command that exists nowhere."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    (tmp_path / "scripts" / "commands.txt").write_text(
        COMMANDS_TXT.read_text() + "ntk-no-such-tool  ntk-pkg  tests\n")
    p = subprocess.run([str(tmp_path / "scripts" / "setup.sh"), "--tests", "--probe"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "ntk-no-such-tool:ntk-pkg" in p.stderr and "ip:" not in p.stderr


# --- lab READMEs: commands a fresh machine has ------------------------------------------------

CODE_SPAN = re.compile(r"`([^`\n]+)`")
# The kit's own programs, from a lab folder (in a clone and in the VM alike).
KIT_PATH = "../../.venv/bin/"
KIT_SUBCOMMANDS = ("lab", "conntrack", "diff", "trace", "sysctl", "capture", "notebook",
                   "grade", "replay", "doctor", "record")


def readme_commands(text: str) -> list[str]:
    """Code spans and fenced lines that are commands (start with a program, not a value)."""
    spans = CODE_SPAN.findall(re.sub(r"```.*?```", "", text, flags=re.S))
    # Fences in pairs: a ```toml block's closing fence must not open a shell block.
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang in ("", "sh", "bash", "console"):
            spans += [l for l in block.splitlines() if l.strip() and not l.startswith("#")]
    cmds = []
    for span in spans:
        for part in re.split(r"\s*(?:\||&&|;)\s*", span.strip()):
            words = part.split()
            if len(words) > 1 and (words[0] in ("python", "python3", "pip", "nattrack", "sudo", "make")
                          or "/" in words[0] and words[0].endswith(("nattrack", "python"))):
                cmds.append(part)
    return cmds


def test_lab_readmes_run_only_commands_a_fresh_machine_has():
    bad, listed = [], listed_commands()
    readmes = sorted(ROOT.glob("labs/*/README.md"))
    assert len(readmes) >= 6
    for readme in readmes:
        for cmd in readme_commands(readme.read_text()):
            words = cmd.split()
            first = words[1] if words[0] == "sudo" and len(words) > 1 else words[0]
            if first in ("python", "pip"):
                bad.append(f"{readme.parent.name}: `{cmd}` (Debian has no `{first}`: python3)")
            elif first == "nattrack" and len(words) > 1 and words[1] in KIT_SUBCOMMANDS:
                bad.append(f"{readme.parent.name}: `{cmd}` (not on PATH in a clone: "
                           f"../../.venv/bin/nattrack)")
            elif not (first in listed or first in BUILTINS or first.startswith(KIT_PATH)):
                bad.append(f"{readme.parent.name}: `{cmd}` ({first} is not in {COMMANDS_TXT.name})")
    assert not bad, "\n".join(bad)


def test_readme_reader_sees_the_forms_students_copy():
    text = ("1. `python student/x.py`, then `echo hi | nattrack lab exec h1 -- nc -u x 7`\n"
            "```sh\nsudo make run\n```\n")
    assert readme_commands(text) == ["python student/x.py", "nattrack lab exec h1 -- nc -u x 7",
                                     "sudo make run"]


# --- the hints `lab up` and doctor print: a command that runs where they are printed ----------

def test_hints_name_nattrack_by_a_path_that_runs_when_it_is_not_on_path(monkeypatch, tmp_path):
    from nattrack.cli.lab import describe_lines, nattrack_command, runnable
    monkeypatch.setenv("PATH", str(tmp_path))             # a clone: nattrack on no PATH
    cmd = nattrack_command()
    assert cmd != "nattrack" and os.path.isabs(cmd.split()[0])
    assert runnable("run `sudo nattrack lab down --force`; the nattrack group") == \
        f"run `sudo {cmd} lab down --force`; the nattrack group"
    st = {"topo": "clash", "mode": "python", "nodes": {},
          "notes": ["same source port from two hosts: nattrack lab exec h1 -- nc -u 1.2.3.4 7"]}
    assert f"  try: same source port from two hosts: {cmd} lab exec h1 -- nc -u 1.2.3.4 7" \
        in describe_lines(st)
    p = subprocess.run([*cmd.split(), "lab", "--help"], capture_output=True, text=True,
                       env={"PATH": str(tmp_path)})
    assert p.returncode == 0 and "lab" in p.stdout, p.stderr


def test_hints_say_plain_nattrack_where_path_finds_this_one(monkeypatch, tmp_path):
    """The VM links .venv/bin/nattrack into /usr/local/bin."""
    from nattrack.cli.lab import nattrack_command, runnable
    mine = Path(sys.executable).parent / "nattrack"
    if not mine.exists():
        pytest.skip("nattrack is not installed as a script here (pip install -e .)")
    (tmp_path / "nattrack").symlink_to(mine)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nattrack_command() == "nattrack"
    assert runnable("`sudo nattrack doctor`") == "`sudo nattrack doctor`"


# --- a fresh Debian root: the set-up from nothing, on bookworm and trixie ----------------------

SUITES = {"bookworm": (3, 11), "trixie": (3, 13)}    # Debian 12 and 13, and their Python
BASE = ("ca-certificates", "python3")                # about what a fresh cloud image has
CACHE = Path(os.environ.get("NATTRACK_TEST_CACHE", "/var/cache/nattrack-tests"))
CHECKOUT = "/root/nattrack"
# For each listed command: the packages owning its path (and the path it resolves to), and
# what its listed package depends on (python3's /usr/bin/python3 is python3-minimal's).
OWNERS = r'''
while read -r cmd pkg _; do
    case "$cmd" in ''|\#*) continue;; esac
    p=$(PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd") || { echo "$cmd|$pkg||"; continue; }
    r=$(readlink -f "$p")
    owners=$( { dpkg -S "$p" "$r" "${p#/usr}" "${r#/usr}"; } 2>/dev/null | grep -v '^diversion' |
              sed 's/: .*//; s/,/ /g' | tr '\n' ' ')
    deps=$(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$pkg" 2>/dev/null)
    echo "$cmd|$pkg|$owners|$deps"
done < scripts/commands.txt
'''


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``: before deleting it, there must be none."""
    top = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return [m for m in (line.split()[4] for line in f) if m == top or m.startswith(top + "/")]


def _machine_config(root: Path) -> dict[str, str]:
    """This machine's pip configuration and local certificate authorities (a proxy's, which
    pip must trust), put into ``root`` where a fresh machine has them; returns the PIP_*
    environment to run with.  The CAs take effect with update-ca-certificates inside."""
    for rel in ("etc/pip.conf", "etc/xdg/pip", "usr/local/share/ca-certificates"):
        src, dst = Path("/") / rel, root / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def _owned_by_listed_package(line: str) -> str | None:
    """One OWNERS line -> None if the listed package provides the command, else why not."""
    cmd, pkg, owners, deps = line.split("|", 3)
    owned = {o.split(":")[0] for o in owners.split()}
    if not owned:
        return f"{cmd}: not found (listed package {pkg})"
    depends = {d.split()[0].split(":")[0] for d in re.split(r"[,|]", deps) if d.strip()}
    if pkg in owned or owned & depends:
        return None
    return f"{cmd}: owned by {' '.join(sorted(owned))}, listed as {pkg}"


def test_owner_check_reads_what_dpkg_says():
    ok = "python3|python3|python3-minimal python3.11-minimal:amd64 |python3-minimal (= 3.11.2-1), x | y"
    assert _owned_by_listed_package(ok) is None          # through the listed package's Depends
    assert _owned_by_listed_package("nc|netcat-openbsd|netcat-openbsd |") is None
    assert _owned_by_listed_package("nc|netcat-openbsd||") == \
        "nc: not found (listed package netcat-openbsd)"
    assert _owned_by_listed_package("sysctl|coreutils|procps |") == \
        "sysctl: owned by procps, listed as coreutils"


@pytest.mark.parametrize("suite", SUITES)
def test_setup_on_a_fresh_debian(suite, tmp_path, capsys):
    """README's set-up from nothing: ``scripts/setup.sh --tests`` in a fresh root of
    ``suite``, run as CI runs it (a clone of HEAD, as root); then the probe, each command's
    owner, the kit importable from Debian's Python, and a second run that does nothing.

    The demo is not run here: Mininet starts each node's processes with setns() into the
    node's mount namespace, which resets their root to that namespace's, outside a chroot
    (the router fails with "no such file .venv/bin/python"); it needs a pivoted root (a
    container or VM).  Bookworm's demo runs on this host (tests/lab/test_demo.py)."""
    from rootfs import Chroot, rootfs_problem, rootfs_tarball, unpack
    problem = rootfs_problem()
    if problem:
        pytest.skip(problem)
    started = time.monotonic()
    root = unpack(rootfs_tarball(suite, BASE), tmp_path / "root")
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(root / CHECKOUT.lstrip("/"))],
                       check=True, capture_output=True)
        env = _machine_config(root)
        # A chroot has no init: no package may start its service on this machine's network.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        binds = {}                            # caches make reruns fast; a first run fills them
        for name, inside in (("apt", "/var/cache/apt/archives"), ("pip", "/root/.cache/pip")):
            host = CACHE / f"{name}-{suite}"
            host.mkdir(parents=True, exist_ok=True)
            binds[str(host)] = inside
        if Path("/opt/wheels").is_dir():      # PIP_FIND_LINKS of this machine's pip set-up
            binds["/opt/wheels"] = "/opt/wheels"
        # On a machine "/" is a mount point; Mininet's mnexec makes it private (EINVAL if not).
        subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
        subprocess.run(["mount", "--make-private", str(root)], check=True)
        with Chroot(root, binds) as c:
            c.run(["update-ca-certificates"])
            t0 = time.monotonic()
            first = c.run(["scripts/setup.sh", "--tests"], cwd=CHECKOUT, env=env, timeout=1500)
            t1 = time.monotonic()
            assert "==> installing Debian packages" in first.stdout, first.stdout
            assert "==> creating virtualenv .venv" in first.stdout
            c.run(["scripts/setup.sh", "--tests", "--probe"], cwd=CHECKOUT, env=env)
            owners = c.run(["sh", "-c", OWNERS], cwd=CHECKOUT).stdout.splitlines()
            wrong = [w for w in map(_owned_by_listed_package, owners) if w]
            assert not wrong, f"{suite}: commands.txt is wrong here: {wrong}"
            py = c.run([".venv/bin/python", "-c", "import sys, nattrack.cli.main, "
                        "mininet.net, scapy.all, jupyterlab, playwright; "
                        "print(*sys.version_info[:2])"], cwd=CHECKOUT).stdout.split()
            assert tuple(map(int, py)) == SUITES[suite]
            # The compiled engine built with this Debian's gcc and Python, and is the one used.
            build = c.run([".venv/bin/python", "-c", "import nattrack; print(nattrack.BUILD)"],
                          cwd=CHECKOUT).stdout.strip()
            assert build.startswith("compiled"), f"{suite}: {build}\n{first.stdout[-2000:]}"
            c.run([".venv/bin/nattrack", "replay", "--help"], cwd=CHECKOUT)
            t2 = time.monotonic()
            again = c.run(["scripts/setup.sh", "--tests"], cwd=CHECKOUT, env=env)
            assert (again.stdout, again.stderr) == ("", ""), "the second run is not a no-op"
            t3 = time.monotonic()
        with capsys.disabled():
            print(f"\n{suite}: root {t0 - started:.0f} s, setup.sh --tests {t1 - t0:.0f} s, "
                  f"checks {t2 - t1:.0f} s, second run {t3 - t2:.1f} s")
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
        left = _mounts_under(root)
        assert not left, f"still mounted, {root} kept: {left}"
        shutil.rmtree(root, ignore_errors=True)
