"""What the processes and Redis spend: CPU, memory, Redis commands and connections.

A :class:`Monitor` samples every watched process (psutil: CPU seconds, RSS) and Redis's
``CLIENT LIST`` from a thread, every ``interval_s``. :meth:`Monitor.begin` and
:meth:`Monitor.end` bracket a load phase; :meth:`Monitor.end` returns the phase's
:class:`Usage`: CPU seconds per process, peak RSS (the sampled maximum and the kernel's
``VmHWM``, the lifetime peak), Redis's ``used_memory`` and per-command call counts
(``INFO commandstats``) over the phase, and the most Redis connections each named
client held (Parley names them ``parley-<role>-<pid>``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed
import redis

logger = logging.getLogger(__name__)

#: Commands the benchmark itself sends to Redis; left out of the per-reply counts.
_OWN_COMMANDS = frozenset({"info", "client|list", "flushall", "ping", "xinfo|consumers"})


@dataclass
class ProcessUsage:
    """One process over one phase: CPU seconds (user + system), peak RSS (MB)."""

    cpu_s: float
    peak_rss_mb: float
    hwm_mb: float | None


@dataclass
class Usage:
    """Processes and Redis over one phase.

    Attributes:
        wall_s: the phase's duration (s).
        processes: per watched process name.
        redis_used_memory_delta: ``used_memory`` at the end minus at the start (bytes).
        redis_used_memory: ``used_memory`` at the end (bytes).
        redis_calls: calls per command during the phase (the benchmark's own left out).
        redis_connections: most connections each client name held during the phase
            (unnamed clients, the benchmark's own, are ``"other"``).
    """

    wall_s: float
    processes: dict[str, ProcessUsage]
    redis_used_memory_delta: int
    redis_used_memory: int
    redis_calls: dict[str, int]
    redis_connections: dict[str, int]

    def add(self, other: Usage) -> None:
        """Fold another phase of the same target into this one (sums; maxima for peaks)."""
        self.wall_s += other.wall_s
        for name, p in other.processes.items():
            mine = self.processes.get(name)
            if mine is None:
                self.processes[name] = ProcessUsage(p.cpu_s, p.peak_rss_mb, p.hwm_mb)
                continue
            mine.cpu_s += p.cpu_s
            mine.peak_rss_mb = max(mine.peak_rss_mb, p.peak_rss_mb)
            mine.hwm_mb = max(mine.hwm_mb or 0.0, p.hwm_mb or 0.0) or None
        self.redis_used_memory_delta += other.redis_used_memory_delta
        self.redis_used_memory = other.redis_used_memory
        calls = Counter(self.redis_calls)
        calls.update(other.redis_calls)
        self.redis_calls = dict(calls)
        for name, n in other.redis_connections.items():
            self.redis_connections[name] = max(self.redis_connections.get(name, 0), n)


@dataclass
class _Phase:
    started: float
    cpu: dict[str, float]
    used_memory: int
    calls: dict[str, int]
    peak_rss: dict[str, float] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)


def hwm_mb(pid: int) -> float | None:
    """The process's peak resident set size (``VmHWM``, MB), Linux only."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Monitor:
    """Samples processes and Redis in a background thread.

    Args:
        redis_url: the Redis to read ``INFO`` and ``CLIENT LIST`` from.
        interval_s: sampling period (s).
    """

    def __init__(self, redis_url: str, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self._procs: dict[str, psutil.Process] = {}
        self._lock = threading.Lock()
        self._phase: _Phase | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``(t, name, cpu_s, rss_mb)`` samples, t in perf_counter seconds.
        self.samples: list[tuple[float, str, float, float]] = []

    def watch(self, name: str, pid: int) -> None:
        """Sample process ``pid`` under ``name`` from now on."""
        with self._lock:
            self._procs[name] = psutil.Process(pid)

    def unwatch(self, name: str) -> None:
        """Stop sampling ``name``."""
        with self._lock:
            self._procs.pop(name, None)

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._redis.close()

    # -- phases -----------------------------------------------------------------------

    def begin(self) -> None:
        """Start a phase: CPU counters, Redis memory and command counts now."""
        phase = _Phase(time.perf_counter(), self._cpu(), self._used_memory(), self._calls())
        with self._lock:
            self._phase = phase
        self._sample()

    def end(self) -> Usage:
        """End the phase begun last; return what it used."""
        self._sample()
        with self._lock:
            phase, self._phase = self._phase, None
            procs = dict(self._procs)
        assert phase is not None, "Monitor.begin() first"
        cpu = self._cpu()
        calls = self._calls()
        used = self._used_memory()
        delta = {k: v - phase.calls.get(k, 0) for k, v in calls.items()}
        return Usage(
            wall_s=time.perf_counter() - phase.started,
            processes={
                name: ProcessUsage(
                    cpu_s=cpu.get(name, 0.0) - phase.cpu.get(name, 0.0),
                    peak_rss_mb=phase.peak_rss.get(name, 0.0),
                    hwm_mb=hwm_mb(p.pid),
                )
                for name, p in procs.items()
            },
            redis_used_memory_delta=used - phase.used_memory,
            redis_used_memory=used,
            redis_calls={k: v for k, v in delta.items() if v and k not in _OWN_COMMANDS},
            redis_connections=dict(phase.connections),
        )

    def connections(self) -> dict[str, int]:
        """Redis connections held now, by client name (``"other"`` for unnamed ones)."""
        counts: Counter[str] = Counter()
        for client in self._redis.client_list():
            counts[client.get("name") or "other"] += 1
        return dict(counts)

    def pid(self, name: str) -> int | None:
        """The process id watched as ``name``, if any."""
        with self._lock:
            proc = self._procs.get(name)
        return None if proc is None else proc.pid

    def rss_mb(self, name: str) -> float:
        """``name``'s resident set size now (MB)."""
        with self._lock:
            proc = self._procs[name]
        return float(proc.memory_info().rss) / 2**20

    # -- sampling -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except (psutil.Error, redis.RedisError) as e:
                logger.debug("monitor sample failed: %s", e)

    def _sample(self) -> None:
        now = time.perf_counter()
        with self._lock:
            procs = dict(self._procs)
        rows: list[tuple[float, str, float, float]] = []
        for name, p in procs.items():
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    rss = p.memory_info().rss / 2**20
            except psutil.Error:
                continue
            rows.append((now, name, times.user + times.system, rss))
        conns = self.connections()
        with self._lock:
            self.samples.extend(rows)
            phase = self._phase
            if phase is None:
                return
            for _, name, _, rss in rows:
                phase.peak_rss[name] = max(phase.peak_rss.get(name, 0.0), rss)
            for name, n in conns.items():
                phase.connections[name] = max(phase.connections.get(name, 0), n)

    def _cpu(self) -> dict[str, float]:
        with self._lock:
            procs = dict(self._procs)
        out: dict[str, float] = {}
        for name, p in procs.items():
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            out[name] = times.user + times.system
        return out

    def _used_memory(self) -> int:
        info: Mapping[str, Any] = self._redis.info("memory")
        return int(info["used_memory"])

    def _calls(self) -> dict[str, int]:
        stats: Mapping[str, Any] = self._redis.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict)
        }
