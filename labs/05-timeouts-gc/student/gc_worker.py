"""Lab 5 -- timeouts, the garbage collector and a full table.

TODO 1  gc_verdict(left, assured, closing, near_full): what the gc worker does with one entry
TODO 2  next_run(lefts, elapsed): when the gc worker runs next
TODO 3  early_drop(chains): what a full table evicts to make room for a new connection

All times are in jiffies, whole numbers: HZ = 250 jiffies make a second.
Models gc_worker() and early_drop() of net/netfilter/nf_conntrack_core.c.

This skeleton runs but is expected to fail the tests of its TODOs until they are done
(`make check` says which TODO is unmet).  Read README.md first.
"""

HZ = 250
GC_SCAN_INTERVAL_MIN = 1 * HZ          # never sooner than 1 s
GC_SCAN_INTERVAL_MAX = 60 * HZ         # never later than 60 s
GC_SCAN_INTERVAL_CLAMP = 300 * HZ      # a long-lived entry counts as 300 s in the average
GC_SCAN_INITIAL_COUNT = 100            # the average starts as 100 entries of 60 s


def gc_verdict(left, assured, closing, near_full):
    """What the gc worker does with one entry: "reap", "evict" or "keep".

    left       jiffies until the entry's deadline (0 or less: it has passed)
    assured    the entry is ASSURED
    closing    it is a TCP connection that is closing (FIN_WAIT ... CLOSE)
    near_full  a new connection found the table full since the last scan, and the table
               still holds 95 % of nf_conntrack_max or more

    Expired entries are reaped.  Near a full table, entries that are not ASSURED and TCP
    connections that are closing are evicted.  The rest is kept.
    """
    raise NotImplementedError("TODO 1: gc_verdict() -- gc_worker() in nf_conntrack_core.c")


def next_run(lefts, elapsed):
    """Jiffies until the next scan (at least 1).

    lefts    the time left (jiffies) of every entry the scan did not reap, in scan order
    elapsed  the jiffies the scan took (at least 1)

    The kernel keeps a running average: it starts at GC_SCAN_INTERVAL_MAX with a count of
    GC_SCAN_INITIAL_COUNT; each entry's time left, clamped to [GC_SCAN_INTERVAL_MIN,
    GC_SCAN_INTERVAL_CLAMP], adds one to the count and moves the average by
    (left - average) / count, divided the C way (truncated toward zero: int(a / b), not
    a // b).  The average is then clamped to [GC_SCAN_INTERVAL_MIN, GC_SCAN_INTERVAL_MAX],
    and the time the scan took is subtracted (leaving at least 1).
    """
    raise NotImplementedError("TODO 2: next_run() -- gc_worker() in nf_conntrack_core.c")


def early_drop(chains):
    """The table is full and a new connection wants in.

    chains  the hash chains early_drop() looks at: the new tuple's and the 7 after it,
            each a list of entries {"assured": bool, "expired": bool}

    Returns what to do, in order, as a list of [chain index, entry index, "reap" or
    "evict"].  Walk the chains in order: reap the expired entries you meet, evict every
    entry that is not ASSURED, and stop after the first chain in which you evicted one.
    """
    raise NotImplementedError("TODO 3: early_drop() -- early_drop() in nf_conntrack_core.c")


if __name__ == "__main__":
    print("(this skeleton is expected to fail until TODO 1, TODO 2 and TODO 3 are done)")
    try:
        print(gc_verdict(0, False, False, False), gc_verdict(250, False, False, True))
        print(next_run([], 1), next_run([5 * HZ] * 10, 1))
        print(early_drop([[{"assured": True, "expired": False}], [{"assured": False, "expired": False}]]))
    except NotImplementedError as exc:
        print(f"not done yet: {exc}")
