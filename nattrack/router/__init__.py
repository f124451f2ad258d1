"""The live router process (``python -m nattrack.router``), run inside the router's namespace.

* ``dataplane.py`` -- python mode: AF_PACKET + epoll around ``Router.receive()``;
  the loop, counters and taps both modes share.
* ``shadow.py`` -- kernel mode: the kernel forwards; the tracker shadows it and
  takes the kernel's NAT choices.
* ``control.py`` -- the control socket (docs/control-protocol.md).
* ``quiet.py`` -- what the process changes in the namespace, and undoes at exit.
"""
