"""Micro-benchmark of JWT verification (gateway/auth), in microseconds per token.

What it measures, one worker's CPU on the request path:

- ``<alg>_verify_us``: a full verification by ``Verifier.verify_now`` with the token cache off: header
  and issuer checks, key choice, pyjwt's signature and claims checks (RS256: 2048-bit RSA; ES256: P-256;
  EdDSA: Ed25519; HS256: a 32-byte secret);
- ``rs256_pyjwt_decode_us``: bare ``jwt.decode`` of the same RS256 token, for reference (the library's
  own cost; the gateway's full verification is that plus its checks);
- ``cache_hit_us``: ``Verifier.cached`` for a token verified before (BLAKE2b digest, LRU look-up, expiry);
- ``stage_hit_us``: the whole auth stage for a cached token: reading Authorization among 10 request
  headers, stripping it, the issuer check, one required claim, forwarding ``sub`` as a header.

    python -m bench.micro_jwt
"""

from __future__ import annotations

import contextlib
import time
import timeit
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.config import IssuerSpec
from gateway.auth.keys import StaticKeys, public_key, secret_key
from gateway.auth.policy import RoutePolicy
from gateway.auth.stage import AuthStage
from gateway.auth.verify import Issuer, Verifier
from gateway.exchange import Exchange, Stage

ISS = "https://idp.example.com/"
SECRET = b"0123456789abcdef0123456789abcdef"
HEADERS = [
    (b"host", b"api.example.com"), (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"),
    (b"accept", b"application/json"), (b"accept-language", b"en-GB,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"), (b"connection", b"keep-alive"),
    (b"cookie", b"theme=dark"), (b"x-forwarded-for", b"203.0.113.7"), (b"content-length", b"0"),
]


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": "api", "sub": "user-42", "iat": now, "exp": now + 3600, "role": "admin",
            "scope": "read write"}


def verifiers() -> dict[str, tuple[Verifier, bytes]]:
    """A verifier without a cache and a token, per algorithm."""
    private = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    found = {}
    for alg, key in private.items():
        spec = IssuerSpec(name="idp", issuer=ISS, algorithms=(alg,), audiences=("api",))
        source = StaticKeys([public_key(key.public_key(), "k1", (alg,))])
        token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "k1"}).encode()
        found[alg] = (Verifier({"idp": Issuer(spec, source)}, cache_size=0), token)
    spec = IssuerSpec(name="idp", issuer=ISS, algorithms=("HS256",), audiences=("api",))
    token = jwt.encode(claims(), SECRET, algorithm="HS256").encode()
    found["HS256"] = (Verifier({"idp": Issuer(spec, StaticKeys([secret_key(SECRET)]))}, cache_size=0), token)
    return found


class _Done(Stage):
    async def __call__(self, ex: Exchange) -> None:
        return None


def stage_hit(verifier: Verifier, token: bytes) -> Callable[[], None]:
    """One request through the auth stage, driven without an event loop (nothing awaits on a hit)."""
    stage = AuthStage(RoutePolicy(claims=(("role", "admin"),), forward=(("sub", "x-user-id"),)), verifier)
    stage.next = _Done()
    headers = [*HEADERS, (b"authorization", b"Bearer " + token)]

    def one() -> None:
        scope = {"headers": headers, "query_string": b""}
        ex = Exchange(scope, None, None, 0.0)  # type: ignore[arg-type]
        with contextlib.suppress(StopIteration):
            stage(ex).send(None)

    return one


def run(quick: bool = False) -> dict[str, Any]:
    number = 200 if quick else 2_000
    results: dict[str, Any] = {}
    found = verifiers()
    for alg, (verifier, token) in found.items():
        results[f"{alg.lower()}_verify_us"] = round(per_call_us(lambda v=verifier, t=token: v.verify_now(t),
                                                                 number), 2)
    rs_verifier, rs_token = found["RS256"]
    rs_key = rs_verifier.issuers["idp"].source.candidates("k1")[0].material
    results["rs256_pyjwt_decode_us"] = round(per_call_us(
        lambda: jwt.decode(rs_token, rs_key, algorithms=["RS256"], audience="api", issuer=ISS), number), 2)
    cached = Verifier(rs_verifier.issuers, cache_size=10_000)
    cached.verify_now(rs_token)
    hits = number * 50
    results["cache_hit_us"] = round(per_call_us(lambda: cached.cached(rs_token), hits), 3)
    results["stage_hit_us"] = round(per_call_us(stage_hit(cached, rs_token), hits), 3)
    return results


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:24} {value:10.3f}")
