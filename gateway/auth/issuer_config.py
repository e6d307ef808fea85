"""The gateway as a token issuer: the ``issuer:``, ``consumers:`` and ``sessions:`` parts of ``auth:``.

```yaml
auth:
  state_dir: /var/lib/gateway       # host-local state without Redis: key file, auth.sqlite3
  redis_prefix: "gateway:auth:"     # key prefix with Redis (server setting redis_url)
  issuer:
    name: gateway                   # the issuer's name for routes' `issuers:` (default gateway)
    issuer: https://api.example.com/    # the iss of its tokens (required)
    audience: api                   # the aud of its tokens (optional)
    access_ttl: 5m                  # access token lifetime
    refresh_ttl: 336h               # each refresh token's lifetime (a new one on every use)
    refresh_absolute_ttl: 2160h     # a refresh family's whole life
    rotation: 24h                   # signing key rotation (off: only on demand)
    jwks_max_age: 5m                # the JWKS's Cache-Control max-age; a next key is published this long first
  consumers:
    demo:                           # client_id (unless client_id: is given)
      secret: ${DEMO_SECRET}        # and/or api_key: ${DEMO_API_KEY}
      subject: demo                 # the sub of its tokens (default: the client id)
      scope: [read, write]
      claims: {role: admin}
  sessions:
    cookie: gateway_session
    idle_timeout: 30m
    absolute_timeout: 12h
```

Secrets and API keys are kept only as SHA-256 digests here (compared in constant time at the token
endpoint), and never appear in an error message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, Node

ISSUER_KEYS = frozenset({
    "name", "issuer", "audience", "algorithm", "access_ttl", "refresh_ttl", "refresh_absolute_ttl",
    "refresh_tokens", "rotation", "jwks_max_age", "leeway", "token_path", "jwks_path", "logout_path",
    "key_file", "api_key_header",
})
CONSUMER_KEYS = frozenset({"client_id", "secret", "api_key", "subject", "scope", "claims", "refresh_tokens"})
SESSION_KEYS = frozenset({"cookie", "idle_timeout", "absolute_timeout", "secure", "same_site", "login_path"})
# Claims the issuer sets itself; a consumer's `claims:` may not override them.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "sid"})
SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
CLIENT_ID = re.compile(r"^[\x21-\x7e]+\Z")  # RFC 6749 appendix A.1 (VSCHAR), without space
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")  # RFC 6749 section 3.3
COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*\Z")
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class LocalIssuerSpec:
    """The gateway's own token issuer."""

    issuer: str
    name: str = "gateway"
    audience: str | None = None
    algorithm: str = "RS256"
    access_ttl: float = 300.0
    refresh_ttl: float = 14 * DAY
    refresh_absolute_ttl: float = 90 * DAY
    refresh_tokens: bool = True
    rotation: float | None = DAY  # None: only on demand
    jwks_max_age: float = 300.0
    leeway: float = 60.0
    token_path: str = "/auth/token"  # noqa: S105 - a path, not a password
    jwks_path: str = "/.well-known/jwks.json"
    logout_path: str = "/auth/logout"
    key_file: str = ""  # absolute; used without Redis
    api_key_header: str = "x-api-key"

    @property
    def keep_retired(self) -> float:
        """How long a key that stopped signing stays published: until every token it signed expired (a
        worker may still sign with it until its next key poll, which the leeway covers)."""
        return self.access_ttl + self.leeway + 5.0


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A client of the token endpoint: a client id with a secret, an API key, or both."""

    name: str
    client_id: str
    subject: str
    secret_digest: bytes | None = field(default=None, repr=False)
    api_key_digest: bytes | None = field(default=None, repr=False)
    scope: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    refresh_tokens: bool = True


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """Login sessions: a cookie naming a server-side session (Redis) or holding it, encrypted (embedded)."""

    cookie: str = "gateway_session"
    idle_timeout: float = 1800.0
    absolute_timeout: float = 43_200.0
    secure: bool = True
    same_site: str = "Lax"
    login_path: str = "/auth/login"

    @property
    def touch_interval(self) -> float:
        """How stale a session's last-seen time may get before a request renews it (the idle clock's
        resolution): a renewal costs a Set-Cookie (embedded) or a Redis write, so not on every request."""
        return min(60.0, self.idle_timeout / 4)


@dataclass(frozen=True, slots=True)
class IssuerSections:
    """What the token issuer adds to ``AuthSpec``."""

    local: LocalIssuerSpec | None = None
    consumers: tuple[ConsumerSpec, ...] = ()
    sessions: SessionSpec | None = None
    state_dir: str = ""
    redis_prefix: str = "gateway:auth:"


def digest(secret: str | bytes) -> bytes:
    """What is kept of a secret: its SHA-256 (secrets are compared as digests, in constant time)."""
    return hashlib.sha256(secret.encode("utf-8") if isinstance(secret, str) else secret).digest()


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/gateway``, else ``~/.local/state/gateway``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "gateway")


def parse_issuer_sections(node: Node) -> IssuerSections:
    """Reads ``state_dir``, ``redis_prefix``, ``issuer``, ``consumers`` and ``sessions`` of ``auth:``."""
    base = Path(node.source).parent
    state_node = node.child("state_dir")
    state_dir = os.path.abspath(base / state_node.string()) if not state_node.missing else default_state_dir()
    prefix = node.child("redis_prefix").string("gateway:auth:")
    issuer_node, consumers_node, sessions_node = node.child("issuer"), node.child("consumers"), node.child("sessions")
    if issuer_node.missing:
        for other in (consumers_node, sessions_node):
            if not other.missing:
                raise ConfigError(other.source, other.path, "expected an 'auth.issuer' section too "
                                  "(consumers and sessions belong to the gateway's own token issuer)")
        return IssuerSections(state_dir=state_dir, redis_prefix=prefix)
    local = parse_local_issuer(issuer_node, state_dir)
    consumers = parse_consumers(consumers_node)
    sessions = None if sessions_node.missing else parse_sessions(sessions_node)
    paths = {local.token_path: "token_path", local.jwks_path: "jwks_path", local.logout_path: "logout_path"}
    if len(paths) < 3 or (sessions is not None and sessions.login_path in paths):
        where = sessions_node.child("login_path") if sessions is not None and sessions.login_path in paths \
            else issuer_node
        raise ConfigError(where.source, where.path, "expected distinct paths for token_path, jwks_path, "
                          "logout_path and sessions.login_path")
    return IssuerSections(local, consumers, sessions, state_dir, prefix)


def parse_local_issuer(node: Node, state_dir: str) -> LocalIssuerSpec:
    node.mapping(ISSUER_KEYS)
    algorithm = node.child("algorithm").string("RS256")
    if algorithm != "RS256":
        node.child("algorithm").fail("RS256 (the issuer signs with 2048-bit RSA keys)")
    jwks_max_age = node.child("jwks_max_age").duration(300.0)
    rotation = _rotation(node.child("rotation"))
    if rotation is not None and rotation <= jwks_max_age:
        node.child("rotation").fail(f"a rotation interval longer than jwks_max_age ({jwks_max_age:g}s): a next "
                                    "key is published that long before it signs")
    access_ttl = node.child("access_ttl").duration(300.0)
    refresh_ttl = node.child("refresh_ttl").duration(14 * DAY)
    absolute = node.child("refresh_absolute_ttl").duration(90 * DAY)
    if absolute < refresh_ttl:
        node.child("refresh_absolute_ttl").fail(f"a duration of at least refresh_ttl ({refresh_ttl:g}s)")
    leeway = node.child("leeway").duration(60.0, positive=False)
    if leeway < 0:
        node.child("leeway").fail("a duration of zero or more")
    key_file = node.child("key_file").string(None)
    header = node.child("api_key_header").string("X-API-Key")
    if not HEADER_NAME.match(header):
        node.child("api_key_header").fail("a header name like X-API-Key")
    return LocalIssuerSpec(
        issuer=node.child("issuer").required("the iss value of the tokens the gateway issues").string(),
        name=_issuer_name(node.child("name")),
        audience=node.child("audience").string(None),
        algorithm=algorithm,
        access_ttl=access_ttl,
        refresh_ttl=refresh_ttl,
        refresh_absolute_ttl=absolute,
        refresh_tokens=node.child("refresh_tokens").boolean(True),
        rotation=rotation,
        jwks_max_age=jwks_max_age,
        leeway=leeway,
        token_path=_path(node.child("token_path"), "/auth/token"),
        jwks_path=_path(node.child("jwks_path"), "/.well-known/jwks.json"),
        logout_path=_path(node.child("logout_path"), "/auth/logout"),
        key_file=os.path.abspath(Path(node.source).parent / key_file) if key_file
        else str(Path(state_dir) / "issuer-keys.json"),
        api_key_header=header.lower(),
    )


def _issuer_name(node: Node) -> str:
    name: str = node.string("gateway")
    if not re.match(r"^[A-Za-z0-9_.:-]+\Z", name):
        node.fail("an issuer name of letters, digits and _ . : -")
    return name


def _rotation(node: Node) -> float | None:
    if node.value is False or (isinstance(node.value, str) and node.value.strip().lower() == "off"):
        return None
    rotation: float = node.duration(DAY)
    return rotation


def _path(node: Node, default: str) -> str:
    path: str = node.string(default)
    if not PLAIN_PATH.match(path) or "//" in path or "/./" in path or "/../" in path:
        node.fail("an absolute path without parameters, such as /auth/token")
    return path


def parse_consumers(node: Node) -> tuple[ConsumerSpec, ...]:
    consumers: list[ConsumerSpec] = []
    client_ids: dict[str, str] = {}
    api_keys: dict[bytes, str] = {}
    for name, child in node.required("a mapping of consumers (client id: secret or api_key)").items():
        consumer = parse_consumer(name, child)
        if consumer.client_id in client_ids:
            child.fail(f"a client_id no other consumer has ({client_ids[consumer.client_id]} has it)")
        client_ids[consumer.client_id] = name
        if consumer.api_key_digest is not None:
            if consumer.api_key_digest in api_keys:
                raise ConfigError(child.source, child.child("api_key").path,
                                  f"expected an API key no other consumer has ({api_keys[consumer.api_key_digest]} "
                                  "has the same); the value is not shown")
            api_keys[consumer.api_key_digest] = name
        consumers.append(consumer)
    if not consumers:
        node.fail("at least one consumer")
    return tuple(consumers)


def parse_consumer(name: str, node: Node) -> ConsumerSpec:
    node.mapping(CONSUMER_KEYS)
    client_id = node.child("client_id").string(name)
    if not CLIENT_ID.match(client_id) or ":" in client_id:
        (node.child("client_id") if not node.child("client_id").missing else node).fail(
            "a client id of visible ASCII characters without ':' or spaces")
    secret = _secret(node.child("secret"))
    api_key = _secret(node.child("api_key"))
    if secret is None and api_key is None:
        raise ConfigError(node.source, node.path, "expected a secret, an api_key or both (write secret: ${ENV_VAR})")
    subject = node.child("subject").string(client_id)
    return ConsumerSpec(
        name=name, client_id=client_id, subject=subject,
        secret_digest=None if secret is None else digest(secret),
        api_key_digest=None if api_key is None else digest(api_key),
        scope=_scope(node.child("scope")),
        claims=_claims(node.child("claims")),
        refresh_tokens=node.child("refresh_tokens").boolean(True),
    )


def _secret(node: Node) -> str | None:
    """A secret or API key; an error never shows the value."""
    if node.missing:
        return None
    if not isinstance(node.value, str) or not node.value:
        raise ConfigError(node.source, node.path, "expected a non-empty string (write ${ENV_VAR}); "
                          "the value is not shown")
    if not node.value.isprintable():
        raise ConfigError(node.source, node.path, "expected printable characters; the value is not shown")
    return node.value


def _scope(node: Node) -> tuple[str, ...]:
    if node.missing:
        return ()
    items = node.string().split() if isinstance(node.value, str) else [e.string() for e in node.elements()]
    for item in items:
        if not SCOPE_TOKEN.match(item):
            node.fail("scope tokens of visible ASCII characters without spaces, quotes or backslashes")
    return tuple(dict.fromkeys(items))


def _claims(node: Node) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for name, child in node.mapping(optional=True).items():
        if name in RESERVED_CLAIMS:
            raise ConfigError(child.source, child.path, "expected a claim the issuer does not set itself "
                              f"(not {', '.join(sorted(RESERVED_CLAIMS))})")
        claims[name] = child.value
    return claims


def parse_sessions(node: Node) -> SessionSpec:
    node.mapping(SESSION_KEYS, optional=True)
    cookie = node.child("cookie").string("gateway_session")
    if not COOKIE_NAME.match(cookie):
        node.child("cookie").fail("a cookie name")
    idle = node.child("idle_timeout").duration(1800.0)
    absolute = node.child("absolute_timeout").duration(43_200.0)
    if absolute < idle:
        node.child("absolute_timeout").fail(f"a duration of at least idle_timeout ({idle:g}s)")
    secure = node.child("secure").boolean(True)
    same_site = SAME_SITE[node.child("same_site").choice(tuple(SAME_SITE), "lax")]
    if same_site == "None" and not secure:
        node.child("same_site").fail("lax or strict when secure is false (browsers refuse SameSite=None "
                                     "without Secure)")
    return SessionSpec(cookie, idle, absolute, secure, same_site, _path(node.child("login_path"), "/auth/login"))


def builtin_routes(auth: Any) -> list[tuple[Any, str]]:
    """The issuer's endpoints and the edge login's (gateway/auth/oidc/login.py) as routes (``RouteSpec``),
    each with the config key of its path. ``auth`` is the ``AuthSpec``."""
    from gateway.routing.config import RouteSpec

    login: list[tuple[Any, str]] = []
    if getattr(auth, "login", None) is not None:
        from gateway.auth.oidc.login import login_routes

        login = list(login_routes(auth.login))
    local: LocalIssuerSpec | None = auth.local
    if local is None:
        return login
    found = [
        (RouteSpec("auth:token", local.token_path, False, "(gateway)", frozenset({"POST"})), "issuer.token_path"),
        (RouteSpec("auth:jwks", local.jwks_path, False, "(gateway)", frozenset({"GET"})), "issuer.jwks_path"),
        (RouteSpec("auth:logout", local.logout_path, False, "(gateway)", frozenset({"POST"})), "issuer.logout_path"),
    ]
    if auth.sessions is not None:
        found.append((RouteSpec("auth:login", auth.sessions.login_path, False, "(gateway)", frozenset({"POST"})),
                      "sessions.login_path"))
    return found + login
