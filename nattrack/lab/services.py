"""Tiny servers the topologies run on their server nodes.

Each answers with the address and port it saw the client come from, which is
the point of a NAT lab: ``curl 203.0.113.10`` from h1 prints
``... you came from 203.0.113.1:40212``.  They serve a fixed page, never files.

    python -m nattrack.lab.services NAME http [https] [echo]

* ``http``: HTTP on TCP 80; ``https``: the same over TLS on 443 with a throw-away
  self-signed certificate (``curl -k``), when ``openssl`` exists;
* ``echo``: TCP and UDP echo on port 7 (``nc -u 198.51.100.12 7``), prefixed with
  the peer's address.
"""
from __future__ import annotations

import os
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

KNOWN = ("http", "https", "echo")


def _page(name: str, peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    return (f"hello from {name} ({local[0]}:{local[1]}): you came from {peer[0]}:{peer[1]}\n"
            ).encode()


def _http_handler(name: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "nattrack-lab"
        sys_version = ""
        # Headers and body leave in one segment (flushed together after do_GET): written
        # apart, Nagle made whether the server's FIN rode on the body a race, and so which
        # side closed first -- a lab's TCP states must not depend on it.
        wbufsize = 1 << 16

        def do_GET(self):                                    # noqa: N802 -- http.server API
            body = _page(name, self.client_address, self.connection.getsockname())
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{name} http: {self.client_address[0]}:{self.client_address[1]} "
                             f"{fmt % args}\n")
    return Handler


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _tls_context() -> ssl.SSLContext | None:
    d = tempfile.mkdtemp(prefix="nattrack-tls-")
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=nattrack-lab", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        sys.stderr.write("https: no openssl, TLS not served\n")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    for f in (key, cert):
        os.unlink(f)
    os.rmdir(d)
    return ctx


def serve_http(name: str, port: int = 80, tls: bool = False) -> None:
    srv = _ThreadingHTTPServer(("0.0.0.0", port), _http_handler(name))
    if tls:
        ctx = _tls_context()
        if ctx is None:
            return
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


def serve_echo(name: str, port: int = 7) -> None:
    class TcpEcho(socketserver.StreamRequestHandler):
        def handle(self):
            peer = self.client_address
            for line in self.rfile:
                self.wfile.write(f"{peer[0]}:{peer[1]} ".encode() + line)

    class Tcp(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    tcp = Tcp(("0.0.0.0", port), TcpEcho)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    while True:
        data, peer = udp.recvfrom(65535)
        try:
            udp.sendto(f"{peer[0]}:{peer[1]} ".encode() + data, peer)
        except OSError:                   # e.g. an untranslated private peer: no route back
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or any(s not in KNOWN for s in argv[1:]):
        sys.stderr.write(f"usage: python -m nattrack.lab.services NODE {{{','.join(KNOWN)}}}...\n")
        return 2
    name, wanted = argv[0], argv[1:]
    threads = []
    for svc in wanted:
        target = {"http": lambda: serve_http(name, 80),
                  "https": lambda: serve_http(name, 443, tls=True),
                  "echo": lambda: serve_echo(name, 7)}[svc]
        t = threading.Thread(target=target, name=svc, daemon=True)
        t.start()
        threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
