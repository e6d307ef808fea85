"""Real OpenID Connect providers on loopback for the tests (providers.py) and a scripted browser (browser.py)."""
