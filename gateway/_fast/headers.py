"""The proxy's header rules (see ``headers_py``): compiled when built, else the pure-Python twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("headers")

if TYPE_CHECKING:  # both builds share headers_py's API; type-check against it
    from gateway._fast.headers_py import (
        HOP_BY_HOP,
        connection_tokens,
        host_of,
        request_head,
        request_info,
        response_headers,
    )
else:
    HOP_BY_HOP = _impl.HOP_BY_HOP
    connection_tokens = _impl.connection_tokens
    host_of = _impl.host_of
    request_head = _impl.request_head
    request_info = _impl.request_info
    response_headers = _impl.response_headers

IMPLEMENTATION = kind(_impl)

__all__ = ["HOP_BY_HOP", "IMPLEMENTATION", "connection_tokens", "host_of", "request_head", "request_info",
           "response_headers"]
