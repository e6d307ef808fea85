"""gateway.auth.stage and the policy's claim rules: the request a route's auth stage passes on, and the
401/403/400 answers it gives (through the app's error boundary, without sockets)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from gateway.app import Gateway
from gateway.auth.errors import InsufficientScope, InvalidAuthRequest, InvalidToken, MissingToken, challenge
from gateway.auth.policy import MISSING, RoutePolicy, claim_value, header_value, satisfies
from gateway.auth.stage import AuthStage, bearer_token
from gateway.errors import GatewayError
from gateway.exchange import Exchange, Stage
from gateway.loader import from_document
from tests.unit.test_jwt_support import ISS, RSA_KEY_2, key_of, mint, verifier

# made at import, and the whole suite reaches these tests minutes later: valid for a day, not 10 minutes
TOKEN = mint(sub="alice", email="alice@example.com", role="admin", groups=["ops", "dev"], scope="read write",
             realm_access={"roles": ["editor"]}, level=3, exp=int(time.time()) + 86_400)


class Upstream(Stage):
    """Stands in for the proxy: records what it would send."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.query: bytes | None = None
        self.subject: str | None = None

    async def __call__(self, ex: Exchange) -> None:
        self.headers = list(ex.scope["headers"])
        self.query = ex.scope["query_string"]
        self.subject = ex.subject


ENTER: list[bool] = [False]


@pytest.fixture(autouse=True, params=["call", "enter"])
def stage_entry(request: pytest.FixtureRequest) -> Any:
    """Every test here runs the stage both ways: awaited (``__call__``) and synchronously (``enter``, the
    proxy's fast lane), which must decide alike (falling back to ``__call__`` where it returns False)."""
    ENTER[0] = request.param == "enter"
    yield
    ENTER[0] = False


def run(policy: RoutePolicy, headers: list[tuple[bytes, bytes]], query: bytes = b"",
        v: Any = None) -> Upstream:
    stage = AuthStage(policy, v or verifier())
    upstream = stage.next = Upstream()
    scope = {"headers": headers, "query_string": query}
    ex = Exchange(scope, None, None, 0.0)  # type: ignore[arg-type]
    if ENTER[0] and stage.enter(ex):
        asyncio.run(upstream(ex))
        return upstream
    asyncio.run(stage(ex))
    return upstream


def refused(policy: RoutePolicy, headers: list[tuple[bytes, bytes]], query: bytes = b"",
            v: Any = None) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        run(policy, headers, query, v)
    return info.value


def bearer(token: bytes = TOKEN) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token)


BASE = [(b"host", b"api.test"), (b"accept", b"*/*")]


# --- tokens and what the upstream gets ------------------------------------------------------------------


def test_a_valid_token_passes_with_the_subject_and_without_authorization() -> None:
    seen = run(RoutePolicy(), [*BASE, bearer()])
    assert seen.subject == "alice"
    assert seen.headers == BASE


def test_keep_authorization() -> None:
    seen = run(RoutePolicy(keep_authorization=True), [*BASE, bearer()])
    assert seen.headers == [*BASE, bearer()]


def test_claims_are_forwarded_and_client_copies_removed() -> None:
    policy = RoutePolicy(forward=(("sub", "x-user-id"), ("email", "x-user-email"), ("groups", "x-groups"),
                                  ("missing", "x-missing"), ("realm_access.roles", "x-roles")))
    spoofed = [(b"x-user-id", b"root"), (b"x-missing", b"spoof"), (b"x-user-email", b"root@evil")]
    seen = run(policy, [*BASE, *spoofed, bearer()])
    assert seen.headers == [*BASE, (b"x-user-id", b"alice"), (b"x-user-email", b"alice@example.com"),
                            (b"x-groups", b"ops,dev"), (b"x-roles", b"editor")]


def test_optional_without_a_token_passes_anonymously_and_still_strips_spoofed_headers() -> None:
    policy = RoutePolicy(required=False, forward=(("sub", "x-user-id"),))
    seen = run(policy, [*BASE, (b"x-user-id", b"root")])
    assert seen.subject is None
    assert seen.headers == BASE


def test_optional_with_a_bad_token_is_still_refused() -> None:
    error = refused(RoutePolicy(required=False), [bearer(mint(RSA_KEY_2))])
    assert isinstance(error, InvalidToken)


