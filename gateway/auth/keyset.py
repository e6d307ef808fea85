"""The issuer's key set: signing keys in three roles, and the pure rules of rotation.

    next       published in the JWKS, signs nothing yet
    current    signs every new token; published
    previous   signs nothing any more; published until every token it signed has expired (zero or more)

A rotation makes next the current key, current a previous one, and a fresh key the next: so a key is in
the JWKS (for at least ``jwks_max_age``, the cache time the JWKS advertises) before it signs anything, and
stays there after it stopped signing for ``access_ttl`` plus the leeway. Every change makes a new
*generation*; stores replace the set only if the generation they read is still the stored one, so when
workers or hosts race to rotate, exactly one rotation wins and the others read its result.

The set also holds the AES-GCM keys of embedded session cookies: a new one at each rotation, the older
ones kept while cookies they sealed may still be alive (the sessions' absolute timeout).

Nothing here does I/O; ``gateway.auth.store`` and ``gateway.auth.redis_store`` keep the set.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from jwt.algorithms import RSAAlgorithm

FORMAT = 1
NEXT, CURRENT, PREVIOUS = "next", "current", "previous"


class KeySetError(ValueError):
    """A stored key set that cannot be read (the message holds no key material)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One RSA signing key (PKCS#8 PEM), its role and when it changed role."""

    kid: str
    role: str
    pem: bytes
    created: float
    signing_since: float | None = None  # when it became current
    retired_at: float | None = None  # when it stopped signing (previous keys)

    def private_key(self) -> rsa.RSAPrivateKey:
        key = load_pem_private_key(self.pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeySetError(f"key {self.kid} is not an RSA key")
        return key


@dataclass(frozen=True, slots=True)
class SessionKey:
    """A 256-bit AES-GCM key for session cookies."""

    id: str
    secret: bytes
    created: float


@dataclass(frozen=True, slots=True)
class KeySet:
    """A generation of the issuer's keys: next first, then current, then previous keys, newest first."""

    generation: int
    keys: tuple[SigningKey, ...]
    session_keys: tuple[SessionKey, ...]  # newest (the one that seals new cookies) first

    @property
    def current(self) -> SigningKey:
        return next(key for key in self.keys if key.role == CURRENT)

    @property
    def next(self) -> SigningKey:
        return next(key for key in self.keys if key.role == NEXT)

    def summary(self) -> dict[str, Any]:
        """What the admin API shows: kids, roles and times (no key material)."""
        return {
            "generation": self.generation,
            "keys": [{"kid": key.kid, "role": key.role, "created": key.created,
                      "signing_since": key.signing_since, "retired_at": key.retired_at} for key in self.keys],
        }


def thumbprint(public: rsa.RSAPublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): the key's ``kid``."""
    numbers = public.public_numbers()

    def b64(value: int) -> str:
        data = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    canonical = f'{{"e":"{b64(numbers.e)}","kty":"RSA","n":"{b64(numbers.n)}"}}'.encode("ascii")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


def generate_key(now: float) -> SigningKey:
    """A fresh 2048-bit RSA key in the next role (about 50-100 ms of CPU: call it off the event loop)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return SigningKey(thumbprint(private.public_key()), NEXT, pem, now)


def generate_session_key(now: float) -> SessionKey:
    secret = os.urandom(32)
    return SessionKey(hashlib.sha256(secret).hexdigest()[:12], secret, now)


def bootstrap(now: float, first: SigningKey, second: SigningKey) -> KeySet:
    """The first key set: ``first`` signs at once (no JWKS can hold an older set), ``second`` is next."""
    current = replace(first, role=CURRENT, signing_since=now)
    return KeySet(1, (replace(second, role=NEXT), current), (generate_session_key(now),))


def rotate(keys: KeySet, now: float, fresh: SigningKey) -> KeySet:
    """next -> current, current -> previous, ``fresh`` -> next; a new session key seals new cookies."""
    rotated: list[SigningKey] = [replace(fresh, role=NEXT)]
    for key in keys.keys:
        if key.role == NEXT:
            rotated.append(replace(key, role=CURRENT, signing_since=now))
        elif key.role == CURRENT:
            rotated.append(replace(key, role=PREVIOUS, retired_at=now))
        else:
            rotated.append(key)
    return KeySet(keys.generation + 1, _ordered(rotated), (generate_session_key(now), *keys.session_keys))


def _ordered(keys: list[SigningKey]) -> tuple[SigningKey, ...]:
    rank = {NEXT: 0, CURRENT: 1, PREVIOUS: 2}
    return tuple(sorted(keys, key=lambda key: (rank[key.role], -(key.retired_at or 0.0))))


def prune(keys: KeySet, now: float, keep_retired: float, keep_session_keys: float) -> KeySet | None:
    """The set without previous keys whose tokens have all expired and session keys no live cookie can
    use; None when nothing is to go."""
    signing = tuple(key for key in keys.keys
                    if key.role != PREVIOUS or (key.retired_at or 0.0) + keep_retired > now)
    sessions = [keys.session_keys[0]]
    for older, newer in zip(keys.session_keys[1:], keys.session_keys, strict=False):
        if newer.created + keep_session_keys > now:  # cookies sealed by `older` until `newer` came may live
            sessions.append(older)
    if len(signing) == len(keys.keys) and len(sessions) == len(keys.session_keys):
        return None
    return KeySet(keys.generation + 1, signing, tuple(sessions))


def rotation_due(keys: KeySet, now: float, interval: float | None) -> bool:
    """Whether the schedule asks for a rotation (``interval`` None: rotation only on demand)."""
    since = keys.current.signing_since or keys.current.created
    return interval is not None and now >= since + interval


def wait_before_promoting(keys: KeySet, now: float, published_for: float) -> float:
    """Seconds until the next key has been published for ``published_for`` (0: it may sign now)."""
    return max(0.0, keys.next.created + published_for - now)


def jwks(keys: KeySet, parsed: Mapping[str, rsa.RSAPrivateKey] | None = None) -> bytes:
    """The public JWK Set (RFC 7517) of every key in the set (``parsed``: private keys already loaded)."""
    entries = []
    for key in keys.keys:
        private = parsed[key.kid] if parsed is not None else key.private_key()
        public = private.public_key()
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        jwk.pop("key_ops", None)  # RFC 7517 section 4.3: "use" or "key_ops", not both
        jwk.update(kid=key.kid, use="sig", alg="RS256")
        entries.append(jwk)
    return orjson.dumps({"keys": entries})


# --- the stored form --------------------------------------------------------------------------------------


def dumps(keys: KeySet) -> bytes:
    """The key set as stored (JSON; holds private keys: the store keeps it private)."""
    return orjson.dumps({
        "format": FORMAT,
        "generation": keys.generation,
        "keys": [{"kid": k.kid, "role": k.role, "pem": k.pem.decode("ascii"), "created": k.created,
                  "signing_since": k.signing_since, "retired_at": k.retired_at} for k in keys.keys],
        "session_keys": [{"id": s.id, "secret": base64.b64encode(s.secret).decode("ascii"), "created": s.created}
                         for s in keys.session_keys],
    })


def loads(data: bytes | str) -> KeySet:
    """The key set from its stored form; KeySetError when it is not one."""
    try:
        document = orjson.loads(data)
        if document.get("format") != FORMAT:
            raise KeySetError(f"unknown key set format {document.get('format')!r}")
        keys = tuple(SigningKey(k["kid"], k["role"], k["pem"].encode("ascii"), float(k["created"]),
                                k.get("signing_since"), k.get("retired_at")) for k in document["keys"])
        sessions = tuple(SessionKey(s["id"], base64.b64decode(s["secret"]), float(s["created"]))
                         for s in document["session_keys"])
        found = KeySet(int(document["generation"]), keys, sessions)
    except KeySetError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        raise KeySetError("the stored key set is not valid") from None
    roles = [key.role for key in keys]
    if roles.count(NEXT) != 1 or roles.count(CURRENT) != 1 or not sessions \
            or any(role not in (NEXT, CURRENT, PREVIOUS) for role in roles):
        raise KeySetError("the stored key set lacks a next or current key")
    return found
