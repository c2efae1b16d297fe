"""``python -m bench.hops``: how many times one chat message crosses from one of Parley's
modules into another, on its way from the socket to the model and back.

Starts an embedded Redis, the stand-in model (:func:`bench.procs.standin`) and one
server and one worker (:class:`testkit.processes.Cluster`), each of the two run through
:mod:`bench.hops_trace`, a profiler that records calls between Parley's modules
(``server``, ``worker``, ``storage``, ``protocol``, ``runtime``) while told to.

The measured message is the second of a new session, ``--repeat`` times: open a
session, send ``m1`` and await its ``done`` (the first also warms the processes up),
wait ``--quiet-ms`` (the first reply's title job runs then), turn recording on, send
``m2``, await its ``done``, wait ``--settle-ms`` (the worker acknowledges after the
client has its ``done``), turn recording off. The stand-in's reply is ``Reply to: m2``
padded to ``--tokens`` tokens, each ``--delay-ms`` after the previous one. Background
loops (claims, heartbeats, leases) that tick inside a window only add calls, so the
window with the fewest hops is the one reported; every window's total is listed.
``--idle`` also records an idle window as long as the first, to show what the
background alone costs.

**A hop** is a call (a Python function starting; resuming a coroutine or generator is
no new call) into a function of Parley module B from Parley module A, A != B, where A
is the module of the nearest Parley frame below the call on the same task's stack
(library frames in between are skipped: a callback from redis-py into Parley counts
from the Parley module that called redis-py). A task's root coroutine counts as called
by the module that handed it to asyncio (``create_task``, ``ensure_future``,
``gather``). Calls with no Parley caller (the ASGI framework calling a route, a loop
callback, a function run in a thread) are *entries*, counted apart; calls within one
module are *internal*. :mod:`bench.hops_trace` has the details.

Figures, per process and in total: ``hops``; ``distinct_edges`` (module pairs
``A -> B`` with a hop); ``entries``; ``internal`` calls; ``modules`` (every Parley
module a call entered); ``visits`` (per module: the hops into it, i.e. how many times
control entered it from another module); ``edges`` (``A -> B``: hops); ``scripts`` (per
Lua file: ``EVALSHA`` calls).

Usage: ``python -m bench.hops [--tokens N] [--delay-ms MS] [--repeat N] [--settle-ms MS]
[--quiet-ms MS] [--idle] [--out DIR]``. Prints the figures and writes
``<out>/hops-<UTC timestamp>.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench import procs
from bench.load import ChatSocket, LoadClient
from stack.redis import EmbeddedRedis
from testkit.ports import free_port
from testkit.processes import REPO_ROOT, Cluster, Proc

logger = logging.getLogger(__name__)

RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: A reply, or a control file, not there within this long (s) fails the run.
TIMEOUT_S = 60.0


class TracedCluster(Cluster):
    """A :class:`Cluster` whose servers and workers run through :mod:`bench.hops_trace`,
    controlled through the directory ``control``."""

    def __init__(self, *args: Any, control: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = control

    def _spawn(
        self,
        role: Literal["server", "worker"],
        name: str,
        argv: list[str],
        env: dict[str, str],
        **extra: Any,
    ) -> Proc:
        # argv is [python, "-m", module, *args]
        traced = [argv[0], "-m", "bench.hops_trace", "--control", str(self.control)]
        traced += ["--name", name, *argv[2:]]
        return super()._spawn(role, name, traced, env, **extra)


# -- counting -----------------------------------------------------------------------------


def count(calls: Iterable[tuple[str | None, str, str, int]]) -> dict[str, Any]:
    """The figures of recorded calls ``(caller module or None, callee module, callee
    function, times)``: ``hops``, ``distinct_edges`` (module pairs with a hop),
    ``entries``, ``internal``, ``modules`` (sorted),
    ``visits``, ``edges`` and ``entered`` (``module:function`` -> entries), each sorted
    by count, then name."""
    hops = entries = internal = 0
    modules: set[str] = set()
    visits: Counter[str] = Counter()
    edges: Counter[str] = Counter()
    entered: Counter[str] = Counter()
    for caller, callee, function, times in calls:
        modules.add(callee)
        if caller is None:
            entries += times
            entered[f"{callee}:{function}"] += times
        elif caller == callee:
            internal += times
        else:
            modules.add(caller)
            hops += times
            visits[callee] += times
            edges[f"{caller} -> {callee}"] += times
    return {
        "hops": hops,
        "distinct_edges": len(edges),
        "entries": entries,
        "internal": internal,
        "modules": sorted(modules),
        "visits": dict(sorted(visits.items(), key=lambda kv: (-kv[1], kv[0]))),
        "edges": dict(sorted(edges.items(), key=lambda kv: (-kv[1], kv[0]))),
        "entered": dict(sorted(entered.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def figures(dumps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process (by name) and ``total``: :func:`count`'s figures plus ``scripts``
    (Lua file -> runs), from the processes' ``NAME.json`` dumps."""
    out: dict[str, Any] = {}
    every: list[tuple[str | None, str, str, int]] = []
    scripts: Counter[str] = Counter()
    for dump in dumps:
        calls = [(c[0], c[1], c[2], c[3]) for c in dump["calls"]]
        every += calls
        scripts.update(dump["scripts"])
        out[dump["name"]] = count(calls) | {"scripts": dict(sorted(dump["scripts"].items()))}
    out["total"] = count(every) | {"scripts": dict(sorted(scripts.items()))}
    return out


