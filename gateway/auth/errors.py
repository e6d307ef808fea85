"""Auth failures as the gateway's errors, with RFC 6750 ``WWW-Authenticate`` challenges.

    no token             401  Bearer realm="gateway"
    a token that fails   401  Bearer realm="gateway", error="invalid_token", error_description="token expired"
    claims not enough    403  Bearer realm="gateway", error="insufficient_scope", error_description="..."
    a malformed request  400  Bearer realm="gateway", error="invalid_request", error_description="..."

Descriptions are fixed phrases saying what failed; they never hold the token, a claim's value, a key or
a secret (the same text is the JSON body's message).
"""

from __future__ import annotations

import functools

from gateway.auth.reasons import reason_for
from gateway.errors import BadRequest, Forbidden, Unauthorized

REALM = "gateway"
Challenge = tuple[tuple[bytes, bytes], ...]


@functools.lru_cache(maxsize=256)
def challenge(error: str | None = None, description: str | None = None) -> Challenge:
    """The WWW-Authenticate header (made once per distinct error and description)."""
    value = f'Bearer realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    if description is not None:
        # RFC 6750 section 3: error_description holds no '"' or '\'
        value += f', error_description="{_quotable(description)}"'
    return ((b"www-authenticate", value.encode("ascii", "replace")),)


def _quotable(text: str) -> str:
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


class MissingToken(Unauthorized):
    """No token in any of the route's sources (401 with a bare challenge, no error code)."""

    default_message = "a bearer token is required"
    auth_reason = "missing_token"  # the metrics' reason label (gateway/auth/reasons.py)

    def __init__(self) -> None:
        super().__init__(headers=challenge())


class InvalidToken(Unauthorized):
    """The token is malformed, unverifiable, expired, or not for this gateway (401)."""

    code = "invalid_token"
    default_message = "the token is not valid"

    def __init__(self, description: str) -> None:
        super().__init__(description, headers=challenge("invalid_token", description))
        self.auth_reason = reason_for(description)


class InsufficientScope(Forbidden):
    """A valid token whose claims do not satisfy the route (403)."""

    code = "insufficient_scope"
    default_message = "the token's claims do not allow this request"
    auth_reason = "insufficient_scope"

    def __init__(self, description: str) -> None:
        super().__init__(description, headers=challenge("insufficient_scope", description))


class InvalidAuthRequest(BadRequest):
    """Credentials sent in a way that cannot be read unambiguously (400), e.g. two Authorization headers."""

    code = "invalid_request"
    auth_reason = "invalid_request"

    def __init__(self, description: str) -> None:
        super().__init__(description, headers=challenge("invalid_request", description))
