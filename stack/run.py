"""``python -m stack``: start Redis, the local model, the workers and a server; stop them in order.

Redis and the model server log to files under ``<data dir>/logs``; the server and
workers log to this terminal. Before anything starts, a CPU that cannot run the
embedded model is refused with the way out (exit code 2). Ctrl-C or SIGTERM stops the
server, the workers, the model, then Redis, and exits 0. If any of them dies on its own,
everything stops and we exit 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.catalog import default_catalog
from runtime.logs import LogFormat, setup_logging
from stack.cpu import missing_cpu_flags, unsupported_cpu_message
from stack.model import DEFAULT_MODEL, EmbeddedModel
from stack.process import Service, die_with_parent, stop_process

logger = logging.getLogger(__name__)

Poll = Callable[[], int | None]


class StackSettings(BaseSettings):
    """Settings of ``python -m stack``, from the environment and ``.env`` (see .env.example)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    parley_port: int = Field(8000, ge=1, le=65535, description="Port of the web page and API.")
    parley_workers: int = Field(1, ge=1, description="Worker processes started.")
    parley_data_dir: Path = Field(Path("data"), description="Redis data (AOF) and logs.")
    parley_redis_port: int = Field(
        6380,
        ge=1,
        le=65535,
        description="Embedded Redis port (none is started when `REDIS_URL` is set).",
    )
    parley_model: str = Field(
        DEFAULT_MODEL,
        description="The embedded model: a name from the table of Configuration, Embedded "
        "model, or the path of any GGUF file with a chat template.",
    )
    parley_model_port: int = Field(
        8081,
        ge=1,
        le=65535,
        description="Embedded model port (none is started when `LLM_BASE_URL` or `HF_TOKEN` is "
        "set).",
    )
    parley_model_threads: int | None = Field(
        None,
        ge=1,
        description="Generation threads of the embedded model; unset: the cores less one, "
        "from 1 to 4.",
    )
    parley_model_parallel: int = Field(
        4, ge=1, description="Replies the embedded model generates at once."
    )
    parley_model_ctx_size: int = Field(4096, ge=256, description="Context per reply (tokens).")
    parley_model_max_tokens: int = Field(
        512, ge=1, description="The model server's own reply cap (tokens)."
    )
    parley_model_start_timeout: float = Field(
        120.0, gt=0, description="How long (s) to wait for the model to load."
    )
    parley_ready_timeout: float = Field(
        60.0, gt=0, description="How long (s) to wait for the server's `/readyz`."
    )
    parley_stop_grace: float = Field(
        10.0, gt=0, description="SIGTERM to SIGKILL grace (s) when stopping."
    )
    redis_url: str | None = Field(None, description="Use this Redis, start none.")
    llm_base_url: str | None = Field(None, description="Use this model API, start none.")
    llm_model: str | None = Field(None, description="Model name for LLM_BASE_URL.")
    hf_token: SecretStr | None = Field(None, description="Use the HF router, start no model.")
    log_format: LogFormat = Field("text", description="Log lines as text or JSON objects.")

    @property
    def embedded_model(self) -> bool:
        """Whether the stack starts the embedded model (no other model API is set)."""
        return not (self.llm_base_url or self.hf_token)


class StackError(RuntimeError):
    """A process of the stack failed to start or died."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived: unwind and stop everything (a BaseException, like ^C)."""


class ChildProcess(Service):
    """A Python module run as a child process, stopped with SIGTERM then SIGKILL on exit."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], stop_grace: float
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None

    def poll(self) -> int | None:
        """Exit code once it has exited, else None."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Start the child."""
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's ^C reaches us only; we stop children in order
            preexec_fn=die_with_parent,
        )

    def stop(self) -> None:
        """Stop the child: SIGTERM, then SIGKILL after ``stop_grace`` (s)."""
        proc, self._proc = self._proc, None
        stop_process(proc, self.name, self.stop_grace)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Later signals are ignored so they cannot interrupt the orderly shutdown; every
    # stop is bounded by the SIGKILL grace period anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logger.info("received %s; stopping", signal.Signals(signum).name)
    raise StopRequested


def _check_alive(watched: dict[str, Poll]) -> None:
    for name, poll in watched.items():
        code = poll()
        if code is not None:
            how = f"signal {-code}: {signal.strsignal(-code)}" if code < 0 else f"code {code}"
            raise StackError(f"{name} exited unexpectedly ({how}); stopping everything")


