"""The embedded Redis Cluster: it forms, serves every slot with the modules, and restarts nodes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from testkit.redis_cluster import CLUSTER_SLOTS, EmbeddedRedisCluster


def cluster_client(url: str) -> RedisCluster:
    """A cluster client for ``url``, without the ``cluster=true`` marker redis-py rejects."""
    parts = urlsplit(url)
    assert parse_qs(parts.query) == {"cluster": ["true"]}
    return RedisCluster.from_url(urlunsplit(parts._replace(query="")), decode_responses=True)


def key_per_node(client: RedisCluster, prefix: str) -> dict[int, str]:
    """One key name per primary (by port), each in a different slot."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < len(client.get_primaries()):
        key = f"{prefix}:{{{i}}}"
        keys.setdefault(client.get_node_from_key(key).port, key)
        i += 1
    return keys


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_cluster_serves_every_slot_with_the_modules(tmp_path: Path) -> None:
    with EmbeddedRedisCluster(tmp_path, primaries=3) as cluster:
        assert len(cluster.nodes) == 3
        for node in cluster.nodes:
            with Redis(port=node.port, decode_responses=True) as plain:
                info = plain.execute_command("CLUSTER", "INFO")
                assert "cluster_state:ok" in info
                assert f"cluster_slots_ok:{CLUSTER_SLOTS}" in info
                modules = {m["name"] for m in plain.module_list()}
                assert {"ReJSON", "search"} <= modules

        with cluster_client(cluster.url) as client:
            assert {n.port for n in client.get_primaries()} == set(cluster.ports)
            keys = key_per_node(client, "test:key")
            docs = key_per_node(client, "test:doc")
            for port, key in keys.items():
                client.set(key, str(port))
            for port, doc in docs.items():
                assert client.execute_command("JSON.SET", doc, "$", json.dumps({"port": port}))
            assert {port: client.get(key) for port, key in keys.items()} == {
                port: str(port) for port in keys
            }
            for port, doc in docs.items():
                assert client.execute_command("JSON.GET", doc, ".port") == str(port)

        # A stopped node keeps its data and its place in the cluster. A fresh client: the
        # sync cluster client of redis-py 8.1 leaves a socket unclosed on reconnecting.
        victim_port = cluster.nodes[1].port
        cluster.stop_node(1)
        assert not port_open(victim_port)
        cluster.start_node(1)
        with cluster_client(cluster.url) as client:
            assert client.get(keys[victim_port]) == str(victim_port)
            assert client.execute_command("JSON.GET", docs[victim_port], ".port") == str(
                victim_port
            )

    for node in cluster.nodes:
        assert node.process is not None and node.process.poll() is not None
        assert not port_open(node.port)
