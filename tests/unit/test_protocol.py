"""The HTTP/1.1 server protocol (gateway._fast.protocol), without sockets.

Bytes go in through ``data_received``; what the protocol writes, closes or pauses is recorded by a fake
transport, as in uvicorn's tests/protocols/test_http.py. Each test runs on a fresh event loop (timers and
tasks are real) and against every implementation of the protocol that is present.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httptools
import orjson
import pytest
from uvicorn.server import ServerState

from gateway._fast import implementations
from gateway.errors import MethodNotAllowed
from tests.unit.helpers import async_test

IMPLS = implementations("protocol")
PEER = ("127.0.0.1", 51000)
SOCK = ("127.0.0.1", 8080)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

App = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]


@pytest.fixture(params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


# --- the fake transport and the connection harness ---------------------------------------------------


class MockTransport:
    """Records writes and flow control; ``close()`` reports ``connection_lost`` soon after, as asyncio does."""

    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.protocol = protocol
        self.loop = loop
        self.data = bytearray()
        self.closed = False
        self.eof_written = False
        self.read_paused = False
        self.pauses = 0
        self.writes_after_close = 0

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close += 1
        self.data += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.read_paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.read_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": PEER, "sockname": SOCK}.get(name, default)


class Conn:
    """One client connection: a protocol made on a MockTransport, inside the running loop."""

    def __init__(self, impl: ModuleType, app: App, **limits: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.state = ServerState()
        self.protocol = impl.HttpProtocol(app, impl.Limits(**limits), self.state, self.loop)
        self.transport = MockTransport(self.protocol, self.loop)
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    @property
    def output(self) -> bytes:
        return bytes(self.transport.data)

    @property
    def closed(self) -> bool:
        """The connection is ending: closed, or half-closed by a lingering close (FIN sent)."""
        return self.transport.closed or self.transport.eof_written

    def responses(self) -> list[Response]:
        return parse_responses(self.output)

    async def settle(self) -> None:
        """Lets the request tasks and the callbacks they scheduled run (apps blocked on events stay so)."""
        for _ in range(10):
            await asyncio.sleep(0)

    async def finish(self) -> None:
        """Waits until no request task is left (a finished response may start a pipelined one)."""
        deadline = self.loop.time() + 1.0
        while self.state.tasks and self.loop.time() < deadline:
            await asyncio.wait(set(self.state.tasks), timeout=deadline - self.loop.time())
        await self.settle()
        assert not self.state.tasks, "a request task did not finish"
        assert self.transport.writes_after_close == 0


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


def parse_responses(data: bytes) -> list[Response]:
    """The responses in ``data``, parsed by httptools (the last one may be incomplete)."""
    found: list[Response] = []

    class Collector:
        def on_message_begin(self) -> None:
            found.append(Response())

        def on_header(self, name: bytes, value: bytes) -> None:
            found[-1].headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            found[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            found[-1].body += body

        def on_message_complete(self) -> None:
            found[-1].complete = True

    parser = httptools.HttpResponseParser(Collector())
    parser.feed_data(data)
    return found


def assert_error(response: Response, status: int, code: str) -> None:
    """A gateway error: JSON body with error, message, status, request_id; the connection closes."""
    assert response.complete
    assert response.status == status
    assert response.header(b"content-type") == b"application/json"
    assert response.header(b"connection") == b"close"
    body = orjson.loads(response.body)
    assert set(body) == {"error", "message", "status", "request_id"}
    assert body["error"] == code
    assert body["status"] == status
    assert body["message"]
    request_id = response.header(b"x-request-id")
    assert request_id is not None
    assert body["request_id"] == request_id.decode()
    assert len(body["request_id"]) == 32


# --- apps ----------------------------------------------------------------------------------------------


def reply(body: bytes = b"ok", status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> App:
    """An app that answers every request with ``body``, content-length framed unless ``headers`` is given."""
    if headers is None:
        headers = [(b"content-length", b"%d" % len(body))]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunks.append(message["body"])
        if not message["more_body"]:
            return b"".join(chunks)


class Recorder:
    """An app that records scopes and received messages, reads the whole body and echoes it."""

    def __init__(self) -> None:
        self.scopes: list[Any] = []
        self.messages: list[Any] = []
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        chunks = []
        try:
            while True:
                message = await receive()
                self.messages.append(message)
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


class Gate:
    """An app whose responses wait until ``open()``; answers with the request path."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.started = 0

    def open(self) -> None:
        self.event.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.started += 1
        await self.event.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


