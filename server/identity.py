"""People from an identity provider: OpenID Connect ID tokens as owners.

Off unless ``OIDC_ISSUER`` is set; owners are then anonymous tokens only (``POST
/owner``), as always. On, a request may instead prove a person with the provider's ID
token (a JWT) in ``Authorization: Bearer``, where an owner token goes (``POST /token``,
``GET /conversations``), or in the chat socket's subprotocols (:mod:`protocol.subprotocols`).

A token is checked with PyJWT against the provider's keys (:mod:`server.jwks`): its
signature, by the key its ``kid`` names and with that key's own algorithm (asymmetric
only: never ``none``, never ``HS*``); its issuer (``OIDC_ISSUER`` exactly), audience
(``OIDC_AUDIENCE``), expiry and not-before time, with ``OIDC_LEEWAY_S`` of clock skew;
and that it names a subject. The person's owner is :func:`person_owner` of the issuer
and subject, the same on every device, so a person's conversations follow them.

A refused token is :class:`InvalidToken`, which routes turn into 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 §3.1); a provider that
cannot be reached, into 503. Neither a token, nor a subject, nor a key is ever logged
(:func:`runtime.logs.redact` also rewrites a token that reaches a line by accident).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Self

import aiohttp
import jwt
from pydantic import Field, model_validator

from runtime.config import CommonSettings
from server.jwks import (
    ALGORITHMS,
    KeySet,
    KeysUnavailable,
    UnknownKey,
    discover_jwks_url,
    fetch_json,
)

#: A compact JWS: three base64url parts joined by dots (RFC 7515 §7.1).
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class IdentitySettings(CommonSettings):
    """The server's settings for an identity provider (environment variables, or a
    ``.env`` file)."""

    oidc_issuer: str = Field(
        default="",
        description="The identity provider's issuer (exactly the iss of its tokens); set: "
        "people may prove who they are with its ID tokens. Empty: anonymous owners only.",
    )
    oidc_audience: str = Field(
        default="",
        description="The audience its tokens must name (aud: this application's client id "
        "at the provider); needed with OIDC_ISSUER.",
    )
    oidc_jwks_url: str = Field(
        default="",
        description="The provider's signing keys (a JWK Set); empty: the jwks_uri of the "
        "issuer's /.well-known/openid-configuration.",
    )
    oidc_leeway_s: float = Field(
        default=30.0,
        ge=0,
        le=300,
        description="Clock skew (s) allowed when checking a token's exp, nbf and iat.",
    )
    oidc_jwks_refetch_s: float = Field(
        default=60.0,
        gt=0,
        description="A token whose key id is not among the cached keys fetches them again, "
        "at most once per this many seconds.",
    )

    @model_validator(mode="after")
    def _audience_with_issuer(self) -> Self:
        if self.oidc_issuer and not self.oidc_audience:
            # Without it, a token the provider issued to any other application would do.
            raise ValueError("OIDC_ISSUER needs OIDC_AUDIENCE: the client id tokens name")
        return self


class InvalidToken(Exception):
    """An ID token refused: malformed, badly signed, expired, not yet valid, of another
    issuer or audience, or signed with an unknown key or a refused algorithm.

    Attributes:
        description: why, in words fit for the client (RFC 6750's
            ``error_description``): it names no claim value and no key.
    """

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class ProviderUnavailable(Exception):
    """The provider's keys could not be fetched (and none are held)."""


@dataclass(frozen=True)
class Person:
    """Someone an ID token proved.

    Attributes:
        owner: the owner their conversations belong to (:func:`person_owner`).
        expires_at: when the token stops being accepted (Unix time, s): its ``exp``
            plus the leeway.
    """

    owner: str
    expires_at: float


def person_owner(issuer: str, subject: str) -> str:
    """The owner of a person: 64 hex digits of SHA-256 over the issuer and subject.

    Stable (the same person gets the same conversations on every device), distinct per
    provider, and never a UUID, so it cannot be used as an anonymous owner token: an owner
    token is a credential, and anyone knowing someone's subject could compute this. It
    starts with a hex digit, so people spread over the owners' partitions as tokens do.
    """
    return hashlib.sha256(json.dumps([issuer, subject]).encode()).hexdigest()


def looks_like_jwt(value: str) -> bool:
    """Whether ``value`` has the form of a JWT (compact serialization), which no owner
    or session token has."""
    return _COMPACT.fullmatch(value) is not None


def www_authenticate(description: str) -> str:
    """The ``WWW-Authenticate`` value of a refused token (RFC 6750 §3)."""
    return f'Bearer error="invalid_token", error_description="{description}"'


#: PyJWT's refusals, most specific first, in words for the client.
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not allowed for its key"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
)


class IdentityVerifier:
    """Checks ID tokens of the provider of ``settings`` (see the module's docstring).

    Its HTTP client is made on first use; :meth:`aclose` closes it.
    """

    def __init__(self, settings: IdentitySettings) -> None:
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.leeway_s = settings.oidc_leeway_s
        self._jwks_url = settings.oidc_jwks_url
        self._http: aiohttp.ClientSession | None = None
        self.keys = KeySet(self._fetch_keys, settings.oidc_jwks_refetch_s)

    async def verify(self, token: str) -> Person:
        """The person ``token`` proves.

        Raises:
            InvalidToken: the token is refused (the description says why).
            ProviderUnavailable: the provider's keys could not be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken("the token is malformed") from e
        # Checked before any key is looked up: a token the server would refuse anyway
        # costs no fetch.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise InvalidToken("the token's algorithm is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token is malformed")
        try:
            key = await self.keys.key(kid)
        except UnknownKey as e:
            raise InvalidToken("the token is signed with an unknown key") from e
        except KeysUnavailable as e:
            raise ProviderUnavailable(str(e)) from e
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as e:
            description = next(
                (text for kind, text in _REFUSALS if isinstance(e, kind)), "the token is invalid"
            )
            raise InvalidToken(description) from e
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the token names no subject")
        return Person(person_owner(self.issuer, subject), float(claims["exp"]) + self.leeway_s)

    async def _fetch_keys(self) -> object:
        """The provider's key set; its URL found by discovery on first use if not set.

        Raises:
            aiohttp.ClientError, OSError, TimeoutError, ValueError: as
                :func:`server.jwks.fetch_json`.
        """
        if self._http is None:
            self._http = aiohttp.ClientSession()
        if not self._jwks_url:
            self._jwks_url = await discover_jwks_url(self._http, self.issuer)
        return await fetch_json(self._http, self._jwks_url)

    async def aclose(self) -> None:
        """Close the HTTP client, if one was made."""
        if self._http is not None:
            await self._http.close()
