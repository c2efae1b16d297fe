"""``python -m stack`` (what ``make run`` starts): the whole embedded stack, for real."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import psutil
import pytest

import stack.run
from stack.redis import module_paths
from testkit.ports import free_port
from tests.stack.isa import avx512_functions, undispatched
from tests.support.events import count, of_type
from tests.support.events import read_until as read_events

READY = "Parley is running at "


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a stack on free ports with its data in ``data_dir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "LLM_BASE_URL", "LLM_MODEL", "HF_TOKEN")
    }
    env.update(
        PARLEY_PORT=str(free_port()),
        PARLEY_REDIS_PORT=str(free_port()),
        PARLEY_MODEL_PORT=str(free_port()),
        PARLEY_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@asynccontextmanager
async def started_stack(
    tmp_path: Path, **extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """``python -m stack`` run from ``tmp_path`` (no .env there); yields it and its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stack",
        cwd=tmp_path,
        env=stack_env(tmp_path / "data", **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    lines: list[str] = []
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_lines_until(proc: asyncio.subprocess.Process, lines: list[str], text: str) -> bool:
    """Collect output lines until one contains ``text`` (True) or the process ends (False)."""
    assert proc.stdout is not None
    async for raw in proc.stdout:
        lines.append(raw.decode(errors="replace").rstrip())
        if text in lines[-1]:
            return True
    return False


@pytest.mark.model
@pytest.mark.system
@pytest.mark.timeout(180)
async def test_the_stack_answers_only_once_the_model_has(tmp_path: Path) -> None:
    async with started_stack(tmp_path) as (proc, lines):
        ready = await asyncio.wait_for(read_lines_until(proc, lines, READY), 120)
        assert ready, "\n".join(lines)
        url = lines[-1].split(READY, 1)[1].strip()
        assert any("warm-up answered" in line for line in lines), "warm-up before ready"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/token", params={"name": "ada"}) as response:
                token = (await response.json())["token"]
            ws_url = url.replace("http", "ws", 1) + "/chat"
            async with http.ws_connect(ws_url, params={"token": token}) as ws:
                await ws.send_str("What is the capital of France?")
                events = await read_events(
                    ws, lambda ev: count("done", 1)(ev) or count("error", 1)(ev), 60
                )
        assert not of_type(events, "error"), events
        [done] = of_type(events, "done")
        assert done["reply"]["content"].strip()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0


@pytest.mark.model
@pytest.mark.system
@pytest.mark.timeout(120)
async def test_a_model_that_cannot_answer_stops_the_stack_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    async with started_stack(tmp_path, PARLEY_MODEL=str(broken)) as (proc, lines):
        assert not await asyncio.wait_for(read_lines_until(proc, lines, READY), 60)
        assert await proc.wait() == 1
    output = "\n".join(lines)
    assert "the model server exited with code" in output
    assert "broken.gguf" in output, "the model server's log tail is shown"


def test_a_cpu_without_avx2_stops_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stack.run, "missing_cpu_flags", lambda: ["avx2", "fma"])
    started: list[str] = []
    monkeypatch.setattr(stack.run, "_start", lambda *args: started.append("started") or {})
    monkeypatch.chdir(tmp_path)
    settings = stack.run.StackSettings(parley_data_dir=tmp_path / "data")

    assert stack.run.run(settings) == 2

    assert started == []
    assert not (tmp_path / "data").exists()
    assert "AVX2, FMA" in caplog.text
    assert "LLM_BASE_URL" in caplog.text and "HF_TOKEN" in caplog.text


def mapped_code(pid: int) -> set[Path]:
    """Files mapped executable into process ``pid`` and its descendants."""
    files: set[Path] = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "x" in fields[1] and fields[5].startswith("/"):
                files.add(Path(fields[5]))
    return files


@pytest.mark.model
@pytest.mark.system
@pytest.mark.timeout(300)
async def test_no_code_parley_ships_runs_avx512_or_amx(tmp_path: Path) -> None:
    """Every executable and library from the venv that the running stack has mapped
    (the model server's llama.cpp, redis-server, its modules, Python extensions) is
    free of AVX-512 and AMX outside CPU-dispatched variants. The system's own
    libraries (glibc, libstdc++, libgomp) are Debian's, built for baseline x86-64."""
    async with started_stack(tmp_path) as (proc, lines):
        assert await asyncio.wait_for(read_lines_until(proc, lines, READY), 120), lines
        shipped = {f for f in mapped_code(proc.pid) if f.is_relative_to(sys.prefix)}
    names = {f.name for f in shipped}
    assert {"xllamacpp.abi3.so", "redis-server", "rejson.so", "redisearch.so"} <= names
    print("scanned:", sorted(names))
    files = sorted(shipped)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # objdump processes
        scans = list(pool.map(avx512_functions, files))
    offenders = {str(f): undispatched(found) for f, found in zip(files, scans, strict=True)}
    assert {f: found for f, found in offenders.items() if found} == {}


def test_the_avx512_scan_finds_what_is_there() -> None:
    redisearch = next(m for m in module_paths() if m.name == "redisearch.so")
    # RediSearch's vector kernels have AVX-512 variants, chosen at run time.
    found = avx512_functions(redisearch)
    assert len(found) > 10
    assert undispatched(found) == {}
