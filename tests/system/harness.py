"""A system harness: real server and worker processes, a WebSocket client driver, checks.

Used by the system tests and the benchmark. Three parts:

- :class:`Cluster` starts ``python -m server`` and ``python -m worker`` processes against
  one Redis and one model URL, waits until they are ready, kills (SIGKILL), terminates
  (SIGTERM) and replaces them, and stops them all on exit. Each process logs to a file;
  the tails of the logs are printed when the ``async with`` block fails.
- :class:`ChatDriver` opens sessions (``POST /token`` then ``WS /chat``, spread over the
  servers), sends messages back to back without waiting for replies, and records every
  event each socket receives, with its arrival time.
- :func:`check_deliveries`, :func:`check_histories` and :func:`check_prompts` compare
  what the clients saw, what ``/refresh_token`` holds and what the stand-in model was
  asked with what was sent; :class:`Findings` counts the problems and prints one line.

Message contents are ``s<session>-m<k>-<8 hex digits>``, unique in a run, so any text
found in a reply or a prompt names the session and the message it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol import keys
from server.config import ServerSettings
from stack.process import die_with_parent
from stack.redis import free_port
from stack.standin import REPLY_PREFIX
from worker.config import WorkerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"s(\d+)-m(\d+)-[0-9a-f]{8}")

# -- processes --------------------------------------------------------------------------


def _setting_names() -> set[str]:
    return {name.upper() for name in (*ServerSettings.model_fields, *WorkerSettings.model_fields)}


def pinned_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment of a child process: ours, without any Parley setting, then every
    Parley setting set explicitly (``overrides``, else its default).

    pydantic-settings lets environment variables win over the ``.env`` file, so with
    every setting set, a ``.env`` in the repo root cannot change a run.
    """
    names = _setting_names()
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    for settings_class in (ServerSettings, WorkerSettings):
        for name, info in settings_class.model_fields.items():
            if info.default_factory is None and not info.is_required():
                default = info.default
                env[name.upper()] = "" if default is None else str(default)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Proc:
    """One server or worker process of a :class:`Cluster`."""

    role: Literal["server", "worker"]
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    consumer: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (servers only)."""
        assert self.port is not None, f"{self.name} is not a server"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return "\n".join(text)


class ClusterError(RuntimeError):
    """A process of the cluster failed to start or become ready."""


class Cluster:
    """Server and worker processes of one Parley, on one Redis and one model URL.

    Args:
        redis_url: the Redis; :meth:`start` flushes it.
        llm_base_url: the OpenAI-compatible model, e.g. a :class:`StandinModel`'s URL.
        log_dir: where each process writes ``<name>.log``.
        claim_idle_ms: the workers' ``CLAIM_IDLE_MS``.
        env: more settings for every process (e.g. ``{"REDIS_MAX_CONNECTIONS": "8"}``).
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
        claim_idle_ms: int = 5000,
        env: dict[str, str] | None = None,
        stop_grace_s: float = 10.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.redis_url = redis_url
        self.llm_base_url = llm_base_url
        self.log_dir = log_dir
        self.stop_grace_s = stop_grace_s
        self.ready_timeout_s = ready_timeout_s
        self._env = pinned_environment(
            {
                "REDIS_URL": redis_url,
                "LLM_BASE_URL": llm_base_url,
                "LLM_MODEL": "standin",
                "CLAIM_IDLE_MS": str(claim_idle_ms),
                "LOG_LEVEL": "WARNING",
                # Below stop_grace_s, so a terminated worker drains before it is killed.
                "DRAIN_TIMEOUT_S": str(stop_grace_s / 2),
                **(env or {}),
            }
        )
        self.redis: Redis[str] = Redis.from_url(redis_url, decode_responses=True)
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
                print(self.log_tails(), file=sys.stderr)
            await self.redis.aclose()  # type: ignore[attr-defined]  # stale stubs

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

    async def start_worker(self) -> Proc:
        """Start one worker with a unique consumer name; wait until it reads the stream."""
        name = f"worker-{next(self._numbers['worker'])}"
        consumer = f"sys-{self._run_id}-{name}"
        env = {**self._env, "CONSUMER_NAME": consumer}
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
        proc = Proc(role, name, popen, log_path, **extra)
        self.procs.append(proc)
        return proc

    async def _wait_server_ready(self, proc: Proc) -> None:
        async with aiohttp.ClientSession() as http:
            await self._poll_ready(proc, lambda: _answers_200(http, f"{proc.url}/readyz"))

    async def _wait_worker_ready(self, proc: Proc) -> None:
        async def registered() -> bool:
            try:
                consumers = await self.redis.xinfo_consumers(  # type: ignore[no-untyped-call]
                    keys.MESSAGE_STREAM, keys.CONSUMER_GROUP
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
        return await self.start_worker()

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


# -- clients ----------------------------------------------------------------------------


@dataclass
class Sent:
    """A message a client sent."""

    content: str
    at: float  # time.perf_counter() once the frame was written


@dataclass
class Received:
    """An event a client received."""

    at: float  # time.perf_counter()
    event: dict[str, Any]


@dataclass
class SessionTrace:
    """One session's socket: what it sent and every event it received, in order."""

    index: int
    token: str
    server: int
    ws: aiohttp.ClientWebSocketResponse
    sent: list[Sent] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    closed: bool = False
    history: dict[str, Any] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self, *types: str) -> list[dict[str, Any]]:
        """The events received, of the given types (all if none given), in order."""
        return [r.event for r in self.received if not types or r.event.get("type") in types]

    def closing_count(self) -> int:
        """How many replies closed: ``done`` events and ``error`` events with a message id."""
        return sum(
            1
            for e in self.events("done", "error")
            if e["type"] == "done" or e.get("message_id") is not None
        )

    def message_ids(self) -> list[str]:
        """The ids of this socket's messages, from its ``queued`` events, in order."""
        return [e["message_id"] for e in self.events("queued")]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked on each event (bound it yourself)."""
        while not predicate():
            changed = self._changed
            await changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class ChatDriver:
    """WebSocket clients of a cluster: ``n`` sessions, socket ``i`` on server ``i % S``.

    Args:
        server_urls: the servers' base URLs (``http://host:port``).
    """

    def __init__(self, server_urls: Sequence[str]) -> None:
        self.server_urls = list(server_urls)
        self.sessions: list[SessionTrace] = []
        self._http: aiohttp.ClientSession | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        # No connection limit: each open socket holds one of the connector's connections.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use ChatDriver in `async with`"
        return self._http

    async def open(self, count: int) -> list[SessionTrace]:
        """Open ``count`` more sessions at once (a token and a socket each)."""
        first = len(self.sessions)
        opened = await asyncio.gather(*(self._open_one(i) for i in range(first, first + count)))
        self.sessions.extend(opened)
        return list(opened)

    async def _open_one(self, index: int) -> SessionTrace:
        server = index % len(self.server_urls)
        url = self.server_urls[server]
        async with self.http.post(f"{url}/token", params={"name": f"s{index}"}) as response:
            assert response.status == 200, await response.text()
            token: str = (await response.json())["token"]
        ws = await self.http.ws_connect(f"{url}/chat", params={"token": token}, heartbeat=None)
        trace = SessionTrace(index, token, server, ws)
        self._readers.append(asyncio.create_task(self._read(trace)))
        return trace

    async def _read(self, trace: SessionTrace) -> None:
        async for message in trace.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            trace.received.append(Received(time.perf_counter(), json.loads(message.data)))
            trace.notify()
        trace.closed = True
        trace.notify()

    async def send(self, messages: int, sessions: Sequence[SessionTrace] | None = None) -> None:
        """Each session sends ``messages`` messages back to back, without waiting for
        replies; the sessions send concurrently."""

        async def send_all(trace: SessionTrace) -> None:
            for _ in range(messages):
                k = len(trace.sent) + 1
                content = f"s{trace.index}-m{k}-{uuid.uuid4().hex[:8]}"
                await trace.ws.send_str(json.dumps({"type": "message", "content": content}))
                trace.sent.append(Sent(content, time.perf_counter()))

        await asyncio.gather(*(send_all(t) for t in sessions or self.sessions))

    async def wait_replies(
        self, timeout_s: float, sessions: Sequence[SessionTrace] | None = None
    ) -> bool:
        """Wait until each session has a closing event (``done``, or ``error`` with a
        message id) per message sent, or its socket closed; False on timeout."""

        async def one(trace: SessionTrace) -> None:
            await trace.wait_until(lambda: trace.closed or trace.closing_count() >= len(trace.sent))

        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(t) for t in sessions or self.sessions))
        except TimeoutError:
            return False
        return True

    async def fetch_histories(self) -> None:
        """Fill each session's ``history`` from ``GET /refresh_token`` on its server."""

        async def one(trace: SessionTrace) -> None:
            url = f"{self.server_urls[trace.server]}/refresh_token"
            async with self.http.get(url, params={"token": trace.token}) as response:
                assert response.status == 200, await response.text()
                trace.history = await response.json()

        await asyncio.gather(*(one(t) for t in self.sessions))

    async def close(self) -> None:
        """Close every socket and the HTTP session."""
        for trace in self.sessions:
            await trace.ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None


