"""Authentication: JWT verification against configured issuers, and each route's auth policy.

- ``config``: the top-level ``auth:`` section (issuers, their keys and rules), validated at load;
- ``policy``: a route's ``auth:`` (required/optional, sources, claims, forwarded headers);
- ``keys``: keys bound to the algorithms their type can verify; static key sources;
- ``jwks``: remote JWKS (direct or OIDC discovery), refreshed in the background, rate-limited refetch;
- ``verify``: the verifier (pyjwt does the JOSE work) and the per-worker verified-token cache;
- ``stage``: the request stage; ``runtime``: a worker's auth state; ``errors``: 401/403 with challenges.

Nothing is imported here, so loading a route policy does not load the cryptography modules.
"""
