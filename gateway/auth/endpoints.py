"""The issuer's own endpoints, served by the gateway itself (built-in routes whose chain is one stage):

    POST  token_path    (/auth/token)              RFC 6749: client_credentials and refresh_token grants
    GET   jwks_path     (/.well-known/jwks.json)   the public keys: next, current and previous
    POST  logout_path   (/auth/logout)             ends the session of a cookie, a refresh token, a token
    POST  login_path    (/auth/login; with sessions)  a session cookie for an authenticated client

The token endpoint follows RFC 6749: a form-encoded body (``application/x-www-form-urlencoded``, each
parameter at most once), the client authenticated by HTTP Basic (``client_id:client_secret``, section
2.3.1), by ``client_id`` and ``client_secret`` in the body, or by its API key in the ``api_key_header``
(one method per request); answers ``Cache-Control: no-store``; errors as JSON ``{"error": ...,
"error_description": ...}`` (section 5.2): ``invalid_request`` 400, ``invalid_client`` 401 with
``WWW-Authenticate: Basic``, ``invalid_grant`` 400, ``unsupported_grant_type`` 400, ``invalid_scope`` 400,
and ``temporarily_unavailable`` 503 when the store cannot be reached. No answer or log line holds a
secret or a token.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote_plus

import orjson

from gateway.auth.errors import InvalidToken
from gateway.auth.issuer import IssuerKeys, OAuthError, TokenIssuer, invalid_client
from gateway.auth.issuer_config import ConsumerSpec, LocalIssuerSpec
from gateway.auth.revocation import RevocationList
from gateway.auth.sessions import Sessions
from gateway.auth.stage import bearer_token, take_cookie
from gateway.auth.store import JTI, SID, Revoked, Store, StoreError
from gateway.auth.verify import TokenError, Verifier
from gateway.errors import ServiceUnavailable
from gateway.exchange import Exchange, Headers, Stage

logger = logging.getLogger("gateway.auth")
MAX_FORM_BYTES = 16 * 1024
FORM_TYPE = b"application/x-www-form-urlencoded"
NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
BASIC_CHALLENGE = (b"www-authenticate", b'Basic realm="gateway", charset="UTF-8"')


async def answer(ex: Exchange, status: int, body: bytes, extra: Headers | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *(extra or ())]
    await ex.start_response(status, headers)
    await ex.send_body(b"" if ex.scope["method"] == "HEAD" else body, False)


async def oauth_error(ex: Exchange, error: OAuthError) -> None:
    extra = [*NO_STORE, BASIC_CHALLENGE] if error.status == 401 else list(NO_STORE)
    await answer(ex, error.status, orjson.dumps({"error": error.error, "error_description": error.description}),
                 extra)


async def read_body(ex: Exchange, limit: int = MAX_FORM_BYTES) -> bytes:
    body = bytearray()
    while True:
        message = await ex.receive()
        if message["type"] != "http.request":
            raise OAuthError(400, "invalid_request", "the request ended early")
        body += message.get("body", b"")
        if len(body) > limit:
            raise OAuthError(400, "invalid_request", f"the request body is larger than {limit} bytes")
        if not message.get("more_body", False):
            break
    ex.bytes_received += len(body)
    return bytes(body)


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


async def read_form(ex: Exchange, required: bool = True) -> dict[str, str]:
    """The form parameters (RFC 6749 section 3.2: each at most once; an empty one counts as absent)."""
    headers = ex.scope["headers"]
    content_type = b"".join(header_values(headers, b"content-type")).split(b";")[0].strip().lower()
    body = await read_body(ex)
    if content_type != FORM_TYPE:
        if required or body:
            raise OAuthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        return {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError(400, "invalid_request", "the form is not valid UTF-8 form encoding") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError(400, "invalid_request", f"the {name[:40]} parameter appears more than once")
        if value:
            form[name] = value
    return form


class ClientAuthentication:
    """Finds the consumer a request authenticates as: HTTP Basic, the body's client_id and client_secret,
    or the API key header; exactly one of them."""

    def __init__(self, issuer: TokenIssuer, api_key_header: str) -> None:
        self.issuer = issuer
        self.api_key_header = api_key_header.encode("latin-1")

    def consumer(self, headers: Headers, form: dict[str, str]) -> ConsumerSpec:
        authorization = header_values(headers, b"authorization")
        api_keys = header_values(headers, self.api_key_header)
        if len(authorization) > 1 or len(api_keys) > 1:
            raise OAuthError(400, "invalid_request", "a credential header appears more than once")
        basic = self.basic(authorization[0]) if authorization else None
        in_body = "client_secret" in form
        used = (basic is not None) + in_body + bool(api_keys)
        if used > 1:
            raise OAuthError(400, "invalid_request", "use one client authentication method per request")
        if basic is not None:
            client_id, secret, raw_id, raw_secret = basic
            if form.get("client_id", client_id) != client_id:
                raise OAuthError(400, "invalid_request", "client_id differs from the authenticated client")
            return self._either(client_id, secret, raw_id, raw_secret)
        if in_body:
            return self.issuer.client(form.get("client_id", ""), form["client_secret"])
        if api_keys:
            return self.issuer.api_client(api_keys[0].decode("latin-1"))
        raise invalid_client()

    def _either(self, client_id: str, secret: str, raw_id: str, raw_secret: str) -> ConsumerSpec:
        """RFC 6749 has the id and secret form-encoded inside Basic; clients like ``curl -u`` send them as
        they are. Both readings are tried (the same when neither holds '%' or '+')."""
        try:
            return self.issuer.client(client_id, secret)
        except OAuthError:
            if (raw_id, raw_secret) == (client_id, secret):
                raise
        return self.issuer.client(raw_id, raw_secret)

    @staticmethod
    def basic(value: bytes) -> tuple[str, str, str, str] | None:
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_client() from None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            raise invalid_client()
        return unquote_plus(raw_id), unquote_plus(raw_secret), raw_id, raw_secret


class TokenEndpoint(Stage):
    """``POST token_path``: see the module docstring."""

    def __init__(self, issuer: TokenIssuer, clients: ClientAuthentication) -> None:
        self.issuer = issuer
        self.clients = clients

    async def __call__(self, ex: Exchange) -> None:
        try:
            form = await read_form(ex)
            grant = form.get("grant_type")
            if grant is None:
                raise OAuthError(400, "invalid_request", "grant_type is missing")
            consumer = self.clients.consumer(ex.scope["headers"], form)
            ex.subject = consumer.subject
            if grant == "client_credentials":
                response = await self.issuer.client_credentials(consumer, form.get("scope"))
            elif grant == "refresh_token":
                presented = form.get("refresh_token")
                if presented is None:
                    raise OAuthError(400, "invalid_request", "refresh_token is missing")
                response = await self.issuer.refresh(consumer, presented, form.get("scope"))
            else:
                raise OAuthError(400, "unsupported_grant_type", "the grant types are client_credentials and "
                                 "refresh_token")
        except OAuthError as error:
            await oauth_error(ex, error)
            return
        except StoreError as exc:
            logger.warning("request %s: the token endpoint cannot use its store: %s", ex.request_id, exc)
            await oauth_error(ex, OAuthError(503, "temporarily_unavailable", "try again shortly"))
            return
        await answer(ex, 200, orjson.dumps(response), list(NO_STORE))


class JwksEndpoint(Stage):
    """``GET jwks_path``: the public keys, cacheable for ``jwks_max_age`` (the next key is published at
    least that long before it signs)."""

    def __init__(self, keys: IssuerKeys, max_age: float) -> None:
        self.keys = keys
        self.cache_control = b"public, max-age=%d" % int(max_age)

    async def __call__(self, ex: Exchange) -> None:
        try:
            prepared = await self.keys.ready()
        except StoreError:
            raise ServiceUnavailable("the signing keys are not available yet") from None
        await answer(ex, 200, prepared.jwks, [(b"cache-control", self.cache_control)])


class LoginEndpoint(Stage):
    """``POST login_path``: a session cookie for a client authenticated as at the token endpoint."""

    def __init__(self, sessions: Sessions, clients: ClientAuthentication) -> None:
        self.sessions = sessions
        self.clients = clients

    async def __call__(self, ex: Exchange) -> None:
        try:
            form = await read_form(ex, required=False)
            consumer = self.clients.consumer(ex.scope["headers"], form)
            ex.subject = consumer.subject
            cookie, session = await self.sessions.create(consumer)
        except OAuthError as error:
            await oauth_error(ex, error)
            return
        except StoreError as exc:
            logger.warning("request %s: login cannot use the store: %s", ex.request_id, exc)
            await oauth_error(ex, OAuthError(503, "temporarily_unavailable", "try again shortly"))
            return
        body = orjson.dumps({"subject": session.subject, "session": session.id,
                             "expires_in": int(session.expires - session.created),
                             "idle_timeout": int(self.sessions.spec.idle_timeout)})
        await answer(ex, 200, body, [*NO_STORE, (b"set-cookie", cookie)])


class LogoutEndpoint(Stage):
    """``POST logout_path``: ends what the request holds, each optional: the session cookie, a refresh
    token (form parameter ``refresh_token``: its whole family), and an access token of this issuer
    (``Authorization: Bearer``: its jti is revoked and its session ended). Always 204 for a well-formed
    request (ending what has already ended is no error); the session cookie is cleared."""

    def __init__(self, spec: LocalIssuerSpec, store: Store, verifier: Verifier, revocations: RevocationList, *,
                 sessions: Sessions | None, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.store = store
        self.verifier = verifier
        self.revocations = revocations
        self.sessions = sessions
        self.clock = clock

    async def __call__(self, ex: Exchange) -> None:
        headers = ex.scope["headers"]
        tokens_until = self.clock() + self.spec.access_ttl + self.spec.leeway
        try:
            form = await read_form(ex, required=False)
            presented = form.get("refresh_token")
            if presented is not None:
                await self._end(await self.store.end_refresh_family(presented, tokens_until), tokens_until)
            await self.end_bearer(headers, tokens_until)
            extra = list(NO_STORE)
            if self.sessions is not None:
                value, _ = take_cookie(headers, self.sessions.prefix)
                if value is not None:
                    await self.sessions.end(value, tokens_until)
                extra.append((b"set-cookie", self.sessions.cleared))
        except OAuthError as error:
            await oauth_error(ex, error)
            return
        except StoreError as exc:
            logger.warning("request %s: logout cannot use the store: %s", ex.request_id, exc)
            await oauth_error(ex, OAuthError(503, "temporarily_unavailable", "try again shortly"))
            return
        await ex.start_response(204, extra)
        await ex.send_body(b"", False)

    async def end_bearer(self, headers: Headers, tokens_until: float) -> None:
        values = header_values(headers, b"authorization")
        if len(values) != 1:
            return
        try:
            token = bearer_token(values[0])
            verified = None if token is None else (self.verifier.cached(token) or await self.verifier.verify(token))
        except (TokenError, InvalidToken):
            return  # an expired or revoked token has nothing left to end
        if verified is None or verified.issuer != self.spec.name:
            return
        jti, sid = verified.claims.get("jti"), verified.claims.get("sid")
        if isinstance(jti, str):
            entry = Revoked(JTI, jti, verified.expires)
            await self.store.revoke(entry.kind, entry.value, entry.until)
            self.revocations.add(entry)
        if isinstance(sid, str):
            await self._end(sid if await self.store.end_sessions(None, sid, tokens_until) else None, tokens_until)

    async def _end(self, sid: str | None, tokens_until: float) -> None:
        if sid is not None:
            self.revocations.add(Revoked(SID, sid, tokens_until))  # this worker at once; the others poll
