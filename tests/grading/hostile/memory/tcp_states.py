"""next_state() allocates 4 GB; timeout_for() is right."""
TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def next_state(state, direction, flag):
    hog = []
    for _ in range(4096):
        hog.append(bytearray(1 << 20))
    return "SYN_SENT"


def timeout_for(state):
    return TIMEOUTS[state]
