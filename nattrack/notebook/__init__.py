"""The notebooks' data layer: a Session over the live classroom lab or a recorded run.

    from nattrack.notebook import open_session
    s = open_session("01-tcp-states")      # "auto": live if the lab answers, else replay
    s.run("handshake", "SYN").transition   # Transition(old_state='NONE', new_state='SYN_SENT', ...)

See :mod:`nattrack.notebook.session` for the API, :mod:`.scenarios` for the
scenarios, :mod:`.record` for ``nattrack record``.
"""
from .scenarios import NOTEBOOKS, Flow, Scenario, Step
from .session import (MODE_ENV, PacketPair, Session, SessionError, StepResult, Transition,
                      open_session)

__all__ = ["NOTEBOOKS", "Flow", "MODE_ENV", "PacketPair", "Scenario", "Session", "SessionError",
           "Step", "StepResult", "Transition", "open_session"]
