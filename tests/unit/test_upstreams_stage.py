"""The balanced proxy stage without sockets: upstream connections on fake transports, as in
bench.micro_pipeline. Each fake target answers with a scripted response, or fails to connect."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from gateway._fast.metrics import Recorder
from gateway.config import Node
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.exchange import Exchange
from gateway.proxy.upstream import UpstreamConnection
from gateway.upstreams.config import parse_upstream
from gateway.upstreams.stage import BalancedProxyStage
from gateway.upstreams.upstream import NoTarget, Upstream
from tests.unit.helpers import async_test

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n"
FAIL = b"HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n"


class Transport:
    """Answers every request written to it with ``response`` (split in ``pieces``) on the next turns."""

    def __init__(self, conn: UpstreamConnection, response: bytes | None, pieces: int) -> None:
        self.conn = conn
        self.response = response
        self.pieces = pieces
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data
        if self.response is None or b"\r\n\r\n" not in self.written:
            return
        loop = asyncio.get_running_loop()
        size = -(-len(self.response) // self.pieces)
        for index in range(0, len(self.response), size):
            loop.call_soon(self.conn.data_received, self.response[index:index + size])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        self.conn.connection_lost(None)

    def abort(self) -> None:
        self.conn.connection_lost(None)


def fake(upstream: Upstream, behaviour: dict[int, Any]) -> None:
    """Scripts each target (by port): bytes to answer, an exception class to raise on connect,
    or "hang" (the response never comes)."""
    for pool in upstream.pools:
        how = behaviour[pool.target.port]

        async def connect(how: Any = how) -> UpstreamConnection:
            if isinstance(how, type):
                raise how("scripted failure")
            conn = UpstreamConnection(asyncio.get_running_loop(), 60.0)
            conn.connection_made(Transport(conn, None if how == "hang" else how + b"hello world", 3))
            return conn

        pool.connect = connect  # type: ignore[method-assign]


def balanced(policy: dict[str, Any], behaviour: dict[int, Any], ports: tuple[int, ...] = (1, 2)
             ) -> BalancedProxyStage:
    spec = parse_upstream("api", Node({"targets": [f"http://127.0.0.1:{p}" for p in ports], **policy}, "t"))
    upstream = Upstream(spec)
    fake(upstream, behaviour)
    recorder = Recorder(memoryview(bytearray(8 * 4096)).cast("q"), defaultdict(int))
    return BalancedProxyStage(upstream, None, False, recorder)


def exchange(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
             body: list[bytes] | None = None) -> tuple[Exchange, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    chunks = list(body or [b""])

    async def receive() -> dict[str, Any]:
        data = chunks.pop(0)
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "scheme": "http", "path": "/x", "raw_path": b"/x",
             "query_string": b"q=1", "headers": headers or [], "client": ("127.0.0.1", 5000)}
    ex = Exchange(scope, receive, send, 0.0)  # type: ignore[arg-type]
    ex.request_id = "r1"
    ex.path = "/x"
    return ex, sent


def body_of(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent[1:])


@async_test
async def test_a_refused_try_is_retried_on_the_other_target() -> None:
    stage = balanced({"balancer": "round_robin"}, {1: UpstreamError, 2: OK})
    ex, sent = exchange()
    await stage(ex)
    assert sent[0]["status"] == 200 and body_of(sent) == b"hello world"
    assert ex.target.port == 2
    first = stage.upstream.members[0]
    assert stage.upstream.table.cells[first.retries_cell] == 1
    assert all(stage.upstream.table.cells[m.out_cell] == 0 for m in stage.upstream.members)


@async_test
async def test_when_every_target_failed_the_client_gets_the_last_real_failure() -> None:
    stage = balanced({"retries": {"attempts": 3}}, {1: UpstreamError, 2: UpstreamError})
    with pytest.raises(UpstreamError):  # 502, not 503 "no target": both were tried
        await stage(exchange()[0])
    stage = balanced({"balancer": "round_robin", "retries": {"retry_on": ["timeout"]}},
                     {1: UpstreamError, 2: OK})
    with pytest.raises(UpstreamError):  # a refusal is not a retry condition here
        await stage(exchange()[0])


@async_test
async def test_no_retry_without_budget_past_the_deadline_or_for_a_body() -> None:
    stage = balanced({"retries": {"budget": 0.1, "min_per_second": 0}}, {1: UpstreamError, 2: UpstreamError})
    with pytest.raises(UpstreamError):
        await stage(exchange()[0])  # the budget holds 0.1 token: no retry
    assert sum(stage.upstream.table.cells[m.retries_cell] for m in stage.upstream.members) == 0
    stage = balanced({"retries": {"deadline": "1ms", "try_timeout": "1s"}}, {1: "hang", 2: "hang"})
    with pytest.raises(UpstreamTimeout):
        await stage(exchange()[0])
    stage = balanced({"balancer": "round_robin"}, {1: UpstreamError, 2: OK})
    ex, _ = exchange("POST", [(b"content-length", b"5")], [b"hello"])
    with pytest.raises(UpstreamError):
        await stage(ex)  # a request with a body is sent once


@async_test
async def test_a_5xx_head_is_retried_when_asked_and_passed_on_when_tries_run_out() -> None:
    stage = balanced({"balancer": "round_robin", "retries": {"retry_on": ["5xx"]}}, {1: FAIL, 2: OK})
    ex, sent = exchange()
    await stage(ex)
    assert sent[0]["status"] == 200
    stage = balanced({"retries": {"retry_on": ["5xx"]}}, {1: FAIL, 2: FAIL})
    ex, sent = exchange()
    await stage(ex)
    assert sent[0]["status"] == 503  # the last try's answer, as the upstream sent it


@async_test
async def test_bodies_stream_both_ways_on_the_balanced_path() -> None:
    stage = balanced({"balancer": "round_robin"}, {1: OK, 2: OK})
    ex, sent = exchange("POST", [(b"transfer-encoding", b"chunked")], [b"abc", b"def", b""])
    await stage(ex)
    assert sent[0]["status"] == 200 and body_of(sent) == b"hello world" and ex.bytes_received == 6
    assert [m.get("more_body") for m in sent[1:]][-1] is False


@async_test
async def test_a_try_cancelled_by_the_gateway_teaches_nothing() -> None:
    stage = balanced({}, {1: "hang", 2: "hang"})
    ex, _ = exchange()
    task = asyncio.get_running_loop().create_task(stage(ex))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for member in stage.upstream.members:
        assert stage.upstream.table.cells[member.out_cell] == 0 and member.failures == 0


@async_test
async def test_no_available_target_is_a_503() -> None:
    stage = balanced({"outlier_detection": {"consecutive_failures": 1}}, {1: OK, 2: OK})
    for member in stage.upstream.members:
        stage.upstream.table.cells[member.base + 1] = 1  # HEALTH: taken out by active checks
    with pytest.raises(NoTarget) as caught:
        await stage(exchange()[0])
    assert caught.value.status == 503

