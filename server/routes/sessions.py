"""Sessions: ``POST /token`` and ``GET /refresh_token``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query, status

from protocol.wire import SessionView
from server.admission import admit_session
from server.deps import (
    BearerDep,
    IdentityDep,
    SessionTokenQuery,
    SettingsDep,
    StoreDep,
    bounded_text,
    credential,
    owner_credential,
    session_gone,
    well_formed,
)
from server.routes.conversations import owner_gone
from server.routes.models import ModelChoice, checked_choice
from storage.store import OwnerFull, OwnerUnknown, SessionExpired

router = APIRouter(tags=["sessions"])

#: The address's admission, given back before a refusal is answered
#: (:func:`server.admission.admit_session`).
_ADMITTED = Depends(admit_session, scope="function")


@router.post("/token", response_model=SessionView, dependencies=[_ADMITTED])
async def create_token(
    name: Annotated[str, Query(description="The person's name.")],
    store: StoreDep,
    settings: SettingsDep,
    bearer: BearerDep,
    identity: IdentityDep,
    owner: Annotated[
        str | None,
        Query(
            description="An owner token: list the session among its conversations (or "
            "Authorization: Bearer <owner>, or an identity token there)."
        ),
    ] = None,
    choice: Annotated[ModelChoice | None, Body()] = None,
) -> SessionView:
    """Start a session: a new UUID4 token, valid ``SESSION_TTL_SECONDS`` after last use.

    With ``owner`` (from ``POST /owner``; in the query or as ``Authorization: Bearer``),
    the session is one of the owner's conversations (``GET /conversations``); with an ID
    token as ``Authorization: Bearer`` instead (``OIDC_ISSUER``), one of the person's.
    An optional JSON body ``{"model", "system_prompt"}`` chooses the session's model
    (``GET /models``) and system prompt; without it, the default model and prompt.

    Errors: 422 if ``name`` is missing or the body malformed; 400 if the name is empty,
    blank, too long or holds a control or format character (a line break, a tab, a
    bidi override), the model unknown, the system prompt too long, or the owner
    unknown or expired; 409 if the owner has ``MAX_CONVERSATIONS_PER_OWNER``
    conversations already; 429 with ``Retry-After`` past ``RATE_SESSIONS_PER_CLIENT``
    (see :mod:`server.admission`); 401 with ``WWW-Authenticate`` for an ID token
    refused, 503 if the identity provider cannot be reached.
    """
    name = bounded_text(name, "name", settings.max_name_chars)
    found = await owner_credential(identity, owner, bearer, required=False)
    if found is not None and found.person is None and not well_formed(found.owner):
        raise owner_gone()
    fields = checked_choice(choice or ModelChoice(), settings)
    owner = found.owner if found is not None else None
    if found is not None and found.person is not None:
        await store.owners.ensure_owner(found.owner)
    session = await store.sessions.create_session(
        name,
        owner or "",
        model=fields.get("model", ""),
        system_prompt=fields.get("system_prompt", ""),
    )
    if owner is not None:
        limit = settings.max_conversations_per_owner
        try:
            await store.owners.add_conversation(owner, session.token, limit)
        except (OwnerUnknown, OwnerFull) as e:
            await store.owners.delete_session(session.token)
            if isinstance(e, OwnerUnknown):
                raise owner_gone() from e
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"this owner has {e.count} conversations, the most allowed; "
                "delete one, then start another",
            ) from e
    return session.view()


@router.get("/refresh_token", response_model=SessionView)
async def refresh_token(
    store: StoreDep, bearer: BearerDep, token: SessionTokenQuery = None
) -> SessionView:
    """The session and its history in conversation order; renews the session's TTL.

    Errors: 400 ``Session expired or does not exist`` for a malformed, unknown or
    expired token; 422 without a token (``?token=`` or ``Authorization: Bearer``).
    """
    token = credential(token, bearer, "token")
    if not well_formed(token):
        raise session_gone()
    try:
        session = await store.sessions.get_session(token, versions=True)
    except SessionExpired as e:
        raise session_gone() from e
    return session.view()
