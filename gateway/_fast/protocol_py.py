# cython: annotation_typing=False
"""The gateway's HTTP/1.1 server protocol: httptools parsing, driving the raw ASGI app.

It replaces uvicorn's stock protocol (plugged in through ``uvicorn.Config(http=...)``) because the stock
one costs more per request than the whole gateway does (DESIGN.md) and cannot enforce what the edge must:

- strict parsing (llhttp without leniencies): a malformed request, an ambiguous length (the request
  smuggling vectors), a missing Host on HTTP/1.1 is answered 400 and never reaches the app;
- size limits: request line plus headers over ``max_header_bytes`` is 431, counted on the raw bytes so a
  single endless header cannot grow memory, and so are more than ``max_header_count`` header fields; a
  body over ``max_body_bytes`` is 413, up front from Content-Length or mid-stream for chunked bodies (a
  route may lower it once it is known: ``limit_body``);
- timeouts: a slow request head (``header_timeout``) gets 408, and so does a body that arrives slower than
  ``min_body_rate`` (slowloris); an idle keep-alive connection is closed;
- connection guards (``gateway.guards``), when given: ``guard.admit`` at ``connection_made`` may turn the
  connection away before anything is read, ``guard.check`` sees each request head while bans run,
  ``guard.rejected`` hears of every 408/413/431 (metrics, bans) and ``guard.release`` of every close;
- flow control both ways: request bodies buffer at most ``HIGH_WATER`` bytes before the socket stops
  being read; ``send`` waits while the client's socket buffer is full;
- every error answered by the gateway carries the JSON body of ``gateway.errors``;
- WebSocket upgrades (``GET`` with ``Connection: upgrade`` and ``Upgrade: websocket``) reach the app as
  HTTP requests whose scope carries the ``gateway.tunnel`` extension; the app answers with the ASGI
  message ``{"type": "gateway.tunnel", "status": 101, "headers": [...], "tunnel": T}`` once the upstream
  agreed, and the protocol writes that head and hands its transport to ``T.attach(transport, early,
  on_close)`` (``early``: bytes the client sent after its head; ``on_close``: call it when the
  connection ends). Every other upgrade (h2c, ...) is served as plain HTTP and the connection closed.

A client that goes away cancels its request's task, so the app (the proxy) releases what it holds.
``send`` after a disconnect raises ``ClientDisconnected`` (an OSError, as the ASGI spec asks).

The fast lane: an app with a ``fast_lane(protocol, cycle)`` attribute (not None) is offered each request
without a body that is not an upgrade and not queued behind another, before any task exists. When it
returns True the app has taken the request: it answers through the cycle's ``_start``/``_send_body`` (the
same framing as ``send``) from its own callbacks, or continues it on the normal path later with
``start(cycle, app)``. Meanwhile ``cycle.task`` is whatever the app put there with ``done()`` and
``cancel()``, cancelled like a task when the client goes. False: the request runs as a task, as always.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from gateway._fast.done import DONE
from gateway._fast.writes import batch_for
from gateway.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    error_body,
)

logger = logging.getLogger("gateway.protocol")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HIGH_WATER = 256 * 1024  # request body bytes buffered before reading the socket pauses
LINGER_TIME = 2.0  # seconds a closing connection keeps reading (and dropping) what the client still sends
SHUTDOWN_GRACE = 1.0  # seconds an idle keep-alive connection may still send one request while draining
STATUS_LINES = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (int(s), s.phrase.encode("latin-1")) for s in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DISCONNECT: Message = {"type": "http.disconnect"}
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
TUNNEL_EXTENSION: dict[str, Any] = {"gateway.tunnel": {}}  # in the scope of a WebSocket upgrade request (see above)
NO_BODY_STATUSES = frozenset({204, 304})
RANDOM_AHEAD = 4096  # bytes of os.urandom read at once for request ids


class Running(Protocol):
    """A request being answered: its asyncio Task, or what a fast lane runs it with (see above)."""

    def done(self) -> bool: ...

    def cancel(self, msg: Any = None) -> bool: ...


class ClientDisconnected(OSError):
    """The client closed the connection before the response was sent."""


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    default_message = "the request line and headers did not arrive in time"


class NotImplementedMethod(GatewayError):
    status = 501
    code = "not_implemented"
    default_message = "this request needs a protocol feature the gateway does not offer"


class BodyTooSlow(RequestTimeout):
    code = "request_body_too_slow"
    default_message = "the request body arrived slower than the gateway's minimum rate"


class TooManyHeaders(HeadersTooLarge):
    code = "too_many_headers"
    default_message = "the request has more header fields than the gateway accepts"


class VersionNotSupported(GatewayError):
    status = 505
    code = "http_version_not_supported"
    default_message = "the gateway speaks HTTP/1.0 and HTTP/1.1 on this port"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may send and how long it may take (see gateway.settings)."""

    max_header_bytes: int = 65536
    max_body_bytes: int = 1024**3  # 0 = no limit
    keepalive_timeout: float = 60.0
    header_timeout: float = 10.0
    max_header_count: int = 100  # 0 = no limit
    min_body_rate: int = 0  # bytes per second a body must keep up after the grace period; 0 = no minimum
    body_rate_grace: float = 5.0
    body_rate_window: float = 5.0


