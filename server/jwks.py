"""An identity provider's signing keys (a JWK Set, RFC 7517), fetched and cached.

Fetched with aiohttp and parsed with PyJWT's :class:`jwt.PyJWKSet`, rather than with
PyJWT's :class:`jwt.PyJWKClient`: that client fetches with ``urllib`` (a blocking call,
which would stall the server's event loop for as long as the provider takes to answer,
or need a thread per fetch), and it fetches again on every token whose ``kid`` it does
not know, so anyone could make the server hammer the provider by sending tokens with
made-up key ids. Here:

- the keys are fetched on first use and kept :data:`MAX_AGE_S`; then fetched again on
  the next use (keys the provider dropped stop being trusted);
- a ``kid`` not in the set fetches it again at once (the provider rotated its keys), at
  most once per ``refetch_s`` seconds; other unknown ids meanwhile are refused;
- one fetch at a time: concurrent requests wait for it rather than each fetching;
- a fetch that fails keeps the keys held (if any) and is not tried again for
  :data:`RETRY_S`;
- only keys for the algorithms of :data:`ALGORITHMS` are kept: public keys of asymmetric
  algorithms. A symmetric (``oct``) key would let a token be signed with the very key
  that checks it.

Nothing here logs a key, a key set or a token: PyJWT's errors quote a rejected key in
their messages, so only their type is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKSetError

logger = logging.getLogger(__name__)

#: The signature algorithms a provider's key may be used with: asymmetric ones only, so
#: never ``none`` and never ``HS*``, whose secret would be the public key (the key
#: confusion attack).
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: How long (s) fetched keys are trusted before they are fetched again.
MAX_AGE_S = 3600.0
#: After a failed fetch, how long (s) before another is tried.
RETRY_S = 5.0
#: The longest answer (bytes) taken from the provider: a key set or a discovery document.
MAX_DOCUMENT_BYTES = 1_048_576
#: How long (s) one request to the provider may take.
FETCH_TIMEOUT_S = 5.0
#: What a fetch raises when the provider cannot be reached or answers nonsense.
FETCH_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)

Fetch = Callable[[], Awaitable[Any]]


class KeysUnavailable(Exception):
    """The provider's keys could not be fetched, and none are held."""


class UnknownKey(Exception):
    """No key of the set has the token's ``kid`` (or, without a ``kid``, the set holds
    more than one key to choose from)."""


def usable_keys(document: Any) -> list[PyJWK]:
    """The keys of a JWK Set document that may check a signature: of an algorithm in
    :data:`ALGORITHMS` (named by the key's ``alg``, or implied by its type and curve),
    not marked for encryption (``use: enc``).

    Raises:
        ValueError: the document is no JWK Set, or holds no usable key.
    """
    if not isinstance(document, dict):
        raise ValueError("the key set is not a JSON object")
    try:
        keys = PyJWKSet.from_dict(document).keys
    except PyJWKSetError as e:
        raise ValueError("the key set holds no usable key") from e
    usable = [
        k
        for k in keys
        if k.algorithm_name in ALGORITHMS and k.key_type != "oct" and k.public_key_use != "enc"
    ]
    if not usable:
        raise ValueError("the key set holds no key of an allowed algorithm")
    return usable


class KeySet:
    """The provider's signing keys, cached (see the module's docstring).

    Args:
        fetch: returns the JWK Set document (parsed JSON); raises one of
            :data:`FETCH_ERRORS` on failure.
        refetch_s: at most one fetch per this many seconds for an unknown ``kid``.
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(
        self, fetch: Fetch, refetch_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._refetch_s = refetch_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: list[PyJWK] = []
        self._next_load = float("-inf")  # when the keys are due to be fetched again
        self._last_refetch = float("-inf")  # the last fetch for an unknown kid
        #: Fetches made so far (successful or not).
        self.fetches = 0

    async def key(self, kid: str | None) -> PyJWK:
        """The key with id ``kid`` (None: the token names none, so the set's only key).

        Raises:
            UnknownKey: no such key, even after fetching the set again (if allowed).
            KeysUnavailable: the set could not be fetched and none is held.
        """
        async with self._lock:
            now = self._clock()
            loaded = now >= self._next_load
            if loaded:
                await self._load(now)
            if not self._keys:
                raise KeysUnavailable("the identity provider's keys could not be fetched")
            found = self._find(kid)
            # A kid not seen: the provider may have rotated its keys (a token without
            # one names none that a fetch could bring).
            refetch = kid is not None and not loaded
            if found is None and refetch and now - self._last_refetch >= self._refetch_s:
                self._last_refetch = now
                await self._load(now)
                found = self._find(kid)
        if found is None:
            raise UnknownKey("no key of the identity provider has this token's key id")
        return found

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.key_id == kid), None)

    async def _load(self, now: float) -> None:
        """Fetch the set; on failure keep what is held and try again in :data:`RETRY_S`."""
        self.fetches += 1
        try:
            keys = usable_keys(await self._fetch())
        except FETCH_ERRORS as e:
            held = len(self._keys)
            logger.warning(
                "identity provider keys not fetched (%s); %d held", type(e).__name__, held
            )
            self._next_load = now + RETRY_S
            return
        self._keys = keys
        self._next_load = now + MAX_AGE_S
        logger.info("identity provider keys fetched: %d usable", len(keys))


async def fetch_json(http: aiohttp.ClientSession, url: str) -> Any:
    """The JSON document at ``url`` (a key set, a discovery document).

    Raises:
        aiohttp.ClientError: no answer, or a status other than 200.
        TimeoutError: no whole answer within :data:`FETCH_TIMEOUT_S`.
        ValueError: an answer over :data:`MAX_DOCUMENT_BYTES`, or not JSON.
    """
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with http.get(url, timeout=timeout, headers={"Accept": "application/json"}) as r:
        r.raise_for_status()
        body = await r.content.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"an answer over {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


async def discover_jwks_url(http: aiohttp.ClientSession, issuer: str) -> str:
    """The ``jwks_uri`` of ``issuer``'s OpenID Provider metadata
    (``<issuer>/.well-known/openid-configuration``, OpenID Connect Discovery 1.0 §4),
    whose ``issuer`` must be ``issuer`` exactly (§4.3).

    Raises:
        ValueError: the document names another issuer, or no ``jwks_uri``.
        aiohttp.ClientError, TimeoutError: as :func:`fetch_json`.
    """
    document = await fetch_json(http, issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ValueError("the discovery document names another issuer")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
        raise ValueError("the discovery document has no jwks_uri")
    return jwks_uri
