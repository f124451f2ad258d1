"""What labs 06 and 07 share: a broken set-up of a lab network and a student's fix, both
as data, checked and applied by the grader -- to recorded traffic through the engine, or to
the live lab as root.  Each lab's ``scenarios.py`` says which knobs it has and what "fixed"
means; the mechanism is here:

* reading: a scenario's ``scenarios/NAME.toml`` and its rules (``NAME.rules``, or
  ``NAME.nft`` for the nft variant), a submission's ``NAME.toml`` / ``NAME.rules``; every
  knob checked, every error one line naming the file (:class:`KnobError`);
* the recorded traffic: :func:`recorded` and :class:`View` (a packet as the checks see it);
* the live lab: :func:`run` on a node, :func:`load_rules_live` (nft or iptables-restore),
  :func:`set_sysctls_live`, :func:`udp_ask`;
* the labs' public tests (:func:`student_fix`, :func:`diagnoses`), their command line
  (:func:`command_line`) and the scripts that write their captures (:func:`write_captures`).

Nothing a student writes is executed: rules are parsed by nattrack's parser first, every
other knob is checked and applied as an argv.
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType


class KnobError(ValueError):
    """A scenario or fix file that cannot be applied (the message says what to change)."""


CONNTRACK_SYSCTLS = "net.netfilter.nf_conntrack_"


def _words(items) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- reading and checking -------------------------------------------------------------------

def load_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KnobError(f"{where}: not valid TOML: {exc}") from None


def check_keys(data: dict, where: str, knobs: tuple[str, ...], also: tuple[str, ...]) -> None:
    """Only ``knobs`` (named in the error) and ``also`` (a scenario file's own keys)."""
    unknown = set(data) - set(knobs) - set(also) - {"diagnosis"}
    if unknown:
        raise KnobError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected "
                        f"{', '.join((*knobs, 'diagnosis'))})")


