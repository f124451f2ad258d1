"""What a teacher uploads: the Gradescope autograder zip and the GitHub template repository.

``nattrack grade --package gradescope LAB [--hidden DIR] [--out DIR]`` writes
``autograder-NN-slug.zip`` and prints, on stderr, the one line a teacher needs: the
assignment's total on Gradescope (offline tests only, :func:`gradescope_note`):

- ``setup.sh`` -- run once by Gradescope when it builds the image (Ubuntu, as root): Python
  >= 3.11 and util-linux's ``setpriv``/``prlimit``, nothing when they are there.  No
  Mininet, iptables or bwrap: Docker's seccomp profile and capabilities forbid namespaces,
  so live tests cannot run there;
- ``run_autograder`` -- Gradescope copies it to ``/autograder/run_autograder`` and runs the
  copy from ``/autograder`` for every submission; it finds the kit in ``/autograder/source``
  (or beside itself), grades ``/autograder/submission`` (``--mode auto``: the visible probe
  says what ran) and **always** writes ``/autograder/results/results.json`` -- when the
  grader itself breaks, a zero score with a line naming the error;
- ``README.txt`` -- the same line as printed, for whoever opens the zip later;
- ``kit/`` -- the nattrack package, the lab without ``solution/`` and ``student/``,
  the topologies, the lab's rules file, and ``hidden/`` (the instructor's hidden tests).

``NATTRACK_AUTOGRADER_ROOT`` replaces ``/autograder`` (how the tests run the zip).

``nattrack grade --package github LAB [--out DIR]`` writes ``github-NN-slug/``, a template
repository whose plain GitHub Actions workflow grades each push (:mod:`.github`); it has no
hidden tests (the student's repository hides nothing).  ``--package classroom`` builds the
same, with a note: GitHub Classroom was discontinued on 28 Aug 2026.
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

from .batch import folder_name, grade_all
from .runner import GradeError, load_lab

__all__ = ["build_package", "run_autograder"]

_REPO = Path(__file__).resolve().parents[2]

SETUP_SH = r"""#!/usr/bin/env bash
# nattrack autograder: Gradescope runs this once, as root, when it builds the image (Ubuntu
# 22.04 by default).  Only offline grading can run there -- Docker's seccomp profile and
# capabilities forbid namespaces, so no Mininet, iptables or bwrap jail -- so it installs
# what offline grading needs: Python >= 3.11 and util-linux's setpriv and prlimit (the
# sandbox's user switch and limits).  Nothing is installed when all of it is there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here="$(cd "$(dirname "$0")" && pwd)"
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
find_python() {
    for c in python3 python3.13 python3.12 python3.11; do
        if command -v "$c" >/dev/null && new_enough "$c"; then command -v "$c"; return; fi
    done
}
py="$(find_python)"
if [ -z "$py" ] || ! command -v setpriv >/dev/null || ! command -v prlimit >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 util-linux
    command -v setpriv >/dev/null || apt-get install -y -qq --no-install-recommends setpriv
    # Ubuntu 22.04's python3 is 3.10: its python3.11 package is the kit's Python there.
    py="$(find_python)"
    [ -n "$py" ] || apt-get install -y -qq --no-install-recommends python3.11
    py="$(find_python)"
