"""The terminal client's state and actions: the owner, the open conversation, the list.

:class:`Chat` is what the slash commands (:mod:`terminal.commands`) and the main loop
act on. New conversations belong to the owner kept in :class:`ClientSettings`, made on
first use (``POST /owner``), and are created when their first message is sent, so that
starting the client and leaving leaves no empty conversation behind, with the model and
system prompt of :attr:`Chat.choice`. One conversation is open at a time: its socket's
events are printed by a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TextIO

from protocol.wire import (
    ConversationSummary,
    EditCommand,
    GapEvent,
    RegenerateCommand,
    SessionView,
)
from terminal.api import ApiError, ChatClientError, Choice, ParleyApi
from terminal.client import Backoff, ChatClient, SessionGone
from terminal.conversation import Conversation
from terminal.lines import LineReader
from terminal.render import Renderer, setup
from terminal.settings import ClientSettings

PROMPT = "you: "


class UsageError(Exception):
    """A command that cannot be done as asked; the message says why, to the person."""


@dataclass
class Opened:
    """The open conversation: its client, what it shows, the task printing its events."""

    client: ChatClient
    conversation: Conversation
    title: str
    owned: bool
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        """The session token (never printed)."""
        assert self.client.token is not None
        return self.client.token


class Chat:
    """The client's state, and the actions commands take on it.

    Args:
        api: the server's REST API (its aiohttp session is shared by every socket).
        settings: where the owner token and the name are kept.
        reader: what the person types.
        out: where the conversation is printed.
        renderer: how it looks.
        name: the name for new conversations (asked once if None and none is kept).
        choice: the model and system prompt of new conversations.
        backoff: reconnect policy of the sockets.
        id_token: a person's ID token from the server's identity provider
            (``PARLEY_ID_TOKEN``): it stands for the owner (no owner token is made or
            kept), and every socket offers it.
    """

    def __init__(
        self,
        api: ParleyApi,
        settings: ClientSettings,
        reader: LineReader,
        out: TextIO,
        renderer: Renderer,
        *,
        name: str | None = None,
        choice: Choice | None = None,
        backoff: Backoff | None = None,
        id_token: str | None = None,
    ) -> None:
        self.api = api
        self.id_token = id_token
        self.settings = settings
        self.reader = reader
        self.out = out
        self.renderer = renderer
        self.name = name or settings.name
        self.choice = choice or Choice()
        self.backoff = backoff
        self.current: Opened | None = None
        self.listing: list[ConversationSummary] = []
        self.failure: ChatClientError | None = None
        self.failed = asyncio.Event()
        self.quit = False

    # --- output -----------------------------------------------------------------------

    def print(self, text: str) -> None:
        """Print ``text`` for good (above the prompt on a terminal)."""
        if text:
            self.out.write(text)
            self.out.flush()

    def notice(self, text: str) -> None:
        """Print a line from the client itself."""
        self.print(self.renderer.notice(text))

    def live(self, rows: int) -> str:
        """The open conversation's replies still streaming, in ``rows`` rows at most."""
        return self.current.conversation.live(rows) if self.current else ""

    def fail(self, error: ChatClientError) -> None:
        """End the client: the server cannot be reached any more."""
        if self.failure is None:
            self.failure = error
            self.failed.set()

    # --- owner and list ---------------------------------------------------------------

    async def owner(self, *, renew: bool = False) -> str:
        """The owner credential for this server: the ID token if one was given; else the
        kept owner token, or a new one (made and kept if none is kept, or if ``renew``:
        the kept one expired)."""
        if self.id_token is not None:
            return self.id_token
        owner = None if renew else self.settings.owner(self.api.base_url)
        if owner is None:
            owner = await self.api.create_owner()
            self.settings.set_owner(self.api.base_url, owner)
        return owner

    async def conversations(self, shown: int | None = None) -> None:
        """Fetch the owner's conversations (the numbers /switch takes) and print the
        first ``shown`` (all if None; 0 prints nothing). Without a kept owner there are
        none, and no owner is made."""
        owner = self.id_token or self.settings.owner(self.api.base_url)
        if owner is None:
            self.listing, total = [], 0
        else:
            try:
                page = await self.api.conversations(owner)
            except ApiError as e:
                if not e.owner_gone:
                    raise
                self.notice("the conversations kept on this server have expired")
                page = await self.api.conversations(await self.owner(renew=True))
            self.listing, total = page.conversations, page.total
        if shown != 0:
            self.print(self.renderer.conversations(self.listing[:shown], total))

    # --- opening and closing ----------------------------------------------------------

    async def resume(self, number: int) -> None:
        """Open conversation ``number`` of the list last fetched (fetched now if none).

        Raises:
            UsageError: there is no such number.
        """
        if not self.listing:
            await self.conversations(shown=0)
        if not 1 <= number <= len(self.listing):
            count = len(self.listing)
            raise UsageError(f"no conversation {number}: there are {count} (/list shows them)")
        item = self.listing[number - 1]
        await self.open(item.token, item.title, owned=True)

    async def open(self, token: str, title: str = "", *, owned: bool = False) -> None:
        """Open an existing session: print its history, then its live events."""
        await self.close()
        client = self._client()
        try:
            view = await client.load_session(token)
            self.print(self.renderer.session(view, title))
            await self._attach(client, view, title, owned)
        except BaseException:
            await client.aclose()
            raise

    async def new(self) -> None:
        """Leave the open conversation; the next message starts a new one."""
        await self.close()
        self.notice("new conversation: it starts with your first message")

    async def close(self) -> None:
        """Close the open conversation's socket, if one is open."""
        opened, self.current = self.current, None
        if opened is None:
            return
        if opened.task is not None:
            opened.task.cancel()
            await asyncio.gather(opened.task, return_exceptions=True)
        await opened.client.aclose()
        self.reader.refresh()

    def _client(self) -> ChatClient:
        return ChatClient(
            self.api.base_url, http=self.api.http, backoff=self.backoff, id_token=self.id_token
        )

    async def _attach(self, client: ChatClient, view: SessionView, title: str, owned: bool) -> None:
        await client.connect()
        opened = Opened(client, Conversation(self.renderer, view), title, owned)
        opened.task = asyncio.create_task(self._pump(opened), name="events")
        self.current = opened

    async def _create(self) -> Opened:
        """Start a new conversation of the owner's, with the chosen model and system
        prompt, and open it."""
        name = await self.ask_name()
        client = self._client()
        try:
            try:
                view = await client.create_session(name, await self.owner(), self.choice)
            except ApiError as e:
                if not e.owner_gone:
                    raise
                owner = await self.owner(renew=True)
                view = await client.create_session(name, owner, self.choice)
            await self._attach(client, view, "", owned=True)
        except BaseException:
            await client.aclose()
            raise
        if self.choice.body():
            self.notice(f"new conversation: {setup(view.model, view.system_prompt)}")
        assert self.current is not None
        return self.current

    async def ask_name(self) -> str:
        """The name for new conversations, asked once and kept."""
        while not self.name:
            answer = await self.reader.read("Your name: ")
            if answer is None:
                raise UsageError("a new conversation needs your name")
            self.name = answer.strip()
        with contextlib.suppress(OSError):
            self.settings.set_name(self.name)
        return self.name

    async def _pump(self, opened: Opened) -> None:
        """Print the events of ``opened``'s socket until it closes."""
        try:
            async for event in opened.client.events():
                self.print(opened.conversation.show(event))
                if isinstance(event, GapEvent):
                    await self._catch_up(opened)
                self.reader.refresh()
        except SessionGone as e:
            opened.conversation.streamed.clear()
            opened.conversation.idle.set()
            if self.current is opened:
                self.current = None
            self.print(self.renderer.error(f"the conversation has ended ({e})"))
            self.notice("type to start a new one, /list to see yours")
            await opened.client.aclose()
        except ChatClientError as e:
            self.fail(e)
        self.reader.refresh()

    async def _catch_up(self, opened: Opened) -> None:
        """After a ``gap``: reload the history and print what the events missed; the
        socket carries on live either way."""
        try:
            view = await opened.client.catch_up()
        except ApiError as e:
            self.print(self.renderer.error(f"the history could not be reloaded ({e})"))
            return
        self.print(opened.conversation.caught_up(view))

    # --- what the person does -----------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send a message to the open conversation, starting one if none is open."""
        opened = self.current or await self._create()
        opened.conversation.sent()
        await opened.client.send(text)

    async def revise(self, command: RegenerateCommand | EditCommand) -> None:
        """Send a regenerate or edit command to the open conversation."""
        opened = self.opened()
        opened.conversation.sent()
        await opened.client.send_command(command)

    def opened(self) -> Opened:
        """The open conversation.

        Raises:
            UsageError: none is open.
        """
        if self.current is None:
            raise UsageError("no conversation is open: send a message, or /switch N")
        return self.current

    async def settle(self) -> None:
        """Wait until the open conversation's replies have arrived (or the client failed)."""
        if self.current is not None:
            idle = asyncio.ensure_future(self.current.conversation.idle.wait())
            failed = asyncio.ensure_future(self.failed.wait())
            await asyncio.wait({idle, failed}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (idle, failed):
                waiter.cancel()