def check_sysctls(data: dict, where: str, node: str, allowed: tuple[str, ...] = ()) -> dict:
    """``[sysctl]``: whole numbers for ``net.netfilter.nf_conntrack_*`` and ``allowed``."""
    out = {}
    for key, value in (data.get("sysctl") or {}).items():
        if key not in allowed and not key.startswith(CONNTRACK_SYSCTLS):
            raise KnobError(f"{where}: sysctl {key!r}: only "
                            f"{_words([*allowed, CONNTRACK_SYSCTLS + '*'])} can be set on "
                            f"the {node}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KnobError(f"{where}: sysctl {key} = {value!r}: expected a whole number")
        out[key] = value
    return out


def check_diagnosis(data: dict, where: str) -> str:
    diag = data.get("diagnosis", "")
    if not isinstance(diag, str):
        raise KnobError(f"{where}: diagnosis: expected a string")
    return diag


def table_list(data: dict, key: str) -> list:
    """A knob given as one table or as an array of tables (``[x]`` or ``[[x]]``)."""
    items = data.get(key) or []
    return [items] if isinstance(items, dict) else list(items)


def check_rules(text: str, where: str, tables: tuple[str, ...] = ("nat", "filter")) -> str:
    """The rules parse with nattrack's parser and name only ``tables`` (nft syntax: at
    least one table)."""
    from nattrack.netfilter.rulesfile import is_nft, parse_rules
    from nattrack.netfilter.xtables import RulesError
    try:
        rs = parse_rules(text, where)
    except RulesError as exc:
        raise KnobError(str(exc)) from None
    if rs.syntax == "nft" or is_nft(text):
        if not rs.tables:
            raise KnobError(f"{where}: no table (nft syntax: table ip nat {{ ... }})")
        return text
    found = {line.strip()[1:].split()[0] for line in text.splitlines()
             if line.strip().startswith("*")}
    if not found or not found <= set(tables):
        raise KnobError(f"{where}: rules for the {_words(['*' + t for t in tables])} tables "
                        f"only (found: {', '.join(sorted(found)) or 'none'})")
    return text


def scenario_files(lab_dir: Path, name: str, names: tuple[str, ...], kind: str,
                   syntax: str = "iptables") -> tuple[dict, str, str]:
    """(``scenarios/NAME.toml`` parsed, the text of its rules, their file name) of scenario
    NAME; its rules from ``scenarios/NAME.rules``, or ``NAME.nft`` (the nft variant)."""
    if name not in names:
        raise KnobError(f"unknown {kind} {name!r}: one of {', '.join(names)}")
    meta = load_toml((lab_dir / "scenarios" / f"{name}.toml").read_text(),
                     f"scenarios/{name}.toml")
    rules = f"scenarios/{name}.{'nft' if syntax == 'nft' else 'rules'}"
    return meta, (lab_dir / rules).read_text(), rules


def submission_texts(folder: Path, name: str) -> tuple[str | None, str | None]:
    """The texts of ``folder/NAME.toml`` and ``folder/NAME.rules`` (None: not there)."""
    def text(suffix):
        p = folder / f"{name}{suffix}"
        return p.read_text() if p.exists() else None
    return text(".toml"), text(".rules")


# --- the recorded traffic -------------------------------------------------------------------

class View:
    """A packet as the checks see it: addresses as ipaddress objects, ports, TCP flags, its
    payload as text (``word``: its first word, "PORT", "A?"), whether its checksums are
    right, and when it was seen (seconds from the capture's first frame)."""

    def __init__(self, pkt, ts: float = 0.0) -> None:
        self.proto, self.sport, self.dport = pkt.proto, pkt.sport, pkt.dport
        self.src, self.dst = ipaddress.ip_address(pkt.src), ipaddress.ip_address(pkt.dst)
        self.tcpflags, self.ts = pkt.tcpflags, ts
        self.checksum_ok = pkt.l4_checksum_ok()
        data = bytes(pkt.buf[pkt.l4 + pkt.l4len - pkt.payload_len:pkt.l4 + pkt.l4len])
        self.data = data.decode(errors="replace").strip()
        self.word = (self.data.split() or [""])[0]
        self.text = pkt.summary()

    def __repr__(self) -> str:
        return self.text


def frames(capture: Path) -> list:
    """(frame, offset of its IP header) of every IPv4 frame of a capture."""
    from nattrack.packet.pcapio import CaptureReader, ip_offset
    return [(f, off) for f in CaptureReader(str(capture)) if (off := ip_offset(f)) is not None]


def recorded(capture: Path) -> list:
    """(iface, View) of a capture's frames, unchanged, times from its first frame."""
    from nattrack.packet.ipv4 import Packet
    got = frames(capture)
    t0 = got[0][0].ts if got else 0.0
    return [(f.iface, View(Packet.parse(bytearray(f.data), off), f.ts - t0)) for f, off in got]


def sent_view(data: bytes, ts: float = 0.0) -> View:
    """A packet the engine's router sent (an IP datagram)."""
    from nattrack.packet.ipv4 import Packet
    return View(Packet.parse(bytearray(data), 0), ts)


# --- the live lab ---------------------------------------------------------------------------

def run(lab, node: str, argv: list[str], input: str | None = None, ok=(0,)):
    """``argv`` in ``node`` of the running lab (a LabClient); an exit status not in ``ok``
    is a KnobError with the command's own message."""
    res = lab.exec(node, argv, input=input, timeout=20)
    if res.returncode not in ok:
        raise KnobError(f"{node}: {' '.join(argv)}: "
                        f"{(res.stderr or res.stdout).strip() or 'exit %d' % res.returncode}")
    return res


def require_root(lab, router: str, what: str) -> None:
    if lab.exec(router, ["id", "-u"]).stdout.strip() != "0":
        raise KnobError(f"{what} changes the lab's nodes: run it as root (sudo)")


def python_mode(lab) -> bool:
    """Whether the live lab's router is nattrack's (python mode: the engine forwards, its
    table, rules and settings are the ones that count) rather than the kernel's."""
    return lab.status().get("mode") == "python"


def load_rules_live(lab, router: str, rules: str, force_tracking: list[str]) -> None:
    """Replace the router's whole rule set, whichever syntax held it before
    (iptables-restore refuses a table nft made): nft with ``nft -f``, iptables-save text
    with ``iptables-restore``; conntrack stays forced on, as the lab's router keeps it
    (``force_tracking``: its mangle rule, nattrack.router.shadow.FORCE_TRACKING, which
    the lab's script passes: the router is a layer above this one).  In python mode the
    rules go to nattrack's router instead (its ``rules`` verb, as iptables-restore)."""
    from nattrack.netfilter.rulesfile import is_nft, nat_helper_modules
    if python_mode(lab):
        try:
            lab.load_rules("rules", router, text=rules)
        except Exception as exc:            # noqa: BLE001 -- the router's own one line
            raise KnobError(f"{router}: the rules were refused: {exc}") from None
        return
    run(lab, router, ["nft", "flush", "ruleset"])
    if is_nft(rules):
        run(lab, router, ["nft", "-f", "-"], input=rules)
    else:
        run(lab, router, ["iptables-restore", "-w"], input=rules)
    run(lab, router, ["iptables", "-w", "-t", "mangle", "-A", *force_tracking])
    for module in nat_helper_modules(rules):      # a modular kernel loads them only when asked
        run(lab, router, ["modprobe", "-q", module], ok=(0, 1))


def set_sysctls_live(lab, router: str, sysctls: dict, touched: set[str],
                     restore: bool = True) -> None:
    """Set ``sysctls`` on the router; with ``restore``, a conntrack setting in ``touched``
    (set by an earlier scenario) that ``sysctls`` leaves out goes back to its default.
    Adds the conntrack settings it sets to ``touched``."""
    from nattrack.conntrack.sysctl import DEFAULTS
    values = {k: DEFAULTS[k.rpartition(".")[2]] for k in touched if restore
              and k.rpartition(".")[2] in DEFAULTS}
    values.update(sysctls)
    python = python_mode(lab)
    for key, value in values.items():
        if python:                          # nattrack's table has limits of its own
            try:
                lab.sysctl(key, value, router=router)
            except Exception as exc:        # noqa: BLE001 -- the router's own one line
                raise KnobError(f"sysctl {key}={value}: {exc}") from None
            continue
        res = lab.exec(router, ["sysctl", "-qw", f"{key}={value}"], timeout=20)
        if res.returncode != 0:
            raise KnobError(f"sysctl {key}={value} cannot be set in the live lab's namespace "
                            f"({(res.stderr or res.stdout).strip()})")
    touched.update(k for k in sysctls if k.startswith("net.netfilter."))


def kernel_stat(lab, name: str) -> int:
    """``conntrack -S``'s counter ``name`` of the router's kernel, summed over the CPUs."""
    res = lab.kernel_conntrack({"command": "S"})
    return sum(int(tok.split("=")[1]) for tok in res["stdout"].split()
               if tok.startswith(name + "="))


def flush_tables(lab) -> None:
    """Empty the router kernel's conntrack table and the shadow tracker's (in python mode:
    nattrack's table, the one that forwards)."""
    lab.kernel_conntrack({"command": "F"})
    try:
        lab.flush()
    except Exception:                 # noqa: BLE001 -- the shadow tracker is optional here
        pass


def udp_ask(lab, node: str, server: str, port: int = 7, sport: int | None = None) -> str | None:
    """Whom the echo service behind ``server:port`` saw asking (``ADDR:PORT``), or None: no
    answer within a second."""
    word = f"q-{node}-{int(time.time() * 1000) % 100000}"
    argv = ["nc", "-u", *(["-p", str(sport)] if sport else []), "-w", "1", server, str(port)]
    res = lab.exec(node, argv, input=word + "\n", timeout=10)
    for line in res.stdout.splitlines():
        if line.endswith(" " + word):
            return line.split()[0]
    return None


# --- the labs' public tests -----------------------------------------------------------------

def load_lab_module(path: Path, name: str) -> ModuleType:
    """A lab's ``scenarios.py`` (a file, not a package) as module ``name``: the one loaded
    already from this path, else a fresh one (registered under ``name`` unless another
    path holds it: its dataclasses need a module to live in while it runs)."""
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) == str(path):
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


