"""What test_router_batch.py and test_shadow_batch.py share: the server behind the router
(an echo on UDP 5000, SERVER_PY) and a burst of datagrams to it that makes each packet
socket on the way hold many frames at once."""
from __future__ import annotations

import pytest

from .conftest import Server

# Run in the client: sends N datagrams to ADDR:5000 at once, prints how many came back.
BURST = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], 5000))
n = int(sys.argv[2])
for i in range(n):
    s.send(b"%06d" % i)
seen = set()
try:
    while len(seen) < n:
        seen.add(int(s.recv(100)))
except socket.timeout:
    pass
print(len(seen))
"""


@pytest.fixture(scope="module")
def server(topo, workdir):
    s = Server(topo, workdir)
    yield s
    s.close()
