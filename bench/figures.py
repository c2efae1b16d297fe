"""A scenario's result: each target's counts, distributions, costs and time series.

Every figure a scenario's target reads is a path into what :func:`figures` returns
(see :mod:`bench.scenarios`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.analysis import Tally
from bench.monitor import Monitor, Usage
from bench.scenarios import KEEPING_UP_MS, Options, Scenario
from bench.stats import Distribution, cdf, percentile, ratio

#: Bins (s) of the time series drawn in the chart.
BIN_S = 0.5
#: The processes both targets share (the stand-in model, the load generator): not
#: counted in a target's own CPU.
SHARED_PROCESSES = ("model", "load")


@dataclass
class Target:
    """What the load ran against, and what it measured there over its phases."""

    name: str  # "parley" or "baseline"
    urls: list[str]
    processes: list[str]  # monitor names of the processes serving it
    tally: Tally
    usage: Usage | None = None
    timeline: dict[str, Any] | None = None
    sockets: dict[str, Any] | None = None
    sweep: list[dict[str, Any]] = field(default_factory=list)

    def fold(self, t: Tally, u: Usage) -> None:
        """Add one phase's tally and usage."""
        self.tally.add(t)
        if self.usage is None:
            self.usage = u
        else:
            self.usage.add(u)


def timeline(t: Tally, started: float, monitor: Monitor, processes: list[str]) -> dict[str, Any]:
    """Per :data:`BIN_S` bin from ``started``: replies/s, token events/s, the worst
    event delay, and each process's CPU use (cores)."""
    bins = max(1, int(t.elapsed_s / BIN_S) + 1)

    def rate(times: list[float]) -> list[float]:
        counts = [0] * bins
        for at in times:
            i = int((at - started) / BIN_S)
            if 0 <= i < bins:
                counts[i] += 1
        return [c / BIN_S for c in counts]

    worst = [0.0] * bins
    for at, delay in zip(t.event_delay_at, t.event_delay_ms, strict=True):
        i = int((at - started) / BIN_S)
        if 0 <= i < bins:
            worst[i] = max(worst[i], delay)
    cpu: dict[str, list[tuple[float, float]]] = {}
    last: dict[str, tuple[float, float]] = {}
    end = started + t.elapsed_s
    for at, name, cpu_s, _rss in sorted(monitor.samples):
        if name not in processes or not started - 1 <= at <= end:
            continue
        if name not in last:
            last[name] = (at, cpu_s)
            continue
        prev_at, prev_cpu = last[name]
        if at - prev_at < monitor.interval_s / 2:
            continue  # too close to the previous sample for a rate
        cpu.setdefault(name, []).append(
            (round(at - started, 3), round((cpu_s - prev_cpu) / (at - prev_at), 3))
        )
        last[name] = (at, cpu_s)
    return {
        "bin_s": BIN_S,
        "replies_per_s": rate(t.done_at),
        "token_events_per_s": rate(t.event_at),
        "worst_event_delay_ms": [round(w, 2) for w in worst],
        "cpu_cores": cpu,
    }


def sweep_point(o: Options, t: Tally) -> dict[str, Any]:
    """One offered load of a sweep: ``o.sessions`` sessions streaming at once, each
    offered one token every ``o.delay_ms`` (tokens/s); what was delivered, and the
    event delay p99 (ms)."""
    return {
        "sessions": o.sessions,
        "sent": t.sent,
        "replies": t.replies,
        "offered_tokens_per_s": o.sessions * 1000 / o.delay_ms if o.delay_ms else None,
        "tokens_per_s": t.tokens / t.elapsed_s if t.elapsed_s else 0.0,
        "token_events_per_s": t.token_events / t.elapsed_s if t.elapsed_s else 0.0,
        "event_delay_ms_p99": percentile(t.event_delay_ms, 99) if t.event_delay_ms else None,
        "failures": t.failures,
    }


def falls_behind(points: list[dict[str, Any]]) -> float | None:
    """The lowest offered load (tokens/s) of ``points`` whose event delay p99 passes
    :data:`KEEPING_UP_MS`; None if none does."""
    for point in sorted(points, key=lambda p: p["sessions"]):
        p99 = point["event_delay_ms_p99"]
        if p99 is not None and p99 > KEEPING_UP_MS:
            return float(point["offered_tokens_per_s"] or 0.0)
    return None


def dist(values: list[float]) -> dict[str, Any]:
    """A sample of durations (ms) summarized (:class:`~bench.stats.Distribution`)."""
    return asdict(Distribution.of(values))


#: The distributions of a target's figures (ms), each summarized by :func:`dist`.
DISTRIBUTIONS = (
    "added_ttft_ms",
    "added_done_ms",
    "to_model_ms",
    "from_model_ms",
    "client_ttft_ms",
    "client_done_ms",
    "model_ttft_ms",
    "model_done_ms",
    "event_delay_ms",
    "event_lag_ms",
)