def submission_file(ctx, name: str) -> str | None:
    """The text of the submission's file ``name``, or None when it has none."""
    try:
        return ctx.read(name)
    except AssertionError:                  # "your submission has no NAME"
        return None


def student_fix(ctx, lab: ModuleType, name: str):
    """The submission's NAME.toml and NAME.rules, checked (never executed) by the lab's
    ``fix_from_texts``; what is wrong with them fails the test with the one line."""
    toml = ctx.read(f"{name}.toml")
    try:
        return lab.fix_from_texts(name, toml, submission_file(ctx, f"{name}.rules"))
    except KnobError as exc:
        raise AssertionError(str(exc)) from None


def scenario_tests(namespace: dict, lab: int, offline, live, offline_names: tuple[str, ...],
                   live_names: tuple[str, ...], timeout: float,
                   live_modes: dict[str, str] | None = None) -> None:
    """Register a lab's tests in its test module's ``namespace``: each scenario's fix on the
    recorded traffic (``offline(ctx, NAME)``: LAB.1, LAB.2, ...), then in the live lab
    (``live(ctx, NAME)``, numbered on), 2 points each; last, the diagnoses (3 points).
    ``live_modes``: the router mode a scenario's live test needs, where it is not the
    lab's own (lab 07's table-full: python)."""
    from .testing import test

    def one(check, name):
        return lambda ctx: check(ctx, name)
    cases = [(name, "offline", "recorded traffic through the engine", offline)
             for name in offline_names]
    cases += [(name, "live", "live lab, kernel as reference", live) for name in live_names]
    for number, (name, mode, what, check) in enumerate(cases, 1):
        fn = one(check, name)
        fn.__name__ = f"{mode}_{name.replace('-', '_')}"
        lab_mode = (live_modes or {}).get(name, "") if mode == "live" else ""
        if lab_mode:
            what = f"live lab, {lab_mode} mode"
        namespace[fn.__name__] = test(points=2, number=f"{lab}.{number}", mode=mode,
                                      name=f"{name}: fixed ({what})", timeout=timeout,
                                      lab_mode=lab_mode)(fn)

    def diagnoses_written(ctx):
        return diagnoses(ctx, offline_names)
    namespace["diagnoses_written"] = test(
        points=3, number=f"{lab}.{len(cases) + 1}", mode="any",
        name="Each fix comes with a diagnosis (what was wrong, what showed it)")(diagnoses_written)


