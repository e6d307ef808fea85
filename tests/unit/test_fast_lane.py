"""The proxy's fast lane (gateway.proxy.lane), without sockets: the same requests through the lane and
through the normal path (the lane switched off) must look the same to the client, the upstream and the
metrics.

The gateway runs on fake transports: the client's records what the protocol writes; the upstream's
records request heads and lets the test answer with ``respond``. Each test runs against the compiled
build and the pure-Python twins (protocol and upstream connection of the same kind).
"""

from __future__ import annotations

import asyncio
import os
from types import ModuleType
from typing import Any

import pytest
from uvicorn.server import ServerState

from gateway._fast import implementations
from gateway.app import Gateway
from gateway.loader import from_document
from gateway.proxy.lane import LaneRun
from tests.unit.helpers import async_test
from tests.unit.test_protocol import MockTransport as ClientTransport

PROTOCOLS = implementations("protocol")
UPSTREAMS = implementations("upstream")
KINDS = sorted(set(PROTOCOLS) & set(UPSTREAMS))
GET = b"GET /api/items?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Request-ID: rid-1\r\nUser-Agent: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
COUNTED = ("gateway_requests", "gateway_upstream_requests", "gateway_requests_in_flight",
           "gateway_request_body_bytes", "gateway_response_body_bytes")


