"""A worker's auth: one verifier (and its token cache) shared by every route, and each issuer's key source.

Built from the validated ``AuthSpec`` in each worker (``Gateway.__init__``); ``start`` (lifespan startup)
begins the background key refresh, ``close`` ends it.

Extension points for the token issuer (part 2 of issue 5):
- ``sources``: a ``KeySource`` per issuer name replaces the one built from the spec (the gateway's own
  issuer passes its shared, rotating key set, so its tokens verify like any other issuer's);
- ``revocation``: a ``Revocation`` checked on every request with a token, cached or not.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.config import AuthSpec, IssuerSpec
from gateway.auth.jwks import RemoteJwks
from gateway.auth.keys import KeySource, StaticKeys
from gateway.auth.policy import RoutePolicy
from gateway.auth.stage import AuthStage
from gateway.auth.verify import Issuer, Revocation, Verifier


class Auth:
    """The auth state of one worker."""

    def __init__(self, spec: AuthSpec, *, sources: Mapping[str, KeySource] | None = None,
                 revocation: Revocation | None = None) -> None:
        self.spec = spec
        self.sources: dict[str, KeySource] = {}
        issuers = {}
        for name, issuer_spec in spec.issuers.items():
            source = (sources or {}).get(name) or self.source_for(issuer_spec)
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
        return AuthStage(policy, self.verifier)

    def start(self) -> None:
        for source in self.sources.values():
            source.start()

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
