"""gateway.auth.jwks: a remote key set against a real JWKS server on loopback (in this process's threads):
fetching, TTLs, the shared and rate-limited unknown-kid refetch, outages, discovery, https."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.config import IssuerSpec
from gateway.auth.jwks import MAX_UNKNOWN_KIDS, RemoteJwks, _max_age, fetch_json
from gateway.auth.verify import Issuer, TokenError, Verifier
from tests.unit.test_jwt_support import ISS, RSA_KEY, RSA_KEY_2, JwksServer, jwk, mint, self_signed

LOGGER = "gateway.auth"


@pytest.fixture
def server() -> Iterator[JwksServer]:
    jwks = JwksServer()
    jwks.publish(jwk(RSA_KEY, "k1"))
    yield jwks
    jwks.close()


def spec(url: str | None, **overrides: Any) -> IssuerSpec:
    values: dict[str, Any] = {"name": "idp", "issuer": ISS, "algorithms": ("RS256",), "audiences": ("api",),
                              "jwks_url": url, "jwks_cooldown": 0.2, "jwks_timeout": 2.0}
    values.update(overrides)
    return IssuerSpec(**values)


def kids(source: RemoteJwks) -> set[str | None]:
    return {key.kid for key in source.index.all}


def test_a_refresh_fetches_the_key_set(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url))

    async def main() -> None:
        assert source.candidates("k1") == ()
        assert await source.refresh("k1") is True
        assert kids(source) == {"k1"}
        assert source.ttl == 300.0  # no Cache-Control: jwks_ttl

    asyncio.run(main())
    assert server.requests == 1


def test_the_background_refresh_keeps_fetching_before_the_ttl_ends(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_ttl=0.3, jwks_cooldown=0.05))

    async def main() -> None:
        source.start()
        source.start()  # idempotent
        await asyncio.sleep(0.05)
        assert kids(source) == {"k1"}  # fetched at start, before any request
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        await asyncio.sleep(0.5)
        assert kids(source) == {"k1", "k2"}
        source.close()

    asyncio.run(main())
    assert 2 <= server.requests <= 5


@pytest.mark.parametrize(("cache_control", "ttl"), [
    ("public, max-age=120", 120.0),
    ("max-age=1", 30.0),  # clamped up to jwks_min_ttl
    ('max-age="999999"', 86_400.0),  # clamped down to jwks_max_ttl
    ("no-cache", 30.0),
    ("private", 300.0),  # says nothing about age: jwks_ttl
])
def test_cache_control_max_age_within_bounds(server: JwksServer, cache_control: str, ttl: float) -> None:
    server.cache_control = cache_control
    source = RemoteJwks(spec(server.url))
    asyncio.run(source.refresh("k1"))
    assert source.ttl == ttl


def test_max_age_parsing() -> None:
    assert _max_age("") is None
    assert _max_age("s-maxage=5") is None
    assert _max_age("no-store, max-age=5") == 0.0
    assert _max_age("Max-Age = 7") == 7.0


def test_an_unknown_kid_is_fetched_once_then_refused_without_fetching(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.05))

    async def main() -> None:
        assert await source.refresh("nope") is False
        before = server.requests
        started = time.monotonic()
        assert await source.refresh("nope") is False  # remembered as unknown: no fetch, no wait
        assert time.monotonic() - started < 0.05
        assert server.requests == before

    asyncio.run(main())
    assert server.requests == 1


def test_an_unknown_kid_is_looked_up_again_after_its_ttl(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.05, unknown_kid_ttl=0.1))

    async def main() -> None:
        assert await source.refresh("k2") is False
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        assert await source.refresh("k2") is False  # still remembered
        await asyncio.sleep(0.15)
        assert await source.refresh("k2") is True

    asyncio.run(main())


def test_concurrent_requests_with_one_new_kid_share_one_fetch(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.05))

    async def main() -> None:
        await source.refresh("k1")
        await asyncio.sleep(0.06)
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        results = await asyncio.gather(*(source.refresh("k2") for _ in range(50)))
        assert all(results)

    asyncio.run(main())
    assert server.requests == 2


def test_a_flood_of_random_kids_costs_one_fetch_per_cooldown(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.25))

    async def main() -> None:
        await source.refresh("k1")
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        waiting = []
        while loop.time() < end:
            waiting.extend(asyncio.ensure_future(source.refresh(uuid.uuid4().hex)) for _ in range(20))
            await asyncio.sleep(0.02)
        assert not any(await asyncio.gather(*waiting))
        assert len(source.unknown) == min(len(waiting), MAX_UNKNOWN_KIDS)

    asyncio.run(main())
    assert server.requests <= 1 + 1.0 / 0.25 + 2  # the first fetch, one per cooldown, edges


def test_the_unknown_kid_memory_is_bounded(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url))
    for index in range(MAX_UNKNOWN_KIDS + 10):
        source._remember_unknown(str(index), 1e12)
    assert len(source.unknown) == MAX_UNKNOWN_KIDS
    assert "0" not in source.unknown


def test_a_kid_that_arrives_within_the_cooldown_waits_for_the_next_fetch(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.3))

    async def main() -> None:
        await source.refresh("k1")
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        started = time.monotonic()
        assert await source.refresh("k2") is True
        assert time.monotonic() - started >= 0.25

    asyncio.run(main())
    assert server.requests == 2


def test_a_kid_that_joined_an_older_fetch_gets_one_more(server: JwksServer) -> None:
    """A fetch already in flight when the token came may predate the key: one more fetch, not a refusal."""
    server.mode, server.delay = "slow", 0.2
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.05))

    async def main() -> None:
        first = asyncio.ensure_future(source.refresh("k1"))
        await asyncio.sleep(0.1)  # the fetch is in flight; now the key is published and a token comes
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        assert await source.refresh("k2") is True
        assert await first

    asyncio.run(main())


def test_an_outage_keeps_the_last_good_keys_and_logs_once_per_change(
        server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.02))
    caplog.set_level(logging.WARNING, LOGGER)

    async def main() -> None:
        await source.refresh("k1")
        for mode in ("500", "close", "garbage", "500"):
            server.mode = mode
            await asyncio.sleep(0.03)
            assert await source.refresh("other") is False
            assert kids(source) == {"k1"}
        assert source.failures == 4
        server.mode = "ok"
        await asyncio.sleep(0.03)
        assert await source.refresh("other") is False  # fetched fine; the kid just is not there
        assert source.failures == 0

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "cannot fetch signing keys" in messages[0] and "HTTP 500" in messages[0]
    assert "serving the 1 key(s) fetched before" in messages[0]
    assert "fetched again" in messages[1] and "after 4 failed attempt(s)" in messages[1]


def test_a_failing_endpoint_with_no_keys_yet(server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    server.mode = "500"
    source = RemoteJwks(spec(server.url))
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert "no keys yet" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("mode", "reason"), [
    ("500", "HTTP 500"),
    ("garbage", "the response is not JSON"),
    ("huge", "larger than 1048576 bytes"),
    ("redirect", "HTTP 302"),  # urllib itself refuses a redirect to file:
    ("redirect-ftp", "redirected to a non-http URL"),
    ("slow", "timed out"),
    ("close", "RemoteDisconnected"),
])
def test_fetch_failures_say_why(server: JwksServer, caplog: pytest.LogCaptureFixture, mode: str,
                                reason: str) -> None:
    server.mode, server.delay = mode.removesuffix("-ftp"), 1.0
    if mode == "redirect-ftp":
        server.location = "ftp://127.0.0.1/keys"
    source = RemoteJwks(spec(server.url, jwks_timeout=0.2))
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert reason in caplog.records[0].getMessage()


def test_a_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    from tests.integration.conftest import free_port

    source = RemoteJwks(spec(f"http://127.0.0.1:{free_port()}/jwks.json"))
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert "cannot connect" in caplog.records[0].getMessage()


def test_a_redirect_to_http_is_followed(server: JwksServer) -> None:
    other = JwksServer()
    other.publish(jwk(RSA_KEY_2, "k2"))
    try:
        server.mode, server.location = "redirect", other.url
        source = RemoteJwks(spec(server.url))
        assert asyncio.run(source.refresh("k2")) is True
    finally:
        other.close()


def test_a_key_set_without_usable_keys_is_a_failure(server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    server.publish({"kty": "oct", "k": "AAAA", "kid": "s"}, {"kty": "RSA", "kid": "bad"})
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.02))
    caplog.set_level(logging.WARNING, LOGGER)

    async def main() -> None:
        assert await source.refresh("s") is False
        await asyncio.sleep(0.03)
        assert await source.refresh("s") is False

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    skipped = [m for m in messages if "is skipped" in m]
    assert len(skipped) == 2  # logged when the set of skipped keys changes, not on every fetch
    assert any("the key set holds no usable key" in m for m in messages)


def test_a_document_that_is_not_a_jwk_set(server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    discovery = JwksServer()
    try:  # the discovery document is JSON but not a JWK Set
        source = RemoteJwks(spec(discovery.discovery_url))
        caplog.set_level(logging.WARNING, LOGGER)
        assert asyncio.run(source.refresh("k1")) is False
        assert "expected a JWK Set" in caplog.records[0].getMessage()
    finally:
        discovery.close()


def test_withdrawn_keys_make_the_verifier_forget(server: JwksServer) -> None:
    server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
    forgotten = []
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.02), on_withdrawn=lambda: forgotten.append(1))

    async def main() -> None:
        await source.refresh("k1")
        assert forgotten == []
        server.publish(jwk(RSA_KEY_2, "k2"))
        await asyncio.sleep(0.03)
        await source.refresh("k3")
        assert forgotten == [1]

    asyncio.run(main())


def test_the_verifier_fetches_on_an_unknown_kid(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=0.02))
    v = Verifier({"idp": Issuer(spec(server.url), source)}, 100)

    async def main() -> None:
        assert (await v.verify(mint(RSA_KEY, kid="k1"))).subject == "alice"
        server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
        await asyncio.sleep(0.03)
        assert (await v.verify(mint(RSA_KEY_2, kid="k2"))).subject == "alice"
        with pytest.raises(TokenError, match="unknown signing key"):
            await v.verify(mint(RSA_KEY_2, kid="k3"))

    asyncio.run(main())


# --- discovery ------------------------------------------------------------------------------------------


def test_discovery_finds_the_jwks(server: JwksServer) -> None:
    source = RemoteJwks(spec(None, discovery_url=server.discovery_url))
    assert asyncio.run(source.refresh("k1")) is True
    assert source.jwks_uri == server.url
    assert (server.discovery_requests, server.requests) == (1, 1)


def test_discovery_is_done_again_after_a_jwks_failure(server: JwksServer) -> None:
    source = RemoteJwks(spec(None, discovery_url=server.discovery_url, jwks_cooldown=0.02))

    async def main() -> None:
        await source.refresh("k1")
        server.mode = "500"
        await asyncio.sleep(0.03)
        assert await source.refresh("k9") is False
        assert source.jwks_uri is None
        server.mode = "ok"
        await asyncio.sleep(0.03)
        await source.refresh("k9")

    asyncio.run(main())
    assert server.discovery_requests == 2


@pytest.mark.parametrize(("document_issuer", "reason"), [
    ("https://evil.test/", "names another issuer"),
])
def test_discovery_of_another_issuer_is_refused(server: JwksServer, caplog: pytest.LogCaptureFixture,
                                                document_issuer: str, reason: str) -> None:
    server.discovery_issuer = document_issuer
    source = RemoteJwks(spec(None, discovery_url=server.discovery_url))
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert reason in caplog.records[0].getMessage()
    assert server.requests == 0


@pytest.mark.parametrize(("document", "reason"), [
    ([1, 2], "not a JSON object"),
    ({"issuer": ISS}, "has no http(s) jwks_uri"),
    ({"issuer": ISS, "jwks_uri": "file:///etc/passwd"}, "has no http(s) jwks_uri"),
])
def test_bad_discovery_documents(document: Any, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    def fetch(url: str, timeout: float, context: Any) -> tuple[Any, float | None]:
        return document, None

    source = RemoteJwks(spec(None, discovery_url="http://idp.test/.well-known/openid-configuration"), fetch=fetch)
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert reason in caplog.records[0].getMessage()


def test_an_unexpected_error_counts_as_a_failed_fetch(caplog: pytest.LogCaptureFixture) -> None:
    def fetch(url: str, timeout: float, context: Any) -> tuple[Any, float | None]:
        raise RuntimeError("bug")

    source = RemoteJwks(spec("http://idp.test/jwks.json"), fetch=fetch)
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert "RuntimeError" in caplog.records[0].getMessage()


# --- https ----------------------------------------------------------------------------------------------


def test_https_with_a_configured_ca(tmp_path: Path) -> None:
    context, cert = self_signed(tmp_path)
    server = JwksServer(tls=context)
    server.publish(jwk(RSA_KEY, "k1"))
    try:
        source = RemoteJwks(spec(server.url, ca_file=str(cert)))
        assert asyncio.run(source.refresh("k1")) is True
        untrusted = RemoteJwks(spec(server.url))
        assert asyncio.run(untrusted.refresh("k1")) is False  # the system's CAs do not know it
        document, _ = fetch_json(server.url, 2.0, source.context)
        assert document["keys"][0]["kid"] == "k1"
    finally:
        server.close()


# --- the background task --------------------------------------------------------------------------------


def test_failures_back_off_up_to_the_ttl(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=1.0, jwks_ttl=5.0))
    source.started_at = 100.0
    source.failures = 1
    assert source.due() == 101.0
    source.failures = 3
    assert source.due() == 104.0
    source.failures = 30
    assert source.due() == 105.0
    source.failures, source.fetched_at = 0, 200.0
    assert source.due() == 204.0


def test_close_cancels_the_background_task_and_a_scheduled_fetch(server: JwksServer) -> None:
    source = RemoteJwks(spec(server.url, jwks_cooldown=5.0))

    async def main() -> None:
        source.start()
        await asyncio.sleep(0.05)
        waiter = asyncio.ensure_future(source.refresh("k2"))  # scheduled after the cooldown
        await asyncio.sleep(0.01)
        assert source.pending is not None
        source.close()
        assert source.keeper is None and source.pending is None
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())


def test_a_fetch_stuck_past_its_timeout_is_abandoned(caplog: pytest.LogCaptureFixture) -> None:
    """urllib's socket timeout normally fires first; the event loop's own deadline is the backstop."""
    def fetch(url: str, timeout: float, context: Any) -> tuple[Any, float | None]:
        time.sleep(1.3)
        return {"keys": []}, None

    source = RemoteJwks(spec("http://idp.test/jwks.json", jwks_timeout=0.1), fetch=fetch)
    caplog.set_level(logging.WARNING, LOGGER)
    assert asyncio.run(source.refresh("k1")) is False
    assert "timed out" in caplog.records[0].getMessage()


def test_a_token_without_kid_is_not_remembered_as_unknown(server: JwksServer) -> None:
    server.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
    source = RemoteJwks(spec(server.url))
    assert asyncio.run(source.refresh(None)) is False  # two keys with kids: a kid-less token fits none
    assert len(source.unknown) == 0


def test_the_worker_auth_builds_sources_and_takes_overrides(server: JwksServer) -> None:
    from gateway.auth.config import AuthSpec
    from gateway.auth.keys import StaticKeys
    from gateway.auth.runtime import Auth
    from tests.unit.test_jwt_support import key_of

    remote, local = spec(server.url), spec(None, name="local", issuer="https://local/", keys=(key_of(RSA_KEY),))
    auth = Auth(AuthSpec({"idp": remote, "local": local}))
    assert isinstance(auth.sources["idp"], RemoteJwks)
    assert isinstance(auth.sources["local"], StaticKeys)
    mine = StaticKeys([key_of(RSA_KEY_2)])
    assert Auth(AuthSpec({"idp": remote}), sources={"idp": mine}).sources["idp"] is mine

    async def main() -> None:
        auth.start()
        token = mint(RSA_KEY, kid="k1")
        assert (await auth.verifier.verify(token)).subject == "alice"
        assert auth.verifier.cached(token) is not None
        server.publish(jwk(RSA_KEY_2, "k2"))  # k1 withdrawn: what it verified is forgotten
        await asyncio.sleep(0.25)
        await auth.sources["idp"].refresh("k9")
        assert auth.verifier.cached(token) is None
        auth.close()

    asyncio.run(main())


def test_urls_are_logged_without_credentials() -> None:
    from gateway.auth.jwks import shown

    assert shown("https://user:pw@idp.test:8443/jwks.json?a=1") == "https://idp.test:8443/jwks.json?a=1"
    assert shown("https://idp.test/jwks.json") == "https://idp.test/jwks.json"
    assert shown(None) == ""
    assert spec("https://user:pw@idp.test/j").describe() == "idp: iss https://idp.test/, RS256, JWKS https://idp.test/j"
