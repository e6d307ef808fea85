"""WebSocket proxying end to end: a real WebSocket client (the ``websockets`` library) through a gateway
process to stock uvicorn's WebSocket server (tests/integration/upstream_app.py), both implementations."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import Gateway, free_port, request, wait_until

SECRET = "s" * 32

CONFIG = """
upstreams:
  app:
    targets: [http://127.0.0.1:{up}]
    websocket_idle_timeout: {idle}
routes:
  - {{name: ws, prefix: /ws, upstream: app}}
  - {{name: api, prefix: /, upstream: app}}
"""


def url(gw: Gateway, path: str = "/ws/echo") -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


def hello(ws: ClientConnection) -> dict[str, Any]:
    """The upstream's first message: what it saw of the handshake."""
    return dict(json.loads(ws.recv(timeout=10)))


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway], upstream_port: int) -> Gateway:
    return start_gateway(CONFIG.format(up=upstream_port, idle="600s"))


def test_messages_both_ways_with_subprotocol_and_compression_end_to_end(gateway: Gateway) -> None:
    with connect(url(gateway, "/ws/echo?room=1"), subprotocols=["chat.v2", "chat"],  # type: ignore[list-item]
                 additional_headers={"X-Custom": "yes"}, max_size=None, open_timeout=10) as ws:
        seen = hello(ws)
        assert ws.subprotocol == "chat.v2"  # chosen by the upstream, passed through
        assert ws.response is not None
        assert ws.response.headers["x-request-id"]
        # permessage-deflate negotiated by client and upstream themselves (the gateway passes bytes)
        assert "permessage-deflate" in ws.response.headers.get("sec-websocket-extensions", "")
        headers = dict((k.lower(), v) for k, v in seen["headers"])
        assert seen["path"] == "/ws/echo" and seen["query"] == "room=1"
        assert headers["x-custom"] == "yes"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["upgrade"] == "websocket"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01\x02")
        assert ws.recv(timeout=10) == b"\x00\x01\x02"
        big = os.urandom(1 << 20)
        ws.send(big)
        assert ws.recv(timeout=20) == big
    # plain HTTP still works on the same gateway, and the session was logged once it ended
    assert gateway.get("/echo").status == 200

    def logged() -> list[dict[str, Any]]:
        return [line for line in gateway.access_log() if line.get("route") == "ws"]

    [line] = wait_until(logged, 10)
    assert line["status"] == 101
    assert line["bytes_in"] > 1 << 20 and line["bytes_out"] > 1 << 20


def test_upstream_close_code_reaches_the_client(gateway: Gateway) -> None:
    with connect(url(gateway), open_timeout=10) as ws:
        hello(ws)
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_upstream_refusal_is_relayed(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(url(gateway, "/ws/deny"), open_timeout=10)
    assert refused.value.response.status_code == 403


def test_unreachable_upstream_is_502_json(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(CONFIG.format(up=free_port(), idle="600s"))
    with pytest.raises(InvalidStatus) as refused:
        connect(url(gw), open_timeout=10)
    response = refused.value.response
    assert response.status_code == 502
    assert json.loads(response.body or b"{}")["error"] == "upstream_unavailable"


def test_route_stages_apply_to_the_upgrade(start_gateway: Callable[..., Gateway], upstream_port: int) -> None:
    gw = start_gateway(f"""
auth:
  issuers:
    test: {{issuer: https://issuer.test, secret: {SECRET}, algorithms: [HS256]}}
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - {{name: ws, prefix: /ws, upstream: app, auth: required}}
""")
    with pytest.raises(InvalidStatus) as refused:
        connect(url(gw), open_timeout=10)
    assert refused.value.response.status_code == 401
    token = jwt.encode({"iss": "https://issuer.test", "sub": "alice", "exp": int(time.time()) + 3600}, SECRET,
                       algorithm="HS256")
    with connect(url(gw), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
        hello(ws)
        ws.send("authorised")
        assert ws.recv(timeout=10) == "authorised"


def test_idle_tunnel_is_closed(start_gateway: Callable[..., Gateway], upstream_port: int) -> None:
    gw = start_gateway(CONFIG.format(up=upstream_port, idle="1s"))
    # the library's own keepalive pings would count as traffic: off
    with connect(url(gw), open_timeout=10, ping_interval=None) as ws:
        hello(ws)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert time.monotonic() - started < 5


def test_many_sessions_at_once_each_get_their_own_messages(gateway: Gateway) -> None:
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            with connect(url(gateway), open_timeout=20) as ws:
                hello(ws)
                for i in range(20):
                    ws.send(f"{n}:{i}")
                    assert ws.recv(timeout=20) == f"{n}:{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]


def test_session_survives_a_reload(start_gateway: Callable[..., Gateway], upstream_port: int) -> None:
    gw = start_gateway(CONFIG.format(up=upstream_port, idle="600s"))
    with connect(url(gw), open_timeout=10) as ws:
        hello(ws)
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in gw.stderr, 20)
        for i in range(5):  # the old worker keeps its tunnel while it drains
            ws.send(f"after reload {i}")
            assert ws.recv(timeout=10) == f"after reload {i}"
        with connect(url(gw), open_timeout=10) as fresh:  # new sessions reach the new workers
            hello(fresh)
    wait_until(lambda: len(gw.workers()) == 1 and request(gw.port, "GET", "/echo").status == 200, 20)


def test_retried_on_another_target_when_one_is_down(start_gateway: Callable[..., Gateway],
                                                     upstream_port: int) -> None:
    gw = start_gateway(f"""
upstreams:
  app:
    targets: [http://127.0.0.1:{free_port()}, http://127.0.0.1:{upstream_port}]
    balancer: round_robin
routes:
  - {{name: ws, prefix: /, upstream: app}}
""")
    for _ in range(4):
        with connect(url(gw), open_timeout=10) as ws:
            hello(ws)
            ws.send("x")
            assert ws.recv(timeout=10) == "x"


def test_frames_sent_with_the_handshake_pass_through(gateway: Gateway) -> None:
    """A client that sends a frame in the same packet as its handshake (before the 101) is served."""
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (f"GET /ws/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    mask = b"\x01\x02\x03\x04"
    payload = b"early"
    frame = b"\x81" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(handshake + frame)
        received = b""
        while received.count(b"early") < 1:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 101 ")
