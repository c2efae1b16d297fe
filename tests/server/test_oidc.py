"""Owners from an identity provider (OpenID Connect): ID tokens checked against a real
provider stand-in (an HTTP server with generated RSA and EC keys), on a real server,
worker and Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest

from protocol.subprotocols import SUBPROTOCOL, bearer_subprotocols
from protocol.wire import ErrorCode
from server.identity import person_owner
from server.jwks import MAX_AGE_S, KeySet, UnknownKey, fetch_json, usable_keys
from tests.support.identity import Provider, SigningKey, forged, rsa_key
from tests.support.parley import Parley

#: Subjects that appear nowhere else, so the log checks can look for them.
ADA = "subject-ada-5e1f"
BOB = "subject-bob-91c2"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start_session(parley: Parley, http: aiohttp.ClientSession, id_token: str) -> str:
    async with http.post(
        f"{parley.url}/token", params={"name": "Ada"}, headers=bearer(id_token)
    ) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["token"]
        return token


async def conversations(parley: Parley, http: aiohttp.ClientSession, id_token: str) -> Any:
    async with http.get(f"{parley.url}/conversations", headers=bearer(id_token)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def protocols(id_token: str) -> tuple[str, ...]:
    return tuple(bearer_subprotocols(id_token))


async def test_two_devices_of_one_person_see_the_same_conversations(
    oidc_parley: Parley,
    idp: Provider,
    idp_keys: dict[str, SigningKey],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    laptop = idp.token(idp_keys["rsa"], ADA)  # RS256
    phone = idp.token(idp_keys["ec"], ADA)  # ES256, another token of the same person
    with caplog.at_level(logging.DEBUG):
        assert (await conversations(oidc_parley, http, laptop))["total"] == 0  # no record yet
        session = await start_session(oidc_parley, http, laptop)
        async with http.ws_connect(
            oidc_parley.ws_url, params={"token": session}, protocols=protocols(phone)
        ) as ws:
            assert ws.protocol == SUBPROTOCOL  # not the one carrying the token
            await ws.send_json({"type": "message", "content": "hello"})
            async with asyncio.timeout(20):
                while (await ws.receive_json())["type"] != "done":
                    pass
        listed = await conversations(oidc_parley, http, phone)
        assert [c["token"] for c in listed["conversations"]] == [session]
        assert listed["conversations"][0]["message_count"] == 2
        # Another person sees none of it.
        assert (await conversations(oidc_parley, http, idp.token(idp_keys["rsa"], BOB)))[
            "total"
        ] == 0
    # The person's owner is no credential: knowing it (from the subject) lists nothing.
    owner = person_owner(idp.issuer, ADA)
    async with http.get(f"{oidc_parley.url}/conversations", params={"owner": owner}) as r:
        assert r.status == 400
    for secret in (laptop, phone, ADA, BOB, f"{ADA}@example.org", idp_keys["rsa"].jwk()["n"]):
        assert secret not in caplog.text


def _claims_without_sub(idp: Provider) -> dict[str, Any]:
    claims = idp.claims(ADA)
    del claims["sub"]
    return claims


#: Tokens that must be refused, each made from the provider and its keys.
REFUSED: dict[str, Callable[[Provider, dict[str, SigningKey]], str]] = {
    "expired": lambda p, k: p.token(
        k["rsa"], ADA, exp=int(time.time()) - 120, iat=int(time.time()) - 600
    ),
    "not yet valid": lambda p, k: p.token(k["ec"], ADA, nbf=int(time.time()) + 600),
    "wrong audience": lambda p, k: p.token(k["rsa"], ADA, aud="another-application"),
    "wrong issuer": lambda p, k: p.token(k["rsa"], ADA, iss="https://idp.example.org"),
    "no subject": lambda p, k: jwt.encode(
        _claims_without_sub(p), k["rsa"].private, "RS256", headers={"kid": "rsa-1"}
    ),
    "alg none": lambda p, k: forged({"alg": "none", "kid": "rsa-1"}, p.claims(ADA), None),
    "HS256 keyed with the public key": lambda p, k: forged(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, p.claims(ADA), k["rsa"].public_pem()
    ),
    "another key's signature": lambda p, k: jwt.encode(
        p.claims(ADA), rsa_key("x").private, "RS256", headers={"kid": "rsa-1"}
    ),
    "the EC key's kid on an RS256 token": lambda p, k: jwt.encode(
        p.claims(ADA), k["rsa"].private, "RS256", headers={"kid": "ec-1"}
    ),
    "malformed": lambda p, k: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOi.bm90IGEgc2lnbmF0dXJl",
}


async def test_refused_tokens_get_401_with_www_authenticate(
    oidc_parley: Parley,
    idp: Provider,
    idp_keys: dict[str, SigningKey],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = await start_session(oidc_parley, http, idp.token(idp_keys["rsa"], ADA))
    with caplog.at_level(logging.DEBUG):
        for n, (case, make) in enumerate(REFUSED.items()):
            token = make(idp, idp_keys)
            # POST /token for a few (every one counts against RATE_SESSIONS_PER_CLIENT).
            paths = [("GET", "/conversations")] + ([("POST", "/token?name=Ada")] if n < 4 else [])
            for method, path in paths:
                async with http.request(method, oidc_parley.url + path, headers=bearer(token)) as r:
                    assert r.status == 401, (case, path, await r.text())
                    challenge = r.headers["WWW-Authenticate"]
                    assert challenge.startswith('Bearer error="invalid_token"'), (case, challenge)
                    assert token not in await r.text()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with http.ws_connect(
                    oidc_parley.ws_url, params={"token": session}, protocols=protocols(token)
                ):
                    pass
            assert refused.value.status == 401, case
            assert refused.value.headers is not None
            assert "invalid_token" in refused.value.headers["WWW-Authenticate"], case
            assert token not in caplog.text, case
    # None of them cost a fetch beyond the first: the algorithm is checked before a
    # key is looked up, and every kid named is one the provider published.
    assert idp.fetches == 1


async def test_an_unknown_key_id_fetches_the_keys_once_then_is_refused(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    await conversations(oidc_parley, http, idp.token(idp_keys["rsa"], ADA))
    assert idp.fetches == 1
    rotated = idp.token(idp_keys["next"], ADA)  # signed with a key not (yet) published
    async with http.get(f"{oidc_parley.url}/conversations", headers=bearer(rotated)) as r:
        assert r.status == 401
        assert "unknown key" in r.headers["WWW-Authenticate"]
    assert idp.fetches == 2  # fetched again for it, and still unknown
    # Published now; but another fetch must wait OIDC_JWKS_REFETCH_S: made-up key ids
    # cannot make the server hammer the idp.
    idp.published.append(idp_keys["next"])
    for _ in range(3):
        async with http.get(f"{oidc_parley.url}/conversations", headers=bearer(rotated)) as r:
            assert r.status == 401
    assert idp.fetches == 2


async def test_the_socket_proves_the_person_and_closes_when_the_token_expires(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    session = await start_session(oidc_parley, http, idp.token(idp_keys["rsa"], ADA))
    # Someone else's token on Ada's session: refused.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(
            oidc_parley.ws_url,
            params={"token": session},
            protocols=protocols(idp.token(idp_keys["rsa"], BOB)),
        ):
            pass
    assert refused.value.status == 403
    # Expired 27 s ago, inside the default 30 s leeway: accepted, for 3 s more.
    leeway = oidc_parley.server_settings.oidc_leeway_s
    ending = idp.token(idp_keys["ec"], ADA, exp=int(time.time()) - int(leeway) + 3)
    async with http.ws_connect(
        oidc_parley.ws_url, params={"token": session}, protocols=protocols(ending)
    ) as ws:
        assert ws.protocol == SUBPROTOCOL
        async with asyncio.timeout(10):
            event = await ws.receive_json()
            assert event["type"] == "error" and event["code"] == ErrorCode.AUTH_EXPIRED
            closing = await ws.receive()
    assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    # The session token alone still opens it, as every session's does.
    async with http.ws_connect(oidc_parley.ws_url, params={"token": session}) as ws:
        assert ws.protocol is None


async def test_an_id_token_is_never_taken_from_the_url(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    token = idp.token(idp_keys["rsa"], ADA)
    async with http.get(f"{oidc_parley.url}/conversations", params={"owner": token}) as r:
        assert r.status == 400
        assert "Authorization" in (await r.json())["detail"]


async def test_a_provider_out_of_reach_is_503_not_500(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    token = idp.token(idp_keys["rsa"], ADA)
    await idp.stop()
    async with http.get(f"{oidc_parley.url}/conversations", headers=bearer(token)) as r:
        assert r.status == 503


async def test_without_a_provider_id_tokens_are_refused(
    parley: Parley, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    """Anonymous owners only (the default): an ID token is refused, not mistaken."""
    token = jwt.encode({"sub": ADA}, idp_keys["rsa"].private, "RS256", headers={"kid": "rsa-1"})
    async with http.post(f"{parley.url}/token?name=Ada", headers=bearer(token)) as r:
        assert r.status == 401
        assert "invalid_token" in r.headers["WWW-Authenticate"]
    session = await parley.create_session(http)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(
            parley.ws_url, params={"token": session}, protocols=protocols(token)
        ):
            pass
    assert refused.value.status == 401


# -- the key set, with the clock in the test's hands ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_rotated_key_is_fetched_once_the_interval_allows(
    idp: Provider, idp_keys: dict[str, SigningKey], http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    key_set = KeySet(lambda: fetch_json(http, f"{idp.issuer}/jwks.json"), 60.0, clock)
    assert (await key_set.key("rsa-1")).key_id == "rsa-1"
    with pytest.raises(UnknownKey):
        await key_set.key("rsa-2")  # fetched again: not there
    idp.published.append(idp_keys["next"])
    clock.now += 59
    with pytest.raises(UnknownKey):
        await key_set.key("rsa-2")  # too soon to fetch again
    assert idp.fetches == 2
    clock.now += 1
    assert (await key_set.key("rsa-2")).key_id == "rsa-2"
    assert idp.fetches == 3
    # Keys the provider drops stop being trusted once the cache is MAX_AGE_S old.
    idp.published = [idp_keys["next"]]
    clock.now += MAX_AGE_S
    with pytest.raises(UnknownKey):
        await key_set.key("ec-1")
    assert idp.fetches == 4


def test_only_public_signing_keys_are_kept(idp_keys: dict[str, SigningKey]) -> None:
    secret = {"kty": "oct", "kid": "s", "k": "c2VjcmV0", "alg": "HS256"}
    encryption = {**idp_keys["ec"].jwk(), "kid": "e", "use": "enc"}
    kept = usable_keys({"keys": [secret, encryption, idp_keys["rsa"].jwk()]})
    assert [k.key_id for k in kept] == ["rsa-1"]
    with pytest.raises(ValueError):
        usable_keys({"keys": [secret]})
