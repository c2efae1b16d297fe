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
        description="OpenAI-compatible API root (TGI, vLLM, llama.cpp, …). Unset: the Hugging "
        "Face router if `HF_TOKEN` is set, else the embedded model "
        "(`http://127.0.0.1:8081/v1`).",
    )
    llm_model: str | None = Field(
        default=None,
        description="Model name sent to the API (`smollm2-135m-instruct` for the embedded model).",
    )
    hf_token: SecretStr | None = Field(
        default=None,
        description="Hugging Face access token; selects `https://router.huggingface.co/v1`, and "
        "is sent only there (never to another `LLM_BASE_URL`).",
    )
    llm_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key sent to `LLM_BASE_URL` when it is not the Hugging Face router.",
    )
    hf_model: str = Field(
        default="Qwen/Qwen2.5-7B-Instruct",
        description="Model asked of the Hugging Face router when `LLM_MODEL` is unset.",
    )
    llm_connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout (s).")
    llm_read_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest silence (s) allowed before and between chunks."
    )
    llm_max_retries: int = Field(
        default=3, ge=0, description="Retries of 429, 5xx, timeouts and cut streams."
    )
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
        description="Longest time (s) one reply may take; beyond, it is cut and marked "
        '`"truncated": "time"`.',
    )
    reply_max_chars: int = Field(
        default=16_000,
        gt=0,
        description='Longest reply (characters); beyond, it is cut and marked `"truncated": '
        '"length"`.',
    )
    llm_temperature: float = Field(
        default=0.2,
        ge=0,
        description="Sampling temperature (low, for tiny models: see Configuration, Embedded "
        "model).",
    )
    llm_include_usage: bool = Field(
        default=True,
        description="Ask the model for its token count (`stream_options.include_usage`), "
        "charged to the quotas; set `false` for an API that refuses the field (the "
        "count is then estimated).",
    )
    memory_max_messages: int = Field(
        default=20, ge=1, description="Most history messages (user and assistant) in a prompt."
    )
    memory_max_tokens: int = Field(
        default=1500,
        ge=1,
        description="Most history tokens in a prompt: the summary and the turns after it "
        "(estimated, the estimate calibrated by the model's own counts; see Design, "
        "Short-term memory).",
    )
    memory_summary: bool = Field(
        default=True,
        description="Fold the oldest turns into a rolling summary once they near the budget (a "
        "model call between replies, never delaying one); the prompt then holds the "
        "summary and the turns after it. `false`: the oldest turns just leave the "
        "prompt.",
    )
    memory_summary_max_tokens: int = Field(
        default=200,
        ge=16,
        description="Longest summary (model tokens: the model's `max_tokens` for it).",
    )
    memory_summary_trigger_tokens: int = Field(
        default=1000,
        ge=1,
        description="A summary is made once the turns after it use more tokens than this, or "
        "more than `MEMORY_MAX_MESSAGES - 2` messages; the oldest are folded until "
        "half of both is left. Keep it below `MEMORY_MAX_TOKENS - "
        "MEMORY_SUMMARY_MAX_TOKENS`, so the next prompts still hold every turn "
        "while the job waits for an idle worker.",
    )
    claim_idle_ms: int = Field(
        default=5000,
        gt=0,
        description="A pending entry idle this long (ms) is taken over from its consumer.",
    )
    consumer_idle_delete_ms: int = Field(
        default=600_000,
        gt=0,
        description="A consumer of a group this worker reads that has been idle this long (ms) "
        "and holds no pending entry is deleted (a crashed worker's, a server's; see "
        "Design, Consumers); the groups are swept every quarter of it.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="An entry whose delivery count reaches this goes to the dead-letter stream. "
        "The count is 1 when the entry is read and grows by one with each try that "
        "fails in a live worker (an error in the attempt, or before any attempt "
        "could begin); a takeover never counts.",
    )
    max_crashes: int = Field(
        default=10,
        ge=1,
        description="Attempts at one message that may end with their worker's death (crash, "
        "kill, Redis lost mid-reply) before it goes to the dead-letter stream.",
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Tries at one title or summary job before it is given up and acknowledged. "
        "Each try is one delivery of the job's entry (1 when read, plus 1 each time "
        "it is taken over after a failed try or its worker's death); a try that "
        "raises is logged with its traceback and counted in "
        "`parley_job_failures_total{kind}`.",
    )
    worker_concurrency: int = Field(
        default=32, ge=1, description="Replies one worker process generates at once."
    )
    worker_max_in_flight: int = Field(
        default=512,
        ge=1,
        description="Entries read and not yet acked, including those waiting their turn.",
    )
    conversation_titles: bool = Field(
        default=True,
        description="After a conversation's first reply, ask the model for a short title "
        "(between replies, never delaying one); `false` to never ask.",
    )
    stream_flush_ms: float = Field(
        default=10.0,
        ge=0,
        description="Token deltas arriving within this window (ms) go out as one event.",
    )
    read_block_ms: int = Field(
        default=1000,
        gt=0,
        description="`XREADGROUP BLOCK` time (ms); also how soon a stop is noticed.",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, in-flight replies get this long (s) to finish."
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on `127.0.0.1:<port>` (0: off).",
    )
    worker_models: str = Field(
        default="",
        description="The models of `MODELS` this worker serves (ids, comma-separated), through "
        "its own `LLM_BASE_URL`: one pool per model, e.g. GPU workers with "
        "`WORKER_MODELS=large` and CPU workers with `WORKER_MODELS=small`. Empty: "
        "every model of the catalog.",
    )
    consumer_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This worker's name in the consumer group.",
        json_schema_extra={"shown_default": "<host>-<pid>"},
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
