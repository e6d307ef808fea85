"""A route's ``auth:`` policy: whether a token is needed, where it is read, what its claims must say and
which claims the upstream gets as headers.

```yaml
routes:
  - prefix: /admin
    upstream: api
    auth:
      mode: required              # required | optional | off (default: off; `auth: required` is short)
      issuers: [corp]             # default: every issuer under auth.issuers
      token: {bearer: true, cookie: access_token, query: null, session: false}   # where to look, in order
      claims: {role: admin, groups: [ops]}   # a value: equal (or held by a list); a list: all held
      forward: {sub: X-User-Id, email: X-User-Email}
      keep_authorization: false   # default: Authorization is not sent upstream
      provider: corp              # an OAuth/OIDC provider (auth.providers): its tokens only; opaque ones are
                                  # introspected (gateway/auth/oidc/introspection.py)
      scopes: [orders:read]       # OAuth scopes, per method too (gateway/auth/oidc/scopes.py)
      methods: {POST: [orders:write]}
      rules: ["groups contains admin"]
      relay: client_credentials   # the upstream gets the gateway's own client-credentials token
      login: true                 # a browser without a session is sent to log in (auth.login)
```

This module only reads and checks the policy, and that routes name configured issuers (it imports no
cryptography, so a config without auth never loads it); the stage that applies it is gateway/auth/stage.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.auth.oidc.scopes import ScopeRules, parse_scope_rules
from gateway.config import ConfigError, Node

if TYPE_CHECKING:
    from gateway.auth.config import AuthSpec

MODES = ("required", "optional", "off")
POLICY_KEYS = frozenset({"mode", "issuers", "token", "claims", "forward", "keep_authorization", "provider", "scopes",
                         "methods", "rules", "relay", "login"})
RELAYS = ("client_credentials",)
TOKEN_KEYS = frozenset({"bearer", "cookie", "query", "session"})
HEADER_NAME = re.compile(r"^[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")  # RFC 9110 token, without "_" (the proxy drops those)
COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
QUERY_NAME = re.compile(r"^[A-Za-z0-9_.~-]+\Z")
CLAIM_NAME = re.compile(r"^[\x21-\x7e]+\Z")
# Headers a forwarded claim may not take: framing, hop-by-hop, credentials and what the proxy sets itself.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
    "trailer", "upgrade", "expect", "authorization", "proxy-authorization", "proxy-authenticate", "cookie",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "http2-settings",
    "content-type", "traceparent", "tracestate",
})
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's auth policy as configured (mode ``off`` is no policy at all: None on the route)."""

    required: bool = True  # False: "optional", a request without a token passes anonymously
    issuers: tuple[str, ...] | None = None  # None: every configured issuer
    bearer: bool = True  # Authorization: Bearer
    cookie: str | None = None
    query: str | None = None
    claims: tuple[tuple[str, Scalar | tuple[Scalar, ...]], ...] = ()
    forward: tuple[tuple[str, str], ...] = ()  # (claim, lower-case header name)
    keep_authorization: bool = False
    session: bool = False  # the login session cookie of auth.sessions (after the token sources)
    provider: str | None = None  # an OAuth/OIDC provider: its tokens only (opaque ones introspected)
    scope_rules: ScopeRules = field(default_factory=ScopeRules)  # scopes (per method) and claim rules
    relay: str | None = None  # "client_credentials": the upstream gets the gateway's own token
    login: bool = False  # without credentials a browser is sent to log in (auth.login)


