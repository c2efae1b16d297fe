"""``python -m terminal`` from a pipe, end to end on the real stack: conversations kept
under an owner, listed and resumed, and the slash commands.

The ``parley`` fixture (``tests/conftest.py``) runs a server, a worker, Redis and a
stand-in model whose reply to "X" begins with "Reply to: X".
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from storage.keys import owner_key
from terminal.api import ParleyApi
from terminal.render import REPLY_PREFIX
from tests.support.parley import Parley, running_parley
from tests.terminal.harness import kept_owner, run_cli

pytestmark = pytest.mark.system


@pytest.fixture
async def untitled_url(redis_url: str, redis: Redis[str]) -> AsyncIterator[str]:
    """A running Parley that asks for no title, so that a conversation nobody renames
    stays untitled and is listed by its name."""
    async with running_parley(redis_url, redis, conversation_titles=False) as parley:
        yield parley.url


async def test_a_conversation_is_kept_listed_and_resumed_with_its_history(
    untitled_url: str, tmp_path: Path
) -> None:
    parley_url = untitled_url
    status, output = await run_cli(
        "--url", parley_url, "--name", "Ada", stdin="hello\n", config_home=tmp_path
    )
    assert status == 0, output
    assert f"{REPLY_PREFIX}Reply to: hello" in output
    assert '"type"' not in output  # readable text, never raw JSON
    settings = tmp_path / "parley" / "terminal.json"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.parent.stat().st_mode) == 0o700
    owner = kept_owner(tmp_path)

    status, output = await run_cli(
        "--url", parley_url, stdin="second\n/rename Later one\n", config_home=tmp_path
    )
    assert status == 0, output  # the name was kept: not asked again
    assert f"{REPLY_PREFIX}Reply to: second" in output

    status, listing = await run_cli("--url", parley_url, "--list", stdin="", config_home=tmp_path)
    assert status == 0, listing
    first, second = (line for line in listing.splitlines() if line[:4].strip().endswith("."))
    assert first.startswith("  1. Later one") and "2 messages" in first
    assert second.startswith("  2. (untitled, Ada)") and "2 messages" in second

    status, output = await run_cli(
        "--url", parley_url, "--resume", "2", stdin="again\n", config_home=tmp_path
    )
    assert status == 0, output
    history, _, live = output.partition(f"{REPLY_PREFIX}Reply to: hello")
    assert "you: hello\n" in history
    assert f"{REPLY_PREFIX}Reply to: again" in live
    assert "Reply to: second" not in output
    async with aiohttp.ClientSession() as http:
        page = await ParleyApi(parley_url, http).conversations(owner)
    secrets = [owner, *(item.token for item in page.conversations)]
    assert len(secrets) == 3
    for text in (output, listing):
        for secret in secrets:
            assert secret not in text  # neither the owner token nor a session token


async def test_slash_commands_rename_export_new_and_delete(parley_url: str, tmp_path: Path) -> None:
    config, files = tmp_path / "config", tmp_path / "files"
    files.mkdir()
    typed = (
        "first\n"
        "/rename Trip plans\n"
        f"/export json {files}/trip.json\n"
        f"/export md {files}/trip.md\n"
        "/new\n"
        "second\n"
        "/list\n"
        "/delete\n"
        "n\n"
        "/delete\n"
        "y\n"
        "/list\n"
        "/switch 9\n"
        "/frobnicate\n"
    )
    status, output = await run_cli(
        "--url", parley_url, "--name", "Ada", stdin=typed, config_home=config
    )
    assert status == 0, output

    exported = json.loads((files / "trip.json").read_text())
    assert exported["title"] == "Trip plans"
    assert [m["content"][:16] for m in exported["messages"]] == ["first", "Reply to: first "]
    markdown = (files / "trip.md").read_text()
    assert markdown.startswith("# Trip plans") and "Reply to: first" in markdown

    # The first /list: both conversations, the newer first; the second /list, after the
    # newer one is deleted: the first alone. Titles run as shipped, so the newer one is
    # listed untitled, or by the title its first reply was given if that came first.
    before, _, after = output.partition("-- deleted")
    newer = next(line for line in before.splitlines() if line.startswith("  1. "))
    assert newer.startswith(("  1. (untitled, Ada)", "  1. Reply to: Message: second")), newer
    assert "  2. Trip plans" in before
    assert "-- kept --" in before
    assert "  1. Trip plans" in after and "  2." not in after
    assert "! no conversation 9: there are 1 (/list shows them)" in after
    assert "! unknown command /frobnicate: /help lists them" in after


async def test_a_markdown_reply_is_rendered_without_its_marks(
    parley_url: str, tmp_path: Path
) -> None:
    status, output = await run_cli(
        "--url", parley_url, "--name", "Ada", stdin="**bold** and `code`\n", config_home=tmp_path
    )
    assert status == 0, output
    assert f"{REPLY_PREFIX}Reply to: bold and code" in output
    assert "**" not in output and "`" not in output


async def test_an_expired_owner_is_replaced_and_said_so(parley: Parley, tmp_path: Path) -> None:
    status, output = await run_cli(
        "--url", parley.url, "--name", "Ada", stdin="hi\n", config_home=tmp_path
    )
    assert status == 0, output
    old = kept_owner(tmp_path)
    assert await parley.redis.delete(owner_key(old)) == 1  # as when OWNER_TTL_SECONDS passes

    status, output = await run_cli("--url", parley.url, "--list", stdin="", config_home=tmp_path)
    assert status == 0, output
    assert "-- the conversations kept on this server have expired --" in output
    assert "-- no conversations yet --" in output
    assert kept_owner(tmp_path) != old


async def test_an_unknown_session_is_reported(parley_url: str, tmp_path: Path) -> None:
    status, output = await run_cli(
        "--url",
        parley_url,
        "--token",
        "00000000-0000-4000-8000-000000000000",
        stdin="",
        config_home=tmp_path,
    )
    assert status == 1
    assert "! Session expired or does not exist" in output


async def test_regenerate_and_edit_show_the_new_turn_and_keep_the_old_as_versions(
    parley_url: str, tmp_path: Path
) -> None:
    typed = "first\n/regenerate\n/edit changed\n/versions\n"
    status, output = await run_cli(
        "--url", parley_url, "--name", "Ada", stdin=typed, config_home=tmp_path
    )
    assert status == 0, output
    lines = output.splitlines()
    regenerated = lines.index("-- answering again --")
    assert lines[regenerated + 1 : regenerated + 3] == [
        "you: first",
        "     (1 earlier version: /versions)",
    ]
    assert lines[regenerated + 3].startswith(f"{REPLY_PREFIX}Reply to: first")
    edited = lines.index("-- edited --")
    assert lines[edited + 1 : edited + 3] == [
        "you: changed",
        "     (2 earlier versions: /versions)",
    ]
    assert lines[edited + 3].startswith(f"{REPLY_PREFIX}Reply to: changed")
    listed = output[output.index("-- earlier version 1") :]
    assert listed.count("you: first\n") == 2 and listed.count(f"{REPLY_PREFIX}Reply to: first") == 2
    assert listed.endswith("-- now --\nyou: changed\n")

    # Resumed later: the turn as it stands, its earlier versions noted and at hand.
    status, output = await run_cli(
        "--url", parley_url, "--resume", "1", stdin="/versions\n", config_home=tmp_path
    )
    assert status == 0, output
    history, _, versions = output.partition("-- earlier version 1")
    assert "you: changed\n     (2 earlier versions: /versions)\n" in history
    assert "Reply to: first" not in history
    assert versions.count(f"{REPLY_PREFIX}Reply to: first") == 2


async def test_a_refused_edit_is_said_in_words(parley_url: str, tmp_path: Path) -> None:
    status, output = await run_cli(
        "--url",
        parley_url,
        "--name",
        "Ada",
        stdin="/edit nothing yet\nfirst\n/edit \n",
        config_home=tmp_path,
    )
    assert status == 0, output
    assert "! no conversation is open: send a message, or /switch N" in output
    assert "! usage: /edit TEXT (replaces your last message)" in output


async def test_rest_calls_carry_tokens_in_the_header_never_in_the_url(parley_url: str) -> None:
    sent: list[tuple[str, str | None]] = []

    async def record(
        _session: aiohttp.ClientSession, _context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        sent.append((str(params.url), params.headers.get("Authorization")))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(record)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        api = ParleyApi(parley_url, http)
        owner = await api.create_owner()
        view = await api.create_session("Ada", owner)
        await api.conversations(owner)
        await api.load_session(view.token)
        await api.rename(view.token, "Kept")
        await api.export(view.token, "markdown")
        await api.delete(view.token)
    assert len(sent) == 7
    for url, authorization in sent[1:]:
        assert owner not in url and view.token not in url, url
        assert authorization in (f"Bearer {owner}", f"Bearer {view.token}"), url
