"""Build steps of the web client, run through the Makefile so tests and ``make`` agree."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"
DIST = CLIENT / "dist"


def make(target: str) -> None:
    """Run ``make <target>`` at the root (a no-op when it is up to date).

    Raises:
        AssertionError: make failed; its output is in the message.
    """
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"


def built_client() -> Path:
    """``client/dist``, built first if it is missing or older than the sources."""
    make("client")
    return DIST


def installed_client() -> Path:
    """``client/``, with its npm packages installed (``npm ci``) if they are not."""
    make("client-deps")
    return CLIENT
