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
        description="Redis ≥ 7.2 with RedisJSON (the embedded one by default). A Redis Cluster: "
        "any node's URL with `?cluster=true`, e.g. "
        "`redis://10.0.0.5:7000/0?cluster=true`. The primary Redis Sentinel names: "
        "`redis+sentinel://10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379/mymaster/0` "
        "(see Operations, Redis Sentinel).",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must hold a message before its `queued` goes out, and a "
        "reply once it is recorded (Redis `WAIT` after the enqueue, regenerate/edit "
        "and finish scripts); `0`: none waited for. For a single Redis with "
        "replicas or Sentinel; refused on a Redis Cluster. See Operations, Redis "
        "Sentinel.",
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        gt=0,
        description="Longest wait (ms) for `REDIS_WAIT_REPLICAS` replicas. Fewer within it (a "
        "replica down, or none left after a failover) is logged as a warning and "
        "the write stands: the client is told as usual.",
    )
    session_ttl_seconds: int = Field(
        default=3600,
        gt=0,
        description="A session lives this long (s) after its last activity (its messages "
        "renew it lazily: it may end up to 1% of this, at most 10 s, sooner).",
    )
    owner_ttl_seconds: int = Field(
        default=30 * 86_400,
        gt=0,
        description="An owner (the token that lists its conversations) lives this long (s) "
        "after its last use.",
    )
    owner_unused_ttl_seconds: int = Field(
        default=600,
        gt=0,
        description="An owner without a conversation lives this long (s) after `POST /owner`; "
        "its first conversation (`POST /token?owner=`) extends it to "
        "`OWNER_TTL_SECONDS`, and listing an unused owner does not.",
    )
    message_stream_maxlen: int = Field(
        default=100_000,
        gt=0,
        description="Acknowledged entries kept in each partition's message stream (about: "
        "trimmed once 100 more have gathered). Entries the workers have not "
        "acknowledged are never trimmed.",
    )
    max_backlog: int = Field(
        default=10_000,
        gt=0,
        description="Messages of one partition not yet finished by the workers (pending or not "
        "yet read), at most; beyond, new messages are refused with `overloaded`.",
    )
    max_session_messages: int = Field(
        default=500,
        gt=0,
        description="User messages of one session, at most; beyond, `session_full`.",
    )
    max_session_bytes: int = Field(
        default=2_000_000,
        ge=1024,
        description="Bytes one session may hold: the JSON text of its messages, "
        "replies and earlier versions of turns. A message, `regenerate` or `edit` "
        "that would take it past this is refused with `session_full`; a reply is "
        "never cut for it, so a session may pass it by one reply. The default holds "
        "about 1,400 turns of an average chat, or a full `MAX_SESSION_MESSAGES` "
        "conversation of 3.7 KB turns (see Design, Bounded resources).",
    )
    events_maxlen: int = Field(
        default=1000,
        gt=0,
        description="Approximate bound (entries) of each session's event stream, kept for resume.",
    )
    redis_max_connections: int = Field(
        default=32,
        gt=1,
        description="Redis connections of one process for commands, at most (a blocking pool; "
        "on a cluster, per node, plus one blocking read per partition in a worker).",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: LogFormat = Field(
        default="text",
        description="`text`: one readable line per event; `json`: one JSON object per line with "
        "`process` (server, worker, stack), `pid`, and the `message_id`, `session` "
        "(fingerprint) and `seq` the line names. Session tokens never appear either "
        "way (see Security).",
    )
    otel_exporter_otlp_endpoint: str = Field(
        default="",
        description="OpenTelemetry collector (OTLP/HTTP base URL, e.g. http://127.0.0.1:4318): "
        "each reply's trace goes to its /v1/traces. Empty: tracing is off.",
    )
    model_tokens_per_session: int = Field(
        default=100_000,
        gt=0,
        description="Model tokens (prompt and reply, as the model counts them) one session may "
        "use per `QUOTA_PERIOD_S`; then its messages get `quota_exceeded`.",
    )
    model_tokens_per_client: int = Field(
        default=500_000,
        gt=0,
        description="The same for all the sessions of one client address.",
    )
    quota_period_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Period (s) of the model-token quotas, from the first reply charged.",
    )
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="The system prompt of sessions that give none of their own (servers read it "
        "too, to check that a message fits the model's context).",
    )
    models: list[ModelOffer] = Field(
        default_factory=default_catalog,
        description='The models sessions may choose, a JSON list of `{"id", "label", '
        '"description", "api_model", "context_tokens"}`; the first is the default. '
        "`id` (1 to 40 of `a-z 0-9 . _ -`) is what sessions, stream keys and "
        "metrics name it by; `api_model` is the `model` sent to the chat "
        "completions API (absent: the worker's `LLM_MODEL`); `context_tokens`, the "
        "model's context window, makes servers refuse a message whose system prompt "
        "and text cannot fit it (`message_too_long`; counted at 4 bytes a token, so "
        "a refused prompt cannot fit; absent: not checked). `make run` gives the "
        "embedded model's (`PARLEY_MODEL_CTX_SIZE`).",
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
