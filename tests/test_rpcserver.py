"""nattrack.lab.rpcserver: the JSON-lines server the lab service and a router's control socket
share, over a real Unix socket, spoken to with the real client (nattrack.lab.rpc)."""
from __future__ import annotations

import socket
import stat
import threading

import pytest

from nattrack.lab import LabError, rpc
from nattrack.lab.rpcserver import STREAMED, Client, Server, SocketInUse, serve


class Refused(Exception):
    pass


def refuse(args: dict):
    raise Refused("no\n  thanks")


def crash(args: dict):
    return {}["missing"]


def _serve(tmp_path, once=False):
    def ticks(client: Client, args: dict):
        for i in range(int(args["n"])):
            client.send({"ok": True, "tick": i})
        return STREAMED

    def handle(client: Client) -> None:
        verbs = {"echo": lambda args: args, "refuse": refuse, "crash": crash,
                 "ticks": lambda args: ticks(client, args)}
        serve(client, verbs, (Refused,), once=once, timeout=5)

    server = Server(tmp_path / "s.sock", handle, None, "test-rpc", poll_interval=0.05)
    server.start()
    return server


def test_answers_errors_and_streams(tmp_path):
    server = _serve(tmp_path)
    path = tmp_path / "s.sock"
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert rpc.request(path, "echo", {"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(rpc.RemoteError, match="^no thanks$"):     # one line
            rpc.request(path, "refuse")
        with pytest.raises(rpc.RemoteError, match="^internal error: 'missing'$"):
            rpc.request(path, "crash")
        with pytest.raises(rpc.RemoteError, match="unknown verb 'nope'; known: echo, refuse"):
            rpc.request(path, "nope")
        assert [m["tick"] for m in rpc.stream(path, "ticks", {"n": 3})] == [0, 1, 2]
        # several requests on one connection, a bad line answered and the next one served
        with rpc.Conn(path) as c:
            c.sock.sendall(b'not json\n\n{"verb": 7}\n')
            assert "a request is one line" in c.recv()["error"]
            assert "a request is one line" in c.recv()["error"]
            c.send({"verb": "echo", "args": {"x": 1}})
            assert c.recv() == {"ok": True, "result": {"x": 1}}
    finally:
        server.close()
    assert not path.exists()


def test_one_request_per_connection_when_once(tmp_path):
    server = _serve(tmp_path, once=True)
    try:
        with rpc.Conn(tmp_path / "s.sock") as c:
            c.send({"verb": "echo", "args": {}})
            c.send({"verb": "echo", "args": {}})
            assert c.recv() == {"ok": True, "result": {}}
            assert c.recv() is None                     # closed after the first
    finally:
        server.close()


def test_a_socket_in_use_is_refused_a_stale_one_replaced(tmp_path):
    server = _serve(tmp_path)
    try:
        with pytest.raises(SocketInUse, match="another process is listening"):
            Server(tmp_path / "s.sock", lambda c: None, None, "second")
    finally:
        server.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "s.sock"))                # bound, nobody listening
    stale.close()
    server = _serve(tmp_path)
    try:
        assert rpc.request(tmp_path / "s.sock", "echo", {"ok": 1}) == {"ok": 1}
    finally:
        server.close()
    with pytest.raises(LabError, match="no socket at"):
        rpc.request(tmp_path / "s.sock", "echo")


def test_client_lines_gone_and_overlong(tmp_path):
    a, b = socket.socketpair()
    client = Client(a)
    b.sendall(b'{"x": 1}\n{"y"')
    assert client.recv_line(1) == b'{"x": 1}\n'
    assert client.recv_line(0.05) is None               # half a line: wait for the rest
    assert not client.gone()
    b.sendall(b': 2}\n')
    assert client.recv_line(1) == b'{"y": 2}\n'
    done = threading.Event()

    def flood() -> None:
        try:
            b.sendall(b"z" * (rpc.MAX_LINE + 70000))
        except OSError:
            pass
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert client.recv_line(10) == b""                  # longer than MAX_LINE: closed
    assert client.gone()
    a.close()                                           # the writer's sendall fails
    assert done.wait(10)
    b.close()