def parse_route_auth(node: Node) -> RoutePolicy | None:
    """Reads a route's ``auth:`` (absent or off: None, the route has no auth stage)."""
    if node.missing:
        return None
    if not isinstance(node.value, dict):  # the shorthand: auth: required | optional | off
        mode = _mode(node)
        return None if mode == "off" else RoutePolicy(required=mode == "required")
    node.mapping(POLICY_KEYS)
    mode_node = node.child("mode")
    mode = "required" if mode_node.missing else _mode(mode_node)
    if mode == "off":
        return None
    bearer, cookie, query, session = _sources(node.child("token"))
    forward = _forward(node.child("forward"))
    provider = node.child("provider").string(None)
    issuers = _issuers(node.child("issuers"))
    if provider is not None:
        if issuers is not None and provider not in issuers:
            node.child("provider").fail(f"one of the route's issuers ({', '.join(issuers)}), or leave issuers out")
        issuers = issuers or (provider,)
    relay = node.child("relay").choice(RELAYS, None) if node.child("relay").value is not False else None
    if relay is not None and provider is None:
        node.child("relay").fail("a route with provider: NAME (whose client credentials are relayed)")
    if relay is not None and node.child("keep_authorization").value is True:
        node.child("relay").fail("no relay with keep_authorization: true (the upstream gets one Authorization)")
    return RoutePolicy(
        required=mode == "required",
        issuers=issuers,
        bearer=bearer,
        cookie=cookie,
        query=query,
        claims=_claims(node.child("claims")),
        forward=forward,
        keep_authorization=node.child("keep_authorization").boolean(False),
        session=session,
        provider=provider,
        scope_rules=parse_scope_rules(node),
        relay=relay,
        login=node.child("login").boolean(False),
    )


def _mode(node: Node) -> str:
    """required | optional | off; YAML reads a bare ``off`` as false and ``on`` as true."""
    if node.value is False:
        return "off"
    if node.value is True:
        return "required"
    mode: str = node.choice(MODES)
    return mode


def _issuers(node: Node) -> tuple[str, ...] | None:
    if node.missing:
        return None
    names = tuple(entry.string() for entry in node.elements())
    if not names:
        node.fail("at least one issuer name (or leave 'issuers' out to accept every issuer)")
    return names


def _sources(node: Node) -> tuple[bool, str | None, str | None, bool]:
    if node.missing:
        return True, None, None, False
    node.mapping(TOKEN_KEYS)
    bearer = node.child("bearer").boolean(True)
    cookie = _name(node.child("cookie"), COOKIE_NAME, "a cookie name")
    query = _name(node.child("query"), QUERY_NAME, "a query parameter name of letters, digits and _ . ~ -")
    session = node.child("session").boolean(False)
    if not bearer and cookie is None and query is None and not session:
        node.fail("at least one token source: bearer: true, cookie: NAME, query: NAME or session: true")
    return bearer, cookie, query, session


def _name(node: Node, pattern: re.Pattern[str], expected: str) -> str | None:
    if node.missing or node.value is False:
        return None
    name: str = node.string()
    if not pattern.match(name):
        node.fail(expected)
    return name


def _claims(node: Node) -> tuple[tuple[str, Scalar | tuple[Scalar, ...]], ...]:
    found: list[tuple[str, Scalar | tuple[Scalar, ...]]] = []
    for name, value in node.mapping(optional=True).items():
        _claim_name(value, name)
        if isinstance(value.value, list):
            items = tuple(_scalar(entry) for entry in value.elements())
            if not items:
                value.fail("at least one value (a list means: the token's claim holds every value listed)")
            found.append((name, items))
        else:
            found.append((name, _scalar(value)))
    return tuple(found)


def _scalar(node: Node) -> Scalar:
    if isinstance(node.value, (str, int, float, bool)):
        return node.value
    node.fail("a string, number or boolean")


def _forward(node: Node) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    headers: set[str] = set()
    for claim, header_node in node.mapping(optional=True).items():
        _claim_name(header_node, claim)
        header = header_node.string().lower()
        if not HEADER_NAME.match(header):
            header_node.fail("a header name like X-User-Id (letters, digits and -; no _ , which the proxy drops)")
        if header in RESERVED_HEADERS:
            header_node.fail("a header the gateway does not set or need itself (not Host, Authorization, "
                             "Cookie, X-Forwarded-*, ...)")
        if header in headers:
            header_node.fail("a header no other forwarded claim uses")
        headers.add(header)
        found.append((claim, header))
    return tuple(found)


def _claim_name(node: Node, name: str) -> None:
    if not CLAIM_NAME.match(name):
        raise ConfigError(node.source, node.path, "expected a claim name without spaces")


