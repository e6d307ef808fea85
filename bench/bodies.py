"""Large-body client of the bench suite: one upload or download of N bytes over a fresh connection.

What it measures: MB/s of one ``POST`` of N bytes (Content-Length, sent in 1 MiB writes; the built-in
upstream answers how many bytes it received) or one ``GET /bytes/N`` (read with the httptools parser),
from the first byte sent to the end of the response, and checks that every byte arrived. Against what:
the suite runs it directly against the built-in upstream and through each proxy (scenario ``bodies``).

How to run: ``python -m bench.bodies --port 8080 --size 100000000 --direction up`` prints one JSON line
(the suite runs it pinned to the load core).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

import httptools

CHUNK = memoryview(bytes(1024 * 1024))


class Response:
    """httptools callbacks: status, body size, the first bytes of the body, completion."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.size = 0
        self.head = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if len(self.head) < 200:
            self.head += body[:200]

    def on_message_complete(self) -> None:
        self.done = True


def read_response(sock: socket.socket) -> Response:
    response = Response()
    while not response.done:
        data = sock.recv(1024 * 1024)
        if not data:
            raise ConnectionError("the connection closed before the response ended")
        response.parser.feed_data(data)
    return response


def send_body(sock: socket.socket, size: int) -> None:
    while size > 0:
        piece = CHUNK[:min(size, len(CHUNK))]
        sock.sendall(piece)
        size -= len(piece)


def transfer(port: int, size: int, direction: str) -> dict[str, Any]:
    """One upload (``up``) or download (``down``) of ``size`` bytes through 127.0.0.1:``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        if direction == "up":
            sock.sendall(b"POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream\r\n"
                         b"content-length: %d\r\n\r\n" % size)
            send_body(sock, size)
        else:
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nhost: bench\r\n\r\n" % size)
        response = read_response(sock)
        seconds = time.perf_counter() - started
    status = response.parser.get_status_code()
    if direction == "up":
        moved = json.loads(response.head).get("received", 0) if status == 200 else 0
    else:
        moved = response.size
    return {"direction": direction, "bytes": size, "seconds": seconds, "mb_per_s": size / seconds / 1e6,
            "status": status, "ok": status == 200 and moved == size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=100_000_000)
    parser.add_argument("--direction", choices=("up", "down"), required=True)
    args = parser.parse_args()
    try:
        result = transfer(args.port, args.size, args.direction)
    except (OSError, ValueError, httptools.HttpParserError) as exc:
        result = {"direction": args.direction, "bytes": args.size, "ok": False, "error": str(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