# -- checks -----------------------------------------------------------------------------


@dataclass
class Findings:
    """Problems found, by kind; each is a list of human-readable descriptions."""

    sent: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    misrouted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    stream_mismatches: list[str] = field(default_factory=list)
    history_mismatches: list[str] = field(default_factory=list)
    prompt_problems: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of each kind of problem and the reply latency."""
        lat = sorted(self.latencies_ms)
        median = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("nan")
        return (
            f"sent {self.sent}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, out of order {len(self.out_of_order)}, "
            f"misrouted {len(self.misrouted)}, errors {len(self.errors)}, "
            f"restarts {len(self.restarts)}, "
            f"stream mismatches {len(self.stream_mismatches)}, "
            f"history mismatches {len(self.history_mismatches)}, "
            f"prompt problems {len(self.prompt_problems)}; "
            f"latency median {median:.0f} ms, p99 {p99:.0f} ms"
        )


def show(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` problems, one a line, for an assertion message."""
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


def check_deliveries(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """What each socket received against what it sent (invariants 1 and 2).

    Per socket: one ``queued`` per message sent, for that content, in order; one
    ``done`` per message, in the order of the ``queued`` ones, its reply answering that
    very message; no event about another session's message; the ``token`` events of a
    reply, joined (a ``restart`` starts over), equal its ``done`` content.
    """
    for t in sessions:
        findings.sent += len(t.sent)
        queued = t.events("queued")
        contents = [q.get("message", {}).get("content") for q in queued]
        if contents != [s.content for s in t.sent]:
            findings.lost.append(
                f"s{t.index}: queued {len(queued)} of {len(t.sent)} messages "
                f"(contents {contents} vs sent {[s.content for s in t.sent]})"
            )
        ids = t.message_ids()
        position = {mid: k for k, mid in enumerate(ids)}
        dones: Counter[str] = Counter()
        last_k = -1
        partial: dict[str, list[str]] = {}
        for r in t.received:
            e = r.event
            mid = e.get("message_id")
            if e["type"] == "queued" or (e["type"] == "error" and mid is None):
                continue
            if mid not in position:
                findings.misrouted.append(f"s{t.index} got {e['type']} of foreign message {mid}")
                continue
            k = position[mid]
            if e["type"] == "restart":
                findings.restarts.append(f"s{t.index} m{k + 1}: restart")
                partial[mid] = []
            elif e["type"] == "token":
                partial.setdefault(mid, []).append(e["content"])
            elif e["type"] == "error":
                findings.errors.append(f"s{t.index} m{k + 1}: {e.get('code')} {e.get('detail')}")
            elif e["type"] == "done":
                dones[mid] += 1
                if dones[mid] > 1:
                    findings.duplicated.append(f"s{t.index} m{k + 1}: done #{dones[mid]}")
                    continue
                if k < last_k:
                    findings.out_of_order.append(
                        f"s{t.index}: reply to m{k + 1} after reply to m{last_k + 1}"
                    )
                last_k = max(last_k, k)
                reply = e["reply"]["content"]
                if k < len(t.sent) and not _answers(reply, t.sent[k].content):
                    findings.misrouted.append(
                        f"s{t.index} m{k + 1}: reply {reply[:60]!r} does not answer "
                        f"{t.sent[k].content!r}"
                    )
                streamed = "".join(partial.get(mid, []))
                if streamed != reply:
                    findings.stream_mismatches.append(
                        f"s{t.index} m{k + 1}: tokens {streamed[:60]!r} != done {reply[:60]!r}"
                    )
                if k < len(t.sent):
                    findings.latencies_ms.append((r.at - t.sent[k].at) * 1000)
        findings.delivered += len(dones)
        for k, mid in enumerate(ids):
            if dones[mid] == 0 and not any(e.get("message_id") == mid for e in t.events("error")):
                findings.lost.append(f"s{t.index} m{k + 1} ({mid}): no done")


def _answers(reply: str, content: str) -> bool:
    """Whether a stand-in ``reply`` answers ``content`` (and not a longer message)."""
    head = REPLY_PREFIX + content
    return reply == head or reply.startswith(head + " ")


def replies(trace: SessionTrace) -> dict[str, dict[str, Any]]:
    """The reply (``done.reply``) of each message id, first ``done`` kept."""
    out: dict[str, dict[str, Any]] = {}
    for e in trace.events("done"):
        out.setdefault(e["message_id"], e["reply"])
    return out


def check_histories(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """Each session's ``/refresh_token`` history (invariant 3): every message sent,
    each followed by its reply, contents and ids as the socket saw them, each id once."""
    for t in sessions:
        assert t.history is not None, "call ChatDriver.fetch_histories() first"
        got = [(m["role"], m["id"], m["content"]) for m in t.history["messages"]]
        answered = replies(t)
        expected: list[tuple[str, str, str]] = []
        for sent, mid in zip(t.sent, t.message_ids(), strict=False):
            expected.append(("user", mid, sent.content))
            if mid in answered:
                expected.append(("assistant", answered[mid]["id"], answered[mid]["content"]))
        if got != expected:
            findings.history_mismatches.append(
                f"s{t.index}: history {_roles(got)} != expected {_roles(expected)}: "
                f"{_first_difference(got, expected)}"
            )
        repeated = [i for i, n in Counter(m[1] for m in got).items() if n > 1]
        if repeated:
            findings.history_mismatches.append(f"s{t.index}: ids more than once: {repeated}")


def _roles(messages: list[tuple[str, str, str]]) -> str:
    return "".join(role[0] for role, _, _ in messages)


def _first_difference(got: list[Any], expected: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"at {i}: {a} != {b}"
    return f"lengths {len(got)} != {len(expected)}"


def check_prompts(
    sessions: Sequence[SessionTrace],
    requests: Sequence[dict[str, Any]],
    findings: Findings,
    *,
    once: bool,
) -> None:
    """The stand-in model's recorded requests against the conversations (invariant 2).

    The prompt of reply ``k`` ends with user message ``k``, holds message ``k-1`` and its
    reply (``k > 1``), its earlier user messages in order, and no text of a later message
    or of another session. With ``once``, each message was generated exactly once
    (no crash or retry happened, so a second generation means a double delivery).
    """
    by_index = {t.index: t for t in sessions}
    generations: Counter[tuple[int, int]] = Counter()
    for body in requests:
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        match = _MARKER.fullmatch(last.get("content", "")) if last.get("role") == "user" else None
        trace = by_index.get(int(match.group(1))) if match else None
        if match is None or trace is None:
            findings.prompt_problems.append(f"prompt does not end with a sent message: {last}")
            continue
        s, k = trace.index, int(match.group(2))
        generations[s, k] += 1
        if trace.sent[k - 1].content != last["content"]:
            findings.prompt_problems.append(f"s{s} m{k}: unknown content {last['content']!r}")
        user_ks = []
        for m in messages:
            for found in _MARKER.finditer(m["content"]):
                fs, fk = int(found.group(1)), int(found.group(2))
                if fs != s or fk > k:
                    findings.prompt_problems.append(
                        f"prompt of s{s} m{k} holds {found.group(0)!r} ({m['role']})"
                    )
            if m["role"] == "user" and (user := _MARKER.fullmatch(m["content"])):
                user_ks.append(int(user.group(2)))
        if user_ks != sorted(set(user_ks)):
            findings.prompt_problems.append(f"prompt of s{s} m{k}: user messages {user_ks}")
        if k > 1:
            previous = trace.sent[k - 2].content
            ids = trace.message_ids()
            reply = replies(trace).get(ids[k - 2]) if len(ids) >= k - 1 else None
            pair = [
                {"role": "user", "content": previous},
                {"role": "assistant", "content": reply["content"] if reply else None},
            ]
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]
            if not any(plain[i : i + 2] == pair for i in range(len(plain) - 1)):
                findings.prompt_problems.append(
                    f"prompt of s{s} m{k} lacks m{k - 1} and its reply: {plain}"
                )
    for t in sessions:
        for k in range(1, len(t.sent) + 1):
            n = generations[t.index, k]
            if n == 0 or (once and n > 1):
                findings.prompt_problems.append(f"s{t.index} m{k} generated {n} times")
