"""The README's demo: one short exchange through the `basic` lab, twice.

First with nattrack's Python router carrying the traffic (python mode), then
with the kernel doing the NAT (kernel mode); after every step the connection
table is recorded, and at the end each step is shown with both tables, the
Python tracker's above the kernel's, and whether they agree.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from . import LabError
from .client import LabClient
from .lifecycle import lab_down, lab_up

SERVER = "203.0.113.10"
STEPS = (
    ("ping the server (ICMP echo)", ["ping", "-n", "-c", "2", "-i", "0.2", SERVER], None),
    ("a UDP question and answer (the echo service, port 7)",
     ["nc", "-u", "-w", "1", "-p", "41000", SERVER, "7"], "hello\n"),
    ("a web request: TCP opened, data, closed (curl)", ["curl", "-s", "-m", "5", f"http://{SERVER}/"], None),
)


@dataclass
class Run:
    mode: str
    outputs: list[str] = field(default_factory=list)
    tables: list[list[str]] = field(default_factory=list)


def _shape(line: str) -> tuple:
    """What must agree between the two runs: the client's own port or ping id is its
    choice and differs from run to run, so only whether NAT kept it is compared."""
    from ..conntrack.show import parse_conntrack_line
    p = parse_conntrack_line(line)
    o, r = p["orig"], p["reply"]
    key = "id" if "id" in o else "sport"
    back = "id" if key == "id" else "dport"
    fixed = {k: v for k, v in o.items() if k not in ("sport", "id")}
    return (p["proto"], p["state"], tuple(sorted(p["flags"])), tuple(sorted(fixed.items())),
            r["src"], r["dst"], r.get(back) == o.get(key))


def run_mode(mode: str, progress) -> Run:
    """Bring `basic` up in one mode, run the steps, record the tables, bring it down."""

    run = Run(mode)
    progress(f"starting the basic lab in {mode} mode ...")
    if lab_up("basic", mode, None, [], quiet=True) != 0:
        raise LabError(f"the lab did not start in {mode} mode (see `nattrack lab status`)")
    try:
        lab = LabClient()
        for title, argv, stdin in STEPS:
            progress(f"  {mode}: {title}")
            res = lab.exec("h1", argv, input=stdin)
            lines = (res.stdout or "").strip().splitlines()
            run.outputs.append(lines[-1] if lines else f"(exit status {res.returncode})")
            run.tables.append(lab.list() if mode == "python" else lab.kernel_list())
    finally:
        lab_down()
    return run


def main(out=sys.stdout, progress=None) -> int:
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    python = run_mode("python", progress)
    kernel = run_mode("kernel", progress)
    w = out.write
    w("\nThe same exchange through the basic lab: h1 10.0.0.10 -- r (MASQUERADE) -- srv 203.0.113.10\n")
    agree_all = True
    for i, (title, argv, _stdin) in enumerate(STEPS):
        w(f"\n== step {i + 1}: {title}\n   $ {' '.join(argv)}\n   -> {python.outputs[i]}\n")
        w("   nattrack's Python tracker (python mode: it carried the packets):\n")
        for line in python.tables[i] or ["(empty)"]:
            w(f"     {line}\n")
        w("   the Linux kernel's conntrack (kernel mode, same exchange):\n")
        for line in kernel.tables[i] or ["(empty)"]:
            w(f"     {line}\n")
        same = sorted(map(_shape, python.tables[i])) == sorted(map(_shape, kernel.tables[i]))
        agree_all &= same
        w("   => the same entries (the client's own ports and ping ids differ from run to run)\n"
          if same else "   => they differ: compare the lines above\n")
    w("\nBoth labs were stopped; nothing is left running.\n")
    return 0 if agree_all else 1
