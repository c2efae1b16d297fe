"""Settings of ``python -m server``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from server.security import SecuritySettings


class ServerSettings(SecuritySettings):
    """Settings of a server process (environment variables, or a ``.env`` file)."""

    max_message_chars: int = Field(
        default=4000, gt=0, description="Longest user message (characters)."
    )
    max_pending_messages: int = Field(
        default=20, gt=0, description="Messages of one session waiting for a reply, at most."
    )
    max_name_chars: int = Field(default=100, gt=0, description="Longest session name.")
    socket_queue_size: int = Field(
        default=1024, gt=0, description="Events buffered per socket before it resyncs."
    )
    ws_max_frame_bytes: int = Field(
        default=1_048_576, gt=0, description="Largest WebSocket frame accepted (bytes)."
    )
    web_dist: Path = Field(
        default=Path("client/dist"), description="Built web client served at / if present."
    )
