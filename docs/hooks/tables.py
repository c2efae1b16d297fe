"""The site's generated references, as Markdown: each from the one place that holds it.

- settings: a pydantic-settings class's own fields (name, default, type and bounds from
  the ``Field`` metadata, description);
- error codes: ``protocol.wire.ErrorCode``, described by ``docs/asyncapi.yaml``;
- the WebSocket's commands, events and close codes: ``docs/asyncapi.yaml``;
- the REST routes: the app's OpenAPI schema (``server.app.create_app``);
- metrics: the Prometheus metrics the server's and the worker's modules define;
- performance: a benchmark result file, through ``bench.report.markdown``.

Every function raises ``ValueError`` when its source is incomplete (a setting or an
error code without a description), so a strict build fails instead of printing a hole.
"""

from __future__ import annotations

import enum
import importlib
import json
import pkgutil
import re
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """``text`` as inline code, with enough backticks around it for any it holds."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


# -- settings ---------------------------------------------------------------------------


def own_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The fields ``cls`` declares itself, not those of the settings class it extends."""
    parents = [b for b in cls.__mro__[1:] if isinstance(b, type) and issubclass(b, BaseSettings)]
    inherited = set(parents[0].model_fields) if parents else set()
    return {n: f for n, f in cls.model_fields.items() if n not in inherited}


