"""A toy TCP state function: this skeleton is expected to fail until its TODOs are done."""
TIMEOUTS = {"SYN_SENT": 120}                 # TODO 2: the other states


def next_state(state, direction, flag):
    raise NotImplementedError("TODO 1: next_state()")


def timeout_for(state):
    return TIMEOUTS.get(state, 0)
