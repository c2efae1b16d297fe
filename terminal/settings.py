"""What the terminal client keeps between runs: an owner token per server, and a name.

One small JSON file, ``$XDG_CONFIG_HOME/parley/terminal.json`` (``~/.config/parley/`` when
``XDG_CONFIG_HOME`` is unset), readable by its user alone (mode 0600, its folder 0700)::

    {"owners": {"http://127.0.0.1:8000": "<owner token>"}, "name": "Ada"}

The owner token is a bearer credential: whoever holds it lists and deletes the owner's
conversations. It is never printed or logged; this module is the only code that reads
or writes it to disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

logger = logging.getLogger(__name__)

FILE_NAME = "terminal.json"


class Saved(BaseModel):
    """The file's contents."""

    model_config = ConfigDict(extra="ignore")

    owners: dict[str, str] = {}
    name: str | None = None


def settings_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the file lives, following the XDG base directory rules.

    Args:
        environ: the environment to read ``XDG_CONFIG_HOME`` and ``HOME`` from
            (``os.environ`` if None).
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    # The XDG rules ignore a relative path: it would depend on the working directory.
    root = (
        Path(base) if os.path.isabs(base) else Path(env.get("HOME") or "~").expanduser() / ".config"
    )
    return root / "parley" / FILE_NAME


class ClientSettings:
    """The file at ``path``, read once and written on each change.

    A missing or unreadable file counts as empty (a new owner is made); an unreadable
    one is logged (its path, never its contents) and replaced on the next write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = self._read()

    def _read(self) -> Saved:
        try:
            return Saved.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return Saved()
        except (OSError, ValidationError) as e:
            logger.warning("ignoring unreadable %s (%s)", self.path, type(e).__name__)
            return Saved()

    def owner(self, server: str) -> str | None:
        """The owner token kept for ``server`` (a base URL), if any."""
        return self._saved.owners.get(_key(server))

    def set_owner(self, server: str, owner: str) -> None:
        """Keep ``owner`` as ``server``'s owner token.

        Raises:
            OSError: the file could not be written.
        """
        owners = self._saved.owners | {_key(server): owner}
        self._write(self._saved.model_copy(update={"owners": owners}))

    @property
    def name(self) -> str | None:
        """The name last used for a new conversation."""
        return self._saved.name

    def set_name(self, name: str) -> None:
        """Keep ``name`` for the next conversations.

        Raises:
            OSError: the file could not be written.
        """
        if name != self._saved.name:
            self._write(self._saved.model_copy(update={"name": name}))

    def _write(self, saved: Saved) -> None:
        """Replace the file with ``saved``: a new file of mode 0600 renamed over it, so a
        crash leaves the old file or the new one, and the token is never readable by
        others, not even for a moment."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file left over
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                fd = -1
                file.write(json.dumps(saved.model_dump(), indent=2) + "\n")
            os.replace(temporary, self.path)
        finally:
            if fd >= 0:
                os.close(fd)
            temporary.unlink(missing_ok=True)
        self._saved = saved


def _key(server: str) -> str:
    return server.rstrip("/")
