"""The proxy's header rules (gateway/_fast/headers), against the compiled build and the pure twin."""

from __future__ import annotations

import random
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


# Names exactly as long as a dropped name but different: the compiled build classes names by length first.
NEAR_MISSES = [b"tf", b"hosu", b"expecu", b"trailes", b"upgradf", b"connectiom", b"keep-alivf", b"x-request-ie",
               b"content-lengti", b"http2-settingz", b"x-forwarded-fos", b"proxy-connectioo", b"x-forwarded-hosu",
               b"transfer-encodinh", b"x-forwarded-protp", b"proxy-authenticatf", b"proxy-authorizatioo"]
DROPPED = sorted(IMPLS["python"].REQUEST_DROP)


def test_request_head_keeps_names_as_long_as_dropped_ones(impl: ModuleType) -> None:
    data, _ = head(impl, [(name, b"v") for name in NEAR_MISSES] + [(name, b"v") for name in DROPPED])
    assert lines(data)[1:len(NEAR_MISSES) + 1] == [name + b": v" for name in NEAR_MISSES]
    assert lines(data)[len(NEAR_MISSES) + 1] == b"host: up:9000"


def test_request_head_drops_underscores_anywhere(impl: ModuleType) -> None:
    data, _ = head(impl, [(b"_a", b"1"), (b"a_", b"2"), (b"x_forwarded_for", b"3"), (b"_", b"4"), (b"ok", b"5")])
    assert lines(data)[1:3] == [b"ok: 5", b"host: up:9000"]


def test_request_head_long_and_many_headers(impl: ModuleType) -> None:
    many = [(b"x-h%d" % i, b"v" * (i % 7)) for i in range(1000)]
    big = [(b"cookie", b"c" * 100_000), (b"x-" + b"n" * 5000, b"")]
    data, framing = head(impl, many + big)
    assert lines(data)[1:1003] == [b"%s: %s" % pair for pair in many + big]
    assert framing == b""


def test_request_head_empty_values(impl: ModuleType) -> None:
    data, framing = head(impl, [(b"x-empty", b""), (b"host", b""), (b"content-length", b""),
                                (b"x-forwarded-for", b""), (b"connection", b"")], preserve_host=True)
    assert lines(data) == [b"POST /p?q=1 HTTP/1.1", b"x-empty: ", b"host: up:9000", b"x-forwarded-for: 10.0.0.9",
                           b"x-forwarded-proto: http", b"x-request-id: rid", b"", b""]
    assert framing == b""


def test_request_head_repeated_headers(impl: ModuleType) -> None:
    forwarded = [(b"x-forwarded-for", b"%d" % i) for i in range(12)]
    data, framing = head(impl, [(b"x-forwarded-for", b""), *forwarded, (b"x-forwarded-for", b""), (b"host", b"a"),
                                (b"host", b"b"), (b"content-length", b"7"), (b"content-length", b"0")])
    assert b"\r\nx-forwarded-for: " + b", ".join(b"%d" % i for i in range(12)) + b", , 10.0.0.9\r\n" in data
    assert b"x-forwarded-host: b\r\n" in data
    assert b"content-length: 0\r\n" in data
    assert framing == b""
    data, framing = head(impl, [(b"transfer-encoding", b"gzip"), (b"content-length", b"9")])
    assert b"content-length" not in data
    assert framing == b"chunked"


@pytest.mark.parametrize("connection", [[b"Keep-Alive"], [b"close"], [b"Upgrade"], [b"", b"keep-alive"],
                                        [b"keep-alive", b"x-b"], [b"x-a, X-B ,,"], [b"keep-alive, te, x-a"]])
def test_request_head_connection_named_headers(impl: ModuleType, connection: list[bytes]) -> None:
    named = {t.strip().lower() for value in connection for t in value.split(b",")} & {b"x-a", b"x-b"}
    fields = [(b"connection", value) for value in connection] + [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]
    data, _ = head(impl, fields)
    kept = [b"%s: %s" % (n, v) for n, v in fields[len(connection):] if n not in named]
    assert lines(data)[1:len(kept) + 2] == [*kept, b"host: up:9000"]


