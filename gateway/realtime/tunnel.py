"""WebSocket proxying: after the upstream's 101, the two connections become one byte tunnel.

The upgrade itself is an HTTP request like any other, so it passes every stage of its route (guards,
auth, rate limits) and is proxied by the route's proxy stage with the balancer, breakers and retries of
its upstream. The gateway's protocol marks a ``GET`` carrying ``Upgrade: websocket`` with the scope's
``gateway.tunnel`` extension; for such a request the proxy stage keeps ``Connection: upgrade`` and
``Upgrade: websocket`` in the upstream request (they are dropped from every other one). An upstream that
answers anything but 101 is relayed as a plain response. On a 101, ``switch`` hands both connections to a
``Tunnel`` and waits until it closes:

- frames are not parsed: bytes go through as they arrive, both ways, so subprotocols and extensions
  (permessage-deflate) are negotiated end to end by client and upstream, as nginx and Envoy do, and a
  message costs two socket operations and no Python-level framing;
- flow control: a side whose socket buffer fills pauses reading on the other side until it drains;
- a half close is passed on (EOF to the other side); the tunnel ends when both sides closed, or one side
  was lost, or nothing moved for ``idle_timeout`` seconds (upstream setting ``websocket_idle_timeout``);
- the request's access-log line and metrics are written when the tunnel ends: status 101, the session's
  duration and the bytes each way.

A worker that drains (reload, stop) keeps its tunnels open until they end or the drain timeout passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway._fast.headers import response_headers
from gateway.proxy.upstream import UpstreamError

if TYPE_CHECKING:
    from gateway._fast.upstream import UpstreamConnection
    from gateway.exchange import Exchange

UPGRADE_HEADERS = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]


def wants_tunnel(ex: Exchange) -> bool:
    """The request is a WebSocket upgrade the protocol can turn into a tunnel."""
    return "extensions" in ex.scope


async def switch(ex: Exchange, conn: UpstreamConnection, idle_timeout: float) -> None:
    """Answers the client's upgrade with the upstream's 101 and tunnels until either side ends."""
    if not wants_tunnel(ex):
        raise UpstreamError("the upstream switched protocols without being asked to")
    conn.keep_alive = False  # the connection belongs to the tunnel now, never back to the pool
    transport = conn.transport
    tunnel = Tunnel(transport, conn.upgrade_data, idle_timeout, asyncio.get_running_loop())
    conn.upgrade_data = b""
    headers = response_headers(conn.headers)
    headers.extend(UPGRADE_HEADERS)
    try:
        await ex.switch_protocols(headers, tunnel)
        await tunnel.done
    finally:
        tunnel.close()
        ex.bytes_received += tunnel.client.moved
        ex.bytes_sent += tunnel.upstream.moved


class End:
    """One side of a tunnel: an asyncio protocol that writes what it reads to the other side."""

    __slots__ = ("eof", "lost", "moved", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: Any) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: End = self
        self.moved = 0  # bytes read on this side (written to the other)
        self.eof = False
        self.lost = False

    def connection_made(self, transport: Any) -> None:  # pragma: no cover - set_protocol, not a new connection
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.moved += len(data)
        self.tunnel.active = True
        peer = self.peer.transport
        if not peer.is_closing():
            peer.write(data)

    def eof_received(self) -> bool:
        """A half close: passed on; the tunnel ends once both sides sent theirs."""
        self.eof = True
        peer = self.peer
        if peer.eof:
            self.tunnel.close()
            return False
        if not peer.transport.is_closing() and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # keep our side open: the other side may still be talking

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.lost:
            self.peer.transport.resume_reading()


class Tunnel:
    """Client and upstream transports piped into each other (see the module docstring)."""

    def __init__(self, upstream_transport: Any, upstream_early: bytes, idle_timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.upstream = End(self, upstream_transport)
        self.client = self.upstream  # replaced by attach
        self.upstream_early = upstream_early
        self.idle_timeout = idle_timeout
        self.done: asyncio.Future[None] = loop.create_future()
        self.active = False
        self.timer: asyncio.TimerHandle | None = None
        self.on_close: Callable[[], None] | None = None
        self.closed = False

    def attach(self, client_transport: Any, early: bytes, on_close: Callable[[], None]) -> None:
        """Called by the client's protocol after it wrote the 101: from now on the tunnel owns both."""
        self.on_close = on_close
        client = self.client = End(self, client_transport)
        upstream = self.upstream
        client.peer, upstream.peer = upstream, client
        client_transport.set_protocol(client)
        upstream.transport.set_protocol(upstream)
        if upstream.transport.is_closing():  # the upstream went away between its 101 and now
            self.close()
            return
        upstream.transport.resume_reading()
        if early:
            client.data_received(early)
        if self.upstream_early:
            upstream.data_received(self.upstream_early)
            self.upstream_early = b""
        self.timer = self.loop.call_later(self.idle_timeout, self.check_idle)

    def check_idle(self) -> None:
        if self.closed:
            return
        if not self.active:
            self.close()
            return
        self.active = False
        self.timer = self.loop.call_later(self.idle_timeout, self.check_idle)

    def shutdown(self) -> None:
        """uvicorn's drain asks every connection to end: a tunnel runs on until it ends by itself or
        the drain timeout passes (then the worker's exit closes it)."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for end in (self.client, self.upstream):
            if not end.transport.is_closing():
                end.transport.close()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        if not self.done.done():
            self.done.set_result(None)
