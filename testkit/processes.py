"""Real Parley processes, for the system tests and the benchmark.

:class:`Cluster` starts ``python -m server`` and ``python -m worker`` processes against
one Redis and one model URL, every setting at the product's default but those the run
declares (:mod:`testkit.overrides`), waits until they are ready, kills (SIGKILL),
terminates (SIGTERM) and replaces them, and stops them all on exit. Each process logs to
a file; the tails of the logs are printed when the ``async with`` block fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from stack.process import die_with_parent, log_tail
from storage import keys
from storage.connection import client_for_url, disconnect
from testkit.overrides import DEFAULTS, WIRING, Overrides, pinned_environment
from testkit.ports import free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

# -- processes --------------------------------------------------------------------------

#: The name the stand-in model is asked by (it answers to any).
STANDIN_MODEL = "standin"


def process_environment(
    redis_url: str,
    llm_base_url: str,
    overrides: Overrides = DEFAULTS,
    llm_model: str = STANDIN_MODEL,
    wiring: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every server and worker of a :class:`Cluster`: each setting
    at the product's default, but for the wiring (this Redis, this model, and
    ``wiring``: e.g. a collector of traces, :func:`tracing_wiring`) and ``overrides``
    (see :func:`testkit.overrides.pinned_environment`)."""
    wired = {"REDIS_URL": redis_url, "LLM_BASE_URL": llm_base_url, "LLM_MODEL": llm_model}
    return pinned_environment({**wired, **(wiring or {})}, overrides)


def tracing_wiring(endpoint: str, schedule_delay_ms: int | None = None) -> dict[str, str]:
    """The wiring that turns tracing on, exporting to the OTLP/HTTP collector at
    ``endpoint``; ``schedule_delay_ms`` (None: the SDK's 5 s) is how long spans may
    wait in a process's batch before they go out."""
    wiring = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    if schedule_delay_ms is not None:
        wiring["OTEL_BSP_SCHEDULE_DELAY"] = str(schedule_delay_ms)
    return wiring


@dataclass
class Proc:
    """One server or worker process of a :class:`Cluster`."""

    role: Literal["server", "worker"]
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    consumer: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (servers only)."""
        assert self.port is not None, f"{self.name} is not a server"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process's log file."""
        return log_tail(self.log_path, lines, "(no log)")


class ClusterError(RuntimeError):
    """A process of the cluster failed to start or become ready."""


