"""Model credentials go only where they belong; model errors reach clients summarized."""

from __future__ import annotations

import aiohttp
import pytest
from redis.asyncio import Redis

from testkit.ports import free_port
from testkit.standin import StandinModel
from tests.support.events import count, of_type, read_until
from tests.support.parley import running_parley
from worker.app import llm_config
from worker.config import HF_ROUTER_URL, WorkerSettings
from worker.model.llm import LLMClient, PromptMessage

HF_TOKEN = "hf_SECRETsecretSECRETsecret0123456789"
API_KEY = "sk-other-endpoint-key-0123456789"
FAST_RETRIES = {"llm_backoff_base_s": 0.01, "llm_backoff_max_s": 0.05, "llm_max_retries": 1}


async def _authorization_sent(standin: StandinModel, **settings: str) -> str | None:
    """The ``Authorization`` header the worker's model client sends to the stand-in."""
    assert standin.base_url is not None
    worker = WorkerSettings(llm_base_url=standin.base_url, llm_model="standin", **settings)  # type: ignore[arg-type]
    async with LLMClient(llm_config(worker)) as client:
        async for _ in client.stream([PromptMessage(role="user", content="hi")]):
            pass
    return standin.headers[-1].get("Authorization")


async def test_hf_token_is_not_sent_to_another_endpoint() -> None:
    async with StandinModel(tokens=2) as standin:
        assert await _authorization_sent(standin, hf_token=HF_TOKEN) is None


async def test_llm_api_key_is_sent_to_llm_base_url() -> None:
    async with StandinModel(tokens=2) as standin:
        sent = await _authorization_sent(standin, hf_token=HF_TOKEN, llm_api_key=API_KEY)
        assert sent == f"Bearer {API_KEY}"


@pytest.mark.parametrize("base_url", [None, HF_ROUTER_URL, HF_ROUTER_URL + "/"])
def test_hf_token_goes_to_the_hugging_face_router(base_url: str | None) -> None:
    settings = WorkerSettings(
        llm_base_url=base_url,
        hf_token=HF_TOKEN,  # type: ignore[arg-type]
        llm_api_key=API_KEY,  # type: ignore[arg-type]
    )
    config = llm_config(settings)
    assert config.base_url.rstrip("/") == HF_ROUTER_URL and config.api_key == HF_TOKEN
    assert HF_TOKEN not in repr(settings) and API_KEY not in repr(settings)


async def test_model_error_body_is_summarized_for_the_client(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    leak = (
        "upstream auth failed for key sk-live-SECRET0123456789 at "
        "http://10.1.2.3:9000/internal/v1 (trace id 42)"
    )
    async with running_parley(redis_url, redis, **FAST_RETRIES) as parley:
        parley.standin.fail_next(401, message=leak)
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
    assert error["code"] == "llm_rejected"
    assert error["detail"] == "the model API refused the request (HTTP 401)"
    for secret in ("SECRET", "10.1.2.3", "9000", "http", "trace"):
        assert secret not in error["detail"]


async def test_unreachable_model_address_is_not_told_to_the_client(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    port = free_port()  # nothing listens there
    overrides = {**FAST_RETRIES, "llm_base_url": f"http://127.0.0.1:{port}/v1"}
    async with running_parley(redis_url, redis, **overrides) as parley:
        token = await parley.create_session(http)
        async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
            await ws.send_str("hello")
            (error,) = of_type(await read_until(ws, count("error", 1)), "error")
    assert error["code"] == "llm_unavailable"
    assert error["detail"] == "the model API is unavailable"
    assert str(port) not in error["detail"] and "127.0.0.1" not in error["detail"]
