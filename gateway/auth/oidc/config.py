"""The ``auth.providers`` and ``auth.login`` sections: OAuth 2.1 / OpenID Connect providers the gateway
is a client of, and login at the edge (the gateway as relying party).

```yaml
auth:
  providers:
    corp:                                   # a name routes refer to (`provider: corp`, `issuers: [corp]`)
      issuer: ${OIDC_ISSUER}                # the exact iss of its tokens and metadata
      discovery_url: https://idp.example.com/.well-known/openid-configuration
                                            # default: issuer + /.well-known/openid-configuration, then
                                            # RFC 8414's /.well-known/oauth-authorization-server
      client_id: ${OIDC_CLIENT_ID}
      client_secret: ${OIDC_CLIENT_SECRET}  # or client_secret_file: PATH (never logged or echoed)
      client_auth: client_secret_basic      # or client_secret_post (token and introspection requests)
      scopes: [openid, profile, email]      # asked for at login
      audiences: [api]                      # accepted aud of bearer tokens (default: [client_id])
      algorithms: [RS256]                   # pinned (asymmetric only)
      leeway: 60s
      introspection: {cache_ttl: 60s, max_calls_per_second: 50, max_concurrent: 8}  # opaque tokens (off
                                            # when left out; `true` takes these defaults)
      client_credentials: {scopes: [orders:read], resource: https://api.example.com, refresh_before: 60s}
                                            # machine-to-machine tokens for routes with `relay: client_credentials`
      metadata_ttl: 1h                      # discovery refreshed this often (sooner after a failure)
      timeout: 5s                           # every HTTP call to the provider
      ca_file: corp-ca.pem                  # trusted CAs for https (default: the system's)
  login:                                    # login at the edge
    provider: corp                          # default: the only provider
    login_path: /oauth2/login
    callback_path: /oauth2/callback
    logout_path: /oauth2/logout
    redirect_base: https://gw.example.com   # the exact redirect URI is redirect_base + callback_path
    cookie: {name: __Host-gw, secure: true, samesite: lax}
    post_logout_redirect: /
    allowed_return: [/app/]                 # where a login may return to (local paths under these)
    session_ttl: 8h                         # a login session's longest life
    refresh_before: 60s                     # access tokens are refreshed this long before they expire
```

Every provider is also a JWT issuer (``IssuerSpec``, under the same name, with its discovery URL): its
JWT access tokens verify through gateway/auth/verify.py with keys from the ``jwks_uri`` discovery names.

Secrets: ``client_secret`` (usually ``${ENV}``) or ``client_secret_file`` (read at load, relative to the
config file, one trailing newline dropped) become a ``Secret`` whose repr never shows the value; no error
message here ever shows it either.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import ConfigError, Node

PROVIDER_KEYS = frozenset({
    "issuer", "discovery_url", "client_id", "client_secret", "client_secret_file", "client_auth", "scopes",
    "audiences", "algorithms", "leeway", "introspection", "client_credentials", "metadata_ttl", "timeout",
    "ca_file",
})
INTROSPECTION_KEYS = frozenset({"cache_ttl", "max_calls_per_second", "max_concurrent", "timeout"})
CLIENT_CREDENTIALS_KEYS = frozenset({"scopes", "resource", "audience", "refresh_before"})
LOGIN_KEYS = frozenset({
    "provider", "login_path", "callback_path", "logout_path", "redirect_base", "cookie", "post_logout_redirect",
    "allowed_return", "session_ttl", "refresh_before", "scopes",
})
COOKIE_KEYS = frozenset({"name", "secure", "samesite"})
CLIENT_AUTH = ("client_secret_basic", "client_secret_post")
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_.:-]+\Z")
CLIENT_ID = re.compile(r"^[\x20-\x7e]+\Z")  # RFC 6749 appendix A.1 (VSCHAR)
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")  # RFC 6749 section 3.3
COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*\Z")
MAX_SECRET_FILE = 64 * 1024


class Secret:
    """A client secret: ``reveal()`` gives it to the one place that sends it; repr and str never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)


@dataclass(frozen=True, slots=True)
class IntrospectionSpec:
    """RFC 7662 introspection of opaque tokens: results cached, calls bounded (rate and concurrency)."""

    cache_ttl: float = 60.0  # an answer is kept this long at most (never past the token's exp)
    max_calls_per_second: float = 50.0  # per worker; over it, a token not cached is answered 503
    max_concurrent: int = 8  # calls in flight per worker; more wait (within the timeout)
    timeout: float | None = None  # default: the provider's timeout


