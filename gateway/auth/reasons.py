"""Why a request failed authentication: the ``reason`` label of ``gateway_auth_failures_total``.

Kept apart from the rest of the package so the metrics schema can name the reasons without importing
it (pyjwt and cryptography load only when a config uses auth). The errors' descriptions are fixed phrases
(gateway/auth/verify.py, stage.py); each maps to one bounded reason here.
"""

from __future__ import annotations

REASONS = ("missing_token", "expired", "not_yet_valid", "bad_signature", "unknown_key", "wrong_issuer",
           "wrong_audience", "algorithm", "malformed", "revoked", "inactive", "claims", "insufficient_scope",
           "invalid_request", "login", "other")  # login: a refused login callback (gateway/auth/oidc/login.py)
REASON_INDEX = {reason: index for index, reason in enumerate(REASONS)}
_BY_DESCRIPTION = {
    "token expired": "expired",
    "token not yet valid": "not_yet_valid",
    "invalid signature": "bad_signature",
    "unknown signing key": "unknown_key",
    "wrong issuer": "wrong_issuer",
    "unknown issuer": "wrong_issuer",
    "token has no issuer": "wrong_issuer",
    "token issuer not accepted on this route": "wrong_issuer",
    "wrong audience": "wrong_audience",
    "algorithm not allowed": "algorithm",
    "the signing key does not fit the token's algorithm": "algorithm",
    "unusable signing key": "algorithm",
    "malformed token": "malformed",
    "invalid token header": "malformed",
    "unsupported critical header": "malformed",
    "token revoked": "revoked",
    "token inactive": "inactive",  # RFC 7662 introspection said active: false
}


def reason_for(description: str) -> str:
    """The reason label of an invalid token's description."""
    found = _BY_DESCRIPTION.get(description)
    if found is not None:
        return found
    if description.startswith("token lacks the ") or (description.startswith("invalid ") \
            and description.endswith(" claim")):
        return "claims"
    return "other"
