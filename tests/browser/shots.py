"""Screenshots for the README, taken by the browser tests."""

from __future__ import annotations

import os
import shutil

from playwright.async_api import Page

from tests.browser.webclient import ROOT
from tests.support.browser import snap

DOCS = ROOT / "docs"


async def readme_shot(page: Page, name: str) -> None:
    """A screenshot for the README: ``test-artifacts/browser/<name>.png`` always, and
    ``docs/<name>.png`` too when ``PARLEY_README_SHOTS=1`` (so ordinary runs leave the
    committed images alone)."""
    path = await snap(page, name)
    if os.environ.get("PARLEY_README_SHOTS") == "1":
        shutil.copyfile(path, DOCS / f"{name}.png")
