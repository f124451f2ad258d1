"""Run the kit's notebooks headless and read what their widgets ended up showing.

Used by tests/notebooks and bench/notebooks.py.

* :func:`execute` runs a notebook with nbclient (per-cell timeouts, the kernel
  interrupted on a timeout, widget state stored in the notebook's metadata), after
  injecting papermill-style parameters (``MODE = "live"``) below the cell tagged
  ``parameters``.
* :func:`user_kernel` makes the kernel an ordinary user (``setpriv``) when the
  runner is root, as `nattrack notebook` does: the notebooks never need root.
* :func:`widget_states` / :func:`data_elements` read the stored widget state: every
  model's state, and every HTML element carrying ``data-*`` attributes (the
  machine-readable values nattrack.widgets puts into its markup).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ["00-welcome", "01-tcp-states", "02-snat", "03-timeouts", "04-related-and-invalid",
             "05-incidents"]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CELL_TIMEOUT = 60          # seconds, unless a cell's metadata says {"nattrack": {"timeout": N}}
NOBODY = 65534
PROBE_IMPORTS = "ipykernel, ipywidgets, nattrack.notebook"   # what the kernel must import


def cell_timeout(cell) -> int:
    return int(cell.get("metadata", {}).get("nattrack", {}).get("timeout", CELL_TIMEOUT))


def inject_parameters(nb, params: dict) -> None:
    """papermill's convention: an ``injected-parameters`` cell right after ``parameters``."""
    idx = next((i for i, c in enumerate(nb.cells)
                if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if idx is None:
        raise AssertionError("the notebook has no cell tagged `parameters`")
    src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)


# -- the kernel as an ordinary user --------------------------------------------------------

@dataclass
class KernelUser:
    """How the kernel runs: as ``uid`` with ``groups`` (None: as the runner)."""
    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)
    why_not: str = ""                      # why the kernel runs as the runner instead
    home: Path | None = None


def _probe(uid: int, gid: int, groups: list[int], pythonpath: str) -> str:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups", "--",
            sys.executable, "-c", f"import {PROBE_IMPORTS}"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=60,
                       env=dict(os.environ, PYTHONPATH=pythonpath, HOME="/tmp"))
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def user_kernel(uid: int = NOBODY, extra_gids: tuple[int, ...] = ()) -> KernelUser:
    """The kernel as ``uid`` when we are root and that user can run this checkout's
    Python; otherwise as the runner, with the reason in ``why_not``."""
    if os.geteuid() != 0:
        return KernelUser(why_not="not root: the kernel runs as the current user")
    groups = sorted(set(extra_gids))
    why = _probe(uid, uid, groups, str(REPO))
    if why:
        return KernelUser(why_not=f"uid {uid} cannot run {sys.executable} on {REPO}: {why}")
    home = Path(tempfile.mkdtemp(prefix="ntnb-home-"))
    os.chown(home, uid, uid)
    return KernelUser(uid, uid, groups, home=home)


def _kernel_manager(user: KernelUser, spec_dir: Path) -> KernelManager:
    """A kernelspec whose argv drops to ``user`` (setpriv) after copying the connection
    file somewhere that user may read it."""
    kdir = spec_dir / "kernels" / "nattrack-test"
    kdir.mkdir(parents=True, exist_ok=True)
    if user.uid is None:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    else:
        conn = user.home / "kernel.json"
        groups = f"--groups={','.join(map(str, user.groups))}" if user.groups else "--clear-groups"
        script = (f'install -o {user.uid} -g {user.gid} -m 600 "$0" {conn} && '
                  f"exec setpriv --reuid={user.uid} --regid={user.gid} {groups} -- "
                  f"{sys.executable} -m ipykernel_launcher -f {conn}")
        argv = ["sh", "-c", script, "{connection_file}"]
    (kdir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "nattrack test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir / "kernels")])
    return KernelManager(kernel_name="nattrack-test", kernel_spec_manager=ksm)


def kernel_env(user: KernelUser, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("NATTRACK_GRADING", "NBGRADER_EXECUTION", "NATTRACK_LAB_SOCK"):
        env.pop(k, None)
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
    if user.home is not None:
        env.update(HOME=str(user.home), USER="nobody", LOGNAME="nobody")
    env.update(extra or {})
    return env


# -- execution -----------------------------------------------------------------------------

@dataclass
class Run:
    nb: object                              # the executed notebook
    seconds: float
    probe: dict = field(default_factory=dict)


# Injected first and last: every thread the notebook's cells start (Thread.start is
# wrapped, so threads that ended before the last cell count too), and the kernel's uid.
PROBE_FIRST = ("import threading as _nt_threading\n"
               "_nt_started = []\n"
               "_nt_start = _nt_threading.Thread.start\n"
               "def _nt_record(self, *a, **kw):\n"
               "    _nt_started.append(self.name)\n"
               "    return _nt_start(self, *a, **kw)\n"
               "_nt_threading.Thread.start = _nt_record")
PROBE_LAST = ("import json as _nt_json, os as _nt_os\n"
              "_nt_threading.Thread.start = _nt_start\n"
              "print('NT-PROBE ' + _nt_json.dumps({'uid': _nt_os.getuid(), "
              "'new_threads': _nt_started}))")


def execute(name: str, params: dict, env: dict[str, str], user: KernelUser | None = None,
            probe: bool = True, cwd: Path = NOTEBOOK_DIR) -> Run:
    """Execute notebooks/<name>.ipynb; raises nbclient's CellExecutionError on an error
    or a cell timeout (the kernel is interrupted and the cell's error is raised)."""
    import time
    user = user or KernelUser()
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nb = copy.deepcopy(nb)
    inject_parameters(nb, params)
    if probe:
        nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE_FIRST))
        nb.cells.append(nbformat.v4.new_code_cell(PROBE_LAST))
    spec_dir = Path(tempfile.mkdtemp(prefix="ntnb-spec-"))
    try:
        km = _kernel_manager(user, spec_dir)
        client = NotebookClient(nb, km=km, timeout_func=cell_timeout, interrupt_on_timeout=True,
                                store_widget_state=True, kernel_name="nattrack-test",
                                resources={"metadata": {"path": str(cwd)}},
                                shutdown_kernel="graceful")
        t0 = time.monotonic()
        client.execute(env=env, cleanup_kc=True)      # we made the km: shut the kernel down
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)
    found = {}
    if probe:
        for out in nb.cells[-1].get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("NT-PROBE "):
                    found = json.loads(line[len("NT-PROBE "):])
    return Run(nb, seconds, found)