# --- a request and its response --------------------------------------------------------------------------


@async_test
async def test_get_is_answered_with_content_length_framing(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET /items?id=7 HTTP/1.1\r\nHost: example.com\r\nX-Trace: On\r\n\r\n")
    await conn.finish()

    assert conn.output == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert not conn.closed  # HTTP/1.1 keeps the connection
    [scope] = app.scopes
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/items"
    assert scope["raw_path"] == b"/items"
    assert scope["query_string"] == b"id=7"
    assert scope["root_path"] == ""
    assert scope["client"] == PEER
    assert scope["server"] == SOCK
    assert scope["headers"] == [(b"host", b"example.com"), (b"x-trace", b"On")]
    assert app.messages == [{"type": "http.request", "body": b"", "more_body": False}]


@async_test
async def test_response_without_content_length_is_chunked(impl: ModuleType) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hel", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})  # writes nothing
        await send({"type": "http.response.body", "body": b"lo", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    conn = Conn(impl, app)
    conn.feed(GET)
    await conn.finish()

    assert conn.output == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                           b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
    [response] = conn.responses()
    assert response.complete
    assert response.body == b"hello"
    assert not conn.closed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"4")], b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbody"),
        ([], b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody"),  # no chunking for 1.0: EOF ends it
    ],
    ids=["content-length", "close-delimited"],
)
@async_test
async def test_http10_request_closes_after_the_body(
    impl: ModuleType, headers: list[tuple[bytes, bytes]], expected: bytes
) -> None:
    conn = Conn(impl, reply(b"body", headers=headers))
    conn.feed(b"GET / HTTP/1.0\r\n\r\n")  # no Host needed before HTTP/1.1
    await conn.finish()

    assert conn.output == expected
    assert conn.closed


@async_test
async def test_http10_keep_alive_request_keeps_the_connection(impl: ModuleType) -> None:
    conn = Conn(impl, reply())
    conn.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await conn.finish()

    assert conn.output == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert not conn.closed


@async_test
async def test_pipelined_requests_are_answered_in_order(impl: ModuleType) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = scope["path"].encode() + await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    conn = Conn(impl, app)
    conn.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
              b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.transport.read_paused  # no more reading while requests wait their turn
    await conn.finish()

    responses = conn.responses()
    assert [r.body for r in responses] == [b"/a", b"/bxyz", b"/c"]
    assert all(r.complete and r.header(b"connection") is None for r in responses)
    assert not conn.transport.read_paused
    assert not conn.closed
    assert conn.state.total_requests == 3


