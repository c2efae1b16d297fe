"""Running ``python -m terminal`` as a person would: from a pipe, or in a pseudo-terminal.

Each run gets the test's own config folder (``XDG_CONFIG_HOME``), so the owner token it
keeps is the test's alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
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


async def run_cli(*args: str, stdin: str, config_home: Path) -> tuple[int, str]:
    """Run ``python -m terminal ARGS`` with ``stdin`` as what is typed; (status, output),
    the output being stdout then stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "terminal",
        *args,
        cwd=ROOT,
        env=cli_env(config_home),
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
