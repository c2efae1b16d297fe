"""What the person types: a prompt_toolkit prompt on a terminal, plain lines from a pipe.

On a terminal, :class:`PromptReader` reads each line with ``PromptSession.prompt_async``
while the caller runs inside ``patch_stdout``: whatever the conversation prints goes
above the prompt, and the replies still streaming are drawn between the two (the
``live`` callable), so typed text and streamed tokens never share a line. From a pipe,
:class:`PipeReader` reads plain lines.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import get_app
from prompt_toolkit.formatted_text import ANSI, AnyFormattedText, FormattedText


class LineReader(Protocol):
    """Where lines come from."""

    async def read(self, prompt: str) -> str | None:
        """The next line (without its newline) after showing ``prompt``; None at the end
        of input (Ctrl-D, or the pipe closed).

        Raises:
            KeyboardInterrupt: Ctrl-C on a terminal.
        """
        ...

    def refresh(self) -> None:
        """Redraw what :class:`PromptReader`'s ``live`` shows (nothing from a pipe)."""
        ...


class PipeReader:
    """Lines of a stream that is not a terminal, read without blocking the event loop.

    A daemon thread does the blocking reads: unlike ``asyncio.to_thread`` it does not
    keep the process alive at exit while it waits for a line that never comes. Prompts
    are not shown: nobody is there to read them.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._queue: asyncio.Queue[str | None] | None = None

    def _start(self) -> asyncio.Queue[str | None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for line in iter(self.stream.readline, ""):
                    loop.call_soon_threadsafe(queue.put_nowait, line)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except (RuntimeError, ValueError, OSError):
                pass  # the loop or the stream is closed: we are exiting

        threading.Thread(target=pump, name="stdin", daemon=True).start()
        return queue

    async def read(self, prompt: str) -> str | None:
        """The next line, or None once the stream has ended."""
        if self._queue is None:
            self._queue = self._start()
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)  # the end stays the end
            return None
        return line.rstrip("\r\n")

    def refresh(self) -> None:
        """Nothing to redraw."""


class PromptReader:
    """Lines typed at a terminal, with the live area drawn above the prompt.

    Args:
        live: the text (with ANSI styles) to draw above the prompt line, given the
            rows it may take; called on every redraw (None: nothing).
    """

    def __init__(self, live: Callable[[int], str] | None = None) -> None:
        self.live: Callable[[int], str] = live or (lambda rows: "")
        self.session: PromptSession[str] = PromptSession()

    def _message(self, prompt: str) -> AnyFormattedText:
        app = get_app()
        # Once a line is entered, prompt_toolkit draws the prompt one last time and
        # leaves it in the scrollback: without the live area, which goes on below.
        above = "" if app.is_done else self.live(app.output.get_size().rows - 2)
        return FormattedText([*ANSI(above).__pt_formatted_text__(), ("bold", prompt)])

    async def read(self, prompt: str) -> str | None:
        """The next line typed, or None on Ctrl-D."""
        try:
            return await self.session.prompt_async(lambda: self._message(prompt))
        except EOFError:
            return None

    def refresh(self) -> None:
        """Redraw the prompt and the live area (does nothing between prompts)."""
        self.session.app.invalidate()
