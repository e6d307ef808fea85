"""Token verification: pyjwt does the JOSE work; this module decides which key and which rules apply,
and remembers tokens it has verified.

The order for a token not in the cache (``Verifier.verify_now``):

1. the header and claims, unverified (malformed, a non-string ``kid``, any ``crit``: rejected);
2. the issuer, by the token's unverified ``iss`` among the configured issuers (unknown: rejected, no
   key look-up, no fetch);
3. ``alg``: must be one of *that issuer's* pinned algorithms (``none`` never is);
4. the keys: the issuer's key source gives the candidates for the ``kid``; only keys whose allowed
   algorithms hold ``alg`` are tried, so a key is never used with an algorithm its type does not fit
   (an RSA public key is never an HMAC secret). No key at all for the kid: ``NeedKeys``, and the async
   ``verify`` asks the source to refresh (rate-limited, shared) and looks once more;
5. signature and claims, by pyjwt's ``decode_complete`` with ``algorithms=[alg]`` and the issuer's
   ``iss``, audiences, leeway and required claims.

The verified-token cache is keyed by the token itself: a hit is a dict look-up, which compares the whole
token once the hashes match (Python's keyed SipHash; equality, not the hash, decides), so a token that
differs from a cached one in any byte never gets its entry. It holds at most ``cache_size`` entries
(least recently used go first), so its memory stays bounded: each entry keeps a token of at most
MAX_TOKEN_BYTES, besides its claims. An entry ends when pyjwt would start refusing the token: ``exp``
plus the leeway. A revocation check (part 2 of issue 5: ``Revocation``) still runs on every hit.
A digest as the key (not keeping the token) cost more than the rest of a hit: about 8,000 instructions
for BLAKE2b over a 600-byte RS256 token, against a few hundred for the dict's hash.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import jwt
import orjson
from jwt import exceptions as jwt_errors

from gateway.auth.config import IssuerSpec
from gateway.auth.keys import MAX_KID_LENGTH, Key, KeySource

MAX_TOKEN_BYTES = 16 * 1024
NO_EXP_LIFETIME = 60.0  # how long a token without exp (allowed only if exp is not required) stays cached


class TokenError(Exception):
    """The token fails; ``description`` is client-safe (says what failed, never shows the token)."""

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)


class NeedKeys(Exception):
    """No key of the issuer fits the token's kid: the source may find one by refreshing."""

    def __init__(self, source: KeySource, kid: str | None) -> None:
        self.source = source
        self.kid = kid
        super().__init__("no key for the token's kid")


class Verified:
    """A verified token: its claims, the issuer (config name) that vouched for it, the subject, and the
    wall-clock time until which the verification holds."""

    __slots__ = ("claims", "expires", "issuer", "subject")

    def __init__(self, claims: dict[str, Any], issuer: str, subject: str | None, expires: float) -> None:
        self.claims = claims
        self.issuer = issuer
        self.subject = subject
        self.expires = expires


class Revocation(Protocol):
    """A check that runs on every request with a token, cached or not (part 2: revoked ``jti``s shared by
    all workers and hosts). It must not block: answer from memory kept current in the background."""

    def revoked(self, token: Verified) -> bool: ...


