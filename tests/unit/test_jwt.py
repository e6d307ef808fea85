"""gateway.auth.verify and gateway.auth.keys: what verifies, what never does (attacks), and the cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from gateway.auth.keys import (
    ALGORITHMS,
    KeyIndex,
    KeyProblem,
    StaticKeys,
    key_from_jwk,
    keys_from_file,
    keys_from_jwks,
    public_key,
    secret_key,
)
from gateway.auth.verify import MAX_TOKEN_BYTES, NeedKeys, TokenCache, TokenError, Verified, Verifier, describe
from tests.unit.test_jwt_support import (
    EC_KEY,
    ED_KEY,
    ISS,
    PRIVATE,
    RSA_KEY,
    RSA_KEY_2,
    SECRET,
    claims,
    hs_verifier,
    jwk,
    key_of,
    mint,
    now,
    pem,
    verifier,
)


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forged(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> bytes:
    """A token put together by hand, as an attacker would."""
    return b".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def failure(v: Verifier, token: bytes) -> str:
    with pytest.raises(TokenError) as info:
        asyncio.run(v.verify(token))
    return info.value.description


def verify(v: Verifier, token: bytes) -> Verified:
    return asyncio.run(v.verify(token))


# --- each algorithm -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_each_asymmetric_algorithm_verifies(alg: str) -> None:
    key = PRIVATE[alg]
    v = verifier([key_of(key, "k1", (alg,))], (alg,))
    verified = verify(v, mint(key, alg, sub="bob", role="admin"))
    assert verified.subject == "bob"
    assert verified.issuer == "idp"
    assert verified.claims["role"] == "admin"


def test_hs256_with_the_configured_secret() -> None:
    assert verify(hs_verifier(), mint(SECRET, "HS256", kid=None)).subject == "alice"


def test_hs256_with_another_secret_is_an_invalid_signature() -> None:
    assert failure(hs_verifier(), mint("another-secret-another-secret-xx", "HS256", kid=None)) == "invalid signature"


def test_a_key_verifies_only_the_algorithms_of_its_type() -> None:
    assert public_key(RSA_KEY.public_key(), None, ALGORITHMS).algorithms == {"RS256", "PS256"}
    assert public_key(EC_KEY.public_key(), None, ALGORITHMS).algorithms == {"ES256"}
    assert public_key(ED_KEY.public_key(), None, ALGORITHMS).algorithms == {"EdDSA"}
    assert public_key(ed448.Ed448PrivateKey.generate().public_key(), None, ALGORITHMS).algorithms == {"EdDSA"}
    assert secret_key(SECRET.encode()).algorithms == {"HS256"}


# --- attacks --------------------------------------------------------------------------------------------


def test_algorithm_confusion_rsa_public_key_as_hmac_secret() -> None:
    """The classic: sign HS256 with the issuer's RSA public key (PEM) as the secret."""
    public_pem = pem(RSA_KEY)
    payload = claims()
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    token = signing_input + b"." + b64(signature)
    assert failure(verifier(), token) == "algorithm not allowed"


def test_algorithm_confusion_even_when_the_issuer_allows_several_asymmetric_algorithms() -> None:
    """ES256 in the issuer's list, but the kid names the RSA key: the RSA key never verifies ES256."""
    v = verifier([key_of(RSA_KEY, "k1", ("RS256", "ES256"))], ("RS256", "ES256"))
    token = mint(EC_KEY, "ES256", kid="k1")
    assert failure(v, token) == "the signing key does not fit the token's algorithm"


def test_an_rsa_key_never_carries_hs256() -> None:
    with pytest.raises(KeyProblem, match="verifies none of the issuer's algorithms"):
        public_key(RSA_KEY.public_key(), "k1", ("HS256",))


def test_an_oct_jwk_is_never_a_key() -> None:
    secret_jwk = {"kty": "oct", "k": b64(SECRET.encode()).decode(), "kid": "k1"}
    with pytest.raises(KeyProblem, match="HS256 secrets come only from an issuer's 'secret'"):
        key_from_jwk(secret_jwk, ALGORITHMS)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    token = forged({"alg": alg, "typ": "JWT"}, claims())
    assert failure(verifier(), token) == "algorithm not allowed"


def test_alg_none_with_a_kid_and_a_real_looking_signature_is_refused() -> None:
    token = forged({"alg": "none", "kid": "k1"}, claims(), b"x" * 256)
    assert failure(verifier(), token) == "algorithm not allowed"