# -- the run ----------------------------------------------------------------------------


async def _exchange(sock: ChatSocket, content: str) -> str:
    """Send ``content``; return its message id once its ``done`` arrived.

    Raises:
        RuntimeError: the reply closed with an ``error``, or the socket closed.
        TimeoutError: no ``done`` within :data:`TIMEOUT_S`.
    """
    await sock.say(content)
    async with asyncio.timeout(TIMEOUT_S):
        await sock.wait_closings(len(sock.sent))
    last = sock.received[-1].event if sock.received else {}
    if sock.closed or last.get("type") != "done":
        raise RuntimeError(f"no done for {content!r}: {last}")
    return str(last["message_id"])


async def _files(control: Path, names: list[str]) -> list[Path]:
    """Once the files ``names`` exist in ``control`` (written by the traced processes,
    which have no other way to tell), their paths."""
    paths = [control / n for n in names]
    async with asyncio.timeout(TIMEOUT_S):
        while not all(p.exists() for p in paths):  # noqa: ASYNC110  # other processes' files
            await asyncio.sleep(0.01)
    return paths


def _clear(control: Path) -> None:
    for stale in (*control.glob("*.json"), *control.glob("*.on")):
        stale.unlink()


async def _window(control: Path, names: list[str], body: Any) -> list[dict[str, Any]]:
    """Record in every process named ``names`` while ``body`` (awaitable) runs; their
    dumps."""
    _clear(control)
    (control / "recording").touch()
    await _files(control, [f"{n}.on" for n in names])
    try:
        await body
    finally:
        (control / "recording").unlink()
    paths = await _files(control, [f"{n}.json" for n in names])
    return [json.loads(p.read_text()) for p in paths]


async def _session(
    redis_url: str, model_url: str, work_dir: Path, o: argparse.Namespace
) -> dict[str, Any]:
    control = work_dir / "control"
    control.mkdir(parents=True, exist_ok=True)
    windows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    async with TracedCluster(redis_url, model_url, work_dir / "logs", control=control) as cluster:
        await cluster.start(servers=1, workers=1)
        names = [p.name for p in cluster.procs]
        async with LoadClient([cluster.servers[0].url]) as client:
            for _ in range(o.repeat):  # each window: the 2nd message of a new session
                (sock,) = await client.open(1)
                await _exchange(sock, "m1")
                await asyncio.sleep(o.quiet_ms / 1000)
                window: dict[str, Any] = {}

                async def measured(into: dict[str, Any] = window, sock: ChatSocket = sock) -> None:
                    started = time.perf_counter()
                    into["message_id"] = await _exchange(sock, "m2")
                    await asyncio.sleep(o.settle_ms / 1000)
                    into["window_s"] = round(time.perf_counter() - started, 3)

                window["figures"] = figures(await _window(control, names, measured()))
                windows.append(window)
            if o.idle:
                idle_s = windows[0]["window_s"]
                result["idle"] = figures(await _window(control, names, asyncio.sleep(idle_s)))
        result["log_errors"] = cluster.log_errors()
    # Background loops only add calls: the leanest window is the message's own path.
    best = min(windows, key=lambda w: int(w["figures"]["total"]["hops"]))
    result |= {"message_id": best["message_id"], "window_s": best["window_s"]}
    result["hops_per_window"] = [w["figures"]["total"]["hops"] for w in windows]
    result["windows"] = windows
    return {"message": best["figures"], **result}


