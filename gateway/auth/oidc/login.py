"""Login at the edge: the gateway as OpenID Connect relying party (authorization code + PKCE).

Three built-in routes (``auth.login``; paths configurable), and the routes with ``login: true``:

    GET  login_path?return=/app/x   a new login: state, nonce and PKCE verifier (S256) kept server-side
                                    (pending, 10 minutes, single use) and bound to this browser by a
                                    random cookie (``<cookie>-login``); 302 to the provider's
                                    authorization endpoint with the exact redirect URI
    GET  callback_path?code&state   the pending login taken by its state (a replayed or foreign state
                                    finds nothing: 400), the browser binding and RFC 9207 ``iss``
                                    checked, the code exchanged with the verifier, the ID token
                                    verified (signature by the provider's JWKS, iss, aud = client id,
                                    exp, nonce; a nonce is accepted once), its claims completed by
                                    UserInfo (same sub); a session; 302 to the return
    GET|POST logout_path            the session ended here and its cookie cleared (403 for a request the browser
                                    marks cross-site: logout CSRF); 302 to the
                                    provider's end_session_endpoint (RP-initiated logout, with
                                    id_token_hint and post_logout_redirect_uri) or to post_logout_redirect
    a route with login: true        a session cookie authenticates it; without one a browser (GET/HEAD
                                    asking for text/html, not XHR) is sent to login_path with the page as
                                    its return, anything else gets the usual 401 JSON

The return URL is never a way out of the site: only a local path (no scheme, host, ``//``, backslash,
``..`` or encoded dots) under one of ``allowed_return`` is followed; anything else returns to the first
allowed path.

**The session** (gateway/auth/oidc/login_store.py: Redis with ``redis_url``, else the host's SQLite in
``auth.state_dir``) is found by the SHA-256 of the cookie value (256 random bits; ``HttpOnly``, ``Path=/``,
``SameSite`` and ``Secure`` as configured). The cookie carries no token and no claim; the stored record
holds the ID token's claims and the tokens, encrypted (AES-256-GCM) under a key derived from the cookie
value, so the store alone yields no usable token. The session lasts ``session_ttl``; its access token is
refreshed (refresh_token grant, one worker at a time per session: a lock in the store and a versioned
compare-and-swap) once it is within ``refresh_before`` of expiring; a refresh the provider refuses ends
the session (log in again); while the provider is unreachable a session whose access token has not
expired yet keeps working, an expired one gets 503.

A session authenticates like a token of the provider (issuer name = provider name): the route's issuers,
claim rules, scopes and forwarded headers apply to the ID token's claims (plus ``scope`` and ``sid``).
No answer or log line holds a token, a code, a verifier or the client secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.auth.errors import MissingToken
from gateway.auth.oidc.discovery import ProviderUnavailable, describe_error, http_client
from gateway.auth.oidc.login_store import LoginStore
from gateway.auth.stage import take_cookie
from gateway.auth.store import StoreError
from gateway.auth.verify import Issuer, TokenError, Verified, Verifier
from gateway.errors import BadRequest, Forbidden, GatewayError, ServiceUnavailable, Unauthorized
from gateway.exchange import Exchange, Headers, Stage

if TYPE_CHECKING:
    from gateway.auth.config import IssuerSpec
    from gateway.auth.oidc.config import LoginSpec, ProviderSpec
    from gateway.auth.oidc.runtime import Provider
    from gateway.routing.config import RouteSpec

logger = logging.getLogger("gateway.auth")

PENDING_TTL = 600.0  # a login must come back within 10 minutes
MAX_COOKIE = 256
MAX_QUERY = 8192
ID_TOKEN_CLAIMS_DROPPED = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
ERROR_CODE = re.compile(r"^[a-z_]{1,64}\Z")
UNSAFE_RETURN = re.compile(r"(^//)|(\\)|(%2e)|(%2f)|(%5c)|(/\.\.?(/|$))|[^\x21-\x7e]", re.IGNORECASE)
SESSION_KEY_INFO = b"gateway-oidc-login-tokens"
NAVIGATION = (b"navigate", b"nested-navigate")


def digest(value: str | bytes) -> str:
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636 section 4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


class LoginRedirect(GatewayError):
    """A browser without a session on a ``login: true`` route: 302 to the login path."""

    status = 302
    code = "login_required"
    default_message = "log in to continue"
    auth_reason = "missing_token"  # counted like any request without credentials

    def __init__(self, location: bytes) -> None:
        super().__init__(headers=((b"location", location), *NO_STORE))


class LoginFailed(Unauthorized):
    """The provider refused the login, or what it sent does not verify (401)."""

    code = "login_failed"
    default_message = "the login did not succeed"
    auth_reason = "login"  # gateway_auth_failures_total{route="oidc:callback", reason="login"}


class LoginRequestError(BadRequest):
    """A login or callback request that cannot be honoured: unknown or used state, another browser (400)."""

    code = "invalid_login_request"
    default_message = "the login request is not valid"
    auth_reason = "login"


def login_routes(spec: LoginSpec) -> list[tuple[RouteSpec, str]]:
    """The login, callback and logout routes, each with the config key of its path."""
    from gateway.routing.config import RouteSpec

    return [
        (RouteSpec("oidc:login", spec.login_path, False, "(gateway)", frozenset({"GET", "HEAD"})),
         "login.login_path"),
        (RouteSpec("oidc:callback", spec.callback_path, False, "(gateway)", frozenset({"GET"})),
         "login.callback_path"),
        (RouteSpec("oidc:logout", spec.logout_path, False, "(gateway)", frozenset({"GET", "POST"})),
         "login.logout_path"),
    ]


def safe_return(value: str | None, allowed: tuple[str, ...]) -> str:
    """``value`` when it is a local path under one of ``allowed``; else the first allowed path."""
    if value and value.startswith("/") and not UNSAFE_RETURN.search(value):
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc and any(parts.path.startswith(prefix) for prefix in allowed):
            return value
    return allowed[0]


def is_browser(ex: Exchange) -> bool:
    """A top-level browser navigation: GET/HEAD, asks for HTML, not an XHR/fetch call."""
    if ex.scope["method"] not in ("GET", "HEAD"):
        return False
    accept = b""
    for name, value in ex.scope["headers"]:
        if name == b"x-requested-with" or (name == b"sec-fetch-mode" and value not in NAVIGATION):
            return False
        if name == b"accept":
            accept += value
    return b"text/html" in accept


def cross_site(ex: Exchange) -> bool:
    """The browser says the request comes from another site (Sec-Fetch-Site, sent by every current
    browser); a request without it (a script, an old browser) is not refused for that."""
    for name, value in ex.scope["headers"]:
        if name == b"sec-fetch-site":
            return bool(value == b"cross-site")
    return False


def query_params(ex: Exchange) -> dict[str, str]:
    """The query's parameters; one given twice is a bad request (RFC 6749 section 3.1)."""
    raw = ex.scope.get("query_string", b"")
    if len(raw) > MAX_QUERY:
        raise LoginRequestError("the query is too long")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise LoginRequestError("the query is not valid UTF-8") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in found:
            raise LoginRequestError(f"the {name[:40]} parameter appears more than once")
        found[name] = value
    return found


