"""Owners and their conversations: ``POST /owner``, ``GET /conversations``,
``PATCH /session`` (title, model, system prompt), ``DELETE /session`` and
``GET /session/export``. Each takes its token as ``Authorization: Bearer`` or in the
query (:func:`server.deps.credential`).

An owner token is a bearer credential like a session token: whoever holds it lists the
owner's conversations (with their session tokens) and may delete them. It holds no
personal data. With an identity provider (``OIDC_ISSUER``), a person's ID token stands
where an owner token goes, for the person's own owner (:mod:`server.identity`).
Sessions made without an owner (``POST /token`` without ``owner``) work as before and
appear in no list. See :mod:`storage.owners` for how the lists stay within one hash
slot on a Redis Cluster.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import Field

from protocol.labels import strip_hidden
from protocol.wire import ChatMessage, ConversationExport, ConversationPage, OwnerView
from server.admission import admit_owner
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
from server.routes.models import ModelChoice, checked_choice
from storage.store import NotTheOwner, OwnerUnknown, SessionExpired

router = APIRouter(tags=["conversations"])

#: The address's admission, given back before a refusal is answered
#: (:func:`server.admission.admit_owner`).
_ADMITTED = Depends(admit_owner, scope="function")

OWNER_GONE = "Owner expired or does not exist"
#: The largest ``offset`` of ``GET /conversations``: far beyond any owner's list
#: (``MAX_CONVERSATIONS_PER_OWNER``), and far from the 64-bit range Redis's indexes take.
MAX_OFFSET = 1_000_000


def owner_gone() -> HTTPException:
    """400 for an owner token that is malformed, unknown or expired."""
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=OWNER_GONE)


class SessionChanges(ModelChoice):
    """The body of ``PATCH /session``: the fields to change, at least one."""

    title: str | None = Field(default=None, description="The conversation's new title.")


@router.post("/owner", response_model=OwnerView, dependencies=[_ADMITTED])
async def create_owner(store: StoreDep) -> OwnerView:
    """Issue an owner token: pass it as ``owner`` to ``POST /token`` and
    ``GET /conversations``. It lives ``OWNER_UNUSED_TTL_SECONDS`` until its first
    conversation, then ``OWNER_TTL_SECONDS`` after its last use.

    Errors: 429 with ``Retry-After`` past ``RATE_OWNERS_PER_CLIENT``.
    """
    return OwnerView(owner=await store.owners.create_owner())


@router.get("/conversations", response_model=ConversationPage)
async def list_conversations(
    store: StoreDep,
    bearer: BearerDep,
    identity: IdentityDep,
    owner: Annotated[
        str | None,
        Query(
            description="The owner token (or Authorization: Bearer <owner>, or an "
            "identity token there)."
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Conversations to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Conversations a page.")] = 20,
) -> ConversationPage:
    """The owner's conversations, newest first: title, created, last activity, message
    count, and the session token to open each; renews the owner's TTL. A title is
    empty until a worker has asked the model for one after the first reply
    (``CONVERSATION_TITLES``), or a person gave one; ``next_offset`` is null on the
    last page. A person (an ID token) who has none yet gets an empty list.

    Errors: 400 ``Owner expired or does not exist``; 422 for an offset (0 to
    1,000,000) or limit (1 to 100) out of range, or without an owner; 401 with
    ``WWW-Authenticate`` for an ID token refused, 503 if the identity provider cannot be
    reached.
    """
    found = await owner_credential(identity, owner, bearer, required=True)
    if found.person is None and not well_formed(found.owner):
        raise owner_gone()
    try:
        return await store.owners.conversations(found.owner, offset, limit)
    except OwnerUnknown as e:
        if found.person is not None:
            return ConversationPage(conversations=[], total=0, next_offset=None)
        raise owner_gone() from e


@router.patch("/session", status_code=status.HTTP_204_NO_CONTENT)
async def change_session(
    body: SessionChanges,
    store: StoreDep,
    settings: SettingsDep,
    bearer: BearerDep,
    token: SessionTokenQuery = None,
) -> None:
    """Rename a conversation, or change its model or system prompt: a JSON object with
    any of ``title``, ``model`` (``GET /models``), ``system_prompt`` (empty: the
    deployment's). Replies from then on use the new model and prompt.

    Errors: 400 ``Session expired or does not exist``; 400 if the title is empty, blank,
    longer than ``MAX_TITLE_CHARS`` or holds a control or format character (a line
    break, a tab, a bidi override), the model unknown, or the system prompt too
    long; 409 (nothing changed) for a new model while messages wait for replies (the
    model the session has already is no change, and succeeds); 422 for an empty object
    or an unknown field.
    """
    token = credential(token, bearer, "token")
    fields = checked_choice(body, settings)
    if body.title is not None:
        fields["title"] = bounded_text(body.title, "title", settings.max_title_chars)
    if not fields:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="give at least one of title, model, system_prompt",
        )
    if not well_formed(token):
        raise session_gone()
    try:
        # Naming the model the session has already changes nothing, so it succeeds
        # whether or not messages wait.
        if "model" in fields and fields["model"] == await store.sessions.session_model(token):
            del fields["model"]
        # The model first, and only while no message waits: a message is answered by
        # the pool of the model it was sent to (see storage/lua/set_model.lua).
        if "model" in fields and not await store.sessions.set_model(token, fields.pop("model")):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail="messages wait for replies; change the model once they are answered",
            )
        if fields:
            await store.owners.update_session(token, fields)
    except SessionExpired as e:
        raise session_gone() from e


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(
    store: StoreDep,
    bearer: BearerDep,
    token: SessionTokenQuery = None,
    owner: Annotated[
        str | None, Query(description="If given, the session must belong to this owner.")
    ] = None,
) -> None:
    """Delete a conversation for good: its history, its events, its place in its
    owner's list. Its open sockets, on every server, are told ``session_expired`` and
    closed (1008) at once.

    Errors: 400 ``Session expired or does not exist``; 403 if ``owner`` is given and
    does not own the session.
    """
    token = credential(token, bearer, "token")
    if not well_formed(token) or (owner is not None and not well_formed(owner)):
        raise session_gone()
    try:
        await store.owners.delete_session(token, owner)
    except SessionExpired as e:
        raise session_gone() from e
    except NotTheOwner as e:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="the session does not belong to this owner"
        ) from e


#: The characters that make inline Markdown (CommonMark, and GitHub's tables and
#: strikethrough), each escaped with a backslash: links and images (``[``), HTML and
#: autolinks (``<``), entities (``&#x202E;``), emphasis, code, a heading's closing ``#``s.
#: Other punctuation (``Tides: a primer!``) means nothing there and stays as written.
_MARKUP = re.compile(r"([\\`*_\[\]<>&#~|])")


def inline(text: str) -> str:
    """``text`` as literal Markdown inline text: on one line (control and format
    characters become spaces, :mod:`protocol.labels`), every markup character escaped
    (:data:`_MARKUP`), so a name or a title can neither leave its heading nor start a
    link, an image, an HTML tag or a block of its own."""
    return _MARKUP.sub(r"\\\1", " ".join(strip_hidden(text).split()))


def markdown(export: ConversationExport) -> str:
    """A conversation as Markdown: a heading, then each message under its role and time.

        Message contents go in as they are: they are Markdown already, as the model writes
        and the web client renders them. Titles and names are :func:`inline` text (times are
    the server's own ISO 8601). A
        turn's earlier versions (regenerate, edit) come before it, under "Earlier version"
        headings one level down.
    """
    name = inline(export.name)
    heading = inline(export.title) if export.title.strip() else f"Conversation of {name}"
    lines = [f"# {heading}", "", f"Started {export.session_start} by {name}.", ""]

    def section(message: ChatMessage, level: str, label: str = "") -> list[str]:
        who = name if message.role == "user" else "Assistant"
        notes = []
        if message.stopped:
            notes.append("stopped")
        if message.truncated:
            notes.append(f"cut at its {message.truncated} bound")
        suffix = f" ({', '.join(notes)})" if notes else ""
        return [f"{level} {label}{who}, {message.timestamp}{suffix}", "", message.content, ""]

    for message in export.messages:
        for n, version in enumerate(message.versions or [], start=1):
            earlier = ChatMessage(
                id=message.id, role="user", content=version.content, timestamp=version.timestamp
            )
            lines += section(earlier, "###", f"Earlier version {n}: ")
            if version.reply is not None:
                lines += section(version.reply, "###", f"Earlier version {n}: ")
            else:
                lines += [f"### Earlier version {n}: no reply", ""]
        lines += section(message, "##")
    return "\n".join(lines)


@router.get(
    "/session/export",
    response_model=ConversationExport,
    responses={200: {"content": {"text/markdown": {}}}},
)
async def export_session(
    store: StoreDep,
    bearer: BearerDep,
    token: SessionTokenQuery = None,
    format: Annotated[Literal["json", "markdown"], Query(description="json or markdown")] = "json",
) -> Response:
    """The whole conversation to keep, as a download: JSON (:class:`ConversationExport`)
    or Markdown. It holds no token. Does not renew the session's TTL.

    Errors: 400 ``Session expired or does not exist``; 422 for another format.
    """
    token = credential(token, bearer, "token")
    if not well_formed(token):
        raise session_gone()
    try:
        session = await store.sessions.get_session(token, touch=False, versions=True)
    except SessionExpired as e:
        raise session_gone() from e
    export = session.export()
    day = export.session_start[:10]
    if format == "markdown":
        return Response(
            markdown(export),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="parley-{day}.md"'},
        )
    return Response(
        export.model_dump_json(indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="parley-{day}.json"'},
    )
