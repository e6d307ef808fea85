"""The exchange: one request as it travels through the stages, and the stage interface.

A stage is an object with ``async def __call__(self, ex)`` and a ``next`` stage; it may answer early
(raise a ``GatewayError``, or send a response) or call ``await self.next(ex)``. A stage that changes the
response registers a hook with ``ex.on_response(hook)``; hooks run in reverse order of registration on the
status and headers just before they are sent, so the response passes back through the stages in reverse.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway._fast.protocol import Message, Receive, Scope, Send

Headers = list[tuple[bytes, bytes]]
ResponseHook = Callable[["Exchange", int, Headers], None]


class Exchange:
    """Per-request state shared by the stages (slots: no per-request dict)."""

    __slots__ = (
        "bytes_received", "bytes_sent", "consumed", "host", "params", "path", "receive", "request_id",
        "response_hooks", "response_started", "route", "scope", "send", "started_at", "status", "subject",
        "target", "upstream_time",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, started_at: float) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started_at = started_at
        self.request_id = ""
        self.host = ""
        self.path = ""
        self.route: Any = None
        self.params: dict[str, str] | None = None
        self.consumed = 0
        self.status = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.target: Any = None
        self.upstream_time = 0.0  # seconds spent on the upstream exchange (metrics: added latency)
        self.subject: str | None = None  # who the request authenticated as (set by the auth stages)
        self.response_started = False
        self.response_hooks: list[ResponseHook] | None = None

    def on_response(self, hook: ResponseHook) -> None:
        """Registers a hook that may change the status line's headers before they are sent."""
        if self.response_hooks is None:
            self.response_hooks = []
        self.response_hooks.append(hook)

    def begin_response(self, status: int, headers: Headers) -> None:
        """Passes the status and headers through the response hooks and adds ``x-request-id``: the
        response has started (what ``start_response`` sends; the proxy's fast lane writes it itself)."""
        if self.response_hooks is not None:
            for hook in reversed(self.response_hooks):
                hook(self, status, headers)
        headers.append((b"x-request-id", self.request_id.encode("latin-1")))
        self.status = status
        self.response_started = True

    def start_response(self, status: int, headers: Headers) -> Awaitable[None]:
        """Sends the status and headers through the response hooks; adds ``x-request-id``.

        Returns what ``send`` returns (not a coroutine function: one frame less per response)."""
        self.begin_response(status, headers)
        return self.send({"type": "http.response.start", "status": status, "headers": headers})

    def switch_protocols(self, headers: Headers, tunnel: object) -> Awaitable[None]:
        """Answers a WebSocket upgrade with 101 through the response hooks and hands the client's
        connection to ``tunnel`` (the protocol's ``gateway.tunnel`` message: gateway.realtime)."""
        self.begin_response(101, headers)
        return self.send({"type": "gateway.tunnel", "status": 101, "headers": headers, "tunnel": tunnel})

    def send_body(self, body: bytes, more_body: bool) -> Awaitable[None]:
        self.bytes_sent += len(body)
        message: Message = {"type": "http.response.body", "body": body, "more_body": more_body}
        return self.send(message)


class Stage:
    """Base of request stages: ``next`` is the following stage (None for the last one)."""

    next: Stage | None = None

    async def __call__(self, ex: Exchange) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def chain(stages: Sequence[Stage]) -> Stage:
    """Links stages in order and returns the first; built once per route at config load."""
    for stage, following in itertools.pairwise(stages):
        stage.next = following
    return stages[0]