def run(o: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Start Redis, the stand-in (``o.tokens`` tokens a reply, ``o.delay_ms`` apart) and
    the traced cluster under ``work_dir``; measure ``o.repeat`` messages one at a time
    (see the module's docstring). Returns ``{"message": figures of the window with the
    fewest hops, "hops_per_window", "windows" (each window's message id, length and
    figures), "idle": figures (if ``o.idle``), "message_id",
    "window_s", "log_errors", "options"}``.

    Raises:
        RuntimeError: a process did not start, or a reply was not ``done``.
        TimeoutError: a reply or a process's dump did not come within :data:`TIMEOUT_S`.
    """
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(port=free_port(), data_dir=work_dir / "redis"))
        model = stack.enter_context(
            procs.standin(work_dir / "logs" / "standin.log", tokens=o.tokens, delay_ms=o.delay_ms)
        )
        result = asyncio.run(_session(redis.url, model.url, work_dir, o))
    options = ("tokens", "delay_ms", "settle_ms", "quiet_ms", "repeat")
    return result | {"options": {name: getattr(o, name) for name in options}}


# -- output -------------------------------------------------------------------------------


def text(result: dict[str, Any]) -> str:
    """``result`` (see :func:`run`) as a few plain-text tables."""
    o = result["options"]
    lines = [
        f"One message ({result['message_id']}; {o['tokens']} tokens {o['delay_ms']:.0f} ms "
        f"apart), recorded {result['window_s']} s (until {o['settle_ms']:.0f} ms after done); "
        f"total hops of the {o['repeat']} windows: {result['hops_per_window']}, the fewest shown",
    ]
    for title in ("message", "idle"):
        if title not in result:
            continue
        figs = result[title]
        lines += [
            "",
            f"{title}: {'process':10} {'hops':>5} {'edges':>6} {'entries':>8} {'internal':>9}"
            " modules",
        ]
        for name, f in figs.items():
            lines.append(
                f"  {name:16} {f['hops']:5} {f['distinct_edges']:6} {f['entries']:8} "
                f"{f['internal']:9} {len(f['modules']):7}  scripts: "
                + (", ".join(f"{k} {v}" for k, v in f["scripts"].items()) or "-")
            )
    total = result["message"]["total"]
    lines += ["", "visits per module (hops into it, all processes):"]
    lines += [f"  {count:4}  {module}" for module, count in total["visits"].items()]
    lines += ["", "modules visited:", "  " + " ".join(total["modules"])]
    lines += ["", "hops between modules (caller -> callee):"]
    lines += [f"  {count:4}  {edge}" for edge, count in total["edges"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print, save; exit status 1 if the processes logged errors."""
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    parser.add_argument("--tokens", type=int, default=4, help="reply tokens (>= 3)")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="between its tokens (ms)")
    parser.add_argument("--repeat", type=int, default=3, help="messages measured (one a window)")
    parser.add_argument("--settle-ms", type=float, default=200.0, help="recorded after done (ms)")
    parser.add_argument("--quiet-ms", type=float, default=1000.0, help="wait after warm-up (ms)")
    parser.add_argument("--idle", action="store_true", help="also record an idle window")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="parley-hops-") as work:
        result = run(options, Path(work))
    report = text(result)
    print(report)
    options.out.mkdir(parents=True, exist_ok=True)
    stem = options.out / f"hops-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".txt").write_text(report + "\n")
    print(f"\nwrote {stem}.json and .txt", file=sys.stderr)
    for line in result["log_errors"]:
        print(f"error logged: {line}", file=sys.stderr)
    return 1 if result["log_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
