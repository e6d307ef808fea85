"""The proxy's upstream client (gateway.proxy.upstream) and its pool (gateway.proxy.pool), without sockets.

Response bytes go in through ``UpstreamConnection.data_received``; a fake transport records writes, closes,
aborts and read pauses. Pool tests use such connections and replace ``Pool.connect``, so nothing dials out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway._fast import implementations
from gateway.errors import BadGateway, GatewayTimeout
from gateway.proxy.pool import Pool
from gateway.proxy.target import Target
from gateway.proxy.upstream import HIGH_WATER, UpstreamConnection, UpstreamError, UpstreamTimeout
from tests.unit.helpers import async_test

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class MockTransport:
    """Records what the connection does to its socket."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.read_paused = False

    def write(self, data: bytes) -> None:
        assert not (self.closed or self.aborted), "write on a closed transport"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

IMPLS = implementations("upstream")


@pytest.fixture(autouse=True, params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs against the compiled build and the pure-Python twin."""
    monkeypatch.setitem(globals(), "UpstreamConnection", IMPLS[request.param].UpstreamConnection)



def connect(read_timeout: float = 1.0) -> tuple[UpstreamConnection, MockTransport]:
    """A connection made on a MockTransport, in the running loop."""
    conn = UpstreamConnection(asyncio.get_running_loop(), read_timeout)
    transport = MockTransport()
    conn.connection_made(transport)
    return conn, transport


async def read_all(conn: UpstreamConnection) -> bytes:
    """The rest of the body, as the proxy's stream_response reads it."""
    chunks = []
    data, done = conn.take_body()
    while not done:
        chunks.append(data)
        await conn.wait_body()
        data, done = conn.take_body()
    chunks.append(data)
    return b"".join(chunks)


def served(conn: UpstreamConnection, response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") -> None:
    """Runs one whole exchange on ``conn`` (the response fed at once)."""
    conn.begin(False)
    conn.data_received(response)
    conn.take_body()


# --- parsing responses ---------------------------------------------------------------------------------


@async_test
async def test_content_length_response() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhel")
    status, headers = await conn.response_head()
    assert status == 200
    assert headers == [(b"content-type", b"text/plain"), (b"content-length", b"5")]  # names lowercased
    assert conn.take_body() == (b"hel", False)

    conn.data_received(b"lo")
    assert conn.take_body() == (b"lo", True)
    assert conn.reusable


@async_test
async def test_chunked_response_arriving_in_pieces() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert await conn.response_head() == (200, [(b"transfer-encoding", b"chunked")])

    async def feed() -> None:
        for piece in (b"lo\r\n", b"6\r\n world\r\n", b"0\r\n", b"\r\n"):
            await asyncio.sleep(0)
            conn.data_received(piece)

    feeder = asyncio.get_running_loop().create_task(feed())
    assert await read_all(conn) == b"hello world"
    await feeder
    assert conn.reusable


@async_test
async def test_close_delimited_response_ends_with_the_connection() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nhello")
    assert (await conn.response_head())[0] == 200
    assert conn.take_body() == (b"hello", False)

    conn.data_received(b" world")
    conn.connection_lost(None)  # EOF is the end of this body
    assert conn.take_body() == (b" world", True)
    await conn.wait_body()  # complete: returns at once
    assert not conn.reusable


@async_test
async def test_close_delimited_response_cut_by_an_error_fails() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nhello")
    conn.take_body()
    conn.connection_lost(ConnectionResetError())
    with pytest.raises(UpstreamError):
        await conn.wait_body()


@async_test
async def test_head_response_completes_at_headers_and_next_exchange_gets_a_fresh_parser() -> None:
    conn, _ = connect()
    conn.begin(True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert await conn.response_head() == (200, [(b"content-length", b"5")])
    assert conn.take_body() == (b"", True)
    assert conn.reusable
    old_parser = conn.parser

    conn.begin(False)  # the old parser still waits for 5 body bytes that will never come
    assert conn.parser is not old_parser
    conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert (await conn.response_head())[0] == 201
    assert conn.take_body() == (b"ok", True)
    assert conn.reusable


@async_test
async def test_parser_is_kept_across_ordinary_exchanges() -> None:
    conn, _ = connect()
    served(conn)
    parser = conn.parser
    served(conn)
    assert conn.parser is parser
    assert conn.requests == 2


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"],
    ids=["100", "103"],
)
@async_test
async def test_interim_responses_are_skipped(interim: bytes) -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(interim)
    assert not conn.head_done
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert await conn.response_head() == (200, [(b"content-length", b"2")])
    assert conn.take_body() == (b"ok", True)
    assert conn.reusable


@pytest.mark.parametrize(
    "response",
    [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 123\r\n\r\n"],
    ids=["204", "304"],
)
@async_test
async def test_no_body_statuses_complete_at_headers(response: bytes) -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(response)
    await conn.response_head()
    assert conn.take_body() == (b"", True)
    assert conn.reusable


@async_test
async def test_switching_protocols_response_completes_without_reuse() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert await conn.response_head() == (101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
    assert conn.take_body() == (b"", True)
    assert not conn.reusable


# --- failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
    ids=["not-http", "status", "content-length"],
)
@async_test
async def test_malformed_response_is_an_upstream_error(data: bytes) -> None:
    conn, transport = connect()
    conn.begin(False)
    conn.data_received(data)
    with pytest.raises(UpstreamError, match="malformed") as info:
        await conn.response_head()
    assert isinstance(info.value, BadGateway)
    assert info.value.status == 502
    assert transport.aborted
    assert not conn.reusable


@async_test
async def test_malformed_chunk_mid_body_fails_wait_body() -> None:
    conn, transport = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await conn.response_head()
    assert conn.take_body() == (b"hello", False)
    conn.data_received(b"zz\r\n")
    with pytest.raises(UpstreamError):
        await conn.wait_body()
    assert transport.aborted


@async_test
async def test_connection_lost_mid_body_raises_from_wait_body() -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    await conn.response_head()

    conn.connection_lost(None)
    await conn.wait_body()  # the bytes already received are handed over first
    assert conn.take_body() == (b"hello", False)
    with pytest.raises(UpstreamError, match="before the response ended"):
        await conn.wait_body()
    assert not conn.reusable


@async_test
async def test_connection_lost_while_waiting_for_the_head_wakes_the_waiter() -> None:
    conn, _ = connect()
    conn.begin(False)
    head = asyncio.get_running_loop().create_task(conn.response_head())
    await asyncio.sleep(0)
    conn.connection_lost(ConnectionResetError())
    with pytest.raises(UpstreamError):
        await head
    with pytest.raises(UpstreamError):
        conn.write(b"GET / HTTP/1.1\r\n\r\n")


@async_test
async def test_read_timeout_waiting_for_the_head() -> None:
    conn, transport = connect(read_timeout=0.03)
    conn.begin(False)
    with pytest.raises(UpstreamTimeout) as info:
        await conn.response_head()
    assert isinstance(info.value, GatewayTimeout)
    assert info.value.status == 504
    assert transport.aborted
    assert not conn.reusable


@async_test
async def test_read_timeout_when_the_body_stalls() -> None:
    conn, transport = connect(read_timeout=0.03)
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    await conn.response_head()
    conn.take_body()
    with pytest.raises(UpstreamTimeout, match="stalled"):
        await conn.wait_body()
    assert transport.aborted


@async_test
async def test_each_arrival_restarts_the_read_timeout() -> None:
    conn, _ = connect(read_timeout=0.1)
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    await conn.response_head()

    async def trickle() -> None:
        for byte in (b"a", b"b", b"c"):
            await asyncio.sleep(0.04)  # each under the timeout, all together over it
            conn.data_received(byte)

    feeder = asyncio.get_running_loop().create_task(trickle())
    assert await read_all(conn) == b"abc"
    await feeder


# --- reuse and flow control ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False),  # not complete yet
    ],
    ids=["1.1", "1.1-keep-alive", "1.1-close", "1.0", "1.0-keep-alive", "incomplete"],
)
@async_test
async def test_reusable_only_after_a_complete_keep_alive_response(response: bytes, reusable: bool) -> None:
    conn, _ = connect()
    conn.begin(False)
    conn.data_received(response)
    await conn.response_head()
    conn.take_body()
    assert conn.reusable is reusable


@async_test
async def test_closed_connection_is_not_reusable() -> None:
    conn, transport = connect()
    served(conn)
    assert conn.reusable
    conn.close()
    assert transport.closed
    assert not transport.aborted
    assert not conn.reusable


@async_test
async def test_body_over_high_water_pauses_reading_until_taken() -> None:
    conn, transport = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (HIGH_WATER + 10))
    conn.data_received(b"a" * (HIGH_WATER - 1))
    assert not transport.read_paused
    conn.data_received(b"a")
    assert transport.read_paused

    data, done = conn.take_body()
    assert len(data) == HIGH_WATER
    assert not done
    assert not transport.read_paused
    conn.data_received(b"b" * 10)
    assert conn.take_body() == (b"b" * 10, True)


