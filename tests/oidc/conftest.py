"""The provider fixtures for the tests in this folder (tests/integration/conftest.py imports them too)."""

from tests.oidc.providers import dot_provider, oidc_provider, panva_provider, start_oidc_provider  # noqa: F401
