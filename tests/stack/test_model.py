"""The embedded model: the real GGUF and the real llama-server, no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stack.cpu import cpu_flags, missing_cpu_flags
from stack.model import (
    DEFAULT_MODEL,
    MODELS,
    EmbeddedModel,
    EmbeddedModelError,
    default_threads,
    resolve_model,
)

SYSTEM = "You are a helpful assistant. Reply in English."

# /proc/cpuinfo of an x86-64-v2 machine (no AVX2, FMA or F16C), and of an AVX2 one.
V2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx\n"
V3_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n\nprocessor\t: 1\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModel]:
    log_dir = tmp_path_factory.mktemp("model-logs")
    with EmbeddedModel(port=free_port(), log_dir=log_dir, parallel=2, ctx_size=2048) as m:
        yield m


async def stream_chat(model: EmbeddedModel, body: dict[str, Any]) -> tuple[list[str], str | None]:
    """POST a streaming chat completion; return the content pieces and the finish reason."""
    pieces: list[str] = []
    finish: str | None = None
    done = False
    payload = {"model": model.model, "stream": True, **body}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{model.base_url}/chat/completions", json=payload) as resp,
    ):
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line.removeprefix(b"data:").strip()
            if data == b"[DONE]":
                done = True
                break
            for choice in json.loads(data).get("choices", []):
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
                finish = choice.get("finish_reason") or finish
    assert done, "the stream ended without [DONE]"
    return pieces, finish


def test_the_default_model_is_an_instruct_gguf_from_its_wheel() -> None:
    name, path = resolve_model(DEFAULT_MODEL)
    assert name == "smollm2-135m-instruct"
    assert path.name == MODELS[DEFAULT_MODEL].file
    assert "site-packages" in path.parts
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_any_gguf_path_can_be_chosen(tmp_path: Path) -> None:
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)) == ("my-model", gguf.resolve())


@pytest.mark.parametrize("choice", ["gemma-3-270m", "/nowhere/model.gguf"])
def test_an_unknown_model_is_refused_with_the_choices(choice: str) -> None:
    with pytest.raises(EmbeddedModelError, match="PARLEY_MODEL"):
        resolve_model(choice)


def test_cpu_flags_are_read_from_the_first_processor() -> None:
    assert cpu_flags(V3_CPUINFO) == {"fpu", "sse2", "avx", "avx2", "fma", "f16c", "bmi2"}


def test_a_cpu_without_avx2_fma_f16c_is_told_what_it_lacks() -> None:
    assert missing_cpu_flags(V2_CPUINFO, "x86_64") == ["avx2", "fma", "f16c"]
    assert missing_cpu_flags(V3_CPUINFO, "x86_64") == []
    assert missing_cpu_flags(V2_CPUINFO, "aarch64") == [], "only x86-64 is checked"


def test_this_machine_can_run_the_embedded_model() -> None:
    assert missing_cpu_flags() == []


def test_default_threads_leave_a_core_for_the_rest() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_threads() == max(1, min(4, cores - 1))


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_streamed_reply_is_non_empty_and_terminates(model: EmbeddedModel) -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello, who are you?"},
    ]
    pieces, finish = await stream_chat(model, {"messages": messages, "temperature": 0})

    assert "".join(pieces).strip()
    assert len(pieces) > 1, "the reply should arrive in several pieces"
    assert finish == "stop", "the model should end its turn by itself"


@pytest.mark.model
async def test_slots_answer_concurrently(model: EmbeddedModel) -> None:
    questions = ["What is the capital of France?", "Tell me a joke."]
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 32} for q in questions]
    results = await asyncio.gather(*(stream_chat(model, body) for body in bodies))
    for pieces, finish in results:
        assert pieces
        assert finish in ("stop", "length")


@pytest.mark.model
async def test_history_is_rendered_with_the_models_own_template(model: EmbeddedModel) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"},
    ]
    root = model.base_url.removesuffix("/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{root}/apply-template", json={"messages": messages}) as resp,
    ):
        assert resp.status == 200
        prompt = (await resp.json())["prompt"]
    # SmolLM2-Instruct's own template is ChatML.
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.model
async def test_a_fact_at_temperature_zero(model: EmbeddedModel) -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    pieces, _ = await stream_chat(model, {"messages": messages, "temperature": 0})
    assert "Paris" in "".join(pieces)


@pytest.mark.model
def test_exit_stops_the_server(tmp_path: Path) -> None:
    with EmbeddedModel(port=free_port(), log_dir=tmp_path) as m:
        pid = m.pid
        assert pid is not None
        assert m.poll() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.model
def test_a_taken_port_fails_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedModelError, match="exited with code") as info:
            EmbeddedModel(port=port, log_dir=tmp_path).start()
    assert str(port) in str(info.value)


@pytest.mark.model
def test_a_start_timeout_stops_the_server(tmp_path: Path) -> None:
    m = EmbeddedModel(port=free_port(), log_dir=tmp_path, start_timeout=0)
    with pytest.raises(EmbeddedModelError, match="not healthy after"):
        m.start()
    assert m.pid is None


@pytest.mark.model
def test_a_model_that_cannot_load_fails_at_start_with_the_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    m = EmbeddedModel(port=free_port(), log_dir=tmp_path, model=str(broken))
    with pytest.raises(EmbeddedModelError, match="exited with code") as info:
        m.start()
    assert "broken.gguf" in str(info.value), "the log's tail names what failed"
    assert m.pid is None
