"""A TCP proxy in front of a Parley server that can cut the chat sockets through it.

The page is opened through the proxy, so its HTTP requests and its WebSocket both pass
here. :meth:`SocketCutter.cut` aborts the TCP connections of the chat sockets (the ones
whose first request is ``GET /chat``) at both ends, as a crashing server or a broken
network would: the server sees its socket drop, the page sees an abnormal close (1006).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class SocketCutter:
    """Proxies ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``.

    Use as ``async with SocketCutter(target_port) as cutter``; ``cutter.url`` is the
    proxy's ``http://`` URL.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.url = ""
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._chat: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> int:
        """Abort every chat socket open through the proxy; returns how many."""
        cut = 0
        for client, upstream in list(self._chat):
            client.transport.abort()
            upstream.transport.abort()
            cut += 1
        self.cuts += cut
        return cut

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter] | None = None
        try:
            first = await reader.read(65536)
            if not first:
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            if first.startswith(b"GET /chat"):
                pair = (writer, upstream)
                self._chat.add(pair)
            upstream.write(first)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            if pair is not None:
                self._chat.discard(pair)
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await w.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until either end closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.write_eof()