@pytest.fixture(params=KINDS, ids=str)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class UpstreamTransport:
    """An upstream socket: request heads written, read pauses, close and abort (connection_lost soon after)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Any) -> None:
        self.loop = loop
        self.conn = conn
        self.requests: list[bytes] = []
        self.closed = self.aborted = self.read_paused = False

    def write(self, data: bytes) -> None:
        self.requests.append(data)

    def _lost(self) -> None:
        if not self.conn.closed:
            self.loop.call_soon(self.conn.connection_lost, None)

    def close(self) -> None:
        self.closed = True
        self._lost()

    def abort(self) -> None:
        self.aborted = True
        self._lost()

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Gw:
    """A Gateway with one plain route on fake sockets; ``lane=False`` switches the fast lane off."""

    def __init__(self, kind: str, lane: bool = True, **upstream: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.protocols: ModuleType = PROTOCOLS[kind]
        document = {
            "source": "test", "server": {"access_log": False},
            "upstreams": {"api": {"targets": ["http://127.0.0.1:9"], **upstream},
                          "pair": {"targets": ["http://127.0.0.1:10", "http://127.0.0.1:11"]}},
            "routes": [{"prefix": "/api", "upstream": "api"},
                       {"prefix": "/limited", "upstream": "api", "max_body_bytes": 100},
                       {"prefix": "/rl", "upstream": "api", "ratelimit": ["one"]},
                       {"prefix": "/pair", "upstream": "pair"}],
            "ratelimit": {"policies": {"one": {"key": "ip", "limits": [{"rate": "1/h", "burst": 1}]}}},
        }
        self.app = Gateway(from_document(document))
        if not lane:
            self.app.fast_lane = None
        self.pool = self.app.upstreams["api"].pools[0]
        self.upstreams: list[UpstreamTransport] = []  # every connection opened, in order
        self.state = ServerState()
        for upstream_ in self.app.upstreams.values():
            for pool in upstream_.pools:
                pool.connect = self.connector(kind, pool)  # type: ignore[method-assign]

    def connector(self, kind: str, pool: Any) -> Any:
        """``pool.connect`` on fake sockets."""
        connection = UPSTREAMS[kind].UpstreamConnection

        async def connect() -> Any:
            conn = connection(self.loop, pool.read_timeout)
            transport = UpstreamTransport(self.loop, conn)
            conn.connection_made(transport)
            self.upstreams.append(transport)
            pool.opened += 1
            return conn

        return connect

    def client(self) -> Any:
        protocol = self.protocols.HttpProtocol(self.app, self.protocols.Limits(), self.state, self.loop)
        transport = ClientTransport(protocol, self.loop)
        protocol.connection_made(transport)
        return protocol, transport

    def respond(self, data: bytes, index: int = -1) -> None:
        """The upstream connection ``index`` (the latest by default) receives ``data``."""
        self.upstreams[index].conn.data_received(data)

    async def settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def warm(self, protocol: Any, transport: ClientTransport) -> None:
        """One request on the normal path (the pool is empty), so a connection is idle afterwards."""
        protocol.data_received(GET)
        await self.settle()
        self.respond(OK)
        await self.settle()
        transport.data.clear()
        assert len(self.pool.idle) == 1

    def counted(self) -> list[int]:
        cells = self.app.metrics.cells
        families = self.app.metrics.schema.families
        return [cells[i] for name in COUNTED
                for i in range(families[name].offset, families[name].offset + families[name].size)]

    def lanes(self) -> list[LaneRun]:
        return [t for t in self.state.tasks if isinstance(t, LaneRun)]


async def exchange(gw: Gw, request: bytes, answer: list[bytes]) -> tuple[bytes, bytes, bool, bool]:
    """A warmed-up connection sends ``request``; the upstream answers in pieces (b"": it closes). What the client got,
    what the upstream got, whether the client connection ended and whether a task ran the request."""
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(request)
    tasked = any(not isinstance(t, LaneRun) for t in gw.state.tasks)
    await gw.settle()
    for piece in answer:
        if piece:
            gw.respond(piece)
        else:  # the upstream closes its connection
            gw.upstreams[-1].conn.connection_lost(None)
        await gw.settle()
    assert transport.writes_after_close == 0
    return bytes(transport.data), gw.upstreams[-1].requests[-1], transport.closed or transport.eof_written, tasked


RESPONSES = {
    "length": (GET, [OK]),
    "pieces": (GET, [OK[:20], OK[20:70], OK[70:]]),
    "chunked": (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"0\r\n\r\n"]),
    "close-delimited": (GET, [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome", b" body", b""]),
    "head": (GET.replace(b"GET", b"HEAD"), [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"]),
    "204": (GET, [b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"]),
    "304": (GET, [b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"]),
    "interim": (GET, [b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK]),
    "client-close": (GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), [OK]),
    "http-1.0": (GET.replace(b"HTTP/1.1", b"HTTP/1.0"), [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody", b""]),
    "hop-by-hop": (GET, [b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: t\r\n"
                         b"Content-Length: 2\r\n\r\nok"]),
    "zero-length-request": (GET.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"), [OK]),
    "normalized-path": (GET.replace(b"/api/items", b"/api/./x/../items/%7e%2f"), [OK]),  # routed and sent normalized
}


@pytest.mark.parametrize("case", sorted(RESPONSES))
@async_test
async def test_the_lane_answers_as_the_normal_path_does(kind: str, case: str) -> None:
    request, answer = RESPONSES[case]
    lane, normal = Gw(kind), Gw(kind, lane=False)

    got = await exchange(lane, request, answer)
    expected = await exchange(normal, request, answer)

    assert got[:3] == expected[:3]
    assert not got[3] and expected[3]  # the lane ran no task
    assert lane.counted() == normal.counted()
    assert not lane.lanes()
    assert len(lane.pool.idle) == len(normal.pool.idle)


@pytest.mark.parametrize("request_bytes", [
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
], ids=["length", "chunked", "upgrade"])
@async_test
async def test_a_request_with_a_body_or_an_upgrade_takes_the_normal_path(kind: str, request_bytes: bytes) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(request_bytes)
    assert not gw.lanes() and gw.state.tasks
    await gw.settle()
    gw.respond(OK)
    await gw.settle()
    assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
    if request_bytes.startswith(b"POST"):
        assert b"hi" in b"".join(gw.upstreams[-1].requests[1:])  # the body went upstream


@async_test
async def test_a_malformed_request_behind_the_lane_is_answered_as_on_the_normal_path(kind: str) -> None:
    outputs = []
    for gw in (Gw(kind), Gw(kind, lane=False)):
        protocol, transport = gw.client()
        await gw.warm(protocol, transport)
        protocol.data_received(GET)
        await gw.settle()
        protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        await gw.settle()
        assert gw.upstreams[-1].aborted and not gw.state.tasks
        outputs.append((transport.data.split(b"x-request-id")[0], transport.closed, gw.counted()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0].startswith(b"HTTP/1.1 400 Bad Request\r\n")


@async_test
async def test_a_route_without_a_lane_continues_in_a_task(kind: str) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    protocol.data_received(GET.replace(b"/api/items", b"/pair/x"))  # a balanced upstream: no lane
    assert not gw.lanes() and gw.state.tasks  # routed once, then a task
    await gw.settle()
    gw.respond(OK)
    await gw.settle()
    assert transport.data.endswith(b'{"ok":true}')
    assert not gw.state.tasks


@pytest.mark.parametrize("path", [b"/limited/x", b"/rl/x"], ids=["body-limit", "rate-limit"])
@async_test
async def test_stages_that_decide_at_once_run_on_the_lane(kind: str, path: bytes) -> None:
    request = GET.replace(b"/api/items", path)
    lane, normal = Gw(kind), Gw(kind, lane=False)

    got = await exchange(lane, request, [OK])
    expected = await exchange(normal, request, [OK])

    assert got[:3] == expected[:3]
    assert not got[3] and expected[3]
    assert lane.counted() == normal.counted()


@async_test
async def test_a_stage_refusal_on_the_lane_is_answered_as_on_the_normal_path(kind: str) -> None:
    outputs = []
    for gw in (Gw(kind), Gw(kind, lane=False)):
        protocol, transport = gw.client()
        await gw.warm(protocol, transport)
        limited = GET.replace(b"/api/items", b"/rl/x")
        protocol.data_received(limited)
        await gw.settle()
        gw.respond(OK)
        await gw.settle()
        protocol.data_received(limited)  # over the limit: 429, and no upstream request
        await gw.settle()
        outputs.append((bytes(transport.data), gw.counted(), len(gw.upstreams[-1].requests)))
        assert not gw.state.tasks and len(gw.pool.idle) == 1
    assert outputs[0] == outputs[1]
    assert b"HTTP/1.1 429 Too Many Requests\r\n" in outputs[0][0]


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "normal"])
@async_test
async def test_a_reused_connection_that_dies_unanswered_is_retried_on_a_new_one(kind: str, lane: bool) -> None:
    gw = Gw(kind, lane=lane)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET)
    await gw.settle()
    dead = gw.upstreams[-1]
    dead.conn.connection_lost(ConnectionResetError())
    await gw.settle()
    assert len(gw.upstreams) == 2  # a fresh connection carries the retry, with the same request id
    assert gw.upstreams[1].requests[-1] == dead.requests[-1]
    gw.respond(OK)
    await gw.settle()
    assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n") and transport.data.endswith(b'{"ok":true}')
    assert not gw.state.tasks


@pytest.mark.parametrize("answer", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Le"], ids=["malformed", "cut"])
@async_test
async def test_an_upstream_failure_after_some_bytes_is_the_same_502(kind: str, answer: bytes) -> None:
    outputs = []
    for gw in (Gw(kind), Gw(kind, lane=False)):
        protocol, transport = gw.client()
        await gw.warm(protocol, transport)
        protocol.data_received(GET)
        await gw.settle()
        gw.respond(answer)
        if answer.endswith(b"Le"):
            gw.upstreams[-1].conn.connection_lost(None)
        await gw.settle()
        outputs.append((bytes(transport.data), transport.closed, gw.counted(), len(gw.upstreams)))
        assert gw.upstreams[-1].conn.closed and not gw.pool.idle
    assert outputs[0] == outputs[1]
    assert outputs[0][0].startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


@async_test
async def test_the_read_timeout_applies_on_the_lane(kind: str) -> None:
    outputs = []
    for gw in (Gw(kind, read_timeout="50ms"), Gw(kind, lane=False, read_timeout="50ms")):
        protocol, transport = gw.client()
        await gw.warm(protocol, transport)
        protocol.data_received(GET)
        await asyncio.sleep(0.2)
        await gw.settle()
        outputs.append((bytes(transport.data), gw.counted(), len(gw.upstreams)))
        assert gw.upstreams[-1].aborted and not gw.state.tasks
    assert outputs[0] == outputs[1]
    assert outputs[0][0].startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


@async_test
async def test_the_read_timeout_applies_between_body_pieces(kind: str) -> None:
    gw = Gw(kind, read_timeout="50ms")
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET)
    gw.respond(OK[:-3])  # the head and part of the body, then nothing
    await asyncio.sleep(0.2)
    await gw.settle()
    assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.closed  # the response had started: the connection ends
    assert gw.upstreams[-1].aborted and not gw.state.tasks


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "normal"])
@async_test
async def test_a_client_that_goes_away_aborts_the_upstream_and_counts_499(kind: str, lane: bool) -> None:
    gw = Gw(kind, lane=lane)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    before = gw.counted()
    protocol.data_received(GET)
    await gw.settle()
    gw.respond(OK[:-3])
    await gw.settle()
    protocol.connection_lost(ConnectionResetError())
    await gw.settle()
    assert gw.upstreams[-1].aborted
    assert not gw.pool.idle and not gw.state.tasks
    family = gw.app.metrics.schema.families["gateway_requests"]
    cells = gw.app.metrics.cells
    # route 0, GET, 2xx: the upstream's status had been sent (as the normal path counts it)
    assert cells[family.offset + 1] == 2
    assert gw.counted() != before


@async_test
async def test_a_client_that_goes_away_before_the_response_counts_499(kind: str) -> None:
    results = []
    for gw in (Gw(kind), Gw(kind, lane=False)):
        protocol, transport = gw.client()
        await gw.warm(protocol, transport)
        protocol.data_received(GET)
        await gw.settle()
        protocol.connection_lost(ConnectionResetError())
        await gw.settle()
        assert gw.upstreams[-1].aborted and not gw.state.tasks
        results.append(gw.counted())
    assert results[0] == results[1]


@async_test
async def test_a_full_client_socket_stops_reading_the_upstream(kind: str) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET)
    upstream = gw.upstreams[-1]
    gw.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    protocol.pause_writing()
    gw.respond(b"12345")
    assert upstream.read_paused
    await asyncio.sleep(0)
    protocol.resume_writing()
    await gw.settle()
    assert not upstream.read_paused
    gw.respond(b"67890")
    await gw.settle()
    assert transport.data.endswith(b"\r\n\r\n1234567890")
    assert len(gw.pool.idle) == 1 and not gw.state.tasks


@async_test
async def test_a_pipelined_request_waits_for_the_lane_and_then_runs(kind: str) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET + GET.replace(b"rid-1", b"rid-2"))
    assert len(gw.lanes()) == 1
    gw.respond(OK)
    await gw.settle()
    gw.respond(OK)
    await gw.settle()
    assert transport.data.count(b"HTTP/1.1 200 OK") == 2
    assert transport.data.index(b"rid-1") < transport.data.index(b"rid-2")
    assert not gw.state.tasks


@async_test
async def test_a_drain_lets_the_lane_finish_and_then_closes(kind: str) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET)
    assert gw.lanes()  # uvicorn's drain waits for it
    protocol.shutdown()
    gw.respond(OK)
    await gw.settle()
    assert b"connection: close\r\n" in transport.data and transport.data.endswith(b'{"ok":true}')
    assert transport.closed and not gw.state.tasks


@async_test
async def test_a_drain_timeout_cancels_the_lane_and_closes(kind: str) -> None:
    gw = Gw(kind)
    protocol, transport = gw.client()
    await gw.warm(protocol, transport)
    protocol.data_received(GET)
    for task in list(gw.state.tasks):
        task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")  # as uvicorn does
    await gw.settle()
    assert transport.closed and not transport.data
    assert gw.upstreams[-1].aborted and not gw.state.tasks


# --- request ids: the one system call of a proxied request besides its four reads and writes -------------


@pytest.mark.parametrize("impl", sorted(PROTOCOLS))
def test_request_ids_are_read_ahead_unique_and_fresh_after_a_fork(impl: str) -> None:
    new_request_id = PROTOCOLS[impl].new_request_id
    ids = [new_request_id() for _ in range(1000)]  # several read-aheads
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_request_id()  # the child did not reuse the parent's read-ahead