def default_text(field: FieldInfo) -> str:
    """A field's default as a reader would set it: ``unset``, ``empty`` or the value."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return code(str(extra["shown_default"]))
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        raise ValueError("a secret has no default to show")
    if isinstance(value, bool):
        return code(str(value).lower())
    if isinstance(value, list | dict | BaseModel):
        return code(json.dumps(to_jsonable_python(value, exclude_none=True)))
    if value == "":
        return "empty"
    return code(str(value))


def kind_text(annotation: Any) -> str:
    """What a setting holds, from its type annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return kind_text(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(code(str(a)) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " or ".join(code(str(m.value)) for m in annotation)
    if typing.get_origin(annotation) is list:
        return "JSON list"
    names = {bool: "`true` or `false`", int: "integer", float: "number", str: "text"}
    if annotation in names:
        return names[annotation]
    if annotation is Path:
        return "path"
    if annotation is SecretStr:
        return "secret text"
    raise ValueError(f"no description of the type {annotation!r}")


def bounds_text(field: FieldInfo) -> str:
    """The bounds of a field's ``Field`` metadata: ``1 to 65535``, ``> 0``, ``≥ 1024``."""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                found[name] = getattr(item, name)
    if "ge" in found and "le" in found:
        return f"{found['ge']:g} to {found['le']:g}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{signs[n]} {v:g}" for n, v in found.items())


def settings_table(cls: type[BaseSettings]) -> str:
    """The table of ``cls``'s own settings, in declaration order."""
    rows = ["| Variable | Default | Allowed | Meaning |", "| --- | --- | --- | --- |"]
    for name, field in own_fields(cls).items():
        if not field.description:
            raise ValueError(f"{cls.__name__}.{name} has no description")
        allowed = ", ".join(t for t in (kind_text(field.annotation), bounds_text(field)) if t)
        rows.append(
            f"| `{name.upper()}` | {cell(default_text(field))} | {cell(allowed)} "
            f"| {cell(field.description)} |"
        )
    return "\n".join(rows)


# -- the WebSocket: docs/asyncapi.yaml and ErrorCode -------------------------------------


def error_codes_table(document: dict[str, Any], codes: type[enum.Enum]) -> str:
    """Every code of ``codes``, in its order, with the document's description of it."""
    described = {
        o["const"]: o.get("description", "")
        for o in document["components"]["schemas"]["ErrorCode"]["oneOf"]
    }
    rows = ["| Code | When |", "| --- | --- |"]
    for member in codes:
        if not described.get(member.value):
            raise ValueError(f"error code {member.value} has no description in asyncapi.yaml")
        rows.append(f"| `{member.value}` | {cell(described[member.value])} |")
    return "\n".join(rows)


def _shape(schema: dict[str, Any]) -> str:
    """A payload as the API pages write it: ``{"type": "stop"}``, optional fields bracketed."""
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema["properties"].items():
        if name == "type":
            parts.insert(0, f'"type": "{prop["const"]}"')
        else:
            parts.append(f'"{name}"' if name in required else f'[, "{name}"]')
    text = ", ".join(parts).replace(", [, ", "[, ")
    return code("{" + text + "}")


def socket_messages_table(document: dict[str, Any], action: str) -> str:
    """The commands (``receive``) or events (``send``) of the chat channel, in the
    channel's order: a section each, with its payload's shape and its description."""
    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    wanted = {
        ref["$ref"].split("/")[-1]
        for operation in document["operations"].values()
        if operation["action"] == action
        for ref in operation["messages"]
    }
    sections = []
    for name in document["channels"]["chat"]["messages"]:
        if name not in wanted:
            continue
        message = messages[name]
        payload = message["payload"]
        if "$ref" in payload:
            schema = schemas[payload["$ref"].split("/")[-1]]
            title, shape = code(schema["properties"]["type"]["const"]), _shape(schema)
        else:
            title, shape = "Plain text", ""
        text = "\n\n".join(
            t.strip() for t in (message.get("summary"), message.get("description")) if t
        )
        sections.append("\n\n".join(p for p in (f"### {title}", shape, text) if p) + "\n")
    return "\n".join(sections)


def close_codes_table(document: dict[str, Any]) -> str:
    """The close codes the chat channel documents (``x-close-codes``)."""
    rows = ["| Close code | When |", "| --- | --- |"]
    for close, meaning in document["channels"]["chat"]["x-close-codes"].items():
        rows.append(f"| {close} | {cell(meaning)} |")
    return "\n".join(rows)


# -- REST: the OpenAPI schema ------------------------------------------------------------


def markdown_from_docstring(text: str) -> str:
    """A route docstring's reStructuredText roles and literals as Markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


def rest_routes(schema: dict[str, Any]) -> str:
    """One section per route of the schema, in its order: the route's own description."""
    sections = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            description = operation.get("description") or operation.get("summary")
            if not description:
                raise ValueError(f"{method.upper()} {path} has no description")
            sections.append(
                f"### `{method.upper()} {path}`\n\n{markdown_from_docstring(description)}\n"
            )
    return "\n".join(sections)


# -- metrics -----------------------------------------------------------------------------


def defined_metrics(packages: tuple[str, ...]) -> list[tuple[str, MetricWrapperBase]]:
    """Every Prometheus metric a module of ``packages`` defines at module level, with the
    package that serves it."""
    found: dict[int, tuple[str, MetricWrapperBase]] = {}
    for package in packages:
        root = importlib.import_module(package)
        names = [package] + [
            m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")
        ]
        for name in names:
            for value in vars(importlib.import_module(name)).values():
                if isinstance(value, MetricWrapperBase):
                    found.setdefault(id(value), (package, value))
    return sorted(found.values(), key=lambda pm: (pm[0], pm[1]._name))


def metrics_table(packages: tuple[str, ...]) -> str:
    """The metrics of ``packages``: exposed name, type, labels, process, meaning."""
    rows = ["| Metric | Type | Labels | Process | Meaning |", "| --- | --- | --- | --- | --- |"]
    for package, metric in defined_metrics(packages):
        kind = metric._type
        name = f"{metric._name}_total" if kind == "counter" else metric._name
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "-"
        rows.append(f"| `{name}` | {kind} | {labels} | {package} | {cell(metric._documentation)} |")
    return "\n".join(rows)


# -- performance -------------------------------------------------------------------------


def performance_table(result: dict[str, Any]) -> str:
    """A benchmark result file's targets table, headed by when, where and how it ran."""
    from bench.report import markdown  # the benchmark's own table, not a second one

    machine = result["machine"]
    commit = machine["commit"] + (" with uncommitted changes" if machine.get("dirty") else "")
    command = " ".join(["python -m bench", *result["argv"]])
    head = (
        f"Run of {result['started_at']} at commit `{commit}`, on {machine['cpus']} cores "
        f"(Python {machine['python']}), {result['wall_s'] / 60:.0f} min: `{command}`."
    )
    return f"{head}\n\n{markdown(result['scenarios'])}"
