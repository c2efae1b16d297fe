"""The web client's own checks, run by ``make test`` with the rest: its Vitest suite
(the conversation reducer, reconnecting and resuming) in Node."""

from __future__ import annotations

import os
import subprocess

from tests.browser.webclient import installed_client


def test_vitest_suite_passes() -> None:
    client = installed_client()
    result = subprocess.run(
        ["npm", "test", "--silent", "--", "--reporter=dot"],
        cwd=client,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1", "CI": "1"},
    )
    assert result.returncode == 0, f"vitest failed:\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout
