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

from stack.model import (
    MODEL_FILE_NAME,
    EmbeddedModel,
    EmbeddedModelError,
    ensure_model_file,
    llama_server_path,
)

SYSTEM = "A conversation between a User and Parley, a friendly and helpful Assistant."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedModel]:
    log_dir = tmp_path_factory.mktemp("model-logs")
    with EmbeddedModel(
        port=free_port(), model_dir=model_dir, log_dir=log_dir, parallel=2, ctx_size=2048
    ) as m:
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


def test_ensure_model_file_writes_a_gguf_once(model_dir: Path) -> None:
    path = ensure_model_file(model_dir)
    assert path == model_dir / MODEL_FILE_NAME
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    before = path.stat()

    assert ensure_model_file(model_dir) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in model_dir.iterdir()] == [MODEL_FILE_NAME]  # no temp file left


def test_llama_server_path_is_an_executable() -> None:
    path = llama_server_path()
    assert path.name == "llama-server"
    assert os.access(path, os.X_OK)


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
    assert finish == "stop", "the transcript's stop sequences should end the reply"


@pytest.mark.model
async def test_slots_answer_concurrently(model: EmbeddedModel) -> None:
    questions = ["What is the capital of France?", "Tell me a joke."]
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 32} for q in questions]
    results = await asyncio.gather(*(stream_chat(model, body) for body in bodies))
    for pieces, finish in results:
        assert pieces
        assert finish in ("stop", "length")


@pytest.mark.model
async def test_history_is_rendered_as_a_transcript(model: EmbeddedModel) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! "},
        {"role": "user", "content": "Who are you?"},
    ]
    root = model.base_url.removesuffix("/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{root}/apply-template", json={"messages": messages}) as resp,
    ):
        assert resp.status == 200
        prompt = (await resp.json())["prompt"]
    assert prompt == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Who are you?\nAssistant:"


@pytest.mark.model
def test_exit_stops_the_server(model_dir: Path, tmp_path: Path) -> None:
    with EmbeddedModel(port=free_port(), model_dir=model_dir, log_dir=tmp_path) as m:
        pid = m.pid
        assert pid is not None
        assert m.poll() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.model
def test_a_taken_port_fails_with_the_log_tail(model_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedModelError, match="exited with code") as info:
            EmbeddedModel(port=port, model_dir=model_dir, log_dir=tmp_path).start()
    assert str(port) in str(info.value)


@pytest.mark.model
def test_a_start_timeout_stops_the_server(model_dir: Path, tmp_path: Path) -> None:
    m = EmbeddedModel(port=free_port(), model_dir=model_dir, log_dir=tmp_path, start_timeout=0)
    with pytest.raises(EmbeddedModelError, match="not healthy after"):
        m.start()
    assert m.pid is None
