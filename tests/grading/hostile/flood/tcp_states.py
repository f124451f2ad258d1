"""next_state() prints gigabytes; timeout_for() is right."""
import sys

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def next_state(state, direction, flag):
    block = "x" * (1 << 20)
    for _ in range(4096):                    # 4 GB
        print(block)
    sys.stdout.flush()
    return "SYN_SENT"


def timeout_for(state):
    return TIMEOUTS[state]
