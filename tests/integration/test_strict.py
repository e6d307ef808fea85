"""Strict parsing at the edge: ambiguous or malformed requests are answered, never forwarded.

Every case is raw bytes sent through a real gateway to a recording upstream, which answers 200 to each
request head it receives and keeps every byte, so "never forwarded" is checked on the wire.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest

from tests.integration.conftest import raw_exchange

pytestmark = pytest.mark.integration


class RecordingUpstream:
    """Accepts connections, records every byte, answers each request head with an empty 200."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(0.2)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += data
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    with contextlib.suppress(OSError):
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.server.close()


@pytest.fixture
def recording():
    upstream = RecordingUpstream()
    yield upstream
    upstream.close()


HEAD = b"POST /p HTTP/1.1\r\nHost: x\r\n"
REFUSED = {
    "content-length with transfer-encoding": (HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                              b"0\r\n\r\n", 400),
    "two different content-lengths": (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "signed content-length": (HEAD + b"Content-Length: +5\r\n\r\nhello", 400),
    "non-numeric content-length": (HEAD + b"Content-Length: 5a\r\n\r\nhello", 400),
    "whitespace before a header colon": (HEAD + b"X-A : 1\r\n\r\n", 400),
    "bare CR in a header": (HEAD + b"X-A: a\rb\r\n\r\n", 400),
    "NUL in a header": (HEAD + b"X-A: a\x00b\r\n\r\n", 400),
    "duplicate Host": (HEAD + b"Host: y\r\nContent-Length: 0\r\n\r\n", 400),
    "missing Host on HTTP/1.1": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    "chunk size overflow": (HEAD + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n", 400),
    "obs-fold continuation": (HEAD + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400),
    "transfer-encoding on HTTP/1.0": (b"POST /p HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"0\r\n\r\n", 400),
    "chunked not last": (HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "unknown transfer coding": (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "HTTP/2.0 request line": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "bare LF line endings": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
}


def test_refused_and_never_forwarded(start_gateway, recording):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{recording.port}"])
    for case, (data, status) in REFUSED.items():
        answer = raw_exchange(gw.port, data)
        assert answer.startswith(b"HTTP/1.1 %d " % status), (case, answer[:80])
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"connection: close" in head, case  # framing may be ambiguous: the connection ends
        assert json.loads(body)["status"] == status, case
    assert raw_exchange(gw.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200")
    assert b"POST /p" not in recording.received
    assert b"GET / " not in recording.received
    assert b"GET /after" in recording.received  # the recorder does see what is forwarded


def test_h2c_upgrade_and_underscore_headers_are_dropped(start_gateway, recording):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{recording.port}"])
    answer = raw_exchange(gw.port, b"GET /h2c HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n"
                                   b"Connection: Upgrade, HTTP2-Settings\r\nX_Forwarded_For: 6.6.6.6\r\n"
                                   b"X-Good: 1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    forwarded = bytes(recording.received).lower()
    assert b"get /h2c http/1.1" in forwarded
    assert b"x-good: 1" in forwarded
    for dropped in (b"upgrade", b"http2-settings", b"x_forwarded_for", b"6.6.6.6"):
        assert dropped not in forwarded, dropped


def test_trailing_whitespace_is_not_part_of_a_value(start_gateway, recording):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{recording.port}"])
    answer = raw_exchange(gw.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: value  \t\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"x-pad: value\r\n" in bytes(recording.received).lower()