fi
[ -n "$py" ] || { echo "nattrack: no Python >= 3.11 could be installed" >&2; exit 1; }
echo "$py" > "$here/python"
"$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import nattrack.grading' "$here/kit"
echo "nattrack autograder ready: $py, offline grading"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# nattrack autograder: Gradescope copies this file to /autograder/run_autograder and runs
# the copy for every submission, from /autograder; the zip's files stay in
# /autograder/source.  It always leaves $ROOT/results/results.json behind.
ROOT="${NATTRACK_AUTOGRADER_ROOT:-/autograder}"
here="$(cd "$(dirname "$0")" && pwd)"
src="$here"
[ -d "$src/kit" ] || src="$ROOT/source"          # the copy: the kit is in source/
mkdir -p "$ROOT/results"
rm -f "$ROOT/results/results.json"
py="$(cat "$src/python" 2>/dev/null)"
[ -n "$py" ] || py="$(command -v python3)"
err="$(mktemp)"
PYTHONPATH="$src/kit" "$py" -m nattrack.grading.package run-autograder "$ROOT" "$src" 2> "$err"
status=$?
cat "$err" >&2                                    # the teacher's copy (stdout: hidden)
if [ ! -s "$ROOT/results/results.json" ]; then
    if [ ! -d "$src/kit" ]; then
        why="no kit in $src (was the zip unpacked into $ROOT/source?)"
    elif [ -z "$py" ] || [ ! -x "$py" ]; then
        why="no Python at '${py:-python3}' (did setup.sh finish?)"
    else
        last="$(grep -v '^[[:space:]]*$' "$err" | tail -n 1)"
        why="$py exited with status $status: ${last:-no error message}"
    fi
    # JSON-safe: printable ASCII only, quotes and backslashes escaped.
    why="$(printf '%s' "$why" | head -c 300 | LC_ALL=C tr -cd ' -~' | sed 's/[\\"]/\\&/g')"
    printf '{"score": 0, "execution_time": 0, "visibility": "visible", "stdout_visibility": "hidden", "output": "The autograder could not run: %s. This is not about your code; tell your instructor.", "tests": []}\n' \
        "$why" > "$ROOT/results/results.json"
fi
rm -f "$err"
exit 0
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
    written = info.rules_as_written
    if written and info.rules and not (kit / "lab" / written).exists():
        (kit / written).parent.mkdir(parents=True, exist_ok=True)     # examples/rules/...
        shutil.copyfile(info.rules, kit / written)
    if hidden is not None:
        if not Path(hidden).is_dir():
            raise GradeError(f"--hidden {hidden}: not a folder")
        shutil.copytree(hidden, kit / "hidden", ignore=_ignore)
    return kit


def _exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def gradescope_note(info, hidden: Path | None) -> str:
    """One line for the teacher: the assignment's total on Gradescope, where only the
    offline tests can run (no namespaces there), and what the live ones are worth."""
    from .runner import load_tests
    tests = [t.spec for t in load_tests(info, hidden)]
    offline = [t for t in tests if t.mode != "live"]
    live = [t for t in tests if t.mode == "live"]
    total = sum(t.points for t in offline)
    hidden_pts = sum(t.points for t in offline if t.visibility != "visible")
    line = (f"on Gradescope {info.label} grades offline only: set the assignment's autograder "
            f"points to {total:g} ({hidden_pts:g} of them in hidden tests)")
    if live:
        line += (f"; its {len(live)} live test(s) ({sum(t.points for t in live):g} points) "
                 f"cannot run there and count for nothing")
    return line + "."


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
            note = gradescope_note(info, Path(hidden) if hidden else None)
            (stage / "README.txt").write_text(note + "\n")
            path = out / f"autograder-{name}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted(stage.rglob("*")):
                    if p.is_file():
                        zi = zipfile.ZipInfo.from_file(p, p.relative_to(stage).as_posix())
                        zi.compress_type = zipfile.ZIP_DEFLATED
                        z.writestr(zi, p.read_bytes())
        print(f"nattrack: {note}", file=sys.stderr)
        return path
    if kind in ("github", "classroom"):
        if hidden:
            raise GradeError(f"--hidden with --package {kind}: the workflow grades in the "
                             "student's own repository, where nothing stays hidden")
        if kind == "classroom":
            print("nattrack: GitHub Classroom was discontinued on 28 Aug 2026; building the "
                  "plain GitHub Actions template instead", file=sys.stderr)
        from .github import build_template
        return build_template(info, out, _kit)
    raise GradeError(f"--package {kind}: expected gradescope or github")


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
        os.chmod(work, 0o700)        # the grader's copy and its log: root's alone
        try:
            # links stay links: the grader refuses them, never follows them
            shutil.copytree(root / "submission", work / "submission", symlinks=True)
            hidden = kit / "hidden"
            done = grade_all(kit / "lab", [work / "submission"], work / "out",
                             hidden=hidden if hidden.is_dir() else None, mode="auto",
                             student_id=_student_id(root), echo=print)
            sid = done[0][0]
            shutil.copyfile(work / "out" / folder_name(sid) / "results.json", results)
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "run-autograder":
        return run_autograder(argv[1], argv[2])
    print("usage: python -m nattrack.grading.package run-autograder ROOT SOURCE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
