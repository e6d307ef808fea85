"""Connection guards through real ``gateway run`` processes on loopback, both implementations.

Several clients are simulated with loopback source addresses (127.0.0.2, 127.0.0.3, ...: Linux routes all
of 127/8 to lo). With the compiled tables, connection counts are host-wide (exact across workers); the
pure-Python twin counts per worker process, so a host of W workers admits up to W times a cap there.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import Gateway, Response, request

pytestmark = pytest.mark.integration
ROUTES = """
upstreams:
  app: http://127.0.0.1:{port}
routes:
  - prefix: /
    upstream: app
"""


def connection(gw: Gateway, ip: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=(ip, 0))


def get(conn: http.client.HTTPConnection, path: str = "/echo", method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> Response | str:
    """One request on ``conn``: its response, or "closed" when the gateway closed without one."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        conn.close()
        return "closed"


def once(gw: Gateway, ip: str, **kwargs: Any) -> Response | str:
    """One request on a fresh connection from ``ip``, closed after."""
    conn = connection(gw, ip)
    try:
        return get(conn, **kwargs)
    finally:
        conn.close()


def status(result: Response | str) -> int | str:
    return result.status if isinstance(result, Response) else result


def raw(gw: Gateway, ip: str, data: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((ip, 0))
    sock.connect(("127.0.0.1", gw.port))
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def exchange(gw: Gateway, ip: str, data: bytes) -> bytes:
    """Sends ``data`` from ``ip`` on a fresh connection; everything the gateway sent until it closed."""
    with raw(gw, ip, data) as sock:
        return read_all(sock)


def metric(gw: Gateway, line_start: str) -> float:
    """The value of the first exposition line starting with ``line_start`` (0 when absent)."""
    for line in gw.admin("/metrics").body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rejections(gw: Gateway, reason: str) -> float:
    return metric(gw, f'gateway_guard_rejections_total{{reason="{reason}"}}')


@pytest.fixture
def guarded(start_gateway: Callable[..., Gateway], upstream_port: int) -> Callable[..., Gateway]:
    """Starts a gateway proxying every path to the test upstream, with ``extra`` YAML appended."""

    def start(extra: str, workers: int = 1) -> Gateway:
        return start_gateway(ROUTES.format(port=upstream_port) + extra, workers=workers)

    return start


@contextlib.contextmanager
def closing(conns: list[http.client.HTTPConnection]) -> Iterator[list[http.client.HTTPConnection]]:
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def test_per_ip_cap_holds_across_workers_and_survives_a_worker_crash(guarded: Callable[..., Gateway],
                                                                      impl: str) -> None:
    gw = guarded("guards:\n  max_connections_per_ip: 2\n", workers=2)
    with closing([connection(gw, "127.0.0.2") for _ in range(8)]) as conns:
        results = [status(get(conn)) for conn in conns]
        admitted = results.count(200)
        assert set(results) <= {200, 429}
        if impl == "compiled":
            assert admitted == 2, results  # host-wide: one count for both workers
        else:
            assert 2 <= admitted <= 4, results  # the twin counts per worker
        refused = next(conn for conn, s in zip(conns, results, strict=True) if s == 429)
        refused.close()
        assert status(once(gw, "127.0.0.3")) == 200  # another client has its own cap
        held = [conn for conn, s in zip(conns, results, strict=True) if s == 200]
        assert all(status(get(conn)) == 200 for conn in held)  # admitted connections keep working
        if impl == "compiled":
            for worker in gw.workers():  # crash every worker holding the client's connections
                os.kill(worker["pid"], signal.SIGKILL)
            time.sleep(0.5)
            gw.wait_ready()
        else:
            for conn in held:
                conn.close()
    time.sleep(0.3)  # the closes reach the gateway
    with closing([connection(gw, "127.0.0.2") for _ in range(2)]) as again:
        assert [status(get(conn)) for conn in again] == [200, 200]  # nothing leaked
    assert rejections(gw, "ip_connections") >= 1
    assert "gateway_guard_connections" in gw.admin("/metrics").body.decode() or impl == "python"


def test_slowloris_connections_do_not_starve_normal_clients(guarded: Callable[..., Gateway]) -> None:
    gw = guarded("server:\n  header_timeout: 2s\nguards:\n  max_connections_per_ip: 10\n  max_connections: 40\n")
    slow = [raw(gw, "127.0.0.2", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(60)]
    try:
        started = time.monotonic()
        latencies = []
        for _ in range(20):  # normal requests from another client, while 60 slow heads sit open
            began = time.monotonic()
            assert request(gw.port, "GET", "/echo", timeout=5).status == 200
            latencies.append(time.monotonic() - began)
        assert max(latencies) < 1.5, latencies  # each one promptly, on a busy 2-core machine too
        assert time.monotonic() - started < 5.0
        for sock in slow:
            sock.settimeout(4)
        answers = [read_all(sock) for sock in slow]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(refused) == 50 and len(timed_out) == 10  # over the client's cap; then header_timeout
        assert b'"request_timeout"' in timed_out[0]
    finally:
        for sock in slow:
            sock.close()
    assert rejections(gw, "ip_connections") == 50
    assert rejections(gw, "header_timeout") == 10
    assert rejections(gw, "total_connections") == 0  # the per-client cap kept the host's free


def test_a_body_slower_than_the_minimum_rate_gets_408(guarded: Callable[..., Gateway]) -> None:
    gw = guarded("server:\n  min_body_rate: 1000\n  body_rate_grace: 500ms\n  body_rate_window: 500ms\n")
    sock = raw(gw, "127.0.0.2", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    began = time.monotonic()
    with sock:
        for _ in range(20):  # 20 bytes every 100 ms: 200 B/s
            try:
                sock.sendall(b"x" * 20)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_body_too_slow"' in answer
    assert time.monotonic() - began < 3.0
    fast = request(gw.port, "POST", "/upload", b"y" * 200_000)
    assert fast.status == 200 and fast.json()["bytes"] == 200_000
    assert rejections(gw, "body_rate") == 1


def test_more_header_fields_than_allowed_get_431(guarded: Callable[..., Gateway]) -> None:
    gw = guarded("server:\n  max_header_count: 10\n")
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    fits = exchange(gw, "127.0.0.2", head + b"".join(b"X-%d: v\r\n" % i for i in range(8)) + b"\r\n")
    assert fits.startswith(b"HTTP/1.1 200")
    over = exchange(gw, "127.0.0.2", head + b"".join(b"X-%d: v\r\n" % i for i in range(9)) + b"\r\n")
    assert over.startswith(b"HTTP/1.1 431") and b'"too_many_headers"' in over
    assert rejections(gw, "header_count") == 1


def test_body_size_per_route(guarded: Callable[..., Gateway], upstream_port: int,
                             start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(f"""
server:
  max_body_bytes: 1000
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - {{prefix: /small, upstream: app, strip_prefix: true, max_body_bytes: 100}}
  - {{prefix: /big, upstream: app, strip_prefix: true, max_body_bytes: 20000}}
  - {{prefix: /, upstream: app}}
""")
    # a Content-Length over the route's limit is answered before any body byte is sent
    early = exchange(gw, "127.0.0.2", b"POST /small/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n")
    assert early.startswith(b"HTTP/1.1 413") and b"100 bytes" in early
    assert request(gw.port, "POST", "/small/upload", b"s" * 100).json()["bytes"] == 100
    # a chunked body is cut as it passes the limit
    sock = raw(gw, "127.0.0.2", b"POST /small/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    with sock:
        for _ in range(3):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"32\r\n" + b"c" * 50 + b"\r\n")
            time.sleep(0.1)
        assert read_all(sock).startswith(b"HTTP/1.1 413")
    # a route may also raise the limit; the others keep the server's
    assert request(gw.port, "POST", "/big/upload", b"b" * 10_000).json()["bytes"] == 10_000
    assert request(gw.port, "POST", "/upload", b"o" * 500).json()["bytes"] == 500
    assert request(gw.port, "POST", "/upload", b"o" * 5000).status == 413
    assert request(gw.port, "POST", "/big/upload", b"b" * 30_000).status == 413
    assert rejections(gw, "body_size") == 4


def test_repeat_offenders_are_banned_host_wide_and_unbanned_through_the_admin_api(
        guarded: Callable[..., Gateway]) -> None:
    gw = guarded("server:\n  max_header_count: 5\n"
                 "guards:\n  bans: {after: 3, window: 60s, duration: 30s}\n", workers=2)
    early = connection(gw, "127.0.0.2")
    assert status(get(early)) == 200  # a keep-alive connection from before the ban
    too_many = {f"X-{i}": "v" for i in range(6)}
    for _ in range(3):
        assert status(once(gw, "127.0.0.2", headers=too_many)) == 431
    banned = once(gw, "127.0.0.2")
    assert isinstance(banned, Response) and banned.status == 403
    assert banned.json()["error"] == "client_banned" and 0 < int(banned.headers["retry-after"]) <= 30
    assert status(get(early)) == 403  # the ban reaches connections already open
    assert status(once(gw, "127.0.0.3")) == 200  # only the offender
    bans = gw.admin("/guards/bans").json()["bans"]
    assert [(b["client"], b["level"]) for b in bans] == [("127.0.0.2", 1)]
    assert metric(gw, "gateway_bans_active") == 1
    assert metric(gw, "gateway_guard_bans_total") == 1
    assert rejections(gw, "header_count") == 3
    lifted = request(gw.admin_port, "DELETE", "/guards/bans?client=127.0.0.2", timeout=5)
    assert lifted.status == 200 and lifted.json() == {"unbanned": "127.0.0.2"}
    assert status(once(gw, "127.0.0.2")) == 200
    early.close()
    assert gw.admin("/guards/bans").json() == {"bans": []}
    assert request(gw.admin_port, "DELETE", "/guards/bans?client=127.0.0.2", timeout=5).status == 404


def test_deny_list_closes_and_allow_list_bypasses_caps(guarded: Callable[..., Gateway]) -> None:
    gw = guarded("guards:\n  deny: [127.0.0.3/32, '::ffff:127.0.0.5/128']\n  allow: [127.0.0.4]\n"
                 "  max_connections_per_ip: 1\n")
    for ip in ("127.0.0.3", "127.0.0.5"):
        sock = raw(gw, ip, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        with sock:
            assert read_all(sock) == b""  # closed without a word
    with closing([connection(gw, "127.0.0.4") for _ in range(3)]) as allowed:
        assert [status(get(conn)) for conn in allowed] == [200, 200, 200]
    with closing([connection(gw, "127.0.0.2") for _ in range(2)]) as capped:
        assert [status(get(conn)) for conn in capped] == [200, 429]
    assert rejections(gw, "deny") == 2


def test_check_describes_the_guards(tmp_path: Any, upstream_port: int) -> None:
    from tests.integration.conftest import run_cli

    path = tmp_path / "gateway.yaml"
    path.write_text(ROUTES.format(port=upstream_port) + "guards:\n  max_connections_per_ip: 3\n  deny: [10.0.0.0/8]\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0 and "guards: 0 allowed and 1 denied networks" in result.stdout
    path.write_text(ROUTES.format(port=upstream_port) + "guards:\n  deny: [10.0.0.1/8]\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and "guards.deny[0]" in result.stderr
