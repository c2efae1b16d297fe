"""``python -m terminal``: chat with Parley from a terminal.

Each line typed is a message; replies are rendered as Markdown, and stream in above the
prompt as they are generated. Lines starting with / are commands (/help lists them):
list, resume, rename, delete and export conversations, choose the model and system
prompt. Conversations belong to an owner
token kept in the user's config folder, so they can be listed and resumed later
(--list, --resume N). Ctrl-D exits once the replies in progress have arrived, Ctrl-C
exits at once. With stdin a pipe, ``echo hi | python -m terminal --name me`` prints
the reply and exits.

Where the server signs people in with an identity provider (its OIDC_ISSUER), put your
ID token in the environment variable PARLEY_ID_TOKEN: your conversations are then those
of your account, on every device, and no owner token is kept. The token is sent only in
headers, never in a URL, and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import aiohttp
from prompt_toolkit.patch_stdout import patch_stdout

from runtime.retry import setup_retries
from terminal.api import ChatClientError, Choice, ParleyApi
from terminal.chat import PROMPT, Chat, UsageError
from terminal.choice import offer
from terminal.commands import handle
from terminal.lines import LineReader, PipeReader, PromptReader
from terminal.render import Renderer
from terminal.settings import ClientSettings, settings_path

DEFAULT_URL = "http://127.0.0.1:8000"
#: The environment variable holding a person's ID token, if the server takes them.
ID_TOKEN_VARIABLE = "PARLEY_ID_TOKEN"
#: Conversations listed when the client starts on a terminal.
RECENT = 5


async def next_line(chat: Chat) -> str | None:
    """The next line typed; None at the end of input or once the client has failed."""
    read = asyncio.ensure_future(chat.reader.read(PROMPT))
    failed = asyncio.ensure_future(chat.failed.wait())
    await asyncio.wait({read, failed}, return_when=asyncio.FIRST_COMPLETED)
    failed.cancel()
    if not read.done():
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        return None
    return read.result()


async def start(chat: Chat, args: argparse.Namespace, interactive: bool) -> bool:
    """Open what the command line asks for; False if there is nothing more to do."""
    if args.token:
        await chat.open(args.token)
    elif args.resume is not None:
        await chat.resume(args.resume)
    elif args.list:
        await chat.conversations()
        return False
    else:
        if chat.choice.model is not None:
            await offer(chat, chat.choice.model)  # an unknown one is said before any typing
        await chat.ask_name()
        if interactive:
            await chat.conversations(shown=RECENT)
            chat.notice("/switch N resumes one, /help lists the commands; type to start anew")
    return True


async def chat(
    args: argparse.Namespace, reader: LineReader, out: TextIO, renderer: Renderer
) -> int:
    """Run the client until the input ends, /quit, or the server is lost; the exit status.

    Args:
        args: the command line (:func:`parse_args`).
        reader: what the person types.
        out: where the conversation is printed.
        renderer: how it looks.
    """
    interactive = isinstance(reader, PromptReader)
    async with aiohttp.ClientSession() as http:
        settings = ClientSettings(settings_path())
        choice = Choice(args.model, args.system_prompt or None)
        api = ParleyApi(args.url, http)
        id_token = os.environ.get(ID_TOKEN_VARIABLE, "").strip() or None
        client = Chat(
            api, settings, reader, out, renderer, name=args.name, choice=choice, id_token=id_token
        )
        if isinstance(reader, PromptReader):
            reader.live = client.live
        try:
            if not await start(client, args, interactive):
                return 0
            while not client.quit and (line := await next_line(client)) is not None:
                await handle(client, line)
            await client.settle()
        except UsageError as e:
            client.print(renderer.error(str(e)))
            return 1
        except ChatClientError as e:
            client.fail(e)
        finally:
            await client.close()
        if client.failure is not None:
            detail = getattr(client.failure, "detail", None) or str(client.failure)
            client.print(renderer.error(detail))
            return 1
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m terminal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Parley server (default {DEFAULT_URL})")
    parser.add_argument("--name", help="your name, for new conversations (asked once if absent)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true", help="list your conversations and exit")
    which.add_argument("--resume", type=int, metavar="N", help="open conversation N of --list")
    which.add_argument("--token", help="open the session with this token (owned or not)")
    parser.add_argument("--model", metavar="ID", help="the model of new conversations (/models)")
    parser.add_argument(
        "--system-prompt", metavar="TEXT", help="the system prompt of new conversations"
    )
    parser.add_argument("--log-level", default="WARNING", help="log level (default WARNING)")
    args = parser.parse_args(argv)
    if (args.model or args.system_prompt) and (args.list or args.token or args.resume is not None):
        parser.error(
            "--model and --system-prompt are for new conversations; "
            "in an open one, use /model and /system"
        )
    return args


def color_wanted(out: TextIO) -> bool:
    """Styles for a terminal, unless ``NO_COLOR`` is set (https://no-color.org)."""
    return out.isatty() and not os.environ.get("NO_COLOR")


async def run(args: argparse.Namespace) -> int:
    """The client on this process's stdin and stdout."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    renderer = Renderer(color=color_wanted(sys.stdout))
    if not interactive:
        logging.basicConfig(level=args.log_level.upper(), format="[%(message)s]")
        return await chat(args, PipeReader(sys.stdin), sys.stdout, renderer)
    # Everything printed, log lines included, goes above the prompt: so patch first,
    # then let logging take the patched stderr.
    with patch_stdout(raw=True):
        logging.basicConfig(level=args.log_level.upper(), format="[%(message)s]")
        return await chat(args, PromptReader(), sys.stdout, renderer)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m terminal``; returns the exit status."""
    args = parse_args(argv)
    setup_retries()  # one line a reconnect attempt, in place of stamina's own hooks
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            print()
        return 0
