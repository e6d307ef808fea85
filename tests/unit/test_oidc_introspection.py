"""RFC 7662 introspection (gateway/auth/oidc/introspection.py) and the client-credentials token
(client_credentials.py), with authlib's real client against a scriptable server on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.auth.oidc.client_credentials import ClientCredentials
from gateway.auth.oidc.config import IntrospectionSpec
from gateway.auth.oidc.discovery import ProviderMetadata, http_client
from gateway.auth.oidc.introspection import IntrospectionBusy, Introspector, TokenBucket
from gateway.auth.verify import TokenError
from gateway.errors import ServiceUnavailable
from tests.unit.test_oidc_support import OAuthServer, basic, provider


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    server = OAuthServer()
    server.metadata()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def introspector(server: OAuthServer, clock: Clock, **changes: Any) -> Introspector:
    spec = provider(server, **changes)
    client = http_client(spec)
    return Introspector(spec, ProviderMetadata(spec, client), client, clock=clock, monotonic=clock)


def answers(server: OAuthServer, table: dict[str, dict[str, Any]]) -> None:
    server.routes["/idp/introspect"] = lambda form: (200, orjson.dumps(table.get(form["token"], {"active": False})))


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 2.0, clock)
    assert bucket.take() and bucket.take() and not bucket.take()
    clock.now += 0.5
    assert bucket.take() and not bucket.take()
    clock.now += 100
    assert bucket.take() and bucket.take() and not bucket.take()  # never more than the burst


def test_active_inactive_cached_and_checked(server: OAuthServer) -> None:
    clock = Clock()
    now = int(clock.now)
    answers(server, {
        "good": {"active": True, "sub": "alice", "scope": "orders:read", "iss": server.url + "/idp", "aud": ["gw"],
                 "exp": now - 30, "client_id": "app"},  # expired, but within the leeway
        "nosub": {"active": True, "sub": 5},
        "other-iss": {"active": True, "iss": "https://evil.test"},
        "other-aud": {"active": True, "aud": "another-client"},
        "bad-aud": {"active": True, "aud": 5},
        "expired": {"active": True, "exp": now - 61},
        "early": {"active": True, "nbf": now + 61},
    })

    async def main() -> None:
        intro = introspector(server, clock)
        verified = await intro.verify(b"good")
        assert verified.subject == "alice" and verified.issuer == "corp" and "active" not in verified.claims
        assert verified.claims["scope"] == "orders:read" and verified.expires == now - 30 + 60  # exp + leeway
        form, auth = server.posted("/idp/introspect")[0]
        assert form == {"token": "good", "token_type_hint": "access_token"}
        assert auth == basic("gw", "gw-secret")
        assert (await intro.verify(b"good")).subject == "alice"
        assert intro.calls == 1  # cached
        assert (await intro.verify(b"nosub")).subject is None
        for token, message in [(b"unknown", "token inactive"), (b"other-iss", "wrong issuer"),
                               (b"other-aud", "wrong audience"), (b"bad-aud", "wrong audience"),
                               (b"expired", "token expired"), (b"early", "token not yet valid")]:
            for _ in range(2):
                with pytest.raises(TokenError) as info:
                    await intro.verify(token)
                assert info.value.description == message
        assert intro.calls == 8  # refusals are cached too
        for token in (b"a b", b"x" * 20_000, b"tok\xff"):
            with pytest.raises(TokenError, match="malformed token"):
                await intro.verify(token)
        assert intro.calls == 8  # never sent
        clock.now += 61  # past cache_ttl (and past good's exp + leeway)
        with pytest.raises(TokenError):
            await intro.verify(b"unknown")
        assert intro.calls == 9
        assert intro.state() == {"calls": 9, "refused": 0, "cached": 8, "failing": False}
        await intro.client.aclose()

    asyncio.run(main())


def test_concurrent_requests_share_one_call(server: OAuthServer) -> None:
    clock = Clock()
    answers(server, {"t": {"active": True, "sub": "a"}})
    server.delay = 0.2

    async def main() -> None:
        intro = introspector(server, clock)
        results = await asyncio.gather(*(intro.verify(b"t") for _ in range(5)))
        assert {r.subject for r in results} == {"a"} and intro.calls == 1
        server.routes["/idp/introspect"] = (500, b"{}")
        outcomes = await asyncio.gather(*(intro.verify(b"u") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, ServiceUnavailable) for o in outcomes)
        await intro.client.aclose()

    asyncio.run(main())


def test_calls_are_bounded_by_rate_and_concurrency(server: OAuthServer) -> None:
    clock = Clock()
    answers(server, {})

    async def main() -> None:
        intro = introspector(server, clock, introspection=IntrospectionSpec(max_calls_per_second=2, max_concurrent=1),
                             timeout=0.3)
        for token in (b"a", b"b"):
            with pytest.raises(TokenError):
                await intro.verify(token)
        with pytest.raises(IntrospectionBusy) as info:
            await intro.verify(b"c")
        assert info.value.status == 503 and info.value.headers == ((b"retry-after", b"1"),)
        with pytest.raises(TokenError):  # cached answers are never limited
            await intro.verify(b"a")
        clock.now += 10
        server.delay = 0.6  # one in flight holds the only slot past the timeout
        results = await asyncio.gather(intro.verify(b"d"), intro.verify(b"e"), return_exceptions=True)
        assert any(isinstance(r, IntrospectionBusy) for r in results)
        assert intro.refused == 2
        await intro.client.aclose()

    asyncio.run(main())


def test_provider_failures_are_503_logged_once(server: OAuthServer, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()

    async def main() -> None:
        intro = introspector(server, clock, introspection=IntrospectionSpec(cache_ttl=0))
        with caplog.at_level(logging.WARNING, "gateway.auth"):
            for route in [(500, b"{}"), (200, b"not json"), (200, b'{"active": "yes"}'), "close"]:
                server.routes["/idp/introspect"] = route  # type: ignore[assignment]
                with pytest.raises(ServiceUnavailable) as info:
                    await intro.verify(b"t")
                assert info.value.message == "the token cannot be checked now"
            assert intro.failing
            answers(server, {"t": {"active": True}})
            assert (await intro.verify(b"t")).claims == {}
            assert not intro.cache  # cache_ttl 0: nothing kept
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "introspection fails" in m]) == 1
        assert any("introspection answers again" in m for m in messages)
        assert not any("gw-secret" in m for m in messages)
        server.routes["/idp/.well-known/openid-configuration"] = (404, b"{}")
        fresh = introspector(server, clock)
        with pytest.raises(ServiceUnavailable):
            await fresh.verify(b"t")
        await intro.client.aclose()
        await fresh.client.aclose()

    asyncio.run(main())


def test_the_cache_is_bounded(server: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.auth.oidc import introspection

    monkeypatch.setattr(introspection, "MAX_CACHED", 2)
    clock = Clock()
    answers(server, {})

    async def main() -> None:
        intro = introspector(server, clock)
        for token in (b"a", b"b", b"c"):
            with pytest.raises(TokenError):
                await intro.verify(token)
        assert len(intro.cache) == 2
        await intro.client.aclose()

    asyncio.run(main())


# --- client credentials --------------------------------------------------------------------------------


def credentials(server: OAuthServer, clock: Clock, **changes: Any) -> ClientCredentials:
    spec = provider(server, **changes)
    client = http_client(spec)
    return ClientCredentials(spec, ProviderMetadata(spec, client), client, clock=clock)


def test_client_credentials_cached_renewed_and_failing(server: OAuthServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    issued: list[int] = []

    def token(form: dict[str, str]) -> tuple[int, bytes]:
        issued.append(1)
        return 200, orjson.dumps({"access_token": f"tok-{len(issued)}", "token_type": "Bearer", "expires_in": 60})

    server.routes["/idp/token"] = token

    async def main() -> None:
        cc = credentials(server, clock)
        assert await cc.token() == b"tok-1"
        form, auth = server.posted("/idp/token")[0]
        assert form == {"grant_type": "client_credentials", "scope": "orders:read", "resource": "https://api.test/",
                        "audience": "orders"}
        assert auth == basic("gw", "gw-secret")
        assert await cc.token() == b"tok-1" and len(issued) == 1
        assert cc.due() == clock.now + 50  # refresh_before 10s
        clock.now += 55  # within refresh_before: this token still, the next one fetched meanwhile
        assert await cc.token() == b"tok-1"
        assert cc.pending is not None
        assert await cc.token() == b"tok-1"  # joins the renewal in flight
        await cc.pending
        assert await cc.token() == b"tok-2"
        with caplog.at_level(logging.WARNING, "gateway.auth"):
            server.routes["/idp/token"] = (401, b'{"error": "invalid_client"}')
            clock.now += 200  # expired: a request waits for the fetch, which fails
            with pytest.raises(ServiceUnavailable):
                await cc.token()
            assert cc.failures == 1 and cc.last_error == "the provider answered invalid_client"
            assert cc.due() == cc.attempted_at + 1
            with pytest.raises(ServiceUnavailable):
                await cc.token()
            assert cc.due() == cc.attempted_at + 2
            state = cc.state()
            assert not state["has_token"] and state["failures"] == 2
            server.routes["/idp/token"] = token
            assert await cc.token() == b"tok-3"
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "cannot get a client-credentials token" in m]) == 1
        assert any("fetched again after 2 failed" in m for m in messages)
        assert cc.state()["has_token"] and "tok-" not in repr(cc.state())
        await cc.client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(("body", "lifetime"), [
    ({"access_token": "t", "expires_in": "120"}, 120.0),
    ({"access_token": "t"}, 300.0),
    ({"access_token": "t", "expires_in": True}, 300.0),
])
def test_token_lifetimes(server: OAuthServer, body: dict[str, Any], lifetime: float) -> None:
    clock = Clock()
    server.json("/idp/token", {"token_type": "Bearer", **body})

    async def main() -> None:
        cc = credentials(server, clock)
        await cc.token()
        assert cc.expires_at == clock.now + lifetime
        await cc.client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("body", [{"token_type": "Bearer"}, {"access_token": "a b\n"}, {"access_token": ""}])
def test_unusable_token_responses(server: OAuthServer, body: dict[str, Any]) -> None:
    clock = Clock()
    server.json("/idp/token", body)

    async def main() -> None:
        cc = credentials(server, clock)
        with pytest.raises(ServiceUnavailable):
            await cc.token()
        assert cc.last_error is not None and "ValueError" in cc.last_error
        await cc.client.aclose()

    asyncio.run(main())


def test_client_credentials_without_metadata_or_in_time(server: OAuthServer) -> None:
    clock = Clock()

    async def main() -> None:
        slow = credentials(server, clock, timeout=0.2)
        server.delay = 2.0
        server.json("/idp/token", {"access_token": "t"})
        with pytest.raises(ServiceUnavailable):
            await slow.token()
        assert slow.last_error is not None
        server.delay = 0
        server.routes["/idp/.well-known/openid-configuration"] = (404, b"{}")
        nowhere = credentials(server, clock, client_credentials=provider(server).client_credentials)
        with pytest.raises(ServiceUnavailable):
            await nowhere.token()
        assert nowhere.last_error is not None and "unreachable" in nowhere.last_error
        await slow.client.aclose()
        await nowhere.client.aclose()

    asyncio.run(main())


def test_client_credentials_in_the_background(server: OAuthServer) -> None:
    server.json("/idp/token", {"access_token": "t", "expires_in": 1})

    async def main() -> None:
        spec = provider(server, client_credentials=provider(server).client_credentials.__class__(
            refresh_before=0.9))  # type: ignore[union-attr]
        client = http_client(spec)
        cc = ClientCredentials(spec, ProviderMetadata(spec, client), client)
        cc.start()
        cc.start()
        for _ in range(100):
            if cc.fetches >= 3:
                break
            await asyncio.sleep(0.05)
        assert cc.fetches >= 3 and cc.access_token == b"t"
        form, _ = server.posted("/idp/token")[0]
        assert form == {"grant_type": "client_credentials"}  # no scopes, resource or audience configured
        cc.close()
        assert cc.keeper is None
        await client.aclose()

    asyncio.run(main())
