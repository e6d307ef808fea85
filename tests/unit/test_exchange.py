"""The exchange and the stage chain (gateway/exchange.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.exchange import Exchange, Stage, chain


class Recording(Stage):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def __call__(self, ex: Exchange) -> None:
        self.seen.append(self.name)
        if self.next is not None:
            await self.next(ex)


def test_chain_links_stages_in_order() -> None:
    seen: list[str] = []
    first = chain([Recording("a", seen), Recording("b", seen), Recording("c", seen)])
    asyncio.run(first(Exchange({}, None, None, 0.0)))  # type: ignore[arg-type]
    assert seen == ["a", "b", "c"]


def test_response_hooks_run_in_reverse_and_request_id_is_added() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    ex = Exchange({}, None, send, 0.0)  # type: ignore[arg-type]
    ex.request_id = "rid-1"
    order: list[str] = []
    ex.on_response(lambda e, status, headers: (order.append("first"), headers.append((b"x-a", b"1"))))
    ex.on_response(lambda e, status, headers: (order.append("second"), headers.append((b"x-b", b"2"))))

    async def run() -> None:
        await ex.start_response(201, [])
        await ex.send_body(b"abc", False)

    asyncio.run(run())
    assert order == ["second", "first"]  # the response passes back through the stages in reverse
    assert sent[0]["status"] == 201
    assert sent[0]["headers"] == [(b"x-b", b"2"), (b"x-a", b"1"), (b"x-request-id", b"rid-1")]
    assert sent[1] == {"type": "http.response.body", "body": b"abc", "more_body": False}
    assert (ex.status, ex.bytes_sent, ex.response_started) == (201, 3, True)
