"""Never finishes importing: an endless loop at module level."""
TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}

while True:
    pass


def next_state(state, direction, flag):
    return "SYN_SENT"


def timeout_for(state):
    return TIMEOUTS[state]
