"""``python -m bench.floor``: the least a trip through Redis and a worker adds to a
first token, measured with bare parts.

Two paths to the stand-in model's first delta, run in alternating rounds on one
embedded Redis and one stand-in model (``python -m testkit.standin``), one message at a
time with idle gaps between messages, as in the ``latency`` scenario:

- **direct**: a *front* process posts the chat completion itself (aiohttp, ``stream:
  true``) and reads to the first delta, as the baseline does;
- **via Redis**: the front runs a one-line script that ``XADD``s the message to a
  stream; a *back* process, blocked in ``XREADGROUP``, takes it, runs a one-line
  script (the begin), posts the same request, reads to the first delta, and runs a
  script that ``XADD``s the token and ``PUBLISH``es it; the front gets it from its
  Pub/Sub connection.

Both use redis-py's asyncio client with hiredis and uvloop, as Parley does, but none
of Parley's code: no admission, history, fencing, coalescing, event ids or batching.
The difference between the two medians is therefore a floor: what the hops of
Parley's design (server → Redis → worker, and worker → Redis → server) cost on this
machine, whatever code runs at each end. Times are ms from the front's send to its
first delta; the gap before each message is drawn uniformly from 0.5x to 1.5x
``--gap-ms`` (the ``latency`` scenario offers a message every 20 ms on average).

Usage: ``python -m bench.floor [--rounds N] [--messages N] [--gap-ms MS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import uvloop
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bench import procs
from bench.stats import percentile
from stack.redis import EmbeddedRedis
from testkit.ports import free_port

QUEUE, GROUP, EVENTS, CHANNEL, SESSION = "floor:q", "floor:g", "floor:ev", "floor:chan", "floor:s"
ENQUEUE = "return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])"
BEGIN = "return redis.call('GET', KEYS[1])"
EMIT = (
    "redis.call('XADD', KEYS[1], '*', 'id', ARGV[1]) return redis.call('PUBLISH', KEYS[2], ARGV[1])"
)
STOP, PROBE = "stop", "probe"

PATHS = ("direct", "via Redis")


@dataclass
class Measured:
    """What :func:`measure` returns, per path (``direct``, ``via Redis``).

    Attributes:
        ms: each message's time from the front's send to its first delta (ms).
        cpu_s: CPU time (s) of the front, the back and Redis over the path's rounds,
            the stand-in model's aside (it is the same for both); through the direct
            rounds the back and Redis only idle, and their idling counts on both paths.
    """

    ms: dict[str, list[float]] = field(default_factory=lambda: {path: [] for path in PATHS})
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PATHS, 0.0))

    def cpu_ms_per_message(self, path: str) -> float:
        """CPU time (ms) a message of ``path``."""
        return self.cpu_s[path] * 1000 / len(self.ms[path])


def request_body(model_url: str) -> tuple[str, dict[str, object]]:
    """The chat completion request both paths send: (URL, JSON body)."""
    body = {
        "model": "standin",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    return f"{model_url}/chat/completions", body


async def first_delta(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> None:
    """Post ``body`` and read the streamed response to its first ``data:`` line."""
    async with http.post(url, json=body) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                return


async def back(redis_url: str, model_url: str) -> None:
    """The worker's side: take each entry, begin it, ask the model, emit its first delta.

    What it publishes is its own CPU time so far (s); the entry ``PROBE`` gets that at
    once, with no begin and no model. Returns when it takes the entry ``STOP``.
    """
    redis: Redis[bytes] = Redis.from_url(redis_url)
    begin, emit = redis.register_script(BEGIN), redis.register_script(EMIT)
    url, body = request_body(model_url)
    async with aiohttp.ClientSession() as http:
        while True:
            read = await redis.xreadgroup(GROUP, "back", {QUEUE: ">"}, count=16, block=1000)
            for _stream, entries in read or []:
                for entry_id, fields in entries:
                    message = fields[b"id"]
                    if message == STOP.encode():
                        await redis.aclose()  # type: ignore[attr-defined]  # stale stubs
                        return
                    if message != PROBE.encode():
                        await begin(keys=[SESSION])
                        await first_delta(http, url, body)
                    await emit(keys=[EVENTS, CHANNEL], args=[repr(time.process_time())])
                    await redis.xack(QUEUE, GROUP, entry_id)  # type: ignore[no-untyped-call]


async def front(
    redis_url: str, model_url: str, rounds: int, messages: int, gap_ms: float
) -> Measured:
    """The server's side: ``rounds`` rounds of each path, alternating; each round sends
    ``messages`` messages one at a time."""
    redis: Redis[bytes] = Redis.from_url(redis_url)
    enqueue = redis.register_script(ENQUEUE)
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    url, body = request_body(model_url)
    measured = Measured()
    async with aiohttp.ClientSession() as http:
        await first_delta(http, url, body)  # the connection opened before timing
        for _ in range(rounds):
            for path in PATHS:
                await enqueue(keys=[QUEUE], args=[PROBE])
                cpu = time.process_time() + await _published(pubsub) + await _redis_cpu(redis)
                for n in range(messages):
                    await asyncio.sleep(random.uniform(0.5, 1.5) * gap_ms / 1000)
                    started = time.perf_counter()
                    if path == "direct":
                        await first_delta(http, url, body)
                    else:
                        await enqueue(keys=[QUEUE], args=[str(n)])
                        await _published(pubsub)
                    measured.ms[path].append((time.perf_counter() - started) * 1000)
                await enqueue(keys=[QUEUE], args=[PROBE])
                cpu = time.process_time() + await _published(pubsub) + await _redis_cpu(redis) - cpu
                measured.cpu_s[path] += cpu
        await enqueue(keys=[QUEUE], args=[STOP])
    await pubsub.aclose()  # type: ignore[attr-defined]  # stale stubs
    await redis.aclose()  # type: ignore[attr-defined]  # stale stubs
    return measured


async def _redis_cpu(redis: Redis[bytes]) -> float:
    """Redis's CPU time so far (s), user and system (``INFO cpu``)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _published(pubsub: PubSub, timeout_s: float = 10.0) -> float:
    """Wait for the next message on the front's Pub/Sub connection; return it, the back
    process's CPU time (s).

    Raises:
        TimeoutError: none came within ``timeout_s`` (s): the back side is gone.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            return float(message["data"])
    raise TimeoutError(f"nothing published in {timeout_s:g} s: the back process is gone")


def _run_back(redis_url: str, model_url: str) -> None:
    uvloop.run(back(redis_url, model_url))


def _run_front(
    redis_url: str, model_url: str, options: tuple[int, int, float], out: Connection
) -> None:
    """Run :func:`front` and send what it measured through ``out``."""
    out.send(uvloop.run(front(redis_url, model_url, *options)))


def measure(rounds: int, messages: int, gap_ms: float) -> Measured:
    """Start Redis, the stand-in and the two processes; return what the front measured.

    Raises:
        EOFError: the front process died before sending its times.
    """
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="parley-floor-") as tmp,
        EmbeddedRedis(port=free_port(), data_dir=Path(tmp) / "redis") as redis_server,
        procs.standin(Path(tmp) / "standin.log", tokens=1) as model,
    ):
        setup: Redis[bytes] = Redis.from_url(redis_server.url)
        asyncio.run(_create_group(setup))
        worker = spawn.Process(target=_run_back, args=(redis_server.url, model.url))
        worker.start()
        receive, send = spawn.Pipe(duplex=False)
        server = spawn.Process(
            target=_run_front, args=(redis_server.url, model.url, (rounds, messages, gap_ms), send)
        )
        server.start()
        if not receive.poll(timeout=3600):
            raise RuntimeError("the front process sent no times in an hour")
        measured: Measured = receive.recv()
        server.join()
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
        return measured


async def _create_group(redis: Redis[bytes]) -> None:
    await redis.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)
    await redis.aclose()  # type: ignore[attr-defined]  # stale stubs


def main(argv: list[str] | None = None) -> None:
    """CLI: print each path's median and p99 (ms) and CPU a message (ms), then the
    difference and ratio of the medians and the ratio of the CPU."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each path")
    parser.add_argument("--messages", type=int, default=250, help="messages a round")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="mean gap between messages")
    args = parser.parse_args(argv)
    measured = measure(args.rounds, args.messages, args.gap_ms)
    for path, values in measured.ms.items():
        median, p99, cpu = (
            statistics.median(values),
            percentile(values, 99),
            measured.cpu_ms_per_message(path),
        )
        print(
            f"{path:10} median {median:6.3f} ms, p99 {p99:6.3f} ms, CPU {cpu:6.3f} ms a message"
            f" ({len(values)} messages)"
        )
    direct, via = (statistics.median(measured.ms[path]) for path in PATHS)
    print(f"via Redis minus direct, medians: {via - direct:.3f} ms ({via / direct:.2f}x)")
    cpu_direct, cpu_via = (measured.cpu_ms_per_message(path) for path in PATHS)
    print(f"CPU a message, via Redis / direct: {cpu_via / cpu_direct:.2f}x")


if __name__ == "__main__":
    main()
