"""The top-level ``auth:`` section: the token issuers the gateway trusts, checked whole at load.

```yaml
auth:
  cache_size: 10000                 # verified tokens remembered per worker (0: off)
  issuers:
    corp:                           # a name routes refer to
      issuer: https://idp.example.com/          # the exact `iss` value
      audiences: [api]              # `aud` must hold one of these (leave out: tokens must carry no aud)
      algorithms: [RS256, ES256]    # pinned; never taken from the token (default RS256; HS256 with secret)
      jwks_url: https://idp.example.com/jwks.json   # or discovery_url, keys (files), secret
```

The gateway's own token issuer (``issuer``, ``consumers``, ``sessions``, ``state_dir``, ``redis_prefix``)
is read by gateway/auth/issuer_config.py and joins ``issuers`` under its name (``IssuerSpec.local``).

Everything that can be wrong is found here, in the supervisor and in ``gateway check``: algorithm names,
HS256 without a secret or a secret with asymmetric algorithms, unreadable or unfit key files (the error
names the file and the key path), bad URLs. Secrets are never echoed in an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway.auth.issuer_config import ConsumerSpec, LocalIssuerSpec, SessionSpec, parse_issuer_sections
from gateway.auth.keys import (
    ALGORITHMS,
    ASYMMETRIC_ALGORITHMS,
    MIN_SECRET_BYTES,
    SYMMETRIC_ALGORITHMS,
    Key,
    KeyProblem,
    keys_from_file,
    secret_key,
)
from gateway.auth.oidc.config import LoginSpec, ProviderSpec, parse_oidc_sections
from gateway.config import ConfigError, Node

AUTH_KEYS = frozenset({"issuers", "cache_size", "state_dir", "redis_prefix", "issuer", "consumers", "sessions",
                       "providers", "login"})
ISSUER_KEYS = frozenset({
    "issuer", "audiences", "algorithms", "jwks_url", "discovery_url", "keys", "secret", "leeway",
    "required_claims", "jwks_ttl", "jwks_min_ttl", "jwks_max_ttl", "jwks_cooldown", "jwks_timeout",
    "unknown_kid_ttl", "ca_file",
})
KEY_SOURCES = ("jwks_url", "discovery_url", "keys", "secret")
REMOTE_ONLY = ("jwks_ttl", "jwks_min_ttl", "jwks_max_ttl", "jwks_cooldown", "jwks_timeout", "unknown_kid_ttl",
               "ca_file")
KEY_FILE_KEYS = frozenset({"file", "kid"})
ISSUER_NAME = re.compile(r"^[A-Za-z0-9_.:-]+\Z")
CLAIM_NAME = re.compile(r"^[\x21-\x7e]+\Z")
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_LEEWAY = 60.0
DEFAULT_REQUIRED_CLAIMS = ("exp",)
DEFAULT_JWKS_TTL = 300.0
DEFAULT_JWKS_MIN_TTL = 30.0
DEFAULT_JWKS_MAX_TTL = 86_400.0
DEFAULT_JWKS_COOLDOWN = 5.0
DEFAULT_JWKS_TIMEOUT = 5.0
DEFAULT_UNKNOWN_KID_TTL = 30.0


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    """One trusted issuer: how its tokens are checked and where its keys come from."""

    name: str
    issuer: str
    algorithms: tuple[str, ...]
    audiences: tuple[str, ...] = ()
    keys: tuple[Key, ...] = ()  # from files or the secret, loaded at config load
    jwks_url: str | None = None
    discovery_url: str | None = None
    leeway: float = DEFAULT_LEEWAY
    required_claims: tuple[str, ...] = DEFAULT_REQUIRED_CLAIMS
    jwks_ttl: float = DEFAULT_JWKS_TTL  # when the JWKS response has no Cache-Control max-age
    jwks_min_ttl: float = DEFAULT_JWKS_MIN_TTL  # bounds on a response's max-age
    jwks_max_ttl: float = DEFAULT_JWKS_MAX_TTL
    jwks_cooldown: float = DEFAULT_JWKS_COOLDOWN  # at least this long between two fetches
    jwks_timeout: float = DEFAULT_JWKS_TIMEOUT
    unknown_kid_ttl: float = DEFAULT_UNKNOWN_KID_TTL  # a kid a fresh fetch lacked is refused this long
    ca_file: str | None = None  # trusted CAs for an https JWKS (default: the system's)
    local: bool = False  # the gateway's own issuer: keys from its shared, rotating key set

    @property
    def remote(self) -> bool:
        return self.jwks_url is not None or self.discovery_url is not None

    def describe(self) -> str:
        """One line for ``gateway check`` (no secret, no key material)."""
        if self.local:
            where = "the gateway's own rotating keys"
        elif self.jwks_url is not None:
            where = f"JWKS {_shown(self.jwks_url)}"
        elif self.discovery_url is not None:
            where = f"discovery {_shown(self.discovery_url)}"
        elif self.keys and self.keys[0].algorithms == frozenset(SYMMETRIC_ALGORITHMS):
            where = "shared secret"
        else:
            where = f"{len(self.keys)} key(s) from files"
        return f"{self.name}: iss {self.issuer}, {', '.join(self.algorithms)}, {where}"


@dataclass(frozen=True, slots=True)
class AuthSpec:
    """The ``auth:`` section."""

    issuers: Mapping[str, IssuerSpec] = field(default_factory=dict)
    cache_size: int = DEFAULT_CACHE_SIZE
    local: LocalIssuerSpec | None = None  # the gateway as token issuer (also under issuers, by its name)
    consumers: tuple[ConsumerSpec, ...] = ()
    sessions: SessionSpec | None = None
    state_dir: str = ""  # host-local state (key file, sqlite) when there is no Redis
    redis_prefix: str = "gateway:auth:"
    providers: Mapping[str, ProviderSpec] = field(default_factory=dict)  # OAuth/OIDC (also under issuers)
    login: LoginSpec | None = None  # login at the edge (gateway/auth/oidc/config.py)


def _shown(url: str) -> str:
    """A URL without any user:password@ (for ``gateway check``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_auth(node: Node) -> AuthSpec | None:
    """Reads the ``auth:`` section (absent: no route may use auth)."""
    if node.missing:
        return None
    node.mapping(AUTH_KEYS)
    sections = parse_issuer_sections(node)
    oidc = parse_oidc_sections(node)
    issuers_node = node.child("issuers")
    if sections.local is None and not oidc.providers:
        issuers_node.required("a mapping of issuer names to their settings (or an 'issuer' section, or 'providers')")
    issuers: dict[str, IssuerSpec] = {}
    seen: dict[str, str] = {}
    for name, child in issuers_node.mapping(optional=True).items():
        if not ISSUER_NAME.match(name):
            raise ConfigError(child.source, child.path, "expected an issuer name of letters, digits and _ . : -")
        spec = issuers[name] = parse_issuer(name, child)
        if spec.issuer in seen:
            child.child("issuer").fail(f"an iss value no other issuer has (issuers.{seen[spec.issuer]} has it)")
        seen[spec.issuer] = name
    if sections.local is not None:
        _add_local(issuers, seen, sections.local, node.child("issuer"))
    for name, provider in oidc.providers.items():
        _add_provider(issuers, seen, provider, node.child("providers").child(name))
    if not issuers:
        issuers_node.fail("at least one issuer")
    cache_size = node.child("cache_size").integer(DEFAULT_CACHE_SIZE, minimum=0, maximum=10_000_000)
    return AuthSpec(issuers, cache_size, sections.local, sections.consumers, sections.sessions, sections.state_dir,
                    sections.redis_prefix, oidc.providers, oidc.login)


def _add_local(issuers: dict[str, IssuerSpec], seen: dict[str, str], local: LocalIssuerSpec, node: Node) -> None:
    """The gateway's own issuer is verified like the others, under its name."""
    if local.name in issuers:
        node.child("name").fail(f"an issuer name not under auth.issuers ({local.name} is; set issuer.name)")
    if local.issuer in seen:
        node.child("issuer").fail(f"an iss value no other issuer has (issuers.{seen[local.issuer]} has it)")
    issuers[local.name] = IssuerSpec(
        name=local.name, issuer=local.issuer, algorithms=(local.algorithm,),
        audiences=(local.audience,) if local.audience else (), leeway=local.leeway, local=True,
    )


def _add_provider(issuers: dict[str, IssuerSpec], seen: dict[str, str], provider: ProviderSpec, node: Node) -> None:
    """An OAuth/OIDC provider's JWT access tokens verify like any issuer's, under the provider's name, with
    keys from the jwks_uri its metadata names (gateway/auth/oidc/discovery.py finds it)."""
    if provider.name in issuers:
        raise ConfigError(node.source, node.path, f"a provider name no issuer has ({provider.name} is under "
                          "auth.issuers or is the issuer's name)")
    if provider.issuer in seen:
        node.child("issuer").fail(f"an iss value no other issuer has (issuers.{seen[provider.issuer]} has it)")
    seen[provider.issuer] = provider.name
    issuers[provider.name] = IssuerSpec(
        name=provider.name, issuer=provider.issuer, algorithms=provider.algorithms,
        audiences=provider.accepted_audiences, discovery_url=provider.discovery_urls()[0],
        leeway=provider.leeway, jwks_timeout=provider.timeout, ca_file=provider.ca_file,
    )


def parse_issuer(name: str, node: Node) -> IssuerSpec:
    node.mapping(ISSUER_KEYS)
    given = [key for key in KEY_SOURCES if not node.child(key).missing]
    if len(given) != 1:
        raise ConfigError(node.source, node.path, "expected exactly one of jwks_url, discovery_url, keys "
                          f"or secret, got {', '.join(given) if given else 'none'}")
    source = given[0]
    algorithms = _algorithms(node.child("algorithms"), source == "secret")
    symmetric = [a for a in algorithms if a in SYMMETRIC_ALGORITHMS]
    if source == "secret" and len(symmetric) != len(algorithms):
        asymmetric = ", ".join(a for a in algorithms if a not in SYMMETRIC_ALGORITHMS)
        raise ConfigError(node.source, node.child("secret").path, "a shared secret verifies HS256 only; "
                          f"list only HS256 under algorithms (not {asymmetric}), or use keys/jwks_url instead")
    if source != "secret" and symmetric:
        node.child("algorithms").fail(f"asymmetric algorithms only ({', '.join(ASYMMETRIC_ALGORITHMS)}) with "
                                      f"{source}: HS256 needs the issuer's shared 'secret'")
    if source not in ("jwks_url", "discovery_url"):
        for key in REMOTE_ONLY:
            if not node.child(key).missing:
                raise ConfigError(node.source, node.child(key).path,
                                  f"{key} applies only with jwks_url or discovery_url")
    keys: tuple[Key, ...] = ()
    if source == "secret":
        keys = (_secret(node.child("secret")),)
    elif source == "keys":
        keys = _key_files(node.child("keys"), algorithms)
    min_ttl = node.child("jwks_min_ttl").duration(DEFAULT_JWKS_MIN_TTL)
    max_ttl = node.child("jwks_max_ttl").duration(DEFAULT_JWKS_MAX_TTL)
    if max_ttl < min_ttl:
        node.child("jwks_max_ttl").fail(f"a duration of at least jwks_min_ttl ({min_ttl:g}s)")
    return IssuerSpec(
        name=name,
        issuer=node.child("issuer").required("the exact iss value of the issuer's tokens").string(),
        algorithms=algorithms,
        audiences=_strings(node.child("audiences"), "an audience or a list of audiences"),
        keys=keys,
        jwks_url=_url(node.child("jwks_url")),
        discovery_url=_url(node.child("discovery_url")),
        leeway=_leeway(node.child("leeway")),
        required_claims=_required_claims(node.child("required_claims")),
        jwks_ttl=node.child("jwks_ttl").duration(DEFAULT_JWKS_TTL),
        jwks_min_ttl=min_ttl,
        jwks_max_ttl=max_ttl,
        jwks_cooldown=node.child("jwks_cooldown").duration(DEFAULT_JWKS_COOLDOWN),
        jwks_timeout=node.child("jwks_timeout").duration(DEFAULT_JWKS_TIMEOUT),
        unknown_kid_ttl=node.child("unknown_kid_ttl").duration(DEFAULT_UNKNOWN_KID_TTL),
        ca_file=node.child("ca_file").ca_file(),
    )


def _algorithms(node: Node, with_secret: bool) -> tuple[str, ...]:
    if node.missing:
        return SYMMETRIC_ALGORITHMS if with_secret else ("RS256",)
    names = _strings(node, "a list of algorithms")
    if not names:
        node.fail(f"at least one of {', '.join(ALGORITHMS)}")
    for index, name in enumerate(names):
        if name not in ALGORITHMS:
            where = node.child(index) if isinstance(node.value, list) else node
            where.fail(f"one of {', '.join(ALGORITHMS)} (exactly so spelt)")
    return tuple(dict.fromkeys(names))


def _leeway(node: Node) -> float:
    leeway: float = node.duration(DEFAULT_LEEWAY, positive=False)
    if leeway < 0:
        node.fail("a duration of zero or more, such as 60s")
    return leeway


def _strings(node: Node, expected: str) -> tuple[str, ...]:
    """A string or a list of strings (a single value is the common case for audiences)."""
    if node.missing:
        return ()
    if isinstance(node.value, str):
        return (node.string(),)
    if not isinstance(node.value, list):
        node.fail(expected)
    return tuple(entry.string() for entry in node.elements())


def _required_claims(node: Node) -> tuple[str, ...]:
    if node.missing:
        return DEFAULT_REQUIRED_CLAIMS
    claims = _strings(node, "a list of claim names")
    for index, claim in enumerate(claims):
        if not CLAIM_NAME.match(claim):
            (node.child(index) if isinstance(node.value, list) else node).fail("a claim name without spaces")
    return claims


def _secret(node: Node) -> Key:
    """The HS256 secret; errors say what is wrong and never show the value."""
    value = node.value
    if not isinstance(value, str) or not value:
        raise ConfigError(node.source, node.path, "expected a non-empty string (write secret: ${ENV_VAR})")
    try:
        return secret_key(value.encode("utf-8"))
    except KeyProblem:
        raise ConfigError(node.source, node.path, f"expected a secret of at least {MIN_SECRET_BYTES} bytes "
                          "(HS256, RFC 7518 section 3.2); the value is not shown") from None


def _key_files(node: Node, algorithms: tuple[str, ...]) -> tuple[Key, ...]:
    keys: list[Key] = []
    entries = list(node.elements())
    if not entries:
        node.fail("at least one key file")
    base = Path(node.source).parent
    for entry in entries:
        kid: str | None = None
        file_node = entry
        if isinstance(entry.value, Mapping):
            entry.mapping(KEY_FILE_KEYS)
            file_node = entry.child("file").required("the path of a PEM, JWK or JWK Set file")
            kid = entry.child("kid").string(None)
        name = file_node.string()
        path = base / name
        try:
            keys.extend(keys_from_file(path, kid, algorithms))
        except OSError as exc:
            raise ConfigError(node.source, file_node.path,
                              f"cannot read key file {name}: {exc.strerror or exc}") from None
        except KeyProblem as problem:
            raise ConfigError(node.source, file_node.path, f"key file {name}: {problem}") from None
    return tuple(keys)


def _url(node: Node) -> str | None:
    text: str | None = node.string(None)
    if text is None:
        return None
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        node.fail("an http:// or https:// URL")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        node.fail("an http:// or https:// URL with a host, such as https://idp.example.com/jwks.json")
    return text.strip()