def test_an_algorithm_outside_the_issuers_list_is_refused() -> None:
    assert failure(verifier(), mint(RSA_KEY, "PS256")) == "algorithm not allowed"
    assert failure(verifier(), mint(RSA_KEY, "RS512")) == "algorithm not allowed"


@pytest.mark.parametrize("kid", [
    "../../../../etc/passwd", "/etc/passwd", "' OR '1'='1", "1; DROP TABLE keys; --", "k1\x00", "k1/../k1",
    "%2e%2e%2f", "${jndi:ldap://x}", "*", "k" * 256,
])
def test_kid_injection_strings_are_only_unknown_kids(kid: str) -> None:
    v = verifier([key_of(RSA_KEY, "k1")])
    assert failure(v, mint(RSA_KEY, "RS256", kid=kid)) == "unknown signing key"


@pytest.mark.parametrize("kid", ["k" * 257, 42, ["k1"], {"a": 1}])
def test_a_kid_that_is_not_a_sane_string_is_refused(kid: Any) -> None:
    token = forged({"alg": "RS256", "kid": kid}, claims(), b"sig")
    assert failure(verifier(), token) == "invalid token header"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-unknown"], [], "b64"])
def test_crit_headers_are_refused(crit: Any) -> None:
    token = mint(RSA_KEY, headers={"crit": crit, "x-unknown": 1})
    assert failure(verifier(), token) == "unsupported critical header"


def test_a_tampered_payload_fails_the_signature() -> None:
    header, _, signature = mint().split(b".")
    token = b".".join([header, b64(json.dumps(claims(sub="mallory")).encode()), signature])
    assert failure(verifier(), token) == "invalid signature"


def test_a_token_signed_by_another_key_with_the_same_kid() -> None:
    assert failure(verifier(), mint(RSA_KEY_2)) == "invalid signature"


@pytest.mark.parametrize("token", [
    b"", b"abc", b"a.b", b"a.b.c.d", b"!!!.!!!.!!!", b64(b"[1]") + b"." + b64(b"{}") + b".x",
    b64(b'{"alg":"RS256"}') + b"." + b64(b"[]") + b".x", b64(b"{not json") + b".e30.x",
])
def test_malformed_tokens(token: bytes) -> None:
    assert failure(verifier(), token) == "malformed token"


def test_an_oversized_token_is_refused_before_parsing() -> None:
    assert failure(verifier(), b"a" * (MAX_TOKEN_BYTES + 1)) == "malformed token"


def test_a_malformed_signature_segment_fails_in_pyjwt() -> None:
    header, payload, _ = mint().split(b".")
    assert failure(verifier(), header + b"." + payload + b".@@@") == "malformed token"


# --- claims: time, issuer, audience, required -----------------------------------------------------------


def test_expired_within_the_leeway_passes_and_beyond_it_fails() -> None:
    assert verify(verifier(), mint(exp=now() - 30)).subject == "alice"  # default leeway 60 s
    assert failure(verifier(), mint(exp=now() - 120)) == "token expired"
    assert failure(verifier(leeway=0), mint(exp=now() - 30)) == "token expired"
    assert verify(verifier(leeway=300), mint(exp=now() - 120)).subject == "alice"


def test_not_yet_valid_within_the_leeway_passes_and_beyond_it_fails() -> None:
    assert verify(verifier(), mint(nbf=now() + 30)).subject == "alice"
    assert failure(verifier(), mint(nbf=now() + 120)) == "token not yet valid"
    assert failure(verifier(leeway=0), mint(nbf=now() + 30)) == "token not yet valid"


def test_issued_in_the_future_beyond_the_leeway_fails() -> None:
    assert verify(verifier(), mint(iat=now() + 30)).subject == "alice"
    assert failure(verifier(), mint(iat=now() + 120)) == "token not yet valid"
    assert failure(verifier(), mint(iat="yesterday")) == "invalid iat claim"


def test_wrong_or_missing_issuer() -> None:
    assert failure(verifier(), mint(iss="https://evil.test/")) == "unknown issuer"
    assert failure(verifier(), mint(iss=ISS.rstrip("/"))) == "unknown issuer"  # exact match only
    assert failure(verifier(), mint(iss=None)) == "token has no issuer"
    assert failure(verifier(), forged({"alg": "RS256"}, claims(iss=[ISS]), b"sig")) == "unknown issuer"


