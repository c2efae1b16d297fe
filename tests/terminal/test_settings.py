"""The file the terminal client keeps: where it lives, who may read it, what it holds."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from terminal.settings import ClientSettings, settings_path


def test_the_file_follows_xdg_config_home_else_home_config() -> None:
    assert settings_path({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path(
        "/x/cfg/parley/terminal.json"
    )
    assert settings_path({"HOME": "/h"}) == Path("/h/.config/parley/terminal.json")
    # A relative XDG_CONFIG_HOME is to be ignored (XDG base directory specification).
    assert settings_path({"XDG_CONFIG_HOME": "cfg", "HOME": "/h"}) == Path(
        "/h/.config/parley/terminal.json"
    )


def test_owner_tokens_are_kept_per_server_readable_by_the_user_alone(tmp_path: Path) -> None:
    path = tmp_path / "config" / "parley" / "terminal.json"
    settings = ClientSettings(path)
    assert settings.owner("http://a:8000") is None
    settings.set_owner("http://a:8000/", "owner-a")
    settings.set_owner("http://b:8000", "owner-b")
    settings.set_name("Ada")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = ClientSettings(path)
    assert again.owner("http://a:8000") == "owner-a"
    assert again.owner("http://b:8000/") == "owner-b"
    assert again.name == "Ada"
    assert [p.name for p in path.parent.iterdir()] == ["terminal.json"]  # no leftovers


def test_a_file_others_could_read_is_made_private_on_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "terminal.json"
    path.write_text(json.dumps({"owners": {}, "name": "Ada"}))
    path.chmod(0o644)
    settings = ClientSettings(path)
    assert settings.name == "Ada"
    settings.set_owner("http://a", "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unreadable_file_counts_as_empty_and_is_logged_without_its_contents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "terminal.json"
    path.write_text('{"owners": {"http://a": ["not-a-token-secret"]}}')
    settings = ClientSettings(path)
    assert settings.owner("http://a") is None
    assert str(path) in caplog.text and "secret" not in caplog.text
    settings.set_owner("http://a", "fresh")
    assert ClientSettings(path).owner("http://a") == "fresh"
