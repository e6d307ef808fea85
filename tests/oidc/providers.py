"""Real OpenID Connect providers on loopback, for the OAuth/OIDC tests: started on free ports, killed on exit.

Two independent implementations, so a flow proven against both is not an artefact of one library:

- ``PanvaProvider``: panva's ``oidc-provider`` (npm, OpenID Certified) run by tests/oidc/node/provider.js
  (``npm ci`` from the committed lockfile when node_modules is missing). JWT access tokens for the resource
  ``RESOURCE`` (request it with ``resource=RESOURCE``: aud is RESOURCE, scopes from ``RESOURCE_SCOPES``),
  opaque access tokens otherwise; dynamic client registration (RFC 7591) for per-test redirect URIs.
  In-memory: a restart forgets sessions, grants and opaque tokens (signing keys are kept by the fixture).
- ``DotProvider``: django-oauth-toolkit (PyPI) in the Django project tests/oidc/dot/ (SQLite, migrated at
  start; ``runserver``). Issuer ``http://127.0.0.1:PORT/o``; opaque access tokens (introspection),
  RS256 ID tokens; RFC 8414 metadata at the root (``rfc8414_url``: the only document that lists its
  introspection and revocation endpoints); refresh-token reuse protection.

Both: a user ``USER``/``PASSWORD`` (groups ``GROUPS``), PKCE S256 required for the code flow, refresh
tokens rotated on use, introspection (RFC 7662, client authentication with HTTP Basic), revocation,
RP-initiated logout, and three confidential clients in ``clients``:

    "gateway"   authorization_code + refresh_token (redirect URI a placeholder: use ``register_client``
                for a login test's exact one)
    "machine"   client_credentials (scopes orders:read orders:write)
    "other"     client_credentials: another client, for "token meant for someone else" tests

``rotate_keys()`` restarts the provider on the same port signing with a new RSA key and still publishing
the previous one (the usual rotation: the old key verifies tokens already issued).

Pytest fixtures (import them into a conftest or a test module): ``panva_provider`` and ``dot_provider``
(one each per session), ``oidc_provider`` (parametrized over both), and ``start_oidc_provider(kind)``
for a private instance a test may restart or rotate. They skip locally (fail under CI) when node/npm is
missing, and fail when Django / django-oauth-toolkit (the ``test`` extra) is not installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.tools import require_tool

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
DOT_DIR = HERE / "dot"
USER = "alice"
PASSWORD = "alice-password"  # a test user on a loopback provider
GROUPS = ("admin", "staff")
RESOURCE = "https://api.example.test"
RESOURCE_SCOPES = ("orders:read", "orders:write")
PANVA = "oidc-provider"
DOT = "django-oauth-toolkit"
KINDS = (PANVA, DOT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError):
            result = predicate()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


@dataclass(frozen=True)
class Client:
    """A client registered at a provider (all confidential: client_secret_basic)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()

    @property
    def auth(self) -> tuple[str, str]:
        return self.client_id, self.client_secret


@dataclass
class SigningKey:
    """An RSA signing key; its kid is the RFC 7638 thumbprint (what django-oauth-toolkit publishes)."""

    kid: str
    key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        members = json.dumps({"e": public["e"], "kty": "RSA", "n": public["n"]}, separators=(",", ":"))
        kid = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()
        return cls(kid, key)

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key))
        jwk.pop("key_ops", None)  # pyjwt writes ["sign"]; the provider would publish it with the public key
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


