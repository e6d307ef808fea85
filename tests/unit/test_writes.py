"""Writes held until the loop's current events are handled (gateway._fast.writes), against both
implementations, and what the protocol and the upstream connection do with them."""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any

import pytest

from gateway._fast import implementations
from tests.unit.helpers import async_test

IMPLS = implementations("writes")


@pytest.fixture(params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


class Transport:
    """Records what reaches it, in one log shared by every transport of a test (the global order)."""

    def __init__(self, name: str, log: list[tuple[str, bytes]], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


def test_writes_wait_for_the_loop_and_keep_their_order(impl: ModuleType) -> None:
    @async_test
    async def run() -> None:
        loop = asyncio.get_running_loop()
        batch = impl.WriteBatch(loop)
        log: list[tuple[str, bytes]] = []
        a, b = Transport("a", log), Transport("b", log)
        scheduled = []
        call_soon = loop.call_soon
        loop.call_soon = lambda *args: scheduled.append(args) or call_soon(*args)  # type: ignore[method-assign]
        try:
            batch.write(a, b"1")
            batch.write(b, b"2")
            batch.write(a, b"3")
        finally:
            del loop.call_soon  # type: ignore[method-assign]
        assert log == [] and batch.held == 3
        assert len(scheduled) == 1  # one flush per batch, however many writes
        await asyncio.sleep(0)
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")] and batch.held == 0
        batch.write(b, b"4")  # a new batch schedules its own flush
        await asyncio.sleep(0)
        assert log[-1] == ("b", b"4")

    run()


def test_a_large_write_goes_out_at_once_after_what_is_held(impl: ModuleType) -> None:
    @async_test
    async def run() -> None:
        batch = impl.WriteBatch(asyncio.get_running_loop())
        log: list[tuple[str, bytes]] = []
        a, b = Transport("a", log), Transport("b", log)
        batch.write(a, b"small")
        large = b"x" * (impl.SMALL + 1)
        batch.write(b, large)
        assert log == [("a", b"small"), ("b", large)]  # at once, in order, nothing held
        assert batch.held == 0
        batch.write(a, b"y" * impl.SMALL)  # SMALL itself is still held
        assert batch.held == impl.SMALL
        await asyncio.sleep(0)
        assert len(log) == 3

    run()


def test_held_bytes_are_bounded(impl: ModuleType) -> None:
    @async_test
    async def run() -> None:
        batch = impl.WriteBatch(asyncio.get_running_loop())
        log: list[tuple[str, bytes]] = []
        a = Transport("a", log)
        chunk = b"z" * impl.SMALL
        count = impl.HELD_MAX // impl.SMALL
        for _ in range(count):
            batch.write(a, chunk)
        assert log == [] and batch.held == impl.HELD_MAX
        batch.write(a, b"!")  # over the bound: the held bytes go, then this one
        assert len(log) == count + 1 and log[-1] == ("a", b"!") and batch.held == 0

    run()


def test_a_closed_transport_gets_nothing_and_a_broken_one_holds_back_no_other(
        impl: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    @async_test
    async def run() -> None:
        batch = impl.WriteBatch(asyncio.get_running_loop())
        log: list[tuple[str, bytes]] = []
        gone, broken, fine = Transport("gone", log), Transport("broken", log, fail=True), Transport("fine", log)
        batch.write(gone, b"1")
        batch.write(broken, b"2")
        batch.write(fine, b"3")
        gone.closing = True  # the peer went away meanwhile
        with caplog.at_level(logging.ERROR, "gateway.protocol"):
            batch.flush()
        assert log == [("fine", b"3")]
        assert "a held write failed" in caplog.text
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert log == [("fine", b"3")]

    run()


def test_one_batch_per_loop(impl: ModuleType) -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert impl.batch_for(first) is impl.batch_for(first)
        assert impl.batch_for(first) is not impl.batch_for(second)
        assert impl.batch_for(second).loop is second
    finally:
        first.close()
        second.close()


def test_the_protocol_flushes_before_it_closes() -> None:
    """A response with ``connection: close`` is held like any other, and written before the close."""
    from gateway._fast import protocol

    events: list[Any] = []

    class Client:
        def write(self, data: bytes) -> None:
            events.append(("write", data))

        def close(self) -> None:
            events.append("close")

        def is_closing(self) -> bool:
            return "close" in events

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    @async_test
    async def run() -> None:
        proto = protocol.HttpProtocol(lambda *a: None, protocol.Limits(), None)
        proto.transport = Client()
        proto.write(b"response")
        assert events == []  # held
        proto.close()
        assert events == [("write", b"response"), "close"]

    run()