def check_route_issuers(policies: list[tuple[int, RoutePolicy]], auth: AuthSpec | None, routes: Node) -> None:
    """Every route that uses auth names only configured issuers (and some issuer exists at all); a route
    reading the session cookie has sessions configured; the issuer's own endpoints fit among the routes."""
    if auth is not None and (auth.local is not None or auth.login is not None):  # gateway-served paths
        _check_builtin_paths(auth, routes)
    for index, policy in policies:
        node = routes.child(index).child("auth")
        if auth is None:
            raise ConfigError(node.source, node.path, "expected a top-level 'auth:' section with issuers "
                              "(the route checks tokens)")
        _check_oidc(policy, auth, node)
        if policy.session and auth.sessions is None:
            raise ConfigError(node.source, f"{node.path}.token.session",
                              "expected an 'auth.sessions' section (the route reads the session cookie)")
        for position, name in enumerate(policy.issuers or ()):
            if name not in auth.issuers:
                known = ", ".join(sorted(auth.issuers))
                raise ConfigError(node.source, f"{node.path}.issuers[{position}]",
                                  f"expected the name of an issuer under auth.issuers ({known}), got {name!r}")


def _check_oidc(policy: RoutePolicy, auth: AuthSpec, node: Node) -> None:
    """A route's provider is configured (with client credentials when relayed); login needs auth.login."""
    if policy.provider is not None:
        provider = auth.providers.get(policy.provider)
        if provider is None:
            known = ", ".join(sorted(auth.providers)) or "none are configured"
            raise ConfigError(node.source, f"{node.path}.provider",
                              f"expected the name of a provider under auth.providers ({known}), "
                              f"got {policy.provider!r}")
        if policy.relay is not None and provider.client_credentials is None:
            raise ConfigError(node.source, f"{node.path}.relay", f"expected providers.{policy.provider}."
                              "client_credentials to be set (the token relayed upstream)")
    if policy.login and auth.login is None:
        raise ConfigError(node.source, f"{node.path}.login", "expected an 'auth.login' section (the route "
                          "sends browsers to log in)")


def _check_builtin_paths(auth: AuthSpec, routes: Node) -> None:
    """The token, JWKS, logout and login paths are routes too: one the config already has exactly (same
    path, a method in common, any host) is a conflict, named here rather than when a worker starts."""
    from gateway.auth.issuer_config import builtin_routes
    from gateway.routing.config import parse_routes
    from gateway.routing.table import RouteTable

    specs = parse_routes(Node(routes.value, routes.source, routes.path))
    builtins = builtin_routes(auth)
    try:
        RouteTable([(spec, None) for spec in [*specs, *(spec for spec, _ in builtins)]], routes.source)
    except ConfigError as exc:
        index = int(exc.path.partition("[")[2].partition("]")[0])
        if index < len(specs):
            raise
        key = builtins[index - len(specs)][1]
        raise ConfigError(routes.source, f"auth.{key}", f"expected a path no route serves exactly already "
                          f"({builtins[index - len(specs)][0].pattern} is a route's path)") from None


# --- applying the policy to verified claims (pure functions, used by the stage) -------------------------

MISSING = object()


def claim_value(claims: dict[str, Any], name: str, path: tuple[str, ...]) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``); a name that is
    itself a key (URLs as claim names have dots) wins. Returns ``MISSING`` when absent."""
    value = claims.get(name, MISSING)
    if value is not MISSING or len(path) < 2:
        return value
    current: Any = claims
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


def _same(actual: Any, expected: Scalar) -> bool:
    """Equal and of the same kind (a token's ``1`` is not the configured ``true``)."""
    return actual == expected and isinstance(actual, bool) == isinstance(expected, bool)


def satisfies(actual: Any, expected: Scalar | tuple[Scalar, ...]) -> bool:
    """Whether a claim's value meets the configured one: a list configured means every listed value is
    held (by a list, or by a space-separated string such as OAuth's ``scope``); a single value means
    equal, or held by a list."""
    if isinstance(expected, tuple):
        held = actual.split() if isinstance(actual, str) else actual
        if not isinstance(held, list):
            return False
        return all(any(_same(item, want) for item in held) for want in expected)
    if isinstance(actual, list):
        return any(_same(item, expected) for item in actual)
    return _same(actual, expected)


def header_value(value: Any) -> bytes | None:
    """A claim as a header value: strings as they are, numbers and booleans as JSON writes them, lists
    of those comma-separated, anything else as JSON. None (header left out) when it would hold a control
    character, which no signed claim should smuggle into the upstream's request."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                         for v in value):
        text = ",".join(str(v) for v in value)
    else:
        text = orjson.dumps(value).decode("utf-8")
    if not text.isprintable():
        return None
    return text.encode("utf-8")