_random = b""  # bytes of os.urandom read ahead for request ids (see new_request_id)
_random_at = 0


def new_request_id() -> str:
    """A random 128-bit request id, hex. ``os.urandom`` is read 4 KiB at a time: one system call per
    256 ids, where one per request was a fifth of a proxied request's system calls. A forked child
    reads its own bytes, so two processes never hand out the same ids."""
    global _random, _random_at  # noqa: PLW0603 - this process's read-ahead
    at = _random_at
    if at + 16 > len(_random):
        _random = os.urandom(RANDOM_AHEAD)
        at = 0
    _random_at = at + 16
    return _random[at:at + 16].hex()


def _forget_random() -> None:
    global _random  # noqa: PLW0603
    _random = b""


os.register_at_fork(after_in_child=_forget_random)


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Status\r\n" % status


def error_response(exc: GatewayError, request_id: str, keep_alive: bool) -> bytes:
    """The bytes of a whole JSON error response."""
    body = error_body(exc.status, exc.code, exc.message, request_id)
    head = [status_line(exc.status), b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"x-request-id: ", request_id.encode("ascii"), b"\r\n"]
    for name, value in exc.headers:
        head.append(name + b": " + value + b"\r\n")
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


class RequestCycle:
    """One request/response exchange: the ASGI ``receive`` and ``send`` of a request."""

    __slots__ = (
        "body", "body_limit", "body_size", "chunked", "disconnected", "expect_100", "expected_length", "head",
        "head_request", "keep_alive", "more_body", "no_body", "protocol", "request_length", "response_complete",
        "response_started", "scope", "sent_length", "task", "waiter",
    )

    def __init__(self, protocol: HttpProtocol, scope: Scope, keep_alive: bool, expect_100: bool) -> None:
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_limit = 0  # set by the protocol (0: none)
        self.request_length = -1  # the request's Content-Length (-1: none)
        self.more_body = True
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_request = scope["method"] == "HEAD"
        self.no_body = self.head_request
        self.chunked = False
        self.expected_length: int | None = None
        self.sent_length = 0
        self.head = b""
        self.task: Running | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        """The next request body chunk, or ``http.disconnect`` once the client has gone."""
        if self.disconnected or self.response_complete:
            return DISCONNECT
        if not self.body and self.more_body:
            if self.expect_100:
                self.expect_100 = False
                self.protocol.rate_excused = True  # the client could not send before this
                self.protocol.write(CONTINUE)
            self.protocol.resume_reading()
            self.waiter = self.protocol.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
            if self.disconnected:
                return DISCONNECT
        chunks = self.body
        if len(chunks) == 1:
            body = chunks[0]
        elif chunks:
            body = b"".join(chunks)
        else:
            body = b""
        chunks.clear()
        self.protocol.body_consumed(len(body))
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    def limit_body(self, limit: int) -> bool:
        """Sets this request's body limit (0: none), once its route is known; False when the request
        already exceeds it (its Content-Length, or the body bytes read so far). The protocol enforces it
        on the bytes still to come: past it, 413 (or the connection closes if the response started)."""
        self.body_limit = limit
        return not limit or (self.request_length <= limit and self.body_size <= limit)

    def send(self, message: Message) -> Awaitable[None]:
        """Writes the response; the awaitable it returns waits while the client's socket is full.

        Not a coroutine function: the work is done at the call and an already-complete awaitable is
        returned, so ``await send(...)`` behaves as the ASGI spec says at a fraction of the cost.
        """
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        kind = message["type"]
        if kind == "http.response.body" and self.response_started and not self.response_complete:
            return self._send_body(message.get("body", b""), message.get("more_body", False))
        if kind == "http.response.start" and not self.response_started:
            self._start(message["status"], message.get("headers", ()))
            return DONE
        if kind == "gateway.tunnel" and not self.response_started:
            return self.protocol.hand_over(self, message)
        raise RuntimeError(f"unexpected ASGI message {kind!r} in this state of the response")

    def _start(self, status: int, headers: Any) -> None:
        self.response_started = True
        if status < 200 or status in NO_BODY_STATUSES:
            self.no_body = True
        head = [status_line(status)]
        length = None
        for name, value in headers:  # parts of one join: no intermediate bytes per header
            if name == b"content-length":
                length = int(value)
            head.append(name)
            head.append(b": ")
            head.append(value)
            head.append(b"\r\n")
        if length is not None:
            self.expected_length = 0 if self.no_body and not self.head_request else length
        elif not self.no_body:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                head.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.head = b"".join(head)

    def _send_body(self, body: bytes, more_body: bool) -> Awaitable[None]:
        protocol = self.protocol
        if self.no_body:
            body = b""
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            self.sent_length += len(body)
            expected = self.expected_length
            if expected is not None and self.sent_length > expected and not self.head_request:
                raise RuntimeError("the response body is longer than its content-length")
            data = body
        if self.head:
            data = self.head + data
            self.head = b""
        if data:
            protocol.write(data)
        if not more_body:
            self.response_complete = True
            expected = self.expected_length
            if expected is not None and self.sent_length < expected and not self.no_body:
                self.keep_alive = False  # the framing promised more: the connection cannot be reused
            protocol.response_complete(self)
        elif protocol.write_paused:
            return protocol.drain()
        return DONE


