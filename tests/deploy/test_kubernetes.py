"""deploy/kubernetes, rendered by ``kubectl kustomize`` for each overlay and checked
without a cluster: every object against the Kubernetes API's schemas
(``kubernetes-validate``) and KEDA's ScaledObject CRD, and against Parley itself: the
settings each process is given are settings it reads, its ports and probe paths are
the ones it serves, and the grace periods outlast its drains.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.config import ServerSettings
from server.metrics import MODEL_QUEUE_LAG
from stack.model import MODELS as EMBEDDED_MODELS
from stack.model_server import parse_args as model_server_args
from tests.deploy.manifests import (
    OVERLAYS,
    ROOT,
    Obj,
    Rendered,
    argv,
    containers,
    cpu_cores,
    memory_bytes,
    option,
    pod_spec,
    port,
    process,
    redis_bytes,
    render,
    selects,
    settings_of,
)
from worker.config import WorkerSettings

#: The Kubernetes version whose API schemas (bundled with kubernetes-validate) apply.
KUBERNETES_VERSION = "1.37.0"
KEDA_SCHEMA = json.loads(
    (Path(__file__).with_name("keda-scaledobject-v1alpha1.schema.json")).read_text()
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Images that ship RedisJSON and RediSearch (from Redis 8 the official image does).
MODULE_IMAGES = re.compile(r"^(redis:(8|9|[1-9]\d)(\.\d+)*(-\w+)?|redis/redis-stack(-server)?:.+)$")
SETTINGS = {"server": ServerSettings, "worker": WorkerSettings}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """One overlay, rendered (each test runs for every overlay)."""
    return render(request.param)


def server(rendered: Rendered) -> tuple[Obj, Obj, ServerSettings]:
    """The servers' Deployment, container and settings, as the manifests give them."""
    [(workload, container)] = list(rendered.processes("server"))
    return workload, container, settings_of(ServerSettings, rendered.environment(container))


def test_there_are_overlays_to_check() -> None:
    assert {"trial", "production"} <= set(OVERLAYS)


# -- schemas --------------------------------------------------------------------------


def test_every_object_is_valid_for_the_kubernetes_api(rendered: Rendered) -> None:
    """Strict: an unknown field fails, as the API server's field validation refuses it."""
    errors = []
    for obj in rendered.objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: KEDA's schema, below
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {path}: {e.message}")
    assert not errors, "\n".join(errors)


def test_scaled_objects_are_valid_for_kedas_crd(rendered: Rendered) -> None:
    jsonschema.Draft7Validator.check_schema(KEDA_SCHEMA)
    scaled = rendered.of_kind("ScaledObject")
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        jsonschema.validate(obj, KEDA_SCHEMA, cls=jsonschema.Draft7Validator)


# -- settings, ports, probes, grace periods -------------------------------------------


@pytest.mark.parametrize("name", ["server", "worker"])
def test_every_variable_set_is_a_setting_of_the_process(rendered: Rendered, name: str) -> None:
    found = list(rendered.processes(name))
    assert found, f"no container runs python -m {name}"
    known = {field.upper() for field in SETTINGS[name].model_fields}
    for workload, container in found:
        env = rendered.environment(container)
        unknown = set(env) - known
        assert not unknown, f"{workload['metadata']['name']} sets what it never reads: {unknown}"
        settings_of(SETTINGS[name], env)  # and each value is one the process accepts


def test_the_model_server_reads_no_environment(rendered: Rendered) -> None:
    for _, container in rendered.processes("stack.model_server"):
        assert not container.get("env") and not container.get("envFrom")


def get_paths(app: FastAPI) -> set[str]:
    """The paths ``app`` answers GET on (its OpenAPI document, built whether or not the
    explorer is served)."""
    return {path for path, methods in app.openapi()["paths"].items() if "get" in methods}


def test_the_servers_probes_ask_routes_the_server_serves(rendered: Rendered) -> None:
    _, container, settings = server(rendered)
    paths = get_paths(create_app(settings))
    probes = {kind: container[kind] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz", "Redis and the relay"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz", "the process alone"
    for probe in probes.values():
        get = probe["httpGet"]
        assert get["path"] in paths
        assert get["port"] in ("http", port(container, "http"))
        # The kubelet's Host is the pod's IP unless the probe names one; the server
        # refuses a Host outside ALLOWED_HOSTS with 400.
        hosts = [h["value"] for h in get.get("httpHeaders", []) if h["name"].lower() == "host"]
        assert hosts and hosts[0] in settings.hosts()


def test_the_servers_listen_where_their_service_and_probes_look(rendered: Rendered) -> None:
    workload, container, settings = server(rendered)
    args = argv(container)
    assert args[:3] == ["python", "-m", "server"]
    assert option(args, "--host") == "0.0.0.0"
    assert port(container, "http") == int(option(args, "--port")) == 8000  # server.main's
    assert port(container, "metrics") == settings.metrics_port != port(container, "http")
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    service = rendered.get("Service", workload["metadata"]["name"])
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(workload))
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"], "metrics stay inside"


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


