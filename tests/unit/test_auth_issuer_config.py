"""The token issuer's config: ``auth.issuer``, ``auth.consumers``, ``auth.sessions`` (and their checks)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.auth.issuer_config import DAY, default_state_dir, digest
from gateway.config import ConfigError
from gateway.loader import GatewayConfig, load

ROUTES = """\
upstreams:
  api: http://127.0.0.1:9001
routes:
  - prefix: /
    upstream: api
    auth: required
"""
ISSUER = """\
auth:
  issuer:
    issuer: https://gw.test/
  consumers:
    demo:
      secret: ${DEMO_SECRET:-demo-secret}
"""


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load(environ or {}, {"config": str(path)})


def failure(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def test_the_smallest_issuer_and_its_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, ISSUER + ROUTES)
    auth = config.auth
    assert auth is not None and auth.local is not None
    local = auth.local
    assert (local.name, local.issuer, local.audience, local.algorithm) == ("gateway", "https://gw.test/", None, "RS256")
    assert (local.access_ttl, local.refresh_ttl, local.refresh_absolute_ttl) == (300.0, 14 * DAY, 90 * DAY)
    assert (local.rotation, local.jwks_max_age, local.leeway) == (DAY, 300.0, 60.0)
    assert (local.token_path, local.jwks_path, local.logout_path) == ("/auth/token", "/.well-known/jwks.json",
                                                                     "/auth/logout")
    assert local.key_file == str(Path(default_state_dir()) / "issuer-keys.json")
    assert auth.state_dir == default_state_dir() and auth.redis_prefix == "gateway:auth:"
    assert auth.sessions is None
    (consumer,) = auth.consumers
    assert (consumer.client_id, consumer.subject, consumer.scope) == ("demo", "demo", ())
    assert consumer.secret_digest == digest("demo-secret") and consumer.api_key_digest is None
    assert "demo-secret" not in repr(consumer)
    # the issuer is verified like any other, under its name
    spec = auth.issuers["gateway"]
    assert spec.local and spec.issuer == "https://gw.test/" and spec.algorithms == ("RS256",)
    assert "gateway: iss https://gw.test/, RS256, the gateway's own rotating keys" in config.summary()


def test_a_full_issuer(tmp_path: Path) -> None:
    config = load_text(tmp_path, textwrap.dedent("""\
        auth:
          state_dir: state
          redis_prefix: "gw1:"
          issuer:
            name: own
            issuer: https://gw.test/
            audience: api
            access_ttl: 2m
            refresh_ttl: 24h
            refresh_absolute_ttl: 168h
            refresh_tokens: false
            rotation: off
            jwks_max_age: 1m
            leeway: 0
            token_path: /oauth/token
            jwks_path: /keys
            logout_path: /bye
            key_file: keys/issuer.json
            api_key_header: X-Key
          consumers:
            demo:
              client_id: demo-app
              secret: s
              api_key: k
              subject: user-1
              scope: [read, write]
              claims: {role: admin, groups: [a]}
              refresh_tokens: false
          sessions:
            cookie: sid
            idle_timeout: 10m
            absolute_timeout: 1h
            secure: false
            same_site: strict
            login_path: /hello
          issuers:
            idp: {issuer: https://idp.test/, secret: "0123456789abcdef0123456789abcdef"}
        """) + ROUTES)
    auth = config.auth
    assert auth is not None and auth.local is not None and auth.sessions is not None
    local = auth.local
    assert auth.state_dir == str(tmp_path / "state") and auth.redis_prefix == "gw1:"
    assert (local.name, local.audience, local.access_ttl, local.refresh_ttl, local.refresh_absolute_ttl) == \
        ("own", "api", 120.0, DAY, 7 * DAY)
    assert (local.refresh_tokens, local.rotation, local.jwks_max_age, local.leeway) == (False, None, 60.0, 0.0)
    assert (local.token_path, local.jwks_path, local.logout_path) == ("/oauth/token", "/keys", "/bye")
    assert local.key_file == str(tmp_path / "keys" / "issuer.json") and local.api_key_header == "x-key"
    (consumer,) = auth.consumers
    assert (consumer.client_id, consumer.subject, consumer.scope, dict(consumer.claims), consumer.refresh_tokens) \
        == ("demo-app", "user-1", ("read", "write"), {"role": "admin", "groups": ["a"]}, False)
    assert consumer.api_key_digest == digest("k")
    assert auth.sessions.cookie == "sid" and auth.sessions.same_site == "Strict" and not auth.sessions.secure
    assert (auth.sessions.idle_timeout, auth.sessions.absolute_timeout, auth.sessions.login_path) == \
        (600.0, 3600.0, "/hello")
    assert auth.sessions.touch_interval == 60.0
    assert sorted(auth.issuers) == ["idp", "own"]


@pytest.mark.parametrize(("snippet", "where", "expected"), [
    ("  issuer: {}\n", "auth.issuer.issuer", "the iss value"),
    ("  issuer: {issuer: x, algorithm: ES256}\n", "auth.issuer.algorithm", "RS256"),
    ("  issuer: {issuer: x, rotation: 1m, jwks_max_age: 5m}\n", "auth.issuer.rotation", "longer than jwks_max_age"),
    ("  issuer: {issuer: x, refresh_ttl: 48h, refresh_absolute_ttl: 24h}\n", "auth.issuer.refresh_absolute_ttl",
     "at least refresh_ttl"),
    ("  issuer: {issuer: x, leeway: -1}\n", "auth.issuer.leeway", "zero or more"),
    ("  issuer: {issuer: x, token_path: auth}\n", "auth.issuer.token_path", "an absolute path"),
    ("  issuer: {issuer: x, jwks_path: '/a/{id}'}\n", "auth.issuer.jwks_path", "an absolute path"),
    ("  issuer: {issuer: x, logout_path: /auth/token}\n", "auth.issuer", "distinct paths"),
    ("  issuer: {issuer: x, api_key_header: 'x key'}\n", "auth.issuer.api_key_header", "a header name"),
    ("  issuer: {issuer: x, name: 'a b'}\n", "auth.issuer.name", "an issuer name"),
    ("  issuer: {issuer: x, colour: red}\n", "auth.issuer.colour", "unknown key"),
])
def test_issuer_mistakes(tmp_path: Path, snippet: str, where: str, expected: str) -> None:
    text = "auth:\n" + snippet + "  consumers: {demo: {secret: s}}\n" + ROUTES
    error = failure(tmp_path, text)
    assert error.path == where and expected in error.message, error


@pytest.mark.parametrize(("consumers", "where", "expected"), [
    ("{}", "auth.consumers", "at least one consumer"),
    ("{demo: {}}", "auth.consumers.demo", "a secret, an api_key or both"),
    ("{demo: {secret: ''}}", "auth.consumers.demo.secret", "non-empty string"),
    ("{demo: {secret: [1]}}", "auth.consumers.demo.secret", "non-empty string"),
    ("{demo: {secret: \"a\\x01b\"}}", "auth.consumers.demo.secret", "printable"),
    ("{'a:b': {secret: s}}", "auth.consumers.a:b", "without ':'"),
    ("{a: {secret: s, client_id: x}, b: {secret: t, client_id: x}}", "auth.consumers.b", "(a has it)"),
    ("{a: {api_key: same-key}, b: {api_key: same-key}}", "auth.consumers.b.api_key", "the value is not shown"),
    ("{a: {secret: s, claims: {sub: root}}}", "auth.consumers.a.claims.sub", "does not set itself"),
    ("{a: {secret: s, scope: 'read \"x'}}", "auth.consumers.a.scope", "scope tokens"),
])
def test_consumer_mistakes_never_show_a_secret(tmp_path: Path, consumers: str, where: str, expected: str) -> None:
    error = failure(tmp_path, f"auth:\n  issuer: {{issuer: x}}\n  consumers: {consumers}\n" + ROUTES)
    assert error.path == where and expected in error.message, error
    assert "same-key" not in str(error) and "a\x01b" not in str(error)


@pytest.mark.parametrize(("sessions", "where", "expected"), [
    ("{cookie: 'a b'}", "auth.sessions.cookie", "a cookie name"),
    ("{idle_timeout: 2h, absolute_timeout: 1h}", "auth.sessions.absolute_timeout", "at least idle_timeout"),
    ("{same_site: none, secure: false}", "auth.sessions.same_site", "without Secure"),
    ("{same_site: sometimes}", "auth.sessions.same_site", "one of lax, strict, none"),
    ("{login_path: /auth/token}", "auth.sessions.login_path", "distinct paths"),
])
def test_session_mistakes(tmp_path: Path, sessions: str, where: str, expected: str) -> None:
    error = failure(tmp_path, f"auth:\n  issuer: {{issuer: x}}\n  consumers: {{d: {{secret: s}}}}\n"
                              f"  sessions: {sessions}\n" + ROUTES)
    assert error.path == where and expected in error.message, error


def test_consumers_and_sessions_need_the_issuer(tmp_path: Path) -> None:
    for section in ("consumers: {d: {secret: s}}", "sessions: {}"):
        error = failure(tmp_path, f"auth:\n  {section}\n  issuers: {{i: {{issuer: x, secret: '{'s' * 32}'}}}}\n"
                        + ROUTES)
        assert "expected an 'auth.issuer' section too" in error.message


def test_the_issuer_alone_needs_no_issuers_section_but_something_must_be_there(tmp_path: Path) -> None:
    assert "an 'issuer' section" in failure(tmp_path, "auth: {}\n" + ROUTES).message


def test_the_issuer_name_and_iss_must_be_its_own(tmp_path: Path) -> None:
    other = "  issuers:\n    gateway: {issuer: https://idp.test/, secret: '" + "s" * 32 + "'}\n"
    error = failure(tmp_path, ISSUER + other + ROUTES)
    assert error.path == "auth.issuer.name" and "not under auth.issuers" in error.message
    same_iss = "  issuers:\n    idp: {issuer: https://gw.test/, secret: '" + "s" * 32 + "'}\n"
    error = failure(tmp_path, ISSUER + same_iss + ROUTES)
    assert error.path == "auth.issuer.issuer" and "issuers.idp has it" in error.message


def test_a_route_with_the_token_endpoints_path_is_a_conflict(tmp_path: Path) -> None:
    routes = ROUTES + "  - path: /auth/token\n    upstream: api\n"
    error = failure(tmp_path, ISSUER + routes)
    assert error.path == "auth.issuer.token_path" and "no route serves exactly" in error.message
    # a prefix route over it is fine: the exact endpoint is more specific
    load_text(tmp_path, ISSUER + ROUTES.replace("prefix: /", "prefix: /auth"))
    # so is a route with other methods only
    load_text(tmp_path, ISSUER + ROUTES + "  - path: /auth/token\n    methods: [GET]\n    upstream: api\n")


def test_a_route_reading_the_session_needs_sessions(tmp_path: Path) -> None:
    routes = ROUTES.replace("auth: required", "auth: {token: {session: true}}")
    error = failure(tmp_path, ISSUER + routes)
    assert error.path == "routes[0].auth.token.session" and "auth.sessions" in error.message
    config = load_text(tmp_path, ISSUER + "  sessions: {}\n" + routes)
    assert config.routes[0].auth is not None and config.routes[0].auth.session
    assert "at least one token source" in failure(
        tmp_path, ISSUER + routes.replace("{session: true}", "{bearer: false, session: false}")).message


def test_the_state_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == str(tmp_path / "gateway")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir().endswith("/.local/state/gateway")
