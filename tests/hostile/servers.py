"""Real ``python -m server`` processes for the hostile-client suites, and what to
measure in them: resident memory (psutil) and tracebacks in their logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import psutil

from testkit.overrides import DEFAULTS, Overrides, declare
from testkit.processes import Cluster, Proc

#: No model is asked in these suites: the servers run without a worker.
NO_MODEL = "http://127.0.0.1:9/v1"


#: What every server of these suites changes from the product's defaults.
NO_WORKER = declare(
    MODEL_WAIT_S=(0, "no worker runs here: messages wait for one, as queued, not refused"),
)


@asynccontextmanager
async def servers(
    redis_url: str, log_dir: Path, count: int = 1, overrides: Overrides = DEFAULTS
) -> AsyncIterator[Cluster]:
    """``count`` server processes (no worker) on a flushed Redis, with :data:`NO_WORKER`
    and the test's own ``overrides``."""
    async with Cluster(
        redis_url, NO_MODEL, log_dir, overrides=NO_WORKER | overrides, stop_grace_s=5
    ) as cluster:
        await cluster.start(servers=count, workers=0)
        yield cluster


def rss_mb(proc: Proc) -> float:
    """The process's resident memory (MB)."""
    return float(psutil.Process(proc.pid).memory_info().rss) / 2**20


def tracebacks(proc: Proc) -> list[str]:
    """The lines of the process's log that start a traceback, with the line before."""
    lines = proc.log_path.read_text(errors="replace").splitlines()
    return [
        f"{lines[i - 1] if i else ''} | {line}"
        for i, line in enumerate(lines)
        if line.startswith("Traceback")
    ]


async def new_session(http: aiohttp.ClientSession, proc: Proc, name: str = "fuzz") -> str:
    """A new session's token on server ``proc``."""
    async with http.post(f"{proc.url}/token", params={"name": name}) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
        return token
