"""next_state() kills its own process; timeout_for() is right."""
import os

TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def next_state(state, direction, flag):
    os._exit(3)


def timeout_for(state):
    return TIMEOUTS[state]