def test_wrong_or_missing_audience() -> None:
    assert failure(verifier(), mint(aud="other")) == "wrong audience"
    assert failure(verifier(), mint(aud=None)) == "token lacks the aud claim"
    assert verify(verifier(), mint(aud=["other", "api"])).subject == "alice"
    assert verify(verifier(audiences=("web", "api")), mint(aud="web")).subject == "alice"


def test_no_audiences_configured_refuses_tokens_that_carry_one() -> None:
    assert failure(verifier(audiences=()), mint(aud="api")) == "wrong audience"
    assert verify(verifier(audiences=()), mint(aud=None)).subject == "alice"


def test_required_claims() -> None:
    assert failure(verifier(), mint(exp=None)) == "token lacks the exp claim"
    strict = verifier(required_claims=("exp", "sub", "jti"))
    assert failure(strict, mint(jti=None)) == "token lacks the jti claim"
    assert verify(strict, mint(jti="j-1")).subject == "alice"
    assert verify(verifier(required_claims=()), mint(exp=None)).subject == "alice"


def test_malformed_claim_values() -> None:
    assert failure(verifier(), mint(exp="soon")) == "malformed token"
    assert failure(verifier(), mint(sub=42)) == "invalid sub claim"
    assert failure(verifier(), mint(jti=42)) == "invalid jti claim"


def test_a_non_string_subject_is_not_the_subject() -> None:
    assert verify(verifier(), mint(sub=None)).subject is None


def test_descriptions_of_other_pyjwt_errors() -> None:
    assert describe(jwt.exceptions.InvalidKeyError("x")) == "unusable signing key"
    assert describe(jwt.exceptions.InvalidAlgorithmError("x")) == "algorithm not allowed"
    assert describe(jwt.exceptions.InvalidTokenError("x")) == "invalid token"


# --- keys -----------------------------------------------------------------------------------------------


def test_keys_with_one_kid_are_all_tried() -> None:
    """During a rotation an issuer may publish two keys under one kid."""
    v = verifier([key_of(RSA_KEY_2, "k1"), key_of(RSA_KEY, "k1")])
    assert verify(v, mint(RSA_KEY)).subject == "alice"


def test_a_token_without_kid_uses_a_key_without_one_or_the_only_key() -> None:
    assert verify(verifier([key_of(RSA_KEY, None)]), mint(kid=None)).subject == "alice"
    assert verify(verifier([key_of(RSA_KEY, "k1")]), mint(kid=None)).subject == "alice"
    several = verifier([key_of(RSA_KEY, "k1"), key_of(RSA_KEY_2, "k2")])
    assert failure(several, mint(kid=None)) == "unknown signing key"


def test_a_key_file_without_kid_verifies_tokens_with_any_kid() -> None:
    assert verify(verifier([key_of(RSA_KEY, None)]), mint(kid="whatever")).subject == "alice"


def test_key_index_and_static_keys() -> None:
    one, two = key_of(RSA_KEY, "a"), key_of(RSA_KEY_2, None)
    index = KeyIndex([one, two])
    assert index.lookup("a", False) == (one,)
    assert index.lookup("b", False) == ()
    assert index.lookup("b", True) == (two,)
    assert index.lookup(None, False) == (two,)
    static = StaticKeys([one])
    assert static.candidates("a") == (one,)
    assert asyncio.run(static.refresh("zzz")) is False
    static.start()
    static.close()


def test_verify_now_asks_for_keys_when_none_fits_the_kid() -> None:
    v = verifier([key_of(RSA_KEY, "k1")])
    with pytest.raises(NeedKeys) as info:
        v.verify_now(mint(kid="k2"))
    assert info.value.kid == "k2"


