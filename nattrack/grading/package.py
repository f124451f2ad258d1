"""What a teacher uploads: the Gradescope autograder zip and the GitHub Classroom template.

``nattrack grade --package gradescope LAB [--hidden DIR] [--out DIR]`` writes
``autograder-NN-slug.zip``:

- ``setup.sh`` -- run once by Gradescope on its Ubuntu image (as root): Python >= 3.11,
  bubblewrap and util-linux for the sandbox, and (for live mode, used only if the container
  may build namespaces) Mininet, iproute2, iptables, conntrack, curl;
- ``run_autograder`` -- run for every submission: copies ``/autograder/submission``, grades
  it (``--mode auto``: the visible probe says whether live tests ran), and **always** writes
  ``/autograder/results/results.json`` -- when the grader itself breaks, a zero score with
  a line saying so;
- ``kit/`` -- the nattrack package, the lab without ``solution/`` and ``student/``,
  the topologies, the lab's rules file, and ``hidden/`` (the instructor's hidden tests).

``NATTRACK_AUTOGRADER_ROOT`` replaces ``/autograder`` (how the tests run the zip).

``nattrack grade --package classroom LAB [--out DIR]`` writes ``classroom-NN-slug/``, a
template repository: the student's files, the lab's README, ``.nattrack/kit`` and
``.github/workflows/classroom.yml``, which grades each push with sudo (live when it can)
and hands the result to ``classroom-resources/autograding-grading-reporter`` (base64 JSON
in ``NATTRACK_RESULTS``).  Classroom runs in the student's repository: it has no hidden
tests.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from .runner import GradeError, load_lab

__all__ = ["build_package", "run_autograder"]

_REPO = Path(__file__).resolve().parents[2]

SETUP_SH = r"""#!/usr/bin/env bash
# nattrack autograder: Gradescope runs this once, as root, on its Ubuntu image.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here="$(cd "$(dirname "$0")" && pwd)"
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 bubblewrap util-linux ca-certificates
py=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    apt-get install -y -qq --no-install-recommends python3.11 && py=python3.11
fi
command -v "$py" > "$here/python"
# Live mode (used only when the container may create network namespaces).
apt-get install -y -qq --no-install-recommends mininet iproute2 iptables conntrack curl \
    || echo "nattrack: live-mode packages not installed; grading stays offline"
"$(cat "$here/python")" -c 'import sys; sys.path.insert(0, sys.argv[1]); import nattrack.grading' \
    "$here/kit"
echo "nattrack autograder ready"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# nattrack autograder: Gradescope runs this for every submission. It always leaves
# $ROOT/results/results.json behind, whatever happens to the grader.
ROOT="${NATTRACK_AUTOGRADER_ROOT:-/autograder}"
here="$(cd "$(dirname "$0")" && pwd)"
py="$(cat "$here/python" 2>/dev/null || command -v python3)"
mkdir -p "$ROOT/results"
PYTHONPATH="$here/kit" "$py" -m nattrack.grading.package run-autograder "$ROOT" "$here"
if [ ! -s "$ROOT/results/results.json" ]; then
    printf '%s\n' '{"score": 0, "execution_time": 0, "visibility": "visible", "stdout_visibility": "hidden", "output": "The autograder could not run (its Python failed to start); tell your instructor.", "tests": []}' \
        > "$ROOT/results/results.json"
fi
exit 0
"""

WORKFLOW = """\
# GitHub Classroom autograding with nattrack (made by `nattrack grade --package classroom`).
name: Autograding Tests
on: [push, repository_dispatch, workflow_dispatch]
permissions:
  checks: write
  actions: read
  contents: read
