"""`nattrack record`: record the notebooks' scenarios on a live lab for replay mode."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def cmd_record(args) -> int:
    from ..notebook import scenarios as sc
    from ..notebook.record import default_out, record
    from ..notebook.session import SessionError
    notebooks = args.notebook or list(sc.NOTEBOOKS)
    for nb in notebooks:
        if nb not in sc.SCENARIOS:
            print(f"nattrack: no notebook {nb!r}: known are {', '.join(sc.NOTEBOOKS)}",
                  file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else default_out()
    t = time.monotonic()
    try:
        written = record(notebooks, out, only=args.scenario or None,
                         progress=lambda m: print(m, flush=True))
    except SessionError as exc:
        print(f"nattrack: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files ({size / 1024:.0f} KiB) under {out} in "
          f"{time.monotonic() - t:.0f} s")
    return 0


def register(sub) -> None:
    """Add the `record` subcommand to the top-level parser."""
    p = sub.add_parser("record", help="record the notebooks' scenarios on a live lab, for "
                       "replay mode (root: starts and stops its own classroom lab)")
    p.add_argument("notebook", nargs="*", metavar="NOTEBOOK",
                   help="00-welcome, 01-tcp-states, 02-snat, 03-timeouts, "
                        "04-related-and-invalid (default: all)")
    p.add_argument("--out", metavar="DIR", help="where to write (default: notebooks/recordings)")
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help="only this scenario (repeatable)")
    p.set_defaults(func=cmd_record)