def test_request_head_other_header_shapes(impl: ModuleType) -> None:
    """Pairs that are not tuples take the general code (compiled too) and mean the same."""
    data, framing = head(impl, [[b"accept", b"*/*"], (b"content-length", b"3")])
    assert lines(data)[1] == b"accept: */*"
    assert framing == b"3"


def test_response_headers_is_a_new_list(impl: ModuleType) -> None:
    headers = [(b"server", b"x"), (b"content-length", b"2")]
    out = impl.response_headers(headers)
    assert out == headers
    assert out is not headers
    out.append((b"x-request-id", b"r"))
    assert len(headers) == 2


def test_response_headers_names_and_connection(impl: ModuleType) -> None:
    near = [(name, b"v") for name in NEAR_MISSES]
    kept = [(b"host", b"h"), (b"expect", b"e"), (b"x-forwarded-for", b"f"), (b"a_b", b"u"), (b"empty", b"")]
    hop = [(b"te", b"t"), (b"trailer", b"t"), (b"upgrade", b"u"), (b"keep-alive", b"k"), (b"proxy-connection", b"p"),
           (b"transfer-encoding", b"c"), (b"proxy-authenticate", b"a"), (b"proxy-authorization", b"a"),
           (b"x-request-id", b"r")]
    assert impl.response_headers(near + hop + kept + [(b"connection", b"Close")]) == near + kept
    assert impl.response_headers([(b"connection", b""), (b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")]) == [
        (b"x-b", b"2")]
    assert impl.response_headers([[b"x-a", b"1"]]) == [(b"x-a", b"1")]
    many = [(b"x-%d" % i, b"v") if i % 3 else (b"keep-alive", b"k") for i in range(200)]
    assert impl.response_headers(many) == [(n, v) for n, v in many if n != b"keep-alive"]


def test_request_info_cases(impl: ModuleType) -> None:
    assert impl.request_info([(b"host", b"A.example"), (b"host", b"[::1]:80"), (b"x-request-id", b"")]) == ("[::1]", "")
    assert impl.request_info([(b"host", b"\xc0B.example:1"), (b"x-request-id", b"\xe9")]) == ("\xe0b.example", "\xe9")
    assert impl.request_info([(b"host", b"[::1"), (b"x-request-id", b"a"), (b"x-request-id", b"b")]) == ("[::1", "b")
    assert impl.request_info([(b"host", b":80"), (b"hosu", b"x")]) == ("", "")
    assert impl.request_info([(b"host", b"A:\xc0"), (b"host", b"[::A]\xc0")]) == ("[::a]", "")
    assert impl.request_info([(b"host", b"")]) == ("", "")
    assert impl.request_info([[b"host", b"X"]]) == ("x", "")


def test_compiled_matches_python_on_random_headers() -> None:
    """The compiled build's C common cases against the pure twin, on random mixes of the rules' names."""
    if "compiled" not in IMPLS:
        pytest.skip("extensions not built")
    compiled, python = IMPLS["compiled"], IMPLS["python"]
    rng = random.Random(7)
    names = [*NEAR_MISSES, *DROPPED, b"accept", b"a_b", b"x-a", b"x-b"]
    values = [b"", b"0", b"5", b"x-a", b"keep-alive", b"Close", b"x-a, x-b", b"h.Example:8080", b"[::1]:1", b"\xc0",
              b"A:\xc0"]
    for _ in range(3000):
        count = rng.randrange(12) if rng.random() < 0.9 else rng.randrange(60, 90)  # 64: see headers_ops.pxd
        headers = [(rng.choice(names), rng.choice(values)) for _ in range(count)]
        preserve = rng.random() < 0.5
        args = (b"GET", b"/t", headers, b"1.2.3.4", b"https", b"id", b"up", preserve)
        assert compiled.request_head(*args) == python.request_head(*args), headers
        assert compiled.response_headers(headers) == python.response_headers(headers), headers
        assert compiled.request_info(headers) == python.request_info(headers), headers