@dataclass(frozen=True, slots=True)
class ClientCredentialsSpec:
    """The client-credentials grant (RFC 6749 section 4.4): the gateway's own token for upstreams."""

    scopes: tuple[str, ...] = ()
    resource: str | None = None  # RFC 8707 resource indicator
    audience: str | None = None  # the `audience` parameter some providers want instead
    refresh_before: float = 60.0  # a token is renewed this long before it expires


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One OAuth/OIDC provider the gateway is a client of."""

    name: str
    issuer: str
    client_id: str
    client_secret: Secret | None = None
    discovery_url: str | None = None  # None: the well-known URLs under the issuer (OIDC, then RFC 8414)
    client_auth: str = "client_secret_basic"
    scopes: tuple[str, ...] = ("openid",)
    audiences: tuple[str, ...] = ()  # as configured; accepted_audiences applies the default
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: float = 60.0
    introspection: IntrospectionSpec | None = None
    client_credentials: ClientCredentialsSpec | None = None
    metadata_ttl: float = 3600.0
    timeout: float = 5.0
    ca_file: str | None = None

    @property
    def accepted_audiences(self) -> tuple[str, ...]:
        return self.audiences or (self.client_id,)

    def discovery_urls(self) -> tuple[str, ...]:
        """Where the metadata is looked for, in order (OpenID Connect Discovery 1.0 section 4; RFC 8414
        section 3: the well-known segment goes between the host and the issuer's path)."""
        if self.discovery_url is not None:
            return (self.discovery_url,)
        base = self.issuer.rstrip("/")
        parts = urlsplit(self.issuer)
        path = parts.path.rstrip("/")
        rfc8414 = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}"
        return (f"{base}/.well-known/openid-configuration", rfc8414)

    def describe(self) -> str:
        """One line for ``gateway check`` (never the secret)."""
        extras = []
        if self.introspection is not None:
            extras.append("introspection")
        if self.client_credentials is not None:
            extras.append("client credentials")
        secret = "with a client secret" if self.client_secret is not None else "public client"
        tail = f"; {', '.join(extras)}" if extras else ""
        return f"{self.name}: provider {self.issuer}, client {self.client_id} ({secret}){tail}"


@dataclass(frozen=True, slots=True)
class CookieSpec:
    name: str = "__Host-gw"
    secure: bool = True
    same_site: str = "Lax"


@dataclass(frozen=True, slots=True)
class LoginSpec:
    """Login at the edge: the gateway as OpenID Connect relying party of one provider."""

    provider: str
    redirect_base: str
    login_path: str = "/oauth2/login"
    callback_path: str = "/oauth2/callback"
    logout_path: str = "/oauth2/logout"
    cookie: CookieSpec = field(default_factory=CookieSpec)
    post_logout_redirect: str = "/"
    allowed_return: tuple[str, ...] = ("/",)
    session_ttl: float = 8 * 3600.0
    refresh_before: float = 60.0
    scopes: tuple[str, ...] | None = None  # None: the provider's scopes

    @property
    def redirect_uri(self) -> str:
        return self.redirect_base.rstrip("/") + self.callback_path


@dataclass(frozen=True, slots=True)
class OidcSections:
    """What the providers and login add to ``AuthSpec``."""

    providers: Mapping[str, ProviderSpec] = field(default_factory=dict)
    login: LoginSpec | None = None


def parse_oidc_sections(node: Node) -> OidcSections:
    """Reads ``auth.providers`` and ``auth.login`` of the ``auth:`` node."""
    providers: dict[str, ProviderSpec] = {}
    seen: dict[str, str] = {}
    for name, child in node.child("providers").mapping(optional=True).items():
        if not PROVIDER_NAME.match(name):
            raise ConfigError(child.source, child.path, "expected a provider name of letters, digits and _ . : -")
        spec = providers[name] = parse_provider(name, child)
        if spec.issuer in seen:
            child.child("issuer").fail(f"an issuer no other provider has (providers.{seen[spec.issuer]} has it)")
        seen[spec.issuer] = name
    login_node = node.child("login")
    login = None if login_node.missing else parse_login(login_node, providers)
    return OidcSections(providers, login)


