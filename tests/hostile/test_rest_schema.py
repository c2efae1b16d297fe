"""The REST routes of a real ``python -m server``, fuzzed by Schemathesis from their
OpenAPI schema, and again with hostile ``Host``, ``Origin``, ``X-Forwarded-For`` and
``Authorization`` headers: no input may get a 5xx answer."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from stack.process import die_with_parent, stop_process
from stack.redis import EmbeddedRedis
from testkit.overrides import declare, pinned_environment
from testkit.ports import free_port
from testkit.processes import REPO_ROOT
from testkit.redis_cluster import EmbeddedRedisCluster
from tests.hostile.frames import HANDSHAKES

pytestmark = pytest.mark.system

BEHIND_A_PROXY = declare(
    TRUSTED_PROXIES=(
        "127.0.0.1",
        "the client stands for a proxy: its X-Forwarded-For is read",
    ),
)

#: Examples per operation and mode (valid, invalid): about 10 s in all.
EXAMPLES = 150


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def rest_server(
    redis_server: EmbeddedRedis | EmbeddedRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A ``python -m server`` process: its URL and its log file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("schema") / "server.log"
    env = pinned_environment({"REDIS_URL": redis_server.url}, BEHIND_A_PROXY)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 30
        while not _ready(url):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server was not ready in 30 s"
            time.sleep(0.05)
        yield url, log
    finally:
        stop_process(proc, "server", grace_s=5)


def test_no_input_gets_a_server_error(rest_server: tuple[str, Path]) -> None:
    """Every operation of the schema, ``EXAMPLES`` valid and ``EXAMPLES`` invalid
    requests each (Hypothesis shrinks a failure to its smallest request)."""
    url, _ = rest_server
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/token", "/refresh_token", "/healthz", "/readyz"}
    calls = 0
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and not operation.query:
            continue  # nothing to get wrong

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy(generation_mode=mode))
        def no_server_error(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(checks=[not_a_server_error], timeout=10)

        no_server_error()
    print(f"\nschemathesis: {calls} requests over {len(operations)} operations, no 5xx")


def test_no_header_gets_a_server_error(rest_server: tuple[str, Path]) -> None:
    """Every operation, valid requests with hostile headers (``tests.hostile.frames``):
    malformed hosts and origins, forwarded entries that are not addresses, odd bearer
    tokens. Each is answered below 500."""
    url, _ = rest_server
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert any(op.definition.raw.get("security") for op in operations), "no Bearer route"
    statuses: dict[int, int] = {}
    for operation in operations:

        @settings(
            max_examples=EXAMPLES // 3,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), headers=HANDSHAKES)
        def no_server_error(case: schemathesis.Case, headers: dict[str, str]) -> None:
            try:
                response = case.call(headers=headers, timeout=10)
            except (ValueError, UnicodeError):
                return  # a header value the HTTP client will not send
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (headers, response.text[:200])

        no_server_error()
    print(f"\nschemathesis with hostile headers: statuses {dict(sorted(statuses.items()))}")
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0


def test_no_traceback_in_the_log(rest_server: tuple[str, Path]) -> None:
    _, log = rest_server
    lines = log.read_text(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith("Traceback")], "\n".join(lines[-40:])
