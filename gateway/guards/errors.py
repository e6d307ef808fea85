"""The answers of the connection guards: JSON errors written before the request is read, then close."""

from __future__ import annotations

import math

from gateway.errors import Forbidden, GatewayError, ServiceUnavailable


class ClientBanned(Forbidden):
    code = "client_banned"
    default_message = "this client is temporarily banned after repeatedly exceeding the gateway's limits"

    def __init__(self, seconds_left: float) -> None:
        retry = b"%d" % max(1, math.ceil(seconds_left))
        super().__init__(headers=((b"retry-after", retry),))


class TooManyConnections(GatewayError):
    status = 429
    code = "too_many_connections"
    default_message = "this client has too many open connections"

    def __init__(self) -> None:
        super().__init__(headers=((b"retry-after", b"1"),))


class ServerBusy(ServiceUnavailable):
    code = "server_busy"
    default_message = "the gateway has too many open connections"

    def __init__(self) -> None:
        super().__init__(headers=((b"retry-after", b"1"),))