async def test_the_public_port_serves_no_metrics_and_no_api_explorer(rendered: Rendered) -> None:
    """The servers' app as configured: what the Ingress can reach on the http port."""
    _, container, settings = server(rendered)
    app = create_app(settings)
    [host] = [rule["host"] for rule in rendered.get("Ingress", "parley")["spec"]["rules"]]
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert await status_of(app, path, host) == 404, path
    probe = container["livenessProbe"]["httpGet"]
    assert await status_of(app, probe["path"], probe["httpHeaders"][0]["value"]) == 200


async def status_of(app: FastAPI, path: str, host: str) -> int:
    """The status of ``GET path`` with ``Host: host``, asked of the ASGI app directly
    (no lifespan, so only routes that need no Redis answer)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", host.encode())],
        "client": ("10.244.0.10", 40000),
        "server": ("10.244.1.20", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_the_servers_grace_outlasts_their_shutdown(rendered: Rendered) -> None:
    """preStop's pause, then SIGTERM closes every chat socket with 1001, each close
    bounded by WS_SEND_TIMEOUT_S: all of it before the kubelet's SIGKILL."""
    workload, container, settings = server(rendered)
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod_spec(workload)["terminationGracePeriodSeconds"]
    assert grace > pause + settings.ws_send_timeout_s


def test_the_workers_grace_outlasts_their_drain(rendered: Rendered) -> None:
    """SIGTERM: the worker's read returns within READ_BLOCK_MS, then its replies in
    progress get DRAIN_TIMEOUT_S (worker/app.py), then it acks and exits."""
    for workload, container in rendered.processes("worker"):
        settings = settings_of(WorkerSettings, rendered.environment(container))
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        drain = settings.drain_timeout_s + settings.read_block_ms / 1000
        assert grace > drain, workload["metadata"]["name"]


# -- pools and their scaling ----------------------------------------------------------


def pools(rendered: Rendered) -> dict[str, tuple[Obj, Obj, WorkerSettings]]:
    """``{model id: (Deployment, worker container, settings)}``: one model a pool."""
    found = {}
    for workload, container in rendered.processes("worker"):
        settings = settings_of(WorkerSettings, rendered.environment(container))
        [model] = settings.served_models()  # raises if MODELS does not offer it
        assert settings.worker_models == model, "a pool names its model (WORKER_MODELS)"
        assert model not in found, f"two pools serve {model}"
        found[model] = (workload, container, settings)
    return found


def test_every_model_of_the_catalog_has_a_pool(rendered: Rendered) -> None:
    _, _, settings = server(rendered)
    catalog = [offer.id for offer in settings.models]
    assert sorted(pools(rendered)) == sorted(catalog)
    for _, container in rendered.processes("worker"):
        worker = settings_of(WorkerSettings, rendered.environment(container))
        assert worker.models == settings.models, "servers and workers share one catalog"


