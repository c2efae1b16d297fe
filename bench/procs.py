"""The benchmark's own processes: the stand-in model and the direct baseline.

Both run as processes of their own, started the way :class:`testkit.processes.Cluster`
starts Parley's server (``python -m ...``, logs to a file, dying with their parent), so
that Parley and the baseline pay the same process and loopback costs.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stack.process import die_with_parent, stop_process
from testkit.overrides import pinned_environment
from testkit.ports import free_port
from testkit.processes import REPO_ROOT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    """A process started by the benchmark.

    Attributes:
        url: its base URL (``http://127.0.0.1:<port>``; the stand-in's ends in ``/v1``).
        pid: its process id.
        log_path: where it writes its output.
    """

    url: str
    pid: int
    log_path: Path


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new limit.

    Children started afterwards (Parley's server among them) inherit it, which is how
    the server gets room for 10,000 sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


@contextlib.contextmanager
def standin(
    log_path: Path, *, tokens: int, ttft_ms: float = 0.0, delay_ms: float = 0.0
) -> Iterator[Running]:
    """``python -m testkit.standin`` on a free port with these reply settings.

    Yields it once ``/health`` answers; its ``url`` is the API base (``.../v1``).

    Raises:
        RuntimeError: it exited or did not answer within 60 s.
    """
    port = free_port()
    argv = [
        *(sys.executable, "-m", "testkit.standin", "--port", str(port)),
        *("--tokens", str(tokens), "--ttft-ms", str(ttft_ms), "--delay-ms", str(delay_ms)),
    ]
    with process(argv, log_path, f"http://127.0.0.1:{port}", "/health") as running:
        yield Running(f"{running.url}/v1", running.pid, running.log_path)


@contextlib.contextmanager
def collector(log_path: Path) -> Iterator[Running]:
    """``python -m testkit.collector`` on a free port: an OTLP/HTTP collector stand-in
    that counts the spans it gets (``GET /_stats``). Its ``url`` is what
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes.

    Raises:
        RuntimeError: it exited or did not answer within 60 s.
    """
    port = free_port()
    argv = [sys.executable, "-m", "testkit.collector", "--port", str(port)]
    with process(argv, log_path, f"http://127.0.0.1:{port}", "/health") as running:
        yield running


@contextlib.contextmanager
def baseline(log_path: Path, *, model_url: str, flush_ms: float) -> Iterator[Running]:
    """``python -m bench.baseline`` on a free port, asking the model at ``model_url``.

    Raises:
        RuntimeError: it exited or did not answer within 60 s.
    """
    port = free_port()
    argv = [
        *(sys.executable, "-m", "bench.baseline", "--port", str(port)),
        *("--model-url", model_url, "--flush-ms", str(flush_ms)),
    ]
    with process(argv, log_path, f"http://127.0.0.1:{port}", "/healthz") as running:
        yield running


@contextlib.contextmanager
def process(
    argv: list[str], log_path: Path, url: str, health: str, timeout_s: float = 60.0
) -> Iterator[Running]:
    """Run ``argv`` (logging to ``log_path``) until the block ends; yield it once
    ``url + health`` answers 200.

    Raises:
        RuntimeError: it exited or did not answer within ``timeout_s`` (s).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=pinned_environment({}),  # no Parley setting of ours reaches them
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    name = argv[2]
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(url + health):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log_path}")
            time.sleep(0.05)
        yield Running(url, proc.pid, log_path)
    finally:
        stop_process(proc, name, grace_s=5)


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 within 1 s."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
