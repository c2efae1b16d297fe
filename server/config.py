"""Settings of ``python -m server``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from server.identity import IdentitySettings
from server.security import SecuritySettings


class ServerSettings(SecuritySettings, IdentitySettings):
    """Settings of a server process (environment variables, or a ``.env`` file)."""

    max_message_chars: int = Field(
        default=4000, gt=0, description="Longest user message (characters)."
    )
    max_pending_messages: int = Field(
        default=20, gt=0, description="Messages of one session waiting for a reply, at most."
    )
    max_name_chars: int = Field(default=100, gt=0, description="Longest session name.")
    max_conversations_per_owner: int = Field(
        default=200,
        gt=0,
        description="Live conversations one owner may have at once; beyond, `POST "
        "/token?owner=` answers 409.",
    )
    max_title_chars: int = Field(
        default=100, gt=0, description="Longest conversation title (characters)."
    )
    max_system_prompt_chars: int = Field(
        default=4000,
        ge=0,
        description="Longest system prompt a session may give itself (characters); `0`: "
        "sessions keep the deployment's `SYSTEM_PROMPT`.",
    )
    model_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="A model none of whose workers has been alive for this long (s) is "
        "unavailable: its new messages are refused and those waiting are closed "
        "with `model_unavailable`. `0`: messages wait for a worker however long.",
    )
    max_message_versions: int = Field(
        default=20,
        gt=0,
        description="Earlier versions one turn keeps (each `regenerate` or `edit` adds one); "
        "beyond, `too_many_versions`. An edit's text is bounded by "
        "`MAX_MESSAGE_CHARS`, as a message's.",
    )
    max_attempts_per_turn: int = Field(
        default=20,
        gt=0,
        description="Regenerates and edits of one turn, at most, failed replies included (a "
        "failed reply keeps no version, so `MAX_MESSAGE_VERSIONS` alone would not "
        "bound them); beyond, `too_many_attempts`.",
    )
    socket_queue_size: int = Field(
        default=1024, gt=0, description="Events buffered per socket before it resyncs from Redis."
    )
    ws_max_frame_bytes: int = Field(
        default=1_048_576,
        gt=0,
        description="Largest WebSocket frame accepted (bytes); larger closes with 1009.",
    )
    ws_send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A socket whose client reads nothing for this long (s) while events wait to "
        "go out (or leaves a keepalive ping unanswered) is closed with 1013.",
    )
    ws_max_queue: int = Field(
        default=4,
        gt=0,
        description="Incoming messages uvicorn buffers per socket before it stops reading it "
        "(uvicorn's `websockets` implementation; Parley's protocol stops reading as "
        "soon as one message waits).",
    )
    max_sockets_per_session: int = Field(
        default=8,
        gt=0,
        description="Sockets one session may hold at once, over every server; past it the "
        "handshake is refused with HTTP 429.",
    )
    socket_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A socket's lease lapses this long (s) after its server last renewed it "
        "(every third of it): the sockets of a server that died stop counting.",
    )
    resume_max_events: int = Field(
        default=200, gt=0, description="Events replayed by one `resume` command, at most."
    )
    resume_rate_per_s: float = Field(
        default=2.0, gt=0, description="`resume` commands per second and socket, on average."
    )
    resume_burst: int = Field(
        default=5, gt=0, description="`resume` commands a socket may send at once."
    )
    web_dist: Path = Field(
        default=Path("client/dist"), description="Built web client served at `/` if present."
    )