@async_test
async def test_data_while_idle_aborts_the_connection() -> None:
    conn, transport = connect()
    served(conn)
    conn.idle = True  # as Pool.release leaves it
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert transport.aborted
    assert conn.closed
    assert not conn.reusable


@async_test
async def test_drain_waits_while_writing_is_paused() -> None:
    conn, _ = connect()
    await conn.drain()  # not paused: returns at once
    conn.pause_writing()
    drain = asyncio.get_running_loop().create_task(conn.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    conn.resume_writing()
    await drain


@async_test
async def test_drain_fails_when_the_connection_is_lost() -> None:
    conn, _ = connect()
    conn.pause_writing()
    drain = asyncio.get_running_loop().create_task(conn.drain())
    await asyncio.sleep(0)
    conn.connection_lost(None)
    with pytest.raises(UpstreamError):
        await drain


# --- the pool ---------------------------------------------------------------------------------------------------


def make_pool(keepalive: int = 2, keepalive_timeout: float = 10.0) -> Pool:
    pool = Pool(Target("127.0.0.1", 9000), connect_timeout=1.0, read_timeout=1.0, keepalive=keepalive,
                keepalive_timeout=keepalive_timeout)
    fresh: list[UpstreamConnection] = []

    async def fake_connect() -> UpstreamConnection:
        conn, _ = connect()
        fresh.append(conn)
        pool.opened += 1
        return conn

    pool.connect = fake_connect  # type: ignore[method-assign]  # no sockets in unit tests
    return pool


def reusable_conn() -> tuple[UpstreamConnection, MockTransport]:
    conn, transport = connect()
    served(conn)
    assert conn.reusable
    return conn, transport


@async_test
async def test_release_keeps_reusable_connections_up_to_keepalive() -> None:
    pool = make_pool(keepalive=2)
    made = [reusable_conn() for _ in range(3)]
    for conn, _ in made:
        pool.release(conn)

    assert list(pool.idle) == [made[0][0], made[1][0]]
    assert all(conn.idle for conn in pool.idle)
    extra = made[2][1]
    assert extra.closed  # a healthy surplus connection is closed politely
    assert not extra.aborted


@async_test
async def test_release_aborts_connections_that_are_not_reusable() -> None:
    pool = make_pool()
    conn, transport = connect()
    conn.begin(False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")  # abandoned mid-body
    pool.release(conn)

    assert not pool.idle
    assert transport.aborted


@async_test
async def test_release_with_keepalive_zero_pools_nothing() -> None:
    pool = make_pool(keepalive=0)
    conn, transport = reusable_conn()
    pool.release(conn)
    assert not pool.idle
    assert transport.closed


@async_test
async def test_acquire_is_lifo_and_opens_when_empty() -> None:
    pool = make_pool(keepalive=4)
    first, _ = reusable_conn()
    second, _ = reusable_conn()
    pool.release(first)
    pool.release(second)

    assert await pool.acquire() is second  # the warmest socket first
    assert await pool.acquire() is first
    assert not first.idle
    assert pool.reused == 2
    assert pool.opened == 0

    opened = await pool.acquire()
    assert opened not in (first, second)
    assert pool.opened == 1


@async_test
async def test_acquire_skips_closed_and_expired_connections() -> None:
    pool = make_pool(keepalive=4, keepalive_timeout=10.0)
    good, good_transport = reusable_conn()
    expired, expired_transport = reusable_conn()
    dead, _ = reusable_conn()
    for conn in (good, expired, dead):
        pool.release(conn)
    dead.connection_lost(None)  # the upstream closed it while idle
    expired.idle_since -= 11.0

    assert await pool.acquire() is good
    assert expired_transport.closed
    assert not good_transport.closed
    assert not pool.idle
    assert pool.reused == 1


@async_test
async def test_sweep_closes_expired_and_dead_connections_from_the_oldest() -> None:
    pool = make_pool(keepalive=4, keepalive_timeout=10.0)
    conns = [reusable_conn() for _ in range(3)]
    for conn, _ in conns:
        pool.release(conn)
    oldest, middle, newest = (conn for conn, _ in conns)
    now = asyncio.get_running_loop().time()
    oldest.idle_since = now - 20.0
    middle.connection_lost(None)

    pool.sweep(now)
    assert list(pool.idle) == [newest]
    assert conns[0][1].closed
    assert not conns[2][1].closed

    pool.sweep(now + 10.0)  # the newest ages out too
    assert not pool.idle


@async_test
async def test_close_closes_every_idle_connection() -> None:
    pool = make_pool(keepalive=4)
    conns = [reusable_conn() for _ in range(2)]
    for conn, _ in conns:
        pool.release(conn)
    pool.close()
    assert not pool.idle
    assert all(transport.closed for _, transport in conns)
