"""Settings of ``python -m worker``."""

from __future__ import annotations

import os
import socket

from pydantic import Field, SecretStr

from runtime.config import CommonSettings

HF_ROUTER_URL = "https://router.huggingface.co/v1"
LOCAL_MODEL_URL = "http://127.0.0.1:8081/v1"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"

# Measured with the embedded SmolLM2-135M-Instruct on six one-fact questions (README,
# Embedded model): this prompt at temperature 0.2 answered 21 of 24 samples right, the
# earlier transcript-style prompt 12 of 24. Without "Reply in English" the tiny model
# drifts into French whenever France is mentioned.


class WorkerSettings(CommonSettings):
    """Settings of a worker process (environment variables, or a ``.env`` file)."""

    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base URL (TGI, vLLM, llama.cpp). Unset: the "
        "Hugging Face router if HF_TOKEN is set, else the embedded local model.",
    )
    llm_model: str | None = Field(
        default=None, description="Model name sent to the API (default depends on the API)."
    )
    hf_token: SecretStr | None = Field(
        default=None,
        description="Hugging Face access token; sent only to the Hugging Face router.",
    )
    llm_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key sent to LLM_BASE_URL (any endpoint but the Hugging Face router).",
    )
    hf_model: str = Field(
        default="Qwen/Qwen2.5-7B-Instruct",
        description="Model asked of the Hugging Face router when LLM_MODEL is unset.",
    )
    llm_connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout (s).")
    llm_read_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest silence (s) allowed between two chunks."
    )
    llm_max_retries: int = Field(default=3, ge=0, description="Retries of 429/5xx/timeouts.")
    llm_backoff_base_s: float = Field(
        default=0.5,
        gt=0,
        description="First retry waits this long (s), doubling, plus jitter up to as much.",
    )
    llm_backoff_max_s: float = Field(default=8.0, gt=0, description="Longest retry wait (s).")
    llm_max_tokens: int = Field(default=256, gt=0, description="Longest reply (tokens).")
    reply_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest time (s) one reply may take; beyond, it is cut and marked.",
    )
    reply_max_chars: int = Field(
        default=16_000,
        gt=0,
        description="Longest reply (characters); beyond, it is cut and marked.",
    )
    llm_temperature: float = Field(default=0.2, ge=0, description="Sampling temperature.")
    llm_include_usage: bool = Field(
        default=True,
        description="Ask the model for its token usage (stream_options); off for an API "
        "that refuses the field (usage is then estimated).",
    )
    memory_max_messages: int = Field(
        default=20, ge=1, description="Most history messages (user and assistant) in a prompt."
    )
    memory_max_tokens: int = Field(
        default=1500,
        ge=1,
        description="Most history tokens (summary and turns; estimated, calibrated by the "
        "model's own counts) in a prompt.",
    )
    memory_summary: bool = Field(
        default=True,
        description="Fold the oldest turns into a rolling summary once they outgrow the "
        "trigger (a model call between replies, never delaying one); the prompt then "
        "holds the summary and the turns after it.",
    )
    memory_summary_max_tokens: int = Field(
        default=200, ge=16, description="Longest summary (model tokens)."
    )
    memory_summary_trigger_tokens: int = Field(
        default=1000,
        ge=1,
        description="Summarize once the turns after the summary use more tokens than this "
        "(or nearly MEMORY_MAX_MESSAGES messages); half of it is left unsummarized.",
    )
    claim_idle_ms: int = Field(
        default=5000, gt=0, description="Pending entries idle this long (ms) are taken over."
    )
    consumer_idle_delete_ms: int = Field(
        default=600_000,
        gt=0,
        description="A consumer of a group this worker reads that has been idle this long "
        "(ms) and holds no pending entry is deleted (a crashed worker's, a server's).",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="An entry whose delivery count (1 when read, plus 1 per failed try) "
        "reaches this goes to the dead-letter stream.",
    )
    max_crashes: int = Field(
        default=10,
        ge=1,
        description="Attempts at one message that may end with their worker dying before "
        "it goes to the dead-letter stream.",
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Tries at one title or summary job (its delivery count: 1 when read, "
        "plus 1 each time it is taken over) before it is given up and acknowledged.",
    )
    worker_concurrency: int = Field(
        default=32, ge=1, description="Replies generated at once by one worker process."
    )
    worker_max_in_flight: int = Field(
        default=512, ge=1, description="Entries read and not yet acked (incl. waiting their turn)."
    )
    conversation_titles: bool = Field(
        default=True,
        description="After a conversation's first reply, ask the model for a short title "
        "(between replies, never delaying one).",
    )
    stream_flush_ms: float = Field(
        default=10.0, ge=0, description="Token deltas are coalesced over this window (ms)."
    )
    read_block_ms: int = Field(
        default=1000, gt=0, description="XREADGROUP BLOCK time (ms); also how fast a stop is seen."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, in-flight replies get this long (s)."
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve Prometheus metrics on this port (0: off)."
    )
    worker_models: str = Field(
        default="",
        description="The catalog models (MODELS ids, comma-separated) this worker serves, "
        "through its own model API; empty: all of them.",
    )
    consumer_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This worker's name in the consumer group.",
    )

    def served_models(self) -> list[str]:
        """The ids of the catalog models this worker serves (``WORKER_MODELS``).

        Raises:
            ValueError: ``WORKER_MODELS`` names a model the catalog does not offer.
        """
        chosen = [m.strip() for m in self.worker_models.split(",") if m.strip()]
        offered = [m.id for m in self.models]
        unknown = [m for m in chosen if m not in offered]
        if unknown:
            raise ValueError(f"WORKER_MODELS names models MODELS does not offer: {unknown}")
        return list(dict.fromkeys(chosen)) or offered

    def resolved_llm(self) -> tuple[str, str, str | None]:
        """``(base_url, model, api_key)`` as the contract selects them.

        ``LLM_BASE_URL`` if set; else the Hugging Face router if ``HF_TOKEN`` is set;
        else the embedded local model. The key goes where it belongs and nowhere else:
        ``HF_TOKEN`` only to the Hugging Face router (also when ``LLM_BASE_URL`` names
        it), ``LLM_API_KEY`` only to another ``LLM_BASE_URL``.
        """
        hf_token = self.hf_token.get_secret_value() if self.hf_token else None
        if self.llm_base_url:
            if self.llm_base_url.rstrip("/") == HF_ROUTER_URL:
                key = hf_token or _secret(self.llm_api_key)
                return self.llm_base_url, self.llm_model or self.hf_model, key
            return (
                self.llm_base_url,
                self.llm_model or LOCAL_MODEL_NAME,
                _secret(self.llm_api_key),
            )
        if hf_token:
            return HF_ROUTER_URL, self.llm_model or self.hf_model, hf_token
        return LOCAL_MODEL_URL, self.llm_model or LOCAL_MODEL_NAME, None


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None
