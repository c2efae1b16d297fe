"""Runs a ``load`` or ``connections`` scenario: the processes, the phases, the figures.

One run starts Redis, the stand-in model, Parley's servers and workers and (unless
told not to) the direct baseline, all as processes of their own, plus a
:class:`~bench.monitor.Monitor`. The load runs against Parley and the baseline in
alternating rounds (Parley first), so machine noise falls on both alike; each target
is warmed up first (2 sessions x 2 messages, not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import procs
from bench.analysis import ModelTiming, Tally, tally
from bench.figures import SHARED_PROCESSES, Target, dist, figures, sweep_point, timeline
from bench.load import ChatSocket, LoadClient, converse, think_times
from bench.monitor import Monitor, Usage, hwm_mb
from bench.scenarios import Options, Scenario
from bench.settings import load_overrides
from stack.redis import EmbeddedRedis
from testkit.ports import free_port
from testkit.processes import Cluster, tracing_wiring
from testkit.redis_sentinel import RedisWithSentinels
from testkit.standin import reply_tokens

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How late (ms) after the model's own time a reply may be and still be on time.
ON_TIME_MS = 20.0
#: Handshakes at a time when opening the ``connections`` scenario's sockets. A Redis
#: pool grows with the commands in flight at once, so sockets are opened one after
#: another: the connections counted at 10 and at N sockets then differ only by what
#: the sockets themselves hold. (The pool is bounded, ``REDIS_MAX_CONNECTIONS``,
#: whatever the bursts.)
OPEN_CONCURRENCY = 1


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (as Parley's processes do), so the
    load generator's own event loop costs little and keeps its clock honest."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run(scenario: Scenario, o: Options, work_dir: Path) -> dict[str, Any]:
    """Run ``scenario`` with options ``o``; return its result (see :func:`figures`).

    ``work_dir`` receives Redis's data and every process's log.
    """
    procs.raise_fd_limit()
    log_dir = work_dir / "logs"
    with contextlib.ExitStack() as stack:
        redis = (
            stack.enter_context(
                RedisWithSentinels(work_dir / "redis", replicas=o.wait_replicas, sentinels=0)
            ).nodes[0]  # the primary; no failover, so no Sentinel
            if o.wait_replicas
            else stack.enter_context(EmbeddedRedis(port=free_port(), data_dir=work_dir / "redis"))
        )
        model = stack.enter_context(
            procs.standin(
                log_dir / "standin.log", tokens=o.tokens, ttft_ms=o.ttft_ms, delay_ms=o.delay_ms
            )
        )
        base = (
            stack.enter_context(
                procs.baseline(log_dir / "baseline.log", model_url=model.url, flush_ms=o.flush_ms)
            )
            if o.baseline
            else None
        )
        collector = (
            stack.enter_context(procs.collector(log_dir / "collector.log")) if o.tracing else None
        )
        monitor = stack.enter_context(Monitor(redis.url))
        assert redis.process is not None
        monitor.watch("redis", redis.process.pid)
        monitor.watch("model", model.pid)
        monitor.watch("load", os.getpid())
        if base is not None:
            monitor.watch("baseline", base.pid)
        if collector is not None:  # watched, but no target's: the tracing backend's cost
            monitor.watch("collector", collector.pid)
        return run_loop(_run(scenario, o, redis.url, model.url, base, monitor, log_dir, collector))


async def _run(
    scenario: Scenario,
    o: Options,
    redis_url: str,
    model_url: str,
    base: procs.Running | None,
    monitor: Monitor,
    log_dir: Path,
    collector: procs.Running | None = None,
) -> dict[str, Any]:
    overrides = load_overrides(o)
    # Tracing on: every process exports to the run's collector (the SDK's 5 s batches).
    wiring = tracing_wiring(collector.url) if collector is not None else None
    async with (
        Cluster(redis_url, model_url, log_dir, overrides=overrides, wiring=wiring) as cluster,
        aiohttp.ClientSession() as http,
    ):
        await cluster.start(servers=o.servers, workers=o.workers)
        client_names: dict[str, str] = {}
        for p in cluster.procs:
            monitor.watch(p.name, p.pid)
            client_names[f"parley-{p.role}-{p.pid}"] = p.name
        shared = list(SHARED_PROCESSES)
        targets = [
            Target(
                "parley",
                [s.url for s in cluster.servers],
                [p.name for p in cluster.procs] + ["redis", *shared],
                Tally(),
            )
        ]
        if base is not None:
            targets.append(Target("baseline", [base.url], ["baseline", *shared], Tally()))
        model_root = model_url.removesuffix("/v1")
        if scenario.kind == "connections":
            await _connections(o, targets, http, model_root, monitor, client_names)
        else:
            await _load(o, targets, http, model_root, monitor)
        errors = cluster.log_errors()
    traced = await _spans_collected(http_url=collector.url) if collector is not None else None
    return figures(scenario, o, targets, client_names, errors) | {
        "overrides": overrides.described(),
        "tracing": traced,
    }


async def _spans_collected(http_url: str) -> dict[str, Any]:
    """What the run's collector stand-in received (``exports``, ``spans``), once the
    cluster has stopped (each process exports what it still batched as it exits)."""
    async with aiohttp.ClientSession() as http, http.get(f"{http_url}/_stats") as response:
        response.raise_for_status()
        stats: dict[str, Any] = await response.json()
        return stats


# -- load scenarios ---------------------------------------------------------------------


async def _load(
    o: Options,
    targets: list[Target],
    http: aiohttp.ClientSession,
    model_root: str,
    monitor: Monitor,
) -> None:
    for target in targets:
        await _warm_up(target.urls, o)
    for round_ in range(o.rounds):
        order = targets if round_ % 2 == 0 else list(reversed(targets))
        for target in order:
            logger.info("round %d/%d: %s", round_ + 1, o.rounds, target.name)
            async with LoadClient(target.urls) as client:
                sockets = await client.open(o.sessions)
                t, u, started = await _phase(
                    sockets, o, http, model_root, monitor, seed=round_ * 7919
                )
            target.fold(t, u)
            if target.timeline is None:
                target.timeline = timeline(t, started, monitor, target.processes)
    for i, fraction in enumerate(o.sweep):
        point = dataclasses.replace(o, sessions=max(1, round(o.sessions * fraction)))
        for target in targets if i % 2 == 0 else list(reversed(targets)):
            logger.info("sweep: %d sessions, %s", point.sessions, target.name)
            async with LoadClient(target.urls) as client:
                sockets = await client.open(point.sessions)
                t, _, _ = await _phase(sockets, point, http, model_root, monitor, seed=i * 104729)
            target.sweep.append(sweep_point(point, t))


async def _warm_up(urls: list[str], o: Options) -> None:
    async with LoadClient(urls) as client:
        sockets = await client.open(2)
        await asyncio.gather(*(converse(s, 2, lambda: 0.0, o.reply_timeout_s) for s in sockets))


async def _phase(
    sockets: Sequence[ChatSocket],
    o: Options,
    http: aiohttp.ClientSession,
    model_root: str,
    monitor: Monitor,
    seed: int,
) -> tuple[Tally, Usage, float]:
    """Run one conversation per socket; return what it measured and when it started."""
    async with http.post(f"{model_root}/_reset") as response:
        response.raise_for_status()
    rng = random.Random(seed)
    monitor.begin()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            converse(
                s,
                o.messages,
                think_times(o.think_ms, seed + s.index),
                o.reply_timeout_s,
                stagger_s=rng.uniform(0, o.stagger_ms / 1000),
            )
            for s in sockets
        )
    )
    elapsed = time.perf_counter() - started
    usage = monitor.end()
    async with http.get(f"{model_root}/_timings", params={"deltas": "1"}) as response:
        response.raise_for_status()
        timings = ModelTiming.parse(await response.json())
    tokens = o.tokens
    result = tally(sockets, timings, lambda prompt: reply_tokens(prompt, tokens), elapsed)
    budget_ms = o.ttft_ms + o.delay_ms * (tokens - 1) + ON_TIME_MS
    result.late = sum(1 for d in result.client_done_ms if d > budget_ms)
    return result, usage, started


# -- connections --------------------------------------------------------------------------


async def _connections(
    o: Options,
    targets: list[Target],
    http: aiohttp.ClientSession,
    model_root: str,
    monitor: Monitor,
    client_names: dict[str, str],
) -> None:
    """Hold ``o.sockets`` sockets on one server process; converse on ``o.sessions`` of them."""
    for target in targets:
        await _warm_up(target.urls, o)
    for target in targets:
        process = target.processes[0]  # server-1, or the baseline
        redis_name = next((k for k, v in client_names.items() if v == process), None)

        def redis_connections(name: str | None = redis_name) -> int | None:
            return None if name is None else monitor.connections().get(name, 0)

        logger.info("%s: opening %d sockets", target.name, o.sockets)
        async with LoadClient(target.urls) as client:
            few = await client.open(min(10, o.sockets), concurrency=OPEN_CONCURRENCY)
            # The same conversations with only these sockets open, to compare with; then
            # the counts, so that both include what conversations add to the pool.
            t_10, _, _ = await _phase(few[: o.sessions], o, http, model_root, monitor, seed=2)
            await asyncio.sleep(1.0)
            rss_at_10, redis_at_10 = monitor.rss_mb(process), redis_connections()
            started = time.perf_counter()
            await client.open(o.sockets - len(client.sockets), concurrency=OPEN_CONCURRENCY)
            open_s = time.perf_counter() - started
            await asyncio.sleep(1.0)
            rss_at_n, redis_at_n = monitor.rss_mb(process), redis_connections()
            logger.info("%s: %d sockets open in %.1f s", target.name, len(client.sockets), open_s)
            # Sessions of their own, spread over the sockets opened since: one that already
            # conversed above would send twice its messages in one RATE_WINDOW_S, and be
            # refused past RATE_MESSAGES_PER_SESSION as any session would.
            rest = client.sockets[len(few) :]
            step = max(1, len(rest) // max(1, o.sessions))
            active = rest[::step][: o.sessions]
            t, u, started = await _phase(active, o, http, model_root, monitor, seed=1)
            pid = monitor.pid(process)
            peak = hwm_mb(pid) if pid is not None else None
            closing = time.perf_counter()
        logger.info("%s: sockets closed in %.1f s", target.name, time.perf_counter() - closing)
        target.fold(t, u)
        target.timeline = timeline(t, started, monitor, target.processes)
        target.sockets = {
            "open": o.sockets,
            "open_s": open_s,
            "opened_per_s": o.sockets / open_s if open_s else None,
            "rss_mb_at_10": rss_at_10,
            "rss_mb": rss_at_n,
            "peak_rss_mb": peak,
            "kb_per_socket": (rss_at_n - rss_at_10) * 1024 / max(1, o.sockets - 10),
            "added_ttft_ms_at_10": dist(t_10.added_ttft_ms),
            "added_done_ms_at_10": dist(t_10.added_done_ms),
            "redis_connections_at_10": redis_at_10,
            "redis_connections": redis_at_n,
            "redis_connections_added": (
                redis_at_n - redis_at_10
                if redis_at_n is not None and redis_at_10 is not None
                else None
            ),
        }
