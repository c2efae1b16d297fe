"""The README documents every setting and every error code the code has."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from protocol.wire import ErrorCode
from server.config import ServerSettings
from stack.run import StackSettings
from worker.config import WorkerSettings

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (Path(__file__).parent.parent / ".env.example").read_text(encoding="utf-8")


@pytest.mark.parametrize("settings", [ServerSettings, WorkerSettings, StackSettings])
def test_every_setting_is_documented(settings: type[BaseSettings]) -> None:
    missing = [n.upper() for n in settings.model_fields if f"`{n.upper()}`" not in README]
    assert not missing, f"settings missing from the README's tables: {missing}"
    absent = [n.upper() for n in settings.model_fields if n.upper() not in ENV_EXAMPLE]
    assert not absent, f"settings missing from .env.example: {absent}"


def test_every_error_code_is_documented() -> None:
    missing = [code.value for code in ErrorCode if f"| `{code.value}` |" not in README]
    assert not missing, f"error codes missing from the README: {missing}"


def test_readme_shows_the_two_commands_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
