"""Authentication: JWT verification against configured issuers, and each route's auth policy.

- ``config``: the top-level ``auth:`` section (issuers, their keys and rules), validated at load;
- ``policy``: a route's ``auth:`` (required/optional, sources, claims, forwarded headers);
- ``keys``: keys bound to the algorithms their type can verify; static key sources;
- ``jwks``: remote JWKS (direct or OIDC discovery), refreshed in the background, rate-limited refetch;
- ``verify``: the verifier (pyjwt does the JOSE work) and the per-worker verified-token cache;
- ``stage``: the request stage; ``runtime``: a worker's auth state; ``errors``: 401/403 with challenges.

The gateway as token issuer (``auth.issuer``, ``auth.consumers``, ``auth.sessions``):

- ``issuer_config``: those sections; ``keyset``: the rotating key set (next, current, previous), pure;
- ``store`` (host-local: key file and SQLite) and ``redis_store``: the shared state;
- ``issuer``: a worker's copy of the keys (a ``KeySource``), rotation, access and refresh tokens;
- ``endpoints``: token, JWKS, login and logout, served by the gateway; ``sessions``: login sessions;
- ``revocation``: revoked jtis and ended sessions every worker polls; ``admin``: the admin port's endpoints.

Nothing is imported here, so loading a route policy does not load the cryptography modules.
"""
