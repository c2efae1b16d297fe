"""Settings shared by every Parley process."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.catalog import ModelOffer, check_catalog, default_catalog
from runtime.logs import LogFormat

#: The system prompt of sessions that give none of their own: tiny instruction-tuned
#: models need one that says how to answer.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Reply in English."


class CommonSettings(BaseSettings):
    """Settings that the server and the worker must agree on.

    Read from the environment and from a ``.env`` file in the working directory.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6380/0",
        description="Redis with RedisJSON (the embedded one by default); "
        "redis+sentinel://... for the primary Redis Sentinel names.",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must hold a message before its `queued` goes out, and "
        "a reply once recorded (Redis WAIT); 0: none waited for.",
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        gt=0,
        description="Longest wait (ms) for REDIS_WAIT_REPLICAS replicas; then a warning "
        "is logged and Parley goes on.",
    )
    session_ttl_seconds: int = Field(
        default=3600, gt=0, description="A session lives this long (s) after its last activity."
    )
    owner_ttl_seconds: int = Field(
        default=30 * 86_400,
        gt=0,
        description="An owner (the identity that lists its conversations) lives this long "
        "(s) after its last use.",
    )
    owner_unused_ttl_seconds: int = Field(
        default=600,
        gt=0,
        description="An owner without a conversation lives this long (s) after POST /owner; "
        "its first conversation extends it to OWNER_TTL_SECONDS.",
    )
    message_stream_maxlen: int = Field(
        default=100_000,
        gt=0,
        description="Approximate bound (entries) of each partition's message stream; "
        "only entries the workers have acknowledged are ever trimmed.",
    )
    max_backlog: int = Field(
        default=10_000,
        gt=0,
        description="Messages of one partition not yet finished by the workers (pending or "
        "not yet read), at most; beyond, new messages are refused with `overloaded`.",
    )
    max_session_messages: int = Field(
        default=500,
        gt=0,
        description="User messages of one session, at most; beyond, `session_full`.",
    )
    max_session_bytes: int = Field(
        default=2_000_000,
        ge=1024,
        description="Bytes one session may hold: the JSON text of its messages, replies "
        "and earlier versions of turns; a message or a regenerate or edit that would take "
        "it past this is refused with `session_full` (a reply is never cut for it, so a "
        "session may pass it by one reply).",
    )
    events_maxlen: int = Field(
        default=1000,
        gt=0,
        description="Approximate bound (entries) of each session's event stream, kept for resume.",
    )
    redis_max_connections: int = Field(
        default=32, gt=1, description="Redis connections of one process, at most."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: LogFormat = Field(
        default="text", description="Log lines as text, or one JSON object a line (json)."
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        description="OpenTelemetry collector (OTLP/HTTP base URL, e.g. http://127.0.0.1:4318): "
        "each reply's trace goes to its /v1/traces. Empty: tracing is off.",
    )
    model_tokens_per_session: int = Field(
        default=100_000,
        gt=0,
        description="Model tokens (prompt and reply) one session may use per QUOTA_PERIOD_S.",
    )
    model_tokens_per_client: int = Field(
        default=500_000,
        gt=0,
        description="Model tokens the sessions of one client address may use per period.",
    )
    quota_period_s: float = Field(
        default=86_400.0, gt=0, description="Period (s) of the model-token quotas."
    )
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="System prompt of sessions that give none of their own (workers send "
        "it; servers count it when they check that a message fits the model's context).",
    )
    models: list[ModelOffer] = Field(
        default_factory=default_catalog,
        description="The models sessions may choose (JSON list of {id, label, description, "
        "api_model}); the first is the default. Default: one, `default`, the worker's own.",
    )

    _check_models = field_validator("models")(check_catalog)

    @property
    def default_model(self) -> str:
        """The id of the catalog's default model (its first)."""
        return self.models[0].id

    def offer(self, model_id: str) -> ModelOffer | None:
        """The catalog's model ``model_id`` ("" : the default), or None if it has none."""
        wanted = model_id or self.default_model
        return next((m for m in self.models if m.id == wanted), None)
