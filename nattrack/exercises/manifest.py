"""A lab folder's ``lab.toml``, parsed and checked (docs/labs-format.md, "lab.toml").

``load(lab_dir)`` returns a :class:`Lab`; anything wrong is a :class:`ManifestError`
whose message is one line naming the file, the key and what to write instead.  This is the
one model of a lab: ``make run``, the router's ``--plugin``, the grader and ``lab check``
all read the lab through it.
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

MODES = ("python", "kernel")
# The [[pieces]] kinds: one adapter each in nattrack.exercises.plugin.ADAPTERS (which checks it).
PIECE_KINDS = ("tcp_state_table", "udp", "icmp", "snat_port", "checksum", "gc_worker", "early_drop")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ManifestError(ValueError):
    """lab.toml is missing or wrong; the message is one line."""


@dataclass(frozen=True)
class Piece:
    module: str                 # the submission's module (``module.py`` in its folder)
    kind: str                   # the adapter nattrack.exercises.plugin plugs it in with


@dataclass(frozen=True)
class Todo:
    id: str                     # "TODO 1"
    text: str
    tests: tuple[str, ...]      # numbers of the tests that exercise it


@dataclass(frozen=True)
class Variant:
    """One ``[variants]`` entry: ``name = [a, b, c]`` or ``name = {min, max, step}``."""
    name: str
    choices: tuple | range      # the values a student id picks one of


@dataclass(frozen=True)
class Lab:
    dir: Path
    number: int
    slug: str
    title: str
    topology: str
    mode: str
    rules: Path | None          # the rules file, found
    files: tuple[str, ...]
    pieces: tuple[Piece, ...] = ()
    todos: tuple[Todo, ...] = ()
    variants: tuple[Variant, ...] = ()
    rules_as_written: str | None = None   # `rules` as lab.toml spells it: where a kit puts it

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.slug}"

    @property
    def label(self) -> str:
        """How messages name the lab: ``lab 2 (tcp-states)``."""
        return f"lab {self.number} ({self.slug})"

    @property
    def tests_dir(self) -> Path:
        return self.dir / "tests"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def todo_for(self, number: str) -> list[Todo]:
        """The TODOs a test number belongs to."""
        return [t for t in self.todos if number in t.tests]

    def variant_for(self, student_id: str | None) -> dict:
        """``ctx.variant``: one value of each ``[variants]`` entry, picked by a hash of the
        slug, the entry's name and the student id (the same on every machine and run);
        ``{}`` without a student id."""
        if not student_id:
            return {}
        out = {}
        for v in self.variants:
            h = hashlib.sha256(f"{self.slug}|{v.name}|{student_id}".encode()).digest()[:8]
            out[v.name] = v.choices[int.from_bytes(h, "big") % len(v.choices)]
        return out


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

    variants = doc.get("variants", {})
    if not isinstance(variants, dict):
        raise ManifestError(f"{where}: `variants` must be a table, e.g. [variants]")
    return Lab(lab_dir, number, slug, title, topology, mode, rules_path, tuple(files),
               tuple(pieces), tuple(todos),
               tuple(_variant(name, spec, where) for name, spec in variants.items()), rules)


def _variant(name: str, spec, where: str) -> Variant:
    """``[a, b, c]``, or ``{min = M, max = N}`` (``step = S``: multiples of S from M)."""
    if isinstance(spec, list) and spec:
        return Variant(name, tuple(spec))
    if isinstance(spec, dict) and set(spec) <= {"min", "max", "step"} and "min" in spec \
            and "max" in spec:
        lo, hi, step = spec["min"], spec["max"], spec.get("step", 1)
        if all(type(n) is int for n in (lo, hi, step)) and step > 0 and lo <= hi:
            return Variant(name, range(lo, hi + 1, step))
    raise ManifestError(f"{where}: variants.{name}: expected a list of values or "
                        f"{{min = M, max = N}} (integers, M <= N, step = S > 0)")


def _resolve_rules(lab_dir: Path, rules: str, where: str) -> Path:
    """Relative to the lab folder, else to the repository (examples/rules/...)."""
    from ..lab import REPO_ROOT
    for base in (lab_dir, REPO_ROOT):
        p = (base / rules).resolve()
        if p.is_file():
            return p
    raise ManifestError(f"{where}: rules file {rules!r} not found (relative to the lab folder "
                        f"or the repository, e.g. examples/rules/basic.rules)")


__all__ = ["Lab", "Piece", "Todo", "Variant", "ManifestError", "load"]
