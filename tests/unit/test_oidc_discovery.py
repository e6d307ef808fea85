"""Provider metadata (gateway/auth/oidc/discovery.py) and the per-provider runtime (runtime.py), against
a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.auth.config import IssuerSpec
from gateway.auth.oidc import discovery
from gateway.auth.oidc.discovery import ProviderError, ProviderMetadata, ProviderUnavailable, http_client, validate
from gateway.auth.oidc.runtime import OidcRuntime, Provider
from gateway.auth.oidc.scopes import ScopeRules
from gateway.auth.policy import RoutePolicy
from tests.unit.test_oidc_support import OAuthServer, provider


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    server = OAuthServer()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuer_of(spec: Any) -> IssuerSpec:
    return IssuerSpec(name=spec.name, issuer=spec.issuer, algorithms=("RS256",), audiences=("gw",),
                      discovery_url=spec.discovery_urls()[0], jwks_cooldown=0.01)


def test_validate() -> None:
    spec = provider(None, issuer="https://idp.test")
    assert validate({"issuer": "https://idp.test", "jwks_uri": "https://idp.test/k"}, spec, "u")
    for document, expected in [([], "not a JSON object"), ({"issuer": "https://other.test"}, "another issuer"),
                               ({"issuer": "https://idp.test", "token_endpoint": "file:///x"}, "token_endpoint"),
                               ({"issuer": "https://idp.test", "jwks_uri": 5}, "jwks_uri")]:
        with pytest.raises(ProviderError, match=expected):
            validate(document, spec, "u")


def test_openid_document_merged_with_rfc8414(server: OAuthServer) -> None:
    spec = provider(server)
    server.json("/idp/.well-known/openid-configuration", {"issuer": spec.issuer, "jwks_uri": server.url + "/k"})
    server.json("/.well-known/oauth-authorization-server/idp", {
        "issuer": spec.issuer, "jwks_uri": server.url + "/ignored", "introspection_endpoint": server.url + "/i"})
    clock = Clock()

    async def main() -> None:
        client = http_client(spec)
        metadata = ProviderMetadata(spec, client, clock=clock)
        document = await metadata.get()
        assert document["jwks_uri"] == server.url + "/k"  # the OpenID document wins
        assert await metadata.endpoint("introspection_endpoint") == server.url + "/i"
        with pytest.raises(ProviderUnavailable, match="has no end_session_endpoint"):
            await metadata.endpoint("end_session_endpoint")
        state = metadata.state()
        assert state["reachable"] and state["metadata_url"].endswith("/idp/.well-known/openid-configuration")
        assert state["metadata_age_seconds"] == 0 and state["last_error"] is None
        assert metadata.retry_at() == clock.now + spec.metadata_ttl
        await client.aclose()

    asyncio.run(main())


def test_rfc8414_alone_and_the_issuer_check(server: OAuthServer) -> None:
    spec = provider(server)
    server.json("/.well-known/oauth-authorization-server/idp", {"issuer": spec.issuer, "token_endpoint": "http://t"})

    async def main() -> None:
        metadata = ProviderMetadata(spec, http_client(spec))
        assert (await metadata.get())["token_endpoint"] == "http://t"
        assert metadata.source is not None and metadata.source.endswith("/oauth-authorization-server/idp")
        spoof = ProviderMetadata(provider(server, issuer=server.url + "/elsewhere",
                                          discovery_url=server.url + "/.well-known/oauth-authorization-server/idp"),
                                 http_client(spec))
        with pytest.raises(ProviderUnavailable, match="names another issuer"):
            await spoof.get()
        await metadata.client.aclose()
        await spoof.client.aclose()

    asyncio.run(main())


def test_failures_back_off_fail_fast_and_recover(server: OAuthServer, caplog: pytest.LogCaptureFixture) -> None:
    spec = provider(server, metadata_ttl=60.0)
    clock = Clock()
    server.routes["/idp/.well-known/openid-configuration"] = (500, b"oops")
    server.routes["/.well-known/oauth-authorization-server/idp"] = (200, b"<html>")

    async def main() -> None:
        metadata = ProviderMetadata(spec, http_client(spec), clock=clock)
        with caplog.at_level(logging.WARNING, "gateway.auth"):
            with pytest.raises(ProviderUnavailable, match=r"HTTP 500.*not JSON"):
                await metadata.get()
            requests = len(server.requests)
            with pytest.raises(ProviderUnavailable):  # within the backoff: no new request
                await metadata.get()
            assert len(server.requests) == requests
            assert metadata.retry_at() == clock.now + 1.0
            clock.now += 1.5
            with pytest.raises(ProviderUnavailable):
                await metadata.get()
            assert metadata.failures == 2 and metadata.retry_at() == clock.now + 2.0
            state = metadata.state()
            assert not state["reachable"] and "HTTP 500" in state["last_error"] and state["failures"] == 2
            clock.now += 3
            server.metadata()
            assert (await metadata.get())["issuer"] == spec.issuer
        logged = [r.getMessage() for r in caplog.records]
        assert len([m for m in logged if "cannot fetch its metadata" in m]) == 1
        assert any("fetched again" in m and "2 failed" in m for m in logged)
        # a failed refresh keeps the document
        server.routes["/idp/.well-known/openid-configuration"] = "close"  # type: ignore[assignment]
        await metadata.refresh()
        assert metadata.document is not None and metadata.failures == 1
        assert "serving the metadata fetched before" in caplog.records[-1].getMessage()
        assert metadata.retry_at() <= clock.now + 60
        await metadata.client.aclose()

    asyncio.run(main())


def test_timeouts_and_size_limits(server: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = provider(server, timeout=0.2, discovery_url=server.url + "/meta")

    async def main() -> None:
        client = http_client(spec)
        server.delay = 1.0
        with pytest.raises(ProviderUnavailable, match=r"Timeout|timed out"):
            await discovery.get_json(client, server.url + "/meta", 0.2)
        server.delay = 0
        monkeypatch.setattr(discovery, "MAX_DOCUMENT_BYTES", 10)
        server.json("/meta", {"issuer": "x" * 20})
        with pytest.raises(ProviderError, match="larger than 10 bytes"):
            await discovery.get_json(client, server.url + "/meta", 1)

        async def never(*args: Any) -> Any:
            await asyncio.sleep(10)

        monkeypatch.setattr(discovery, "_get_json", never)
        with pytest.raises(ProviderUnavailable, match="timed out"):
            await discovery.get_json(client, server.url + "/meta", -0.9)
        await client.aclose()

    asyncio.run(main())


def test_a_bug_counts_as_a_failure(server: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = provider(server)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(discovery, "validate", broken)
    server.metadata()

    async def main() -> None:
        metadata = ProviderMetadata(spec, http_client(spec))
        with pytest.raises(ProviderUnavailable, match="RuntimeError: bug"):
            await metadata.get()
        await metadata.client.aclose()

    asyncio.run(main())


def test_background_refresh_and_close(server: OAuthServer) -> None:
    spec = provider(server, metadata_ttl=0.05)
    server.metadata()

    async def main() -> None:
        metadata = ProviderMetadata(spec, http_client(spec))
        metadata.start()
        metadata.start()  # once
        for _ in range(200):
            if metadata.fetches >= 3:
                break
            await asyncio.sleep(0.02)
        assert metadata.fetches >= 3
        metadata.close()
        assert metadata.keeper is None
        await metadata.client.aclose()

    asyncio.run(main())


def test_the_runtime_finds_keys_through_the_metadata(server: OAuthServer) -> None:
    from tests.unit.test_jwt_support import RSA_KEY, jwk

    spec = provider(server)
    server.metadata()
    server.json("/idp/jwks", {"keys": [jwk(RSA_KEY, "k1")]})

    async def main() -> None:
        runtime = OidcRuntime({"corp": spec}, {"corp": issuer_of(spec)})
        corp = runtime.providers["corp"]
        assert await corp.keys.refresh("k1")
        assert [key.kid for key in corp.keys.candidates("k1")]
        state = runtime.state()["corp"]
        assert state["keys"] == 1 and state["keys_age_seconds"] >= 0 and state["reachable"]
        assert "gw-secret" not in repr(state)
        assert set(state) >= {"introspection", "client_credentials", "jwks_uri", "last_error"}
        runtime.start()
        await asyncio.sleep(0)
        runtime.close()
        assert corp.closing is not None
        await corp.closing

    asyncio.run(main())


def test_keys_of_a_provider_that_is_down(server: OAuthServer) -> None:
    spec = provider(server, introspection=None, client_credentials=None)

    async def main() -> None:
        corp = Provider(spec, issuer_of(spec))
        assert not await corp.keys.refresh("k1")
        state = corp.state()
        assert state["keys"] == 0 and state["keys_age_seconds"] is None and not state["reachable"]
        assert "introspection" not in state and "client_credentials" not in state
        corp.close()
        assert corp.closing is not None
        await corp.closing

    asyncio.run(main())
    corp = Provider(spec, issuer_of(spec))
    assert corp.state()["keys_age_seconds"] is None  # no loop: still answers
    corp.close()  # no loop: nothing to close


def test_route_parts() -> None:
    spec = provider(None, issuer="https://idp.test")
    plain = provider(None, name="plain", issuer="https://plain.test", introspection=None,
                     client_credentials=None)
    runtime = OidcRuntime({"corp": spec, "plain": plain}, {"corp": issuer_of(spec), "plain": issuer_of(plain)})
    corp = runtime.providers["corp"]
    assert runtime.route(RoutePolicy(provider="plain", issuers=("plain",))) is None
    found = runtime.route(RoutePolicy(provider="corp", issuers=("corp",), relay="client_credentials"))
    assert found is not None and found.introspector is corp.introspector and found.credentials is corp.credentials
    assert found.scopes is None
    anyone = runtime.route(RoutePolicy())  # one provider introspects: opaque tokens go there
    assert anyone is not None and anyone.introspector is corp.introspector
    assert runtime.route(RoutePolicy(issuers=("plain", "jwt"))) is None
    scoped = runtime.route(RoutePolicy(issuers=("plain",), scope_rules=ScopeRules(scopes=("a",))))
    assert scoped is not None and scoped.scopes is not None and scoped.introspector is None
    two = OidcRuntime({"corp": spec, "also": provider(None, name="also",
                                                      issuer="https://also.test")},
                      {"corp": issuer_of(spec), "also": issuer_of(spec)})
    assert two.route(RoutePolicy()) is None  # two could: none is chosen
