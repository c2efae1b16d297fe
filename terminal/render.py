"""What the terminal prints: replies rendered as Markdown by rich, history, lists, notices.

:class:`Renderer` turns wire models into text (with ANSI styles when ``color``), with no
I/O of its own, so tests check the output without a terminal. Every string from the
server (replies, names, titles, details) goes through :func:`clean` first: a reply is
the model's text, and a raw escape sequence in it must not reach the terminal.
"""

from __future__ import annotations

import io
import re
import shutil
from datetime import datetime
from typing import Final

from rich.console import Console, RenderableType
from rich.markdown import Markdown
from rich.text import Text

from protocol.labels import strip_hidden
from protocol.wire import ChatMessage, ConversationSummary, ModelInfo, SessionView

USER_PREFIX: Final = "you: "
REPLY_PREFIX: Final = "parley: "
#: A partial reply in the live area shows at most this many of its last lines.
LIVE_MIN_LINES: Final = 3

# C0 controls but tab and newline, DEL, C1 controls: ESC starts terminal commands, CR
# and backspace overwrite what is shown, C1 has a one-byte CSI.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` with its control characters shown as ``^X`` instead of obeyed."""
    return _CONTROL.sub(lambda m: "^" + chr((ord(m[0]) + 64) % 128), text)


def one_line(text: str) -> str:
    """``text`` on one line: control characters (line breaks, ESC) and format characters
    (bidi overrides would reorder what follows them) as spaces, white space collapsed."""
    return " ".join(strip_hidden(text).split())


def local_time(timestamp: str) -> str:
    """An ISO 8601 UTC time as ``YYYY-MM-DD HH:MM`` in the local zone (as given, if not
    ISO 8601)."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return clean(timestamp)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def reply_notes(message: ChatMessage, by_model: bool = False) -> str:
    """Why a reply is partial, in words (" (stopped)"), and which model wrote it if
    ``by_model`` (" (by large, stopped)"), or ""."""
    notes = [f"by {clean(message.model)}"] if by_model and message.model else []
    if message.stopped:
        notes.append("stopped")
    elif message.truncated:
        notes.append(f"cut at its {message.truncated} bound")
    return f" ({', '.join(notes)})" if notes else ""


def models_used(messages: list[ChatMessage]) -> set[str]:
    """The models that wrote the replies of ``messages`` (replies older than the choice
    of models name none)."""
    return {m.model for m in messages if m.role == "assistant" and m.model}


def setup(model: str, system_prompt: str) -> str:
    """A conversation's model and system prompt in words: "model large, own system
    prompt"; "default model" when it chose neither."""
    words = f"model {clean(model)}" if model else "default model"
    return words + (", own system prompt" if system_prompt else "")


