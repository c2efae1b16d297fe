"""The product's shape: what it may import, and how long its modules and functions grow.

The product is the packages the wheel ships (``[tool.setuptools] packages`` in
pyproject.toml). It never imports the test machinery (``testkit``, ``bench``, ``tests``),
and it stays readable: no module over 400 lines, no function over 60 (decorators and
docstring included). The worker talks to Redis Streams only through the store
(:mod:`storage.deliveries`, :mod:`storage.streams`): no module of ``worker/`` sends a
stream command itself.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from redis.commands.core import StreamCommands

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
TEST_MACHINERY = {"testkit", "bench", "tests"}
#: redis-py's stream commands by method name (``xreadgroup``, ``xack``, ``xadd``,
#: ``xdel``, ``xautoclaim``, ``xpending_range``, ``xgroup_create``, ...).
STREAM_METHODS = frozenset(name for name in dir(StreamCommands) if name.startswith("x"))
#: The same commands by their Redis name (``XGROUP`` for ``xgroup_create``), as sent raw.
STREAM_COMMANDS = frozenset(name.split("_")[0].upper() for name in STREAM_METHODS)


def product_packages() -> list[str]:
    """The top-level packages the wheel ships."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["setuptools"]["packages"]
    return sorted({name.split(".")[0] for name in packages})


def product_modules() -> list[Path]:
    """Every Python file of the product."""
    return sorted(f for p in product_packages() for f in (ROOT / p).rglob("*.py"))


def imported_roots(tree: ast.AST) -> set[str]:
    """The top-level names of every module that ``tree`` imports."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def function_lengths(tree: ast.AST) -> list[tuple[str, int, int]]:
    """``(name, first line, length in lines)`` of every function, decorators included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            assert node.end_lineno is not None
            out.append((node.name, node.lineno, node.end_lineno - first + 1))
    return out


def stream_commands_called(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, name)`` of every stream command that ``tree`` sends through redis-py, in
    line order: a call of a stream method on any object (a client or a pipeline:
    ``r.xack(...)``), or a stream command sent raw (``r.execute_command("XACK", ...)``)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in STREAM_METHODS:
            found.append((node.lineno, name))
        elif name == "execute_command" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                command = first.value.split(" ")[0].upper()
                if command in STREAM_COMMANDS:
                    found.append((node.lineno, command))
    return sorted(found)


def test_the_product_is_the_expected_packages() -> None:
    assert product_packages() == [
        "protocol",
        "runtime",
        "server",
        "stack",
        "storage",
        "terminal",
        "worker",
    ]


def test_the_product_never_imports_test_machinery() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(roots)}"
        for path in product_modules()
        if (roots := imported_roots(ast.parse(path.read_text())) & TEST_MACHINERY)
    ]
    assert not offenders, offenders


def test_no_module_is_over_the_limit() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in product_modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, too_long


def test_no_function_is_over_the_limit() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{line} {name}: {n} lines"
        for path in product_modules()
        for name, line, n in function_lengths(ast.parse(path.read_text()))
        if n > MAX_FUNCTION_LINES
    ]
    assert not too_long, too_long


def test_the_stream_command_scan_finds_every_form_of_call() -> None:
    sample = """
async def f(redis, pipe):
    await redis.xreadgroup("g", "c", {"s": ">"}, count=1, block=1000)
    pipe.xack("s", "g", "1-0")
    await redis.execute_command("XGROUP", "CREATE", "s", "g", "0")
    await redis.execute_command("xautoclaim s g c 0 0-0")
    await redis.get("k")
    await redis.execute_command("JSON.GET", "k", "$")
"""
    assert stream_commands_called(ast.parse(sample)) == [
        (3, "xreadgroup"),
        (4, "xack"),
        (5, "XGROUP"),
        (6, "XAUTOCLAIM"),
    ]


def test_no_worker_module_sends_a_stream_command() -> None:
    """The worker keeps its scheduling; reading, claiming, acking, dead-lettering and
    queueing stream entries are the store's (``storage/deliveries.py``)."""
    modules = sorted((ROOT / "worker").rglob("*.py"))
    assert ROOT / "worker" / "consumer.py" in modules and ROOT / "worker" / "jobs.py" in modules
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in modules
        for line, name in stream_commands_called(ast.parse(path.read_text()))
    ]
    assert not offenders, offenders
