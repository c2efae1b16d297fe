"""``python -m terminal``: chat with Parley from a terminal.

Each line typed is a message; the reply streams in as it is generated. Ctrl-D exits
once the replies in progress have finished, Ctrl-C exits at once. With stdin a pipe,
``echo hi | python -m terminal --name me`` prints the reply and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import aiohttp

from protocol.wire import DoneEvent, ErrorEvent, QueuedEvent, RestartEvent, ServerEvent, TokenEvent
from runtime.retry import setup_retries
from terminal.client import ApiError, ChatClient, ChatClientError
from terminal.render import render_event, render_session

DEFAULT_URL = "http://127.0.0.1:8000"


async def read_lines(stream: TextIO) -> AsyncIterator[str]:
    """The lines of ``stream`` (newline stripped), read without blocking the event loop.

    A daemon thread does the blocking reads: unlike ``asyncio.to_thread`` it does not
    keep the process alive at exit while it waits for a line that never comes.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in iter(stream.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except (RuntimeError, ValueError, OSError):
            pass  # the loop or the stream is closed: we are exiting

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line.rstrip("\r\n")


class Conversation:
    """What the terminal shows of the replies in progress, and whether any are pending.

    ``idle`` is set when every message sent has been answered (or refused), which is
    when Ctrl-D may exit and when the prompt shows again.
    """

    def __init__(self) -> None:
        self.streamed: dict[str, str] = {}
        self.unacked = 0  # sent, neither queued nor refused yet
        self.waiting: set[str] = set()  # queued, reply not finished
        self.idle = asyncio.Event()
        self.idle.set()

    def sent(self) -> None:
        """Count a message just sent."""
        self.unacked += 1
        self.idle.clear()

    def show(self, event: ServerEvent) -> str:
        """The text for ``event``, updating what has been printed of its reply."""
        message_id = event.message_id or ""
        text = render_event(event, self.streamed.get(message_id, ""))
        match event:
            case QueuedEvent():
                self.unacked = max(0, self.unacked - 1)
                self.waiting.add(message_id)
            case TokenEvent(content=content):
                self.streamed[message_id] = self.streamed.get(message_id, "") + content
            case RestartEvent():
                self.streamed.pop(message_id, None)
            case DoneEvent() | ErrorEvent():
                self.streamed.pop(message_id, None)
                if message_id in self.waiting:
                    self.waiting.discard(message_id)
                elif isinstance(event, ErrorEvent):
                    self.unacked = max(0, self.unacked - 1)  # a refused message
        if self.unacked == 0 and not self.waiting:
            self.idle.set()
        return text


async def _print_events(
    client: ChatClient, conversation: Conversation, out: TextIO, prompt: str
) -> None:
    async for event in client.events():
        out.write(conversation.show(event))
        if prompt and conversation.idle.is_set() and isinstance(event, DoneEvent | ErrorEvent):
            out.write(prompt)
        out.flush()


async def _send_lines(
    client: ChatClient, lines: AsyncIterator[str], conversation: Conversation
) -> None:
    async for line in lines:
        if line.strip():
            conversation.sent()
            await client.send(line)
    await conversation.idle.wait()  # end of input: let the replies finish first


async def chat(
    url: str, name: str | None, token: str | None, lines: AsyncIterator[str], out: TextIO
) -> int:
    """Run one chat session until ``lines`` ends; returns the exit status.

    Args:
        url: the Parley server.
        name: the name of a new session (asked on ``lines`` if None and no token).
        token: an existing session to continue; its history is printed first.
        lines: what the person types.
        out: where the conversation is printed.
    """

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    prompt = "> " if out.isatty() else ""
    async with ChatClient(url) as client:
        try:
            if token:
                write(render_session(await client.load_session(token)))
            else:
                if name is None:
                    write("Your name: ")
                    name = await anext(lines, None)
                    if name is None:
                        return 1
                view = await client.create_session(name)
                write(f"-- session of {view.name}, started {view.session_start} --\n")
            write(f"-- token {client.token} (continue later with --token {client.token}) --\n")
            await client.connect()
            write(prompt)
            conversation = Conversation()
            printer = asyncio.create_task(_print_events(client, conversation, out, prompt))
            sender = asyncio.create_task(_send_lines(client, lines, conversation))
            try:
                await asyncio.wait({printer, sender}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (printer, sender):
                    task.cancel()
                await asyncio.gather(printer, sender, return_exceptions=True)
            for task in (printer, sender):
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error
        except ApiError as e:
            write(f"! {e.detail}\n")
            return 1
        except ChatClientError as e:
            write(f"\n! {e}\n")
            return 1
        except (aiohttp.ClientError, OSError) as e:
            write(f"! cannot reach {url}: {e}\n")
            return 1
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--url``, ``--name``, ``--token``)."""
    parser = argparse.ArgumentParser(prog="python -m terminal", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Parley server (default {DEFAULT_URL})")
    parser.add_argument("--name", help="your name, for a new session (asked if absent)")
    parser.add_argument("--token", help="continue an existing session; prints its history")
    parser.add_argument("--log-level", default="WARNING", help="log level (default WARNING)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m terminal``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[%(message)s]", stream=sys.stderr)
    setup_retries()  # one line a reconnect attempt, in place of stamina's own hooks

    async def run() -> int:
        return await chat(args.url, args.name, args.token, read_lines(sys.stdin), sys.stdout)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            print()
        return 0
