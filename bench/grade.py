"""Grading benchmark: how long `nattrack grade` takes (issue 5's targets).

    .venv/bin/python -m bench.grade [--lab labs/02-tcp-states] [--class-size 200] [--jobs 2]
                                    [--no-live] [--json]

Prints, each next to its target (a missed one is printed as NO; exit status 0):

1. one submission (the lab's solution) offline: <= 10 s;
2. one submission live (root; the lab's router runs the submission): <= 60 s;
3. a class of N (default 200) offline with --jobs J (default 2, this machine's cores):
   <= 15 min for 200; half solutions, half skeletons, each a copy in its own folder
   (so each has its own student id, hence its own variant).

Each figure is the wall time of the `nattrack grade` command line, start to exit, as a
teacher would measure it.  Live runs take /tmp/nattrack-live.lock (other live runs on the
machine wait).  Progress goes to stderr; the figures to stdout.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def grade(lab: Path, subs: list[Path], out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nattrack.cli.main", "grade", str(lab),
                        *map(str, subs), "--out", str(out), *extra],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: nattrack grade failed: {r.stderr.strip()}")
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grade", description=__doc__.split("\n")[0])
    p.add_argument("--lab", default=str(REPO / "labs" / "02-tcp-states"))
    p.add_argument("--class-size", type=int, default=200)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-live", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    lab = Path(a.lab).resolve()
    figures = []
    tmp = Path(tempfile.mkdtemp(prefix="nattrack-bench-grade-"))
    os.chmod(tmp, 0o755)
    try:
        print(f"bench: {lab.name}: one submission offline", file=sys.stderr)
        dt = grade(lab, [lab / "solution"], tmp / "o1", "--mode", "offline")
        figures.append(("one submission, offline", dt, 10.0))
        if not a.no_live:
            if os.geteuid() != 0:
                figures.append(("one submission, live (needs root: not measured)", None, 60.0))
            else:
                print("bench: one submission live (waiting for /tmp/nattrack-live.lock)",
                      file=sys.stderr)
                with open("/tmp/nattrack-live.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    dt = grade(lab, [lab / "solution"], tmp / "l1", "--mode", "live")
                figures.append(("one submission, live", dt, 60.0))
        klass = tmp / "class"
        klass.mkdir()
        for i in range(a.class_size):
            src = lab / ("solution" if i % 2 == 0 else "student")
            shutil.copytree(src, klass / f"student{i:03d}")
        print(f"bench: a class of {a.class_size} offline, {a.jobs} jobs", file=sys.stderr)
        dt = grade(lab, [klass], tmp / "oc", "--mode", "offline", "--jobs", str(a.jobs))
        target = 15 * 60 * a.class_size / 200
        figures.append((f"a class of {a.class_size}, offline, --jobs {a.jobs}", dt, target))
        rows = (tmp / "oc" / "class.csv").read_text().splitlines()
        assert len({r.split(",")[0] for r in rows[1:]}) == a.class_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps({name: {"seconds": None if dt is None else round(dt, 2),
                                 "target": target} for name, dt, target in figures}))
        return 0
    print(f"nattrack grade, {lab.name}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    for name, dt, target in figures:
        if dt is None:
            print(f"  {name:<45} {'-':>9}   target <= {target:g} s")
            continue
        ok = "ok" if dt <= target else "NO"
        print(f"  {name:<45} {dt:8.1f} s  target <= {target:g} s  {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
