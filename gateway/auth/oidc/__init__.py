"""OAuth 2.1 / OpenID Connect: the gateway as a client of configured providers.

- config.py: the ``auth.providers`` and ``auth.login`` sections (read at load, checked whole).
- discovery.py: each provider's metadata (OpenID Connect Discovery, RFC 8414), fetched off the request
  path, cached, refreshed; per-provider state (reachable, last error, ages) for the admin endpoint.
- introspection.py: opaque access tokens checked by RFC 7662 introspection (TTL cache, bounded calls).
- client_credentials.py: machine-to-machine tokens (cached, refreshed before expiry, relayed upstream).
- scopes.py: a route's scope and claim rules (``scopes``, ``methods``, ``rules``): 403 insufficient_scope.
- providers_admin.py: ``GET /auth/providers`` on the admin port.
- login.py: login at the edge (authorization code + PKCE; the gateway as relying party).

JWT access tokens of a provider are verified by the JWT verifier (gateway/auth/verify.py): every provider
joins ``auth.issuers`` under its name, its keys from the ``jwks_uri`` its discovery names.
"""