def test_a_missing_token_is_401_with_a_bare_challenge() -> None:
    error = refused(RoutePolicy(), BASE)
    assert isinstance(error, MissingToken)
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.headers == ((b"www-authenticate", b'Bearer realm="gateway"'),)


def test_an_invalid_token_is_401_invalid_token_with_a_description() -> None:
    error = refused(RoutePolicy(), [bearer(mint(exp=1))])
    assert (error.status, error.code, error.message) == (401, "invalid_token", "token expired")
    assert error.headers == ((b"www-authenticate",
                              b'Bearer realm="gateway", error="invalid_token", error_description="token expired"'),)


def test_another_scheme_is_no_bearer_token() -> None:
    error = refused(RoutePolicy(), [(b"authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l")])
    assert isinstance(error, MissingToken)
    seen = run(RoutePolicy(required=False), [(b"authorization", b"Basic YWxh")])
    assert seen.headers == []  # stripped all the same


def test_bearer_parsing() -> None:
    assert bearer_token(b"bearer  abc ") == b"abc"
    assert bearer_token(b"BEARER abc") == b"abc"
    assert bearer_token(b"Basic abc") is None
    with pytest.raises(InvalidToken, match="malformed token"):
        bearer_token(b"Bearer ")


def test_two_authorization_headers_are_a_bad_request() -> None:
    error = refused(RoutePolicy(), [bearer(), bearer()])
    assert isinstance(error, InvalidAuthRequest)
    assert (error.status, error.code) == (400, "invalid_request")
    assert b'error="invalid_request"' in error.headers[0][1]


def test_bearer_disabled_ignores_authorization_but_still_strips_it() -> None:
    policy = RoutePolicy(bearer=False, cookie="at", required=False)
    seen = run(policy, [bearer()])
    assert seen.subject is None
    assert seen.headers == []


def test_token_from_a_cookie() -> None:
    policy = RoutePolicy(cookie="access_token")
    cookie = (b"cookie", b"theme=dark; access_token=" + TOKEN + b"; other=1")
    seen = run(policy, [*BASE, cookie])
    assert seen.subject == "alice"
    assert seen.headers == [*BASE, cookie]  # other cookies still go upstream
    quoted = run(policy, [(b"cookie", b'access_token="' + TOKEN + b'"')])
    assert quoted.subject == "alice"
    assert isinstance(refused(policy, [(b"cookie", b"theme=dark; access_token=")]), MissingToken)
    assert isinstance(refused(policy, [(b"cookie", b"xaccess_token=" + TOKEN)]), MissingToken)


def test_bearer_comes_before_the_cookie() -> None:
    policy = RoutePolicy(cookie="at")
    seen = run(policy, [(b"cookie", b"at=garbage"), bearer()])
    assert seen.subject == "alice"


def test_token_from_the_query_is_removed_from_the_upstream_query() -> None:
    policy = RoutePolicy(query="access_token")
    seen = run(policy, BASE, b"a=1&access_token=" + TOKEN + b"&b=2")
    assert seen.subject == "alice"
    assert seen.query == b"a=1&b=2"
    kept = run(RoutePolicy(query="access_token", keep_authorization=True), BASE, b"access_token=" + TOKEN)
    assert kept.query == b"access_token=" + TOKEN
    escaped = run(policy, BASE, b"access_token=" + TOKEN.replace(b".", b"%2E"))
    assert escaped.subject == "alice"


def test_the_query_is_off_by_default() -> None:
    assert isinstance(refused(RoutePolicy(), BASE, b"access_token=" + TOKEN), MissingToken)


def test_a_bearer_token_wins_and_the_query_token_is_still_removed() -> None:
    seen = run(RoutePolicy(query="t"), [bearer()], b"t=junk&x=1")
    assert (seen.subject, seen.query) == ("alice", b"x=1")
    assert run(RoutePolicy(query="t", required=False), [], b"").query == b""


def test_the_route_issuer_list() -> None:
    assert run(RoutePolicy(issuers=("idp",)), [bearer()]).subject == "alice"
    error = refused(RoutePolicy(issuers=("other",)), [bearer()])
    assert error.message == "token issuer not accepted on this route"


def test_a_cached_token_is_not_verified_again() -> None:
    v = verifier()
    run(RoutePolicy(), [bearer()], v=v)
    v.pyjwt = None  # any full verification would now fail
    assert run(RoutePolicy(), [bearer()], v=v).subject == "alice"