class Cluster:
    """Server and worker processes of one Parley, on one Redis and one model URL.

    Every process runs with every setting at the product's default, but for the wiring
    (Redis, the model's URL, the consumer's name) and ``overrides``.

    Args:
        redis_url: the Redis; :meth:`start` flushes it.
        llm_base_url: the OpenAI-compatible model, e.g. a :class:`StandinModel`'s URL.
        log_dir: where each process writes ``<name>.log``.
        overrides: the settings the run changes from the product's defaults, each with
            its reason (:func:`testkit.overrides.declare`).
        llm_model: the name the model at ``llm_base_url`` answers to.
        wiring: more wiring of every process (:data:`testkit.overrides.WIRING`), e.g.
            :func:`tracing_wiring`.
        stop_grace_s: on stop, SIGKILL what is still running this long (s) after SIGTERM.
        ready_timeout_s: a process must be ready within this long (s).

    Use as ``async with Cluster(...) as cluster: await cluster.start(servers=2, workers=3)``.
    """

    def __init__(
        self,
        redis_url: str,
        llm_base_url: str,
        log_dir: Path,
        *,
        overrides: Overrides = DEFAULTS,
        llm_model: str = STANDIN_MODEL,
        wiring: Mapping[str, str] | None = None,
        stop_grace_s: float = 10.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.redis_url = redis_url
        self.llm_base_url = llm_base_url
        self.log_dir = log_dir
        self.overrides = overrides
        self.stop_grace_s = stop_grace_s
        self.ready_timeout_s = ready_timeout_s
        self._env = process_environment(redis_url, llm_base_url, overrides, llm_model, wiring)
        self.redis: Redis[str] = client_for_url(redis_url, max_connections=16)
        self.procs: list[Proc] = []
        self._numbers = {"server": itertools.count(1), "worker": itertools.count(1)}
        self._run_id = uuid.uuid4().hex[:6]

    @property
    def servers(self) -> list[Proc]:
        """Servers started so far (alive or not), in start order."""
        return [p for p in self.procs if p.role == "server"]

    @property
    def workers(self) -> list[Proc]:
        """Workers started so far (alive or not), in start order."""
        return [p for p in self.procs if p.role == "worker"]

    def worker_by_consumer(self, consumer: str) -> Proc:
        """The worker whose ``CONSUMER_NAME`` is ``consumer``."""
        return next(p for p in self.workers if p.consumer == consumer)

    async def __aenter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            if exc is not None:
                logger.error("logs of the cluster's processes:\n%s", self.log_tails())
            await disconnect(self.redis)

    async def start(self, servers: int, workers: int) -> None:
        """Flush Redis, then start ``servers`` servers and ``workers`` workers; wait until
        every server answers ``/readyz`` and every worker reads the message stream."""
        await self.redis.flushall()
        await asyncio.gather(
            *(self.start_server() for _ in range(servers)),
            *(self.start_worker() for _ in range(workers)),
        )

    async def start_server(self, port: int | None = None) -> Proc:
        """Start one server (on ``port``, else a free one) and wait for ``/readyz`` = 200."""
        port = port or free_port()
        name = f"server-{next(self._numbers['server'])}"
        argv = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]
        proc = self._spawn("server", name, argv, self._env, port=port)
        await self._wait_server_ready(proc)
        return proc

    async def start_worker(self, wiring: dict[str, str] | None = None) -> Proc:
        """Start one worker with a unique consumer name and ``wiring`` on top of the
        cluster's (``WORKER_MODELS`` and ``LLM_BASE_URL``: a pool of its own); wait
        until it serves its models. :meth:`replace` starts the same kind again.

        Raises:
            ValueError: ``wiring`` names a setting that is not wiring (declare it in the
                cluster's ``overrides``).
        """
        stray = set(wiring or {}) - WIRING
        if stray:
            raise ValueError(f"not wiring (declare them as Overrides): {sorted(stray)}")
        name = f"worker-{next(self._numbers['worker'])}"
        consumer = f"sys-{self._run_id}-{name}"
        env = {**self._env, **(wiring or {}), "CONSUMER_NAME": consumer}
        proc = self._spawn("worker", name, [sys.executable, "-m", "worker"], env, consumer=consumer)
        await self._wait_worker_ready(proc)
        return proc

    def _spawn(
        self,
        role: Literal["server", "worker"],
        name: str,
        argv: list[str],
        env: dict[str, str],
        **extra: Any,
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphans if the test run itself is killed
            )
        proc = Proc(role, name, popen, log_path, env=env, **extra)
        self.procs.append(proc)
        return proc

    async def _wait_server_ready(self, proc: Proc) -> None:
        async with aiohttp.ClientSession() as http:
            await self._poll_ready(proc, lambda: _answers_200(http, f"{proc.url}/readyz"))

    async def _wait_worker_ready(self, proc: Proc) -> None:
        served = [m.strip() for m in proc.env.get("WORKER_MODELS", "").split(",") if m.strip()]
        served = served or [m["id"] for m in json.loads(proc.env["MODELS"])]

        async def registered() -> bool:
            # In the pool of each model it serves, then reading the streams.
            for model in served:
                if await self.redis.zscore(keys.pool_key(model), proc.consumer or "") is None:
                    return False
            try:
                consumers = await self.redis.xinfo_consumers(  # type: ignore[no-untyped-call]
                    keys.model_streams(served[0])[0], keys.CONSUMER_GROUP
                )
            except ResponseError:  # no stream or group yet
                return False
            return any(c["name"] == proc.consumer for c in consumers)

        await self._poll_ready(proc, registered)

    async def _poll_ready(self, proc: Proc, ready: Callable[[], Any]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not await ready():
            if not proc.alive:
                raise ClusterError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"{proc.name} not ready in {self.ready_timeout_s} s")
            await asyncio.sleep(0.05)

    def kill(self, proc: Proc) -> None:
        """SIGKILL ``proc`` (a crash: no cleanup, its pending entries stay pending)."""
        proc.popen.send_signal(signal.SIGKILL)

    def terminate(self, proc: Proc) -> None:
        """SIGTERM ``proc`` (a graceful stop: a worker drains its in-flight replies)."""
        proc.popen.send_signal(signal.SIGTERM)

    async def wait_exit(self, proc: Proc, timeout_s: float = 30.0) -> int:
        """Wait until ``proc`` exits; return its exit code (``-9`` after SIGKILL)."""
        return await asyncio.to_thread(proc.popen.wait, timeout_s)

    async def replace(self, proc: Proc) -> Proc:
        """Start a process of ``proc``'s role in its place (a server on the same port)."""
        if proc.alive:
            self.kill(proc)
        await self.wait_exit(proc)
        if proc.role == "server":
            return await self.start_server(port=proc.port)
        return await self.start_worker(
            {k: proc.env[k] for k in ("WORKER_MODELS", "LLM_BASE_URL") if k in proc.env}
        )

    async def stop(self) -> None:
        """SIGTERM every live process, SIGKILL those still running after the grace period."""
        live = [p for p in self.procs if p.alive]
        for proc in live:
            self.terminate(proc)
        deadline = time.monotonic() + self.stop_grace_s
        for proc in live:
            try:
                await self.wait_exit(proc, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
                await self.wait_exit(proc)

    def log_errors(self) -> list[str]:
        """Every ``ERROR``/``CRITICAL`` line and traceback start in the processes' logs."""
        found = []
        for proc in self.procs:
            with contextlib.suppress(OSError):
                for line in proc.log_path.read_text(errors="replace").splitlines():
                    if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                        found.append(f"{proc.name}: {line}")
        return found

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every process's log."""
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, exit {p.popen.returncode}) -----\n{p.log_tail(lines)}"
            for p in self.procs
        )

    async def redis_connections(self, proc: Proc) -> int:
        """How many Redis connections ``proc`` holds, as Redis sees them.

        Redis's ``CLIENT LIST`` names each client by its address only. A client belongs
        to ``proc`` if its address's port is the local port of a TCP socket that
        ``proc`` owns (Linux: ``/proc/<pid>/fd`` and ``/proc/net/tcp``).
        """
        clients = await self.redis.client_list()
        ports = _local_ports(proc.pid)
        owned = 0
        for client in clients:
            port = client["addr"].rpartition(":")[2]
            if port.isdigit() and int(port) in ports:
                owned += 1
        return owned


async def _answers_200(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _local_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets that process ``pid`` has open."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as f:
            next(f)  # header
            for line in f:
                parts = line.split()
                if parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports
