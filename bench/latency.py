"""The ``latency`` scenario: the latency Parley adds to a reply, and its throughput.

An instant stand-in model (``python -m stack.standin``: no time to first token, no
delay between tokens) behind 1 server and 1 worker process, so what the clients measure
is Parley's own cost. ``sessions`` sessions talk at once; each sends its next message
only once the previous reply is ``done`` (after ``think_ms``). Per reply, at the client:
time to first token (message sent -> first ``token`` event) and time to ``done``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Distribution, ms
from stack.cluster import REPO_ROOT, ChatDriver, Cluster, SessionTrace
from stack.process import die_with_parent, stop_process
from stack.redis import EmbeddedRedis, free_port
from stack.standin import REPLY_PREFIX
from worker.config import WorkerSettings

logger = logging.getLogger(__name__)

FLUSH_MS_DEFAULT: float = WorkerSettings.model_fields["stream_flush_ms"].default
"""The workers' own ``STREAM_FLUSH_MS`` default (ms)."""


@dataclass(frozen=True)
class LatencyOptions:
    """What the ``latency`` scenario runs.

    Attributes:
        sessions: sessions talking at once.
        messages: messages each session sends, one after another.
        tokens: tokens (SSE deltas) per stand-in reply.
        think_ms: pause (ms) between a ``done`` and the session's next message.
        flush_ms: the workers' ``STREAM_FLUSH_MS`` (ms): deltas coalesced over this window.
        reply_timeout_s: a reply not ``done`` this long (s) after its message is lost,
            and its session stops sending.
    """

    sessions: int = 50
    messages: int = 5
    tokens: int = 20
    think_ms: float = 0.0
    flush_ms: float = FLUSH_MS_DEFAULT
    reply_timeout_s: float = 30.0


@dataclass(frozen=True)
class LatencyResult:
    """What the clients measured.

    Attributes:
        sent: messages sent (fewer than sessions x messages if a session gave up).
        replies: ``done`` events answering a message of their own session.
        lost: messages with neither a ``done`` nor an ``error`` within the timeout.
        misrouted: events about another session's message, and ``done`` events whose
            reply does not start with ``"Reply to: <its own message>"``.
        errors: ``error`` events received.
        first_token_ms: message sent -> first ``token`` event of its reply (ms).
        done_ms: message sent -> its ``done`` event (ms).
        elapsed_s: from the first message sent to the last reply (s).
        replies_per_s: ``replies / elapsed_s``.
    """

    options: LatencyOptions
    sent: int
    replies: int
    lost: int
    misrouted: int
    errors: int
    first_token_ms: Distribution
    done_ms: Distribution
    elapsed_s: float
    replies_per_s: float

    @property
    def failures(self) -> int:
        """Replies lost or misrouted, and errors."""
        return self.lost + self.misrouted + self.errors

    def line(self) -> str:
        """One line to compare runs by."""
        o = self.options
        return (
            f"latency: {o.sessions} sessions x {o.messages} messages, {o.tokens} tokens: "
            f"first token median {ms(self.first_token_ms.median)} ms "
            f"(p95 {ms(self.first_token_ms.p95)}, p99 {ms(self.first_token_ms.p99)}), "
            f"done median {ms(self.done_ms.median)} ms "
            f"(p95 {ms(self.done_ms.p95)}, p99 {ms(self.done_ms.p99)}), "
            f"{self.replies_per_s:.0f} replies/s; "
            f"lost {self.lost}, misrouted {self.misrouted}, errors {self.errors}"
        )

    def table(self) -> str:
        """The distributions as a small table (ms)."""
        rows = [f"  {'ms':<12}{'median':>9}{'p95':>9}{'p99':>9}{'n':>7}"]
        for name, d in (("first token", self.first_token_ms), ("done", self.done_ms)):
            rows.append(f"  {name:<12}{ms(d.median):>9}{ms(d.p95):>9}{ms(d.p99):>9}{d.n:>7}")
        return "\n".join(rows)


def run(options: LatencyOptions, work_dir: Path) -> LatencyResult:
    """Start Redis, the stand-in model, 1 server and 1 worker; measure; stop them all.

    ``work_dir`` receives Redis's data and every process's log.
    """
    with (
        EmbeddedRedis(port=free_port(), data_dir=work_dir / "redis") as redis,
        _standin_process(options.tokens, work_dir / "standin.log") as model_url,
    ):
        return asyncio.run(_measure(options, redis.url, model_url, work_dir / "logs"))


