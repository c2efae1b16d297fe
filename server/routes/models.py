"""The models a session may choose: ``GET /models``, and the checks of a choice."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from protocol.wire import ModelInfo, ModelList
from server.config import ServerSettings
from server.deps import PoolsDep, SettingsDep

router = APIRouter(tags=["models"])


class ModelChoice(BaseModel):
    """A session's choice of model and system prompt (``POST /token``'s optional body;
    ``PATCH /session`` takes these fields too). A field left out keeps its value: the
    catalog's default model and the deployment's system prompt for a new session."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="A model id from GET /models.")
    system_prompt: str | None = Field(
        default=None,
        description="The session's own system prompt (at most MAX_SYSTEM_PROMPT_CHARS "
        "characters); empty: the deployment's.",
    )


def checked_choice(choice: ModelChoice, settings: ServerSettings) -> dict[str, str]:
    """The session fields ``choice`` sets (``model``, ``system_prompt``), checked.

    Raises:
        HTTPException: 400 for a model the catalog does not offer, or a system prompt
            over ``MAX_SYSTEM_PROMPT_CHARS`` characters (0: custom prompts are refused).
    """
    fields: dict[str, str] = {}
    if choice.model is not None:
        offer = settings.offer(choice.model) if choice.model else None
        if offer is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=f"unknown model {choice.model[:50]!r}; GET /models lists the models",
            )
        fields["model"] = offer.id
    if choice.system_prompt is not None:
        prompt = choice.system_prompt.strip()
        limit = settings.max_system_prompt_chars
        if len(prompt) > limit:
            detail = (
                f"system_prompt must be at most {limit} characters"
                if limit
                else "this deployment does not take a session's own system prompt"
            )
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=detail)
        fields["system_prompt"] = prompt
    return fields


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep, pools: PoolsDep) -> ModelList:
    """The models a session may choose (``MODELS``), the default first, and whether a
    live worker serves each now.

    Errors: 503 if Redis is unreachable.
    """
    default = settings.default_model
    return ModelList(
        models=[
            ModelInfo(
                id=m.id,
                label=m.label or m.id,
                description=m.description,
                default=m.id == default,
                available=await pools.served(m.id),
            )
            for m in settings.models
        ]
    )
