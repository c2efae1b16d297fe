"""``python -m bench``: run benchmark scenarios, print their figures, save them as JSON.

Usage: ``python -m bench --scenario latency|real-model|all [--sessions N --messages N
--tokens N --think-ms MS --rounds N --flush-ms MS --out DIR]``. Options left unset take
each scenario's defaults (see :class:`bench.latency.LatencyOptions` and
:class:`bench.real_model.RealModelOptions`). Exit status 1 if any reply was lost,
misrouted or failed.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import latency, real_model
from stack.cluster import REPO_ROOT

logger = logging.getLogger(__name__)

SCENARIOS = ("latency", "real-model")
RESULTS_DIR = REPO_ROOT / "bench" / "results"

Result = latency.LatencyResult | real_model.RealModelResult


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--sessions", type=int, help="concurrent sessions (latency 50, real 4)")
    parser.add_argument("--messages", type=int, help="messages per session (latency: 5)")
    parser.add_argument(
        "--tokens", type=int, help="reply tokens: stand-in's (latency: 20), max (real: 32)"
    )
    parser.add_argument("--think-ms", type=float, help="pause after a reply (latency: 0 ms)")
    parser.add_argument("--rounds", type=int, help="rounds per path (real-model: 5)")
    flush = f"workers' STREAM_FLUSH_MS (default: {latency.FLUSH_MS_DEFAULT:g} ms)"
    parser.add_argument("--flush-ms", type=float, help=flush)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    return parser


def _given(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _run(scenario: str, args: argparse.Namespace, work_dir: Path) -> Result:
    if scenario == "latency":
        options = latency.LatencyOptions(
            **_given(
                sessions=args.sessions,
                messages=args.messages,
                tokens=args.tokens,
                think_ms=args.think_ms,
                flush_ms=args.flush_ms,
            )
        )
        return latency.run(options, work_dir)
    real = real_model.RealModelOptions(
        **_given(
            sessions=args.sessions,
            rounds=args.rounds,
            max_tokens=args.tokens,
            flush_ms=args.flush_ms,
        )
    )
    return real_model.run(real, work_dir)


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
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def _save(out_dir: Path, scenario: str, started: datetime, record: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{started:%Y%m%dT%H%M%SZ}-{scenario}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios one after another; 1 if any reply failed, else 0."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    failures = 0
    for scenario in SCENARIOS if args.scenario == "all" else (args.scenario,):
        started = datetime.now(UTC)
        clock = time.perf_counter()
        logger.info("scenario %s", scenario)
        with tempfile.TemporaryDirectory(prefix=f"parley-bench-{scenario}-") as tmp:
            result = _run(scenario, args, Path(tmp))
        wall_s = time.perf_counter() - clock
        record = {
            "scenario": scenario,
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 2),
            "machine": _machine(),
            **dataclasses.asdict(result),
        }
        path = _save(args.out, scenario, started, record)
        print(result.line())
        print(result.table())
        print(f"  wall {wall_s:.1f} s; {path}", flush=True)
        failures += result.failures
    return 1 if failures else 0
