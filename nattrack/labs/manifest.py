"""A lab folder's ``lab.toml``, parsed and checked (docs/labs-format.md, "lab.toml").

``load(lab_dir)`` returns a :class:`Lab`; anything wrong is a :class:`ManifestError`
whose message is one line naming the file, the key and what to write instead.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("python", "kernel")
# The [[pieces]] kinds: one adapter each in nattrack.labs.plugin.ADAPTERS (which checks it).
PIECE_KINDS = ("tcp_state_table", "udp", "icmp", "snat_port", "checksum", "gc_worker", "early_drop")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ManifestError(ValueError):
    """lab.toml is missing or wrong; the message is one line."""


@dataclass(frozen=True)
class Piece:
    module: str                 # the submission's module (``module.py`` in its folder)
    kind: str                   # the adapter nattrack.labs.plugin plugs it in with


@dataclass(frozen=True)
class Todo:
    id: str                     # "TODO 1"
    text: str
    tests: tuple[str, ...]      # numbers of the tests that exercise it


@dataclass(frozen=True)
class Lab:
    dir: Path
    number: int
    slug: str
    title: str
    topology: str
    mode: str
    rules: Path | None
    files: tuple[str, ...]
    pieces: tuple[Piece, ...] = ()
    todos: tuple[Todo, ...] = ()
    extra: dict = field(default_factory=dict)      # keys this module does not interpret
    doc: dict = field(default_factory=dict)        # the whole file as read (the grader's view)

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.slug}"

    @property
    def tests_dir(self) -> Path:
        return self.dir / "tests"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def todo_for(self, number: str) -> list[Todo]:
        """The TODOs a test number belongs to."""
        return [t for t in self.todos if number in t.tests]


def _want(doc: dict, key: str, typ, where: str, what: str):
    if key not in doc:
        raise ManifestError(f"{where}: `{key}` is missing ({what})")
    value = doc[key]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise ManifestError(f"{where}: `{key}` must be {what}, not {value!r}")
    return value


def load(lab_dir: str | Path) -> Lab:
    """Parse and check ``LAB_DIR/lab.toml``."""
    lab_dir = Path(lab_dir).resolve()
    path = lab_dir / "lab.toml"
    where = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{lab_dir}: no lab.toml here; give a lab folder such as "
                            f"labs/02-tcp-states") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from None

    number = _want(doc, "number", int, where, "an integer, e.g. number = 2")
    slug = _want(doc, "slug", str, where, 'a short name, e.g. slug = "tcp-states"')
    title = _want(doc, "title", str, where, 'a string, e.g. title = "The TCP state machine"')
    topology = doc.get("topology", "basic")
    if not isinstance(topology, str) or not topology:
        raise ManifestError(f'{where}: `topology` must name a topology, e.g. topology = "basic"')
    mode = doc.get("mode", "python")
    if mode not in MODES:
        raise ManifestError(f"{where}: `mode` must be python or kernel, not {mode!r}")
    rules = doc.get("rules")
    rules_path = None
    if rules is not None:
        if not isinstance(rules, str):
            raise ManifestError(f'{where}: `rules` must be a path, e.g. rules = "rules/masquerade.rules"')
        rules_path = _resolve_rules(lab_dir, rules, where)
    files = doc.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise ManifestError(f'{where}: `files` must be a list of file names, e.g. files = ["tcp_states.py"]')
    for f in files:
        if "/" in f or f.startswith("."):
            raise ManifestError(f"{where}: `files` entry {f!r} must be a plain file name in the "
                                f"submission folder")

    pieces = []
    for i, p in enumerate(doc.get("pieces", [])):
        at = f"{where}: [[pieces]] #{i + 1}"
        if not isinstance(p, dict):
            raise ManifestError(f"{at}: must be a table with `module` and `kind`")
        module = _want(p, "module", str, at, 'a module name, e.g. module = "tcp_states"')
        kind = _want(p, "kind", str, at, 'an adapter name, e.g. kind = "tcp_state_table"')
        if not _MODULE.fullmatch(module):
            raise ManifestError(f"{at}: module {module!r} is not a Python module name")
        if f"{module}.py" not in files:
            raise ManifestError(f"{at}: module {module!r} has no {module}.py in `files`")
        if kind not in PIECE_KINDS:
            raise ManifestError(f"{at}: unknown kind {kind!r}; known: {', '.join(sorted(PIECE_KINDS))}")
        pieces.append(Piece(module, kind))

    todos = []
    for i, t in enumerate(doc.get("todos", [])):
        at = f"{where}: [[todos]] #{i + 1}"
        if not isinstance(t, dict):
            raise ManifestError(f"{at}: must be a table with `id`, `text` and `tests`")
        tid = _want(t, "id", str, at, 'a string, e.g. id = "TODO 1"')
        text = _want(t, "text", str, at, "a string saying what to implement")
        tests = _want(t, "tests", list, at, 'a list of test numbers, e.g. tests = ["2.1"]')
        if not all(isinstance(n, str) for n in tests):
            raise ManifestError(f'{at}: `tests` must hold test numbers as strings, e.g. ["2.1", "2.2"]')
        todos.append(Todo(tid, text, tuple(tests)))
    ids = [t.id for t in todos]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{where}: two [[todos]] share an id")

    known = {"number", "slug", "title", "topology", "mode", "rules", "files", "pieces", "todos"}
    extra = {k: v for k, v in doc.items() if k not in known}
    return Lab(lab_dir, number, slug, title, topology, mode, rules_path, tuple(files),
               tuple(pieces), tuple(todos), extra, doc)


def _resolve_rules(lab_dir: Path, rules: str, where: str) -> Path:
    """Relative to the lab folder, else to the repository (examples/rules/...)."""
    from ..lab import REPO_ROOT
    for base in (lab_dir, REPO_ROOT):
        p = (base / rules).resolve()
        if p.is_file():
            return p
    raise ManifestError(f"{where}: rules file {rules!r} not found (relative to the lab folder "
                        f"or the repository, e.g. examples/rules/basic.rules)")


__all__ = ["Lab", "Piece", "Todo", "ManifestError", "load"]