def test_each_pool_scales_on_its_models_queue_lag(rendered: Rendered) -> None:
    assert MODEL_QUEUE_LAG._labelnames == ("model",)
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in rendered.of_kind("ScaledObject")}
    for model, (workload, _, settings) in pools(rendered).items():
        name = workload["metadata"]["name"]
        assert name in scaled, f"no ScaledObject scales {name}"
        spec = scaled.pop(name)["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == workload["kind"]
        assert "replicas" not in workload["spec"], "KEDA owns the count"
        # A pool empty for MODEL_WAIT_S makes its model unavailable.
        assert spec["minReplicaCount"] >= 1
        assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert query == f'max({MODEL_QUEUE_LAG._name}{{model="{model}"}})'
        # One worker for about as many replies as it takes at once.
        assert float(trigger["metadata"]["threshold"]) == settings.worker_concurrency
        assert urlparse(trigger["metadata"]["serverAddress"]).scheme in ("http", "https")
    assert not scaled, f"ScaledObjects without a pool: {sorted(scaled)}"


def test_the_servers_scale_on_cpu_and_keep_one_through_disruptions(rendered: Rendered) -> None:
    workload, _, _ = server(rendered)
    name = workload["metadata"]["name"]
    assert "replicas" not in workload["spec"], "the HorizontalPodAutoscaler owns the count"
    hpa = rendered.get("HorizontalPodAutoscaler", name)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpa["minReplicas"] >= 2
    [metric] = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    pdb = rendered.get("PodDisruptionBudget", name)["spec"]
    assert selects(pdb["selector"], pod_labels(workload))
    assert pdb["minAvailable"] >= 1


@pytest.mark.parametrize("kind", ["server", "worker"])
def test_rolling_updates_never_lower_the_count(rendered: Rendered, kind: str) -> None:
    """A new pod is up before an old one stops: a pool never empties, servers stay."""
    for workload, _ in rendered.processes(kind):
        update = workload["spec"]["strategy"]
        assert update["type"] == "RollingUpdate"
        assert update["rollingUpdate"]["maxUnavailable"] == 0


# -- the embedded model ---------------------------------------------------------------


def test_the_small_pool_runs_the_embedded_model_beside_each_worker(rendered: Rendered) -> None:
    workload, _, settings = pools(rendered)["small"]
    [model] = [c for c in containers(workload) if process(c) == "stack.model_server"]
    args = model_server_args(argv(model)[3:])  # its own parser: unknown options fail
    # A sidecar: started (and healthy) before the worker, stopped after its drain.
    assert model in pod_spec(workload).get("initContainers", [])
    assert model["restartPolicy"] == "Always"
    assert model["startupProbe"]["httpGet"]["path"] == "/health"
    assert model["startupProbe"]["httpGet"]["port"] in ("model", args.port)
    assert port(model, "model") == args.port
    assert args.host == "127.0.0.1", "only its own worker asks it"
    assert args.model in EMBEDDED_MODELS
    base_url, api_model, _ = settings.resolved_llm()
    assert base_url == f"http://{args.host}:{args.port}/v1"
    [offer] = [o for o in settings.models if o.id == "small"]
    assert (offer.api_model or api_model) == args.model
    # Its context is shared by its slots; the catalog's context_tokens is one slot's.
    assert offer.context_tokens is not None
    assert args.ctx_size == offer.context_tokens * args.parallel
    # Threads spin: more of them than the pod's CPUs stall each other.
    assert args.threads is not None
    assert args.threads <= cpu_cores(model["resources"]["limits"]["cpu"])


def test_the_images_are_this_release(rendered: Rendered) -> None:
    version = PYPROJECT["project"]["version"]
    [pin] = [
        d for d in PYPROJECT["project"]["optional-dependencies"]["embedded"] if "xllamacpp" in d
    ]
    runtime = pin.split("==")[1].split()[0]
    expected = {
        "server": ("parley", version),
        "worker": ("parley", version),
        "stack.model_server": ("parley-model", f"xllamacpp-{runtime}"),
    }
    for workload in rendered.workloads():
        for container in containers(workload):
            name = process(container)
            if name in expected:
                # An overlay may name a registry (kustomize's `images`), not another tag.
                repository, _, tag = container["image"].rpartition(":")
                image, release = expected[name]
                assert repository.rpartition("/")[2] == image, container["image"]
                assert tag == release, f"{workload['metadata']['name']}: {container['image']}"


# -- security -------------------------------------------------------------------------


def dockerfile_uids() -> set[int]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    return {int(uid) for uid in re.findall(r"useradd [^\n]*--uid (\d+)", text)}


def test_every_container_is_locked_down_and_bounded(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        pod = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            context = {**pod["securityContext"], **container["securityContext"]}
            assert context["runAsNonRoot"] is True, where
            # A numeric user: the kubelet cannot tell that `USER parley` is not root.
            assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, where
            if process(container):
                assert context["runAsUser"] in dockerfile_uids(), where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, where
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"], {})
                assert "emptyDir" in volume or mount["name"] in claims, where
            if process(container):  # Python and llama.cpp may want a scratch folder
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where


def test_the_namespace_enforces_the_restricted_pod_security_standard(
    rendered: Rendered,
) -> None:
    [namespace] = rendered.of_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]


def allowed_peers(rendered: Rendered, direction: str, target: dict[str, str]) -> list[Obj]:
    """The ``ingress`` (or ``egress``) rules of every NetworkPolicy that selects pods
    labelled ``target``."""
    rules: list[Obj] = []
    for policy in rendered.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        if selects(spec["podSelector"], target) and direction.capitalize() in spec.get(
            "policyTypes", []
        ):
            rules += spec.get(direction, [])
    return rules


def rule_allows(rule: Obj, port_numbers: set[int | str]) -> bool:
    """Whether a rule's ports include one of ``port_numbers`` (no ports: every port)."""
    ports = rule.get("ports")
    return not ports or any(p.get("port") in port_numbers for p in ports)


def test_nothing_is_allowed_but_what_a_policy_allows(rendered: Rendered) -> None:
    deny = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "a default-deny policy for every pod, both ways"


def test_only_servers_and_workers_reach_redis(rendered: Rendered) -> None:
    redis_ports: set[int | str] = {6379, "redis"}
    reach = set()
    for workload in rendered.workloads():
        labels = pod_labels(workload)
        if labels.get("app.kubernetes.io/component") == "redis":
            continue
        if any(rule_allows(r, redis_ports) for r in allowed_peers(rendered, "egress", labels)):
            reach.add(labels["app.kubernetes.io/component"])
    assert reach == {"server", "worker"}
    for redis in [w for w in rendered.workloads() if "redis" in w["metadata"]["name"]]:
        rules = allowed_peers(rendered, "ingress", pod_labels(redis))
        assert rules, "the in-cluster Redis takes connections from its policy's peers alone"
        admitted = {
            pod_labels(w)["app.kubernetes.io/component"]
            for w in rendered.workloads()
            for rule in rules
            for peer in rule.get("from", [])
            if "namespaceSelector" not in peer and selects(peer["podSelector"], pod_labels(w))
        }
        assert admitted == {"server", "worker"}


def test_the_servers_take_their_public_port_from_the_ingress_controller_alone(
    rendered: Rendered,
) -> None:
    """TRUSTED_PROXIES is a range of pod addresses: safe only if no other pod can
    connect to the servers and name itself a client in X-Forwarded-For."""
    workload, container, settings = server(rendered)
    trusted = settings.proxies()
    assert trusted and all(not net.is_global and net.prefixlen >= 8 for net in trusted)
    assert ipaddress.ip_network("0.0.0.0/0") not in trusted
    public = {"http", port(container, "http")}
    labels = pod_labels(workload)
    rules = [r for r in allowed_peers(rendered, "ingress", labels) if rule_allows(r, public)]
    peers = [peer for rule in rules for peer in rule.get("from", [])]
    assert rules and all(rule.get("from") for rule in rules), "never from anywhere"
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


# -- the edge -------------------------------------------------------------------------


def test_the_ingress_passes_websockets_to_the_servers(rendered: Rendered) -> None:
    _, _, settings = server(rendered)
    ingress = rendered.get("Ingress", "parley")
    spec, annotations = ingress["spec"], ingress["metadata"]["annotations"]
    assert spec["ingressClassName"] == "nginx"
    prefix = "nginx.ingress.kubernetes.io/"
    # Chat sockets idle for long: nginx's default 60 s read timeout would cut them.
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) >= 600
    # Tokens travel in query strings, which the controller's access log would keep.
    assert annotations[prefix + "enable-access-log"] == "false"
    assert not any("snippet" in key for key in annotations), "snippets are off by default"
    for rule in spec["rules"]:
        assert rule["host"] in settings.hosts(), "else the servers answer 400"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "parley-server"
            assert backend["port"] == {"name": "http"}
    assert {h for tls in spec["tls"] for h in tls["hosts"]} == {r["host"] for r in spec["rules"]}