jobs:
  run-autograding-tests:
    runs-on: ubuntu-latest
    if: github.actor != 'github-classroom[bot]'
    timeout-minutes: 15
    steps:
      - uses: actions/checkout@v4
      - name: The kit's tools
        run: |
          sudo apt-get update -qq
          sudo apt-get install -y -qq --no-install-recommends bubblewrap mininet iproute2 \\
              iptables conntrack curl
      - name: nattrack grade
        id: nattrack
        run: |
          out="$(mktemp -d)"
          sudo env PYTHONPATH="$PWD/.nattrack/kit" /usr/bin/python3 -m nattrack.cli.main \\
              grade .nattrack/kit/lab . --out "$out" --mode auto \\
              --student-id "${{ github.event.repository.name }}"
          echo "result=$(cat "$out"/*/classroom.txt)" >> "$GITHUB_OUTPUT"
          cat "$out"/*/summary.txt
      - name: Autograding Reporter
        uses: classroom-resources/autograding-grading-reporter@v1
        env:
          NATTRACK_RESULTS: "${{ steps.nattrack.outputs.result }}"
        with:
          runners: nattrack
"""


def _ignore(_dir, names):
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]


def _kit(dest: Path, lab_dir: Path, hidden: Path | None) -> Path:
    """``dest/kit``: the package, the lab (no solution, no student), topologies, rules."""
    info = load_lab(lab_dir)
    kit = dest / "kit"
    shutil.copytree(_REPO / "nattrack", kit / "nattrack", ignore=_ignore)
    if (_REPO / "topologies").is_dir():
        shutil.copytree(_REPO / "topologies", kit / "topologies", ignore=_ignore)
    shutil.copytree(info.dir, kit / "lab", ignore=lambda d, names: _ignore(d, names) + (
        ["solution", "student"] if Path(d) == info.dir else []))
    raw = info.raw.get("rules")
    if raw and info.rules and not (kit / "lab" / raw).exists():
        (kit / raw).parent.mkdir(parents=True, exist_ok=True)         # examples/rules/...
        shutil.copyfile(info.rules, kit / raw)
    if hidden is not None:
        if not Path(hidden).is_dir():
            raise GradeError(f"--hidden {hidden}: not a folder")
        shutil.copytree(hidden, kit / "hidden", ignore=_ignore)
    return kit


def _exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def build_package(kind: str, lab_dir, out=None, hidden=None) -> Path:
    info = load_lab(lab_dir)
    out = Path(out or ".")
    out.mkdir(parents=True, exist_ok=True)
    name = f"{info.number:02d}-{info.slug}"
    if kind == "gradescope":
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp)
            _kit(stage, info.dir, Path(hidden) if hidden else None)
            _exec(stage / "setup.sh", SETUP_SH)
            _exec(stage / "run_autograder", RUN_AUTOGRADER)
            path = out / f"autograder-{name}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted(stage.rglob("*")):
                    if p.is_file():
                        zi = zipfile.ZipInfo.from_file(p, p.relative_to(stage).as_posix())
                        zi.compress_type = zipfile.ZIP_DEFLATED
                        z.writestr(zi, p.read_bytes())
        return path
    if kind == "classroom":
        if hidden:
            raise GradeError("--hidden with --package classroom: Classroom grades in the "
                             "student's own repository, where nothing stays hidden")
        repo = out / f"classroom-{name}"
        if repo.exists():
            raise GradeError(f"{repo} exists: remove it or choose another --out")
        student = info.dir / "student"
        if not student.is_dir():
            raise GradeError(f"{student}: the lab has no student/ skeleton to start from")
        shutil.copytree(student, repo, ignore=_ignore)
        if (info.dir / "README.md").is_file():
            shutil.copyfile(info.dir / "README.md", repo / "README.md")
        _kit(repo / ".nattrack", info.dir, None)
        wf = repo / ".github" / "workflows"
        wf.mkdir(parents=True)
        (wf / "classroom.yml").write_text(WORKFLOW)
        return repo
    raise GradeError(f"--package {kind}: expected gradescope or classroom")


# --- inside Gradescope -----------------------------------------------------------------------

def _student_id(root: Path) -> str | None:
    try:
        meta = json.loads((root / "submission_metadata.json").read_text())
        user = (meta.get("users") or [{}])[0]
        sid = user.get("id") or user.get("email")
        return str(sid) if sid else None
    except (OSError, ValueError, AttributeError, IndexError):
        return None


def run_autograder(root, source) -> int:
    """Grade ``ROOT/submission`` with the kit in ``SOURCE/kit``; always write results.json."""
    import time
    root, source = Path(root), Path(source)
    results = root / "results" / "results.json"
    t0 = time.monotonic()
    kit = source / "kit"
    try:
        # Without a bwrap jail only permissions keep student code out: the hidden tests and
        # the results are root's alone.  The rest of the kit (no solutions in it) stays
        # readable: the live router imports nattrack after it drops root.
        for p in (kit / "hidden", root / "results"):
            if p.is_dir():
                os.chmod(p, stat.S_IRWXU)
        work = Path(tempfile.mkdtemp(prefix="nattrack-gs-"))
        os.chmod(work, 0o755)
        try:
            # links stay links: the grader refuses them, never follows them
            shutil.copytree(root / "submission", work / "submission", symlinks=True)
            from .batch import grade_all
            hidden = kit / "hidden"
            done = grade_all(kit / "lab", [work / "submission"], work / "out",
                             hidden=hidden if hidden.is_dir() else None, mode="auto",
                             student_id=_student_id(root), echo=print)
            sid = done[0][0]
            shutil.copyfile(work / "out" / _safe(sid) / "results.json", results)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    except BaseException as exc:                  # noqa: BLE001 -- always leave a result
        print(f"nattrack: the grader failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        import traceback
        traceback.print_exc()
        doc = {"score": 0, "execution_time": round(time.monotonic() - t0, 3),
               "visibility": "visible", "stdout_visibility": "hidden", "tests": [],
               "output": ("The autograder failed before it could grade your submission "
                          f"({type(exc).__name__}); this is not about your code. Tell your "
                          "instructor.")}
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(doc, indent=2) + "\n")
        return 0


def _safe(sid: str) -> str:
    from .batch import _safe as safe
    return safe(sid)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "run-autograder":
        return run_autograder(argv[1], argv[2])
    print("usage: python -m nattrack.grading.package run-autograder ROOT SOURCE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
