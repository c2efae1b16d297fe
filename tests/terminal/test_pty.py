"""``python -m terminal`` at a terminal (a pseudo-terminal), end to end on the real stack:
what is typed and what streams in never share a line.

The screen is rebuilt from the bytes the client wrote (:class:`Screen`), so the test
reads lines as a person would have seen them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from terminal.render import REPLY_PREFIX
from tests.support.parley import Parley
from tests.terminal.harness import PtyClient
from tests.terminal.screen import Screen

pytestmark = pytest.mark.system


async def test_typed_text_and_a_streaming_reply_never_share_a_line(
    parley: Parley, tmp_path: Path
) -> None:
    parley.standin.tokens = 40
    parley.standin.delay_ms = 25  # about a second a reply: typing lands mid-stream
    async with PtyClient("--url", parley.url, "--name", "Ada", config_home=tmp_path) as client:
        await client.wait_for("/switch N resumes one")
        await client.wait_for("you:")  # the prompt: typing before it would echo twice
        client.type("hello\r")
        await client.wait_for("sit amet")  # the reply is streaming
        client.type("typed while streaming")
        await client.wait_for("elit lorem")  # it streams on under the typed text
        client.type("\r\x04")  # Enter, then Ctrl-D: exit once both replies are in
        assert await client.exit_status() == 0, client.output
        screen = Screen(client.columns)
        screen.feed(client.output)

    lines = [line for line in screen.lines() if line]
    typed = [line for line in lines if "typed" in line]
    replies = [line for line in lines if line.startswith(REPLY_PREFIX)]
    assert typed[0] == "you: typed while streaming", lines
    assert "hello" not in lines, lines  # not echoed by the terminal before the prompt
    assert [line for line in lines if line.startswith("you: hello")] == ["you: hello"], lines
    # Each reply once, whole, on lines of its own (a stale partial copy would show too).
    assert len(replies) == 2, lines
    assert replies[0].startswith(f"{REPLY_PREFIX}Reply to: hello lorem ipsum"), lines
    assert replies[1].startswith(f"{REPLY_PREFIX}Reply to: typed while streaming lorem"), lines
    assert lines.index(typed[0]) < lines.index(replies[0])  # sent while the first streamed
    for line in lines:
        assert not ("you:" in line and "lorem" in line), lines
