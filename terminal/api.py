"""Parley's REST API as the terminal client uses it: owners, sessions, conversations.

Every call returns a parsed wire model (or nothing) and raises :class:`ApiError` with the
server's ``{"detail": ...}`` otherwise. Tokens travel in the ``Authorization: Bearer``
header, never in a URL (which a proxy's log or a traceback could keep), and no error
message built here holds a URL with its query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from protocol.wire import ConversationPage, ModelList, OwnerView, SessionView

#: The server's 400 detail for an owner token that expired (``OWNER_TTL_SECONDS``) or is
#: unknown (the README's API table).
OWNER_GONE = "Owner expired or does not exist"
#: The same for a session token.
SESSION_GONE = "Session expired or does not exist"
M = TypeVar("M", bound=BaseModel)

#: The largest page ``GET /conversations`` serves.
MAX_PAGE = 100


class ChatClientError(Exception):
    """Base of the errors the terminal client raises."""


class ApiError(ChatClientError):
    """A REST call failed; ``status`` is the HTTP status (0: no answer), ``detail`` the
    server's ``{"detail": ...}`` or what went wrong."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def owner_gone(self) -> bool:
        """Whether the server no longer knows the owner token sent."""
        return self.status == 400 and self.detail == OWNER_GONE

    @property
    def session_gone(self) -> bool:
        """Whether the server no longer knows the session token sent."""
        return self.status == 400 and self.detail == SESSION_GONE


@dataclass(frozen=True)
class Choice:
    """A conversation's model (an id of ``GET /models``) and system prompt, as sent in
    ``POST /token``'s body. None leaves the server's default: the catalog's default
    model, the deployment's prompt."""

    model: str | None = None
    system_prompt: str | None = None

    def body(self) -> dict[str, str] | None:
        """The JSON body that asks for this choice; None if nothing is chosen."""
        fields = {"model": self.model, "system_prompt": self.system_prompt}
        chosen = {key: value for key, value in fields.items() if value is not None}
        return chosen or None


class ParleyApi:
    """The REST calls, over one aiohttp session that the caller owns and closes.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        http: the aiohttp session.
    """

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def create_owner(self) -> str:
        """A new owner token (``POST /owner``).

        Raises:
            ApiError: 429 past the server's rate of new sessions and owners.
        """
        return _parse(OwnerView, await self._call("POST", "/owner", {})).owner

    async def create_session(
        self, name: str, owner: str | None = None, choice: Choice | None = None
    ) -> SessionView:
        """Start a session (``POST /token``), one of ``owner``'s conversations if given,
        with ``choice``'s model and system prompt.

        Raises:
            ApiError: 400 for a blank or too long name, an owner that expired, an unknown
                model or a system prompt too long; 409 when the owner has the most
                conversations allowed.
        """
        body = choice.body() if choice else None
        answer = await self._call("POST", "/token", {"name": name}, body, bearer=owner)
        return _parse(SessionView, answer)

    async def models(self) -> ModelList:
        """The models a conversation may choose (``GET /models``), the default first.

        Raises:
            ApiError: no answer, or not a Parley one.
        """
        return _parse(ModelList, await self._call("GET", "/models", {}))

    async def load_session(self, token: str) -> SessionView:
        """A session with its history (``GET /refresh_token``).

        Raises:
            ApiError: 400 if it expired or does not exist.
        """
        return _parse(SessionView, await self._call("GET", "/refresh_token", {}, bearer=token))

    async def conversations(self, owner: str, limit: int = MAX_PAGE) -> ConversationPage:
        """The owner's newest ``limit`` conversations (1 to :data:`MAX_PAGE`), newest first.

        Raises:
            ApiError: 400 if the owner expired or does not exist.
        """
        params = {"limit": str(limit)}
        answer = await self._call("GET", "/conversations", params, bearer=owner)
        return _parse(ConversationPage, answer)

    async def rename(self, token: str, title: str) -> None:
        """Give the conversation a title (``PATCH /session``).

        Raises:
            ApiError: 400 for a blank or too long title, or a session that is gone.
        """
        await self.change(token, {"title": title})

    async def change(self, token: str, fields: dict[str, str]) -> None:
        """Change the conversation's ``title``, ``model`` or ``system_prompt`` (empty: the
        deployment's), as ``PATCH /session`` does; replies from then on use them.

        Raises:
            ApiError: 400 for a session that is gone, an unknown model, or a title or
                system prompt the server refuses; 409 for a new model while messages
                still wait for replies (nothing changed).
        """
        await self._call("PATCH", "/session", {}, fields, bearer=token)

    async def delete(self, token: str, owner: str | None = None) -> None:
        """Delete the conversation for good (``DELETE /session``).

        Raises:
            ApiError: 400 if it is gone already; 403 if ``owner`` does not own it.
        """
        params = {"owner": owner} if owner else {}  # the server's check takes the query only
        await self._call("DELETE", "/session", params, bearer=token)

    async def export(self, token: str, form: Literal["json", "markdown"]) -> str:
        """The whole conversation as JSON or Markdown text, without its token.

        Raises:
            ApiError: 400 if the session is gone.
        """
        return await self._call("GET", "/session/export", {"format": form}, bearer=token)

    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: Any = None,
        *,
        bearer: str | None = None,
    ) -> str:
        """One request, with ``bearer`` (a session or owner token) as its
        ``Authorization``; the body of its 2xx answer.

        Raises:
            ApiError: a status other than 2xx, or no answer.
        """
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            async with self.http.request(
                method, url, params=params, json=body, headers=headers
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            # Only the error's type: aiohttp's messages may quote the URL with its token.
            raise ApiError(0, f"{method} {path} failed ({type(e).__name__})") from e
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _detail(text))
        return text


def _parse(model: type[M], text: str) -> M:
    """``text`` as ``model``.

    Raises:
        ApiError: the answer is not what Parley answers.
    """
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        raise ApiError(0, f"the server's answer is not a Parley {model.__name__}") from e


def _detail(text: str) -> str:
    """The ``detail`` of an error body, or the body itself (clipped) if it has none."""
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200]
    detail = data.get("detail") if isinstance(data, dict) else data
    return str(detail)[:500]
