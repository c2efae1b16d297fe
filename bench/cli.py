"""``python -m bench``: run benchmark scenarios, print their figures, save them.

Usage: ``python -m bench --scenario NAME[,NAME...]|all [--sessions N --messages N
--tokens N --ttft-ms MS --delay-ms MS --think-ms MS --stagger-ms MS --rounds N
--flush-ms MS --servers N --workers N --sockets N --worker-concurrency N --wait-replicas N
--sweep F,F --no-baseline --tracing --out DIR]``. Options given override every chosen
scenario's defaults (:data:`bench.scenarios.SCENARIOS`).

Writes ``<out>/<UTC timestamp>.json`` (every figure), ``.png`` (the chart) and ``.md``
(the targets as a Markdown table). Prints a table per scenario, then one line per
scenario. Exit status 1 if a reply was lost, misrouted, duplicated, out of order or
failed, or a scenario could not run; a missed performance target is reported, not an
error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import chart, real_model, report, runner, stacks
from bench.scenarios import SCENARIOS, Options, Scenario
from bench.settings import real_model_overrides
from testkit.processes import REPO_ROOT

logger = logging.getLogger(__name__)

RESULTS_DIR = REPO_ROOT / "bench" / "results"

_OVERRIDES = (
    ("sessions", int, "sessions sending at once"),
    ("messages", int, "messages per session"),
    ("tokens", int, "tokens per stand-in reply (real-model: max tokens)"),
    ("ttft_ms", float, "the stand-in's time to first token (ms)"),
    ("delay_ms", float, "the stand-in's time between tokens (ms)"),
    ("think_ms", float, "mean pause after a reply (ms)"),
    ("stagger_ms", float, "sessions start within this window (ms)"),
    ("rounds", int, "rounds per target (Parley and the baseline alternate)"),
    ("flush_ms", float, "STREAM_FLUSH_MS of the workers and the baseline (ms)"),
    ("servers", int, "Parley server processes"),
    ("workers", int, "Parley worker processes"),
    ("sockets", int, "idle sockets held open (connections)"),
    ("worker_concurrency", int, "WORKER_CONCURRENCY of the workers"),
    ("wait_replicas", int, "replicas of Redis, and REDIS_WAIT_REPLICAS (load, connections)"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    names = ", ".join(SCENARIOS)
    parser.add_argument(
        "--scenario", default="all", help=f"comma-separated names, or all ({names})"
    )
    for name, kind, text in _OVERRIDES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the direct baseline's runs"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="Parley traces every reply (OTEL_EXPORTER_OTLP_ENDPOINT: a collector stand-in "
        "the run starts), to measure what tracing costs against a run without",
    )
    parser.add_argument(
        "--sweep",
        type=_fractions,
        help="comma-separated fractions of --sessions to run the load at again, e.g. "
        "0.1,0.5 (streaming's default: 0.1,0.2,0.4,0.6,0.8); '' for none",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results go")
    return parser


def _scenarios(value: str) -> list[Scenario]:
    names = list(SCENARIOS) if value == "all" else [n.strip() for n in value.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    return [SCENARIOS[n] for n in names]


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("each fraction must be in (0, 1]")
    return values


def _options(scenario: Scenario, args: argparse.Namespace) -> Options:
    given = {name: getattr(args, name) for name, _, _ in _OVERRIDES}
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.sweep is not None:
        changes["sweep"] = args.sweep
    if args.no_baseline:
        changes["baseline"] = False
    if args.tracing:
        changes["tracing"] = True
    return dataclasses.replace(scenario.options, **changes)


def _run(scenario: Scenario, o: Options, work_dir: Path) -> dict[str, Any]:
    if scenario.kind == "stacks":
        return {
            "scenario": scenario.name,
            "summary": scenario.summary,
            "options": dataclasses.asdict(o),
            **stacks.run(o, work_dir),
        }
    if scenario.kind != "real-model":
        return runner.run(scenario, o, work_dir)
    options = real_model.RealModelOptions(
        sessions=o.sessions, rounds=o.rounds, max_tokens=o.tokens, flush_ms=o.flush_ms
    )
    result = real_model.run(options, work_dir)
    return {
        "scenario": scenario.name,
        "summary": scenario.summary,
        **dataclasses.asdict(result),
        "failures": result.failures,
        "overrides": real_model_overrides(
            options.max_tokens, options.flush_ms, options.sessions * options.rounds + 1
        ).described(),
    }


def _machine() -> dict[str, Any]:
    """Where and on what the figures were measured."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "commit": commit,
        "dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _integrity_failures(result: dict[str, Any]) -> int:
    if "error" in result:
        return 1
    if "direct" in result or "stacks" in result:
        return int(result["failures"])
    return int(result["parley"]["failures"])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios one after another; 1 if any reply failed, else 0."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    started = datetime.now(UTC)
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    record: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": _machine(),
        "scenarios": [],
    }
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    failures = 0
    for scenario in _scenarios(args.scenario):
        o = _options(scenario, args)
        load_before = os.getloadavg()
        clock = time.perf_counter()
        logger.info("scenario %s: %s", scenario.name, o.describe())
        try:
            with tempfile.TemporaryDirectory(prefix=f"parley-bench-{scenario.name}-") as tmp:
                result = _run(scenario, o, Path(tmp))
        except Exception as e:
            logger.error("scenario %s failed:\n%s", scenario.name, traceback.format_exc())
            result = {"scenario": scenario.name, "error": f"{type(e).__name__}: {e}"}
        result["wall_s"] = round(time.perf_counter() - clock, 1)
        result["load_average"] = {"before": load_before, "after": os.getloadavg()}
        failures += _integrity_failures(result)
        record["scenarios"].append(result)
        if "error" in result:
            text = f"{scenario.name:<11} ERROR | {result['error']}"
        else:
            results.append(result)
            print(report.table(scenario, result), flush=True)
            text = report.line(scenario, result)
        load = result["load_average"]["after"]
        text += f" | wall {result['wall_s']:.0f} s, load {load[0]:.1f}"
        lines.append(text)
        print(text + "\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record["wall_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    md_path = args.out / f"{stamp}.md"
    md_path.write_text(report.markdown(results))
    png_path = chart.draw(results, args.out / f"{stamp}.png", f"Parley benchmark {stamp}")
    print("\n".join(lines))
    print(f"total wall {record['wall_s']:.0f} s", flush=True)
    print(f"results: {json_path}\nchart:   {png_path}\ntable:   {md_path}", flush=True)
    return 1 if failures else 0
