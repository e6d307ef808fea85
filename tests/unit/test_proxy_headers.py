"""The proxy's header rules: ``ProxyStage.request_head`` and ``gateway._fast.headers.response_headers``.

Hop-by-hop headers and those the Connection header names are dropped both ways (RFC 9110 7.6.1); the proxy
sets Host, X-Forwarded-For/Proto/Host and X-Request-ID itself, and frames the body by length or chunks.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from gateway._fast.headers import response_headers
from gateway._fast.metrics import Recorder
from gateway.exchange import Exchange, Headers
from gateway.proxy.pool import Pool
from gateway.proxy.stage import ProxyStage
from gateway.proxy.target import Target
from gateway.upstreams.config import UpstreamSpec
from gateway.upstreams.upstream import Upstream

CLIENT = ("203.0.113.7", 55000)
TARGET = Target("10.0.0.1", 9000)


async def never(*args: Any) -> Any:  # pragma: no cover - request_head neither reads nor sends
    raise AssertionError("request_head must not touch the body")


def exchange(headers: Headers, *, client: tuple[str, int] | None = CLIENT, scheme: str = "http",
             method: str = "GET") -> Exchange:
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": scheme, "path": "/x",
        "raw_path": b"/x", "query_string": b"", "headers": headers, "client": client,
        "server": ("127.0.0.1", 8080),
    }
    ex = Exchange(scope, never, never, 0.0)
    ex.request_id = "req-1"
    return ex


def stage(target: Target = TARGET, preserve_host: bool = False) -> tuple[ProxyStage, Pool]:
    upstream = Upstream(UpstreamSpec("svc", (target,)))
    recorder = Recorder(memoryview(bytearray(8 * 4096)).cast("q"), defaultdict(int))  # never records here
    return ProxyStage(upstream, None, preserve_host, recorder), upstream.pick()


def head(headers: Headers, *, target: Target = TARGET, preserve_host: bool = False,
         **scope: Any) -> tuple[bytes, Headers, bytes]:
    """The request line, the headers and the body framing ``request_head`` produces."""
    proxy, pool = stage(target, preserve_host)
    ex = exchange(headers, **scope)
    data, framing = proxy.request_head(ex, ex.scope["method"], b"/x?y=1", pool)
    assert data.endswith(b"\r\n\r\n")
    line, *rest = data[:-4].split(b"\r\n")
    pairs = [tuple(field.split(b": ", 1)) for field in rest]
    assert all(len(p) == 2 for p in pairs)
    return line, [(p[0], p[1]) for p in pairs], framing


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


# --- request_head ---------------------------------------------------------------------------------------


def test_request_line_and_the_headers_the_proxy_sets() -> None:
    line, headers, framing = head([(b"host", b"api.example.com"), (b"accept", b"*/*")])

    assert line == b"GET /x?y=1 HTTP/1.1"
    assert headers == [
        (b"accept", b"*/*"),
        (b"host", b"10.0.0.1:9000"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"req-1"),
        (b"x-forwarded-host", b"api.example.com"),
    ]
    assert framing == b""


def test_hop_by_hop_request_headers_are_dropped_and_the_rest_keep_their_order() -> None:
    _, headers, _ = head([
        (b"host", b"h"), (b"a", b"1"), (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"), (b"te", b"trailers"), (b"trailer", b"x-sum"),
        (b"upgrade", b"websocket"), (b"proxy-authorization", b"Basic Zm9vOmJhcg=="), (b"b", b"2"),
        (b"a", b"3"), (b"expect", b"100-continue"),
    ])
    kept = [(n, v) for n, v in headers if not n.startswith(b"x-") and n != b"host"]
    assert kept == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]


def test_headers_named_by_connection_are_dropped() -> None:
    _, headers, _ = head([
        (b"host", b"h"), (b"x-secret", b"s"), (b"x-other", b"o"), (b"x-kept", b"k"),
        (b"connection", b"keep-alive, X-Secret ,x-OTHER,, "),
    ])
    names = [n for n, _ in headers]
    assert b"x-secret" not in names
    assert b"x-other" not in names
    assert values(headers, b"x-kept") == [b"k"]


def test_connection_cannot_make_the_proxy_drop_its_own_headers() -> None:
    _, headers, framing = head([
        (b"host", b"h"), (b"content-length", b"3"), (b"connection", b"host, content-length, x-request-id"),
    ])
    assert values(headers, b"host") == [b"10.0.0.1:9000"]
    assert values(headers, b"content-length") == [b"3"]
    assert values(headers, b"x-request-id") == [b"req-1"]
    assert framing == b"3"


def test_client_supplied_forwarding_headers_are_replaced() -> None:
    _, headers, _ = head(
        [(b"host", b"real.example"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"evil.example"),
         (b"x-request-id", b"spoofed")],
    )
    assert values(headers, b"x-forwarded-proto") == [b"http"]
    assert values(headers, b"x-forwarded-host") == [b"real.example"]
    assert values(headers, b"x-request-id") == [b"req-1"]


def test_x_forwarded_proto_is_the_scheme() -> None:
    _, headers, _ = head([(b"host", b"h")], scheme="https")
    assert values(headers, b"x-forwarded-proto") == [b"https"]


@pytest.mark.parametrize(
    ("incoming", "client", "expected"),
    [
        ([], CLIENT, b"203.0.113.7"),
        ([(b"x-forwarded-for", b"198.51.100.1")], CLIENT, b"198.51.100.1, 203.0.113.7"),
        ([(b"x-forwarded-for", b"198.51.100.1, 192.0.2.9")], CLIENT, b"198.51.100.1, 192.0.2.9, 203.0.113.7"),
        ([], None, b"unknown"),
    ],
    ids=["new", "append", "append-list", "no-client"],
)
def test_x_forwarded_for_appends_the_client(incoming: Headers, client: Any, expected: bytes) -> None:
    _, headers, _ = head([(b"host", b"h"), *incoming], client=client)
    assert values(headers, b"x-forwarded-for") == [expected]


def test_x_forwarded_for_lines_are_combined() -> None:
    _, headers, _ = head([(b"host", b"h"), (b"x-forwarded-for", b"198.51.100.1"),
                          (b"x-forwarded-for", b"192.0.2.9")])
    assert values(headers, b"x-forwarded-for") == [b"198.51.100.1, 192.0.2.9, 203.0.113.7"]


@pytest.mark.parametrize(
    ("target", "host"),
    [
        (Target("10.0.0.1", 9000), b"10.0.0.1:9000"),
        (Target("backend.internal", 80), b"backend.internal"),
        (Target("::1", 8080), b"[::1]:8080"),
    ],
    ids=["ip-port", "default-port", "ipv6"],
)
def test_host_becomes_the_target_authority(target: Target, host: bytes) -> None:
    _, headers, _ = head([(b"host", b"api.example.com")], target=target)
    assert values(headers, b"host") == [host]
    assert values(headers, b"x-forwarded-host") == [b"api.example.com"]


def test_preserve_host_keeps_the_client_host() -> None:
    _, headers, _ = head([(b"host", b"api.example.com")], preserve_host=True)
    assert values(headers, b"host") == [b"api.example.com"]
    assert values(headers, b"x-forwarded-host") == [b"api.example.com"]


def test_preserve_host_without_a_host_uses_the_target() -> None:
    _, headers, _ = head([], preserve_host=True)  # an HTTP/1.0 request may omit Host
    assert values(headers, b"host") == [b"10.0.0.1:9000"]
    assert values(headers, b"x-forwarded-host") == []


@pytest.mark.parametrize(
    ("incoming", "framing", "length", "encoding"),
    [
        ([(b"content-length", b"5")], b"5", [b"5"], []),
        ([(b"content-length", b"0")], b"", [b"0"], []),
        ([(b"transfer-encoding", b"chunked")], b"chunked", [], [b"chunked"]),
        ([], b"", [], []),
    ],
    ids=["length", "empty", "chunked", "no-body"],
)
def test_body_framing(incoming: Headers, framing: bytes, length: list[bytes], encoding: list[bytes]) -> None:
    _, headers, got = head([(b"host", b"h"), *incoming], method="POST")
    assert got == framing
    assert values(headers, b"content-length") == length
    assert values(headers, b"transfer-encoding") == encoding


def test_tokens_of_every_request_connection_line_are_dropped() -> None:
    _, headers, _ = head([(b"host", b"h"), (b"x-secret", b"s"), (b"connection", b"x-secret"),
                          (b"connection", b"keep-alive")])
    assert values(headers, b"x-secret") == []


# --- response_headers --------------------------------------------------------------------------------------


def test_response_hop_by_hop_headers_and_request_id_are_dropped() -> None:
    out = response_headers([
        (b"content-type", b"text/plain"), (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"), (b"set-cookie", b"a=1"), (b"upgrade", b"h2c"),
        (b"proxy-authenticate", b"Basic"), (b"trailer", b"x-sum"), (b"x-request-id", b"upstream-id"),
        (b"set-cookie", b"b=2"), (b"content-length", b"12"),
    ])
    assert out == [
        (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
        (b"content-length", b"12"),
    ]


def test_response_headers_named_by_connection_are_dropped() -> None:
    out = response_headers([
        (b"x-internal", b"1"), (b"connection", b"close, X-Internal"), (b"x-public", b"2"),
    ])
    assert out == [(b"x-public", b"2")]


def test_response_headers_leave_the_input_alone() -> None:
    headers = [(b"connection", b"close"), (b"a", b"1")]
    out = response_headers(headers)
    assert out == [(b"a", b"1")]
    assert headers == [(b"connection", b"close"), (b"a", b"1")]


def test_tokens_of_every_response_connection_line_are_dropped() -> None:
    out = response_headers([
        (b"x-internal", b"1"), (b"connection", b"x-internal"), (b"connection", b"keep-alive"),
    ])
    assert out == []
