"""The run's chart: per scenario, latency distributions, throughput and CPU over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.scenarios import KEEPING_UP_MS

_STYLE = {"parley": "-", "baseline": "--"}


def draw(results: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw every scenario of ``results`` (one row each) into a PNG at ``path``."""
    swept = [r for r in results if "sweep" in r.get("parley", {})]
    rows = max(1, len(results) + len(swept))
    fig, axes = plt.subplots(rows, 3, figsize=(16, 3.4 * rows), squeeze=False)
    for result, ax in zip(results, axes, strict=False):
        if "direct" in result:
            _real_model(result, ax)
        elif "stacks" in result:
            _stacks(result, ax)
        else:
            _distribution(result, ax[0])
            _throughput(result, ax[1])
            _cpu(result, ax[2])
    for result, ax in zip(swept, axes[len(results) :], strict=False):
        _sweep(result, ax)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _distribution(result: dict[str, Any], ax: Axes) -> None:
    streaming = bool(result["options"]["delay_ms"])
    names = ("added_ttft_ms", "event_delay_ms") if streaming else ("added_ttft_ms", "added_done_ms")
    colors = {names[0]: "tab:blue", names[1]: "tab:orange"}
    for target in ("parley", "baseline"):
        r = result.get(target)
        if r is None:
            continue
        for name in names:
            points = r["cdf"].get(name) or []
            xs = [max(v, 0.01) for _, v in points]
            ys = [q for q, _ in points]
            label = f"{target}: {name.removesuffix('_ms').replace('_', ' ')}"
            ax.plot(xs, ys, _STYLE[target], color=colors[name], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("percentile")
    ax.set_title(f"{result['scenario']}: latency distribution", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _throughput(result: dict[str, Any], ax: Axes) -> None:
    twin = ax.twinx()
    for target in ("parley", "baseline"):
        timeline = (result.get(target) or {}).get("timeline")
        if not timeline:
            continue
        step = timeline["bin_s"]
        xs = [i * step for i in range(len(timeline["replies_per_s"]))]
        ax.plot(xs, timeline["replies_per_s"], _STYLE[target], color="tab:green",
                label=f"{target}: replies/s")  # fmt: skip
        twin.plot(xs, timeline["token_events_per_s"], _STYLE[target], color="tab:purple",
                  alpha=0.6, label=f"{target}: token events/s")  # fmt: skip
    ax.set_xlabel("s since the phase began (first round)")
    ax.set_ylabel("replies/s", color="tab:green")
    twin.set_ylabel("token events/s", color="tab:purple")
    ax.set_title(f"{result['scenario']}: throughput over time", fontsize=10)
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=7, loc="upper right")


def _cpu(result: dict[str, Any], ax: Axes) -> None:
    timeline = (result.get("parley") or {}).get("timeline") or {}
    for name, points in sorted(timeline.get("cpu_cores", {}).items()):
        if not points:
            continue
        ax.plot([t for t, _ in points], [c for _, c in points], label=name)
    ax.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("s since the phase began (Parley, first round)")
    ax.set_ylabel("CPU (cores)")
    ax.set_title(f"{result['scenario']}: CPU per process (Parley)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _sweep(result: dict[str, Any], ax: Sequence[Axes]) -> None:
    """Event delay p99 and tokens delivered per second against the offered load."""
    for target in ("parley", "baseline"):
        points = result.get(target, {}).get("sweep") or []
        xs = [p["offered_tokens_per_s"] or 0 for p in points]
        ax[0].plot(
            xs, [p["event_delay_ms_p99"] or 0 for p in points], _STYLE[target] + "o", label=target
        )
        ax[1].plot(xs, [p["tokens_per_s"] for p in points], _STYLE[target] + "o", label=target)
    ax[0].axhline(KEEPING_UP_MS, color="grey", linewidth=0.8, label=f"{KEEPING_UP_MS:g} ms")
    ax[0].set_yscale("log")
    ax[0].set_ylabel("event delay p99, ms (log)")
    ax[1].set_ylabel("tokens/s delivered")
    for a, what in zip(ax[:2], ("event delay p99", "tokens delivered"), strict=True):
        a.set_xlabel("tokens/s offered")
        a.set_title(f"{result['scenario']} sweep: {what} by offered load", fontsize=10)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    ax[2].axis("off")


def _stacks(result: dict[str, Any], ax: Sequence[Axes]) -> None:
    """KB per idle socket and CPU per echoed message, a bar per server stack."""
    measured = {n: f for n, f in result["stacks"].items() if "error" not in f}
    names = [n.replace(" ", "\n", 1) for n in measured]
    for a, key, label in (
        (ax[0], "kb_per_socket", "KB per idle socket"),
        (ax[1], "cpu_us_per_message", "server CPU µs per echoed message"),
    ):
        a.bar(names, [f[key] for f in measured.values()], color="tab:blue")
        a.set_title(f"stacks: {label}", fontsize=10)
        a.tick_params(axis="x", labelsize=7)
        a.grid(True, axis="y", alpha=0.3)
    ax[2].axis("off")


def _real_model(result: dict[str, Any], ax: Sequence[Axes]) -> None:
    labels = ["first token", "done"]
    direct = [result["direct"][k]["median"] or 0 for k in ("first_token_ms", "done_ms")]
    parley = [result["parley"][k]["median"] or 0 for k in ("first_token_ms", "done_ms")]
    xs = range(len(labels))
    ax[0].bar([x - 0.2 for x in xs], direct, width=0.4, label="llama.cpp directly")
    ax[0].bar([x + 0.2 for x in xs], parley, width=0.4, label="through Parley")
    ax[0].set_xticks(list(xs), labels)
    ax[0].set_ylabel("median ms")
    ax[0].set_title("real-model: llama.cpp directly vs through Parley", fontsize=10)
    ax[0].legend(fontsize=7)
    for a in ax[1:]:
        a.axis("off")
