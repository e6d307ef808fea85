"""Helpers shared by the JWT tests (unit and integration); no tests here.

- keys made once per session (RSA 2048, a second RSA, EC P-256, Ed25519) and ``mint`` to sign tokens;
- ``JwksServer``: a real threaded HTTP(S) server on loopback serving a JWK Set you can rotate, make fail
  (500, a closed connection, slowness) and count requests at; it also serves an OIDC discovery document.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.config import IssuerSpec
from gateway.auth.keys import Key, StaticKeys, public_key, secret_key
from gateway.auth.verify import Issuer, Revocation, Verifier

ISS = "https://idp.test/"
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"  # 35 bytes
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
PRIVATE = {"RS256": RSA_KEY, "PS256": RSA_KEY, "ES256": EC_KEY, "EdDSA": ED_KEY}


def now() -> int:
    return int(time.time())


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for ISS and audience "api"; an override of None removes the claim."""
    base: dict[str, Any] = {"iss": ISS, "aud": "api", "sub": "alice", "iat": now(), "exp": now() + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "k1", headers: dict[str, Any] | None = None,
         **overrides: Any) -> bytes:
    """A signed token (pyjwt)."""
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=header).encode()


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key: Any, kid: str | None = "k1", alg: str | None = None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        found: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        found = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        found = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        found["kid"] = kid
    if alg is not None:
        found["alg"] = alg
    found.update(extra)
    return found


def key_of(private: Any, kid: str | None = "k1", algorithms: tuple[str, ...] = ("RS256",)) -> Key:
    return public_key(private.public_key(), kid, algorithms)


def issuer_spec(algorithms: tuple[str, ...] = ("RS256",), **overrides: Any) -> IssuerSpec:
    values: dict[str, Any] = {"name": "idp", "issuer": ISS, "algorithms": algorithms, "audiences": ("api",)}
    values.update(overrides)
    return IssuerSpec(**values)


def verifier(keys: list[Key] | None = None, algorithms: tuple[str, ...] = ("RS256",), cache_size: int = 100,
             revocation: Revocation | None = None, clock: Any = time.time, **spec: Any) -> Verifier:
    """A verifier for one issuer ("idp", iss ISS, audience "api") with static keys."""
    if keys is None:
        keys = [key_of(RSA_KEY, "k1", algorithms)]
    issuer = Issuer(issuer_spec(algorithms, **spec), StaticKeys(keys))
    return Verifier({"idp": issuer}, cache_size, revocation, clock)


def hs_verifier(**spec: Any) -> Verifier:
    return verifier([secret_key(SECRET.encode())], ("HS256",), **spec)


# --- a real JWKS server ---------------------------------------------------------------------------------


class JwksServer:
    """Serves ``/jwks.json`` (the keys in ``self.keys``) and ``/.well-known/openid-configuration``.

    ``mode``: "ok", "500", "close" (drops the connection without answering), "slow" (sleeps ``delay``),
    "garbage" (not JSON), "huge" (over 1 MiB), "redirect" (302 to ``location``).
    ``requests`` counts JWKS requests; ``discovery_requests`` the discovery ones."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.cache_control: str | None = None
        self.location = "file:///etc/passwd"
        self.requests = 0
        self.discovery_requests = 0
        self.discovery_issuer = ISS
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: PLR0911 - one branch per failure mode
                if self.path == "/.well-known/openid-configuration":
                    with server.lock:
                        server.discovery_requests += 1
                    body = orjson.dumps({"issuer": server.discovery_issuer, "jwks_uri": server.url})
                    return self.answer(200, body)
                if self.path != "/jwks.json":
                    return self.answer(404, b"{}")
                with server.lock:
                    server.requests += 1
                    mode, keys = server.mode, list(server.keys)
                if mode == "500":
                    return self.answer(500, b"oops")
                if mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if mode == "slow":
                    time.sleep(server.delay)
                if mode == "garbage":
                    return self.answer(200, b"<html>")
                if mode == "huge":
                    return self.answer(200, b" " * (1024 * 1024 + 10))
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", server.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self.answer(200, orjson.dumps({"keys": keys}))

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if server.cache_control is not None:
                    self.send_header("Cache-Control", server.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/jwks.json"

    @property
    def discovery_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/.well-known/openid-configuration"

    def publish(self, *keys: dict[str, Any]) -> None:
        with self.lock:
            self.keys = list(keys)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the CA file (the certificate itself) a client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
