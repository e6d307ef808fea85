"""The ``auth:`` section and routes' ``auth:`` policies: read through the loader, every mistake named."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.config import AuthSpec, parse_auth
from gateway.auth.policy import RoutePolicy
from gateway.config import ConfigError, Node
from gateway.loader import GatewayConfig, from_document, load
from tests.unit.test_jwt_support import RSA_KEY, SECRET, jwk, pem

ROOT = Path(__file__).resolve().parents[2]
ROUTES = """\
upstreams:
  api: http://127.0.0.1:9001
routes:
  - prefix: /
    upstream: api
    auth: required
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "rsa.pem").write_bytes(pem(RSA_KEY))
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    return load(environ or {}, {"config": str(write(tmp_path, text))})


def failure(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value


def with_issuer(issuer: str, routes: str = ROUTES) -> str:
    """A config with the given issuer settings (YAML, indented under auth.issuers.idp)."""
    body = textwrap.indent(textwrap.dedent(issuer), "      ")
    return f"auth:\n  issuers:\n    idp:\n{body}\n" + routes


KEYS = "issuer: https://idp.test/\nkeys: [rsa.pem]\n"


def test_a_full_section(tmp_path: Path) -> None:
    config = load_text(tmp_path, textwrap.dedent("""\
        auth:
          cache_size: 500
          issuers:
            corp:
              issuer: https://idp.example.com/
              audiences: api
              algorithms: [RS256, PS256, ES256, EdDSA]
              jwks_url: https://idp.example.com/jwks.json
              leeway: 30s
              required_claims: [exp, sub]
              jwks_ttl: 10m
              jwks_min_ttl: 1m
              jwks_max_ttl: 1h
              jwks_cooldown: 2s
              jwks_timeout: 3s
              unknown_kid_ttl: 1m
            hs:
              issuer: internal
              secret: ${SECRET}
            files:
              issuer: files
              keys: [rsa.pem, {file: rsa.pem, kid: two}]
              leeway: 0
        """) + ROUTES, {"SECRET": SECRET})
    auth = config.auth
    assert auth is not None
    assert auth.cache_size == 500
    corp = auth.issuers["corp"]
    assert (corp.audiences, corp.algorithms, corp.leeway, corp.required_claims) == \
        (("api",), ("RS256", "PS256", "ES256", "EdDSA"), 30.0, ("exp", "sub"))
    assert (corp.jwks_ttl, corp.jwks_min_ttl, corp.jwks_max_ttl, corp.jwks_cooldown, corp.jwks_timeout,
            corp.unknown_kid_ttl) == (600.0, 60.0, 3600.0, 2.0, 3.0, 60.0)
    assert corp.remote and corp.keys == ()
    hs = auth.issuers["hs"]
    assert hs.algorithms == ("HS256",) and not hs.remote
    assert hs.keys[0].algorithms == {"HS256"}
    files = auth.issuers["files"]
    assert [k.kid for k in files.keys] == [None, "two"]
    assert files.algorithms == ("RS256",)  # the default pin
    assert files.leeway == 0.0
    assert config.routes[0].auth == RoutePolicy()


def test_defaults(tmp_path: Path) -> None:
    spec = load_text(tmp_path, with_issuer(KEYS)).auth
    assert spec is not None
    idp = spec.issuers["idp"]
    assert (idp.leeway, idp.required_claims, idp.audiences, spec.cache_size) == (60.0, ("exp",), (), 10_000)


def test_the_document_round_trips_through_json(tmp_path: Path) -> None:
    config = load_text(tmp_path, with_issuer(KEYS + "audiences: [a, b]\n"))
    again = from_document(json.loads(json.dumps(config.document)))
    assert again == config


def test_the_summary_lists_issuers_without_secrets(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        auth:
          issuers:
            files: {issuer: files, keys: [rsa.pem]}
            hs: {issuer: internal, secret: "${SECRET}"}
            remote: {issuer: r, jwks_url: "http://127.0.0.1:9/jwks.json"}
            found: {issuer: d, discovery_url: "https://idp/.well-known/openid-configuration"}
        """) + ROUTES
    summary = load_text(tmp_path, text, {"SECRET": SECRET}).summary()
    assert "auth issuers:" in summary
    assert "files: iss files, RS256, 1 key(s) from files" in summary
    assert "hs: iss internal, HS256, shared secret" in summary
    assert "remote: iss r, RS256, JWKS http://127.0.0.1:9/jwks.json" in summary
    assert "found: iss d, RS256, discovery https://idp/.well-known/openid-configuration" in summary
    assert SECRET not in summary


@pytest.mark.parametrize(("issuer", "key", "message"), [
    ("issuer: x\n", "auth.issuers.idp", "expected exactly one of jwks_url, discovery_url, keys or secret, got none"),
    (KEYS + "jwks_url: http://x/j\n", "auth.issuers.idp",
     "expected exactly one of jwks_url, discovery_url, keys or secret, got jwks_url, keys"),
    (KEYS + "algorithms: [RS257]\n", "auth.issuers.idp.algorithms[0]",
     "expected one of RS256, PS256, ES256, EdDSA, HS256 (exactly so spelt)"),
    (KEYS + "algorithms: rs256\n", "auth.issuers.idp.algorithms", "expected one of RS256"),
    (KEYS + "algorithms: [none]\n", "auth.issuers.idp.algorithms[0]", "expected one of RS256"),
    (KEYS + "algorithms: []\n", "auth.issuers.idp.algorithms", "expected at least one of RS256"),
    (KEYS + "algorithms: {a: 1}\n", "auth.issuers.idp.algorithms", "expected a list of algorithms"),
    (KEYS + "algorithms: [HS256]\n", "auth.issuers.idp.algorithms",
     "expected asymmetric algorithms only (RS256, PS256, ES256, EdDSA) with keys: HS256 needs the issuer's shared"),
    ("issuer: x\njwks_url: http://x/j\nalgorithms: [RS256, HS256]\n", "auth.issuers.idp.algorithms",
     "expected asymmetric algorithms only"),
    ("issuer: x\nsecret: ${SECRET}\nalgorithms: [HS256, RS256]\n", "auth.issuers.idp.secret",
     "a shared secret verifies HS256 only; list only HS256 under algorithms (not RS256)"),
    ("issuer: x\nsecret: short\n", "auth.issuers.idp.secret",
     "expected a secret of at least 32 bytes (HS256, RFC 7518 section 3.2); the value is not shown"),
    ("issuer: x\nsecret: 12\n", "auth.issuers.idp.secret", "expected a non-empty string (write secret: ${ENV_VAR})"),
    ("keys: [rsa.pem]\n", "auth.issuers.idp.issuer", "expected the exact iss value"),
    (KEYS + "jwks_ttl: 5m\n", "auth.issuers.idp.jwks_ttl", "jwks_ttl applies only with jwks_url or discovery_url"),
    (KEYS + "ca_file: ca.pem\n", "auth.issuers.idp.ca_file", "ca_file applies only with jwks_url"),
    (KEYS + "leeway: -1\n", "auth.issuers.idp.leeway", "expected a duration"),
    (KEYS + "required_claims: [a b]\n", "auth.issuers.idp.required_claims[0]", "expected a claim name"),
    (KEYS + "required_claims: a b\n", "auth.issuers.idp.required_claims", "expected a claim name"),
    (KEYS + "audiences: 5\n", "auth.issuers.idp.audiences", "expected an audience or a list of audiences"),
    (KEYS + "colour: blue\n", "auth.issuers.idp.colour", "unknown key; expected one of: algorithms, audiences"),
    ("issuer: x\njwks_url: ftp://x/j\n", "auth.issuers.idp.jwks_url", "expected an http:// or https:// URL"),
    ("issuer: x\njwks_url: http://x:99999/j\n", "auth.issuers.idp.jwks_url", "expected an http:// or https:// URL"),
    ("issuer: x\ndiscovery_url: /relative\n", "auth.issuers.idp.discovery_url", "expected an http:// or https://"),
    ("issuer: x\njwks_url: http://x/j\njwks_min_ttl: 1h\njwks_max_ttl: 1m\n", "auth.issuers.idp.jwks_max_ttl",
     "expected a duration of at least jwks_min_ttl (3600s)"),
    ("issuer: x\njwks_url: http://x/j\njwks_cooldown: 0\n", "auth.issuers.idp.jwks_cooldown", "expected a duration"),
    ("issuer: x\njwks_url: https://x/j\nca_file: missing.pem\n", "auth.issuers.idp.ca_file",
     "cannot use CA file missing.pem"),
])
def test_issuer_errors_name_the_key(tmp_path: Path, issuer: str, key: str, message: str) -> None:
    error = failure(tmp_path, with_issuer(issuer), {"SECRET": SECRET})
    assert error.path == key
    assert error.message.startswith(message), error.message
    assert error.source == str(tmp_path / "gateway.yaml")


def test_a_short_secret_is_never_shown(tmp_path: Path) -> None:
    error = failure(tmp_path, with_issuer("issuer: x\nsecret: ${SECRET}\n"), {"SECRET": "hunter2-hunter2"})
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(("keys", "key", "message"), [
    ("[missing.pem]", "auth.issuers.idp.keys[0]", "cannot read key file missing.pem: No such file or directory"),
    ("[rsa.pem, {file: nope.json}]", "auth.issuers.idp.keys[1].file", "cannot read key file nope.json"),
    ("[garbage.txt]", "auth.issuers.idp.keys[0]", "key file garbage.txt: expected a PEM key or certificate"),
    ("[]", "auth.issuers.idp.keys", "expected at least one key file"),
    ("rsa.pem", "auth.issuers.idp.keys", "expected a list"),
    ("[{kid: x}]", "auth.issuers.idp.keys[0].file", "expected the path of a PEM, JWK or JWK Set file"),
    ("[{file: rsa.pem, size: 1}]", "auth.issuers.idp.keys[0].size", "unknown key"),
])
def test_key_file_errors_name_the_file_and_the_key_path(tmp_path: Path, keys: str, key: str, message: str) -> None:
    (tmp_path / "garbage.txt").write_text("hello")
    error = failure(tmp_path, with_issuer(f"issuer: x\nkeys: {keys}\n"))
    assert error.path == key
    assert error.message.startswith(message), error.message


def test_a_key_that_fits_none_of_the_algorithms(tmp_path: Path) -> None:
    error = failure(tmp_path, with_issuer("issuer: x\nkeys: [rsa.pem]\nalgorithms: [ES256]\n"))
    assert error.path == "auth.issuers.idp.keys[0]"
    assert "verifies none of the issuer's algorithms (ES256)" in error.message


def test_key_files_are_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "r.json").write_text(json.dumps(jwk(RSA_KEY, "r1")))
    config = load_text(tmp_path, with_issuer("issuer: x\nkeys: [keys/r.json]\n"))
    assert config.auth is not None and config.auth.issuers["idp"].keys[0].kid == "r1"


@pytest.mark.parametrize(("text", "key", "message"), [
    ("auth: {issuers: {}}\n" + ROUTES, "auth.issuers", "expected at least one issuer"),
    ("auth: {}\n" + ROUTES, "auth.issuers", "expected a mapping of issuer names"),
    ("auth: {issuers: {idp: {issuer: x, keys: [rsa.pem]}}, cache: 1}\n" + ROUTES, "auth.cache",
     "unknown key; expected one of: cache_size, consumers, issuer, issuers, login, providers, redis_prefix, "
     "sessions, state_dir"),
    ("auth: {issuers: {idp: {issuer: x, keys: [rsa.pem]}}, cache_size: -1}\n" + ROUTES, "auth.cache_size",
     "expected an integer from 0"),
    ("auth: {issuers: {'a b': {issuer: x, keys: [rsa.pem]}}}\n" + ROUTES, "auth.issuers.a b",
     "expected an issuer name"),
    ("auth: {issuers: {a: {issuer: x, keys: [rsa.pem]}, b: {issuer: x, keys: [rsa.pem]}}}\n" + ROUTES,
     "auth.issuers.b.issuer", "expected an iss value no other issuer has (issuers.a has it)"),
    (ROUTES, "routes[0].auth", "expected a top-level 'auth:' section with issuers"),
])
def test_section_errors(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = failure(tmp_path, text)
    assert error.path == key
    assert error.message.startswith(message), error.message


def route_with(policy: str) -> str:
    return ("upstreams:\n  api: http://127.0.0.1:9001\nroutes:\n  - prefix: /\n    upstream: api\n    auth:\n"
            + textwrap.indent(textwrap.dedent(policy), "      "))


def policy_of(tmp_path: Path, policy: str) -> RoutePolicy | None:
    config = load_text(tmp_path, "auth: {issuers: {idp: {issuer: x, keys: [rsa.pem]}, two: {issuer: y, "
                                 "keys: [rsa.pem]}}}\n" + route_with(policy))
    return config.routes[0].auth


@pytest.mark.parametrize(("policy", "expected"), [
    ("required", RoutePolicy()),
    ("optional", RoutePolicy(required=False)),
    ("off", None),
    ("on", RoutePolicy()),
    ("mode: off", None),
    ("mode: optional", RoutePolicy(required=False)),
    ("issuers: [two]", RoutePolicy(issuers=("two",))),
    ("token: {bearer: false, cookie: access_token}", RoutePolicy(bearer=False, cookie="access_token")),
    ("token: {query: access_token, cookie: false}", RoutePolicy(query="access_token")),
    ("claims: {role: admin, level: 3, staff: true, groups: [a, b]}",
     RoutePolicy(claims=(("role", "admin"), ("level", 3), ("staff", True), ("groups", ("a", "b"))))),
    ("forward: {sub: X-User-Id, email: x-user-email}",
     RoutePolicy(forward=(("sub", "x-user-id"), ("email", "x-user-email")))),
    ("keep_authorization: true", RoutePolicy(keep_authorization=True)),
])
def test_route_policies(tmp_path: Path, policy: str, expected: RoutePolicy | None) -> None:
    assert policy_of(tmp_path, policy) == expected


@pytest.mark.parametrize(("policy", "key", "message"), [
    ("sometimes", "routes[0].auth", "expected one of required, optional, off"),
    ("mode: always", "routes[0].auth.mode", "expected one of required, optional, off"),
    ("issuers: [nope]", "routes[0].auth.issuers[0]", "expected the name of an issuer under auth.issuers (idp, two)"),
    ("issuers: []", "routes[0].auth.issuers", "expected at least one issuer name"),
    ("token: {bearer: false}", "routes[0].auth.token", "expected at least one token source"),
    ("token: {header: x}", "routes[0].auth.token.header", "unknown key; expected one of: bearer, cookie, query"),
    ("token: {cookie: 'a b'}", "routes[0].auth.token.cookie", "expected a cookie name"),
    ("token: {query: 'a&b'}", "routes[0].auth.token.query", "expected a query parameter name"),
    ("claims: {role: {a: 1}}", "routes[0].auth.claims.role", "expected a string, number or boolean"),
    ("claims: {role: []}", "routes[0].auth.claims.role", "expected at least one value"),
    ("claims: {'a b': x}", "routes[0].auth.claims.a b", "expected a claim name without spaces"),
    ("claims: [role]", "routes[0].auth.claims", "expected a mapping"),
    ("forward: {sub: X_User}", "routes[0].auth.forward.sub", "expected a header name like X-User-Id"),
    ("forward: {sub: 'X User'}", "routes[0].auth.forward.sub", "expected a header name"),
    ("forward: {sub: Authorization}", "routes[0].auth.forward.sub", "expected a header the gateway does not set"),
    ("forward: {sub: X-Forwarded-For}", "routes[0].auth.forward.sub", "expected a header the gateway does not set"),
    ("forward: {sub: X-A, email: x-a}", "routes[0].auth.forward.email", "expected a header no other"),
    ("keep_authorization: maybe", "routes[0].auth.keep_authorization", "expected true or false"),
    ("roles: admin", "routes[0].auth.roles", "unknown key; expected one of: claims, forward"),
])
def test_route_policy_errors(tmp_path: Path, policy: str, key: str, message: str) -> None:
    error = failure(tmp_path, "auth: {issuers: {idp: {issuer: x, keys: [rsa.pem]}, two: {issuer: y, "
                              "keys: [rsa.pem]}}}\n" + route_with(policy))
    assert error.path == key
    assert error.message.startswith(message), error.message


def test_parse_auth_absent_is_none() -> None:
    assert parse_auth(Node(None, "doc", "auth")) is None


def test_from_document_rebuilds_the_same_auth(tmp_path: Path) -> None:
    """Workers rebuild from the resolved document; the keys are read again and compare equal."""
    config = load_text(tmp_path, with_issuer(KEYS))
    document: dict[str, Any] = dict(config.document)
    again = from_document(document)
    assert isinstance(again.auth, AuthSpec)
    assert again.auth == config.auth


def test_the_verification_example_passes_check(tmp_path: Path) -> None:
    config = load({}, {"config": str(ROOT / "examples" / "jwt-verify.yaml")})
    assert config.auth is not None
    idp = config.auth.issuers["idp"]
    assert idp.jwks_url == "http://127.0.0.1:9002/jwks.json"
    assert any(route.auth is not None and route.auth.required for route in config.routes)
    env = {"JWKS_URL": "https://idp.example.com/keys", "UPSTREAM": "http://127.0.0.1:7000"}
    config = load(env, {"config": str(ROOT / "examples" / "jwt-verify.yaml")})
    assert config.auth is not None and config.auth.issuers["idp"].jwks_url == "https://idp.example.com/keys"


def test_a_ca_file_for_an_https_jwks(tmp_path: Path) -> None:
    from tests.unit.test_jwt_support import self_signed

    self_signed(tmp_path)  # writes cert.pem
    config = load_text(tmp_path, with_issuer("issuer: x\njwks_url: https://127.0.0.1/jwks.json\nca_file: cert.pem\n"))
    assert config.auth is not None
    assert config.auth.issuers["idp"].ca_file == str(tmp_path / "cert.pem")
