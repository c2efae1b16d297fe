"""README.md: the short page a newcomer reads first; the documentation site has the rest
(tests/test_docs.py checks the site against the code)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_shows_the_two_commands_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 150


def test_readme_has_one_picture_and_one_diagram() -> None:
    pictures = re.findall(r"!\[[^\]]+\]\((docs/[^)]+\.png)\)", README)
    assert len(pictures) == 1 and (ROOT / pictures[0]).is_file()
    assert README.count("```mermaid") == 1


def test_readme_links_into_the_site() -> None:
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#[^)]*)?\)", README)
    assert links, "the README says what to read next"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to pages that do not exist: {missing}"