class Refreshing:
    """A key source whose refresh makes a key appear (as a JWKS refetch would)."""

    def __init__(self) -> None:
        self.keys: tuple[Any, ...] = ()
        self.refreshes = 0

    def candidates(self, kid: str | None) -> tuple[Any, ...]:
        return self.keys

    async def refresh(self, kid: str | None) -> bool:
        self.refreshes += 1
        self.keys = (key_of(RSA_KEY, "k1"),)
        return True

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_verify_looks_again_after_a_refresh() -> None:
    from gateway.auth.verify import Issuer
    from tests.unit.test_jwt_support import issuer_spec

    source = Refreshing()
    v = Verifier({"idp": Issuer(issuer_spec(), source)}, 10)
    assert verify(v, mint()).subject == "alice"
    assert source.refreshes == 1
    source.keys = ()
    source.refresh = lambda kid: asyncio.sleep(0, True)  # type: ignore[method-assign]  # finds nothing
    assert failure(v, mint(sub="other")) == "unknown signing key"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_key_files_pem_certificate_private_jwk_and_jwks(tmp_path: Path) -> None:
    from tests.unit.test_jwt_support import self_signed

    _, cert = self_signed(tmp_path)
    private_pem = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    assert keys_from_file(write(tmp_path, "a.pem", pem(RSA_KEY)), None, ("RS256",))[0].algorithms == {"RS256"}
    assert keys_from_file(cert, "c", ("ES256",))[0].kid == "c"
    assert keys_from_file(write(tmp_path, "p.pem", private_pem), None, ("PS256",))[0].fingerprint == \
        key_of(RSA_KEY).fingerprint
    private_jwk = jwk(EC_KEY, "e1")
    private_jwk["d"] = b64(EC_KEY.private_numbers().private_value.to_bytes(32, "big")).decode()
    assert keys_from_file(write(tmp_path, "e.json", json.dumps(private_jwk).encode()), None, ("ES256",))[0].kid \
        == "e1"
    jwks = {"keys": [jwk(RSA_KEY, "r1"), jwk(ED_KEY, "d1")]}
    found = keys_from_file(write(tmp_path, "set.json", json.dumps(jwks).encode()), None, ("RS256", "EdDSA"))
    assert [k.kid for k in found] == ["r1", "d1"]
    renamed = keys_from_file(write(tmp_path, "one.json", json.dumps(jwk(RSA_KEY, "r1")).encode()), "new", ("RS256",))
    assert renamed[0].kid == "new"


