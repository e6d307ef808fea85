"""A worker's auth: one verifier (and its token cache) shared by every route, each issuer's key source,
and, when the gateway issues tokens itself, the issuer's state and endpoints.

Built from the validated ``AuthSpec`` in each worker (``Gateway.__init__``); ``start`` (lifespan startup)
begins the background work (JWKS refresh, the issuer's key and revocation polls), ``close`` ends it.

With ``auth.issuer`` (gateway/auth/issuer.py): the store (Redis when ``redis_url`` is set, else the
host's key file and SQLite database), the issuer's keys as the ``KeySource`` of its name (so its tokens
verify like any other issuer's), the revocation list as the verifier's ``Revocation`` (checked for every
issuer's tokens), sessions, and the built-in routes (``builtin_routes``) that ``Gateway`` adds to the
route table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.auth.config import AuthSpec, IssuerSpec
from gateway.auth.jwks import RemoteJwks
from gateway.auth.keys import KeySource, StaticKeys
from gateway.auth.policy import RoutePolicy
from gateway.auth.stage import AuthStage
from gateway.auth.verify import Issuer, Revocation, Verifier
from gateway.exchange import Stage

if TYPE_CHECKING:
    from gateway.auth.issuer_config import LocalIssuerSpec
    from gateway.auth.oidc.login import EdgeLogin
    from gateway.auth.oidc.runtime import OidcRuntime
    from gateway.auth.store import Store
    from gateway.routing.config import RouteSpec


def open_store(auth: AuthSpec, redis_url: str | None) -> Store:
    """The issuer's store: Redis when configured, else the host-local one."""
    local = auth.local
    assert local is not None
    if redis_url:
        from gateway.auth.redis_store import RedisStore

        return RedisStore(redis_url, auth.redis_prefix)
    from gateway.auth.store import LocalStore

    return LocalStore(auth.state_dir, local.key_file)


class IssuerRuntime:
    """The token issuer in one worker: store, keys, revocations, sessions and the endpoint stages."""

    def __init__(self, auth: AuthSpec, local: LocalIssuerSpec, redis_url: str | None) -> None:
        from gateway.auth.issuer import IssuerKeys, TokenIssuer
        from gateway.auth.revocation import RevocationList
        from gateway.auth.sessions import Sessions

        self.auth = auth
        self.local = local
        self.store = open_store(auth, redis_url)
        self.keys = IssuerKeys(local, auth.sessions, self.store)
        self.revocations = RevocationList(self.store, local.name)
        self.tokens = TokenIssuer(local, auth.consumers, self.keys, self.store)
        self.closing: asyncio.Task[None] | None = None
        self.sessions = None if auth.sessions is None else Sessions(
            auth.sessions, local, self.keys, self.store, revocations=self.revocations, server_side=bool(redis_url))

    def routes(self, verifier: Verifier) -> list[tuple[RouteSpec, Stage]]:
        from gateway.auth.endpoints import (
            ClientAuthentication,
            JwksEndpoint,
            LoginEndpoint,
            LogoutEndpoint,
            TokenEndpoint,
        )
        from gateway.auth.issuer_config import builtin_routes

        clients = ClientAuthentication(self.tokens, self.local.api_key_header)
        stages: dict[str, Stage] = {
            "auth:token": TokenEndpoint(self.tokens, clients),
            "auth:jwks": JwksEndpoint(self.keys, self.local.jwks_max_age),
            "auth:logout": LogoutEndpoint(self.local, self.store, verifier, self.revocations,
                                          sessions=self.sessions),
        }
        if self.sessions is not None:
            stages["auth:login"] = LoginEndpoint(self.sessions, clients)
        return [(spec, stages[spec.name]) for spec, _ in builtin_routes(self.auth)]

    def start(self) -> None:
        self.revocations.start()  # the keys start as the issuer's key source

    def close(self) -> None:
        self.revocations.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # never started: nothing was opened
            return
        self.closing = loop.create_task(self.store.close())


class Auth:
    """The auth state of one worker."""

    def __init__(self, spec: AuthSpec, *, sources: Mapping[str, KeySource] | None = None,
                 revocation: Revocation | None = None, redis_url: str | None = None) -> None:
        self.spec = spec
        self.issuer: IssuerRuntime | None = None
        self.oidc: OidcRuntime | None = None
        self.login: EdgeLogin | None = None
        self.login_closing: asyncio.Task[None] | None = None
        chosen = dict(sources or {})
        if spec.providers:  # OAuth/OIDC providers: their keys through their metadata's jwks_uri
            from gateway.auth.oidc.runtime import OidcRuntime

            self.oidc = OidcRuntime(spec.providers, spec.issuers, self.forget)
            for name, provider in self.oidc.providers.items():
                chosen.setdefault(name, provider.keys)
            if spec.login is not None:  # login at the edge (gateway/auth/oidc/login.py)
                from gateway.auth.oidc.login import EdgeLogin
                from gateway.auth.oidc.login_store import open_login_store

                self.login = EdgeLogin(spec.login, self.oidc.providers[spec.login.provider],
                                       spec.issuers[spec.login.provider],
                                       open_login_store(spec.state_dir, redis_url, spec.redis_prefix))
        if spec.local is not None:
            self.issuer = IssuerRuntime(spec, spec.local, redis_url)
            self.issuer.keys.on_withdrawn = self.forget
            chosen.setdefault(spec.local.name, self.issuer.keys)
            revocation = revocation or self.issuer.revocations
        self.sources: dict[str, KeySource] = {}
        issuers = {}
        for name, issuer_spec in spec.issuers.items():
            source = chosen.get(name) or self.source_for(issuer_spec)
            self.sources[name] = source
            issuers[name] = Issuer(issuer_spec, source)
        self.verifier = Verifier(issuers, spec.cache_size, revocation)

    def source_for(self, spec: IssuerSpec) -> KeySource:
        if spec.remote:
            return RemoteJwks(spec, on_withdrawn=self.forget)
        return StaticKeys(spec.keys)

    def forget(self) -> None:
        """A key left an issuer's set: tokens it verified are verified again (and refused)."""
        self.verifier.forget()

    def stage(self, policy: RoutePolicy) -> AuthStage:
        """The auth stage of a route with this policy."""
        return AuthStage(policy, self.verifier, self.issuer.sessions if self.issuer is not None else None,
                         oidc=self.oidc.route(policy) if self.oidc is not None else None, login=self.login)

    def builtin_routes(self) -> list[tuple[RouteSpec, Stage]]:
        """The issuer's own endpoints (token, JWKS, logout, login) and the edge login's (login, callback,
        logout) as routes."""
        routes = self.issuer.routes(self.verifier) if self.issuer is not None else []
        return routes + (self.login.routes() if self.login is not None else [])

    def start(self) -> None:
        for source in self.sources.values():
            source.start()
        if self.issuer is not None:
            self.issuer.start()
        if self.oidc is not None:
            self.oidc.start()

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
        if self.issuer is not None:
            self.issuer.close()
        if self.oidc is not None:
            self.oidc.close()
        if self.login is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # never started: nothing was opened
                return
            self.login_closing = loop.create_task(self.login.close())
