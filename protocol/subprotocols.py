"""The chat socket's subprotocols (``Sec-WebSocket-Protocol``, RFC 6455 §1.9): how a
client hands a person's ID token to the server without putting it in the URL.

A client offers :data:`SUBPROTOCOL` and ``parley.bearer.<ID token>``
(:func:`bearer_subprotocols`); the server answers :data:`SUBPROTOCOL`, so the token is not
sent back. A JWT is made of characters a subprotocol name may hold (base64url and dots).
"""

from __future__ import annotations

from collections.abc import Sequence

#: What the server answers with when the client offers it.
SUBPROTOCOL = "parley"
#: The prefix of the subprotocol that carries an ID token.
BEARER_PREFIX = "parley.bearer."


def bearer_subprotocols(id_token: str) -> list[str]:
    """The subprotocols a client offers to prove the person of ``id_token``."""
    return [SUBPROTOCOL, BEARER_PREFIX + id_token]


def offered_token(offered: Sequence[str]) -> str | None:
    """The ID token among the subprotocols a client ``offered``, if any."""
    for name in offered:
        if name.startswith(BEARER_PREFIX):
            return name[len(BEARER_PREFIX) :]
    return None
