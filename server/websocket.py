"""uvicorn's WebSocket protocol (websockets-sansio) with Parley's bounds on a client.

Two things uvicorn's own protocol leaves to chance, and one it keeps too long:

- **A client that stops reading.** uvicorn's ``send`` waits for the transport's write
  buffer to drain, for good: the socket, its queued events and its buffers live as long
  as the client keeps the TCP connection open. Here a send that cannot start within
  ``send_timeout_s`` closes the connection with 1013 (try again later): the close frame
  goes after the data already buffered (a client that reads again gets all of it, then
  the close), the app sees a disconnect at once, and the transport is aborted if the
  client has not read it all within the close timeout. A keepalive ping left
  unanswered (the same client, seen while nothing is being sent) ends the same way,
  with 1013 instead of uvicorn's 1011.
- **A text frame that is not UTF-8.** uvicorn logs a traceback and closes with 1007.
  Here the text is decoded with ``surrogateescape``, so the app receives it with lone
  surrogates in place of the bad bytes, answers ``invalid_frame`` and keeps the socket.
- **The handshake.** Its request and response are let go once the socket is accepted,
  and so is websockets' handshake parser, which would keep the request to the end.

And one thing it lacks: a way to send a text frame without awaiting. Each event relayed
through the ASGI ``send`` is a coroutine through Starlette's ``WebSocket``, two
middleware wrappers and this protocol, and needs the sending task awake; the socket's
scope offers :meth:`ParleyWebSocketProtocol.send_text_now` under :data:`SEND_NOW`
instead, which the relay uses for every frame the socket can take at once, and calls
straight from the Pub/Sub listener for live events
(:meth:`server.relay.EventRelay.deliver_now`).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import Protocol, State

from server.metrics import SLOW_READERS_CLOSED

logger = logging.getLogger(__name__)

#: The close code of a client that stopped reading: 1013, try again later.
SLOW_READER_CLOSE = 1013
#: The key, in an accepted socket's ASGI ``scope["extensions"]``, of its protocol's
#: :meth:`ParleyWebSocketProtocol.send_text_now` (Parley's own extension: the value is
#: the method itself, not the dict of options a published extension has, which would
#: cost every socket a dict).
SEND_NOW = "parley.websocket.send_now"


class ParleyWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, closing clients that stop reading (1013)
    and passing on text that is not UTF-8 instead of failing the connection.

    ``send_timeout_s`` is a class attribute: uvicorn builds the protocol itself; use
    :func:`websocket_protocol` to get a class with the value set.
    """

    send_timeout_s: float = 10.0

    async def send(self, message: ASGISendEvent) -> None:
        """Send an ASGI message once the write buffer has room, waiting at most
        ``send_timeout_s``; past it, close with 1013 and raise ``ClientDisconnected``."""
        if not self.writable.is_set() and not self.disconnected:
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.writable.wait()
            except TimeoutError:
                self._drop_slow_reader(f"the client read nothing for {self.send_timeout_s:g} s")
                raise ClientDisconnected from None
        await super().send(message)
        if self.handshake_complete and message["type"] == "websocket.accept":
            # uvicorn keeps the handshake's request and response (headers and all) for
            # the connection's life, and never reads them again: about 3 KB an idle
            # socket (bench `connections`). The app's scope keeps its own copy of the
            # request headers.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
            self._restart_parser()

    def handle_connect(self, event: Request) -> None:
        """uvicorn's handshake; an accepted one's scope offers :data:`SEND_NOW`."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # None: the handshake was refused
        if scope is not None and scope.get("extensions") is not None:
            scope["extensions"][SEND_NOW] = self.send_text_now

    def send_text_now(self, text: str) -> bool:
        """Send ``text`` as one text frame at once, as :meth:`send` sends a
        ``websocket.send`` whose write buffer has room, without its await; whether it
        was sent.

        False (nothing done) wherever :meth:`send` would do anything else: wait for
        the buffer to drain, raise (the socket is closing or closed), or fail to encode
        ``text``; send it that way then.
        """
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
            or self.conn.state is not State.OPEN
        ):
            return False
        try:
            data = text.encode()
        except UnicodeEncodeError:
            return False
        self.conn.send_text(data)
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def _restart_parser(self) -> None:
        """Start websockets' frame parser afresh, without the handshake's generator.

        ``ServerProtocol.parse`` reads the request, then parses frames for the rest of
        the connection inside the same generator, whose frame keeps the request (its
        headers and all, about 3 KB an idle socket) to the end. Just after the accept,
        that generator is waiting, with nothing buffered, for the first byte of a frame;
        only then is it replaced by the frame parser alone, in the same state. Anywhere
        else (a client that sent frames before it saw the accept) it is left as it is.
        """
        conn = self.conn
        inner = getattr(conn.parser, "gi_yieldfrom", None)  # Protocol.parse
        waiting = getattr(inner, "gi_yieldfrom", None)  # StreamReader.at_eof
        if (
            conn.state is State.OPEN
            and not conn.reader.buffer
            and getattr(inner, "__qualname__", "") == "Protocol.parse"
            and getattr(waiting, "__qualname__", "") == "StreamReader.at_eof"
        ):
            conn.parser = Protocol.parse(conn)
            next(conn.parser)  # to its first wait, as websockets starts a parser

    def keepalive_timeout(self) -> None:
        """The client did not answer a ping in time: close with 1013, not 1011."""
        self.pong_timer = None
        self.pending_ping_payload = None
        self._drop_slow_reader("keepalive ping timeout")

    def _drop_slow_reader(self, reason: str) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        logger.info("closing a socket with %d: %s", SLOW_READER_CLOSE, reason)
        SLOW_READERS_CLOSED.inc()
        self.conn.fail(SLOW_READER_CLOSE, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": SLOW_READER_CLOSE})
        # Flush what is buffered (then FIN) if the client reads again; drop it otherwise.
        self.transport.close()
        self.loop.call_later(self.close_timeout, self.transport.abort)

    def send_receive_event_to_app(self) -> None:
        """Hand a complete message to the app; text that is not UTF-8 keeps its bad bytes
        as lone surrogates (``surrogateescape``) for the app to refuse."""
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past websocket.close: discard, as uvicorn does
        text = data.decode("utf-8", "surrogateescape")
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


def websocket_protocol(send_timeout_s: float) -> type[ParleyWebSocketProtocol]:
    """The protocol class for uvicorn's ``ws`` option, with ``send_timeout_s`` (s) set."""
    return type(
        "ParleyWebSocketProtocol",
        (ParleyWebSocketProtocol,),
        {"send_timeout_s": send_timeout_s, "__doc__": ParleyWebSocketProtocol.__doc__},
    )
