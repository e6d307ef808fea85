"""``auth.providers`` and ``auth.login`` (gateway/auth/oidc/config.py) and the route keys they add to a
route's ``auth:`` (provider, scopes, methods, rules, relay, login)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.auth.oidc.config import IntrospectionSpec, Secret
from gateway.config import ConfigError
from gateway.loader import GatewayConfig, load

SECRET = "s3cret-value-never-shown"
UPSTREAMS = """\
upstreams:
  api: http://127.0.0.1:9001
"""
ROUTES = UPSTREAMS + """\
routes:
  - prefix: /
    upstream: api
    auth: {provider: corp}
"""
PROVIDER = f"""\
auth:
  providers:
    corp:
      issuer: https://idp.test/realms/corp
      client_id: gw
      client_secret: {SECRET}
"""


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load(environ or {}, {"config": str(path)})


def failure(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert SECRET not in str(info.value)
    return info.value


def test_a_provider_and_its_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, PROVIDER + ROUTES)
    assert config.auth is not None
    corp = config.auth.providers["corp"]
    assert corp.client_secret == Secret(SECRET) and corp.client_secret != Secret("other")
    assert corp.client_secret is not None and corp.client_secret.reveal() == SECRET
    assert SECRET not in repr(corp) and SECRET not in str(corp.client_secret)
    assert hash(corp.client_secret) == hash(Secret("x"))
    assert corp.scopes == ("openid",) and corp.accepted_audiences == ("gw",)
    assert corp.introspection is None and corp.client_credentials is None
    assert corp.discovery_urls() == (
        "https://idp.test/realms/corp/.well-known/openid-configuration",
        "https://idp.test/.well-known/oauth-authorization-server/realms/corp",
    )
    assert corp.describe() == "corp: provider https://idp.test/realms/corp, client gw (with a client secret)"
    issuer = config.auth.issuers["corp"]  # the provider is a JWT issuer too
    assert issuer.issuer == corp.issuer and issuer.audiences == ("gw",) and issuer.remote
    assert issuer.discovery_url == corp.discovery_urls()[0]
    route = config.routes[0].auth
    assert route is not None and route.provider == "corp" and route.issuers == ("corp",)
    assert route.scope_rules.empty and route.relay is None and not route.login
    assert config.auth.login is None


def test_a_full_provider_and_login(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    config = load_text(tmp_path, """\
    auth:
      providers:
        corp:
          issuer: ${ISSUER}
          discovery_url: https://idp.test/custom/metadata
          client_id: ${CLIENT_ID}
          client_secret_file: secret.txt
          client_auth: client_secret_post
          scopes: openid profile email
          audiences: api
          algorithms: [ES256, RS256, ES256]
          leeway: 0
          introspection: {cache_ttl: 10s, max_calls_per_second: 2.5, max_concurrent: 3, timeout: 2s}
          client_credentials: {scopes: [orders:read], resource: https://orders.test/, audience: orders,
                               refresh_before: 30s}
          metadata_ttl: 10m
          timeout: 2s
        other:
          issuer: https://other.test
          client_id: public-client
          introspection: false
          client_credentials: false
      login:
        provider: corp
        login_path: /login
        callback_path: /cb
        logout_path: /bye
        redirect_base: https://gw.test/
        cookie: {name: gw_session, secure: false, samesite: strict}
        post_logout_redirect: /signed-out
        allowed_return: [/app/, /admin/]
        session_ttl: 1h
        refresh_before: 30s
        scopes: [openid, groups]
    upstreams:
      api: http://127.0.0.1:9001
    routes:
      - prefix: /
        upstream: api
        auth:
          provider: corp
          issuers: [corp, other]
          scopes: [orders:read]
          methods: {POST: [orders:write]}
          rules: ["groups contains admin"]
          relay: client_credentials
          login: true
    """, {"ISSUER": "https://idp.test", "CLIENT_ID": "gw"})
    assert config.auth is not None
    corp = config.auth.providers["corp"]
    assert corp.client_secret is not None and corp.client_secret.reveal() == "from-a-file"
    assert corp.discovery_urls() == ("https://idp.test/custom/metadata",)
    assert corp.client_auth == "client_secret_post" and corp.scopes == ("openid", "profile", "email")
    assert corp.audiences == ("api",) and corp.algorithms == ("ES256", "RS256") and corp.leeway == 0
    assert corp.introspection == IntrospectionSpec(10.0, 2.5, 3, 2.0)
    assert corp.client_credentials is not None and corp.client_credentials.resource == "https://orders.test/"
    assert corp.client_credentials.audience == "orders" and corp.client_credentials.refresh_before == 30
    assert corp.metadata_ttl == 600 and corp.timeout == 2
    assert "introspection, client credentials" in corp.describe()
    other = config.auth.providers["other"]
    assert other.client_secret is None and other.introspection is None and "public client" in other.describe()
    assert other.discovery_urls()[1] == "https://other.test/.well-known/oauth-authorization-server"
    login = config.auth.login
    assert login is not None and login.provider == "corp"
    assert login.redirect_uri == "https://gw.test/cb"
    assert (login.login_path, login.logout_path) == ("/login", "/bye")
    assert (login.cookie.name, login.cookie.secure, login.cookie.same_site) == ("gw_session", False, "Strict")
    assert login.post_logout_redirect == "/signed-out" and login.allowed_return == ("/app/", "/admin/")
    assert login.session_ttl == 3600 and login.refresh_before == 30 and login.scopes == ("openid", "groups")
    route = config.routes[0].auth
    assert route is not None and route.issuers == ("corp", "other") and route.relay == "client_credentials"
    assert route.login and route.scope_rules.scopes == ("orders:read",)
    assert route.scope_rules.methods == (("POST", ("orders:write",)),)
    assert route.scope_rules.rules[0].text == "groups contains admin"


def test_introspection_true_takes_the_defaults_and_login_the_only_provider(tmp_path: Path) -> None:
    extra = "      introspection: true\n      client_credentials: true\n  login:\n    redirect_base: http://127.0.0.1:8080\n"
    config = load_text(tmp_path, PROVIDER + extra + ROUTES)
    assert config.auth is not None and config.auth.login is not None
    corp = config.auth.providers["corp"]
    assert corp.introspection == IntrospectionSpec()
    assert corp.client_credentials is not None and corp.client_credentials.scopes == ()
    login = config.auth.login
    assert login.provider == "corp" and login.redirect_uri == "http://127.0.0.1:8080/oauth2/callback"
    assert login.cookie.name == "__Host-gw" and login.cookie.secure and login.allowed_return == ("/",)


@pytest.mark.parametrize(("snippet", "where", "expected"), [
    ("client_id: ''", "auth.providers.corp.client_id", "expected a non-empty string"),
    ("client_id: \"a\\tb\"", "auth.providers.corp.client_id", "printable ASCII"),
    ("issuer: ftp://idp.test", "auth.providers.corp.issuer", "http:// or https:// URL"),
    ("issuer: https://user:pw@idp.test", "auth.providers.corp.issuer", "no user:password@"),
    ("issuer: 'http://idp.test:99999'", "auth.providers.corp.issuer", "expected an http:// or https:// URL"),
    ("client_auth: private_key_jwt", "auth.providers.corp.client_auth", "expected one of client_secret_basic"),
    ("algorithms: [HS256]", "auth.providers.corp.algorithms", "a provider's tokens are verified"),
    ("algorithms: []", "auth.providers.corp.algorithms", "a list of RS256"),
    ("algorithms: 5", "auth.providers.corp.algorithms", "a list of algorithms"),
    ("scopes: ['a\"b']", "auth.providers.corp.scopes", "scope names without spaces"),
    ("introspection: {max_calls_per_second: 0}", "auth.providers.corp.introspection.max_calls_per_second",
     "greater than 0"),
    ("introspection: {max_calls_per_second: true}", "auth.providers.corp.introspection.max_calls_per_second",
     "greater than 0"),
    ("introspection: {max_concurrent: 0}", "auth.providers.corp.introspection.max_concurrent", "from 1 to 1024"),
    ("introspection: {cache: 1}", "auth.providers.corp.introspection.cache", "unknown key"),
    ("client_credentials: {resource: nope}", "auth.providers.corp.client_credentials.resource", "URL"),
    ("client_secret_file: missing.txt", "auth.providers.corp", "client_secret or client_secret_file, not both"),
    ("ca_file: missing.pem", "auth.providers.corp.ca_file", "cannot use CA file missing.pem"),
    ("color: red", "auth.providers.corp.color", "unknown key"),
])
def test_provider_mistakes(tmp_path: Path, snippet: str, where: str, expected: str) -> None:
    error = failure(tmp_path, PROVIDER + f"      {snippet}\n" + ROUTES)
    assert error.path == where and expected in error.message, error


def test_secret_sources_and_their_mistakes(tmp_path: Path) -> None:
    base = "auth:\n  providers:\n    corp:\n      issuer: https://idp.test\n      client_id: gw\n"
    error = failure(tmp_path, base + "      client_secret: ''\n" + ROUTES)
    assert error.path == "auth.providers.corp.client_secret" and "${ENV_VAR}" in error.message
    error = failure(tmp_path, base + "      client_secret_file: nowhere.txt\n" + ROUTES)
    assert "cannot read client secret file nowhere.txt" in error.message
    (tmp_path / "empty.txt").write_text("\n")
    error = failure(tmp_path, base + "      client_secret_file: empty.txt\n" + ROUTES)
    assert "one line of printable UTF-8" in error.message
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe")
    assert "one line" in failure(tmp_path, base + "      client_secret_file: binary.txt\n" + ROUTES).message
    (tmp_path / "big.txt").write_text("x" * 70_000)
    assert "one line" in failure(tmp_path, base + "      client_secret_file: big.txt\n" + ROUTES).message
    for key in ("introspection: true", "client_credentials: {scopes: [a]}"):
        error = failure(tmp_path, base + f"      {key}\n" + ROUTES)
        assert "a confidential client" in error.message and error.path.endswith(key.split(":")[0])


def test_provider_names_and_issuers_are_distinct(tmp_path: Path) -> None:
    error = failure(tmp_path, PROVIDER + "    'a b': {issuer: https://x.test, client_id: c}\n" + ROUTES)
    assert error.path == "auth.providers.a b" and "provider name" in error.message
    error = failure(tmp_path, PROVIDER + "    twin: {issuer: https://idp.test/realms/corp, client_id: c}\n" + ROUTES)
    assert error.path == "auth.providers.twin.issuer" and "providers.corp has it" in error.message
    clash = "  issuers:\n    corp: {issuer: https://jwt.test/, secret: '" + "s" * 32 + "'}\n"
    error = failure(tmp_path, PROVIDER + clash + ROUTES)
    assert error.path == "auth.providers.corp" and "a provider name no issuer has" in error.message
    same_iss = "  issuers:\n    jwt: {issuer: https://idp.test/realms/corp, secret: '" + "s" * 32 + "'}\n"
    error = failure(tmp_path, PROVIDER + same_iss + ROUTES)
    assert error.path == "auth.providers.corp.issuer" and "issuers.jwt has it" in error.message


@pytest.mark.parametrize(("login", "where", "expected"), [
    ("{}", "auth.login.redirect_base", "the gateway's public base URL"),
    ("{redirect_base: 'https://gw.test/?a=1'}", "auth.login.redirect_base", "without a query"),
    ("{redirect_base: https://gw.test, provider: nope}", "auth.login.provider", "a provider under auth.providers"),
    ("{redirect_base: https://gw.test, login_path: /a, callback_path: /a}", "auth.login", "that differ"),
    ("{redirect_base: https://gw.test, callback_path: 'cb'}", "auth.login.callback_path", "an absolute path"),
    ("{redirect_base: https://gw.test, cookie: {name: 'a b'}}", "auth.login.cookie.name", "a cookie name"),
    ("{redirect_base: https://gw.test, cookie: {secure: false, samesite: none}}", "auth.login.cookie.samesite",
     "lax or strict"),
    ("{redirect_base: https://gw.test, cookie: {secure: false}}", "auth.login.cookie.secure",
     "browsers drop a cookie named __Host-"),
    ("{redirect_base: https://gw.test, allowed_return: []}", "auth.login.allowed_return", "at least one"),
    ("{redirect_base: https://gw.test, allowed_return: ['//evil.test/']}", "auth.login.allowed_return[0]",
     "a local path"),
    ("{redirect_base: https://gw.test, allowed_return: ['https://evil.test/']}", "auth.login.allowed_return[0]",
     "a local path"),
    ("{redirect_base: https://gw.test, post_logout_redirect: '/\\\\evil.test'}", "auth.login.post_logout_redirect",
     "a local path"),
])
def test_login_mistakes(tmp_path: Path, login: str, where: str, expected: str) -> None:
    error = failure(tmp_path, PROVIDER + f"  login: {login}\n" + ROUTES)
    assert error.path == where and expected in error.message, error


def test_login_needs_one_confidential_provider(tmp_path: Path) -> None:
    two = PROVIDER + "    other: {issuer: https://other.test, client_id: c}\n"
    error = failure(tmp_path, two + "  login: {redirect_base: https://gw.test}\n" + ROUTES)
    assert error.path == "auth.login.provider" and "(corp, other)" in error.message
    error = failure(tmp_path, two + "  login: {redirect_base: https://gw.test, provider: other}\n" + ROUTES)
    assert "a confidential client" in error.message


@pytest.mark.parametrize(("auth", "where", "expected"), [
    ("{provider: nope}", "routes[0].auth.provider", "a provider under auth.providers (corp)"),
    ("{provider: corp, issuers: [jwt]}", "routes[0].auth.provider", "one of the route's issuers (jwt)"),
    ("{relay: client_credentials}", "routes[0].auth.relay", "a route with provider: NAME"),
    ("{provider: corp, relay: tokens}", "routes[0].auth.relay", "one of client_credentials"),
    ("{provider: corp, relay: client_credentials}", "routes[0].auth.relay", "client_credentials to be set"),
    ("{provider: corp, relay: client_credentials, keep_authorization: true}", "routes[0].auth.relay",
     "no relay with keep_authorization"),
    ("{login: true}", "routes[0].auth.login", "an 'auth.login' section"),
    ("{scopes: ['a b\"']}", "routes[0].auth.scopes", "scope names"),
    ("{methods: {post: [a]}}", "routes[0].auth.methods.post", "an HTTP method in capitals"),
    ("{rules: ['groups has admin']}", "routes[0].auth.rules[0]", "a rule such as"),
])
def test_route_mistakes(tmp_path: Path, auth: str, where: str, expected: str) -> None:
    jwt = "  issuers:\n    jwt: {issuer: https://jwt.test/, secret: '" + "s" * 32 + "'}\n"
    text = PROVIDER + jwt + UPSTREAMS + f"routes:\n  - {{prefix: /, upstream: api, auth: {auth}}}\n"
    error = failure(tmp_path, text)
    assert error.path == where and expected in error.message, error


def test_relay_with_client_credentials_and_no_relay(tmp_path: Path) -> None:
    text = PROVIDER + "      client_credentials: {scopes: [a]}\n" + UPSTREAMS + \
        "routes:\n  - {prefix: /a, upstream: api, auth: {provider: corp, relay: client_credentials}}\n" \
        "  - {prefix: /b, upstream: api, auth: {provider: corp, relay: false}}\n"
    config = load_text(tmp_path, text)
    assert [route.auth.relay for route in config.routes if route.auth] == ["client_credentials", None]


def test_a_ca_file(tmp_path: Path) -> None:
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if not system.exists():
        pytest.skip("no system CA bundle to copy")
    (tmp_path / "ca.pem").write_bytes(system.read_bytes())
    config = load_text(tmp_path, PROVIDER + "      ca_file: ca.pem\n" + ROUTES)
    assert config.auth is not None and config.auth.providers["corp"].ca_file == str(tmp_path / "ca.pem")
    assert config.auth.issuers["corp"].ca_file == str(tmp_path / "ca.pem")


def test_providers_alone_need_no_issuers(tmp_path: Path) -> None:
    config = load_text(tmp_path, PROVIDER + UPSTREAMS + "routes:\n  - {prefix: /, upstream: api, auth: required}\n")
    assert config.auth is not None and list(config.auth.issuers) == ["corp"]
    summary = config.summary()
    assert "corp: iss https://idp.test/realms/corp" in summary
    assert "auth providers:\n  corp: provider https://idp.test/realms/corp, client gw" in summary
    assert SECRET not in summary
