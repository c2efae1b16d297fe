"""Sessions: ``POST /token`` and ``GET /refresh_token``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from protocol.wire import SessionView
from server.admission import admit_session
from server.deps import SettingsDep, StoreDep, session_gone, well_formed
from storage.store import SessionExpired

router = APIRouter(tags=["sessions"])


@router.post("/token", response_model=SessionView, dependencies=[Depends(admit_session)])
async def create_token(
    name: Annotated[str, Query(description="The person's name.")],
    store: StoreDep,
    settings: SettingsDep,
) -> SessionView:
    """Start a session: a new UUID4 token, valid ``SESSION_TTL_SECONDS`` after last use.

    Errors: 422 if ``name`` is missing; 400 if it is empty, blank or too long; 429 with
    ``Retry-After`` past ``RATE_SESSIONS_PER_CLIENT`` (see :mod:`server.admission`).
    """
    name = name.strip()
    if not name:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="name must not be empty")
    if len(name) > settings.max_name_chars:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"name must be at most {settings.max_name_chars} characters",
        )
    session = await store.create_session(name)
    return session.view()


@router.get("/refresh_token", response_model=SessionView)
async def refresh_token(
    token: Annotated[str, Query(description="The session token.")], store: StoreDep
) -> SessionView:
    """The session and its history in conversation order; renews the session's TTL.

    Errors: 400 ``Session expired or does not exist`` for a malformed, unknown or
    expired token.
    """
    if not well_formed(token):
        raise session_gone()
    try:
        session = await store.get_session(token)
    except SessionExpired as e:
        raise session_gone() from e
    return session.view()
