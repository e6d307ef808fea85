"""The protocol's guard hooks and new limits, without sockets, on every protocol implementation present:
header count (431), minimum body rate (408), per-request body limits (413), and a real Guard at
``connection_made`` (refusals, release at close), per request (bans) and on every limit error.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import orjson
from uvicorn.server import ServerState

import gateway.guards
from gateway.errors import GatewayError
from gateway.exchange import Exchange, Stage
from gateway.guards.body import BodyLimitStage
from gateway.guards.runtime import Guard
from tests.unit.helpers import async_test
from tests.unit.test_guards import guard_of, rejections
from tests.unit.test_protocol import App, Conn, MockTransport, assert_error, impl, read_body, reply

__all__ = ["impl"]  # the fixture: every test runs on each protocol implementation
POST = b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n"
CHUNKED = b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"


class PeerTransport(MockTransport):
    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        super().__init__(protocol, loop)
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.peer, 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class GuardedConn(Conn):
    """A connection from ``peer`` to a protocol that has ``guard``."""

    def __init__(self, impl: ModuleType, app: App, guard: Guard | None = None, peer: str = "10.0.0.1",
                 **limits: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.state = ServerState()
        self.protocol = impl.HttpProtocol(app, impl.Limits(**limits), self.state, self.loop, guard=guard)
        self.transport = PeerTransport(self.protocol, self.loop, peer)
        self.protocol.connection_made(self.transport)


def echo_body() -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


# --- header count -----------------------------------------------------------------------------------------


@async_test
async def test_more_header_fields_than_allowed_get_431(impl: ModuleType) -> None:
    head = b"GET / HTTP/1.1\r\nHost: example.com\r\nA: 1\r\nB: 2\r\n"
    ok = GuardedConn(impl, reply(), max_header_count=3)
    ok.feed(head + b"\r\n")
    await ok.finish()
    assert ok.responses()[0].status == 200
    over = GuardedConn(impl, reply(), max_header_count=3)
    over.feed(head + b"C: 3\r\n\r\n")
    await over.settle()
    assert_error(over.responses()[0], 431, "too_many_headers")
    unlimited = GuardedConn(impl, reply(), max_header_count=0)
    unlimited.feed(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(500)) + b"\r\n")
    await unlimited.finish()
    assert unlimited.responses()[0].status == 200


# --- minimum body rate ------------------------------------------------------------------------------------


RATE = {"min_body_rate": 1000, "body_rate_grace": 0.05, "body_rate_window": 0.05}


@async_test
async def test_a_body_slower_than_the_minimum_rate_gets_408(impl: ModuleType) -> None:
    conn = GuardedConn(impl, echo_body(), **RATE)
    conn.feed(POST % 1000 + b"x" * 10)
    for _ in range(6):  # 10 bytes every 20 ms: 500 B/s, half the minimum
        await asyncio.sleep(0.02)
        if conn.closed:
            break
        conn.feed(b"x" * 10)
    await asyncio.sleep(0.1)
    await conn.settle()
    assert_error(conn.responses()[0], 408, "request_body_too_slow")
    assert conn.closed


@async_test
async def test_a_body_at_the_minimum_rate_passes_however_long_it_takes(impl: ModuleType) -> None:
    conn = GuardedConn(impl, echo_body(), **RATE)
    conn.feed(POST % 600)
    for _ in range(20):  # 30 bytes every 10 ms: 3000 B/s over 200 ms, four windows
        await asyncio.sleep(0.01)
        conn.feed(b"y" * 30)
    await conn.finish()
    response = conn.responses()[0]
    assert response.status == 200 and response.body == b"y" * 600


@async_test
async def test_a_complete_body_is_not_timed_while_its_response_is_pending(impl: ModuleType) -> None:
    async def slow_answer(scope: Any, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        await asyncio.sleep(0.15)  # three windows after the body ended
        await reply(body)(scope, receive, send)

    conn = GuardedConn(impl, slow_answer, **RATE)
    conn.feed(POST % 4 + b"ab")
    await asyncio.sleep(0.01)
    conn.feed(b"cd")
    await conn.finish()
    assert conn.responses()[0].body == b"abcd" and not conn.closed


@async_test
async def test_no_rate_is_asked_of_a_body_before_100_continue_is_sent(impl: ModuleType) -> None:
    async def late_reader(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.2)  # four windows in which the client must not send (it waits for 100)
        await echo_body()(scope, receive, send)

    conn = GuardedConn(impl, late_reader, **RATE)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    await asyncio.sleep(0.25)
    assert b"100 Continue" in conn.output and not conn.closed
    conn.feed(b"data")
    await conn.finish()
    assert conn.responses()[-1].body == b"data"


@async_test
async def test_no_rate_is_asked_while_the_gateway_holds_the_body_back(impl: ModuleType) -> None:
    release = asyncio.Event()

    async def slow_first(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await reply()(scope, receive, send)

    conn = GuardedConn(impl, slow_first, **RATE)
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + POST % 100 + b"z" * 10)  # the POST waits in the pipeline
    await asyncio.sleep(0.2)
    assert conn.transport.read_paused and not conn.closed
    release.set()
    await asyncio.sleep(0.01)
    conn.feed(b"z" * 90)
    await conn.finish()
    assert [r.status for r in conn.responses()] == [200, 200]


# --- a route's body limit ----------------------------------------------------------------------------------


def limited(impl: ModuleType, limit: int) -> App:
    """An app that applies a route limit of ``limit`` bytes, then echoes the body (413 if already over)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if not impl.limit_body(receive, limit):
            await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await echo_body()(scope, receive, send)

    return app


