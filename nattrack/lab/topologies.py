"""Finding the topologies: every ``topologies/*.py`` file's ``topos`` dict.

``--topo NAME`` picks one of them; ``--topo PATH.py[:NAME]`` loads a file of
one's own (the first topology in it unless ``:NAME`` says which).  Loading a
file only defines classes (no network starts at import).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from . import TOPOLOGY_DIR, LabError

_cache: dict[str, dict[str, type]] = {}


def _load_file(path: Path) -> dict[str, type]:
    key = str(path.resolve())
    if key not in _cache:
        modname = f"nattrack_topologies_{path.stem}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise LabError(f"cannot load topology file {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            sys.modules.pop(modname, None)
            raise LabError(f"topology file {path} does not load: {exc}") from exc
        topos = getattr(mod, "topos", None)
        if not isinstance(topos, dict) or not topos:
            raise LabError(f"topology file {path} has no `topos` dict")
        _cache[key] = dict(topos)
    return _cache[key]


def all_topologies() -> dict[str, type]:
    """Name -> class for every topology shipped in topologies/."""
    out: dict[str, type] = {}
    for path in sorted(TOPOLOGY_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        out.update(_load_file(path))
    return out


def get_topology(name: str) -> type:
    if name.endswith(".py") or ".py:" in name:
        file, _, which = name.partition(".py")
        topos = _load_file(Path(file + ".py"))
        which = which.lstrip(":")
        if not which:
            return next(iter(topos.values()))
        if which not in topos:
            raise LabError(f"{file}.py has no topology {which!r}: it has {', '.join(topos)}")
        return topos[which]
    topos = all_topologies()
    if name not in topos:
        raise LabError(f"unknown topology {name!r}: choose one of {', '.join(sorted(topos))} "
                       f"(or give PATH.py[:NAME])")
    return topos[name]
