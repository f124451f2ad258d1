"""Does not import: a syntax error on line 12."""
TIMEOUTS = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}


def timeout_for(state):
    return TIMEOUTS[state]


def next_state(state, direction, flag):
    if state == "NONE":
        pass
    if flag == "SYN"
        return "SYN_SENT"
    return state
