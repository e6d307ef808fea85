"""The WebSocket tunnel's two ends (gateway.realtime.tunnel), on fake transports: what each side's events
do to the other. End to end through real sockets: tests/integration/test_websocket.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.proxy.upstream import UpstreamError
from gateway.realtime.tunnel import Tunnel, switch
from tests.unit.helpers import async_test


class FakeTransport:
    def __init__(self, can_eof: bool = True) -> None:
        self.data = b""
        self.closed = False
        self.eof = False
        self.paused = False
        self.protocol: Any = None
        self.can_eof = can_eof

    def write(self, data: bytes) -> None:
        self.data += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return self.can_eof

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


def make(idle: float = 60.0, upstream_early: bytes = b"", client_early: bytes = b""
         ) -> tuple[Tunnel, FakeTransport, FakeTransport, list[str]]:
    upstream, client = FakeTransport(), FakeTransport()
    tunnel = Tunnel(upstream, upstream_early, idle, asyncio.get_running_loop())
    closes: list[str] = []
    tunnel.attach(client, client_early, lambda: closes.append("closed"))
    return tunnel, client, upstream, closes


@async_test
async def test_bytes_go_both_ways_early_ones_first() -> None:
    tunnel, client, upstream, _ = make(upstream_early=b"up0", client_early=b"cl0")
    assert client.protocol is tunnel.client and upstream.protocol is tunnel.upstream
    tunnel.client.data_received(b"cl1")
    tunnel.upstream.data_received(b"up1")
    assert upstream.data == b"cl0cl1"
    assert client.data == b"up0up1"
    assert (tunnel.client.moved, tunnel.upstream.moved) == (6, 6)
    tunnel.close()


@async_test
async def test_a_full_side_pauses_reading_on_the_other() -> None:
    tunnel, client, upstream, _ = make()
    tunnel.client.pause_writing()  # the client's socket buffer is full
    assert upstream.paused
    tunnel.client.resume_writing()
    assert not upstream.paused
    tunnel.upstream.pause_writing()
    assert client.paused
    tunnel.upstream.resume_writing()
    assert not client.paused
    tunnel.close()


@async_test
async def test_half_close_is_passed_on_and_both_end_the_tunnel() -> None:
    tunnel, client, upstream, closes = make()
    assert tunnel.client.eof_received() is True  # keep our half open
    assert upstream.eof and not tunnel.closed
    tunnel.upstream.data_received(b"late reply")  # the other direction still flows
    assert client.data == b"late reply"
    assert tunnel.upstream.eof_received() is False
    assert tunnel.closed and client.closed and upstream.closed
    assert closes == ["closed"]
    assert tunnel.done.done()


@async_test
async def test_one_side_lost_closes_the_other_once() -> None:
    tunnel, client, upstream, closes = make()
    tunnel.upstream.connection_lost(None)
    tunnel.client.connection_lost(None)
    tunnel.close()
    assert client.closed and upstream.closed
    assert closes == ["closed"]
    tunnel.upstream.data_received(b"after close")  # dropped: the client is closing
    assert client.data == b""
    tunnel.upstream.resume_writing()  # the client side was lost: nothing to resume
    assert not client.paused


@async_test
async def test_idle_tunnel_closes_and_traffic_keeps_it_open() -> None:
    tunnel, _, _, closes = make(idle=0.05)
    await asyncio.sleep(0.03)
    tunnel.client.data_received(b"x")
    await asyncio.sleep(0.04)
    assert not tunnel.closed  # traffic in the last period
    await asyncio.wait_for(asyncio.shield(tunnel.done), 1)
    assert closes == ["closed"]
    tunnel.check_idle()  # a late timer after close does nothing


@async_test
async def test_upstream_gone_before_attach_ends_at_once() -> None:
    upstream, client = FakeTransport(), FakeTransport()
    upstream.closed = True
    tunnel = Tunnel(upstream, b"", 60, asyncio.get_running_loop())
    tunnel.attach(client, b"", lambda: None)
    assert tunnel.closed and client.closed
    tunnel.shutdown()  # uvicorn's drain: nothing to do


@async_test
async def test_half_close_without_eof_support_keeps_the_peer() -> None:
    upstream, client = FakeTransport(can_eof=False), FakeTransport()
    tunnel = Tunnel(upstream, b"", 60, asyncio.get_running_loop())
    tunnel.attach(client, b"", lambda: None)
    assert tunnel.client.eof_received() is True
    assert not upstream.eof and not tunnel.closed
    tunnel.close()


@async_test
async def test_an_unasked_switch_is_an_upstream_error() -> None:
    class Ex:
        def __init__(self) -> None:
            self.scope = {"type": "http"}

    with pytest.raises(UpstreamError):
        await switch(Ex(), object(), 60)  # type: ignore[arg-type]
