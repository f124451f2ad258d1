"""The package's import graph runs one way: each package imports only its own modules and
the packages below it, and no set of modules imports itself round (docs/architecture.md).

Every import statement in nattrack/ counts, those inside functions too: a function-level
import is how a cycle hides.  One kind is left out of the cycle check only: an import under
``if TYPE_CHECKING:``, which names a type of the same package for an annotation and is never
run (it must still go down the layers).  The layer order is read from docs/architecture.md,
so the picture there is the one this test enforces.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nattrack"
ARCHITECTURE = REPO / "docs" / "architecture.md"

@dataclass(frozen=True)
class Edge:
    source: str          # importing module, e.g. "nattrack.lab.demo"
    target: str          # imported module (a package means its __init__)
    where: str           # "nattrack/lab/demo.py:46"
    typing_only: bool = False   # under `if TYPE_CHECKING:`: an annotation's, never run


def _typing_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the import statements inside ``if TYPE_CHECKING:`` blocks."""
    found: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
                isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return found


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges(root: Path) -> tuple[set[str], list[Edge]]:
    """Every module under ``root`` and every import of one of them (by absolute name)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    edges: dict[Edge, None] = {}                    # in order, each once
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = _typing_only_nodes(tree)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # "from pkg import mod" imports the module pkg.mod; "from mod import name" mod
                names = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                         for a in node.names]
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            for name in names:
                if name == top or name.startswith(top + "."):
                    while name not in files:         # "import a.b.c" of a name inside a module
                        name = name.rpartition(".")[0]
                    if name != mod:
                        edges[Edge(mod, name, where, id(node) in typing_only)] = None
    return set(files), list(edges)


def layer_of(module: str) -> str:
    """The package a module belongs to: ``nattrack.lab.demo`` -> ``lab``; the root -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def documented_layers(text: str) -> list[list[str]]:
    """The ```layers block of docs/architecture.md, top layer first: on each line the
    package names before the description (two or more spaces), joined by " / "."""
    m = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    assert m, f"{ARCHITECTURE}: no ```layers block"
    layers = []
    for line in m.group(1).splitlines():
        if line.strip():
            names = re.split(r"\s{2,}", line.strip())[0]
            layers.append([n.strip() for n in names.split("/")])
    return layers


def upward(edges: list[Edge], layers: list[list[str]]) -> list[str]:
    """Imports of a package in the same or a higher layer (the root package is below all)."""
    rank = {name: len(layers) - i for i, names in enumerate(layers) for name in names}
    rank[""] = 0
    out = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if src != dst and rank[dst] >= rank[src]:
            out.append(f"{e.where}: {e.source} imports {e.target}: {src} may import only "
                       f"layers below its own")
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected sets of modules (Tarjan), each of more than one module."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems(root: Path, layers: list[list[str]]) -> list[str]:
    modules, edges = import_edges(root)
    packages = {layer_of(m) for m in modules} - {""}
    placed = {n for names in layers for n in names}
    out = [f"{root.name}.{p}: a package in no layer of {ARCHITECTURE.name}: place it"
           for p in sorted(packages - placed)]
    out += [f"{ARCHITECTURE.name} names {n}, which is no package of {root.name}"
            for n in sorted(placed - packages)]
    out += upward(edges, layers)
    run = [e for e in edges if not e.typing_only]
    for comp in cycles(run):
        inside = [e.where + f" -> {e.target}" for e in run
                  if e.source in comp and e.target in comp]
        out.append(f"import cycle among {', '.join(comp)}: {'; '.join(inside)}")
    return out


# --- the package ---------------------------------------------------------------------------------

def test_every_import_goes_down_the_documented_layers_and_none_goes_round():
    layers = documented_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    found = problems(PACKAGE, layers)
    assert not found, "\n".join(found)


def test_the_root_package_imports_nothing():
    """Every module imports it first: it must stay below all of them."""
    _, edges = import_edges(PACKAGE)
    assert not [e.where for e in edges if e.source == PACKAGE.name]


# --- the checker itself ----------------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kit"
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


LAYERS_MD = """
```layers
cli           the top
core / util   two packages side by side
base          the bottom
```
"""


def test_the_checker_reads_the_layer_block():
    assert documented_layers(LAYERS_MD) == [["cli"], ["core", "util"], ["base"]]


@pytest.mark.parametrize("files, words", [
    ({"base/low.py": "from ..core import high\n"}, "kit.base.low imports kit.core.high"),
    ({"core/high.py": "def f():\n    from kit.cli import main\n"}, "kit.core.high imports kit.cli.main"),
    ({"core/high.py": "from ..util import tool\n"}, "kit.core.high imports kit.util.tool"),
    ({"core/a.py": "from . import b\n", "core/b.py": "def f():\n    from .a import x\n"},
     "import cycle among kit.core.a, kit.core.b"),
    ({"extra/x.py": ""}, "kit.extra: a package in no layer"),
    ({"base/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..cli import main\n"},
     "kit.base.low imports kit.cli.main"),
])
def test_the_checker_finds_an_upward_or_sideways_import_a_cycle_and_an_unplaced_package(
        tmp_path, files, words):
    base = {"__init__.py": "", "cli/__init__.py": "", "cli/main.py": "from ..core import high\n",
            "core/__init__.py": "", "core/high.py": "from ..base.low import x\n",
            "util/__init__.py": "", "util/tool.py": "import kit.base.low\n",
            "base/__init__.py": "", "base/low.py": "x = 1\n"}
    layers = documented_layers(LAYERS_MD)
    assert problems(_tree(tmp_path / "ok", base), layers) == []
    found = problems(_tree(tmp_path / "bad", {**base, **files}), layers)
    assert any(words in p for p in found), found


def test_a_type_only_back_reference_inside_a_package_is_no_cycle(tmp_path):
    files = {"__init__.py": "", "cli/__init__.py": "", "cli/main.py": "", "util/__init__.py": "",
             "util/tool.py": "", "base/__init__.py": "",
             "core/__init__.py": "", "core/a.py": "from . import b\n",
             "core/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import A\n"}
    assert problems(_tree(tmp_path, files), documented_layers(LAYERS_MD)) == []
