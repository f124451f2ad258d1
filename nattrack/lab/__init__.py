"""The live lab: Mininet topologies, the root lab service and its unprivileged clients.

Shape (lab-kit-conventions §4): one privileged process, the *lab service*
(:mod:`nattrack.lab.daemon`), owns the Mininet network and the router process(es)
inside it, and answers a fixed set of structured verbs on a Unix socket that only
root and the ``nattrack`` group may open.  The CLI, notebooks and the grader are
clients (:class:`nattrack.lab.client.LabClient`) and never need root.

Everything the lab creates lives in network namespaces of its own (hosts, routers
and the Linux bridges alike), so lab traffic never crosses the root namespace's
firewall, and a killed service leaves only processes behind: every one of them
carries the :data:`MARKER_ENV` variable and sits in a namespace recorded in the
state file, which is how ``nattrack lab down --force`` finds them (and nothing
else).  Interface names start with :data:`IFACE_PREFIX`.
"""
from __future__ import annotations

import os
from pathlib import Path

IFACE_PREFIX = "nt"                 # every interface the lab creates: nt<node>-<role>
GROUP = "nattrack"                  # who may use the lab socket besides root
MARKER_ENV = "NATTRACK_LAB"         # "<run dir>#<lab id>" in every process the lab starts
DEFAULT_RUN_DIR = "/run/nattrack"
REPO_ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_DIR = REPO_ROOT / "topologies"
RULES_DIR = REPO_ROOT / "examples" / "rules"


class LabError(Exception):
    """A problem to report in one line (what is wrong and what to do)."""


def run_dir() -> Path:
    """Where the service keeps its socket, state, lock and logs (NATTRACK_RUN_DIR overrides)."""
    return Path(os.environ.get("NATTRACK_RUN_DIR") or DEFAULT_RUN_DIR)


class Paths:
    """The files of one lab service, all under its run directory."""

    def __init__(self, base: str | os.PathLike | None = None) -> None:
        self.dir = Path(base) if base is not None else run_dir()
        self.sock = self.dir / "lab.sock"
        self.state = self.dir / "lab.json"
        self.lock = self.dir / "lab.lock"
        self.log = self.dir / "lab.log"
        self.captures = self.dir / "captures"

    def router_sock(self, node: str) -> Path:
        return self.dir / f"router-{node}.sock"

    def router_log(self, node: str) -> Path:
        return self.dir / f"router-{node}.log"

    def marker(self, lab_id: str) -> str:
        return f"{self.dir}#{lab_id}"

    def owns_marker(self, value: str) -> bool:
        return value.rpartition("#")[0] == str(self.dir)


def client_socket_path() -> Path:
    """The lab socket a client talks to (NATTRACK_LAB_SOCK, else the run directory's)."""
    env = os.environ.get("NATTRACK_LAB_SOCK")
    return Path(env) if env else Paths().sock


def python_for_nodes() -> str:
    """An interpreter that can import nattrack, for processes started inside nodes.

    ``sudo mn`` runs the system Python, which does not have the kit's virtualenv:
    prefer the repository's ``.venv`` when it exists.
    """
    import sys
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process the lab starts in a node: importable nattrack, the marker kept."""
    env = dict(os.environ)
    pp = env.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in pp.split(os.pathsep):
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    env.update(extra or {})
    return env


def router_available() -> bool:
    """Does the router process (``python -m nattrack.router``) exist yet?"""
    return (REPO_ROOT / "nattrack" / "router" / "__main__.py").exists()


def mininet_available() -> str | None:
    """None when Mininet can be imported, else what to do (one line)."""
    try:
        import mininet.net  # noqa: F401
        import mininet.node  # noqa: F401
    except ImportError:
        return ("Mininet is not installed: run `sudo apt-get install mininet` "
                "(or scripts/setup.sh), and use a Python that sees it (the kit's .venv)")
    return None
