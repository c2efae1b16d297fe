"""Server stacks compared: what an idle WebSocket and an echoed message cost on each.

The same bare FastAPI app (:data:`app`: accept, then echo every text frame) runs on each
candidate in :data:`CANDIDATES`, one after another, as a process of its own: uvicorn
with each of its WebSocket protocols, and granian. Per candidate: the server's RSS
(``VmRSS``, all its processes) with 10 sockets open and with ``sockets`` open, hence KB
per idle socket; then ``messages`` text frames echoed on each of 10 sockets, and the
server's CPU time (user + system, psutil) per echoed message (µs).

Run by ``python -m bench --scenario stacks``; each candidate imports the app as
``bench.stacks:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # no stubs installed
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from bench import procs
from bench.scenarios import Options
from testkit.ports import free_port

logger = logging.getLogger(__name__)

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness, for the harness."""
    return {"status": "ok"}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    """Accept, then send every text frame back."""
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text(await websocket.receive_text())


_UVICORN = (
    *("-m", "uvicorn", "bench.stacks:app", "--ws-per-message-deflate", "false"),
    *("--log-level", "warning", "--no-access-log", "--host", "127.0.0.1"),
)

#: name -> the server's argv after ``python`` (``{port}`` is filled in).
CANDIDATES: dict[str, tuple[str, ...]] = {
    # Parley's server runs this protocol (subclassed: server/websocket.py).
    "uvicorn websockets-sansio": (*_UVICORN, "--ws", "websockets-sansio", "--port", "{port}"),
    "uvicorn websockets (legacy)": (*_UVICORN, "--ws", "websockets", "--port", "{port}"),
    "uvicorn wsproto": (*_UVICORN, "--ws", "wsproto", "--port", "{port}"),
    "granian": (
        *("-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"),
        *("--workers", "1", "--log-level", "warning", "bench.stacks:app"),
    ),
}


@dataclass
class StackFigures:
    """One candidate's figures.

    Attributes:
        rss_mb_at_10: the server's RSS (MB) with 10 sockets open.
        rss_mb: with all sockets open.
        kb_per_socket: (rss_mb - rss_mb_at_10) per socket beyond 10 (KB).
        opened_per_s: sockets opened per second (50 handshakes at a time).
        cpu_us_per_message: the server's CPU time per echoed message (µs).
        echoed: messages echoed back, of those sent.
        sent: messages sent.
    """

    rss_mb_at_10: float
    rss_mb: float
    kb_per_socket: float
    opened_per_s: float
    cpu_us_per_message: float
    echoed: int
    sent: int


def run(o: Options, work_dir: Path) -> dict[str, Any]:
    """Measure every candidate with ``o.sockets`` idle sockets and ``o.messages`` echoes
    on each of 10 sockets; return ``{"stacks": {name: figures}, "failures": n}``, where
    ``failures`` counts candidates that did not start or echoed wrongly."""
    procs.raise_fd_limit()
    stacks: dict[str, Any] = {}
    failures = 0
    for name, argv in CANDIDATES.items():
        logger.info("stacks: %s", name)
        try:
            with _serving(name, argv, work_dir / "logs") as (url, pid):
                figures = asyncio.run(_measure(url, pid, o.sockets, o.messages))
        except (RuntimeError, OSError, aiohttp.ClientError) as e:
            logger.error("stacks: %s failed: %s", name, e)
            stacks[name] = {"error": f"{type(e).__name__}: {e}"}
            failures += 1
            continue
        stacks[name] = asdict(figures)
        failures += figures.sent - figures.echoed
    return {"stacks": stacks, "failures": failures}


@contextlib.contextmanager
def _serving(name: str, argv: tuple[str, ...], log_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, *(a.replace("{port}", str(port)) for a in argv)]
    log_path = log_dir / f"stack-{name.split()[0]}-{port}.log"
    with procs.process(command, log_path, f"http://127.0.0.1:{port}", "/healthz") as running:
        yield running.url, running.pid


def _tree(pid: int) -> list[psutil.Process]:
    """The server's process and its children (granian serves from a child)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _rss_mb(pid: int) -> float:
    return float(sum(p.memory_info().rss for p in _tree(pid))) / 2**20


def _cpu_s(pid: int) -> float:
    return float(sum(sum(p.cpu_times()[:2]) for p in _tree(pid)))


async def _measure(url: str, pid: int, sockets: int, messages: int) -> StackFigures:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gate = asyncio.Semaphore(50)

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                return await http.ws_connect(f"{url}/ws", heartbeat=None)

        few = [await connect() for _ in range(10)]
        await asyncio.sleep(1.0)
        at_10 = _rss_mb(pid)
        started = time.perf_counter()
        rest = await asyncio.gather(*(connect() for _ in range(max(0, sockets - 10))))
        opened_s = time.perf_counter() - started
        await asyncio.sleep(1.0)
        at_n = _rss_mb(pid)

        async def talk(ws: aiohttp.ClientWebSocketResponse, index: int) -> int:
            echoed = 0
            for k in range(messages):
                text = f"socket {index} message {k} " + "x" * 100
                await ws.send_str(text)
                echoed += (await ws.receive_str()) == text
            return echoed

        cpu_before = _cpu_s(pid)
        echoed = sum(await asyncio.gather(*(talk(ws, i) for i, ws in enumerate(few))))
        cpu = _cpu_s(pid) - cpu_before
        await asyncio.gather(*(ws.close() for ws in (*few, *rest)), return_exceptions=True)
    sent = len(few) * messages
    return StackFigures(
        rss_mb_at_10=round(at_10, 1),
        rss_mb=round(at_n, 1),
        kb_per_socket=(at_n - at_10) * 1024 / max(1, sockets - 10),
        opened_per_s=len(rest) / opened_s if opened_s else 0.0,
        cpu_us_per_message=cpu * 1e6 / sent if sent else 0.0,
        echoed=echoed,
        sent=sent,
    )
