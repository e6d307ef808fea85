# cython: annotation_typing=False
"""One keep-alive HTTP/1.1 connection to an upstream target: an asyncio protocol with httptools.

httpx and aiohttp cost 10-50 times more per request here (DESIGN.md), so the proxy speaks to upstreams
through this small client. One request at a time per connection (no pipelining to upstreams). The response
body is queued as it arrives; past ``HIGH_WATER`` queued bytes the socket stops being read until the
client side catches up, so a fast upstream and a slow client never buffer a whole body in memory.

An exchange is driven one of two ways: a coroutine awaits ``wait_head``/``wait_body`` (the proxy stage),
or, in callback mode (``listen``), a listener's ``on_upstream()`` runs after every read, failure and read
timeout instead (the proxy's fast lane, gateway.proxy.lane: no future, no task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httptools

from gateway._fast.done import DONE
from gateway._fast.writes import batch_for
from gateway.errors import UpstreamError, UpstreamTimeout

HIGH_WATER = 256 * 1024
HEAD_TIMEOUT = "the upstream did not send response headers within the read timeout"
BODY_TIMEOUT = "the upstream stalled sending the response body beyond the read timeout"


class UpstreamConnection:
    """A pooled connection (an asyncio protocol by its methods; compiled, it cannot subclass
    asyncio.Protocol). ``begin`` starts an exchange; ``reusable`` says if it may go back to the pool.

    A response to HEAD (or a 1xx) leaves llhttp expecting a body it will never get; such a parser is
    replaced before the next exchange, since there is no way to tell httptools "this one has no body".
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.batch = batch_for(loop)  # request heads go out together once the loop's events are handled
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.fresh_parser = True
        self.closed = False
        self.failure: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.timeout_message = ""
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.requests = 0
        self.idle = False
        self.idle_since = 0.0
        self.head_request = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = True
        self.close_delimited = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.read_paused = False
        self.received_any = False
        self.upgrade_data = b""  # after a 101: the new protocol's first bytes (for a tunnel)
        self.listener: Any = None  # callback mode: told of every event instead of a waiter (see ``listen``)
        self.watched = False  # callback mode: the listener waits for bytes, the read timeout runs

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and self.close_delimited and exc is None:
            self.complete = True  # a body without length or chunking ends when the connection does
            self.keep_alive = False
        elif not self.complete:
            self.failure = UpstreamError("the upstream closed the connection before the response ended")
        self.wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(UpstreamError("the upstream closed the connection"))

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if self.idle:  # bytes nobody asked for: the connection's framing can no longer be trusted
            self.abort()
            return
        self.received_any = True
        if self.status == 101 and self.head_done:  # switched protocols: these bytes are not HTTP
            self.upgrade_data += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # 101 Switching Protocols: on_headers_complete ended the exchange, not reusable; what
            # follows the head belongs to the new protocol (a tunnel takes it: gateway.realtime)
            self.upgrade_data = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self.failure = UpstreamError(f"the upstream sent a malformed response ({exc})")
            self.abort()
        self.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.headers = []  # an interim response (100 Continue, 103 Early Hints): wait for the final
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.close_delimited = not any(
            n in (b"content-length", b"transfer-encoding") for n, _ in self.headers
        ) and status not in (204, 304)
        if self.head_request or status == 101:
            self.complete = True
            self.fresh_parser = False
            self.keep_alive = self.keep_alive and status != 101

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # -- the exchange, as the proxy drives it --------------------------------------------------------

    def begin(self, head_request: bool) -> None:
        """Prepares for a new request on this connection."""
        if not self.fresh_parser:
            self.parser = httptools.HttpResponseParser(self)
            self.fresh_parser = True
        self.requests += 1
        self.head_request = head_request
        self.status = 0
        self.headers = []
        self.head_done = False
        self.complete = False
        self.close_delimited = False
        self.body = []
        self.buffered = 0
        self.received_any = False

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise self.failure or UpstreamError("the upstream closed the connection")
        self.batch.write(self.transport, data)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    async def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Waits for the status and headers of the response."""
        while not self.head_done:
            await self.wait_head()
        return self.status, self.headers

    def take_body(self) -> tuple[bytes, bool]:
        """The body bytes received so far (maybe empty) and whether the body is complete."""
        chunks = self.body
        if not chunks:
            data = b""
        elif len(chunks) == 1:
            data = chunks[0]
            self.body = []
        else:
            data = b"".join(chunks)
            self.body = []
        self.buffered = 0
        self.resume_reading()
        return data, self.complete

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def wait_head(self) -> Awaitable[None]:
        """Done when more of the response head has arrived (await it while ``head_done`` is false)."""
        return self._wait(HEAD_TIMEOUT)

    def wait_body(self) -> Awaitable[None]:
        """Done when more body bytes have arrived or the body has ended."""
        if self.body or self.complete:
            return DONE
        return self._wait(BODY_TIMEOUT)

    def listen(self, listener: Any) -> None:
        """Callback mode for this exchange (None ends it): ``listener.on_upstream()`` runs after every read,
        after the connection is lost and when the read timeout passes (``failure`` then says what went
        wrong), where a coroutine would be woken. The read timeout runs only after ``watch()``."""
        self.listener = listener
        self.watched = False

    def watch(self) -> None:
        """Callback mode: the listener waits for more of the response; ``read_timeout`` runs from now
        until the next event (as it does for each ``wait_head``/``wait_body``)."""
        self.watched = True
        self._arm(BODY_TIMEOUT if self.head_done else HEAD_TIMEOUT)

    def _wait(self, timeout_message: str) -> asyncio.Future[None]:
        """A future for the next bytes, failing with the connection's failure or after ``read_timeout``.

        The read timer is lazy: a wait records its deadline, and a callback is only scheduled when none
        is pending; one that fires before the current deadline schedules itself again. So a busy
        connection costs no timer operation per wait.
        """
        if self.failure is not None:
            raise self.failure
        waiter = self.waiter = self.loop.create_future()
        self._arm(timeout_message)
        return waiter

    def _arm(self, timeout_message: str) -> None:
        loop = self.loop
        self.deadline = loop.time() + self.read_timeout
        self.timeout_message = timeout_message
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._check_timeout)

    def _check_timeout(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is not None and waiter.done():
            waiter = None
        if waiter is None and not self.watched:
            return  # nobody waits now; the next wait schedules a new callback
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._check_timeout)
            return
        if waiter is not None:
            self.waiter = None
            waiter.set_exception(UpstreamTimeout(self.timeout_message))
            self.abort()
            return
        self.failure = UpstreamTimeout(self.timeout_message)
        self.abort()
        self.wake()

    def wake(self) -> None:
        listener = self.listener
        if listener is not None:
            self.watched = False
            listener.on_upstream()
            return
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                if self.failure is not None:
                    waiter.set_exception(self.failure)
                else:
                    waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.failure is None

    def close(self) -> None:
        """Closes a healthy connection politely (FIN, not RST)."""
        self._shut(abort=False)

    def abort(self) -> None:
        """Closes the connection at once (RST); it will not be reused."""
        self._shut(abort=True)

    def _shut(self, abort: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.keep_alive = False
        if not self.closed and self.transport is not None:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.batch.flush()  # what is held for it goes before its end
                self.transport.close()