async def _measure(
    options: LatencyOptions, redis_url: str, model_url: str, log_dir: Path
) -> LatencyResult:
    env = {"STREAM_FLUSH_MS": str(options.flush_ms)}
    async with Cluster(redis_url, model_url, log_dir, env=env) as cluster:
        await cluster.start(servers=1, workers=1)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            # One reply first, so connection pools and code paths are warm; not counted.
            (warm,) = await driver.open(1)
            await _converse(warm, 1, 0.0, options.reply_timeout_s)
            sessions = await driver.open(options.sessions)
            logger.info("%d sessions open; sending", len(sessions))
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    _converse(t, options.messages, options.think_ms / 1000, options.reply_timeout_s)
                    for t in sessions
                )
            )
            elapsed_s = time.perf_counter() - started
    return _analyse(options, sessions, elapsed_s)


async def _converse(trace: SessionTrace, messages: int, think_s: float, timeout_s: float) -> None:
    """Send ``messages`` messages, each once the previous one's reply has closed."""
    for k in range(1, messages + 1):
        if k > 1 and think_s:
            await asyncio.sleep(think_s)
        await trace.say(f"s{trace.index}-m{k}-bench")
        try:
            async with asyncio.timeout(timeout_s):
                await trace.wait_until(
                    lambda: trace.closed or trace.closing_count() >= len(trace.sent)
                )
        except TimeoutError:
            logger.warning("s%d m%d: no reply in %.0f s; session stops", trace.index, k, timeout_s)
            return
        if trace.closed:
            logger.warning("s%d: socket closed after m%d", trace.index, k)
            return


def _analyse(
    options: LatencyOptions, sessions: Sequence[SessionTrace], elapsed_s: float
) -> LatencyResult:
    sent = replies = lost = misrouted = errors = 0
    first_token_ms: list[float] = []
    done_ms: list[float] = []
    for t in sessions:
        # The k-th ``queued`` event of a socket acknowledges its k-th message.
        own = {e["message_id"]: k for k, e in enumerate(t.events("queued"))}
        first_token: dict[str, float] = {}
        done: dict[str, float] = {}
        failed: set[str] = set()
        for r in t.received:
            kind, mid = r.event["type"], r.event.get("message_id")
            if kind == "queued" or mid is None:
                if kind == "error":
                    errors += 1
                continue
            if mid not in own:
                misrouted += 1
            elif kind == "token":
                first_token.setdefault(mid, r.at)
            elif kind == "error":
                errors += 1
                failed.add(mid)
            elif kind == "done":
                head = REPLY_PREFIX + t.sent[own[mid]].content
                reply: str = r.event["reply"]["content"]
                if reply != head and not reply.startswith(head + " "):
                    misrouted += 1
                else:
                    done.setdefault(mid, r.at)
        sent += len(t.sent)
        ids = {k: mid for mid, k in own.items()}
        for k, message in enumerate(t.sent):
            mid = ids.get(k)
            if mid is None or (mid not in done and mid not in failed):
                lost += 1
                continue
            if mid in first_token:
                first_token_ms.append((first_token[mid] - message.at) * 1000)
            if mid in done:
                done_ms.append((done[mid] - message.at) * 1000)
        replies += len(done)
    return LatencyResult(
        options=options,
        sent=sent,
        replies=replies,
        lost=lost,
        misrouted=misrouted,
        errors=errors,
        first_token_ms=Distribution.of(first_token_ms),
        done_ms=Distribution.of(done_ms),
        elapsed_s=elapsed_s,
        replies_per_s=replies / elapsed_s if elapsed_s else 0.0,
    )


@contextlib.contextmanager
def _standin_process(tokens: int, log_path: Path, timeout_s: float = 15.0) -> Iterator[str]:
    """``python -m stack.standin``, instant, on a free port; yields its API base URL.

    A process of its own, so serving the replies does not delay the clients' clocks.
    """
    port = free_port()
    argv = [sys.executable, "-m", "stack.standin", "--port", str(port), "--tokens", str(tokens)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in model did not start; see {log_path}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc, "stand-in model", grace_s=5)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