class TokenCache:
    """Verified tokens by token: bounded, least recently used evicted first, entries expire."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[bytes, Verified] = OrderedDict()

    def get(self, token: bytes, now: float) -> Verified | None:
        entry = self.entries.get(token)
        if entry is None:
            return None
        if entry.expires <= now:
            del self.entries[token]
            return None
        self.entries.move_to_end(token)
        return entry

    def put(self, token: bytes, entry: Verified) -> None:
        if self.size <= 0:
            return
        entries = self.entries
        entries[token] = entry
        entries.move_to_end(token)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


class Issuer:
    """An issuer at run time: its spec, its key source and the arguments pyjwt gets for its tokens."""

    __slots__ = ("algorithms", "audience", "leeway", "name", "options", "source", "spec")

    def __init__(self, spec: IssuerSpec, source: KeySource) -> None:
        self.spec = spec
        self.name = spec.name
        self.source = source
        self.algorithms = frozenset(spec.algorithms)
        self.leeway = spec.leeway
        # No audiences configured: audience=None, and pyjwt then refuses any token that carries an aud.
        self.audience: list[str] | None = list(spec.audiences) or None
        self.options: dict[str, Any] = {"require": list(spec.required_claims), "enforce_minimum_key_length": True}


class Verifier:
    """Verifies tokens of the configured issuers for one worker; see the module docstring."""

    def __init__(self, issuers: Mapping[str, Issuer], cache_size: int, revocation: Revocation | None = None,
                 clock: Any = time.time) -> None:
        self.issuers = dict(issuers)
        self.by_iss = {issuer.spec.issuer: issuer for issuer in self.issuers.values()}
        self.cache = TokenCache(cache_size)
        self.revocation = revocation
        self.clock = clock
        self.pyjwt = jwt.PyJWT()

    def cached(self, token: bytes) -> Verified | None:
        """The per-request fast path: a verified token still valid, or None (verify it then)."""
        entry = self.cache.get(token, self.clock())
        if entry is not None and self.revocation is not None and self.revocation.revoked(entry):
            raise TokenError("token revoked")
        return entry

    async def verify(self, token: bytes) -> Verified:
        """Full verification; awaits a key refresh only when no known key fits the token's kid."""
        try:
            return self.verify_now(token)
        except NeedKeys as need:
            if not await need.source.refresh(need.kid):
                raise TokenError("unknown signing key") from None
        try:
            return self.verify_now(token)
        except NeedKeys:
            raise TokenError("unknown signing key") from None

    def verify_now(self, token: bytes) -> Verified:
        """Verifies with the keys at hand and caches the result; raises TokenError or NeedKeys."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("malformed token")
        header, unverified = self._unverified(token)
        issuer = self._issuer(unverified)
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise TokenError("algorithm not allowed")
        kid = header.get("kid")
        found = issuer.source.candidates(kid)
        if not found:
            raise NeedKeys(issuer.source, kid)
        keys = [key for key in found if alg in key.algorithms]
        if not keys:
            raise TokenError("the signing key does not fit the token's algorithm")
        claims = self._decode(token, issuer, alg, keys)
        verified = self._verified(claims, issuer)
        if self.revocation is not None and self.revocation.revoked(verified):
            raise TokenError("token revoked")
        self.cache.put(token, verified)
        return verified

    @staticmethod
    def _unverified(token: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """The header and the claims before any check, only to choose the issuer and the key.

        Read here rather than by pyjwt's ``get_unverified_header``/``decode(verify_signature=False)``:
        each pyjwt parse checks the base64 alphabet one character at a time in Python (about 100 us per
        token on the bench machine), and ``decode_complete`` parses again, strictly, anyway. Nothing read
        here is trusted: pyjwt verifies the same token with the key chosen and ``algorithms=[alg]``."""
        parts = token.split(b".")
        if len(parts) != 3:
            raise TokenError("malformed token")
        try:
            header = orjson.loads(_b64decode(parts[0]))
            claims = orjson.loads(_b64decode(parts[1]))
        except (ValueError, binascii.Error):
            raise TokenError("malformed token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError("malformed token")
        if "crit" in header:  # no critical extension is supported (pyjwt's "b64" needs detached payloads)
            raise TokenError("unsupported critical header")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise TokenError("invalid token header")
        return header, claims

    def _issuer(self, claims: dict[str, Any]) -> Issuer:
        iss = claims.get("iss")
        issuer = self.by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenError("unknown issuer" if iss is not None else "token has no issuer")
        return issuer

    def _decode(self, token: bytes, issuer: Issuer, alg: str, keys: list[Key]) -> dict[str, Any]:
        for key in keys:
            try:
                decoded = self.pyjwt.decode_complete(
                    token, key.material, algorithms=[alg], options=issuer.options,  # type: ignore[arg-type]
                    audience=issuer.audience, issuer=issuer.spec.issuer, leeway=issuer.leeway,
                )
            except jwt_errors.InvalidSignatureError:
                continue  # another key with this kid (or without kids) may have signed it
            except jwt_errors.PyJWTError as exc:
                raise TokenError(describe(exc)) from None
            claims: dict[str, Any] = decoded["payload"]
            return claims
        raise TokenError("invalid signature")

    def _verified(self, claims: dict[str, Any], issuer: Issuer) -> Verified:
        sub = claims.get("sub")
        exp = claims.get("exp")
        # until pyjwt would refuse the token: exp plus the leeway
        expires = int(exp) + issuer.leeway if exp is not None else self.clock() + NO_EXP_LIFETIME
        return Verified(claims, issuer.name, sub if isinstance(sub, str) else None, expires)

    def forget(self) -> None:
        """Drops every cached verification (a key was withdrawn from a key set)."""
        self.cache.clear()


def _b64decode(segment: bytes) -> bytes:
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


# pyjwt's exceptions, most specific first, as client-safe descriptions
_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt_errors.ExpiredSignatureError, "token expired"),
    (jwt_errors.ImmatureSignatureError, "token not yet valid"),
    (jwt_errors.InvalidIssuedAtError, "invalid iat claim"),
    (jwt_errors.InvalidIssuerError, "wrong issuer"),
    (jwt_errors.InvalidAudienceError, "wrong audience"),
    (jwt_errors.InvalidSubjectError, "invalid sub claim"),
    (jwt_errors.InvalidJTIError, "invalid jti claim"),
    (jwt_errors.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt_errors.InvalidKeyError, "unusable signing key"),
    (jwt_errors.DecodeError, "malformed token"),
)


def describe(exc: Exception) -> str:
    """What failed, in words safe for a client and a log: the claim's name at most, never a value."""
    if isinstance(exc, jwt_errors.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    for kind, description in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return description
    return "invalid token"