def test_redis_is_the_secrets_redis_url(rendered: Rendered) -> None:
    """Servers and workers read REDIS_URL from the Secret parley-redis: generated for
    the in-cluster Redis by the trial, created by the operator in production."""
    refs = set()
    for name in ("server", "worker"):
        for _, container in rendered.processes(name):
            [var] = [v for v in container["env"] if v["name"] == "REDIS_URL"]
            ref = var["valueFrom"]["secretKeyRef"]
            refs.add((ref["name"], ref["key"]))
            url = rendered.environment(container)["REDIS_URL"]
            if url is not None:
                check_in_cluster_redis(rendered, url)
    assert len(refs) == 1, "one Redis for every process"
    [(secret, _)] = refs
    generated = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == secret]
    has_redis = any("redis" in w["metadata"]["name"] for w in rendered.workloads())
    assert bool(generated) == has_redis, "a generated URL names the Redis rendered beside it"


def check_in_cluster_redis(rendered: Rendered, url: str) -> None:
    parsed = urlparse(url)
    service = rendered.get("Service", str(parsed.hostname))
    [redis] = [
        w
        for w in rendered.workloads()
        if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
    ]
    [container] = containers(redis)
    assert MODULE_IMAGES.match(container["image"]), f"{container['image']} lacks JSON and search"
    assert [p["port"] for p in service["spec"]["ports"]] == [parsed.port or 6379]
    assert port(container, "redis") == (parsed.port or 6379)
    args = argv(container)
    assert option(args, "--appendonly") == "yes"
    # Eviction would drop sessions and queued messages without a word; noeviction with
    # maxmemory under the container's limit refuses writes instead of being killed.
    assert option(args, "--maxmemory-policy") == "noeviction"
    limit = memory_bytes(container["resources"]["limits"]["memory"])
    assert redis_bytes(option(args, "--maxmemory")) < limit
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data" in mounts
