# HIDDEN-SENTINEL-5c1e9b: this file's content must never reach a student.
from nattrack.exercises.testing import test


@test(points=3, number="9.1", name="HIDDEN-SENTINEL-5c1e9b close after FIN", visibility="hidden")
def hidden_close(ctx):
    state = ctx.call("tcp_states.next_state", "FIN_WAIT", "REPLY", "HIDDEN-SENTINEL-5c1e9b",
                     timeout=2)
    assert state == "CLOSE", f"HIDDEN-SENTINEL-5c1e9b: got {state}"
