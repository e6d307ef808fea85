"""Bodies stream through the gateway both ways in bounded memory (200 MB each way)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import raw_exchange, request

pytestmark = pytest.mark.integration

SIZE = 200 * 1024 * 1024
CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * (64 * 1024 // 256)
MEMORY_BUDGET = 48 * 1024 * 1024  # growth of a worker's peak RSS allowed while moving 200 MB


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing for pid {pid}")


def upload_chunks():
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(SIZE // CHUNK):
        yield block


def test_200mb_upload_and_download_in_bounded_memory(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}", "--no-access-log"])
    pid = gw.workers()[0]["pid"]
    gw.get("/echo/warm-up")
    baseline = memory_kb(pid, "VmRSS") * 1024

    expected = hashlib.sha256()
    for block in upload_chunks():
        expected.update(block)
    resp = request(gw.port, "POST", "/upload", body=upload_chunks(), timeout=120)
    assert resp.status == 200
    assert resp.json() == {"bytes": SIZE, "sha256": expected.hexdigest()}

    for length in ("", "&length=1"):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
        conn.request("GET", f"/download?size={SIZE}{length}")
        download = conn.getresponse()
        assert download.status == 200
        received = 0
        while True:
            piece = download.read(CHUNK)
            if not piece:
                break
            received += len(piece)
        conn.close()
        assert received == SIZE

    peak = memory_kb(pid, "VmHWM") * 1024
    print(f"peak RSS growth {(peak - baseline) >> 20} MiB, baseline {baseline >> 20} MiB")
    assert peak - baseline < MEMORY_BUDGET, f"peak RSS grew by {(peak - baseline) >> 20} MiB"


def test_slow_client_download_applies_backpressure(start_gateway, upstream_port):
    """A client that reads slowly makes the gateway stop reading the upstream, not buffer the body."""
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}", "--no-access-log"])
    pid = gw.workers()[0]["pid"]
    gw.get("/echo/warm-up")
    baseline = memory_kb(pid, "VmRSS") * 1024
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /download?size={SIZE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.5)  # the upstream could have sent everything by now if nothing pushed back
        grown = memory_kb(pid, "VmRSS") * 1024 - baseline
        assert grown < MEMORY_BUDGET, f"RSS grew by {grown >> 20} MiB while the client did not read"
        received = 0
        sock.settimeout(30)
        while received < SIZE:
            piece = sock.recv(1 << 20)
            if not piece:
                break
            received += len(piece)
        assert received > SIZE  # the body plus chunked framing and the head
    assert gw.get("/echo/after").status == 200


def test_client_abort_mid_download_releases_upstream(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}", "--no-access-log"])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(f"GET /download?size={SIZE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    # the gateway closed those upstream exchanges and keeps serving on healthy connections
    for _ in range(5):
        assert gw.get("/echo/ok").status == 200


def test_expect_continue(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")


def early_reply_upstream(stop: threading.Event) -> socket.socket:
    """An upstream that answers 413 after the head, reads nothing for a second, then drains and closes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 15\r\nconnection: close\r\n\r\n"
                             b'{"error":"big"}')
                time.sleep(1.0)  # not reading: the gateway's body pump is stuck behind a full socket
                conn.settimeout(0.5)
                with contextlib.suppress(OSError):
                    while conn.recv(1 << 20):
                        pass

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_early_upstream_reply_reaches_the_client(start_gateway):
    """The upstream answers before reading a large body; the client gets that answer, intact."""
    stop = threading.Event()
    upstream = early_reply_upstream(stop)
    try:
        gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream.getsockname()[1]}"])
        head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (50 * 1024 * 1024)
        answer = raw_exchange(gw.port, head + b"x" * (1024 * 1024), timeout=10)
        assert answer.startswith(b"HTTP/1.1 413")
        assert answer.endswith(b'{"error":"big"}')
    finally:
        stop.set()
        upstream.close()


def test_refused_large_body_is_answered_not_reset(start_gateway, upstream_port):
    """413 for a declared length over the limit reaches a client that keeps sending (lingering close)."""
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}", "--max-body-bytes", "1MB"])
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (20 * 1024 * 1024)
    for _ in range(5):
        answer = raw_exchange(gw.port, head + b"x" * (4 * 1024 * 1024), timeout=10)
        assert answer.startswith(b"HTTP/1.1 413")
