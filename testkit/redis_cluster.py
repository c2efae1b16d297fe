"""A Redis Cluster of embedded Redis servers, for the tests and the benchmark."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import redis

from stack.process import Service
from stack.redis import EmbeddedRedis, EmbeddedRedisError
from testkit.ports import free_ports

logger = logging.getLogger(__name__)


#: The number of hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


class EmbeddedRedisCluster(Service):
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
