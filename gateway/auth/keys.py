"""Verification keys: key material bound to the algorithms it may verify, and where keys come from.

A ``Key`` is made once (config load, or a JWKS fetch) and carries the set of algorithms its *type* can
verify, intersected with the issuer's pinned list (and with the JWK's own ``alg`` when it names one):

    RSA (2048 bits or more)   RS256, PS256
    EC P-256                  ES256
    Ed25519 / Ed448           EdDSA
    a configured secret       HS256

So a token's ``alg`` header only ever *selects among* keys that were already allowed to verify it: an RSA
public key never lands in the HS256 set (algorithm confusion), and ``none`` is never in any set. Secrets
(``oct`` keys) never come from JWK files or a JWKS, only from an issuer's ``secret``.

``KeySource`` is what the verifier asks for candidate keys: ``StaticKeys`` (files, secret) here,
``RemoteJwks`` (gateway/auth/jwks.py) for JWKS URLs; the gateway's own token issuer plugs in the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

ASYMMETRIC_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
SYMMETRIC_ALGORITHMS = ("HS256",)
ALGORITHMS = (*ASYMMETRIC_ALGORITHMS, *SYMMETRIC_ALGORITHMS)
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3
MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: a key as long as the hash output (SHA-256)
MAX_KID_LENGTH = 256
_JWK_READERS: Mapping[str, Any] = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}


class KeyProblem(ValueError):
    """Why some key material cannot verify tokens (the message never holds key material)."""


@dataclass(frozen=True, slots=True)
class Key:
    """One verification key: its ``kid`` (None: a file key without one), the algorithms it may verify,
    and the material (a cryptography public key, or the HS256 secret's bytes)."""

    kid: str | None
    algorithms: frozenset[str]
    fingerprint: bytes = field(repr=False)  # SHA-256 of the public key (or the secret): equality, not shown
    material: Any = field(repr=False, compare=False)


def algorithms_for(material: Any) -> frozenset[str]:
    """The algorithms a public key's type can verify (raises KeyProblem for weak or unknown types)."""
    if isinstance(material, RSAPublicKey):
        if material.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"RSA key of {material.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return frozenset({"RS256", "PS256"})
    if isinstance(material, EllipticCurvePublicKey):
        if not isinstance(material.curve, SECP256R1):
            raise KeyProblem(f"EC key on curve {material.curve.name}; ES256 needs P-256")
        return frozenset({"ES256"})
    if isinstance(material, (Ed25519PublicKey, Ed448PublicKey)):
        return frozenset({"EdDSA"})
    raise KeyProblem(f"unsupported key type {type(material).__name__}")


def public_key(material: Any, kid: str | None, allowed: Iterable[str], alg: str | None = None) -> Key:
    """A Key for a public key, limited to the ``allowed`` (pinned) algorithms and to ``alg`` if given."""
    allowed = frozenset(allowed)
    algorithms = algorithms_for(material) & allowed
    if alg is not None:
        if alg not in algorithms:
            raise KeyProblem(f"the key's alg {alg!r} is not one of the algorithms allowed for its type here")
        algorithms = frozenset({alg})
    if not algorithms:
        fits = ", ".join(sorted(algorithms_for(material)))
        raise KeyProblem(f"a key for {fits} verifies none of the issuer's algorithms "
                         f"({', '.join(sorted(allowed))})")
    der = material.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Key(kid, algorithms, hashlib.sha256(der).digest(), material)


def secret_key(secret: bytes) -> Key:
    """The HS256 key of an issuer's configured shared secret."""
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyProblem(f"a secret of at least {MIN_SECRET_BYTES} bytes is needed for HS256")
    return Key(None, frozenset(SYMMETRIC_ALGORITHMS), hashlib.sha256(b"secret:" + secret).digest(), secret)


def key_from_jwk(jwk: Any, allowed: Iterable[str]) -> Key:
    """A Key from one JWK (RFC 7517): RSA, EC or OKP, a signing key; private parts are ignored."""
    if not isinstance(jwk, Mapping):
        raise KeyProblem("a JWK must be a JSON object")
    kty = jwk.get("kty")
    reader = _JWK_READERS.get(kty) if isinstance(kty, str) else None
    if reader is None:
        raise KeyProblem(f"key type {describe_value(kty)} is not accepted (RSA, EC or OKP; "
                         "HS256 secrets come only from an issuer's 'secret')")
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if use is not None and use != "sig":
        raise KeyProblem("not a signing key (use is not 'sig')")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyProblem("not a verification key (key_ops lacks 'verify')")
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
        raise KeyProblem(f"kid must be a string of 1 to {MAX_KID_LENGTH} characters")
    if alg is not None and not isinstance(alg, str):
        raise KeyProblem("alg must be a string")
    try:
        material = reader.from_jwk(dict(jwk))
    except (InvalidKeyError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        raise KeyProblem(f"invalid {kty} key parameters") from None
    if hasattr(material, "public_key"):  # a private JWK: only its public half is kept
        material = material.public_key()
    return public_key(material, kid, allowed, alg)


def keys_from_jwks(document: Any, allowed: Iterable[str]) -> tuple[list[Key], list[str]]:
    """The usable keys of a JWK Set, and a short reason for each key that was skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeyProblem("expected a JWK Set: a JSON object with a 'keys' list")
    keys: list[Key] = []
    skipped: list[str] = []
    allowed = frozenset(allowed)
    for index, jwk in enumerate(document["keys"]):
        try:
            keys.append(key_from_jwk(jwk, allowed))
        except KeyProblem as problem:
            skipped.append(f"keys[{index}]: {problem}")
    return keys, skipped


def keys_from_file(path: Path, kid: str | None, allowed: Sequence[str]) -> list[Key]:
    """The keys of a PEM file (public key, certificate or private key: its public half), a JWK or a JWK
    Set file. Raises OSError when unreadable, KeyProblem when the content does not fit."""
    data = path.read_bytes()
    text = data.lstrip()
    if text.startswith(b"{"):
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise KeyProblem("not valid JSON") from None
        if isinstance(document, Mapping) and "keys" in document:
            keys, skipped = keys_from_jwks(document, allowed)
            if skipped:
                raise KeyProblem(skipped[0])
            if not keys:
                raise KeyProblem("the JWK Set holds no keys")
        else:
            keys = [key_from_jwk(document, allowed)]
        if kid is not None:
            if len(keys) != 1:
                raise KeyProblem("'kid' names the key of a file with exactly one key")
            keys = [Key(kid, keys[0].algorithms, keys[0].fingerprint, keys[0].material)]
        return keys
    if b"-----BEGIN" in text:
        return [public_key(_pem_public_key(text), kid, allowed)]
    raise KeyProblem("expected a PEM key or certificate, or a JWK / JWK Set in JSON")


def _pem_public_key(data: bytes) -> Any:
    try:
        if b"CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        if b"PRIVATE KEY-----" in data:
            return load_pem_private_key(data, password=None).public_key()
        return load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyProblem("the PEM data is not a usable public key, certificate or unencrypted private key") \
            from None


def describe_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class KeyIndex:
    """Keys by ``kid`` for the verifier's look-up, built once per key set (a dict get per token)."""

    __slots__ = ("all", "anonymous", "by_kid")

    def __init__(self, keys: Iterable[Key]) -> None:
        self.all = tuple(keys)
        by_kid: dict[str, list[Key]] = {}
        for key in self.all:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self.by_kid = {kid: tuple(found) for kid, found in by_kid.items()}
        self.anonymous = tuple(key for key in self.all if key.kid is None)

    def lookup(self, kid: str | None, anonymous_for_unknown: bool) -> tuple[Key, ...]:
        """The keys that may have signed a token with this ``kid``.

        A token without a kid may use a key without one, or the only key there is (never a guess among
        several: that would cost one signature check per key). A kid no key has matches nothing, unless
        ``anonymous_for_unknown`` (local files: a PEM key has no kid but verifies any token's)."""
        if kid is None:
            return self.anonymous or (self.all if len(self.all) == 1 else ())
        found = self.by_kid.get(kid)
        if found is not None:
            return found
        return self.anonymous if anonymous_for_unknown else ()

    def fingerprints(self) -> frozenset[bytes]:
        """The fingerprints in this set (to notice keys that were withdrawn)."""
        return frozenset(key.fingerprint for key in self.all)


class KeySource(Protocol):
    """Where an issuer's keys come from. ``candidates`` is the per-request path: no I/O, no awaiting.
    ``refresh`` runs only when no key fits: it may fetch (rate-limited) and returns True when looking
    again could find a key. ``start`` begins any background refresh in the running loop; ``close`` ends it.

    The gateway's own token issuer (part 2) implements this over its shared key set, so its tokens are
    verified like any other issuer's."""

    def candidates(self, kid: str | None) -> tuple[Key, ...]: ...

    async def refresh(self, kid: str | None) -> bool: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class StaticKeys:
    """Keys fixed at config load: key files and an HS256 secret."""

    def __init__(self, keys: Iterable[Key]) -> None:
        self.index = KeyIndex(keys)

    def candidates(self, kid: str | None) -> tuple[Key, ...]:
        return self.index.lookup(kid, anonymous_for_unknown=True)

    async def refresh(self, kid: str | None) -> bool:
        return False  # nothing more to find

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