def _target_figures(target: Target, o: Options, client_names: dict[str, str]) -> dict[str, Any]:
    t, u = target.tally, target.usage
    per_s = (lambda n: n / t.elapsed_s) if t.elapsed_s else (lambda n: 0.0)
    out: dict[str, Any] = {
        "sent": t.sent,
        "replies": t.replies,
        "errors": t.errors,
        "error_codes": dict(t.error_codes),
        "lost": t.lost,
        "misrouted": t.misrouted,
        "duplicated": t.duplicated,
        "out_of_order": t.out_of_order,
        "garbled": t.garbled,
        "failures": t.failures,
        "late_replies": t.late,
        "elapsed_s": round(t.elapsed_s, 3),
        "replies_per_s": per_s(t.replies),
        "token_events_per_s": per_s(t.token_events),
        "tokens_per_s": per_s(t.tokens),
        "tokens_per_event": t.tokens / t.token_events if t.token_events else None,
    }
    out |= {name: dist(getattr(t, name)) for name in DISTRIBUTIONS}
    out["cdf"] = {
        name: cdf(getattr(t, name)) for name in ("added_ttft_ms", "added_done_ms", "event_delay_ms")
    }
    if u is not None:
        out |= _costs(target.processes, u, t.replies)
        own = [n for n in target.processes if n not in SHARED_PROCESSES]
        cpu_s = sum(out["cpu_s"].get(n, 0.0) for n in own)
        # CPU of the target's own processes (not the stand-in model's or the load's).
        out["own_cpu_ms_per_reply"] = cpu_s * 1000 / t.replies if t.replies else None
        out["own_cpu_us_per_token"] = cpu_s * 1e6 / t.tokens if t.tokens else None
        if target.name == "parley":
            out["redis"] = _redis(u, t.replies, client_names)
    if target.sockets is not None:
        out["sockets"] = target.sockets
    if target.timeline is not None:
        out["timeline"] = target.timeline
    if target.sweep:
        # The rounds' own load is the sweep's last point.
        main = sweep_point(o, t)
        main["failures"] = 0  # counted above
        out["sweep"] = sorted([*target.sweep, main], key=lambda p: p["sessions"])
        out["failures"] += sum(p["failures"] for p in target.sweep)
        out["falls_behind_tokens_per_s"] = falls_behind(out["sweep"])
    return out


def _costs(processes: list[str], u: Usage, replies: int) -> dict[str, Any]:
    """CPU seconds (in all and per reply) and memory of the target's ``processes``."""
    used = {n: p for n, p in u.processes.items() if n in processes}
    return {
        "cpu_s": {n: round(p.cpu_s, 3) for n, p in used.items()},
        "cpu_ms_per_reply": {
            n: round(p.cpu_s * 1000 / replies, 3) if replies else None for n, p in used.items()
        },
        "peak_rss_mb": {n: round(p.peak_rss_mb, 1) for n, p in used.items()},
        "hwm_mb": {n: p.hwm_mb for n, p in used.items()},
    }


def _redis(u: Usage, replies: int, client_names: dict[str, str]) -> dict[str, Any]:
    """Redis's commands (by name) and memory per reply, and the connections each held."""
    calls = sum(u.redis_calls.values())
    return {
        "commands_per_reply": calls / replies if replies else None,
        "by_command_per_reply": {
            k: round(v / replies, 3) if replies else None
            for k, v in sorted(u.redis_calls.items(), key=lambda kv: -kv[1])
        },
        "used_memory_mb": round(u.redis_used_memory / 2**20, 2),
        "used_memory_bytes_per_reply": u.redis_used_memory_delta / replies if replies else None,
        "connections": {client_names.get(k, k): v for k, v in sorted(u.redis_connections.items())},
    }


def _where_baseline_keeps_up(p: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Parley's worst event delay p99 (ms) over the loads (the run's, and the sweep's)
    at which the baseline's p99 is within :data:`KEEPING_UP_MS`; None if at none."""
    pairs = [(p["event_delay_ms"]["p99"], b["event_delay_ms"]["p99"])]
    baseline_at = {point["sessions"]: point for point in b.get("sweep", [])}
    pairs += [
        (point["event_delay_ms_p99"], baseline_at[point["sessions"]]["event_delay_ms_p99"])
        for point in p.get("sweep", [])
        if point["sessions"] in baseline_at
    ]
    kept = [ours for ours, theirs in pairs if theirs is not None and theirs <= KEEPING_UP_MS]
    return max((x for x in kept if x is not None), default=None)


def figures(
    scenario: Scenario,
    o: Options,
    targets: list[Target],
    client_names: dict[str, str],
    log_errors: list[str],
) -> dict[str, Any]:
    """The scenario's result: options, each target's figures, Parley/baseline ratios."""
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "summary": scenario.summary,
        "options": asdict(o),
        "log_errors": log_errors[:50],
    }
    for target in targets:
        result[target.name] = _target_figures(target, o, client_names)
    if "baseline" in result:
        p, b = result["parley"], result["baseline"]
        result["ratio"] = {
            name: ratio(p[name]["median"], b[name]["median"])
            for name in ("added_ttft_ms", "added_done_ms", "client_ttft_ms", "client_done_ms")
        } | {
            "added_ttft_ms_p99": ratio(p["added_ttft_ms"]["p99"], b["added_ttft_ms"]["p99"]),
            "replies_per_s": ratio(p["replies_per_s"], b["replies_per_s"]),
            "token_events_per_s": ratio(p["token_events_per_s"], b["token_events_per_s"]),
            "event_delay_ms": ratio(p["event_delay_ms"]["p99"], b["event_delay_ms"]["p99"]),
            "cpu_ms_per_reply": ratio(p.get("own_cpu_ms_per_reply"), b.get("own_cpu_ms_per_reply")),
            "kb_per_socket": ratio(
                p.get("sockets", {}).get("kb_per_socket"), b.get("sockets", {}).get("kb_per_socket")
            ),
        }
        # Counts compared in the same run (each target meets the same machine noise).
        result["difference"] = {"late_replies": p["late_replies"] - b["late_replies"]}
        # The absolute bound on event delay holds only where the baseline keeps up: at
        # the run's own load, and at each load of the sweep.
        p["event_delay_ms_p99_where_baseline_keeps_up"] = _where_baseline_keeps_up(p, b)
    return result
