"""The streams scenario of the bench (scenario 5): the WebSocket framer, the echo and event-stream upstream,
the load clients on fake transports, one short in-process run of each client against the upstream on
loopback, and the report's tables and chart panels. No proxy is started here."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any, cast

import pytest

from bench import report, stream_clients, streams, suite, upstream, websocket
from tests.unit.helpers import async_test

MASK = b"\x01\x02\x03\x04"


class FakeTransport:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def take(self) -> bytes:
        data, self.data = self.data, b""
        return data


# The framer


def test_the_accept_value_is_rfc_6455s_example() -> None:
    assert websocket.accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536])
@pytest.mark.parametrize("mask", [None, MASK])
def test_frames_decode_to_what_was_encoded(size: int, mask: bytes | None) -> None:
    payload = bytes(i % 256 for i in range(size))
    frame = websocket.encode(websocket.BINARY, payload, mask)
    assert websocket.decode(frame + b"next") == (True, websocket.BINARY, payload, len(frame))
    if mask is not None and size:
        assert payload not in frame  # masked on the wire


def test_an_incomplete_frame_decodes_to_none_at_every_cut() -> None:
    for frame in (websocket.encode(websocket.TEXT, b"x" * 300, MASK), websocket.encode(websocket.TEXT, b"y" * 70_000)):
        for cut in (0, 1, 3, 5, 9, 11, len(frame) - 1):
            assert websocket.decode(frame[:cut]) is None


def test_a_fragment_reports_no_fin() -> None:
    assert websocket.decode(websocket.encode(websocket.TEXT, b"part", fin=False)) == (False, websocket.TEXT, b"part", 6)


# The upstream: WebSocket echo and event streams


def upgraded(path: bytes = b"/ws") -> tuple[upstream.UpstreamProtocol, FakeTransport, bytes]:
    """An upstream connection that was sent a WebSocket handshake with a masked frame right behind it."""
    proto, transport = upstream.UpstreamProtocol(), FakeTransport()
    proto.connection_made(cast(asyncio.Transport, transport))
    frame = websocket.encode(websocket.TEXT, b"early", MASK)
    proto.data_received(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n" + frame)
    return proto, transport, frame


def test_the_upstream_accepts_the_handshake_and_echoes_the_early_frame() -> None:
    _, transport, _ = upgraded()
    head, _, rest = transport.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert rest == websocket.encode(websocket.TEXT, b"early")
    assert isinstance(transport.protocol, upstream.EchoSocket)


def test_the_upstream_echoes_split_and_joined_frames_and_remembers_a_lone_one() -> None:
    _, transport, frame = upgraded()
    transport.take()
    echo = transport.protocol
    echo.data_received(frame)  # the remembered reply, same bytes
    assert transport.take() == websocket.encode(websocket.TEXT, b"early")
    other = websocket.encode(websocket.BINARY, b"\x00" * 200, MASK)
    echo.data_received(other[:7])
    assert transport.take() == b""
    echo.data_received(other[7:] + frame)
    assert transport.take() == websocket.encode(websocket.BINARY, b"\x00" * 200) + websocket.encode(
        websocket.TEXT, b"early")


def test_the_upstream_answers_ping_ignores_pong_and_returns_close() -> None:
    _, transport, _ = upgraded()
    transport.take()
    echo = transport.protocol
    echo.data_received(websocket.encode(websocket.PING, b"hi", MASK) + websocket.encode(websocket.PONG, b"", MASK))
    assert transport.take() == websocket.encode(websocket.PONG, b"hi")
    echo.data_received(websocket.encode(websocket.CLOSE, b"\x03\xe8bye", MASK))
    assert transport.take() == websocket.encode(websocket.CLOSE, b"\x03\xe8") and transport.closed


def test_an_upgrade_elsewhere_than_ws_is_refused() -> None:
    _, transport, _ = upgraded(b"/chat")
    assert transport.take().startswith(b"HTTP/1.1 400") and transport.closed


@async_test
async def test_the_upstream_streams_timestamped_events_at_its_rate() -> None:
    proto, transport = upstream.UpstreamProtocol(), FakeTransport()
    proto.connection_made(cast(asyncio.Transport, transport))
    before = time.monotonic_ns()
    proto.data_received(b"GET /events/200 HTTP/1.1\r\nhost: x\r\n\r\n")
    stream = transport.protocol
    assert isinstance(stream, upstream.EventStream)
    await asyncio.sleep(0.1)
    stream.data_received(b"ignored")
    stream.connection_lost(None)
    elapsed = (time.monotonic_ns() - before) / 1e9
    head, _, body = transport.take().partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream" in head and b"transfer-encoding: chunked" in head
    chunks = body.split(b"\r\n")
    events = chunks[1::2]
    assert all(size == b"64" for size in chunks[0:-1:2])  # 100 bytes, in hex
    assert 10 <= len(events) <= 200 * elapsed + 2  # one every 5 ms, the first within 5 ms
    fields = [event.split(b" ") for event in events]
    assert [int(f[1]) for f in fields] == list(range(1, len(events) + 1))
    assert all(before <= int(f[2]) <= time.monotonic_ns() and len(e) == 100 for f, e in zip(fields, events,
                                                                                              strict=True))
    await asyncio.sleep(0.03)
    assert transport.take() == b""  # the timer stopped with the connection


@async_test
async def test_events_end_ends_every_open_stream() -> None:
    transports = [FakeTransport() for _ in range(3)]
    protocols = [upstream.UpstreamProtocol() for _ in transports]
    for proto, transport in zip(protocols, transports, strict=True):
        proto.connection_made(cast(asyncio.Transport, transport))
    for proto in protocols[:2]:
        proto.data_received(b"GET /events/1 HTTP/1.1\r\nhost: x\r\n\r\n")
    protocols[2].data_received(b"GET /events/end HTTP/1.1\r\nhost: x\r\n\r\n")
    assert transports[2].take().endswith(b'\r\n\r\n{"ended":2}')
    assert all(t.take().endswith(b"\r\n\r\n0\r\n\r\n") and t.closed for t in transports[:2])
    assert upstream.EventStream.live == set()


def test_ending_the_streams_of_an_upstream_that_is_gone_is_no_error() -> None:
    streams.end_streams(streams.Upstream(port=1, pid=0))


# The load clients


def echo_client(window: stream_clients.Window) -> tuple[stream_clients.EchoClient, FakeTransport]:
    client, transport = stream_clients.EchoClient(window, 8), FakeTransport()
    client.connection_made(cast(asyncio.Transport, transport))
    return client, transport


def accepted(client: stream_clients.EchoClient) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: %s\r\n\r\n" % websocket.accept(client.key)


@async_test
async def test_the_echo_client_handshakes_then_plays_ping_pong() -> None:
    window = stream_clients.Window()
    client, transport = echo_client(window)
    assert transport.take().startswith(b"GET /ws HTTP/1.1\r\n")
    client.data_received(accepted(client)[:10])
    assert not client.open.done()
    client.data_received(accepted(client)[10:])
    assert client.open.done() and client.upgraded
    client.send(time.perf_counter())
    assert websocket.decode(transport.take())[1:3] == (websocket.BINARY, bytes(range(8)))  # type: ignore[index]
    window.measuring = True
    client.data_received(client.expected)
    client.data_received(client.expected[:3])
    client.data_received(client.expected[3:] + client.expected)
    assert len(window.latencies) == 3 and transport.take() == client.frame * 3
    window.running = False
    client.data_received(client.expected)
    assert len(window.latencies) == 4 and transport.take() == b""
    client.close()
    assert websocket.decode(transport.take())[1] == websocket.CLOSE and transport.closed  # type: ignore[index]


@async_test
async def test_the_echo_client_fails_on_a_refused_handshake_and_on_wrong_bytes() -> None:
    window = stream_clients.Window()
    client, transport = echo_client(window)
    client.data_received(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
    with pytest.raises(RuntimeError, match="403 Forbidden"):
        await client.open
    assert transport.closed
    client, transport = echo_client(window)
    client.data_received(accepted(client) + b"\x81\x08notmine!")
    assert "unexpected bytes" in window.failures[0] and transport.closed
    client.connection_lost(None)
    lost, _ = echo_client(window)
    lost.connection_lost(OSError("reset"))
    with pytest.raises(ConnectionError):
        await lost.open
    assert window.connections_lost == 2


def event(sequence: int, written: int) -> bytes:
    text = b"data: %d %d pad\n\n" % (sequence, written)
    return b"%x\r\n%s\r\n" % (len(text), text)


@async_test
async def test_the_event_client_times_each_event_and_counts_gaps() -> None:
    window = stream_clients.Window()
    client, transport = stream_clients.EventClient(window, 40), FakeTransport()
    client.connection_made(cast(asyncio.Transport, transport))
    assert transport.take() == b"GET /events/40 HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
    client.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         + event(1, 0))
    assert client.open.done() and window.latencies == []  # not measuring yet
    window.measuring = True
    now = time.monotonic_ns()
    both = event(2, now) + event(5, now)
    client.data_received(both[:20])
    client.data_received(both[20:])
    assert len(window.latencies) == 2 and all(0 <= s < 1 for s in window.latencies) and window.lost == 2
    client.data_received(b"0\r\n\r\n")
    assert window.failures == ["the event stream ended"] and transport.closed


@async_test
async def test_the_event_client_fails_on_a_status_or_garbage() -> None:
    window = stream_clients.Window()
    client = stream_clients.EventClient(window, 1)
    client.connection_made(cast(asyncio.Transport, FakeTransport()))
    client.data_received(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
    with pytest.raises(RuntimeError, match="status 502"):
        await client.open
    client = stream_clients.EventClient(window, 1)
    client.connection_made(cast(asyncio.Transport, FakeTransport()))
    client.data_received(b"\x00garbage\r\n\r\n")
    assert "unreadable response" in window.failures[-1]
    client = stream_clients.EventClient(window, 1)
    client.connection_lost(None)
    with pytest.raises(ConnectionError):
        await client.open


def test_percentiles() -> None:
    assert stream_clients.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0
    assert stream_clients.percentile([1.0, 2.0], 0.99) == 2.0
    assert stream_clients.percentile([], 0.5) != stream_clients.percentile([], 0.5)  # NaN


@async_test
async def test_both_clients_against_the_upstream_on_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    server = await asyncio.get_running_loop().create_server(upstream.UpstreamProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        echoed = await stream_clients.ping_pong(port, 4, 32, 0.05, 0.2)
        heard = await stream_clients.listen(port, 4, 100, 0.05, 0.3)
    assert capsys.readouterr().out == "start\nstop\n" * 2
    assert echoed["errors"] == "" and echoed["messages"] > 50 and echoed["p50_ms"] <= echoed["p99_ms"]
    assert heard["errors"] == "" and heard["offered_per_s"] == 400 and 200 <= heard["events_per_s"] <= 600


def test_a_failing_client_run_exits_1_with_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert stream_clients.main(["ws", "--port", "1", "--seconds", "0.1", "--warmup", "0"]) == 1
    assert "stream client: ConnectionRefusedError" in capsys.readouterr().err


# The suite's side: the client's lines, the notes, the report


class FakeClient:
    def __init__(self, out: str, err: str) -> None:
        self.stdout = io.StringIO(out)
        self.err = err

    def communicate(self, timeout: float) -> tuple[str, str]:
        return self.stdout.read(), self.err


def test_the_suite_reads_the_clients_lines_or_its_error() -> None:
    client = FakeClient("start\nstop\n{}\n", "")
    streams.expect(client, "start")  # type: ignore[arg-type]
    streams.expect(client, "stop")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="said '', not 'start': stream client: OSError: refused"):
        streams.expect(FakeClient("", "stream client: OSError: refused\n"), "start")  # type: ignore[arg-type]


def stream_rows() -> dict[str, dict[str, Any]]:
    ws = {"gateway": {"median": {"messages_per_s": 40_000.0, "p99_ms": 2.0, "cpu_us_per_message": 10.0,
                                 "client_cpu_share": 0.3, "upstream_cpu_share": 0.25, "errors": ""}},
          "nginx": {"median": {"messages_per_s": 80_000.0, "p99_ms": 1.0, "cpu_us_per_message": 5.0,
                               "client_cpu_share": 0.6, "upstream_cpu_share": 0.35, "errors": ""}}}
    sse = {"gateway": {"median": {"events_per_s": 20_000.0, "cpu_us_per_event": 15.0, "events_lost": 0,
                                  "client_cpu_share": 0.15, "errors": ""}},
           "nginx": {"median": {"events_per_s": 20_000.0, "cpu_us_per_event": 12.0, "events_lost": 3,
                                "errors": "3 events lost"}}}
    return {"websocket": ws, "sse": sse}


def test_the_load_note_gives_the_span_of_the_load_cores_use() -> None:
    rows = stream_rows()
    assert "used 30%-60% of the load core and the upstream 25%-35%" in suite.load_note(rows["websocket"])
    assert "used 15%-15% of the load core and the upstream -" in suite.load_note(rows["sse"])


def test_the_streams_tables_and_chart_panels() -> None:
    rows = stream_rows()
    section = report.scenario_section({"title": "5a. WebSocket echo", "kind": "websocket", "subject": "gateway",
                                       "rows": rows["websocket"], "note": "note"})
    assert "| gateway | 40,000 | - | 2.00 | 10.0 | - | 30% | 25% |" in section
    assert "| gateway ÷ nginx | 0.50x | - | 2.00x | 2.00x |" in section
    section = report.scenario_section({"title": "5b. SSE", "kind": "sse", "subject": "gateway", "rows": rows["sse"]})
    assert "| nginx ¹ | 20,000 | - | - | - | 12.0 | - | 3 | - | - |" in section and "¹ nginx: 3 events lost" in section
    results = {"scenarios": {key: {"rows": value} for key, value in rows.items()}, "settings": {}}
    panels = report.chart_panels(results)
    assert [title for title, _, _ in panels] == ["WebSocket echo messages/s", "streams: CPU µs per message / event"]
    assert panels[1][1] == {"WebSocket message": {"gateway": 10.0, "nginx": 5.0},
                            "SSE event": {"gateway": 15.0, "nginx": 12.0}}
    assert report.stream_panels({"scenarios": {"streams": {"skipped": "failed"}}}) == []


def test_a_client_result_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    async def work() -> dict[str, Any]:
        return {"messages": 3}

    assert stream_clients.run(work()) == 0
    assert json.loads(capsys.readouterr().out) == {"messages": 3}
