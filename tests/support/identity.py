"""A stand-in identity provider for the tests: a real HTTP server on 127.0.0.1 serving
OpenID Connect discovery and a JWK Set of freshly generated RSA and EC keys, and the
tokens it (or an attacker) would sign."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from testkit.overrides import declare
from testkit.ports import free_port

#: The audience (client id) the tests' servers are set to.
AUDIENCE = "parley-tests"
#: What a stack with the stand-in provider changes (OIDC_ISSUER, where the provider
#: runs, is passed as wiring).
OIDC = declare(OIDC_AUDIENCE=(AUDIENCE, "the stand-in provider's tokens name this audience"))

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    """A key pair of the provider's, with its key id and algorithm."""

    kid: str
    alg: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, as a provider publishes it."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            found = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            found = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**found, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        """The public key in PEM, as anyone may have it."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str) -> SigningKey:
    """A new RS256 key (2048 bits)."""
    return SigningKey(kid, "RS256", rsa.generate_private_key(65537, 2048))


def ec_key(kid: str) -> SigningKey:
    """A new ES256 key (P-256)."""
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Provider:
    """The stand-in provider: ``published`` keys are in its JWK Set; ``fetches`` counts
    the requests for it. Start with :meth:`start`, stop with :meth:`stop`."""

    published: list[SigningKey]
    fetches: int = 0
    issuer: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> str:
        """Serve on a free port; the issuer URL."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.issuer = f"http://127.0.0.1:{port}"
        return self.issuer

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, _request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks.json"})

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": [key.jwk() for key in self.published]})

    def claims(self, sub: str, **changes: Any) -> dict[str, Any]:
        """An ID token's claims for ``sub``, valid for 5 minutes, with ``changes``."""
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "email": f"{sub}@example.org",
            **changes,
        }

    def token(self, key: SigningKey, sub: str, **changes: Any) -> str:
        """An ID token for ``sub`` signed with ``key`` (``changes`` to its claims)."""
        return jwt.encode(
            self.claims(sub, **changes), key.private, algorithm=key.alg, headers={"kid": key.kid}
        )


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token an attacker makes without the provider's private key: signed with HMAC
    SHA-256 and ``secret`` (say, the public key's PEM), or unsigned if ``secret`` is None
    (``alg: none``). PyJWT itself refuses to sign with a PEM as an HMAC secret, so the
    token is put together by hand."""
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    if secret is None:
        return f"{signing_input}."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
