"""Errors the gateway answers with, and the JSON body every error response carries.

A stage raises a ``GatewayError`` subclass; ``gateway.app`` (the single error boundary) turns it into
``{"error": CODE, "message": TEXT, "status": N, "request_id": ID}``. The status and code are class
attributes so an error's HTTP meaning is visible where it is defined.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a client-safe message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "the gateway failed to handle the request"
    # a 5xx is logged per request unless its cause is logged once per state change where it is known
    # (a dependency outage: Redis behind the rate limiter, say), so an outage is not one line a request
    logged_once: ClassVar[bool] = False

    def __init__(self, message: str | None = None, *, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.message = message or self.default_message
        self.headers = headers
        super().__init__(self.message)


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    default_message = "the request is malformed"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    default_message = "the request needs valid credentials"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    default_message = "the credentials do not allow this request"


class RouteNotFound(GatewayError):
    status = 404
    code = "route_not_found"
    default_message = "no route matches this request"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    default_message = "the route does not allow this method"

    def __init__(self, allowed: frozenset[str]) -> None:
        allow = ", ".join(sorted(allowed)).encode("ascii")
        super().__init__(headers=((b"allow", allow),))


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "the request body is larger than the gateway accepts"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "request_header_fields_too_large"
    default_message = "the request line and headers are larger than the gateway accepts"


class TooManyRequests(GatewayError):
    """A rate limit refused the request (429); carries Retry-After."""

    status = 429
    code = "rate_limited"
    default_message = "too many requests"


class BadGateway(GatewayError):
    status = 502
    code = "upstream_unavailable"
    default_message = "the upstream could not be reached or broke the connection"


class UpstreamError(BadGateway):
    """The upstream refused, reset or broke the connection, or sent a malformed response (502)."""


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"
    default_message = "the gateway cannot serve this request now"


class GatewayTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    default_message = "the upstream did not answer in time"


class UpstreamTimeout(GatewayTimeout):
    """The upstream did not connect or send in time (504)."""


def error_body(status: int, code: str, message: str, request_id: str) -> bytes:
    """The JSON body of an error response (DESIGN.md, interface contract)."""
    return orjson.dumps({"error": code, "message": message, "status": status, "request_id": request_id})
