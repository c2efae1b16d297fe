"""``python -m bench.lua_calls``: one script body run by ``EVALSHA`` and by ``FCALL``.

Measures what choosing Redis Functions over scripts would change per call. The same
body (``emit_batch.lua``, one event) runs three ways: as a script with ``library.lua``
prepended (how :mod:`storage.scripts` runs it), as a script with ``trim.lua``'s helpers prepended
too (every helper in every script), and as a function of a library that defines all
the helpers once (``FUNCTION LOAD``, ``FCALL``). Rounds alternate between the ways on
one embedded Redis. Prints, for each, the median over rounds of Redis's own time
(``usec_per_call`` of ``INFO commandstats``) and of the client's round trip (µs a call,
sequential calls of one asyncio client; on a busy machine mostly noise).

Usage: ``python -m bench.lua_calls [--rounds N] [--calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from stack.redis import EmbeddedRedis
from storage import keys
from storage.scripts import LIBRARY, TRIM, source
from testkit.ports import free_port

TOKEN = "0" + "0" * 7 + "-0000-4000-8000-000000000000"
EVENT = '{"type":"token","message_id":"m","content":"hello"}'


def function_library() -> str:
    """``emit_batch.lua`` as the function ``bench_emit`` of a library with the helpers."""
    return (
        "#!lua name=parley_bench\n"
        + LIBRARY
        + TRIM
        + "\nredis.register_function('bench_emit', function(KEYS, ARGV)\n"
        + source("emit_batch.lua")
        + "\nend)\n"
    )


async def timed_round(redis: Redis[str], call: list[str], calls: int) -> tuple[float, float]:
    """Run ``call`` ``calls`` times; (client µs a call, Redis's µs a call)."""
    await redis.config_resetstat()
    started = time.perf_counter()
    for _ in range(calls):
        await redis.execute_command(*call)  # type: ignore[no-untyped-call]
    client_us = (time.perf_counter() - started) / calls * 1e6
    stats = await redis.info("commandstats")
    server = stats[f"cmdstat_{call[0].lower()}"]
    return client_us, float(server["usec_per_call"])


async def measure(url: str, rounds: int, calls: int) -> dict[str, list[tuple[float, float]]]:
    """Per way of calling, each round's (client µs, Redis µs) a call."""
    redis: Redis[str] = Redis.from_url(url, decode_responses=True)
    session = keys.session_key(TOKEN)
    await redis.json().set(session, "$", {"generator": "1:a"})
    sha = await redis.script_load(LIBRARY + source("emit_batch.lua"))  # type: ignore[no-untyped-call]
    sha_all = await redis.script_load(LIBRARY + TRIM + source("emit_batch.lua"))  # type: ignore[no-untyped-call]
    await redis.function_load(function_library(), replace=True)
    ttl_ms = "3600000"
    args = [session, keys.events_key(TOKEN), "50", ttl_ms, EVENT, keys.channel(TOKEN), "1:a", "0"]
    ways = {
        "EVALSHA, library.lua": ["EVALSHA", sha, "2", *args],
        "EVALSHA, + trim.lua": ["EVALSHA", sha_all, "2", *args],
        "FCALL": ["FCALL", "bench_emit", "2", *args],
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for call in ways.values():  # a warm-up round each
        await timed_round(redis, call, calls)
    for _ in range(rounds):
        for name, call in ways.items():
            results[name].append(await timed_round(redis, call, calls))
    await redis.aclose()  # type: ignore[attr-defined]  # stale stubs
    return results


def main(argv: list[str] | None = None) -> int:
    """Start an embedded Redis, measure, print one line per way of calling."""
    parser = argparse.ArgumentParser(prog="python -m bench.lua_calls")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    options = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as data,
        EmbeddedRedis(port=free_port(), data_dir=Path(data)) as server,
    ):
        results = asyncio.run(measure(server.url, options.rounds, options.calls))
    print(f"{options.rounds} rounds of {options.calls} sequential calls, medians:")
    for name, figures in results.items():
        client = statistics.median(c for c, _ in figures)
        redis_us = statistics.median(s for _, s in figures)
        print(f"{name:20} in Redis {redis_us:6.2f} µs/call   round trip {client:7.1f} µs/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
