"""nattrack: Linux connection tracking and NAT, reproduced in Python for teaching.

This root module decides which engine runs: the mypyc-compiled modules or the pure Python
they are compiled from (it imports nothing of the package: every module sits above it).
``scripts/build-compiled`` (run by scripts/setup.sh) compiles the modules of ``MODULES``
into ``<venv>/nattrack-compiled/`` and records each source's sha256 there.  ``select()``
(called at the end of this module, before any engine module is imported) puts a
finder in front of the normal import system that loads those extension modules in place
of the .py files, unless:

* ``NATTRACK_PURE=1`` is set;
* the command line installs a student's plugin (``--plugin``: ``nattrack replay`` and the
  router): exercises/plugin.py replaces engine functions by name, and compiled modules call
  each other directly, so a replaced piece would silently never run;
* there is no build for this interpreter, or any compiled module's .py changed since it
  was built (all or nothing: compiled modules are bound to each other's build).

``BUILD`` says which one runs and why; ``nattrack doctor`` prints it.
"""
# No `from __future__` import: a line prepended here (test_grading_package's broken kit) must still run.
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

# The engine's hot path, chosen by bench/engine.py (bench/README.md).  One list, kept here:
# scripts/build-compiled compiles it, the finder serves it, tests/test_compiled.py checks each exists.
MODULES = (
    "nattrack.packet.checksum",
    "nattrack.packet.ipv4",
    "nattrack.conntrack.tuple",
    "nattrack.conntrack.conn",
    "nattrack.conntrack.proto_generic",
    "nattrack.conntrack.proto_gre",
    "nattrack.conntrack.proto_icmp",
    "nattrack.conntrack.proto_tcp",
    "nattrack.conntrack.proto_udp",
)
GROUP = "nattrack_engine__mypyc"          # mypyc's shared library for the whole group
PACKAGE_DIR = Path(__file__).resolve().parent
# One build per virtualenv (its interpreter); NATTRACK_COMPILED_DIR points elsewhere (the tests).
BUILD_DIR = Path(os.environ.get("NATTRACK_COMPILED_DIR") or Path(sys.prefix) / "nattrack-compiled")
STAMP = BUILD_DIR / "stamp.json"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

BUILD = "pure (not selected yet)"         # what select() decided, in words


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def built_path(module: str) -> Path:
    return BUILD_DIR.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[-1] + EXT_SUFFIX)


def source_hash(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def interpreter_tag() -> str:
    """What a build is only valid for: this interpreter's extension ABI."""
    return f"{sys.implementation.cache_tag} {EXT_SUFFIX}"


def read_stamp() -> dict:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def why_not_compiled() -> str | None:
    """None when the compiled build may run, else the reason (one clause)."""
    if os.environ.get("NATTRACK_PURE") == "1":
        return "NATTRACK_PURE=1"
    if any(a == "--plugin" or a.startswith("--plugin=") for a in sys.argv):
        return "a student's plugin replaces engine pieces (--plugin)"
    stamp = read_stamp()
    if not stamp:
        return f"no compiled build in {BUILD_DIR} (scripts/setup.sh builds it)"
    if stamp.get("failed"):
        return f"the build failed: {stamp['failed']}"
    if stamp.get("interpreter") != interpreter_tag():
        return "the compiled build is for another Python (scripts/setup.sh rebuilds it)"
    built = stamp.get("modules", {})
    for module in MODULES:
        try:
            fresh = built.get(module) == source_hash(module) and built_path(module).is_file()
        except OSError:
            fresh = False
        if not fresh:
            return (f"{source_path(module).relative_to(PACKAGE_DIR.parent)} changed since the "
                    f"build (scripts/setup.sh rebuilds it)")
    return None


class _CompiledFinder:
    """Serves the compiled modules (and mypyc's group library) from BUILD_DIR."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path=None, target=None):
        where = self.paths.get(fullname)
        if where is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(where))
        return importlib.util.spec_from_file_location(fullname, where, loader=loader)


def select() -> str:
    """Decide once per process, before the engine is imported; return BUILD."""
    global BUILD
    if any(isinstance(f, _CompiledFinder) for f in sys.meta_path) or BUILD != "pure (not selected yet)":
        return BUILD
    if any(m in sys.modules for m in MODULES):
        BUILD = "pure (the engine was imported before nattrack selected a build)"
        return BUILD
    reason = why_not_compiled()
    if reason is not None:
        BUILD = f"pure ({reason})"
        return BUILD
    paths = {m: built_path(m) for m in MODULES}
    paths[GROUP] = BUILD_DIR / (GROUP + EXT_SUFFIX)
    sys.meta_path.insert(0, _CompiledFinder(paths))
    BUILD = f"compiled (mypyc: {len(MODULES)} engine modules from {BUILD_DIR})"
    return BUILD


def compiled_loaded() -> list[str]:
    """The engine modules this process has loaded compiled."""
    return [m for m in MODULES
            if m in sys.modules and str(getattr(sys.modules[m], "__file__", "")).endswith(EXT_SUFFIX)]


select()
