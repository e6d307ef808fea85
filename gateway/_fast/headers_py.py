# cython: annotation_typing=False
"""Header rules of the proxy, on the hot path: what goes upstream, what comes back.

RFC 9110 section 7.6.1: hop-by-hop headers, and any header the Connection header names, are removed in
both directions. Headers the gateway sets itself (Host, X-Forwarded-*, X-Request-ID, framing) are
dropped from the client's and written fresh. Header names with an underscore are dropped as nginx does
(some servers read ``X_Forwarded_For`` as ``X-Forwarded-For``), and so is h2c's ``HTTP2-Settings``.
Names arrive lower-cased from the protocol and the upstream parser.

Compiled, each function first tries its common case in C (``headers_ops``: names classed by length, the
request head written into one bytes object); the code here is then the general case, and all of it in
plain Python. Compiled, before and after that C (``python -m bench.micro_headers``; callgrind instructions
per request of ``bench.micro_pipeline``): request_head 630 -> 135 ns, 5,900 -> 1,020; response_headers
180 -> 53 ns, 2,900 -> 440; request_info 125 -> 68 ns, 1,490 -> 560.
"""

from __future__ import annotations

import functools

import gateway._fast.headers_ops as ops

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-authorization", b"proxy-authenticate",
})
REQUEST_SET_BY_PROXY = frozenset({
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-request-id",
    b"http2-settings",  # belongs to an h2c upgrade, which is never forwarded
})
REQUEST_DROP = HOP_BY_HOP | REQUEST_SET_BY_PROXY
RESPONSE_DROP = HOP_BY_HOP | {b"x-request-id"}
# Connection values that name no other header: the common case skips the token parsing entirely
PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"})


@functools.lru_cache(maxsize=256)
def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a Connection header lists, beyond the hop-by-hop ones already dropped (cached:
    the same few values, like ``keep-alive``, come back on every response)."""
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip()) - HOP_BY_HOP


def request_info(headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The request's host (lower-cased, without port) and the X-Request-ID it carries ("" if none)."""
    if ops.FAST:
        info = ops.request_info(headers)
        if info is not None:
            return info
    host = ""
    request_id = ""
    for name, value in headers:
        if name == b"host":
            host = host_of(value.decode("latin-1"))
        elif name == b"x-request-id":
            request_id = value.decode("latin-1")
    return host, request_id


def host_of(header: str) -> str:
    """The host of a Host header value, lower-cased, without the port."""
    if header.startswith("["):  # an IPv6 literal: [::1]:8080
        end = header.find("]")
        return header[: end + 1].lower() if end > 0 else header.lower()
    colon = header.find(":")
    return (header if colon < 0 else header[:colon]).lower()


def request_head(  # noqa: PLR0912, PLR0915, PLR0917 - one flat pass with C-typed positional arguments, compiled
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], client_ip: bytes, scheme: bytes,
    request_id: bytes, upstream_host: bytes, preserve_host: bool,
) -> tuple[bytes, bytes]:
    """The request line and headers for the upstream, and the body framing: b"" (no body), the
    Content-Length value, or b"chunked". The head is one join of its parts (one allocation)."""
    if ops.FAST:
        fast = ops.request_head(method, target, headers, client_ip, scheme, request_id, upstream_host, preserve_host)
        if fast is not None:
            return fast
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    host = forwarded_for = length = connection = b""
    chunked = False
    for name, value in headers:
        if name not in REQUEST_DROP:
            if b"_" not in name:
                parts.append(name)
                parts.append(b": ")
                parts.append(value)
                parts.append(b"\r\n")
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":  # repeated: a list-valued header
            forwarded_for = forwarded_for + b", " + value if forwarded_for else value
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True  # llhttp accepts it only when chunked comes last
        elif name == b"connection":
            connection = connection + b"," + value if connection else value
    if connection and connection not in PLAIN_CONNECTION:  # rare: it names headers to drop as well
        named = connection_tokens(connection)
        if named:
            kept = [method, b" ", target, b" HTTP/1.1\r\n"]
            for i in range(4, len(parts), 4):
                if parts[i] not in named:
                    kept.extend(parts[i:i + 4])
            parts = kept
    parts.append(b"host: ")
    parts.append(host if (preserve_host and host) else upstream_host)
    parts.append(b"\r\nx-forwarded-for: ")
    if forwarded_for:
        parts.append(forwarded_for)
        parts.append(b", ")
    parts.append(client_ip)
    parts.append(b"\r\nx-forwarded-proto: ")
    parts.append(scheme)
    parts.append(b"\r\nx-request-id: ")
    parts.append(request_id)
    parts.append(b"\r\n")
    if host:
        parts.append(b"x-forwarded-host: ")
        parts.append(host)
        parts.append(b"\r\n")
    framing = b""
    if chunked:
        framing = b"chunked"
        parts.append(b"transfer-encoding: chunked\r\n")
    elif length:
        parts.append(b"content-length: ")
        parts.append(length)
        parts.append(b"\r\n")
        if length != b"0":
            framing = length
    parts.append(b"\r\n")
    return b"".join(parts), framing


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers without hop-by-hop ones (framing is the protocol's job), in a new
    list the caller may extend."""
    if ops.FAST:
        kept = ops.response_headers(headers)
        if kept is not None:
            return kept
    out = []
    connection = b""
    for name, value in headers:
        if name in RESPONSE_DROP:
            if name == b"connection":
                connection = connection + b"," + value if connection else value
            continue
        out.append((name, value))
    named = connection_tokens(connection) if connection and connection not in PLAIN_CONNECTION else None
    if named:
        out = [(n, v) for n, v in out if n not in named]
    return out