def test_the_same_identity_again_gets_the_same_headers_and_another_its_own() -> None:
    """``admit`` remembers the last identity it let in: the next request with it (the same Verified, from
    the verifier's cache) gets the same subject and forwarded headers, and spoofed copies still go."""
    v = verifier()
    stage = AuthStage(RoutePolicy(forward=(("sub", "x-user-id"), ("groups", "x-groups"))), v)
    seen = []
    for token in (TOKEN, TOKEN, mint(sub="bob", groups=["qa"]), TOKEN):
        scope = {"headers": [*BASE, (b"x-user-id", b"root"), bearer(token)], "query_string": b""}
        ex = Exchange(scope, None, None, 0.0)  # type: ignore[arg-type]
        assert stage.enter(ex)
        seen.append((ex.subject, scope["headers"]))
    alice = ("alice", [*BASE, (b"x-user-id", b"alice"), (b"x-groups", b"ops,dev")])
    assert seen == [alice, alice, ("bob", [*BASE, (b"x-user-id", b"bob"), (b"x-groups", b"qa")]), alice]
    assert seen[0][1] is not seen[1][1]  # each request its own list


def test_a_refused_identity_is_refused_again() -> None:
    v = verifier()
    stage = AuthStage(RoutePolicy(claims=(("role", "user"),)), v)
    for _ in range(2):
        ex = Exchange({"headers": [bearer()], "query_string": b""}, None, None, 0.0)  # type: ignore[arg-type]
        with pytest.raises(InsufficientScope):
            stage.enter(ex)


# --- claims ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claims", [
    (("role", "admin"),),
    (("groups", "ops"),),
    (("groups", ("dev", "ops")),),
    (("scope", ("read",)),),
    (("scope", ("write", "read")),),
    (("level", 3),),
    (("realm_access.roles", "editor"),),
    (("iss", ISS), ("sub", "alice")),
    (("role", ("admin",)),),  # a string in the token is a space-separated list
])
def test_claims_satisfied(claims: Any) -> None:
    assert run(RoutePolicy(claims=claims), [bearer()]).subject == "alice"


@pytest.mark.parametrize("claims", [
    (("role", "user"),),
    (("groups", ("ops", "admins")),),
    (("scope", ("admin",)),),
    (("scope", "read"),),  # a single value is compared whole: "read write" is not "read"
    (("level", True),),
    (("missing", "x"),),
    (("realm_access.roles", "admin"),),
    (("level", ("3",)),),
])
def test_claims_not_satisfied_are_403(claims: Any) -> None:
    error = refused(RoutePolicy(claims=claims), [bearer()])
    assert isinstance(error, InsufficientScope)
    assert (error.status, error.code) == (403, "insufficient_scope")
    assert error.message == f"the token's {claims[0][0]} claim does not allow this request"
    assert b'error="insufficient_scope"' in error.headers[0][1]


def test_satisfies_is_strict_about_kinds() -> None:
    assert not satisfies(1, True)
    assert not satisfies(True, 1)
    assert satisfies([1, 2], 2)
    assert not satisfies(5, (5,))
    assert satisfies(True, True)


def test_claim_value_prefers_a_literal_dotted_name() -> None:
    claims = {"https://example.com/roles": ["a"], "a": {"b": {"c": 1}}}
    assert claim_value(claims, "https://example.com/roles", ("https://example", "com/roles")) == ["a"]
    assert claim_value(claims, "a.b.c", ("a", "b", "c")) == 1
    assert claim_value(claims, "a.x.c", ("a", "x", "c")) is MISSING
    assert claim_value(claims, "zzz", ("zzz",)) is MISSING


@pytest.mark.parametrize(("value", "expected"), [
    ("alice", b"alice"), ("Zoë", "Zoë".encode()), (42, b"42"), (1.5, b"1.5"), (True, b"true"), (False, b"false"),
    (["a", 1], b"a,1"), ({"a": 1}, b'{"a":1}'), ([True], b"[true]"), ("evil\r\nX-Admin: 1", None), ("tab\t", None),
])
def test_header_values(value: Any, expected: bytes | None) -> None:
    assert header_value(value) == expected


def test_a_claim_with_control_characters_is_not_forwarded() -> None:
    token = mint(sub="alice", note="a\r\nx-admin: yes")
    seen = run(RoutePolicy(forward=(("note", "x-note"),)), [bearer(token)])
    assert seen.headers == []