def parse_provider(name: str, node: Node) -> ProviderSpec:
    node.mapping(PROVIDER_KEYS)
    timeout = node.child("timeout").duration(5.0)
    client_id_node = node.child("client_id").required("the client id the provider registered for the gateway")
    client_id: str = client_id_node.string()
    if not CLIENT_ID.match(client_id):
        client_id_node.fail("a client id of printable ASCII characters")
    secret = _client_secret(node)
    introspection = _introspection(node.child("introspection"))
    credentials = _client_credentials(node.child("client_credentials"))
    for key, used in (("introspection", introspection), ("client_credentials", credentials)):
        if used is not None and secret is None:
            raise ConfigError(node.source, node.child(key).path,
                              "a confidential client: set client_secret or client_secret_file")
    audiences = _strings(node.child("audiences"), "an audience or a list of audiences")
    return ProviderSpec(
        name=name,
        issuer=_url(node.child("issuer").required("the provider's issuer URL (the exact iss)")),
        client_id=client_id,
        client_secret=secret,
        discovery_url=_url(node.child("discovery_url")) if not node.child("discovery_url").missing else None,
        client_auth=node.child("client_auth").choice(CLIENT_AUTH, "client_secret_basic"),
        scopes=_scopes(node.child("scopes"), ("openid",)),
        audiences=audiences,
        algorithms=_algorithms(node.child("algorithms")),
        leeway=node.child("leeway").duration(60.0, positive=False),
        introspection=introspection,
        client_credentials=credentials,
        metadata_ttl=node.child("metadata_ttl").duration(3600.0),
        timeout=timeout,
        ca_file=node.child("ca_file").ca_file(),
    )


