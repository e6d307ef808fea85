"""The proxy's header rules (gateway/_fast/headers), against the compiled build and the pure twin."""

from __future__ import annotations

from types import ModuleType

import pytest

from gateway._fast import implementations

IMPLS = implementations("headers")


@pytest.fixture(params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def head(impl: ModuleType, headers: list[tuple[bytes, bytes]], preserve_host: bool = False) -> tuple[bytes, bytes]:
    return impl.request_head(b"POST", b"/p?q=1", headers, b"10.0.0.9", b"http", b"rid", b"up:9000", preserve_host)


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def test_request_head_rules(impl: ModuleType) -> None:
    data, framing = head(impl, [
        (b"host", b"public.example"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
        (b"connection", b"keep-alive, x-hop"), (b"x-hop", b"1"), (b"te", b"trailers"), (b"x_evil", b"1"),
        (b"http2-settings", b"AAA"), (b"upgrade", b"h2c"), (b"x-request-id", b"theirs"), (b"accept", b"*/*"),
        (b"content-length", b"5"), (b"expect", b"100-continue"),
    ])
    assert lines(data) == [
        b"POST /p?q=1 HTTP/1.1", b"accept: */*", b"host: up:9000", b"x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9",
        b"x-forwarded-proto: http", b"x-request-id: rid", b"x-forwarded-host: public.example", b"content-length: 5",
        b"", b"",
    ]
    assert framing == b"5"


def test_request_head_framing_and_preserved_host(impl: ModuleType) -> None:
    data, framing = head(impl, [(b"host", b"a.example"), (b"transfer-encoding", b"chunked")], preserve_host=True)
    assert b"host: a.example\r\n" in data
    assert b"transfer-encoding: chunked\r\n" in data
    assert framing == b"chunked"
    data, framing = head(impl, [(b"host", b"a"), (b"content-length", b"0")])
    assert b"content-length: 0\r\n" in data
    assert framing == b""
    data, framing = head(impl, [])
    assert b"x-forwarded-host" not in data
    assert framing == b""


def test_response_headers_rules(impl: ModuleType) -> None:
    out = impl.response_headers([
        (b"content-type", b"application/json"), (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
        (b"connection", b"x-internal"), (b"x-internal", b"1"), (b"transfer-encoding", b"chunked"),
        (b"x-request-id", b"upstream's"), (b"content-length", b"2"),
    ])
    assert out == [(b"content-type", b"application/json"), (b"content-length", b"2")]


def test_request_info(impl: ModuleType) -> None:
    assert impl.request_info([(b"host", b"API.Example.com:8443"), (b"x-request-id", b"r-1")]) == (
        "api.example.com", "r-1")
    assert impl.request_info([]) == ("", "")
    assert impl.host_of("[::1]:8080") == "[::1]"
    assert impl.host_of("[::1") == "[::1"


def test_compiled_build_is_compiled() -> None:
    if "compiled" not in IMPLS:
        pytest.skip("extensions not built")
    assert IMPLS["compiled"].__file__.endswith(".so")
