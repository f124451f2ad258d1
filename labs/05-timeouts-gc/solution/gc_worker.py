"""Lab 5 -- timeouts, the garbage collector and a full table (reference answer).

TODO 1  gc_verdict(left, assured, closing, near_full): what the gc worker does with one entry
TODO 2  next_run(lefts, elapsed): when the gc worker runs next
TODO 3  early_drop(chains): what a full table evicts to make room for a new connection

All times are in jiffies, whole numbers: HZ = 250 jiffies make a second.
Models gc_worker() and early_drop() of net/netfilter/nf_conntrack_core.c.
"""

HZ = 250
GC_SCAN_INTERVAL_MIN = 1 * HZ          # never sooner than 1 s
GC_SCAN_INTERVAL_MAX = 60 * HZ         # never later than 60 s
GC_SCAN_INTERVAL_CLAMP = 300 * HZ      # a long-lived entry counts as 300 s in the average
GC_SCAN_INITIAL_COUNT = 100            # the average starts as 100 entries of 60 s


def gc_verdict(left, assured, closing, near_full):
    """"reap" (the deadline has passed), "evict" (the table is nearly full and the entry is
    not ASSURED, or is a TCP connection that is closing) or "keep"."""
    if left <= 0:
        return "reap"
    if near_full and (not assured or closing):
        return "evict"
    return "keep"


def next_run(lefts, elapsed):
    """Jiffies until the next scan, from the time left (`lefts`) of every entry the scan
    did not reap, in scan order, and the jiffies the scan took (`elapsed`, at least 1)."""
    avg, count = GC_SCAN_INTERVAL_MAX, GC_SCAN_INITIAL_COUNT
    for left in lefts:
        left = min(max(left, GC_SCAN_INTERVAL_MIN), GC_SCAN_INTERVAL_CLAMP)
        count += 1
        avg += int((left - avg) / count)          # C division: truncates toward zero
    avg = min(max(avg, GC_SCAN_INTERVAL_MIN), GC_SCAN_INTERVAL_MAX)
    return avg - elapsed if avg > elapsed else 1


def early_drop(chains):
    """The table is full and a new connection wants in.  `chains` are the hash chains
    early_drop() looks at (the new tuple's and the 7 after it), each a list of entries
    {"assured": bool, "expired": bool}.  Returns what to do, in order, as
    [chain, entry, "reap" | "evict"]: walk the chains in order; reap expired entries met;
    evict every entry that is not ASSURED; stop after the first chain that evicted any."""
    actions = []
    for c, chain in enumerate(chains):
        evicted = False
        for i, entry in enumerate(chain):
            if entry["expired"]:
                actions.append([c, i, "reap"])
            elif not entry["assured"]:
                actions.append([c, i, "evict"])
                evicted = True
        if evicted:
            break
    return actions


if __name__ == "__main__":
    print(gc_verdict(0, False, False, False), gc_verdict(250, False, False, True))
    print(next_run([], 1), next_run([5 * HZ] * 10, 1))
    print(early_drop([[{"assured": True, "expired": False}], [{"assured": False, "expired": False}]]))
