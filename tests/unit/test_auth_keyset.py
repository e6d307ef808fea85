"""gateway.auth.keyset: the key set's roles, rotation, pruning, its JWKS and its stored form."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import keyset
from gateway.auth.keys import keys_from_jwks
from gateway.auth.keyset import CURRENT, NEXT, PREVIOUS, KeySetError

T0 = 1_000_000.0
KEYS = [keyset.generate_key(T0) for _ in range(4)]


def start() -> keyset.KeySet:
    return keyset.bootstrap(T0, KEYS[0], KEYS[1])


def roles(keys: keyset.KeySet) -> list[tuple[str, str]]:
    return [(key.kid, key.role) for key in keys.keys]


def test_the_first_set_signs_at_once_and_publishes_its_next_key() -> None:
    keys = start()
    assert keys.generation == 1
    assert roles(keys) == [(KEYS[1].kid, NEXT), (KEYS[0].kid, CURRENT)]
    assert keys.current.signing_since == T0 and keys.next.signing_since is None
    assert len(keys.session_keys) == 1 and len(keys.session_keys[0].secret) == 32


def test_a_rotation_promotes_the_published_next_key() -> None:
    once = keyset.rotate(start(), T0 + 100, KEYS[2])
    assert once.generation == 2
    assert roles(once) == [(KEYS[2].kid, NEXT), (KEYS[1].kid, CURRENT), (KEYS[0].kid, PREVIOUS)]
    assert once.current.signing_since == T0 + 100
    assert once.keys[2].retired_at == T0 + 100
    twice = keyset.rotate(once, T0 + 200, KEYS[3])
    assert [role for _, role in roles(twice)] == [NEXT, CURRENT, PREVIOUS, PREVIOUS]
    assert [key.kid for key in twice.keys[2:]] == [KEYS[1].kid, KEYS[0].kid]  # the newest retired first
    assert len(twice.session_keys) == 3  # a new one seals new cookies; the older ones still open old ones


def test_pruning_drops_only_what_nothing_can_need() -> None:
    twice = keyset.rotate(keyset.rotate(start(), T0 + 100, KEYS[2]), T0 + 200, KEYS[3])
    assert keyset.prune(twice, T0 + 250, keep_retired=300, keep_session_keys=1000) is None
    pruned = keyset.prune(twice, T0 + 450, keep_retired=300, keep_session_keys=1000)
    assert pruned is not None and pruned.generation == twice.generation + 1
    assert [key.kid for key in pruned.keys] == [KEYS[3].kid, KEYS[2].kid, KEYS[1].kid]  # KEYS[0] retired at 100
    later = keyset.prune(twice, T0 + 10_000, keep_retired=300, keep_session_keys=1000)
    assert later is not None
    assert [key.role for key in later.keys] == [NEXT, CURRENT] and len(later.session_keys) == 1


def test_rotation_schedule_and_the_publication_wait() -> None:
    keys = start()
    assert not keyset.rotation_due(keys, T0 + 99, 100)
    assert keyset.rotation_due(keys, T0 + 100, 100)
    assert not keyset.rotation_due(keys, T0 + 10**9, None)  # on demand only
    assert keyset.wait_before_promoting(keys, T0 + 10, 300) == 290
    assert keyset.wait_before_promoting(keys, T0 + 400, 300) == 0


def test_the_jwks_publishes_every_key_for_verification_only() -> None:
    keys = keyset.rotate(start(), T0 + 100, KEYS[2])
    document = orjson.loads(keyset.jwks(keys))
    assert [jwk["kid"] for jwk in document["keys"]] == [key.kid for key in keys.keys]
    for jwk in document["keys"]:
        assert jwk["use"] == "sig" and jwk["alg"] == "RS256" and "key_ops" not in jwk
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # no private parts
    found, skipped = keys_from_jwks(document, ["RS256"])  # part 1's reader takes it as any JWKS
    assert not skipped and [key.kid for key in found] == [key.kid for key in keys.keys]


def test_the_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key
    n = int.from_bytes(__import__("base64").urlsafe_b64decode(
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
        "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw=="),
        "big")
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    assert keyset.thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_stored_form_round_trips_and_is_checked() -> None:
    keys = keyset.rotate(start(), T0 + 100, KEYS[2])
    assert keyset.loads(keyset.dumps(keys)) == keys
    assert keys.summary()["keys"][0] == {"kid": KEYS[2].kid, "role": NEXT, "created": T0, "signing_since": None,
                                         "retired_at": None}
    assert b"PRIVATE" not in orjson.dumps(keys.summary())
    for broken in (b"{", b"[]", b'{"format": 9}', b'{"format": 1, "generation": 1, "keys": [], "session_keys": []}'):
        with pytest.raises(KeySetError):
            keyset.loads(broken)


def test_a_stored_key_that_is_not_rsa_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with pytest.raises(KeySetError, match="not an RSA key"):
        keyset.SigningKey("x", CURRENT, pem, T0).private_key()