# -- reading the stored widget state ---------------------------------------------------------

def widget_states(nb) -> dict[str, dict]:
    """model id -> the model's stored state."""
    meta = nb.metadata.get("widgets", {}).get(WIDGET_STATE)
    if not meta:
        raise AssertionError("the executed notebook has no stored widget state")
    return {mid: m.get("state", {}) for mid, m in meta["state"].items()}


class _DataParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[dict] = []

    def handle_starttag(self, tag, attrs):
        d = {k: (v if v is not None else "") for k, v in attrs}
        if any(k.startswith("data-") for k in d):
            self.found.append(dict(d, _tag=tag))


def data_elements(nb, attr: str | None = None) -> list[dict]:
    """Every element with ``data-*`` attributes in any stored HTML-ish value (attrs dicts
    plus ``_tag`` and ``_model``); only those having ``attr`` when given."""
    out = []
    for mid, st in widget_states(nb).items():
        for key in ("value", "description"):
            val = st.get(key)
            if isinstance(val, str) and "data-" in val:
                p = _DataParser()
                p.feed(val)
                for el in p.found:
                    el["_model"] = mid
                    out.append(el)
    return [e for e in out if attr is None or attr in e]


def values(nb, attr: str) -> list[str]:
    return [e[attr] for e in data_elements(nb, attr)]


def _root(value: str) -> dict[str, str]:
    from nattrack.widgets import widget_state
    return widget_state(value)


def views(nb, model_ids=None) -> list[dict]:
    """Every stored view (an HTML model whose root has ``data-view``): its root ``data-*``
    attributes without the prefix, plus ``_rows`` (the attributes of each inner
    element that has ``data-*``) and ``_model``."""
    out = []
    for mid, st in widget_states(nb).items():
        if model_ids is not None and mid not in model_ids:
            continue
        val = st.get("value")
        if not isinstance(val, str) or "data-view" not in val:
            continue
        root = _root(val)
        if "view" not in root:
            continue
        p = _DataParser()
        p.feed(val)
        root["_rows"] = p.found[1:]
        root["_model"] = mid
        out.append(root)
    return out


def panel(nb, scenario: str) -> dict[str, dict]:
    """The views of the ui.stepper panel of ``scenario``, by kind (``steps``, ``table``,
    ``diagram``, ``packet``, ``compare``, ``events`` (tracker), ``kernel-events``,
    ``timeline``, ``sysctls``...), found through the panel's widget tree."""
    states = widget_states(nb)
    log = [v for v in views(nb) if v["view"] == "steps" and v.get("scenario") == scenario]
    if not log:
        raise AssertionError(f"no panel for scenario {scenario!r} in the stored widget state")
    ref = "IPY_MODEL_" + log[0]["_model"]
    parent = [mid for mid, st in states.items() if ref in (st.get("children") or [])]
    if not parent:
        raise AssertionError(f"the step log of {scenario!r} is in no panel")
    seen, todo = set(), [parent[0]]
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in states:
            continue
        seen.add(mid)
        todo += [c[len("IPY_MODEL_"):] for c in states[mid].get("children") or []
                 if isinstance(c, str) and c.startswith("IPY_MODEL_")]
    out: dict[str, dict] = {}
    for v in views(nb, seen):
        roles = [c[len("nattrack-role-"):] for c in states[v["_model"]].get("_dom_classes", [])
                 if c.startswith("nattrack-role-")]
        out[roles[0] if roles else v["view"]] = v
    return out


def split(value: str) -> list[str]:
    return [x for x in value.split(",") if x] if value else []
