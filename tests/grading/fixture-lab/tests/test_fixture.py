from nattrack.exercises.testing import test


@test(points=2, number="1.1", name="A SYN opens SYN_SENT", mode="offline")
def syn(ctx):
    state = ctx.call("tcp_states.next_state", "NONE", "ORIGINAL", "SYN", timeout=2)
    assert state == "SYN_SENT", f"NONE --SYN--> {state}, expected SYN_SENT"


@test(points=2, number="1.2", name="ORIGINAL FIN in ESTABLISHED gives FIN_WAIT", mode="offline")
def fin(ctx):
    state = ctx.call("tcp_states.next_state", "ESTABLISHED", "ORIGINAL", "FIN", timeout=2)
    assert state == "FIN_WAIT", f"ESTABLISHED --FIN--> {state}, expected FIN_WAIT"


@test(points=1, number="2.1", name="ESTABLISHED lasts 5 days", mode="offline")
def established(ctx):
    t = ctx.call("tcp_states.timeout_for", "ESTABLISHED")
    assert t == 432000, f"timeout_for('ESTABLISHED') = {t}, expected 432000"


@test(points=2, number="2.2", name="Every timeout (partial credit)", mode="offline")
def every_timeout(ctx):
    want = {"SYN_SENT": 120, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE": 10}
    good = sum(ctx.call("tcp_states.timeout_for", s) == t for s, t in want.items())
    return good / len(want)


@test(points=1, number="3.1", name="answers.txt names your variant's UDP timeout", mode="offline")
def answers(ctx):
    text = ctx.read("answers.txt")
    want = ctx.variant.get("udp_timeout")
    if want is None:                                   # no student id: no variant to check
        assert "?" not in text, "answers.txt still has a question mark"
        return
    assert f"udp_timeout = {want}" in text, f"answers.txt should say udp_timeout = {want}"
