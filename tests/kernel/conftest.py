"""Environment gate and shared kernel runs for the kernel-oracle tests.

* Not root and CI unset: every ``@pytest.mark.kernel`` test is skipped with a
  one-line reason.
* Not root and CI set: they fail (CI must be able to run them).
* Root and a tool missing: they fail, naming the Debian package to install.
* Root and CI set: a skip of a kernel test (for whatever reason) is turned into
  a failure, so a green CI run means the kernel was really compared.

The ``kernel_runs`` session fixture runs each scenario of scenarios.py through
the kernel once, lazily and group by group (one KernelLab per ruleset, flushed
between scenarios), and hands out the :class:`~.harness.Recording` objects.
"""
from __future__ import annotations

import os

import pytest
from netns_tools import netns_problem

from .harness import KernelLab, Recording, cleanup_stale, missing_tools
from .scenarios import BY_NAME, SCENARIOS


def _is_root() -> bool:
    return os.geteuid() == 0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _kernel_env_problem() -> str | None:
    """None if kernel tests can run, else why not (one line)."""
    if not _is_root():
        return "kernel tests need root (network namespaces, iptables, conntrack)"
    missing = missing_tools()
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        return (f"missing tools {', '.join(sorted(missing))}: "
                f"run `apt-get install {pkgs}` (or scripts/setup.sh)")
    return None


_ENV_PROBLEM: list[str | None] = []


def kernel_env_problem() -> str | None:
    if not _ENV_PROBLEM:
        problem = _kernel_env_problem()
        if problem is None:
            # Can we really make namespaces here (containers may forbid it)?
            problem = netns_problem(f"ntkprobe{os.getpid()}")
        _ENV_PROBLEM.append(problem)
    return _ENV_PROBLEM[0]


def pytest_collection_modifyitems(config, items):
    if _is_root() or _in_ci():
        return
    skip = pytest.mark.skip(reason="kernel tests need root; run as root (set CI=true to make "
                                   "this a failure)")
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kernel_gate(request):
    if request.node.get_closest_marker("kernel") is None:
        return
    problem = kernel_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (rep.skipped and not hasattr(rep, "wasxfail") and _is_root() and _in_ci()
            and item.get_closest_marker("kernel") is not None):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"kernel test skipped under CI as root, which counts as a failure: {reason}"


class KernelRuns:
    """Lazily run scenarios through the kernel, one lab per ruleset."""

    def __init__(self, base_dir):
        self.base_dir = base_dir
        self.recordings: dict[str, Recording] = {}
        self.errors: dict[str, BaseException] = {}
        self.durations: dict[str, float] = {}
        self.labs = 0

    def get(self, name: str) -> Recording:
        if name not in self.recordings and name not in self.errors:
            self._run_group(BY_NAME[name].rules)
        if name in self.errors:
            raise RuntimeError(f"kernel run of {name} failed: {self.errors[name]!r}") \
                from self.errors[name]
        return self.recordings[name]

    def _run_group(self, rules: str) -> None:
        import time
        group = [s for s in SCENARIOS if s.rules == rules
                 and s.name not in self.recordings and s.name not in self.errors]
        extra = tuple(sorted({a for s in group for a in s.public_extra}))
        workdir = self.base_dir / f"lab{self.labs}"
        self.labs += 1
        try:
            with KernelLab(rules, public_extra=extra, workdir=workdir) as lab:
                for sc in group:
                    t0 = time.monotonic()
                    try:
                        self.recordings[sc.name] = lab.run_scenario(sc)
                    except Exception as exc:        # noqa: BLE001 -- reported per scenario
                        self.errors[sc.name] = exc
                    self.durations[sc.name] = time.monotonic() - t0
        except Exception as exc:                    # noqa: BLE001 -- lab could not be built
            for sc in group:
                self.errors.setdefault(sc.name, exc)


@pytest.fixture(scope="session")
def kernel_runs(tmp_path_factory):
    problem = kernel_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    cleanup_stale()
    return KernelRuns(tmp_path_factory.mktemp("kernel-oracle"))
