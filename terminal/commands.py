"""Slash commands: a line that starts with ``/`` is one (``//`` sends a message that does).

Each command is a coroutine taking the :class:`Chat` and the text after its name;
:func:`handle` finds it, runs it, and prints what went wrong in words.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from protocol.wire import EditCommand, RegenerateCommand
from terminal.api import ApiError
from terminal.chat import Chat, UsageError
from terminal.choice import choose_model, list_models, system_prompt

Command = Callable[[Chat, str], Awaitable[None]]

EXPORT_FORMATS: Final[dict[str, Literal["json", "markdown"]]] = {
    "json": "json",
    "md": "markdown",
    "markdown": "markdown",
}


async def show_help(chat: Chat, arg: str) -> None:
    """Print the commands."""
    width = max(len(spec.usage) for spec in COMMANDS.values())
    lines = [f"  {spec.usage:<{width}}  {spec.what}\n" for spec in COMMANDS.values()]
    chat.print("".join(lines) + chat.renderer.notice("a line starting with // sends it as is"))


async def new(chat: Chat, arg: str) -> None:
    """Leave the open conversation; the next message starts a new one."""
    await chat.new()


async def list_conversations(chat: Chat, arg: str) -> None:
    """Print the owner's conversations, numbered, newest first."""
    await chat.conversations()


async def switch(chat: Chat, arg: str) -> None:
    """Open conversation N of the list."""
    if not arg.strip().isdigit():
        raise UsageError("usage: /switch N, N from /list")
    await chat.resume(int(arg))


async def rename(chat: Chat, arg: str) -> None:
    """Give the open conversation a title."""
    opened = chat.opened()
    title = arg.strip()
    if not title:
        raise UsageError("usage: /rename TITLE")
    await chat.api.rename(opened.token, title)
    opened.title = title
    chat.listing = []  # its numbers may have changed
    chat.notice(f"renamed to {title}")


async def delete(chat: Chat, arg: str) -> None:
    """Delete the open conversation for good, once the person confirms."""
    opened = chat.opened()
    answer = await chat.reader.read(
        f"Delete {opened.title or 'this conversation'} for good? [y/N] "
    )
    if (answer or "").strip().lower() not in {"y", "yes"}:
        chat.notice("kept")
        return
    await chat.close()  # first, so that its socket's end is not news
    # The session token alone is the credential: the owner check (?owner=) would put the
    # owner token in a URL.
    await chat.api.delete(opened.token)
    chat.listing = []
    chat.notice("deleted; the next message starts a new conversation")


async def export(chat: Chat, arg: str) -> None:
    """Write the open conversation to a file, as JSON or Markdown."""
    form, _, path = arg.strip().partition(" ")
    if form not in EXPORT_FORMATS or not path.strip():
        raise UsageError("usage: /export json|md PATH")
    text = await chat.api.export(chat.opened().token, EXPORT_FORMATS[form])
    try:
        target = await asyncio.to_thread(_write, path.strip(), text)
    except OSError as e:
        raise UsageError(f"cannot write {path.strip()}: {e.strerror}") from e
    chat.notice(f"exported to {target}")


def _write(path: str, text: str) -> Path:
    """Write ``text`` to ``path`` (``~`` expanded); the path written."""
    target = Path(path).expanduser()
    target.write_text(text, encoding="utf-8")
    return target


async def regenerate(chat: Chat, arg: str) -> None:
    """Ask again for the reply to the last message; the one it replaces is kept."""
    await chat.revise(RegenerateCommand())


async def edit(chat: Chat, arg: str) -> None:
    """Replace the text of the last message and ask for a new reply."""
    last = chat.opened().conversation.last_user_message()
    if not arg.strip():
        raise UsageError("usage: /edit TEXT (replaces your last message)")
    if last is None:
        raise UsageError("there is no message to edit yet")
    await chat.revise(EditCommand(message_id=last.id, content=arg))


async def versions(chat: Chat, arg: str) -> None:
    """Print the earlier versions of the turns that have some."""
    messages = list(chat.opened().conversation.user_messages.values())
    chat.print(chat.renderer.versions(messages))


async def leave(chat: Chat, arg: str) -> None:
    """Exit once the replies in progress have arrived."""
    chat.quit = True


@dataclass(frozen=True)
class Spec:
    """A command: its handler, its usage and meaning for /help, and whether it waits
    for the replies in progress first (so that it sees, or leaves, a settled
    conversation: an export holds the last reply, a switch loses none from view)."""

    run: Command
    usage: str
    what: str
    settles: bool = False


COMMANDS: Final[dict[str, Spec]] = {
    "help": Spec(show_help, "/help", "this list"),
    "new": Spec(new, "/new", "start a new conversation", settles=True),
    "list": Spec(list_conversations, "/list", "your conversations, newest first"),
    "switch": Spec(switch, "/switch N", "open conversation N of the list", settles=True),
    "rename": Spec(rename, "/rename TITLE", "give this conversation a title"),
    "delete": Spec(delete, "/delete", "delete this conversation for good (asks first)"),
    "export": Spec(export, "/export json|md PATH", "save this conversation", settles=True),
    "regenerate": Spec(regenerate, "/regenerate", "a new reply to your last message", settles=True),
    "edit": Spec(edit, "/edit TEXT", "replace your last message, for a new reply", settles=True),
    "versions": Spec(versions, "/versions", "earlier versions of the turns", settles=True),
    "models": Spec(list_models, "/models", "the models to choose from; * marks the one in use"),
    "model": Spec(
        choose_model, "/model ID", "answer with model ID from the next reply", settles=True
    ),
    "system": Spec(
        system_prompt,
        "/system [TEXT|-]",
        "show the system prompt, set it to TEXT, or (-) use the deployment's",
        settles=True,
    ),
    "quit": Spec(leave, "/quit", "exit once the replies in progress have arrived (or Ctrl-D)"),
}


async def handle(chat: Chat, line: str) -> None:
    """Run the command or send the message that ``line`` is; print a refusal in words.

    Raises:
        terminal.api.ChatClientError: the chat socket cannot be opened or kept.
    """
    try:
        if line.startswith("/") and not line.startswith("//"):
            name, _, arg = line[1:].partition(" ")
            spec = COMMANDS.get(name)
            if spec is None:
                raise UsageError(f"unknown command /{name}: /help lists them")
            if spec.settles:
                await chat.settle()
            await spec.run(chat, arg)
        elif line.strip():
            await chat.send(line.removeprefix("/"))
    except UsageError as e:
        chat.print(chat.renderer.error(str(e)))
    except ApiError as e:
        chat.print(chat.renderer.error(e.detail))
