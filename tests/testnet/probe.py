"""Tiny network probes the namespace tests run inside namespaces (``python probe.py ...``).

    serve PORT [UDP_PORT]     HTTP on 0.0.0.0:PORT answering every GET with the client's
                              address (and UDP echoing the sender's address); prints
                              "ready" once bound; exits after LIFETIME_S at the latest
    get URL [PROXY]           GET (through the HTTP proxy), print the body
    tunnel PROXY HOST:PORT    CONNECT through the proxy, GET / through the tunnel, print it
    connect HOST PORT         open a TCP connection: print "ok", or the error (exit 1)
    udp HOST PORT             send a datagram, print the reply

Every client gives up after TIMEOUT_S; exit code 1 on failure, with the error printed.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import urllib.request

TIMEOUT_S = 3.0
LIFETIME_S = 60.0


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(port: int, udp_port: int | None) -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Echo)
    if udp_port is not None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", udp_port))

        def echo() -> None:
            while True:
                _, peer = udp.recvfrom(512)
                udp.sendto(peer[0].encode(), peer)

        threading.Thread(target=echo, daemon=True).start()
    threading.Timer(LIFETIME_S, server.shutdown).start()
    print("ready", flush=True)
    server.serve_forever()


def get(url: str, proxy: str | None) -> str:
    handler = urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    with urllib.request.build_opener(handler).open(url, timeout=TIMEOUT_S) as resp:
        return str(resp.read().decode())


def tunnel(proxy: str, target: str) -> str:
    host, _, port = proxy.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError(f"proxy closed: {head!r}")
            head += chunk
        status = head.split(b"\r\n")[0]
        if b" 200 " not in status:
            raise OSError(f"CONNECT refused: {status!r}")
        s.sendall(f"GET / HTTP/1.0\r\nHost: {target}\r\n\r\n".encode())
        reply = head.partition(b"\r\n\r\n")[2]
        while chunk := s.recv(4096):
            reply += chunk
    return reply.partition(b"\r\n\r\n")[2].decode()


def connect(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT_S):
        return "ok"


def udp(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        s.sendto(b"ping", (host, port))
        return s.recvfrom(512)[0].decode()


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "serve":
        serve(int(args[0]), int(args[1]) if len(args) > 1 else None)
        return 0
    try:
        if cmd == "get":
            print(get(args[0], args[1] if len(args) > 1 else None))
        elif cmd == "tunnel":
            print(tunnel(args[0], args[1]))
        elif cmd == "connect":
            print(connect(args[0], int(args[1])))
        elif cmd == "udp":
            print(udp(args[0], int(args[1])))
        else:
            raise SystemExit(f"unknown probe {cmd}")
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