@async_test
async def test_request_body_reaches_receive_in_chunks(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    await conn.settle()
    assert app.messages == [{"type": "http.request", "body": b"hello", "more_body": True}]

    conn.feed(b"wor")
    await conn.settle()
    conn.feed(b"ld")
    await conn.finish()

    assert app.messages[1:] == [
        {"type": "http.request", "body": b"wor", "more_body": True},
        {"type": "http.request", "body": b"ld", "more_body": False},
    ]
    [response] = conn.responses()
    assert response.body == b"helloworld"
    assert not conn.closed


@async_test
async def test_chunked_request_body_is_decoded(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await conn.settle()
    conn.feed(b"6\r\n world\r\n")
    await conn.settle()
    conn.feed(b"0\r\n\r\n")
    await conn.finish()

    assert [m["body"] for m in app.messages] == [b"hello", b" world", b""]
    assert [m["more_body"] for m in app.messages] == [True, True, False]
    assert conn.responses()[0].body == b"hello world"


@async_test
async def test_expect_100_continue_is_written_when_the_app_first_reads(impl: ModuleType) -> None:
    conn = Conn(impl, Recorder())
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert conn.output == b""  # not before the app asks for the body
    await conn.settle()
    assert conn.output == CONTINUE

    conn.feed(b"hello")
    await conn.finish()
    interim, final = conn.responses()
    assert interim.status == 100
    assert final.status == 200
    assert final.body == b"hello"
    assert not conn.closed


@async_test
async def test_expect_100_is_not_sent_when_the_app_answers_without_reading(impl: ModuleType) -> None:
    conn = Conn(impl, reply(b"no", status=403))
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    await conn.finish()

    assert conn.output == b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno"
    assert conn.closed  # the unsent body would otherwise be read as the next request


@async_test
async def test_expect_100_is_ignored_on_http10(impl: ModuleType) -> None:
    conn = Conn(impl, Recorder())
    conn.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    await conn.settle()
    assert CONTINUE not in conn.output

    conn.feed(b"hello")
    await conn.finish()
    assert conn.output.startswith(b"HTTP/1.1 200 OK\r\n")


@async_test
async def test_absolute_form_target_becomes_a_path(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET http://example.com/p?q HTTP/1.1\r\nHost: example.com\r\n\r\n"
              b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    await conn.finish()

    assert [(s["path"], s["raw_path"], s["query_string"]) for s in app.scopes] == [
        ("/p", b"/p", b"q"), ("/", b"/", b""),
    ]
    assert [r.status for r in conn.responses()] == [200, 200]


@async_test
async def test_percent_encoded_path_is_decoded_and_raw_path_kept(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET /a%20b/%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.finish()

    assert app.scopes[0]["path"] == "/a b/\u00e9"
    assert app.scopes[0]["raw_path"] == b"/a%20b/%C3%A9"


@async_test
async def test_options_asterisk_is_served(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n")
    await conn.finish()

    assert app.scopes[0]["method"] == "OPTIONS"
    assert app.scopes[0]["path"] == "*"
    assert conn.responses()[0].status == 200


@async_test
async def test_head_response_carries_no_body(impl: ModuleType) -> None:
    conn = Conn(impl, reply(b"hello"))
    conn.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.finish()

    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert conn.output == head  # the length of the body a GET would get, and no body
    assert not conn.closed

    conn.feed(GET)  # the framing stayed right: the next response follows directly
    await conn.finish()
    [response] = parse_responses(conn.output[len(head):])
    assert response.body == b"hello"


@pytest.mark.parametrize(("status", "line"), [(204, b"204 No Content"), (304, b"304 Not Modified")])
@async_test
async def test_no_body_statuses_get_neither_body_nor_chunking(impl: ModuleType, status: int, line: bytes) -> None:
    conn = Conn(impl, reply(b"dropped", status=status, headers=[]))
    conn.feed(GET)
    await conn.finish()

    assert conn.output == b"HTTP/1.1 " + line + b"\r\n\r\n"
    assert not conn.closed


# --- what never reaches the app: 400, 413, 431, 501 -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET example.com/p HTTP/1.1\r\nHost: x\r\n\r\n",  # neither a path nor an absolute URL
    ],
    ids=["header-token", "tls", "version", "space-in-target", "bad-target"],
)
@async_test
async def test_malformed_request_is_400_and_closes(impl: ModuleType, data: bytes) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(data)
    await conn.finish()

    [response] = conn.responses()
    assert_error(response, 400, "bad_request")
    assert conn.closed
    assert app.scopes == []


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["cl-then-te", "te-then-cl", "two-content-lengths", "chunk-size", "chunk-extension"],
)
@async_test
async def test_request_smuggling_vectors_are_400_and_never_reach_the_app(impl: ModuleType, data: bytes) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(data)
    await conn.finish()

    [response] = conn.responses()
    assert_error(response, 400, "bad_request")
    assert conn.closed
    assert app.scopes == []


@async_test
async def test_missing_host_on_http11_is_400(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    await conn.finish()

    [response] = conn.responses()
    assert_error(response, 400, "bad_request")
    assert b"Host" in response.body
    assert app.scopes == []


@async_test
async def test_two_host_headers_are_400(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    await conn.finish()

    assert app.scopes == []
    assert_error(conn.responses()[0], 400, "bad_request")


@async_test
async def test_head_over_max_header_bytes_in_one_piece_is_431(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app, max_header_bytes=1024)
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    await conn.finish()

    assert_error(conn.responses()[0], 431, "request_header_fields_too_large")
    assert conn.closed
    assert app.scopes == []


@async_test
async def test_endless_header_in_pieces_is_431_before_it_ends(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app, max_header_bytes=1024)
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    pieces = 0
    while not conn.closed and pieces < 100:
        conn.feed(b"a" * 300)
        pieces += 1
    await conn.finish()

    assert pieces == 4  # refused on the first piece that crosses the limit, the head never completed
    assert_error(conn.responses()[0], 431, "request_header_fields_too_large")
    assert app.scopes == []


@async_test
async def test_head_just_under_max_header_bytes_is_served(impl: ModuleType) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head += b"a" * (1024 - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == 1024
    conn = Conn(impl, reply(), max_header_bytes=1024)
    conn.feed(head)
    await conn.finish()

    assert conn.responses()[0].status == 200


@async_test
async def test_content_length_over_max_body_bytes_is_413_before_the_app_runs(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app, max_body_bytes=10)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    assert conn.closed  # answered at once, without waiting for (or reading) the body
    await conn.finish()

    assert_error(conn.responses()[0], 413, "payload_too_large")
    assert app.scopes == []


@async_test
async def test_chunked_body_over_max_body_bytes_is_413_mid_stream(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app, max_body_bytes=10)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello!\r\n")
    await conn.settle()
    assert app.messages == [{"type": "http.request", "body": b"hello!", "more_body": True}]

    conn.feed(b"6\r\nhello!\r\n")
    await conn.finish()
    assert app.cancelled
    [response] = conn.responses()
    assert_error(response, 413, "payload_too_large")
    assert conn.closed


@async_test
async def test_upgrade_request_with_a_body_is_501(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
              b"Content-Length: 5\r\n\r\nhello")
    await conn.finish()

    assert_error(conn.responses()[0], 501, "not_implemented")
    assert app.scopes == []


@async_test
async def test_connect_is_501(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    await conn.finish()

    assert_error(conn.responses()[0], 501, "not_implemented")
    assert app.scopes == []


# --- the error boundary: what the app does wrong -----------------------------------------------------------


@async_test
async def test_app_exception_is_a_logged_500(impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()

    assert_error(conn.responses()[0], 500, "internal_error")
    assert b"boom" not in conn.output  # the client never sees internals
    assert conn.closed
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


@async_test
async def test_app_returning_without_a_response_is_500(impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()

    assert_error(conn.responses()[0], 500, "internal_error")
    assert conn.closed
    assert caplog.records


@async_test
async def test_app_raising_a_gateway_error_gets_its_status(
    impl: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise MethodNotAllowed(frozenset({"GET", "POST"}))

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()

    [response] = conn.responses()
    assert_error(response, 405, "method_not_allowed")
    assert response.header(b"allow") == b"GET, POST"
    assert not caplog.records  # an error the app chose is not logged again here


@async_test
async def test_body_before_start_is_rejected(impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.body", "body": b"early"})

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()

    assert_error(conn.responses()[0], 500, "internal_error")
    assert b"early" not in conn.output


@async_test
async def test_body_longer_than_content_length_is_an_error(impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[Exception] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        try:
            await send({"type": "http.response.body", "body": b"hello"})
        except RuntimeError as exc:
            errors.append(exc)
            raise

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()

    assert len(errors) == 1
    assert b"hello" not in conn.output  # never more bytes than the framing announced
    assert conn.closed


@async_test
async def test_body_shorter_than_content_length_closes_the_connection(impl: ModuleType) -> None:
    conn = Conn(impl, reply(b"hello", headers=[(b"content-length", b"10")]))
    conn.feed(GET)
    await conn.finish()

    assert conn.output == b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"
    assert conn.closed  # the client learns the body was cut short


# --- the client going away, and flow control -------------------------------------------------------------


@async_test
async def test_client_disconnect_cancels_the_app_and_send_raises(impl: ModuleType) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await receive()  # waits: the body never comes
        except asyncio.CancelledError:
            seen["cancelled"] = True
            seen["receive"] = await receive()
            try:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            except OSError as exc:
                seen["send"] = exc
            raise

    conn = Conn(impl, app)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    await conn.settle()
    assert conn.state.tasks

    conn.protocol.connection_lost(None)
    await conn.finish()

    assert seen["cancelled"]
    assert seen["receive"] == {"type": "http.disconnect"}
    assert isinstance(seen["send"], impl.ClientDisconnected)
    assert isinstance(seen["send"], OSError)
    assert conn.output == b""
    assert conn.protocol not in conn.state.connections


@async_test
async def test_send_waits_while_writing_is_paused(impl: ModuleType) -> None:
    progress: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        progress.append("a sent")
        await send({"type": "http.response.body", "body": b"b"})
        progress.append("b sent")

    conn = Conn(impl, app)
    conn.protocol.pause_writing()
    conn.feed(GET)
    await conn.settle()
    assert conn.output.endswith(b"\r\n\r\na")  # written, and now waiting for the buffer to drain
    assert progress == []

    conn.protocol.resume_writing()
    await conn.finish()
    assert progress == ["a sent", "b sent"]
    assert conn.responses()[0].body == b"ab"


@async_test
async def test_disconnect_while_writing_is_paused_ends_the_app(impl: ModuleType) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})

    conn = Conn(impl, app)
    conn.protocol.pause_writing()
    conn.feed(GET)
    await conn.settle()
    conn.protocol.connection_lost(ConnectionResetError())
    await conn.finish()  # the app does not hang on the paused transport

    assert conn.output.count(b"x" * 100) == 1


@async_test
async def test_request_body_over_high_water_pauses_reading_until_received(impl: ModuleType) -> None:
    high = impl.HIGH_WATER
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (high + 10))
    conn.feed(b"a" * (high - 1))
    assert not conn.transport.read_paused
    conn.feed(b"a")
    assert conn.transport.read_paused  # the app has not read anything yet

    await conn.settle()  # the app's receive() takes the buffered bytes
    assert not conn.transport.read_paused
    assert len(app.messages[0]["body"]) == high

    conn.feed(b"b" * 10)
    await conn.finish()
    assert len(conn.responses()[0].body) == high + 10


@async_test
async def test_unread_request_body_is_not_counted_after_the_response(impl: ModuleType) -> None:
    high = impl.HIGH_WATER
    conn = Conn(impl, reply())  # answers without reading the body, like a 404
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (high - 1) + b"a" * (high - 1))
    await conn.finish()
    assert not conn.closed  # the body arrived whole: the connection is reused

    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + b"b" * 10)
    assert not conn.transport.read_paused  # 10 bytes buffered, far below HIGH_WATER
    await conn.finish()


# --- timers and shutdown --------------------------------------------------------------------------------------


@async_test
async def test_slow_request_head_is_408(impl: ModuleType) -> None:
    conn = Conn(impl, Recorder(), header_timeout=0.05)
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.02)
    conn.feed(b"X-Slow: 1\r\n")  # trickling bytes do not extend the deadline
    assert not conn.closed
    await asyncio.sleep(0.06)

    assert_error(conn.responses()[0], 408, "request_timeout")
    assert conn.closed


@async_test
async def test_slow_pipelined_head_times_out_after_a_long_response(impl: ModuleType) -> None:
    gate = Gate()
    conn = Conn(impl, gate, header_timeout=0.05)
    conn.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.settle()
    conn.feed(b"GET /b HTTP/1.1\r\nHo")  # the next head starts, then stalls
    await asyncio.sleep(0.08)  # its deadline passes while /a is still being answered
    gate.open()
    await asyncio.sleep(0.1)

    assert conn.closed


@async_test
async def test_idle_connection_closes_after_keepalive_timeout(impl: ModuleType) -> None:
    conn = Conn(impl, reply(), keepalive_timeout=0.05)
    await asyncio.sleep(0.07)
    assert conn.closed  # never sent anything
    assert conn.output == b""
    await conn.settle()
    assert conn.protocol not in conn.state.connections


@async_test
async def test_keepalive_timeout_is_rearmed_after_each_response(impl: ModuleType) -> None:
    conn = Conn(impl, reply(), keepalive_timeout=0.1, header_timeout=1.0)
    await asyncio.sleep(0.06)
    conn.feed(GET)
    await conn.finish()
    await asyncio.sleep(0.06)
    assert not conn.closed  # 0.12 s since connecting, but only 0.06 s idle
    await asyncio.sleep(0.08)
    assert conn.closed
    assert len(conn.responses()) == 1


@async_test
async def test_shutdown_closes_an_idle_connection_after_the_grace(
    impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "SHUTDOWN_GRACE", 0.03)
    conn = Conn(impl, reply())
    conn.protocol.shutdown()
    await conn.settle()
    assert not conn.closed  # a request may be on its way
    await asyncio.sleep(0.05)
    assert conn.closed
    assert conn.output == b""


@async_test
async def test_request_during_shutdown_grace_is_answered_then_closed(
    impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(impl, "SHUTDOWN_GRACE", 0.05)
    conn = Conn(impl, reply())
    conn.protocol.shutdown()
    conn.feed(GET)
    await conn.finish()

    [response] = conn.responses()
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert conn.closed


@async_test
async def test_shutdown_on_a_busy_connection_adds_connection_close(impl: ModuleType) -> None:
    gate = Gate()
    conn = Conn(impl, gate)
    conn.feed(GET)
    await conn.settle()
    conn.protocol.shutdown()
    assert not conn.closed
    gate.open()
    await conn.finish()

    [response] = conn.responses()
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert conn.closed


@async_test
async def test_shutdown_answers_pipelined_requests_already_received(impl: ModuleType) -> None:
    gate = Gate()
    conn = Conn(impl, gate)
    conn.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.settle()
    conn.protocol.shutdown()
    gate.open()
    await conn.finish()

    responses = conn.responses()
    assert [r.body for r in responses] == [b"/a", b"/b"]
    assert responses[-1].header(b"connection") == b"close"
    assert conn.closed


# --- upgrades, bookkeeping --------------------------------------------------------------------------------------


@async_test
async def test_upgrade_request_is_served_as_http_and_the_connection_closed(impl: ModuleType) -> None:
    app = Recorder()
    conn = Conn(impl, app)
    conn.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    conn.feed(b"more frames")  # ignored: the connection only waits for the response now
    await conn.finish()

    [response] = conn.responses()
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert conn.closed
    assert app.messages == [{"type": "http.request", "body": b"", "more_body": False}]


@async_test
async def test_pipelined_upgrade_request_is_answered(impl: ModuleType) -> None:
    conn = Conn(impl, Recorder())
    conn.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    await conn.finish()

    responses = conn.responses()
    assert [r.status for r in responses] == [200, 200]
    assert responses[0].header(b"connection") is None
    assert responses[1].header(b"connection") == b"close"
    assert conn.closed


class FakeTunnel:
    """Stands in for gateway.realtime's Tunnel: records what the protocol hands over."""

    def __init__(self) -> None:
        self.attached: tuple[Any, bytes, Any] | None = None

    def attach(self, transport: Any, early: bytes, on_close: Any) -> None:
        self.attached = (transport, early, on_close)

    def shutdown(self) -> None:  # pragma: no cover - uvicorn's drain
        pass


class Switcher:
    """An app that answers a WebSocket upgrade with ``gateway.tunnel`` (a plain response otherwise)."""

    def __init__(self) -> None:
        self.tunnel = FakeTunnel()
        self.scopes: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await receive()
        if "extensions" in scope:
            await send({"type": "gateway.tunnel", "status": 101, "tunnel": self.tunnel,
                        "headers": [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@async_test
async def test_websocket_upgrade_is_handed_to_the_tunnel_with_early_bytes(impl: ModuleType) -> None:
    app = Switcher()
    conn = Conn(impl, app)
    conn.feed(UPGRADE + b"\x81\x05hello")
    conn.feed(b"\x81\x01!")  # before the 101: kept for the tunnel too
    await conn.finish()

    assert app.scopes[0]["extensions"] == {"gateway.tunnel": {}}
    assert conn.output == b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    assert app.tunnel.attached is not None
    transport, early, on_close = app.tunnel.attached
    assert transport is conn.transport
    assert early == b"\x81\x05hello\x81\x01!"
    assert not conn.transport.closed  # the tunnel owns the connection now
    assert conn.state.connections == {app.tunnel}  # uvicorn's drain waits for the tunnel
    on_close()
    assert conn.state.connections == set()


@async_test
async def test_only_websocket_upgrades_of_gets_may_become_tunnels(impl: ModuleType) -> None:
    app = Switcher()
    conn = Conn(impl, app)
    conn.feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    await conn.finish()
    other = Conn(impl, app)
    other.feed(b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    await other.finish()

    assert ["extensions" in scope for scope in app.scopes] == [False, False]
    assert [r.status for r in conn.responses() + other.responses()] == [200, 200]
    assert conn.closed and other.closed


@async_test
async def test_tunnel_message_outside_an_upgrade_is_an_error(impl: ModuleType,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "gateway.tunnel", "status": 101, "headers": [], "tunnel": FakeTunnel()})

    conn = Conn(impl, app)
    with caplog.at_level(logging.ERROR):
        conn.feed(GET)
        await conn.finish()
    [response] = conn.responses()
    assert response.status == 500
    assert "only for the active WebSocket upgrade" in caplog.text


@async_test
async def test_early_bytes_past_the_high_water_mark_pause_reading(impl: ModuleType) -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await send({"type": "gateway.tunnel", "status": 101, "headers": [], "tunnel": tunnel})

    tunnel = FakeTunnel()
    conn = Conn(impl, app)
    conn.feed(UPGRADE)
    conn.feed(b"x" * impl.HIGH_WATER)
    assert conn.transport.read_paused
    gate.set()
    await conn.finish()
    assert tunnel.attached is not None
    assert len(tunnel.attached[1]) == impl.HIGH_WATER
    assert not conn.transport.read_paused  # reading resumes for the tunnel


@async_test
async def test_server_state_tracks_connections_tasks_and_requests(impl: ModuleType) -> None:
    gate = Gate()
    conn = Conn(impl, gate)
    state = conn.state
    assert state.connections == {conn.protocol}
    assert state.tasks == set()

    conn.feed(GET)
    await conn.settle()
    assert len(state.tasks) == 1
    assert state.total_requests == 1

    gate.open()
    await conn.finish()
    assert state.tasks == set()
    assert state.connections == {conn.protocol}  # keep-alive

    conn.protocol.close()
    await conn.settle()
    assert state.connections == set()


# --- lingering close ---------------------------------------------------------------------------------------


@async_test
async def test_refused_body_is_answered_then_lingers_before_closing(impl: ModuleType, monkeypatch: Any) -> None:
    monkeypatch.setattr(impl, "LINGER_TIME", 0.05)
    conn = Conn(impl, reply(), max_body_bytes=10)
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 30)
    assert_error(conn.responses()[0], 413, "payload_too_large")
    assert conn.transport.eof_written  # FIN after the answer, not a close that would reset it
    assert not conn.transport.closed
    conn.feed(b"x" * 70)  # what the client still sends is dropped, not parsed
    assert len(conn.responses()) == 1
    await asyncio.sleep(0.1)
    assert conn.transport.closed


@async_test
async def test_unread_body_lingers_after_the_response(impl: ModuleType) -> None:
    conn = Conn(impl, reply(b"early"))
    conn.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    await conn.finish()
    assert conn.responses()[0].body == b"early"
    assert conn.transport.eof_written
    assert not conn.transport.closed
    conn.protocol.eof_received()
    conn.protocol.connection_lost(None)


# --- robustness: mutated requests in random pieces ------------------------------------------------------


SEEDS = (
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
)


@pytest.fixture
def no_loop_errors(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.usefixtures("no_loop_errors")
@async_test
async def test_mutated_requests_never_escape_the_protocol(impl: ModuleType, seed: int) -> None:
    """Whatever bytes arrive, in whatever pieces: nothing raises out of data_received, and every answer
    is the app's 200 or a JSON 4xx/5xx from the gateway."""
    import random

    rng = random.Random(seed)
    for _ in range(25):
        data = bytearray(b"".join(rng.choice(SEEDS) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[at] = rng.randrange(256)
            elif action < 0.7:
                del data[at : at + rng.randint(1, 4)]
            else:
                data[at:at] = rng.choice([b"\r\n", b":", b" ", b"\x00", b"0", b"-1", b"\r\n\r\n", b"\xff"])
        conn = Conn(impl, Recorder(), max_header_bytes=256, max_body_bytes=64)
        pos = 0
        while pos < len(data) and not conn.closed:
            step = rng.randint(1, 40)
            conn.feed(bytes(data[pos : pos + step]))
            pos += step
            await conn.settle()
        for response in conn.responses():
            assert response.status == 200 or 400 <= response.status < 600
            if response.status != 200 and response.complete:
                assert orjson.loads(response.body)["status"] == response.status
        conn.protocol.connection_lost(None)
        await conn.settle()


@async_test
async def test_send_after_the_client_left_ends_quietly(impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    conn = Conn(impl, app)
    conn.feed(GET)
    await conn.settle()
    cycle = conn.protocol.active
    cycle.disconnected = True  # the client is gone but the task was not cancelled yet (a race)
    gate.set()
    await conn.settle()
    assert conn.transport.closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
