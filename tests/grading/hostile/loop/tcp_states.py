"""next_state() never returns; timeout_for() is right."""
TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def next_state(state, direction, flag):
    while True:
        pass


def timeout_for(state):
    return TIMEOUTS[state]