@async_test
async def test_a_declared_length_over_the_route_limit_is_refused_before_the_body(impl: ModuleType) -> None:
    conn = GuardedConn(impl, limited(impl, 10))
    conn.feed(POST % 20)
    await conn.settle()
    assert conn.responses()[0].status == 413 and conn.closed
    fits = GuardedConn(impl, limited(impl, 10))
    fits.feed(POST % 10 + b"0123456789")
    await fits.finish()
    assert fits.responses()[0].body == b"0123456789"


@async_test
async def test_a_chunked_body_is_cut_at_the_route_limit(impl: ModuleType) -> None:
    conn = GuardedConn(impl, limited(impl, 10))
    conn.feed(CHUNKED + b"6\r\nabcdef\r\n")
    await conn.settle()
    assert not conn.responses()
    conn.feed(b"6\r\nghijkl\r\n")  # 12 bytes: over the route's 10 (the server's limit is 1 GiB)
    await conn.settle()
    assert_error(conn.responses()[0], 413, "payload_too_large")
    already = GuardedConn(impl, limited(impl, 3))
    already.feed(CHUNKED + b"6\r\nabcdef\r\n")  # read before the route was known: refused at once
    await already.settle()
    assert already.responses()[0].status == 413


@async_test
async def test_limit_body_ignores_a_foreign_receive(impl: ModuleType) -> None:
    async def receive() -> dict[str, Any]:
        return {}

    assert impl.limit_body(receive, 1) is True


def route_limited(limit: int) -> App:
    """The gateway's way: a route whose chain starts with a BodyLimitStage, answering errors as app.py does."""

    class Echo(Stage):
        async def __call__(self, ex: Exchange) -> None:
            await echo_body()(ex.scope, ex.receive, ex.send)

    stage = BodyLimitStage(limit)
    stage.next = Echo()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await stage(Exchange(scope, receive, send, 0.0))
        except GatewayError as exc:
            await reply(exc.message.encode(), exc.status)(scope, receive, send)

    return app


@async_test
async def test_the_route_stage_refuses_early_and_reports_an_offence(impl: ModuleType) -> None:
    guard, metrics, _ = guard_of({"bans": {"after": 2}})
    previous = gateway.guards.current()
    gateway.guards.install(guard)
    try:
        for _ in range(2):
            conn = GuardedConn(impl, route_limited(10), guard)
            conn.feed(POST % 11)
            await conn.settle()
            response = conn.responses()[0]
            assert response.status == 413 and b"(10 bytes)" in response.body
        assert rejections(metrics) == {"body_size": 2}
        assert guard.tables.banned(conn.protocol.guard_ticket.key, guard.clock()) > 0  # the second banned
        fits = GuardedConn(impl, route_limited(10), None, peer="10.0.0.2")
        fits.feed(POST % 10 + b"0123456789")
        await fits.finish()
        assert fits.responses()[0].body == b"0123456789"
    finally:
        gateway.guards.install(previous)


# --- a real Guard at the protocol's hooks -------------------------------------------------------------------


@async_test
async def test_a_refused_connection_gets_the_answer_and_is_closed_unread(impl: ModuleType) -> None:
    guard, metrics, _ = guard_of({"max_connections_per_ip": 1, "deny": ["10.6.6.0/24"]})
    first = GuardedConn(impl, reply(), guard)
    second = GuardedConn(impl, reply(), guard)
    assert second.transport.closed and first.state.connections and not second.state.connections
    response = second.responses()[0]
    assert_error(response, 429, "too_many_connections")
    assert response.header(b"retry-after") == b"1"
    denied = GuardedConn(impl, reply(), guard, peer="10.6.6.6")
    assert denied.transport.closed and denied.output == b""
    first.feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await first.finish()
    assert first.transport.closed
    await first.settle()  # connection_lost: the count is given back
    third = GuardedConn(impl, reply(), guard)
    assert not third.transport.closed
    assert rejections(metrics) == {"deny": 1, "ip_connections": 1}


@async_test
async def test_a_ban_reaches_connections_already_open_at_their_next_request(impl: ModuleType) -> None:
    guard, metrics, _ = guard_of({"bans": {"after": 1, "duration": "30s"}})
    conn = GuardedConn(impl, reply(), guard)
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.feed(get)
    await conn.finish()
    assert conn.responses()[0].status == 200
    assert guard.offend("10.0.0.1", "rate_limit") == 30.0
    conn.feed(get)
    await conn.settle()
    refused = conn.responses()[1]
    assert_error(refused, 403, "client_banned")
    assert refused.header(b"retry-after") == b"30"
    assert rejections(metrics) == {"banned": 1}
    late = GuardedConn(impl, reply(), guard)
    assert late.transport.closed and late.responses()[0].status == 403


@async_test
async def test_limit_errors_are_offences_that_ban(impl: ModuleType) -> None:
    guard, metrics, _ = guard_of({"bans": {"after": 2}})
    for _ in range(2):
        conn = GuardedConn(impl, reply(), guard, max_header_count=1)
        conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n")
        await conn.settle()
        assert conn.responses()[0].status == 431
    banned = GuardedConn(impl, reply(), guard)
    assert banned.transport.closed
    body = orjson.loads(banned.responses()[0].body)
    assert body["error"] == "client_banned"
    assert rejections(metrics) == {"header_count": 2, "banned": 1}
