"""The models a deployment offers: the catalog that servers show and workers serve.

Servers and workers read the same ``MODELS`` setting (:class:`runtime.config.CommonSettings`):
a JSON list of :class:`ModelOffer`, the first of them the default. A session names one by
its ``id``; each worker serves those listed in its ``WORKER_MODELS`` (default: all of
them) through its own model API.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

#: The catalog of a deployment that configures none: one model, the worker's own.
DEFAULT_MODEL_ID: Final = "default"


class ModelOffer(BaseModel):
    """One model of the catalog.

    Attributes:
        id: its name in sessions, stream keys and metric labels: 1 to 40 lowercase
            letters, digits, ``.``, ``_`` or ``-``.
        label: what people see ("" : the id).
        description: a line about it, for people.
        api_model: the ``model`` sent to the chat completions API; None: the worker's
            own (``LLM_MODEL``, or its API's default).
        context_tokens: the model's context window (tokens, prompt and reply): a
            message whose system prompt and text cannot fit in it is refused at
            admission (``message_too_long``); None: unknown, not checked.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,39}$")
    label: str = Field(default="", max_length=100)
    description: str = Field(default="", max_length=500)
    api_model: str | None = Field(default=None, min_length=1, max_length=200)
    context_tokens: int | None = Field(default=None, ge=16)


def default_catalog() -> list[ModelOffer]:
    """The catalog when ``MODELS`` is not set: the worker's own model, as ``default``."""
    return [ModelOffer(id=DEFAULT_MODEL_ID, label="Default model")]


def check_catalog(models: list[ModelOffer]) -> list[ModelOffer]:
    """``models`` if it is a usable catalog.

    Raises:
        ValueError: it is empty, or two models share an id.
    """
    if not models:
        raise ValueError("MODELS must list at least one model")
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ValueError(f"MODELS lists a model id twice: {ids}")
    return models