def test_challenges_are_made_once_and_quoted_safely() -> None:
    assert challenge("invalid_token", "x") is challenge("invalid_token", "x")
    assert challenge("invalid_token", 'say "hi"\\') == \
        ((b"www-authenticate", b'Bearer realm="gateway", error="invalid_token", error_description="say ?hi??"'),)


# --- through the app: JSON bodies and headers -----------------------------------------------------------


def gateway() -> Gateway:
    document = {
        "source": "test", "server": {"access_log": False},
        "auth": {"issuers": {"idp": {"issuer": ISS, "secret": "x" * 40}}},
        "upstreams": {"api": "http://127.0.0.1:9"},
        "routes": [
            {"prefix": "/open", "upstream": "api"},
            {"prefix": "/admin", "upstream": "api", "auth": {"claims": {"role": "admin"}}},
            {"prefix": "/", "upstream": "api", "auth": "required"},
        ],
    }
    return Gateway(from_document(document))


def call(app: Gateway, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "raw_path": path.encode(), "path": path, "query_string": b"",
             "headers": [(b"host", b"api.test"), *headers], "client": ("127.0.0.1", 5), "scheme": "http"}
    asyncio.run(app.http(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"])


def test_the_app_answers_401_with_the_challenge_and_a_json_body() -> None:
    app = gateway()
    status, headers, body = call(app, "/x", [])
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="gateway"'
    assert body["error"] == "unauthorized" and body["status"] == 401 and body["request_id"]
    token = mint("x" * 40, "HS256", kid=None, exp=1, aud=None)
    status, headers, body = call(app, "/x", [(b"authorization", b"Bearer " + token)])
    assert (status, body["error"], body["message"]) == (401, "invalid_token", "token expired")
    assert token.decode() not in str(body) and token not in headers[b"www-authenticate"]


def test_the_app_answers_403_for_claims() -> None:
    app = gateway()
    token = mint("x" * 40, "HS256", kid=None, role="user", aud=None)
    status, headers, body = call(app, "/admin/x", [(b"authorization", b"Bearer " + token)])
    assert (status, body["error"]) == (403, "insufficient_scope")
    assert b"insufficient_scope" in headers[b"www-authenticate"]


def test_a_route_without_auth_has_no_auth_stage() -> None:
    from gateway.proxy.stage import ProxyStage

    app = gateway()
    firsts = {path: type(app.table.match("api.test", "GET", path)[0].first) for path in ("/open", "/admin", "/")}
    assert firsts == {"/open": ProxyStage, "/admin": AuthStage, "/": AuthStage}
    app.close()


def test_the_app_starts_and_closes_the_key_sources() -> None:
    app = gateway()
    assert app.auth is not None

    async def lifespan() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            pass

        await app.lifespan(receive, send)  # type: ignore[arg-type]

    asyncio.run(lifespan())


def test_rsa_keys_in_the_stage_setup() -> None:
    """The stage shares the worker's verifier: a key of another issuer never verifies this one's tokens."""
    v = verifier([key_of(RSA_KEY_2, "k1")])
    assert isinstance(refused(RoutePolicy(), [bearer()], v=v), InvalidToken)


def test_enter_leaves_what_must_wait_to_the_stage() -> None:
    """``enter`` (the fast lane) does nothing and returns False where ``__call__`` must await: a token whose
    key is not at hand yet; a route with sessions, login or relay. A refused query token still leaves the
    query (it must not reach the access log)."""
    unknown_kid = mint(kid="not-yet-published")
    ex = Exchange({"headers": [bearer(unknown_kid)], "query_string": b""}, None, None, 0.0)  # type: ignore[arg-type]
    assert AuthStage(RoutePolicy(), verifier()).enter(ex) is False
    assert ex.scope["headers"] == [bearer(unknown_kid)] and ex.subject is None  # untouched
    stage = AuthStage(RoutePolicy(session=True), verifier(), object())  # type: ignore[arg-type]
    assert stage.enter(Exchange({"headers": [], "query_string": b""}, None, None, 0.0)) is False  # type: ignore[arg-type]
    scope = {"headers": [], "query_string": b"access_token=" + mint(exp=1) + b"&a=1"}
    with pytest.raises(InvalidToken):
        AuthStage(RoutePolicy(query="access_token"), verifier()).enter(Exchange(scope, None, None, 0.0))  # type: ignore[arg-type]
    assert scope["query_string"] == b"a=1"