def _wait_ready(url: str, watched: dict[str, Poll], timeout: float) -> None:
    """Wait until the server at ``url`` is ready (``/readyz`` 200) and a worker serves
    each of its models (``GET /models``: every one ``available``).

    Raises:
        StackError: not within ``timeout`` (s), or a process exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(watched)
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                ready = response.status == 200
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                models = json.load(response)["models"]
            if ready and all(m["available"] for m in models):
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass  # not listening yet, or 503 until Redis and the consumer group are there
        time.sleep(0.25)
    raise StackError(f"{url} was not ready, its workers serving, within {timeout:.0f} s")


def _embedded_catalog(context_tokens: int) -> str:
    """``MODELS`` of a stack on the embedded model: the default catalog, with the
    model's context (tokens a reply), so servers refuse a message that cannot fit it
    instead of passing it to the model."""
    catalog = [
        offer.model_copy(update={"context_tokens": context_tokens}) for offer in default_catalog()
    ]
    return json.dumps([offer.model_dump(exclude_none=True) for offer in catalog])


def _start(settings: StackSettings, stack: contextlib.ExitStack) -> dict[str, Poll]:
    """Start every process, in dependency order, registering each on ``stack``."""
    data_dir = settings.parley_data_dir.resolve()
    log_dir = data_dir / "logs"
    watched: dict[str, Poll] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
        logger.info("using Redis at REDIS_URL")
    else:
        # Imported here: a stack on an external Redis needs nothing from the embedded extra.
        from stack.redis import EmbeddedRedis

        redis = stack.enter_context(
            EmbeddedRedis(
                port=settings.parley_redis_port,
                data_dir=data_dir / "redis",
                log_file=log_dir / "redis.log",
            )
        )
        env["REDIS_URL"] = redis.url
        if redis.process is not None:
            watched["redis"] = redis.process.poll

    if not settings.embedded_model:
        logger.info("using the model at %s", settings.llm_base_url or "the Hugging Face router")
    else:
        model = stack.enter_context(
            EmbeddedModel(
                port=settings.parley_model_port,
                log_dir=log_dir,
                model=settings.parley_model,
                threads=settings.parley_model_threads,
                parallel=settings.parley_model_parallel,
                ctx_size=settings.parley_model_ctx_size,
                max_tokens=settings.parley_model_max_tokens,
                start_timeout=settings.parley_model_start_timeout,
                stop_grace=settings.parley_stop_grace,
            )
        )
        env["LLM_BASE_URL"] = model.base_url
        env["LLM_MODEL"] = model.model
        watched["model server"] = model.poll
        if "MODELS" not in env and "MODELS" not in dotenv_values(".env"):
            env["MODELS"] = _embedded_catalog(settings.parley_model_ctx_size)

    # Entered before the server so that the server stops first, then the workers.
    for i in range(1, settings.parley_workers + 1):
        name = f"worker-{i}"
        argv = [sys.executable, "-m", "worker"]
        worker = stack.enter_context(ChildProcess(name, argv, env, settings.parley_stop_grace))
        watched[name] = worker.poll
    argv = [sys.executable, "-m", "server", "--host", "127.0.0.1"]
    argv += ["--port", str(settings.parley_port)]
    server = stack.enter_context(ChildProcess("server", argv, env, settings.parley_stop_grace))
    watched["server"] = server.poll
    return watched


def _serve(settings: StackSettings, stack: contextlib.ExitStack) -> int:
    url = f"http://127.0.0.1:{settings.parley_port}"
    try:
        watched = _start(settings, stack)
        _wait_ready(url, watched, settings.parley_ready_timeout)
        print(f"Parley is running at {url}", flush=True)
        while True:
            _check_alive(watched)
            time.sleep(0.5)
    except StopRequested:
        return 0
    except (RuntimeError, OSError) as e:
        # StackError, EmbeddedModelError, EmbeddedRedisError: say what failed, then stop.
        logger.error("%s", e)
        return 1


def run(settings: StackSettings) -> int:
    """Run the stack until a signal (exit code 0) or a failure (exit code 1).

    Returns 2 at once, having started nothing, when the embedded model is wanted and
    this CPU lacks a flag its prebuilt runtime needs (:mod:`stack.cpu`).
    """
    missing = missing_cpu_flags() if settings.embedded_model else []
    if missing:
        logger.error("cannot start the embedded model: %s", unsupported_cpu_message(missing))
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with contextlib.ExitStack() as stack:
        code = _serve(settings, stack)
        logger.info("stopping the stack")
    logger.info("stopped")
    return code


def main() -> int:
    """Entry point of ``python -m stack``; returns the process exit code."""
    try:
        settings = StackSettings()
    except ValidationError as e:
        print(f"invalid settings:\n{e}", file=sys.stderr)
        return 2
    setup_logging("INFO", settings.log_format, "stack")
    return run(settings)
