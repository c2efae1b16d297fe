"""An accepted socket lets websockets' handshake parser go: what parses its frames holds
no handshake request, and parses them as before; a parser that has read part of a frame
is left as it is."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from server.websocket import ParleyWebSocketProtocol

HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def _accepted(after_request: bytes = b"") -> ServerProtocol:
    """A server protocol that read the handshake (and ``after_request``) and accepted it."""
    conn = ServerProtocol()
    conn.receive_data(HANDSHAKE + after_request)
    (request,) = [e for e in conn.events_received() if isinstance(e, Request)]
    conn.send_response(conn.accept(request))
    assert conn.state is State.OPEN
    return conn


def _holds_request(conn: ServerProtocol) -> bool:
    """Whether the parser's generators (or their frames) refer to a handshake request."""
    gen: Any = conn.parser
    seen = []
    while gen is not None:
        seen.append(gen)
        gen = getattr(gen, "gi_yieldfrom", None)
    frames = [g.gi_frame for g in seen if g.gi_frame is not None]
    return any(isinstance(v, Request) for f in frames for v in f.f_locals.values())


def _restart(conn: ServerProtocol) -> None:
    ParleyWebSocketProtocol._restart_parser(SimpleNamespace(conn=conn))  # type: ignore[arg-type]


def _masked_text(text: str) -> bytes:
    client = ServerProtocol()  # only to serialize: a client's frames are masked
    frame = Frame(Opcode.TEXT, text.encode())
    return frame.serialize(mask=True, extensions=client.extensions)


def test_the_accepted_sockets_parser_holds_no_request_and_parses_frames() -> None:
    conn = _accepted()
    assert _holds_request(conn)  # websockets' own parser keeps it
    _restart(conn)
    assert not _holds_request(conn)
    conn.receive_data(_masked_text("hello"))
    (frame,) = conn.events_received()
    assert isinstance(frame, Frame)
    assert frame.opcode is Opcode.TEXT and frame.data == b"hello"


def test_a_parser_in_the_middle_of_a_frame_is_left_as_it_is() -> None:
    data = _masked_text("early")
    conn = _accepted(after_request=data[:3])  # sent before it saw the accept
    parser = conn.parser
    _restart(conn)
    assert conn.parser is parser
    conn.receive_data(data[3:])
    (frame,) = conn.events_received()
    assert isinstance(frame, Frame) and frame.data == b"early"