class Renderer:
    """Renders for a terminal ``width`` columns wide, with ANSI styles if ``color``.

    ``width`` None follows the terminal's width as it changes (``COLUMNS`` if set, 80
    columns if there is no terminal). Methods return whole lines, each ending with a
    newline.
    """

    def __init__(self, width: int | None = None, color: bool = False) -> None:
        self._width = width
        self.color = color

    @property
    def width(self) -> int:
        """Columns to render for (20 at least)."""
        return max(self._width or shutil.get_terminal_size().columns, 20)

    def _lines(self, renderable: RenderableType, width: int) -> list[str]:
        """``renderable`` as rich prints it ``width`` columns wide, trailing blank lines
        dropped (and, without color, trailing spaces)."""
        console = Console(
            file=io.StringIO(),
            width=width,
            force_terminal=self.color,
            color_system="standard" if self.color else None,
            no_color=not self.color,
            highlight=False,
            emoji=False,
            markup=False,
        )
        console.print(renderable, end="")
        output = console.file.getvalue()  # type: ignore[attr-defined]
        lines = [line if self.color else line.rstrip() for line in output.split("\n")]
        while lines and not Text.from_ansi(lines[-1]).plain.strip():
            lines.pop()
        return lines

    def _paint(self, text: str, style: str, width: int | None = None) -> list[str]:
        """``text`` in ``style``, wrapped to ``width`` (the terminal's if None)."""
        return self._lines(Text(text, style=style), width or self.width)

    def _labelled(self, label: str, style: str, lines: list[str]) -> str:
        """``lines`` after ``label`` on the first line, indented under it on the others."""
        word = label.rstrip()
        head = self._paint(word, style)[0] + label[len(word) :]
        pad = " " * len(label)
        out = [head + (lines[0] if lines else "") + "\n"]
        out += [(pad + line if line else "") + "\n" for line in lines[1:]]
        return "".join(out)

    def markdown(self, text: str, width: int | None = None) -> list[str]:
        """``text`` rendered as Markdown (links as ``text (url)``, never hidden)."""
        return self._lines(Markdown(clean(text), hyperlinks=False), width or self.width)

    def reply(self, message: ChatMessage, by_model: bool = False) -> str:
        """A finished reply: ``parley:`` then its Markdown, with a note if it is partial,
        or (``by_model``) to say which model wrote it."""
        lines = self.markdown(message.content, self.width - len(REPLY_PREFIX))
        notes = reply_notes(message, by_model)
        if notes:
            lines += self._paint(notes.strip(), "dim italic")
        return self._labelled(REPLY_PREFIX, "bold cyan", lines)

    def streaming(self, text: str, rows: int) -> str:
        """A reply still streaming, as :meth:`reply` shows it, cut to its last ``rows``
        lines (at least :data:`LIVE_MIN_LINES`) so that it fits above the prompt."""
        lines = self.markdown(text, self.width - len(REPLY_PREFIX))
        keep = max(rows, LIVE_MIN_LINES)
        if len(lines) > keep:
            lines = [*self._paint("…", "dim"), *lines[-(keep - 1) :]]
        return self._labelled(REPLY_PREFIX, "bold cyan", lines)

    def user(self, content: str) -> str:
        """A user message, as typed: ``you: ...``."""
        lines = self._paint(clean(content), "", self.width - len(USER_PREFIX))
        return self._labelled(USER_PREFIX, "bold green", lines)

    def message(self, message: ChatMessage, by_model: bool = False) -> str:
        """One history message; a user message says how many earlier versions its turn
        has (/versions prints them), a reply which model wrote it if ``by_model``."""
        if message.role == "assistant":
            return self.reply(message, by_model)
        count = len(message.versions or [])
        note = f"({count} earlier version{'s' if count > 1 else ''}: /versions)" if count else ""
        return self.user(message.content) + (self._indented(note) if note else "")

    def _indented(self, note: str) -> str:
        pad = " " * len(USER_PREFIX)
        return "".join(f"{pad}{line}\n" for line in self._paint(note, "dim", self.width - len(pad)))

    def quote(self, text: str) -> str:
        """``text`` as it is, indented like a message's text."""
        pad = " " * len(USER_PREFIX)
        lines = self._paint(clean(text), "", self.width - len(pad))
        return "".join(f"{pad}{line}\n" if line else "\n" for line in lines)

    def revised(self, message: ChatMessage) -> str:
        """A turn regenerated or edited (its new reply follows): what the user message
        now says, and whether it changed."""
        versions = message.versions or []
        edited = bool(versions) and versions[-1].content != message.content
        return self.notice("edited" if edited else "answering again") + self.message(message)

    def versions(self, messages: list[ChatMessage]) -> str:
        """The earlier versions of the turns of ``messages`` (user messages), oldest
        first: each one's text and the reply it got."""
        out = []
        for message in messages:
            for number, version in enumerate(message.versions or [], 1):
                out.append(
                    self.notice(f"earlier version {number}, {local_time(version.timestamp)}")
                )
                out.append(self.user(version.content))
                out.append(self.reply(version.reply) if version.reply else self.notice("no reply"))
            if message.versions:
                out.append(self.notice("now") + self.user(message.content))
        return "".join(out) or self.notice("no turn has earlier versions")

    def notice(self, text: str) -> str:
        """A line from the client itself: ``-- text --``."""
        return "".join(line + "\n" for line in self._paint(f"-- {clean(text)} --", "dim"))

    def error(self, text: str) -> str:
        """A failure or refusal: ``! text``."""
        return "".join(line + "\n" for line in self._paint(f"! {clean(text)}", "red"))

    def session(self, view: SessionView, title: str = "") -> str:
        """A session's header (its model, and whether it has its own system prompt),
        then its history; replies say which model wrote them if it has used several."""
        name = title or "untitled"
        started = local_time(view.session_start)
        chosen = setup(view.model, view.system_prompt)
        header = self.notice(f"{name}: conversation of {view.name}, started {started}, {chosen}")
        by_model = len(models_used(view.messages)) > 1
        return header + "".join(self.message(m, by_model) for m in view.messages)

    def models(self, models: list[ModelInfo], current: str, whose: str) -> str:
        """The models a conversation may choose, ``current`` (an id; "" : the default)
        marked with ``*`` and ``whose`` it is ("this conversation")."""
        current = current or next((m.id for m in models if m.default), "")
        width = max((len(clean(m.id)) for m in models), default=0)
        lines = []
        for model in models:
            about = clean(model.label) if model.label != model.id else ""
            if model.description:
                about += (": " if about else "") + clean(model.description)
            tags = ["default"] if model.default else []
            if model.id == current:
                tags.append(whose)
            mark = "*" if model.id == current else " "
            line = f"{mark} {clean(model.id):<{width}}  {about}"
            lines.append(line.rstrip() + (f"  ({', '.join(tags)})" if tags else "") + "\n")
        return "".join(lines) + self.notice("/model ID chooses one")

    def conversations(self, listing: list[ConversationSummary], total: int) -> str:
        """A numbered list, newest first: title, last activity, message count."""
        if not listing:
            return self.notice("no conversations yet")
        lines = []
        for number, item in enumerate(listing, 1):
            title = one_line(item.title) or f"(untitled, {one_line(item.name)})"
            when = local_time(item.last_activity)
            count = f"{item.message_count} message" + ("" if item.message_count == 1 else "s")
            lines.append(f"{number:>3}. {title}  ·  {when}  ·  {count}\n")
        if total > len(listing):
            lines.append(self.notice(f"the newest {len(listing)} of {total}"))
        return "".join(lines)
