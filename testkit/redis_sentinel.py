"""A Redis primary, its replicas and Redis Sentinels, for the tests and the benchmark."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from stack.process import Service, die_with_parent, log_tail, stop_process
from stack.redis import EmbeddedRedis, EmbeddedRedisError, redis_server_path
from testkit.ports import free_ports

logger = logging.getLogger(__name__)


class RedisWithSentinels(Service):
    """A primary and ``replicas`` replicas (each an :class:`EmbeddedRedis`: RedisJSON,
    RediSearch, AOF) watched by ``sentinels`` Redis Sentinels, all on 127.0.0.1.

    Node 0 is the first primary; each Sentinel is ``redis-server sentinel.conf
    --sentinel`` with a quorum of a majority. Use as a context manager; :meth:`kill`
    crashes a node (SIGKILL) and :meth:`wait_failover` waits until the Sentinels name
    another primary and it serves as one.

    Args:
        data_dir: parent of every node's and Sentinel's folder, created if missing.
        replicas: replicas of the primary.
        sentinels: Sentinels (3: a failover needs a majority of them); 0 for none, a
            primary and its replicas only (the benchmark's ``--wait-replicas``).
        service: the name the Sentinels monitor the primary by.
        down_after_ms: ``down-after-milliseconds``: a primary unreachable this long
            is down for one Sentinel (Redis's default is 30 s).
        failover_timeout_ms: ``failover-timeout`` (Redis's default is 3 minutes).
    """

    def __init__(
        self,
        data_dir: Path,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "parley",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.data_dir = data_dir
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = free_ports(1 + replicas + sentinels)
        # A replica's first sync starts at once, not after the 5 s that Redis waits for
        # more replicas to share it; replicas announce themselves every second, not 10.
        fast = ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]
        self.nodes = [EmbeddedRedis(ports[0], data_dir / "node0", extra_args=fast)]
        self.nodes += [
            EmbeddedRedis(
                ports[i],
                data_dir / f"node{i}",
                extra_args=[*fast, "--replicaof", "127.0.0.1", str(ports[0])],
            )
            for i in range(1, 1 + replicas)
        ]
        self.sentinel_ports = ports[1 + replicas :]
        self._sentinels: list[subprocess.Popen[bytes] | None] = [None] * sentinels

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,.../<service>/0``."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, wait until every replica is linked, start the Sentinels and
        wait until each knows every replica and every other Sentinel.

        Raises:
            EmbeddedRedisError: something did not start or link within ``timeout_s`` (s).
        """
        try:
            for node in self.nodes:
                node.start()
            deadline = time.monotonic() + timeout_s
            for node in self.nodes[1:]:
                self._wait(deadline, f"replica {node.port} linked", self._linked_of(node))
            for i in range(len(self._sentinels)):
                self._start_sentinel(i)
            self._wait(deadline, "Sentinels ready", self._sentinels_ready)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every Sentinel and node (SIGTERM)."""
        for i, proc in enumerate(self._sentinels):
            stop_process(proc, f"redis-sentinel {self.sentinel_ports[i]}", timeout_s)
        for node in self.nodes:
            node.stop(timeout_s)

    def primary(self) -> EmbeddedRedis:
        """The node the Sentinels name as primary now.

        Raises:
            EmbeddedRedisError: no Sentinel answers, or names no node of ours.
        """
        port = self._primary_port()
        found = [n for n in self.nodes if n.port == port]
        if not found:
            raise EmbeddedRedisError(f"the Sentinels name no node of ours (port {port})")
        return found[0]

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL ``node`` (a crash: nothing flushed); wait until it has exited."""
        assert node.process is not None
        node.process.kill()
        node.process.wait()

    def wait_failover(self, old: EmbeddedRedis, timeout_s: float = 30.0) -> EmbeddedRedis:
        """Wait until the Sentinels name a primary other than ``old`` and it answers as
        one (``role:master``); return it.

        Raises:
            EmbeddedRedisError: not so within ``timeout_s`` (s).
        """
        deadline = time.monotonic() + timeout_s

        def promoted() -> bool:
            port = self._primary_port()
            return port is not None and port != old.port and self._role(port) == "master"

        self._wait(deadline, "failover", promoted)
        return self.primary()

    # -- internals ------------------------------------------------------------------

    def _start_sentinel(self, i: int) -> None:
        port = self.sentinel_ports[i]
        folder = self.data_dir / f"sentinel{i}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # a Sentinel rewrites its file: one each
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {folder.resolve()}\n"
            f"logfile {(folder / 'sentinel.log').resolve()}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.nodes[0].port} "
            f"{len(self._sentinels) // 2 + 1}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        self._sentinels[i] = subprocess.Popen(
            [str(redis_server_path()), str(conf.resolve()), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def _sentinels_ready(self) -> bool:
        for i, port in enumerate(self.sentinel_ports):
            proc = self._sentinels[i]
            if proc is not None and proc.poll() is not None:
                log = log_tail(self.data_dir / f"sentinel{i}" / "sentinel.log", 10, "(no log)")
                raise EmbeddedRedisError(f"redis-sentinel {port} exited: {log}")
            with self._client(port) as c:
                state: dict[str, Any] = c.sentinel_master(self.service)  # type: ignore[no-untyped-call]
            if int(state["num-slaves"]) < len(self.nodes) - 1:
                return False
            if int(state["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                return False
        return True

    def _primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                with self._client(port) as c:
                    address = c.sentinel_get_master_addr_by_name(self.service)  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def _role(self, port: int) -> str:
        try:
            with self._client(port) as c:
                return str(c.execute_command("ROLE")[0])
        except redis.RedisError:
            return "down"

    def _linked_of(self, node: EmbeddedRedis) -> Callable[[], bool]:
        def linked() -> bool:
            with self._client(node.port) as c:
                return c.info("replication").get("master_link_status") == "up"

        return linked

    @staticmethod
    def _client(port: int) -> redis.Redis[str]:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2.0)

    @staticmethod
    def _wait(deadline: float, what: str, ready: Callable[[], bool]) -> None:
        problem = "not yet"
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except redis.RedisError as e:
                problem = repr(e)
            time.sleep(0.05)
        raise EmbeddedRedisError(f"{what}: not so in time ({problem})")