@pytest.mark.parametrize(("data", "message"), [
    (b"hello", "expected a PEM key or certificate"),
    (b"{nope", "not valid JSON"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a usable public key"),
    (b'{"keys": []}', "holds no keys"),
    (b'{"keys": [{"kty": "oct", "k": "AAAA"}]}', r"keys\[0\]: key type 'oct' is not accepted"),
])
def test_unfit_key_files(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(KeyProblem, match=message):
        keys_from_file(write(tmp_path, "k", data), None, ("RS256",))


def test_a_kid_for_a_file_with_several_keys_is_refused(tmp_path: Path) -> None:
    jwks = {"keys": [jwk(RSA_KEY, "r1"), jwk(RSA_KEY_2, "r2")]}
    with pytest.raises(KeyProblem, match="exactly one key"):
        keys_from_file(write(tmp_path, "set.json", json.dumps(jwks).encode()), "x", ("RS256",))


@pytest.mark.parametrize(("key", "message"), [
    (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA key of 1024 bits"),
    (ec.generate_private_key(ec.SECP384R1()), "curve secp384r1; ES256 needs P-256"),
])
def test_weak_or_unsupported_keys(key: Any, message: str) -> None:
    with pytest.raises(KeyProblem, match=message):
        public_key(key.public_key(), None, ALGORITHMS)


def test_unsupported_key_type() -> None:
    with pytest.raises(KeyProblem, match="unsupported key type"):
        public_key(object(), None, ALGORITHMS)
    with pytest.raises(KeyProblem, match="at least 32 bytes"):
        secret_key(b"short")


@pytest.mark.parametrize(("entry", "message"), [
    ("not an object", "must be a JSON object"),
    ({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}, "not a signing key"),
    ({"kty": "RSA", "key_ops": ["encrypt"], "n": "AQAB", "e": "AQAB"}, "not a verification key"),
    ({"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"}, "kid must be a string"),
    ({"kty": "RSA", "alg": 7, "n": "AQAB", "e": "AQAB"}, "alg must be a string"),
    ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "invalid RSA key parameters"),
    ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "invalid EC key parameters"),
    ({**jwk(RSA_KEY), "alg": "PS256"}, "the key's alg 'PS256' is not one of"),
])
def test_unfit_jwks_entries(entry: Any, message: str) -> None:
    with pytest.raises(KeyProblem, match=message):
        key_from_jwk(entry, ("RS256",))


def test_a_jwk_alg_narrows_the_key() -> None:
    assert key_from_jwk({**jwk(RSA_KEY), "alg": "PS256"}, ("RS256", "PS256")).algorithms == {"PS256"}
    assert key_from_jwk({**jwk(RSA_KEY), "use": "sig", "key_ops": ["verify"]}, ("RS256",)).kid == "k1"


def test_a_jwks_skips_unfit_keys_and_says_why() -> None:
    keys, skipped = keys_from_jwks({"keys": [jwk(RSA_KEY, "r1"), {"kty": "oct"}, jwk(EC_KEY, "e1")]}, ("RS256",))
    assert [k.kid for k in keys] == ["r1"]
    assert len(skipped) == 2
    assert "oct" in skipped[0]
    with pytest.raises(KeyProblem, match="JWK Set"):
        keys_from_jwks([], ("RS256",))


# --- the verified-token cache ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = float(now())

    def __call__(self) -> float:
        return self.now


def test_a_verified_token_is_cached_and_a_hit_is_the_same_verification() -> None:
    v = verifier()
    token = mint()
    assert v.cached(token) is None
    first = verify(v, token)
    assert v.cached(token) is first
    assert len(v.cache) == 1


def test_a_token_differing_in_any_byte_misses_a_cached_one() -> None:
    v = verifier()
    token = mint()
    first = verify(v, token)
    assert list(v.cache.entries) == [token]  # keyed by the whole token: equality decides a hit
    forged = token[:-1] + (b"A" if token[-1:] != b"A" else b"B")  # another signature, same claims
    assert v.cached(forged) is None
    assert v.cached(bytes(token)) is first  # an equal token in another object hits


def test_a_cached_entry_ends_at_exp_plus_the_leeway() -> None:
    clock = Clock()
    v = verifier(clock=clock, leeway=60)
    token = mint(exp=int(clock.now) + 100)
    verify(v, token)
    clock.now += 159
    assert v.cached(token) is not None
    clock.now += 1
    assert v.cached(token) is None
    assert len(v.cache) == 0  # the expired entry is dropped


def test_a_token_without_exp_is_cached_briefly() -> None:
    clock = Clock()
    v = verifier(clock=clock, required_claims=())
    token = mint(exp=None)
    verify(v, token)
    clock.now += 59
    assert v.cached(token) is not None
    clock.now += 2
    assert v.cached(token) is None


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    v = verifier(cache_size=2)
    a, b, c = mint(sub="a"), mint(sub="b"), mint(sub="c")
    verify(v, a)
    verify(v, b)
    assert v.cached(a) is not None  # a is now the most recently used
    verify(v, c)
    assert len(v.cache) == 2
    assert v.cached(b) is None
    assert v.cached(a) is not None
    assert v.cached(c) is not None


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    v = verifier(cache_size=0)
    token = mint()
    verify(v, token)
    assert v.cached(token) is None


def test_forget_empties_the_cache() -> None:
    v = verifier()
    token = mint()
    verify(v, token)
    v.forget()
    assert v.cached(token) is None


def test_failed_tokens_are_not_cached() -> None:
    v = verifier()
    failure(v, mint(aud="other"))
    assert len(v.cache) == 0


def test_token_cache_put_replaces_and_refreshes() -> None:
    cache = TokenCache(2)
    entry = Verified({}, "idp", None, float(now() + 100))
    cache.put(b"a", entry)
    cache.put(b"b", entry)
    cache.put(b"a", entry)  # a becomes the most recent
    cache.put(b"c", entry)
    assert list(cache.entries) == [b"a", b"c"]


class Revoked:
    def __init__(self) -> None:
        self.jtis: set[str] = set()

    def revoked(self, token: Verified) -> bool:
        return token.claims.get("jti") in self.jtis


def test_revocation_is_checked_on_verification_and_on_every_hit() -> None:
    revoked = Revoked()
    v = verifier(revocation=revoked)
    token = mint(jti="j1")
    verify(v, token)
    assert v.cached(token) is not None
    revoked.jtis.add("j1")
    with pytest.raises(TokenError, match="token revoked"):
        v.cached(token)
    assert failure(verifier(revocation=revoked), token) == "token revoked"


@pytest.mark.parametrize(("description", "reason"), [
    ("token expired", "expired"), ("token not yet valid", "not_yet_valid"), ("invalid signature", "bad_signature"),
    ("unknown signing key", "unknown_key"), ("token issuer not accepted on this route", "wrong_issuer"),
    ("the signing key does not fit the token's algorithm", "algorithm"), ("token revoked", "revoked"),
    ("token lacks the sub claim", "claims"), ("invalid iat claim", "claims"), ("something new", "other"),
])
def test_auth_failure_reasons_are_bounded(description: str, reason: str) -> None:
    from gateway.auth.errors import InvalidToken
    from gateway.auth.reasons import REASONS

    error = InvalidToken(description)
    assert error.auth_reason == reason and reason in REASONS
