"""Running ``python -m terminal`` as a person would: from a pipe, or in a pseudo-terminal.

Each run gets the test's own config folder (``XDG_CONFIG_HOME``), so the owner token it
keeps is the test's alone.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env(config_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: the test's config folder, unbuffered output, wide
    lines (so a reply is never wrapped where a test looks for it), no colours."""
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "FORCE_COLOR"}}
    return env | {
        "XDG_CONFIG_HOME": str(config_home),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
        **extra,
    }


async def run_cli(
    *args: str, stdin: str, config_home: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``python -m terminal ARGS`` with ``stdin`` as what is typed and ``env`` added
    to its environment; (status, output), the output being stdout then stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "terminal",
        *args,
        cwd=ROOT,
        env=cli_env(config_home, **(env or {})),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


def kept_owner(config_home: Path) -> str:
    """The one owner token the client keeps in ``config_home``."""
    saved = json.loads((config_home / "parley" / "terminal.json").read_text())
    (owner,) = saved["owners"].values()
    assert isinstance(owner, str)
    return owner


class PtyClient:
    """``python -m terminal ARGS`` on a pseudo-terminal ``rows`` by ``columns``: what a
    person at a terminal sees (``output``) and types (:meth:`type`).

    Colours are off (``NO_COLOR``) and prompt_toolkit asks the terminal for no cursor
    position report, which a pty would never answer.
    """

    def __init__(self, *args: str, config_home: Path, rows: int = 30, columns: int = 100) -> None:
        self.args = args
        self.config_home = config_home
        self.rows = rows
        self.columns = columns
        self.output = ""
        self._seen = 0  # where the last wait_for found its text
        self._changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PtyClient:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.columns, 0, 0))
        env = cli_env(self.config_home, TERM="xterm", NO_COLOR="1", PROMPT_TOOLKIT_NO_CPR="1")
        del env["COLUMNS"]  # the pty's own size
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "terminal", *self.args,
            cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)
        return self

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the client exited and closed its end
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.output += data.decode(errors="replace")
        self._changed.set()

    async def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        """Wait until ``text`` has been written to the terminal, after what the previous
        call waited for.

        Raises:
            TimeoutError: it was not, within ``timeout_s`` (s).
        """
        async with asyncio.timeout(timeout_s):
            while (found := self.output.find(text, self._seen)) < 0:
                self._changed.clear()
                await self._changed.wait()
        self._seen = found + len(text)

    def type(self, keys: str) -> None:
        """Type ``keys`` (``\\r`` is Enter, ``\\x04`` Ctrl-D)."""
        os.write(self.master, keys.encode())

    async def exit_status(self, timeout_s: float = 30.0) -> int:
        """Wait for the client to exit; its status."""
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