class HttpProtocol:
    """One client connection (an asyncio protocol by its methods; compiled, it cannot subclass
    asyncio.Protocol). ``state`` is uvicorn's ServerState (connections, tasks, counters)."""

    def __init__(self, app: ASGIApp, limits: Limits, state: Any, loop: asyncio.AbstractEventLoop | None = None,
                 scheme: str = "http", *, guard: Any = None) -> None:
        self.app = app
        self.lane: Callable[[HttpProtocol, RequestCycle], bool] | None = getattr(app, "fast_lane", None)
        self.limits = limits
        self.state = state
        self.loop = loop or asyncio.get_running_loop()
        self.batch = batch_for(self.loop)  # responses go out together once the loop's events are handled
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.closed = False
        self.write_paused = False
        self.read_paused = False
        self.drain_waiters: deque[asyncio.Future[None]] = deque()
        self.buffered = 0
        self.active: RequestCycle | None = None  # the request being answered
        self.parsing: RequestCycle | None = None  # the request whose body is being read
        self.pipeline: deque[RequestCycle] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.timer_deadline = 0.0
        self.timer_action: Callable[[], None] | None = None
        self.head_pending = True
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.hosts = 0
        self.content_length = -1
        self.transfer_encoding = b""
        self.expect_100 = False
        self.shutting_down = False
        self.upgraded = False
        self.tunnel_early = b""  # bytes a WebSocket client sent after its head, before the 101
        self.lingering = False
        self.error: GatewayError | None = None
        self.guard = guard  # gateway.guards.runtime.Guard, or None (no hooks at all)
        self.guard_ticket: Any = None  # what the guard counted for this connection (released at close)
        self.guard_epoch = -1  # the guard's ban epoch last seen; -1: no check per request
        self.rate_due = False  # a body is expected: time its rate once this read is parsed
        self.rate_excused = False  # the gateway, not the client, held the body back in this window
        self.rate_mark = -1  # body bytes at the start of the rate window (-1: grace period)

    # -- connection events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.server = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        if self.guard is not None:
            refusal = self.guard.admit(self)
            if refusal is not None:
                self.refuse(refusal)
                return
        self.state.connections.add(self)
        self.arm_timer(self.limits.keepalive_timeout, self.on_idle_timeout)

    def refuse(self, answer: bytes) -> None:
        """Ends a connection the guards turned away before reading from it: their answer (if any), then
        close at once, so a refused client holds nothing (no lingering close)."""
        self.closed = True
        if answer:
            self.transport.write(answer)  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self.guard_ticket is not None:
            self.guard.release(self)
        self.drop_timer()
        cycle = self.active
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.wake()
            if cycle.task is not None:
                cycle.task.cancel()
        self.pipeline.clear()
        while self.drain_waiters:
            waiter = self.drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientDisconnected("the client closed the connection"))

    def eof_received(self) -> bool | None:
        return None  # close our side too (no half-open connections)

    def data_received(self, data: bytes) -> None:
        if self.upgraded or self.lingering:
            if self.upgraded and not self.closed:
                self.keep_early(data)
            return
        if self.head_pending:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.on_upgrade()
            self.keep_early(data[exc.args[0]:])
            return
        except httptools.HttpParserError as exc:
            self.fail(self.error or BadRequest(_parser_message(exc)))
            return
        if self.head_pending and self.head_bytes:  # a head arrived in part: it must finish in time
            if self.head_bytes > self.limits.max_header_bytes:
                self.fail(HeadersTooLarge())
            elif self.timer_action != self.on_header_timeout:
                self.arm_timer(self.limits.header_timeout, self.on_header_timeout)
        elif self.rate_due:  # a body is arriving in more than one read: from now on it must keep up
            self.rate_due = False
            self.rate_mark = -1
            self.rate_excused = False
            self.arm_timer(self.limits.body_rate_grace, self.on_body_rate)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        while self.drain_waiters:
            waiter = self.drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def drain(self) -> asyncio.Future[None]:
        """A future done when the client's socket accepts writes again (ClientDisconnected if it closes)."""
        waiter = self.loop.create_future()
        if self.closed:
            waiter.set_exception(ClientDisconnected("the client closed the connection"))
        else:
            self.drain_waiters.append(waiter)
        return waiter

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.batch.write(self.transport, data)

    def shutdown(self) -> None:
        """Called by uvicorn on graceful shutdown (drain).

        Requests already received are answered, with ``connection: close`` where the response has not
        started. An idle keep-alive connection is not cut at once: a client may be sending on it right
        now, and would see a reset. It gets ``SHUTDOWN_GRACE`` to send one more request (answered and
        then closed) before it is closed.
        """
        self.shutting_down = True
        cycle = self.active
        if cycle is None:
            self.arm_timer(SHUTDOWN_GRACE, self.on_idle_timeout)
        elif self.pipeline:  # answer what was already received; the last one closes
            self.pipeline[-1].keep_alive = False
        elif not cycle.response_started:
            cycle.keep_alive = False
        elif cycle.head and cycle.keep_alive:  # started, but the head is not written yet: amend it
            cycle.keep_alive = False
            cycle.head = cycle.head[:-2] + b"connection: close\r\n\r\n"

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.drop_timer()
            self.batch.flush()  # what is held for this connection goes before its end
            self.transport.close()

    def linger(self) -> None:
        """Closes a connection whose client may still be sending (an unread body, a refused request).

        Closing a socket with unread input makes the kernel send RST, which can destroy the response
        still in flight. So: send FIN after the response, drop what the client sends for up to
        LINGER_TIME, and close when it closes its side or the time is up (nginx's lingering close).
        """
        if self.closed or self.transport is None:
            return
        if not self.transport.can_write_eof():  # pragma: no cover - TCP transports can
            self.close()
            return
        self.lingering = True
        self.batch.flush()
        self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.arm_timer(LINGER_TIME, self.close)

    # -- timers ---------------------------------------------------------------------------------------

    # One timer per connection, re-armed lazily: arming records a deadline and what to do then, and
    # only schedules a callback when none is pending earlier. A callback that fires before the (moved)
    # deadline schedules itself again. Requests in quick succession thus cost no timer operations.

    def arm_timer(self, delay: float, action: Callable[[], None]) -> None:
        deadline = self.loop.time() + delay
        self.timer_deadline = deadline
        self.timer_action = action
        if self.timer is None or self.timer_at > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self.on_timer)

    def cancel_timer(self) -> None:
        self.timer_action = None  # the pending callback, if any, will find nothing to do

    def drop_timer(self) -> None:
        self.timer_action = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_timer(self) -> None:
        self.timer = None
        action = self.timer_action
        if action is None:
            return
        if self.loop.time() < self.timer_deadline:
            self.timer_at = self.timer_deadline
            self.timer = self.loop.call_at(self.timer_deadline, self.on_timer)
            return
        self.timer_action = None
        action()

    def on_idle_timeout(self) -> None:
        if self.active is None:
            self.close()

    def on_header_timeout(self) -> None:
        if self.head_pending and self.active is None:
            self.fail(RequestTimeout())

    def on_body_rate(self) -> None:
        """After the grace period, every ``body_rate_window`` the body must have grown by at least
        ``min_body_rate`` per second (408 otherwise). A window in which the gateway held the body back
        (reading paused, 100 Continue not yet sent) does not count against the client."""
        cycle = self.parsing
        if cycle is None or self.closed:
            return  # the body is complete
        limits = self.limits
        if self.read_paused or self.rate_excused or cycle.expect_100:
            self.rate_excused = False
        elif self.rate_mark >= 0 and cycle.body_size - self.rate_mark < limits.min_body_rate * limits.body_rate_window:
            self.fail(BodyTooSlow())
            return
        self.rate_mark = cycle.body_size
        self.arm_timer(limits.body_rate_window, self.on_body_rate)

    # -- reading flow control -----------------------------------------------------------------------

    def body_consumed(self, size: int) -> None:
        self.buffered -= size
        if self.read_paused and self.buffered < HIGH_WATER and not self.pipeline:
            self.resume_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = True
            self.rate_excused = True
            self.transport.pause_reading()

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.hosts = 0
        self.content_length = -1
        self.transfer_encoding = b""
        self.expect_100 = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if value and value[-1] in (32, 9):  # llhttp keeps trailing whitespace; it is not part of the value
            value = value.rstrip(b" \t")
        self.head_size += len(name) + len(value) + 4
        if name == b"host":
            self.hosts += 1
        elif name == b"content-length":
            self.content_length = int(value)  # llhttp already checked it is a single, valid number
        elif name == b"transfer-encoding":
            self.transfer_encoding = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self.head_bytes = 0
        self.cancel_timer()
        if self.guard_epoch >= 0:  # bans run: one banned since this connection was admitted is refused
            refusal = self.guard.check(self)
            if refusal is not None:
                self.error = refusal
                raise refusal
        if len(self.url) + self.head_size > self.limits.max_header_bytes:
            self.error = HeadersTooLarge()
            raise self.error
        count = self.limits.max_header_count
        if count and len(self.headers) > count:
            self.error = TooManyHeaders()
            raise self.error
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self.error = VersionNotSupported()
            raise self.error
        if parser.should_upgrade() and (method == "CONNECT" or self.content_length > 0):
            self.error = NotImplementedMethod("CONNECT and upgrades with a body are not supported")
            raise self.error
        if self.transfer_encoding:
            self.check_transfer_encoding(version)
        scope = self.build_scope(method, version)
        if method == "GET" and parser.should_upgrade() and self.websocket_upgrade():
            scope["extensions"] = TUNNEL_EXTENSION
        limit = self.limits.max_body_bytes
        if limit and self.content_length > limit:
            self.error = PayloadTooLarge()
            raise self.error
        # a 100 Continue must not be sent to an HTTP/1.0 client (RFC 9110 section 10.1.1)
        cycle = RequestCycle(self, scope, parser.should_keep_alive() and not self.shutting_down,
                             self.expect_100 and version != "1.0")
        cycle.body_limit = limit
        cycle.request_length = self.content_length
        if self.limits.min_body_rate and (self.content_length > 0 or self.transfer_encoding):
            self.rate_due = True
        self.parsing = cycle
        self.state.total_requests += 1
        if self.active is None:
            self.serve(cycle)
        else:
            self.pipeline.append(cycle)
            self.pause_reading()

    def websocket_upgrade(self) -> bool:
        """The request asks to switch to the WebSocket protocol (``Upgrade: websocket``)."""
        for name, value in self.headers:
            if name == b"upgrade":
                return value.strip().lower() == b"websocket"
        return False

    def check_transfer_encoding(self, version: str) -> None:
        """Only ``chunked`` on HTTP/1.1 (llhttp already refused codings that do not end in chunked).

        HTTP/1.0 has no chunked coding, so a Transfer-Encoding there makes the length ambiguous (400);
        any other coding before chunked is one the gateway does not implement (501, RFC 9112 6.1).
        """
        if version == "1.0":
            self.error = BadRequest("Transfer-Encoding is not allowed on HTTP/1.0 requests")
            raise self.error
        if self.transfer_encoding.strip().lower() != b"chunked":
            self.error = NotImplementedMethod("only the chunked transfer coding is supported")
            raise self.error

    def build_scope(self, method: str, version: str) -> Scope:
        url = self.url
        if url[:1] != b"/":
            url = self.absolute_form(url, method)
        query_at = url.find(b"?")
        if query_at >= 0:
            raw_path, query = url[:query_at], url[query_at + 1:]
        else:
            raw_path, query = url, b""
        hosts = self.hosts
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self.error = BadRequest("a request must carry exactly one Host header (RFC 9112 section 3.2)")
            raise self.error
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        return {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
        }

    def absolute_form(self, url: bytes, method: str) -> bytes:
        """The origin-form of an absolute-form target (``GET http://host/path``); ``*`` for OPTIONS."""
        if url == b"*" and method == "OPTIONS":
            return b"*"
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            parsed = None
        if parsed is None or parsed.schema not in (b"http", b"https") or not parsed.host:
            self.error = BadRequest("the request target must be a path or an absolute http URL")
            raise self.error
        # the target's authority replaces the Host header (RFC 9112 section 3.2.2)
        authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
        self.headers = [(n, v) for n, v in self.headers if n != b"host"]
        self.headers.append((b"host", authority))
        self.hosts = 1
        path = parsed.path or b"/"
        return path + b"?" + parsed.query if parsed.query else path

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.response_complete or cycle.disconnected:
            return
        cycle.body_size += len(body)
        limit = cycle.body_limit
        if limit and cycle.body_size > limit:
            self.error = PayloadTooLarge()
            raise self.error
        cycle.body.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.head_pending = True
        self.rate_due = False
        if cycle is not None:
            cycle.more_body = False
            cycle.wake()
            self.parsing = None

    def on_upgrade(self) -> None:
        """A request carried ``Upgrade``: unless the app switches it to a tunnel (a WebSocket), it is
        answered as plain HTTP/1.1 and the connection closes."""
        self.upgraded = True
        cycle = self.parsing or (self.pipeline[-1] if self.pipeline else self.active)
        if cycle is not None:
            cycle.keep_alive = False
            cycle.more_body = False
            cycle.wake()

    def keep_early(self, data: bytes) -> None:
        """Bytes after an upgrade request's head: kept for a tunnel (a WebSocket client may send frames
        before it sees the 101), dropped otherwise; reading pauses past ``HIGH_WATER``."""
        cycle = self.parsing or self.active
        if not data or cycle is None or "extensions" not in cycle.scope:
            return
        self.tunnel_early += data
        if len(self.tunnel_early) >= HIGH_WATER:
            self.pause_reading()

    def hand_over(self, cycle: RequestCycle, message: Message) -> Awaitable[None]:
        """Writes the 101 head and gives the connection to ``message["tunnel"]`` (see the module
        docstring); this protocol is done with it."""
        if cycle is not self.active or "extensions" not in cycle.scope:
            raise RuntimeError("gateway.tunnel is only for the active WebSocket upgrade request")
        cycle.keep_alive = True  # the 101's own Connection header says what follows; no "close"
        cycle._start(message.get("status", 101), message.get("headers", ()))
        cycle.response_complete = True
        self.active = None
        self.closed = True  # the tunnel writes from now on
        self.drop_timer()
        transport = self.transport
        self.batch.flush()  # earlier responses on this connection, then the 101 the tunnel follows
        transport.write(cycle.head)  # type: ignore[union-attr]
        cycle.head = b""
        early, self.tunnel_early = self.tunnel_early, b""
        self.state.connections.discard(self)
        tunnel = message["tunnel"]
        self.state.connections.add(tunnel)  # uvicorn's drain waits for it (until its graceful timeout)

        def on_close() -> None:
            self.state.connections.discard(tunnel)
            if self.guard_ticket is not None:
                self.guard.release(self)
                self.guard_ticket = None

        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()  # type: ignore[union-attr]
        tunnel.attach(transport, early, on_close)
        return DONE

    # -- running requests ---------------------------------------------------------------------------

    def serve(self, cycle: RequestCycle) -> None:
        """Answers the request just parsed: on the app's fast lane if it takes it (module docstring),
        else as a task."""
        lane = self.lane
        if lane is not None and self.content_length <= 0 and not self.transfer_encoding \
                and not self.parser.should_upgrade():
            self.active = cycle
            if lane(self, cycle):
                return
        self.start(cycle)

    def start(self, cycle: RequestCycle, app: ASGIApp | None = None) -> None:
        """Runs the request as a task: the app, or ``app`` (one continuing a request its lane took)."""
        self.active = cycle
        task = self.loop.create_task(self.run_asgi(cycle, app if app is not None else self.app))
        cycle.task = task
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def run_asgi(self, cycle: RequestCycle, app: ASGIApp) -> None:
        """The protocol's error boundary around one request."""
        try:
            await app(cycle.scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            if not cycle.disconnected:
                self.abort(cycle, None)
            return
        except GatewayError as exc:  # a failure the app chose to end this way (already logged)
            self.abort(cycle, exc)
            return
        except ClientDisconnected:  # the client left while the response was being sent: nothing to log
            self.abort(cycle, None)
            return
        except BaseException:
            logger.exception("request failed inside the gateway")
            self.abort(cycle, GatewayError())
            return
        if not cycle.response_complete:
            logger.error("the app returned without completing the response")
            self.abort(cycle, GatewayError())

    def abort(self, cycle: RequestCycle, exc: GatewayError | None) -> None:
        """Ends a request that went wrong: a JSON error if nothing was sent yet, then close."""
        if exc is not None and (not cycle.response_started or cycle.head) and not self.closed:
            self.write(error_response(exc, new_request_id(), keep_alive=False))  # head not yet written
        cycle.response_complete = True
        self.close()

    def response_complete(self, cycle: RequestCycle) -> None:
        if cycle is not self.active:  # pragma: no cover - defensive: only the active cycle sends
            return
        self.active = None
        if cycle.body:  # a body the app never read must not count against the next request's buffer
            for chunk in cycle.body:
                self.buffered -= len(chunk)
            cycle.body.clear()
        if cycle.more_body:
            self.linger()  # the client may still be sending the body nobody will read
            return
        if not cycle.keep_alive:
            self.close()
            return
        if self.pipeline:
            self.start(self.pipeline.popleft())
            if not self.pipeline and self.buffered < HIGH_WATER:
                self.resume_reading()
            return
        if self.shutting_down:
            self.close()
            return
        self.resume_reading()
        if self.head_pending and self.head_bytes == 0:
            self.arm_timer(self.limits.keepalive_timeout, self.on_idle_timeout)
        elif self.head_pending and self.timer_action is None:  # a partial head arrived meanwhile: time it
            self.arm_timer(self.limits.header_timeout, self.on_header_timeout)

    def fail(self, exc: GatewayError) -> None:
        """Answers a protocol error (400/403/408/413/431/501) and closes the connection."""
        self.error = None
        if self.guard is not None:
            self.guard.rejected(self, exc)
        cycle = self.active
        if cycle is not None:
            if cycle.task is not None and not cycle.task.done():
                cycle.task.cancel()
            if cycle.response_started and not cycle.head:
                cycle.response_complete = True
                self.close()
                return
            cycle.response_complete = True
        self.write(error_response(exc, new_request_id(), keep_alive=False))
        self.linger()


def _parser_message(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"malformed HTTP request: {text}"


def limit_body(receive: Receive, limit: int) -> bool:
    """Applies a route's body limit to the request whose ASGI ``receive`` this is (see
    ``RequestCycle.limit_body``); True when ``receive`` is not this protocol's (nothing to enforce)."""
    apply = getattr(getattr(receive, "__self__", None), "limit_body", None)
    return bool(apply(limit)) if apply is not None else True


def uvicorn_protocol(app: ASGIApp, limits: Limits, guard: Any = None) -> Callable[..., HttpProtocol]:
    """A protocol factory with the signature ``uvicorn.Server`` calls (``Config(http=...)``)."""

    def factory(config: Any, server_state: Any, app_state: Any = None,
                _loop: asyncio.AbstractEventLoop | None = None) -> HttpProtocol:
        return HttpProtocol(app, limits, server_state, _loop, guard=guard)

    return factory