def _client_secret(node: Node) -> Secret | None:
    inline, from_file = node.child("client_secret"), node.child("client_secret_file")
    if not inline.missing and not from_file.missing:
        raise ConfigError(node.source, node.path, "expected client_secret or client_secret_file, not both")
    if not inline.missing:
        if not isinstance(inline.value, str) or not inline.value:
            raise ConfigError(inline.source, inline.path,
                              "expected a non-empty string (write client_secret: ${ENV_VAR}); the value is not shown")
        return Secret(inline.value)
    if from_file.missing:
        return None
    name: str = from_file.string()
    path = Path(from_file.source).parent / name
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(from_file.source, from_file.path,
                          f"cannot read client secret file {name}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    text = text.removesuffix("\n").removesuffix("\r")
    if len(data) > MAX_SECRET_FILE or not text or not text.isprintable():
        raise ConfigError(from_file.source, from_file.path, f"client secret file {name}: expected one line of "
                          "printable UTF-8 text (the value is not shown)")
    return Secret(text)


def _introspection(node: Node) -> IntrospectionSpec | None:
    if node.missing or node.value is False:
        return None
    if node.value is True:
        return IntrospectionSpec()
    node.mapping(INTROSPECTION_KEYS)
    rate_node = node.child("max_calls_per_second")
    rate = 50.0 if rate_node.missing else rate_node.value
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 100_000:
        rate_node.fail("a number of calls per second greater than 0 (at most 100000)")
    timeout_node = node.child("timeout")
    return IntrospectionSpec(
        cache_ttl=node.child("cache_ttl").duration(60.0, positive=False),
        max_calls_per_second=float(rate),
        max_concurrent=node.child("max_concurrent").integer(8, minimum=1, maximum=1024),
        timeout=None if timeout_node.missing else timeout_node.duration(),
    )


def _client_credentials(node: Node) -> ClientCredentialsSpec | None:
    if node.missing or node.value is False:
        return None
    if node.value is True:
        return ClientCredentialsSpec()
    node.mapping(CLIENT_CREDENTIALS_KEYS)
    resource = node.child("resource")
    return ClientCredentialsSpec(
        scopes=_scopes(node.child("scopes"), ()),
        resource=None if resource.missing else _url(resource),
        audience=node.child("audience").string(None),
        refresh_before=node.child("refresh_before").duration(60.0, positive=False),
    )


def parse_login(node: Node, providers: Mapping[str, ProviderSpec]) -> LoginSpec:
    node.mapping(LOGIN_KEYS)
    provider_node = node.child("provider")
    if provider_node.missing:
        if len(providers) != 1:
            known = ", ".join(sorted(providers)) or "none is under auth.providers"
            provider_node.required(f"the name of the provider to log in with ({known})")
        provider = next(iter(providers))
    else:
        provider = provider_node.string()
        if provider not in providers:
            known = ", ".join(sorted(providers)) or "none are configured"
            provider_node.fail(f"the name of a provider under auth.providers ({known})")
    if providers[provider].client_secret is None:
        provider_node.fail(f"a confidential client: providers.{provider} has no client_secret")
    base_node = node.child("redirect_base").required("the gateway's public base URL, such as https://gw.example.com")
    redirect_base = _url(base_node)
    if urlsplit(redirect_base).query:
        base_node.fail("a base URL without a query")
    paths = {key: _path(node.child(key), default) for key, default in (
        ("login_path", "/oauth2/login"), ("callback_path", "/oauth2/callback"), ("logout_path", "/oauth2/logout"))}
    if len(set(paths.values())) != len(paths):
        node.fail("login_path, callback_path and logout_path that differ")
    cookie = _cookie(node.child("cookie"))
    ttl = node.child("session_ttl").duration(8 * 3600.0)
    scopes_node = node.child("scopes")
    return LoginSpec(
        provider=provider,
        redirect_base=redirect_base,
        cookie=cookie,
        post_logout_redirect=_return_path(node.child("post_logout_redirect"), "/"),
        allowed_return=_allowed_return(node.child("allowed_return")),
        session_ttl=ttl,
        refresh_before=node.child("refresh_before").duration(60.0, positive=False),
        scopes=None if scopes_node.missing else _scopes(scopes_node, ()),
        **paths,
    )


def _cookie(node: Node) -> CookieSpec:
    node.mapping(COOKIE_KEYS, optional=True)
    name = node.child("name").string("__Host-gw")
    if not COOKIE_NAME.match(name):
        node.child("name").fail("a cookie name")
    secure = node.child("secure").boolean(True)
    same_site = SAME_SITE[node.child("samesite").choice(tuple(SAME_SITE), "lax")]
    if same_site == "None" and not secure:
        node.child("samesite").fail("lax or strict when secure is false (browsers refuse SameSite=None without Secure)")
    if name.startswith(("__Host-", "__Secure-")) and not secure:
        node.child("secure").fail(f"true: browsers drop a cookie named {name.split('-')[0]}-... without Secure "
                                  "(rename the cookie for local http)")
    return CookieSpec(name, secure, same_site)


def _allowed_return(node: Node) -> tuple[str, ...]:
    if node.missing:
        return ("/",)
    found = tuple(_return_path(entry, None) for entry in node.elements())
    if not found:
        node.fail("at least one local path prefix, such as /app/")
    return found


def _return_path(node: Node, default: str | None) -> str:
    """A local absolute path: never ``//host`` or ``/\\host`` (browsers read those as another site)."""
    path: str = node.string() if default is None else node.string(default)
    if not path.startswith("/") or path.startswith(("//", "/\\")) or not PLAIN_PATH.match(path):
        node.fail("a local path such as /app/ (no scheme, no host)")
    return path


def _path(node: Node, default: str) -> str:
    path: str = node.string(default)
    if not PLAIN_PATH.match(path) or "//" in path or "/./" in path or "/../" in path:
        node.fail("an absolute path without parameters, such as /oauth2/callback")
    return path


def _scopes(node: Node, default: tuple[str, ...]) -> tuple[str, ...]:
    if node.missing:
        return default
    scopes = node.string().split() if isinstance(node.value, str) else [e.string() for e in node.elements()]
    for scope in scopes:
        if not SCOPE_TOKEN.match(scope):
            node.fail("scope names without spaces, quotes or backslashes")
    return tuple(dict.fromkeys(scopes))


def _algorithms(node: Node) -> tuple[str, ...]:
    if node.missing:
        return ("RS256",)
    names = _strings(node, "a list of algorithms")
    if not names or any(name not in ASYMMETRIC for name in names):
        node.fail(f"a list of {', '.join(ASYMMETRIC)} (a provider's tokens are verified with its published keys)")
    return tuple(dict.fromkeys(names))


def _strings(node: Node, expected: str) -> tuple[str, ...]:
    if node.missing:
        return ()
    if isinstance(node.value, str):
        return (node.string(),)
    if not isinstance(node.value, list):
        node.fail(expected)
    return tuple(entry.string() for entry in node.elements())


def _url(node: Node) -> str:
    text: str = node.string().strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        node.fail("an http:// or https:// URL")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or parts.username:
        node.fail("an http:// or https:// URL with a host (no user:password@, no #fragment)")
    return text
