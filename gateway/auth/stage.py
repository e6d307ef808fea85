"""The auth stage: a route's policy applied to each request, before the proxy.

One pass over the request headers finds the credentials and drops what the upstream must not get:
``Authorization`` (unless ``keep_authorization``) and the client's own copies of every header a claim is
forwarded in, so a client can never spoof ``X-User-Id`` (whether or not it sends a token, and on
optional routes too). Then:

    no token        required: 401 (bare Bearer challenge)    optional: passes on anonymously
    a token         cached verification, else full verification (may await a key refresh)
                    (opaque, on a route whose provider introspects: RFC 7662 introspection instead)
                    -> issuer allowed on this route? (else 401) -> claims satisfied? (else 403)
                    -> scopes for the method and claim rules? (else 403 insufficient_scope, with the
                       scopes needed in the challenge; gateway/auth/oidc/scopes.py)
                    -> ex.subject = sub, claims forwarded as headers
                    -> relay: the gateway's client-credentials token as Authorization -> next stage

The token comes from the first source that has one: ``Authorization: Bearer``, the named cookie, the
named query parameter (off by default; removed from the query the upstream gets unless
``keep_authorization``); without a token, a route with ``session: true`` reads the login session cookie
(gateway/auth/sessions.py), which is never passed upstream; a route with ``login: true`` reads the edge
login's session cookie the same way (gateway/auth/oidc/login.py; the upstream gets the session's access
token as ``Authorization: Bearer``) and, without any credential, sends a browser to log in (302) and
answers anything else 401.

A client reuses its token, and the verifier's cache hands back the same ``Verified`` for it: ``admit``
remembers the last identity it let in on this route with the headers it forwarded (routes without
per-method scopes), so the next request with it skips the issuer, claim and header work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from gateway.auth.errors import InsufficientScope, InvalidAuthRequest, InvalidToken, MissingToken
from gateway.auth.policy import MISSING, RoutePolicy, claim_value, header_value, satisfies
from gateway.auth.store import StoreError
from gateway.auth.verify import NeedKeys, TokenError, Verified, Verifier
from gateway.errors import ServiceUnavailable
from gateway.exchange import Exchange, Stage

if TYPE_CHECKING:
    from gateway.auth.oidc.login import EdgeLogin
    from gateway.auth.oidc.runtime import RouteOidc
    from gateway.auth.sessions import Sessions

Headers = list[tuple[bytes, bytes]]
AUTHORIZATION = b"authorization"
COOKIE = b"cookie"


class AuthStage(Stage):
    """Checks the route's token policy; see the module docstring. Everything is worked out here, once."""

    def __init__(self, policy: RoutePolicy, verifier: Verifier, sessions: Sessions | None = None, *,
                 oidc: RouteOidc | None = None, login: EdgeLogin | None = None) -> None:
        self.policy = policy
        self.login = login if policy.login else None  # login at the edge (gateway/auth/oidc/login.py)
        self.introspector = oidc.introspector if oidc is not None else None
        self.scopes = oidc.scopes if oidc is not None else None
        self.relay = oidc.credentials if oidc is not None else None
        self.verifier = verifier
        self.sessions = sessions if policy.session else None
        # a credential that always needs a store or a call: ``enter`` leaves such a route to ``__call__``
        self.awaits = self.sessions is not None or self.login is not None or self.relay is not None
        self.required = policy.required
        self.issuers = frozenset(policy.issuers) if policy.issuers is not None else None
        self.bearer = policy.bearer
        self.keep_authorization = policy.keep_authorization
        self.cookie = (policy.cookie + "=").encode("latin-1") if policy.cookie else None
        self.query = (policy.query + "=").encode("latin-1") if policy.query else None
        # header names never passed on from the client: the forwarded claims' headers
        self.strip = frozenset(header.encode("latin-1") for _, header in policy.forward)
        # the header names ``credentials`` looks at: any other is kept at the cost of one set look-up
        self.special = self.strip | {AUTHORIZATION} | ({COOKIE} if self.cookie is not None else set())
        self.forward = tuple((claim, tuple(claim.split(".")), header.encode("latin-1"))
                             for claim, header in policy.forward)
        self.claims = tuple((claim, tuple(claim.split(".")), expected) for claim, expected in policy.claims)
        # ``admit``'s outcome for the last identity it let in: a client reuses its token, and the verifier
        # hands back the same (immutable) Verified while it is cached, valid and not revoked
        self.last: Verified | None = None
        self.last_forward: Headers = []

    async def __call__(self, ex: Exchange) -> None:
        scope = ex.scope
        token, headers = self.credentials(scope["headers"])
        if self.query is not None:
            from_query, scope["query_string"] = self.from_query(scope["query_string"])
            token = token or from_query
        verified: Verified | None = None
        if self.sessions is not None:
            session, headers = take_cookie(headers, self.sessions.prefix)
            if token is None and session is not None:
                verified = await self.session(session, ex)
        if self.login is not None:  # its cookie is a credential too: never passed upstream
            login_cookie, headers = take_cookie(headers, self.login.prefix)
            if token is None and verified is None and login_cookie is not None:
                verified, access = await self.login_session(login_cookie, ex)
                if access is not None and not self.keep_authorization:  # the user's token, for the upstream
                    headers.append((AUTHORIZATION, b"Bearer " + access))
        if token is not None:
            try:
                verified = self.verifier.cached(token) or await self.verify(token)
            except TokenError as exc:
                raise InvalidToken(exc.description) from None
        if verified is not None:
            self.admit(verified, ex, headers)
        elif self.required:
            if self.login is not None:
                self.login.challenge(ex)  # a browser is sent to log in; anything else gets 401
            raise MissingToken()
        if self.relay is not None:  # token relay: the upstream gets the gateway's own token
            relayed = await self.relay.token()
            headers = [item for item in headers if item[0] != AUTHORIZATION]
            headers.append((AUTHORIZATION, b"Bearer " + relayed))
        scope["headers"] = headers
        await self.next(ex)  # type: ignore[misc]

    def enter(self, ex: Exchange) -> bool:
        """The stage without awaiting (the proxy's fast lane, gateway/proxy/lane.py), where nothing has to
        wait: a route without sessions, edge login or token relay, and a token the verifier has cached or
        verifies with the keys at hand (or no token). True: done as ``__call__`` does it, the next stage
        follows; a GatewayError raised: the answer; False: nothing was done (a key refresh or an
        introspection call is needed, or the route's credentials need a store): run the stage."""
        if self.awaits:
            return False
        scope = ex.scope
        token, headers = self.credentials(scope["headers"])
        query: bytes | None = None
        if self.query is not None:
            from_query, query = self.from_query(scope["query_string"])
            token = token or from_query
        verified: Verified | None = None
        if token is not None:
            if self.introspector is not None and token.count(b".") != 2:
                return False
            try:
                verified = self.verifier.cached(token) or self.verifier.verify_now(token)
            except NeedKeys:
                return False
            except TokenError as exc:
                if query is not None:  # the token leaves the query (and the access log) either way
                    scope["query_string"] = query
                raise InvalidToken(exc.description) from None
        if query is not None:
            scope["query_string"] = query
        if verified is not None:
            self.admit(verified, ex, headers)
        elif self.required:
            raise MissingToken()
        scope["headers"] = headers
        return True

    async def verify(self, token: bytes) -> Verified:
        """A JWT by the verifier; an opaque token (not three parts) by introspection, where the route's
        provider has it."""
        if self.introspector is not None and token.count(b".") != 2:
            return await self.introspector.verify(token)
        return await self.verifier.verify(token)

    def admit(self, verified: Verified, ex: Exchange, headers: Headers) -> None:
        """The route's rules for a verified identity: its issuer, its claims; then the subject and the
        forwarded claim headers. The outcome depends on the identity alone (without per-method scopes):
        the last one admitted is remembered, and the same identity next time just gets its headers."""
        if verified is self.last:
            ex.subject = verified.subject
            headers += self.last_forward
            return
        if self.issuers is not None and verified.issuer not in self.issuers:
            raise InvalidToken("token issuer not accepted on this route")
        claims = verified.claims
        for name, path, expected in self.claims:
            value = claim_value(claims, name, path)
            if value is MISSING or not satisfies(value, expected):
                raise InsufficientScope(f"the token's {name} claim does not allow this request")
        if self.scopes is not None:
            self.scopes.check(ex.scope["method"], claims)
        ex.subject = verified.subject
        forward: Headers = []
        for name, path, header in self.forward:
            value = claim_value(claims, name, path)
            if value is not MISSING and value is not None:
                encoded = header_value(value)
                if encoded is not None:
                    forward.append((header, encoded))
        headers += forward
        if self.scopes is None:  # scopes are checked per method: nothing to remember then
            self.last, self.last_forward = verified, forward

    async def session(self, value: bytes, ex: Exchange) -> Verified | None:
        """The login session of the cookie. One that is not live (expired, ended, forged) is refused on a
        required route and ignored on an optional one; either way the browser is told to drop it."""
        sessions = self.sessions
        assert sessions is not None
        try:
            verified = await sessions.authenticate(value, ex)
        except StoreError:
            raise ServiceUnavailable("sessions cannot be checked now") from None
        if verified is None:
            if self.required:
                error = InvalidToken("session expired or ended")
                error.headers = (*error.headers, (b"set-cookie", sessions.cleared))
                raise error
            ex.on_response(lambda _, status, headers: headers.append((b"set-cookie", sessions.cleared)))
        return verified

    async def login_session(self, value: bytes, ex: Exchange) -> tuple[Verified | None, bytes | None]:
        """The edge login session of the cookie (tokens refreshed when due) and its access token; one that
        is not live is ignored and the browser told to drop it."""
        login = self.login
        assert login is not None
        found = await login.authenticate(value, ex)
        if found is None:
            ex.on_response(lambda _, status, headers: headers.append((b"set-cookie", login.cleared)))
            return None, None
        return found

    def credentials(self, headers: Headers) -> tuple[bytes | None, Headers]:
        """The token from Authorization or the cookie, and the headers the upstream may get."""
        kept: Headers = []
        authorization: bytes | None = None
        cookie_token: bytes | None = None
        special = self.special
        for item in headers:
            name = item[0]
            if name not in special:
                kept.append(item)
            elif name == AUTHORIZATION:
                if authorization is not None:
                    raise InvalidAuthRequest("more than one Authorization header")
                authorization = item[1]
                if self.keep_authorization:
                    kept.append(item)
            elif name not in self.strip:  # the cookie (a forwarded claim's header is dropped)
                if cookie_token is None:
                    cookie_token = self.from_cookie(item[1])
                kept.append(item)
        if authorization is not None and self.bearer:
            token = bearer_token(authorization)
            if token is not None:
                return token, kept
        return cookie_token, kept

    def from_cookie(self, header: bytes) -> bytes | None:
        prefix = self.cookie
        assert prefix is not None
        for part in header.split(b";"):
            pair = part.strip()
            if pair.startswith(prefix):
                value = pair[len(prefix):].strip(b'"')
                return value or None
        return None

    def from_query(self, query: bytes) -> tuple[bytes | None, bytes]:
        """The token from the query parameter, and the query the upstream gets (without it, unless
        ``keep_authorization``)."""
        prefix = self.query
        if not query or prefix is None:
            return None, query
        token: bytes | None = None
        kept = []
        for part in query.split(b"&"):
            if part.startswith(prefix):
                if token is None:
                    token = unquote_to_bytes(part[len(prefix):]) or None
                if not self.keep_authorization:
                    continue
            kept.append(part)
        return token, query if self.keep_authorization else b"&".join(kept)


def bearer_token(authorization: bytes) -> bytes | None:
    """The token of ``Bearer <token>`` (scheme case-insensitive, RFC 6750 section 2.1); None for any
    other scheme. ``Bearer`` with nothing after it is a token that fails (malformed), not a missing one."""
    scheme, _, rest = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = rest.strip(b" \t")
    if not token:
        raise InvalidToken("malformed token")
    return token


def take_cookie(headers: Headers, prefix: bytes) -> tuple[bytes | None, Headers]:
    """The value of the cookie ``prefix`` names (``name=``), and the headers without it (a session cookie
    is a credential: the upstream never gets it)."""
    found: bytes | None = None
    kept: Headers = []
    for item in headers:
        if item[0] != b"cookie" or prefix not in item[1]:
            kept.append(item)
            continue
        others = []
        for part in item[1].split(b";"):
            pair = part.strip()
            if pair.startswith(prefix):
                if found is None:
                    found = pair[len(prefix):].strip(b'"')
            elif pair:
                others.append(pair)
        if others:
            kept.append((b"cookie", b"; ".join(others)))
    return found, kept
