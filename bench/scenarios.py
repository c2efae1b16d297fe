"""The named scenarios: what each runs, and the targets it is held to.

Every figure a target reads is a path into the scenario's result (see
:func:`bench.figures.figures`), e.g. ``parley.added_ttft_ms.median`` or
``ratio.added_ttft_ms``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.config import WorkerSettings

FLUSH_MS_DEFAULT: float = WorkerSettings.model_fields["stream_flush_ms"].default
"""The workers' own ``STREAM_FLUSH_MS`` default (ms)."""

KEEPING_UP_MS = 100.0
"""An event delay p99 (ms) at or below which a target keeps up with the model's stream."""


@dataclass(frozen=True)
class Options:
    """What one scenario runs (the CLI can override each).

    Attributes:
        servers: Parley server processes.
        workers: Parley worker processes.
        sessions: sessions sending messages at once.
        messages: messages each session sends, each after the previous reply closed.
        tokens: tokens (SSE deltas) of each stand-in reply.
        ttft_ms: the stand-in's time to first token (ms).
        delay_ms: the stand-in's time between deltas (ms).
        think_ms: mean pause (ms) after a reply before the next message, drawn
            uniformly from 0.5x to 1.5x; 0: none.
        stagger_ms: sessions start at a uniform random time within this window (ms).
        rounds: rounds per target; Parley and the baseline alternate, Parley first.
        flush_ms: ``STREAM_FLUSH_MS`` of the workers and of the baseline (ms).
        baseline: also run the same load against the direct baseline.
        sockets: idle sockets held open on the server (``connections`` only).
        worker_concurrency: the workers' ``WORKER_CONCURRENCY`` (None: its default).
        wait_replicas: replicas of the run's Redis, and Parley's ``REDIS_WAIT_REPLICAS``
            (0: one Redis, no wait; ``load`` and ``connections`` only).
        reply_timeout_s: a reply not closed this long (s) after its message is lost.
        sweep: after the rounds, the same load again at these fractions of ``sessions``
            (one phase each per target): the offered load at which each target's event
            delay p99 passes :data:`KEEPING_UP_MS`. Empty: no sweep.
        tracing: Parley's processes trace every reply, exporting to a collector
            stand-in of the run (``python -m testkit.collector``, its own process,
            outside Parley's figures); off: as shipped (``load`` and ``connections``).
    """

    servers: int = 1
    workers: int = 1
    sessions: int = 50
    messages: int = 10
    tokens: int = 20
    ttft_ms: float = 0.0
    delay_ms: float = 0.0
    think_ms: float = 0.0
    stagger_ms: float = 0.0
    rounds: int = 2
    flush_ms: float = FLUSH_MS_DEFAULT
    baseline: bool = True
    sockets: int = 0
    worker_concurrency: int | None = None
    wait_replicas: int = 0
    reply_timeout_s: float = 30.0
    sweep: tuple[float, ...] = ()
    tracing: bool = False

    def describe(self) -> str:
        """The options in a few words, for tables."""
        model = (
            "instant model"
            if not (self.ttft_ms or self.delay_ms)
            else f"model ttft {self.ttft_ms:g} ms, {self.delay_ms:g} ms/token"
        )
        parts = [
            f"{self.servers} server{'s' * (self.servers > 1)}, "
            f"{self.workers} worker{'s' * (self.workers > 1)}",
        ]
        if self.sockets:
            parts.append(f"{self.sockets} idle sockets")
        parts += [
            f"{self.sessions} sessions x {self.messages} messages",
            f"think {self.think_ms:g} ms" if self.think_ms else "no think time",
            f"{model}, {self.tokens} tokens",
            f"flush {self.flush_ms:g} ms",
            f"{self.rounds} round{'s' * (self.rounds > 1)}",
        ]
        if self.worker_concurrency:
            parts.append(f"WORKER_CONCURRENCY {self.worker_concurrency}")
        if self.wait_replicas:
            parts.append(f"{self.wait_replicas} replica(s) waited for")
        if self.tracing:
            parts.append("tracing on")
        return "; ".join(parts)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Check:
    """One target: ``figure op threshold``; the figure is a dotted path into the result."""

    label: str
    figure: str
    op: Literal["<=", ">=", "=="]
    threshold: float
    unit: str = ""

    def value(self, result: dict[str, Any]) -> float | None:
        """The figure in ``result``, or None if it is missing."""
        node: Any = result
        for part in self.figure.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if node is None else float(node)

    def verdict(self, result: dict[str, Any]) -> bool | None:
        """Whether the target is met; None if the figure is missing."""
        value = self.value(result)
        return None if value is None else _OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Scenario:
    """A named scenario: its kind of run, its default options, its targets."""

    name: str
    kind: Literal["load", "connections", "stacks", "real-model"]
    summary: str
    options: Options = field(default_factory=Options)
    checks: tuple[Check, ...] = ()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "latency",
            "load",
            "what Parley adds to a reply at a moderate load",
            # A think time of about a second (staggered) keeps the server far from
            # saturation: what is measured is the path, not a queue.
            Options(sessions=50, messages=10, think_ms=1000, stagger_ms=1000),
            (
                Check("Parley/baseline added TTFT median", "ratio.added_ttft_ms", "<=", 1.5),
                Check("Parley/baseline added TTFT p99", "ratio.added_ttft_ms_p99", "<=", 2),
            ),
        ),
        Scenario(
            "throughput",
            "load",
            "replies per second with every session sending as fast as replies come",
            Options(workers=2, sessions=200, messages=20, rounds=2),
            (
                Check("Parley/baseline replies/s", "ratio.replies_per_s", ">=", 0.6),
                Check("Parley/baseline CPU per reply", "ratio.cpu_ms_per_reply", "<=", 2.5),
                Check("Redis commands per reply", "parley.redis.commands_per_reply", "<=", 20),
            ),
        ),
        Scenario(
            "streaming",
            "load",
            "long replies streamed to many sessions at once: does delivery keep up",
            Options(
                workers=2,
                sessions=500,
                messages=2,
                tokens=200,
                delay_ms=20,
                # Tokens come every 20 ms: a 40 ms window joins about 2 per event,
                # halving the events, and holds a token back at most 40 ms.
                flush_ms=40,
                stagger_ms=1000,
                rounds=1,
                worker_concurrency=500,
                reply_timeout_s=60,
                # 2,500 to 20,000 tokens/s offered, below the run's 25,000.
                sweep=(0.1, 0.2, 0.4, 0.6, 0.8),
            ),
            (
                Check("Parley/baseline token events/s", "ratio.token_events_per_s", ">=", 0.95),
                Check("Parley/baseline event delay p99", "ratio.event_delay_ms", "<=", 1.5),
                Check(
                    "event delay p99 (baseline keeping up)",
                    "parley.event_delay_ms_p99_where_baseline_keeps_up",
                    "<=",
                    KEEPING_UP_MS,
                    "ms",
                ),
            ),
        ),
        Scenario(
            "connections",
            "connections",
            "many idle sockets on one server process, and one of them still answered",
            Options(sockets=10_000, sessions=10, messages=20, think_ms=100, rounds=1),
            (
                Check("Parley/bare FastAPI KB per idle socket", "ratio.kb_per_socket", "<=", 1.1),
                Check(
                    "server Redis connections, 10k minus 10 sockets",
                    "parley.sockets.redis_connections_added",
                    "==",
                    0,
                ),
                Check("added TTFT p99", "parley.added_ttft_ms.p99", "<=", 20, "ms"),
                Check("added done p99", "parley.added_done_ms.p99", "<=", 20, "ms"),
            ),
        ),
        Scenario(
            "stacks",
            "stacks",
            "server stacks for the same bare FastAPI app: idle sockets and echoes",
            # Figures to choose a stack by, no target of their own.
            Options(sockets=3000, messages=1000, rounds=1, baseline=False),
        ),
        Scenario(
            "seed-shape",
            "load",
            "20 sessions x 5 messages, the model answering in 0.5 s",
            Options(workers=2, sessions=20, messages=5, ttft_ms=500, rounds=2),
            # Late: done more than 20 ms after the model's own time (0.5 s) from sending.
            (
                Check(
                    "replies late, Parley minus the baseline",
                    "difference.late_replies",
                    "<=",
                    0,
                ),
            ),
        ),
        Scenario(
            "real-model",
            "real-model",
            "the embedded model: Parley's time to first token versus direct",
            Options(sessions=4, rounds=10, tokens=32, baseline=False),
            (Check("Parley/direct first token median", "first_token_ratio", "<=", 1.05),),
        ),
    )
}
