"""The model client against the real stand-in server over loopback: no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from testkit.standin import StandinModel, reply_tokens
from worker.model.errors import LLMRateLimited, LLMRejected, LLMStreamInterrupted, LLMUnavailable
from worker.model.llm import LLMClient, LLMConfig, PromptMessage

PROMPT = [
    PromptMessage(role="system", content="Be brief."),
    PromptMessage(role="user", content="hello world"),
]
EXPECTED = reply_tokens("hello world", 8)
API_KEY = "hf_secret_key_123"


def config(base_url: str, **overrides: object) -> LLMConfig:
    """Fast settings: tiny backoff and timeouts, so failures take milliseconds."""
    settings: dict[str, object] = {
        "base_url": base_url,
        "model": "test-model",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "read_timeout_s": 2.0,
        "max_retries": 2,
    }
    settings.update(overrides)
    return LLMConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def standin() -> AsyncIterator[StandinModel]:
    async with StandinModel(tokens=8) as model:
        yield model


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., LLMClient]]:
    clients: list[LLMClient] = []

    def make(base_url: str, **overrides: object) -> LLMClient:
        clients.append(LLMClient(config(base_url, **overrides)))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def collect(client: LLMClient, into: list[str] | None = None) -> list[str]:
    deltas = [] if into is None else into
    async for delta in client.stream(PROMPT):
        deltas.append(delta)
    return deltas


def base_url(model: StandinModel) -> str:
    assert model.base_url is not None
    return model.base_url


async def test_deltas_arrive_in_order_with_the_expected_request(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    client = make_client(base_url(standin), api_key=API_KEY, stop=("\nUser:",), max_tokens=64)

    deltas = await collect(client)

    assert deltas == EXPECTED
    assert "".join(deltas).startswith("Reply to: hello world ")
    [body] = standin.requests
    assert body == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello world"},
        ],
        "stream": True,
        "max_tokens": 64,
        "temperature": 0.7,
        "stop": ["\nUser:"],
        "stream_options": {"include_usage": True},
    }
    assert standin.headers[0]["Authorization"] == f"Bearer {API_KEY}"
    assert standin.headers[0]["Accept"] == "text/event-stream"


async def test_no_authorization_header_without_api_key(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    await collect(make_client(base_url(standin)))

    assert "Authorization" not in standin.headers[0]
    assert "stop" not in standin.requests[0]


async def test_client_can_share_a_session(standin: StandinModel) -> None:
    async with aiohttp.ClientSession() as session:
        client = LLMClient(config(base_url(standin)), session=session)
        assert await collect(client) == EXPECTED
        await client.aclose()
        assert not session.closed  # not the client's to close


async def test_429_is_retried_then_succeeds(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(429)

    assert await collect(make_client(base_url(standin))) == EXPECTED
    assert len(standin.requests) == 2


async def test_429_beyond_max_retries_raises_rate_limited(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(429, count=3)

    with pytest.raises(LLMRateLimited) as caught:
        await collect(make_client(base_url(standin), max_retries=2))

    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    assert len(standin.requests) == 3  # the first attempt and two retries


async def test_retry_after_is_honoured(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(429, retry_after=0.3)
    client = make_client(base_url(standin), backoff_max_s=1.0)

    started = time.monotonic()
    assert await collect(client) == EXPECTED

    assert time.monotonic() - started >= 0.28  # the backoff alone would be <= 0.01 s
    assert len(standin.requests) == 2


async def test_retry_after_beyond_backoff_max_is_not_waited_for(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(429, retry_after=30)

    with pytest.raises(LLMRateLimited) as caught:
        await collect(make_client(base_url(standin), backoff_max_s=1.0))

    assert caught.value.retry_after_s == 30
    assert len(standin.requests) == 1


async def test_503_is_retried_then_succeeds(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(503, count=2)

    assert await collect(make_client(base_url(standin), max_retries=2)) == EXPECTED
    assert len(standin.requests) == 3


async def test_503_exhausted_raises_unavailable(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.fail_next(503, count=5)

    with pytest.raises(LLMUnavailable) as caught:
        await collect(make_client(base_url(standin), max_retries=2))

    assert caught.value.status == 503
    assert caught.value.code == "llm_unavailable"
    assert "injected failure 503" in str(caught.value)
    assert len(standin.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_client_errors_are_rejected_without_retry(
    standin: StandinModel, make_client: Callable[..., LLMClient], status: int
) -> None:
    standin.fail_next(status, count=2)

    with pytest.raises(LLMRejected) as caught:
        await collect(make_client(base_url(standin), api_key=API_KEY))

    assert caught.value.status == status
    assert caught.value.code == "llm_rejected"
    assert API_KEY not in str(caught.value)
    assert len(standin.requests) == 1


async def test_connection_refused_raises_unavailable_after_retries(
    make_client: Callable[..., LLMClient],
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/v1", api_key=API_KEY)

    with pytest.raises(LLMUnavailable) as caught:
        await collect(client)

    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert API_KEY not in str(caught.value)


async def test_hang_times_out_and_raises_unavailable(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.hang_next(count=2)

    with pytest.raises(LLMUnavailable) as caught:
        await collect(make_client(base_url(standin), read_timeout_s=0.2, max_retries=1))

    assert isinstance(caught.value.__cause__, TimeoutError)
    assert len(standin.requests) == 2


async def test_timeout_before_the_first_delta_is_retried(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.hang_next()

    assert await collect(make_client(base_url(standin), read_timeout_s=0.2)) == EXPECTED
    assert len(standin.requests) == 2


async def test_cut_after_two_tokens_yields_them_then_interrupts(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.cut_next(after_tokens=2)
    deltas: list[str] = []

    with pytest.raises(LLMStreamInterrupted) as caught:
        await collect(make_client(base_url(standin)), into=deltas)

    assert deltas == EXPECTED[:2]
    assert caught.value.code == "llm_unavailable"
    assert len(standin.requests) == 1  # never retried once a delta was out


async def test_cut_before_any_delta_is_retried(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.cut_next(after_tokens=0)

    assert await collect(make_client(base_url(standin))) == EXPECTED
    assert len(standin.requests) == 2


async def test_slow_stream_within_read_timeout_succeeds(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.ttft_ms = 150
    standin.delay_ms = 20

    assert await collect(make_client(base_url(standin), read_timeout_s=0.5)) == EXPECTED


async def test_breaking_out_early_closes_the_request(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.tokens = 1000
    standin.delay_ms = 20
    client = make_client(base_url(standin))

    async with contextlib.aclosing(client.stream(PROMPT)) as stream:
        async for _ in stream:
            break

    await asyncio.wait_for(
        standin.wait_until(lambda: standin.cancelled == 1 and standin.in_flight == 0), 5
    )
    assert standin.completed == 0


async def test_cancelling_the_consumer_closes_the_request(
    standin: StandinModel, make_client: Callable[..., LLMClient]
) -> None:
    standin.tokens = 1000
    standin.delay_ms = 20
    client = make_client(base_url(standin))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream(PROMPT):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(
        standin.wait_until(lambda: standin.cancelled == 1 and standin.in_flight == 0), 5
    )


def test_config_validates_and_hides_the_key() -> None:
    cfg = LLMConfig(base_url="http://127.0.0.1:1/v1/", model="m", api_key=API_KEY)

    assert API_KEY not in repr(cfg)
    assert cfg.completions_url == "http://127.0.0.1:1/v1/chat/completions"
    with pytest.raises(ValueError):
        LLMConfig(base_url="127.0.0.1:1/v1", model="m")


# -- SSE edge cases, from a scripted server ---------------------------------------------

Script = list[bytes]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[Script]], Awaitable[str]]]:
    """A server that answers the n-th chat request with the n-th script, as SSE."""
    runners: list[web.AppRunner] = []

    async def serve(scripts: list[Script]) -> str:
        remaining = list(scripts)

        async def chat(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for line in remaining.pop(0):
                await resp.write(line)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1"

    yield serve
    for runner in runners:
        await runner.cleanup()


def chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


async def test_comments_empty_deltas_and_garbage_are_skipped(
    scripted: Callable[[list[Script]], Awaitable[str]],
    make_client: Callable[..., LLMClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await scripted(
        [
            [
                b": keep-alive\n\n",
                chunk(role=True),
                b"<html>not sse</html>\n",
                b"data: {not json\n\n",
                b"event: message\n",
                chunk("Hel"),
                chunk(""),
                chunk(None),
                b'data: {"choices": []}\n\n',
                chunk("lo", finish="stop"),
                b'data: {"choices": [], "usage": {"total_tokens": 3}}\n\n',
                b"data: [DONE]\n\n",
            ]
        ]
    )

    assert await collect(make_client(url)) == ["Hel", "lo"]
    assert "not sse" in caplog.text


async def test_finish_reason_without_done_is_a_complete_reply(
    scripted: Callable[[list[Script]], Awaitable[str]], make_client: Callable[..., LLMClient]
) -> None:
    url = await scripted([[chunk("Hi"), chunk(finish="length")]])

    assert await collect(make_client(url)) == ["Hi"]


async def test_ending_without_finish_is_interrupted_after_a_delta(
    scripted: Callable[[list[Script]], Awaitable[str]], make_client: Callable[..., LLMClient]
) -> None:
    url = await scripted([[chunk("Hi")]])

    with pytest.raises(LLMStreamInterrupted):
        await collect(make_client(url))


async def test_non_sse_200_is_retried_then_unavailable(
    scripted: Callable[[list[Script]], Awaitable[str]], make_client: Callable[..., LLMClient]
) -> None:
    url = await scripted([[b'{"object": "chat.completion"}']] * 2)

    with pytest.raises(LLMUnavailable):
        await collect(make_client(url, max_retries=1))


async def test_error_object_in_stream(
    scripted: Callable[[list[Script]], Awaitable[str]], make_client: Callable[..., LLMClient]
) -> None:
    server_error = b'data: {"error": {"message": "overloaded", "code": 500}}\n\n'
    url = await scripted([[server_error], [chunk("ok", finish="stop"), b"data: [DONE]\n\n"]])

    assert await collect(make_client(url)) == ["ok"]  # retried: nothing was yielded yet

    bad_request = b'data: {"error": {"message": "context too long", "code": 400}}\n\n'
    url = await scripted([[bad_request]])
    with pytest.raises(LLMRejected, match="context too long"):
        await collect(make_client(url))

    llama_cpp = b'error: {"code": 500, "message": "slot died", "type": "server_error"}\n\n'
    url = await scripted([[chunk("a"), llama_cpp]])
    with pytest.raises(LLMStreamInterrupted, match="slot died"):
        await collect(make_client(url))