class Provider:
    """One provider process (see the module docstring); a context manager."""

    kind: ClassVar[str]
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, directory: Path, *, access_ttl: int = 300, refresh_ttl: int = 3600) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.keys = [SigningKey.generate()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.clients = {
            "gateway": Client("gateway", secrets.token_urlsafe(24), (f"http://127.0.0.1:9/{self.kind}/callback",),
                              ("http://127.0.0.1:9/",)),
            "machine": Client("machine", secrets.token_urlsafe(24)),
            "other": Client("other", secrets.token_urlsafe(24)),
        }
        self._metadata: dict[str, Any] | None = None

    # --- what tests configure the gateway with --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        raise NotImplementedError

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def resource(self) -> str | None:
        """The resource indicator that gets JWT access tokens (None: this provider issues opaque ones only)."""
        return None

    @property
    def signing_kid(self) -> str:
        return self.keys[0].kid

    # --- the process -----------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("already running")
        self.starts += 1
        command, env = self.command()
        out = (self.directory / f"{self.kind}-{self.starts}.log").open("wb")
        with out:
            self.proc = subprocess.Popen(command, cwd=self.cwd(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_for(self.serving, self.start_timeout, f"{self.kind} serving discovery on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")
        response = httpx.get(self.discovery_url, timeout=2)
        if response.status_code != 200:
            return False
        self._metadata = response.json()
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        proc.wait(5)

    def restart(self) -> None:
        self.stop()
        wait_for(self.port_free, 10, f"port {self.port} released")
        self.start()

    def port_free(self) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                return False
            return True

    def rotate_keys(self) -> SigningKey:
        """Restarts signing with a new key; the previous one stays published. Returns the new key."""
        key = SigningKey.generate()
        self.keys = [key, self.keys[0]]
        self.restart()
        return key

    def log(self) -> str:
        return (self.directory / f"{self.kind}-{self.starts}.log").read_text(errors="replace")

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def cwd(self) -> Path:
        raise NotImplementedError

    def register_client(self, redirect_uris: list[str], post_logout_redirect_uris: list[str] | None = None) -> Client:
        """A new confidential code + refresh client with exactly these redirect URIs."""
        raise NotImplementedError

    # --- calling the provider as a client (for assertions and for machine tokens) ---------------------------

    @property
    def rfc8414_url(self) -> str | None:
        """Where the provider serves RFC 8414 metadata (None: it serves OpenID discovery only)."""
        return None

    def metadata(self) -> dict[str, Any]:
        """OpenID discovery, completed by the RFC 8414 document where there is one (django-oauth-toolkit lists
        its introspection and revocation endpoints only there)."""
        if self._metadata is None:
            response = httpx.get(self.discovery_url, timeout=10)
            response.raise_for_status()
            self._metadata = response.json()
        if self.rfc8414_url is not None and "introspection_endpoint" not in self._metadata:
            response = httpx.get(self.rfc8414_url, timeout=10)
            response.raise_for_status()
            self._metadata = {**response.json(), **self._metadata}
        return self._metadata

    def endpoint(self, name: str) -> str:
        return str(self.metadata()[name])

    def jwks(self) -> dict[str, Any]:
        response = httpx.get(self.endpoint("jwks_uri"), timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def token(self, client: str | Client, **form: str) -> httpx.Response:
        """POST to the token endpoint as ``client`` (HTTP Basic); the raw response."""
        chosen = self.clients[client] if isinstance(client, str) else client
        return httpx.post(self.endpoint("token_endpoint"), data=form, auth=chosen.auth, timeout=10)

    def client_credentials(self, client: str | Client = "machine", scope: str = "orders:read",
                           resource: str | None = None) -> dict[str, Any]:
        """A client-credentials token response (a JWT access token when ``resource`` names the resource)."""
        form = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            form["resource"] = resource
        response = self.token(client, **form)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def introspect(self, token: str, client: str | Client = "gateway") -> dict[str, Any]:
        chosen = self.clients[client] if isinstance(client, str) else client
        response = httpx.post(self.endpoint("introspection_endpoint"), data={"token": token}, auth=chosen.auth,
                              timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def revoke(self, token: str, client: str | Client = "gateway") -> None:
        chosen = self.clients[client] if isinstance(client, str) else client
        response = httpx.post(self.endpoint("revocation_endpoint"), data={"token": token}, auth=chosen.auth,
                              timeout=10)
        assert response.status_code == 200, response.text


class PanvaProvider(Provider):
    """panva's oidc-provider under Node (tests/oidc/node/provider.js)."""

    kind = PANVA

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.registration_token = secrets.token_urlsafe(16)
        self.registered: list[Client] = []  # configured statically on a restart (the provider forgets them)

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def resource(self) -> str | None:
        return RESOURCE

    def cwd(self) -> Path:
        return NODE_DIR

    def client_metadata(self) -> list[dict[str, Any]]:
        gateway, machine, other = self.clients["gateway"], self.clients["machine"], self.clients["other"]
        return [
            {"client_id": gateway.client_id, "client_secret": gateway.client_secret,
             "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
             "redirect_uris": list(gateway.redirect_uris),
             "post_logout_redirect_uris": list(gateway.post_logout_redirect_uris)},
            *({"client_id": c.client_id, "client_secret": c.client_secret, "grant_types": ["client_credentials"],
               "response_types": [], "redirect_uris": []} for c in (machine, other)),
            *({"client_id": c.client_id, "client_secret": c.client_secret,
               "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
               "redirect_uris": list(c.redirect_uris), "post_logout_redirect_uris": list(c.post_logout_redirect_uris)}
              for c in self.registered),
        ]

    def command(self) -> tuple[list[str], dict[str, str]]:
        node = require_tool("node", "nodejs")
        install_node_modules()
        config = {
            "port": self.port,
            "issuer": self.issuer,
            "jwks": {"keys": [key.jwk() for key in self.keys]},
            "clients": self.client_metadata(),
            "resources": {RESOURCE: {"scope": " ".join(RESOURCE_SCOPES), "ttl": self.access_ttl}},
            "ttl": {"AccessToken": self.access_ttl, "ClientCredentials": self.access_ttl,
                    "IdToken": self.access_ttl, "RefreshToken": self.refresh_ttl},
            "registration_token": self.registration_token,
            "users": {USER: {"name": "Alice Example", "email": f"{USER}@example.test", "groups": list(GROUPS)}},
        }
        path = self.directory / "provider.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return [node, str(NODE_DIR / "provider.js"), str(path)], dict(os.environ)

    def register_client(self, redirect_uris: list[str], post_logout_redirect_uris: list[str] | None = None) -> Client:
        """Dynamic client registration (RFC 7591); kept across restarts (configured statically then)."""
        body = {"redirect_uris": redirect_uris, "post_logout_redirect_uris": post_logout_redirect_uris or [],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic"}
        response = httpx.post(self.endpoint("registration_endpoint"), json=body, timeout=10,
                              headers={"authorization": f"Bearer {self.registration_token}"})
        assert response.status_code == 201, response.text
        data = response.json()
        client = Client(data["client_id"], data["client_secret"], tuple(redirect_uris),
                        tuple(post_logout_redirect_uris or ()))
        self.registered.append(client)
        return client


class DotProvider(Provider):
    """django-oauth-toolkit in the Django project tests/oidc/dot/ (manage.py runserver)."""

    kind = DOT
    template: ClassVar[Path | None] = None

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        require_django()
        super().__init__(directory, **kwargs)
        self.database = directory / "dot.sqlite3"

    @property
    def issuer(self) -> str:
        return self.base_url + "/o"

    @property
    def rfc8414_url(self) -> str | None:
        return self.base_url + "/.well-known/oauth-authorization-server/o"

    def cwd(self) -> Path:
        return DOT_DIR

    def env(self) -> dict[str, str]:
        key_files = []
        for key in self.keys:
            path = self.directory / f"{key.kid}.pem"
            if not path.exists():
                path.write_bytes(key.pem())
                path.chmod(0o600)
            key_files.append(str(path))
        return {**os.environ, "DJANGO_SETTINGS_MODULE": "dotproject.settings", "DOT_DB": str(self.database),
                "DOT_ISSUER": self.issuer, "DOT_KEY_FILE": key_files[0],
                "DOT_OLD_KEY_FILES": os.pathsep.join(key_files[1:]),
                "DOT_ACCESS_TTL": str(self.access_ttl), "PYTHONDONTWRITEBYTECODE": "1"}

    def migrate(self) -> None:
        """The migrated database: copied from a template migrated once per process (migrating takes
        seconds)."""
        template = DotProvider.template
        if template is None or not template.exists():
            self.manage("migrate", "--verbosity", "0")
            template = self.directory / "template.sqlite3"
            shutil.copyfile(self.database, template)
            DotProvider.template = template
        else:
            shutil.copyfile(template, self.database)

    def manage(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=DOT_DIR, env=self.env(),
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def setup(self, clients: list[dict[str, Any]], users: bool = False) -> None:
        spec: dict[str, Any] = {"clients": clients}
        if users:
            spec["users"] = [{"username": USER, "password": PASSWORD, "email": f"{USER}@example.test",
                              "groups": list(GROUPS)}]
        path = self.directory / f"spec-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(spec))
        path.chmod(0o600)
        self.manage("gateway_setup", str(path))

    def command(self) -> tuple[list[str], dict[str, str]]:
        if not self.database.exists():
            self.migrate()
            gateway, machine, other = self.clients["gateway"], self.clients["machine"], self.clients["other"]
            self.setup([
                {"client_id": gateway.client_id, "client_secret": gateway.client_secret,
                 "grant": "authorization-code", "redirect_uris": list(gateway.redirect_uris),
                 "post_logout_redirect_uris": list(gateway.post_logout_redirect_uris)},
                {"client_id": machine.client_id, "client_secret": machine.client_secret,
                 "grant": "client-credentials"},
                {"client_id": other.client_id, "client_secret": other.client_secret, "grant": "client-credentials"},
            ], users=True)
        return [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"], self.env()

    def register_client(self, redirect_uris: list[str], post_logout_redirect_uris: list[str] | None = None) -> Client:
        """A new application in the provider's database (a management command; kept across restarts)."""
        client = Client(f"client-{secrets.token_hex(4)}", secrets.token_urlsafe(24), tuple(redirect_uris),
                        tuple(post_logout_redirect_uris or ()))
        self.setup([{"client_id": client.client_id, "client_secret": client.client_secret,
                     "grant": "authorization-code", "redirect_uris": redirect_uris,
                     "post_logout_redirect_uris": post_logout_redirect_uris or []}])
        return client


PROVIDERS: dict[str, type[Provider]] = {PANVA: PanvaProvider, DOT: DotProvider}


def install_node_modules() -> None:
    """``npm ci`` from the committed lockfile when node_modules is missing (.ci/run does it up front)."""
    if (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = require_tool("npm", "npm")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True,
                   timeout=300)


def require_django() -> None:
    try:
        import oauth2_provider  # noqa: F401
    except ImportError:
        pytest.fail("django-oauth-toolkit is not installed: pip install -e '.[test]'")


# --- pytest fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def panva_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanvaProvider]:
    """panva's oidc-provider, one per session (do not restart it: use ``start_oidc_provider``)."""
    with PanvaProvider(tmp_path_factory.mktemp("panva")) as provider:
        yield provider


@pytest.fixture(scope="session")
def dot_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DotProvider]:
    """django-oauth-toolkit, one per session (do not restart it: use ``start_oidc_provider``)."""
    with DotProvider(tmp_path_factory.mktemp("dot")) as provider:
        yield provider


@pytest.fixture(params=KINDS)
def oidc_provider(request: pytest.FixtureRequest) -> Provider:
    """Each provider in turn (the session's instances)."""
    name = "panva_provider" if request.param == PANVA else "dot_provider"
    provider: Provider = request.getfixturevalue(name)
    return provider


@pytest.fixture
def start_oidc_provider(tmp_path: Path) -> Iterator[Callable[..., Provider]]:
    """``start_oidc_provider(kind, access_ttl=300, refresh_ttl=3600)``: a private provider, stopped after the
    test (restart it, rotate its keys, give it short token lifetimes)."""
    started: list[Provider] = []

    def start(kind: str, **kwargs: Any) -> Provider:
        provider = PROVIDERS[kind](tmp_path / f"{kind}-{len(started)}", **kwargs)
        started.append(provider)
        provider.start()
        return provider

    yield start
    for provider in started:
        provider.stop()
