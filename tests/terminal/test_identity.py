"""The terminal client with a person's ID token (``PARLEY_ID_TOKEN``), against a real
stack whose identity provider is the stand-in (``tests/support/identity.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from protocol.wire import ErrorCode, ErrorEvent
from server.identity import person_owner
from storage import keys
from terminal.client import ChatClient, IdentityRefused
from terminal.render import REPLY_PREFIX
from tests.support.identity import Provider, SigningKey
from tests.support.parley import Parley
from tests.terminal.harness import run_cli

pytestmark = pytest.mark.system

PERSON = "subject-terminal-3b7d"


async def test_the_client_chats_as_the_person_of_parley_id_token(
    oidc_parley: Parley,
    idp: Provider,
    idp_keys: dict[str, SigningKey],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    token = idp.token(idp_keys["rsa"], PERSON)
    status, output = await run_cli(
        "--url",
        oidc_parley.url,
        "--name",
        "Ada",
        stdin="hello\n",
        config_home=tmp_path,
        env={"PARLEY_ID_TOKEN": token},
    )
    assert status == 0, output
    assert f"{REPLY_PREFIX}Reply to: hello" in output
    assert token not in output
    # The person is the owner: no owner token was made, and none is kept.
    owners = await oidc_parley.redis.keys(f"{keys.PREFIX}:owner:*")
    assert owners == [keys.owner_key(person_owner(idp.issuer, PERSON))]
    kept = tmp_path / "parley" / "terminal.json"
    assert not kept.exists() or json.loads(kept.read_text()).get("owners") == {}
    # The person's other device (another token) lists the conversation.
    phone = idp.token(idp_keys["ec"], PERSON)
    async with http.get(
        f"{oidc_parley.url}/conversations", headers={"Authorization": f"Bearer {phone}"}
    ) as r:
        assert (await r.json())["total"] == 1


async def test_an_expired_token_is_said_plainly(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    expired = idp.token(idp_keys["rsa"], PERSON, exp=int(time.time()) - 600)
    _, output = await run_cli(
        "--url",
        oidc_parley.url,
        "--name",
        "Ada",
        stdin="hello\n",
        config_home=tmp_path,
        env={"PARLEY_ID_TOKEN": expired},
    )
    # Said as any refusal of the server is (the client goes on; here stdin ends).
    assert "the token has expired" in output and expired not in output
    assert REPLY_PREFIX not in output


async def test_the_socket_offers_the_token_and_ends_when_it_expires(
    oidc_parley: Parley, idp: Provider, idp_keys: dict[str, SigningKey]
) -> None:
    # Inside the server's leeway for 3 s more.
    leeway = int(oidc_parley.server_settings.oidc_leeway_s)
    ending = idp.token(idp_keys["ec"], PERSON, exp=int(time.time()) - leeway + 3)
    async with ChatClient(oidc_parley.url, id_token=ending) as client:
        await client.create_session("Ada", owner=ending)
        await client.connect()
        seen = []
        with pytest.raises(IdentityRefused, match="expired"):
            async with asyncio.timeout(10):
                async for event in client.events():
                    seen.append(event)
    assert isinstance(seen[-1], ErrorEvent) and seen[-1].code is ErrorCode.AUTH_EXPIRED
