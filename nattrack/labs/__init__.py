"""The old name of :mod:`nattrack.exercises`, kept for one release.

``nattrack.labs`` was one letter away from ``nattrack.lab`` (the live lab service), and
the grader imports both.  Lab tests and data scripts written against the old name keep
importing: each module of ``nattrack.exercises`` is also registered under this name (the
same module object, so a class is the same class under both names).
"""
import importlib
import sys
import warnings

warnings.warn("nattrack.labs is now nattrack.exercises (the old name goes in the next release)",
              DeprecationWarning, stacklevel=2)

for _name in ("checks", "manifest", "plugin", "scenarios", "story", "testing"):
    _module = importlib.import_module(f"nattrack.exercises.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
