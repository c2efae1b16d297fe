"""Settings a test or the benchmark changes from the product's defaults, each with why.

Every server and worker the test machinery starts runs with every setting at the
product's default (:func:`pinned_environment`), except for two kinds of names:

- :data:`WIRING`: where Redis and the model are, what a process is called, and where
  its traces go. They say where things run, not how Parley behaves, so every harness
  sets them.
- An :class:`Overrides`: the settings one suite, test or benchmark changes because its
  own traffic needs it, each with its value and one line of reason, declared where it is
  used (e.g. ``OVERRIDES = declare(RATE_SESSIONS_PER_CLIENT=(200, "200 sessions, all
  from 127.0.0.1"))``). Nothing else can change a setting: :class:`testkit.processes.Cluster`
  takes no other settings, and ``tests/test_harness_defaults.py`` compares each declared
  set with the settings classes' own defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from runtime.catalog import default_catalog
from server.config import ServerSettings
from worker.config import WorkerSettings

#: Settings that say where things run, not how Parley behaves: set by every harness.
WIRING = frozenset(
    {
        "REDIS_URL",  # the Redis of the run
        "LLM_BASE_URL",  # the stand-in (or the model) of the run, or of a worker's pool
        "LLM_MODEL",  # the name that model answers to
        "CONSUMER_NAME",  # a worker's own name, unique in the run
        "WORKER_MODELS",  # which pool a worker is in (with its LLM_BASE_URL)
        "OTEL_EXPORTER_OTLP_ENDPOINT",  # the run's collector, if it traces (off: unset)
        "OTEL_BSP_SCHEDULE_DELAY",  # how soon (ms) spans reach it: the SDK's, no setting
    }
)
#: The OpenTelemetry SDK's own variables start so: none reaches a child process from
#: the environment of the run (only from its wiring), so a shell that exports one
#: cannot turn tracing on, or change it, in a test.
OTEL_PREFIX = "OTEL_"


def setting_names() -> frozenset[str]:
    """Every setting of the server and the worker, as environment variables name them."""
    fields = (*ServerSettings.model_fields, *WorkerSettings.model_fields)
    return frozenset(name.upper() for name in fields)


def env_value(value: Any) -> str:
    """``value`` as an environment variable holds it (JSON for lists and models)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_none=True)
    if isinstance(value, list | dict):
        return json.dumps(
            [v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
            if isinstance(value, list)
            else value
        )
    return str(value)


@dataclass(frozen=True)
class Override:
    """One setting changed from its default: the value, and one line of why."""

    value: Any
    why: str


class Overrides(Mapping[str, Override]):
    """Settings changed from the product's defaults, by environment variable name
    (upper case), each with its reason. Immutable; ``a | b`` is both (``b`` wins).

    Raises:
        ValueError: a name is no setting, is :data:`WIRING`, or has no one-line reason.
    """

    def __init__(self, settings: Mapping[str, Override] | None = None) -> None:
        items = dict(settings or {})
        known = setting_names()
        for name, override in items.items():
            if name not in known:
                raise ValueError(f"{name} is not a setting of the server or the worker")
            if name in WIRING:
                raise ValueError(f"{name} is wiring, not an override: pass it as such")
            why = override.why.strip()
            if not why or "\n" in why:
                raise ValueError(f"{name}: the reason must be one line, not {override.why!r}")
        self._items = items

    def __getitem__(self, name: str) -> Override:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __or__(self, other: Mapping[str, Override]) -> Overrides:
        return Overrides({**self._items, **other})

    def __repr__(self) -> str:
        return f"Overrides({self.env()})"

    def env(self) -> dict[str, str]:
        """The settings as environment variables."""
        return {name: env_value(o.value) for name, o in self._items.items()}

    def fields(self) -> dict[str, Any]:
        """The settings as the settings classes' fields (lower case) and Python values."""
        return {name.lower(): o.value for name, o in self._items.items()}

    def described(self) -> list[str]:
        """One line per setting: ``NAME=value (why)``, sorted by name."""
        return [f"{n}={env_value(self[n].value)} ({self[n].why})" for n in sorted(self)]


def declare(**settings: tuple[Any, str]) -> Overrides:
    """``declare(NAME=(value, "why"), ...)``: an :class:`Overrides`, names upper case."""
    return Overrides({name: Override(value, why) for name, (value, why) in settings.items()})


#: No setting changed: the product as shipped.
DEFAULTS = Overrides()


def default_environment() -> dict[str, str]:
    """Every setting of the server and the worker at its default, as environment
    variables (a setting whose default is computed per process, such as the consumer
    name, is left out; ``MODELS`` is the default catalog)."""
    env: dict[str, str] = {}
    for settings_class in (ServerSettings, WorkerSettings):
        for name, info in settings_class.model_fields.items():
            if info.default_factory is None and not info.is_required():
                env[name.upper()] = env_value(info.default)
    env["MODELS"] = env_value(default_catalog())
    return env


def pinned_environment(
    wiring: Mapping[str, str], overrides: Overrides = DEFAULTS
) -> dict[str, str]:
    """The environment of a child process: ours without any Parley setting (nor any
    OpenTelemetry variable, :data:`OTEL_PREFIX`), then every setting at its default,
    then ``wiring``, then ``overrides``.

    pydantic-settings lets environment variables win over the ``.env`` file, so with
    every setting set, a ``.env`` in the repo root cannot change a run.

    Raises:
        ValueError: ``wiring`` names something not in :data:`WIRING`.
    """
    stray = set(wiring) - WIRING
    if stray:
        raise ValueError(f"not wiring (declare them as Overrides): {sorted(stray)}")
    names = setting_names()
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and not k.upper().startswith(OTEL_PREFIX)
    }
    env.update(default_environment())
    env.update(wiring)
    env.update(overrides.env())
    env["PYTHONUNBUFFERED"] = "1"
    return env
