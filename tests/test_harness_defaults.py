"""The test machinery runs the product as shipped: every setting of the servers and
workers it starts is the product's default, but for the wiring and each suite's declared
overrides (:mod:`testkit.overrides`).

For each set of overrides declared in the suites and the benchmark, the environment the
harness gives its processes is read back by the settings classes, as the processes read
it, and compared with those classes' own defaults: any difference that is not declared
(or declared and no difference) fails. ``-s`` prints the harness's defaults diff: each
suite's changes with their reasons.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.hostile
import tests.system
from bench.scenarios import SCENARIOS
from bench.settings import load_overrides, real_model_overrides
from server.config import ServerSettings
from testkit.overrides import DEFAULTS, WIRING, Overrides, setting_names
from testkit.processes import process_environment
from tests.support.parley import IN_PROCESS, in_process_settings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


def declared() -> Iterator[tuple[str, Overrides]]:
    """Every set of overrides declared at the top of a module of the system and hostile
    suites and the in-process harness, and the benchmark's, for each of its scenarios."""
    for package in (tests.system, tests.hostile):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, value in vars(module).items():
                if isinstance(value, Overrides) and value is not DEFAULTS:
                    yield f"{module.__name__}.{name}", value
    yield "tests.support.parley.IN_PROCESS", IN_PROCESS
    for scenario in SCENARIOS.values():
        if scenario.kind in ("load", "connections"):
            yield f"bench {scenario.name}", load_overrides(scenario.options)
    yield "bench real-model", real_model_overrides(32, SCENARIOS["latency"].options.flush_ms)


DECLARED = dict(declared())


def as_read(env: dict[str, str] | None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every setting, by environment variable name, as a server and a worker read
    ``env`` (None: no setting in the environment at all, so each is its default)."""
    with monkeypatch.context() as m:
        for name in os.environ:
            if name.upper() in setting_names():
                m.delenv(name)
        for name, value in (env or {}).items():
            if name.upper() in setting_names():
                m.setenv(name, value)
        server = ServerSettings(_env_file=None)  # type: ignore[call-arg]
        worker = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    return by_name({**server.model_dump(mode="json"), **worker.model_dump(mode="json")})


def by_name(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` by environment variable name, "" as None: an environment says None
    with an empty variable (so that no ``.env`` file can fill it in), and the settings
    treat both alike (an empty ``SecretStr`` is false, as None is)."""
    return {name.upper(): None if value == "" else value for name, value in values.items()}


def differences(read: dict[str, Any], defaults: dict[str, Any]) -> set[str]:
    """The settings whose value is not the default, wiring left out."""
    return {name for name in defaults if read[name] != defaults[name]} - WIRING


@pytest.mark.parametrize("where", sorted(DECLARED))
def test_processes_run_the_defaults_but_what_is_declared(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = DECLARED[where]
    defaults = as_read(None, monkeypatch)
    env = process_environment("redis://127.0.0.1:1/0", "http://127.0.0.1:2/v1", overrides)
    changed = differences(as_read(env, monkeypatch), defaults)
    assert changed == set(overrides), (
        f"{where}: undeclared changes {sorted(changed - set(overrides))}, declared but "
        f"no change {sorted(set(overrides) - changed)}"
    )
    assert overrides, f"{where} declares nothing: drop it"
    print(f"{where}:", *(f"\n    {line}" for line in overrides.described()))


def test_a_cluster_without_overrides_runs_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # A .env file or the caller's environment cannot change what the harness runs.
    monkeypatch.setenv("CONVERSATION_TITLES", "false")
    monkeypatch.setenv("rate_sessions_per_client", "1000000")
    env = process_environment("redis://127.0.0.1:1/0", "http://127.0.0.1:2/v1", DEFAULTS)
    assert differences(as_read(env, monkeypatch), as_read(None, monkeypatch)) == set()


def test_an_in_process_stack_runs_every_default_but_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVERSATION_TITLES", "false")  # ignored, as a .env file is
    server, worker = in_process_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:2/v1")
    read = by_name({**server.model_dump(mode="json"), **worker.model_dump(mode="json")})
    with monkeypatch.context() as m:
        m.delenv("CONVERSATION_TITLES")
        defaults = as_read(None, m)
    assert differences(read, defaults) == set(IN_PROCESS)


def test_no_blanket_switch_is_left() -> None:
    """Admission and model calls are turned off nowhere wholesale: each suite names
    what it changes."""
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("testkit/*.py"), *ROOT.glob("bench/*.py")]:
        if path == Path(__file__):
            continue
        text = path.read_text()
        for switch in ("UNLIMITED_ADMISSION", "NO_EXTRA_MODEL_CALLS"):
            assert switch not in text, f"{path.relative_to(ROOT)} uses {switch}"