def diagnoses(ctx, names: tuple[str, ...]) -> tuple[float, str]:
    """Partial credit: a ``diagnosis`` of 25 words or more (without TODO) in each NAME.toml."""
    from .checks import explain
    missing = []
    for name in names:
        try:
            diag = load_toml(submission_file(ctx, f"{name}.toml") or "", name).get("diagnosis", "")
        except KnobError:
            diag = ""
        if "TODO" in str(diag) or len(str(diag).split()) < 25:
            missing.append(name)
    score, why = explain(len(names), [f"{name}: no diagnosis of 25 words or more "
                                      f"(without TODO)" for name in missing])
    assert score > 0, why
    return score, why


# --- the command line and the captures ------------------------------------------------------

def command_line(prog: str, description: str, names: tuple[str, ...], student: Path,
                 argv: list[str] | None) -> argparse.Namespace:
    """``list``, ``break NAME``, ``fix NAME``, ``replay NAME`` (``--syntax``; ``--dir``,
    the folder of the fix, but for break)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    for cmd in ("break", "fix", "replay"):
        s = sub.add_parser(cmd)
        s.add_argument("name", choices=names)
        s.add_argument("--syntax", choices=("iptables", "nft"), default="iptables",
                       help="the scenario's rules in this syntax (nft: scenarios/NAME.nft)")
        if cmd != "break":
            s.add_argument("--dir", type=Path, default=student,
                           help="the folder holding NAME.toml and NAME.rules (default: student/)")
    return p.parse_args(argv)


def lab_client():
    """The running lab's service (nattrack.lab.client.LabClient)."""
    from nattrack.lab.client import LabClient
    return LabClient()


def run_command(body, args: argparse.Namespace) -> int:
    """``body(args)``, a lab's scenarios.py command; what stops it (a bad knob, no lab
    running, a file missing) is one line on stderr and exit status 1."""
    from nattrack.lab import LabError
    try:
        return body(args)
    except (KnobError, LabError, OSError) as exc:
        print(f"scenarios.py: {exc}", file=sys.stderr)
        return 1


def write_captures(argv: list[str], here: Path, stories: dict, ifaces: tuple[str, ...],
                   t0: float, data=lambda name, frame: bytes(frame)) -> None:
    """A lab's data/make_captures.py: each story (NAME -> a generator of (t, iface, frame))
    into NAME.pcapng, frames in time order, in ``argv[0]`` (default: next to the script).
    ``data(NAME, frame)`` is what is written of a frame (default: its bytes)."""
    from nattrack.packet.pcapio import PcapngWriter
    folder = Path(argv[0]) if argv else here
    for name, story in stories.items():
        path = folder / f"{name}.pcapng"
        with PcapngWriter(str(path)) as w:
            for iface in ifaces:
                w.add_interface(iface)
            for t, iface, frame in sorted(story(), key=lambda x: x[0]):
                w.write(t0 + t, iface, data(name, frame))
        print(path)