class TokenBox:
    """The tokens of a session, sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the cookie
    value, bound to the session id: readable only with the browser's cookie."""

    @staticmethod
    def _aead(secret: bytes) -> AESGCM:
        return AESGCM(HKDF(hashes.SHA256(), 32, None, SESSION_KEY_INFO).derive(secret))

    @classmethod
    def seal(cls, secret: bytes, sid: str, tokens: dict[str, Any]) -> str:
        nonce = os.urandom(12)
        sealed = cls._aead(secret).encrypt(nonce, orjson.dumps(tokens), sid.encode("ascii"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    @classmethod
    def open(cls, secret: bytes, sid: str, sealed: str) -> dict[str, Any] | None:
        try:
            data = base64.b64decode(sealed)
            return dict(orjson.loads(cls._aead(secret).decrypt(data[:12], data[12:], sid.encode("ascii"))))
        except (InvalidTag, ValueError, binascii.Error, TypeError):
            return None


@dataclasses.dataclass
class LoginSession:
    sid: str
    version: int
    record: dict[str, Any]
    tokens: dict[str, Any]


class EdgeLogin:
    """Login at the edge in one worker (see the module docstring)."""

    def __init__(self, spec: LoginSpec, provider: Provider, issuer: IssuerSpec, store: LoginStore, *,
                 client: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.provider = provider
        self.provider_spec: ProviderSpec = provider.spec
        self.name = self.provider_spec.name
        self.store = store
        self.clock = clock
        self.client = client if client is not None else http_client(self.provider_spec)
        self.timeout = self.provider_spec.timeout
        scopes = spec.scopes if spec.scopes is not None else self.provider_spec.scopes
        self.scope = " ".join(dict.fromkeys(("openid", *scopes)))
        self.redirect_uri = spec.redirect_uri
        self.post_logout_uri = spec.redirect_base.rstrip("/") + spec.post_logout_redirect
        id_spec = dataclasses.replace(issuer, audiences=(self.provider_spec.client_id,),
                                      required_claims=("exp", "iat", "sub"))
        self.id_tokens = Verifier({self.name: Issuer(id_spec, provider.keys)}, 0, clock=clock)
        cookie = spec.cookie
        self.cookie = cookie.name
        self.prefix = (cookie.name + "=").encode("latin-1")
        self.binding_cookie = cookie.name + "-login"
        self.binding_prefix = (self.binding_cookie + "=").encode("latin-1")
        secure = "; Secure" if cookie.secure else ""
        self.attributes = f"; Path=/; HttpOnly; SameSite={cookie.same_site}{secure}".encode("ascii")
        # the binding cookie must come back on the provider's top-level redirect: Lax at most
        binding_site = "Lax" if cookie.same_site == "Strict" else cookie.same_site
        self.binding_attributes = f"; Path=/; HttpOnly; SameSite={binding_site}{secure}".encode("ascii")
        self.cleared = b"%s=; Max-Age=0%s" % (self.cookie.encode(), self.attributes)
        self.binding_cleared = b"%s=; Max-Age=0%s" % (self.binding_cookie.encode(), self.binding_attributes)
        self.refreshing: dict[str, asyncio.Future[LoginSession | None]] = {}

    def routes(self) -> list[tuple[RouteSpec, Stage]]:
        stages: dict[str, Stage] = {"oidc:login": LoginStart(self), "oidc:callback": LoginCallback(self),
                                    "oidc:logout": LoginLogout(self)}
        return [(spec, stages[spec.name]) for spec, _ in login_routes(self.spec)]

    async def close(self) -> None:
        await self.store.close()
        await self.client.aclose()

    # --- login --------------------------------------------------------------------------------------------

    async def start(self, ex: Exchange) -> tuple[bytes, Headers]:
        """A new pending login: the authorization URL and the headers to send with the redirect."""
        params = query_params(ex)
        return_to = safe_return(params.get("return"), self.spec.allowed_return)
        endpoint = await self._endpoint("authorization_endpoint")
        binding, _ = take_cookie(ex.scope["headers"], self.binding_prefix)
        headers: Headers = []
        if binding is None or not 16 <= len(binding) <= MAX_COOKIE:  # several tabs may log in at once
            binding = secrets.token_urlsafe(32).encode("ascii")
            headers.append((b"set-cookie", b"%s=%s; Max-Age=%d%s" % (
                self.binding_cookie.encode(), binding, int(PENDING_TTL), self.binding_attributes)))
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
        record = {"b": digest(binding), "n": nonce, "v": verifier, "r": return_to, "t": self.clock()}
        await self._store(self.store.put_pending(digest(state), record, PENDING_TTL))
        query = urlencode({"response_type": "code", "client_id": self.provider_spec.client_id,
                           "redirect_uri": self.redirect_uri, "scope": self.scope, "state": state, "nonce": nonce,
                           "code_challenge": s256(verifier), "code_challenge_method": "S256"})
        location = endpoint + ("&" if urlsplit(endpoint).query else "?") + query
        return location.encode("ascii"), headers

    async def finish(self, ex: Exchange) -> tuple[bytes, Headers]:
        """The callback: the checks of the module docstring, then the session; the redirect and headers."""
        params = query_params(ex)
        state = params.get("state")
        if not state:
            raise LoginRequestError("the callback has no state")
        pending = await self._store(self.store.take_pending(digest(state)))
        if pending is None:
            raise LoginRequestError("unknown, expired or already used login state")
        binding, _ = take_cookie(ex.scope["headers"], self.binding_prefix)
        if binding is None or not hmac.compare_digest(digest(binding), str(pending["b"])):
            raise LoginRequestError("the login was started in another browser")
        error = params.get("error")
        if error is not None:
            shown = error if ERROR_CODE.match(error) else "error"
            raise LoginFailed(f"the provider refused the login ({shown})")
        metadata = await self._metadata()
        iss = params.get("iss")
        if iss is not None and iss != self.provider_spec.issuer:
            raise LoginRequestError("the authorization response comes from another issuer")
        if iss is None and metadata.get("authorization_response_iss_parameter_supported") is True:
            raise LoginRequestError("the authorization response lacks the issuer")
        code = params.get("code")
        if not code:
            raise LoginRequestError("the callback has no code")
        tokens = await self._token_request(
            await self._endpoint("token_endpoint"), grant_type="authorization_code", code=code,
            redirect_uri=self.redirect_uri, code_verifier=str(pending["v"]))
        claims = await self._id_token(tokens, nonce=str(pending["n"]))
        if not await self._store(self.store.use_nonce(digest(str(pending["n"])),
                                                       max(1.0, float(claims["exp"]) - self.clock() + 300.0))):
            raise LoginFailed("the ID token's nonce was used before")
        claims = await self._with_userinfo(claims, tokens)
        cookie = await self._create(claims, tokens)
        headers: Headers = [(b"set-cookie", cookie), (b"set-cookie", self.binding_cleared)]
        return str(pending["r"]).encode("utf-8"), headers

    async def _id_token(self, tokens: dict[str, Any], nonce: str | None) -> dict[str, Any]:
        """The verified claims of the response's ID token (its nonce checked when ``nonce`` is given)."""
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise LoginFailed("the provider sent no ID token")
        try:
            verified = await self.id_tokens.verify(id_token.encode("ascii", "replace"))
        except TokenError as exc:
            raise LoginFailed(f"the ID token is not valid ({exc.description})") from None
        claims = verified.claims
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.provider_spec.client_id:
            raise LoginFailed("the ID token was issued to another client")
        if nonce is not None:
            presented = claims.get("nonce")
            if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):
                raise LoginFailed("the ID token's nonce does not match the login")
        return claims

    async def _with_userinfo(self, claims: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
        """The ID token's claims completed by the provider's UserInfo (OIDC Core section 5.3: providers may
        keep profile claims out of the ID token when an access token is issued). UserInfo is used only
        when its ``sub`` is the ID token's (section 5.3.2); the ID token's claims win; a failure is logged
        and the login goes on with the ID token's claims."""
        access = tokens.get("access_token")
        try:
            endpoint = (await self._metadata()).get("userinfo_endpoint")
        except ServiceUnavailable:
            return claims
        if not isinstance(endpoint, str) or not isinstance(access, str):
            return claims
        try:
            response = await asyncio.wait_for(self.client.request(
                "GET", endpoint, headers={"authorization": f"Bearer {access}", "accept": "application/json"},
                withhold_token=True), self.timeout + 1.0)
            info = orjson.loads(response.content) if response.status_code == 200 else None
        except Exception as exc:  # the transport's many errors, a body that is not JSON
            logger.warning("auth login: the UserInfo endpoint of %s failed: %s", self.name, describe_error(exc))
            return claims
        if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
            logger.warning("auth login: the UserInfo of %s was not usable (HTTP %d)", self.name, response.status_code)
            return claims
        return {**info, **claims}

    async def _create(self, claims: dict[str, Any], tokens: dict[str, Any]) -> bytes:
        secret = secrets.token_urlsafe(32).encode("ascii")
        sid = digest(secret)[:32]
        now = self.clock()
        expires = now + self.spec.session_ttl
        record = self._record(claims, tokens, now, expires)
        record["t"] = TokenBox.seal(secret, sid, self._kept_tokens(tokens, {}))
        await self._store(self.store.put_session(sid, record, expires - now))
        return b"%s=%s; Max-Age=%d%s" % (self.cookie.encode(), secret, int(expires - now), self.attributes)

    def _record(self, claims: dict[str, Any], tokens: dict[str, Any], created: float,
                expires: float) -> dict[str, Any]:
        kept = {key: value for key, value in claims.items() if key not in ID_TOKEN_CLAIMS_DROPPED}
        scope = tokens.get("scope")
        if isinstance(scope, str):
            kept["scope"] = scope
        access_exp = 0.0  # unknown: never refreshed
        lifetime = tokens.get("expires_in")
        if isinstance(lifetime, (int, float, str)) and not isinstance(lifetime, bool):
            with contextlib.suppress(ValueError):  # some providers send it as a string
                seconds = float(lifetime)
                if 0 < seconds < 10 * 365 * 86400:
                    access_exp = self.clock() + seconds
        return {"c": kept, "u": str(claims["sub"]), "ct": created, "x": expires, "ax": access_exp}

    @staticmethod
    def _kept_tokens(tokens: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        kept = {key: tokens[key] for key in ("access_token", "refresh_token", "id_token")
                if isinstance(tokens.get(key), str)}
        for key in ("refresh_token", "id_token"):  # a refresh response may leave them out: kept
            if key not in kept and isinstance(before.get(key), str):
                kept[key] = before[key]
        return kept

    # --- the request path ---------------------------------------------------------------------------------

    async def authenticate(self, value: bytes, ex: Exchange) -> tuple[Verified, bytes | None] | None:
        """The live session the cookie names (its tokens refreshed when due), as a verified identity, and
        its access token (for the upstream)."""
        session = await self.read(value)
        if session is None:
            return None
        record = session.record
        now = self.clock()
        due = record["ax"] and now >= record["ax"] - self.spec.refresh_before
        if due and "refresh_token" in session.tokens:
            refreshed = await self.refresh(value, session)
            if refreshed is None:
                return None
            session, record = refreshed, refreshed.record
        claims = {**record["c"], "sid": session.sid}
        access = session.tokens.get("access_token")
        verified = Verified(claims, self.name, record["u"], min(float(record["x"]), now + 60.0))
        return verified, access.encode("ascii", "replace") if isinstance(access, str) else None

    async def read(self, value: bytes) -> LoginSession | None:
        if not 16 <= len(value) <= MAX_COOKIE:
            return None
        sid = digest(value)[:32]
        found = await self._store(self.store.session(sid))
        if found is None:
            return None
        version, record = found
        if self.clock() >= float(record["x"]):
            return None
        tokens = TokenBox.open(value, sid, record.get("t", ""))
        if tokens is None:
            return None
        return LoginSession(sid, version, record, tokens)

    async def refresh(self, value: bytes, session: LoginSession) -> LoginSession | None:
        """The session with fresh tokens; one refresh per session at a time in this worker (others wait
        for it) and across workers (the store's lock; a worker that does not get it goes on with the
        tokens it has while they last, else waits for the holder's result)."""
        running = self.refreshing.get(session.sid)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[LoginSession | None] = asyncio.get_running_loop().create_future()
        self.refreshing[session.sid] = future
        try:
            result = await self._refresh(value, session)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self.refreshing[session.sid]

    async def _refresh(self, value: bytes, session: LoginSession) -> LoginSession | None:
        now = self.clock()
        valid = now < float(session.record["ax"])
        if not await self._store(self.store.lock(session.sid, self.timeout + 5.0)):
            if valid:
                return session  # another worker is refreshing: these tokens still serve
            return await self._wait_for_refresh(value, session)
        try:
            return await self._refresh_locked(value, session, valid)
        finally:
            await self._store(self.store.unlock(session.sid))

    async def _refresh_locked(self, value: bytes, session: LoginSession, valid: bool) -> LoginSession | None:
        try:
            tokens = await self._token_request(await self._endpoint("token_endpoint"), grant_type="refresh_token",
                                               refresh_token=str(session.tokens["refresh_token"]))
        except LoginFailed:
            logger.info("auth login: the provider %s refused to refresh session %s; it ends", self.name,
                        session.sid[:8])
            await self._store(self.store.delete_session(session.sid))
            return None
        except ServiceUnavailable:
            if valid:
                return session
            raise
        claims = await self._refreshed_claims(session, tokens)
        if claims is None:
            return None
        record = self._record(claims, tokens, float(session.record["ct"]), float(session.record["x"]))
        kept = self._kept_tokens(tokens, session.tokens)
        record["t"] = TokenBox.seal(value, session.sid, kept)
        ttl = max(1.0, float(record["x"]) - self.clock())
        if not await self._store(self.store.replace_session(session.sid, session.version, record, ttl)):
            return await self.read(value)  # changed meanwhile (ended, or refreshed elsewhere)
        return LoginSession(session.sid, session.version + 1, record, kept)

    async def _refreshed_claims(self, session: LoginSession, tokens: dict[str, Any]) -> dict[str, Any] | None:
        """The session's claims after a refresh: the new ID token's when the response has one that verifies;
        the session's own when it has none or one that does not verify (it came straight from the token
        endpoint, as the confidential client: OIDC Core section 3.1.3.7 lets the channel vouch for it);
        None (the session ends) when a verified one names another subject."""
        if not isinstance(tokens.get("id_token"), str):
            return dict(session.record["c"])
        try:
            fresh = await self._id_token(tokens, nonce=None)
        except LoginFailed as exc:
            logger.warning("auth login: session %s keeps its claims: %s", session.sid[:8], exc.message)
            return dict(session.record["c"])
        if fresh.get("sub") != session.record["u"]:
            logger.warning("auth login: session %s ends: the refreshed ID token names another subject",
                           session.sid[:8])
            await self._store(self.store.delete_session(session.sid))
            return None
        return fresh

    async def _wait_for_refresh(self, value: bytes, session: LoginSession) -> LoginSession | None:
        deadline = self.clock() + self.timeout + 5.0
        while self.clock() < deadline:
            await asyncio.sleep(0.05)
            current = await self.read(value)
            if current is None or current.version != session.version:
                return current
        raise ServiceUnavailable("the session's tokens are being refreshed; try again")

    def challenge(self, ex: Exchange) -> NoReturn:
        """No session on a ``login: true`` route: a browser goes to log in, anything else gets 401."""
        if not is_browser(ex):
            raise MissingToken()
        target = ex.scope.get("raw_path") or ex.scope["path"].encode("utf-8")
        query = ex.scope.get("query_string", b"")
        page = target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        location = f"{self.spec.login_path}?return={quote(page, safe='')}"
        raise LoginRedirect(location.encode("ascii"))

    # --- logout -------------------------------------------------------------------------------------------

    async def logout(self, ex: Exchange) -> tuple[bytes, Headers]:
        value, _ = take_cookie(ex.scope["headers"], self.prefix)
        id_token = None
        if value is not None:
            session = await self.read(value)
            if session is not None:
                id_token = session.tokens.get("id_token")
                await self._store(self.store.delete_session(session.sid))
        headers: Headers = [(b"set-cookie", self.cleared)]
        try:
            end_session = (await self._metadata()).get("end_session_endpoint")
        except ServiceUnavailable:
            end_session = None  # logged out here; the provider's session is left as it is
        if not isinstance(end_session, str):
            return self.spec.post_logout_redirect.encode("utf-8"), headers
        params = {"client_id": self.provider_spec.client_id, "post_logout_redirect_uri": self.post_logout_uri}
        if isinstance(id_token, str):
            params["id_token_hint"] = id_token
        location = end_session + ("&" if urlsplit(end_session).query else "?") + urlencode(params)
        return location.encode("ascii"), headers

    # --- talking to the provider --------------------------------------------------------------------------

    async def _metadata(self) -> dict[str, Any]:
        try:
            return await self.provider.metadata.get()
        except ProviderUnavailable as exc:
            logger.debug("auth login: %s", exc)
            raise ServiceUnavailable(f"the identity provider {self.name} is unreachable") from None

    async def _endpoint(self, key: str) -> str:
        value = (await self._metadata()).get(key)
        if not isinstance(value, str):
            raise ServiceUnavailable(f"the identity provider {self.name} has no {key}")
        return value

    async def _token_request(self, url: str, **form: str) -> dict[str, Any]:
        """A token endpoint request (client authentication by authlib as configured); the response."""
        from authlib.integrations.base_client import OAuthError

        try:
            if form["grant_type"] == "refresh_token":
                call = self.client.refresh_token(url, refresh_token=form["refresh_token"])
            else:
                call = self.client.fetch_token(url, **form)
            token = await asyncio.wait_for(call, self.timeout + 1.0)
        except OAuthError as exc:
            error = exc.error if isinstance(exc.error, str) and ERROR_CODE.match(exc.error) else "error"
            raise LoginFailed(f"the provider refused the token request ({error})") from None
        except Exception as exc:  # a timeout, the transport's many errors (httpx), a response not JSON
            logger.warning("auth login: the token endpoint of %s failed: %s", self.name, describe_error(exc))
            raise ServiceUnavailable(f"the identity provider {self.name} is unreachable") from None
        return dict(token)

    @staticmethod
    async def _store(call: Any) -> Any:
        try:
            return await call
        except StoreError as exc:
            logger.warning("auth login: the session store failed: %s", exc)
            raise ServiceUnavailable("login sessions cannot be used now") from None


async def redirect(ex: Exchange, location: bytes, headers: Headers) -> None:
    body = b""
    await ex.start_response(302, [(b"location", location), (b"content-length", b"0"), *NO_STORE, *headers])
    await ex.send_body(body, False)


class LoginStart(Stage):
    def __init__(self, login: EdgeLogin) -> None:
        self.login = login

    async def __call__(self, ex: Exchange) -> None:
        location, headers = await self.login.start(ex)
        await redirect(ex, location, headers)


class LoginCallback(Stage):
    def __init__(self, login: EdgeLogin) -> None:
        self.login = login

    async def __call__(self, ex: Exchange) -> None:
        location, headers = await self.login.finish(ex)
        await redirect(ex, location, headers)


class LoginLogout(Stage):
    def __init__(self, login: EdgeLogin) -> None:
        self.login = login

    async def __call__(self, ex: Exchange) -> None:
        if ex.scope["method"] == "POST":  # the body is not used; read it so the connection stays usable
            while (await ex.receive()).get("more_body", False):
                pass
        if cross_site(ex):  # another site's link or form may not end the user's session (logout CSRF)
            raise Forbidden("a logout must start from this site")
        location, headers = await self.login.logout(ex)
        await redirect(ex, location, headers)
