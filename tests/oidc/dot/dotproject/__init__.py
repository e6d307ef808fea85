"""A minimal Django project serving django-oauth-toolkit as an OpenID Connect provider for the tests.

Everything comes from the environment (tests/oidc/providers.py sets it):

    DOT_DB               the SQLite file (migrated by ``manage.py migrate``)
    DOT_ISSUER           the exact issuer, e.g. http://127.0.0.1:PORT/o (the OIDC endpoints live under /o/)
    DOT_KEY_FILE         the RSA private key (PEM) that signs ID tokens
    DOT_OLD_KEY_FILES    earlier keys still published in the JWKS (os.pathsep-separated): key rotation
    DOT_ACCESS_TTL       access token lifetime in seconds (default 300)

Users log in with Django's login form (/accounts/login/); applications skip the consent page
(``skip_authorization``); PKCE is required; access tokens are opaque (introspection at /o/introspect/ with
client credentials); refresh tokens rotate; RP-initiated logout at /o/logout/; RFC 8414 metadata at the
root (/.well-known/oauth-authorization-server/o).
"""
