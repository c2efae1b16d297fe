"""Builds a worker from its settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from runtime.collector import tune_collector
from runtime.logs import setup_logging
from runtime.tracing import setup_tracing, shutdown_tracing
from storage.connection import connect, disconnect
from worker.config import WorkerSettings
from worker.consumer import Worker
from worker.model.llm import LLMClient, LLMConfig

logger = logging.getLogger(__name__)


def llm_config(settings: WorkerSettings) -> LLMConfig:
    """The model client's configuration, with the API chosen as the README says."""
    base_url, model, api_key = settings.resolved_llm()
    return LLMConfig(
        base_url=base_url,
        model=model,
        api_key=api_key,
        connect_timeout_s=settings.llm_connect_timeout_s,
        read_timeout_s=settings.llm_read_timeout_s,
        max_retries=settings.llm_max_retries,
        backoff_base_s=settings.llm_backoff_base_s,
        backoff_max_s=settings.llm_backoff_max_s,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        include_usage=settings.llm_include_usage,
    )


async def serve(settings: WorkerSettings) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain in-flight replies and return."""
    redis = connect(settings, "worker")
    llm = LLMClient(llm_config(settings))
    worker = Worker(settings, redis, llm)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    base_url, model, _ = settings.resolved_llm()
    logger.info("model %s at %s", model, base_url)
    try:
        await worker.run(drain_timeout_s=settings.drain_timeout_s)
    finally:
        await llm.aclose()
        await disconnect(redis)


def main() -> None:
    """Entry point of ``python -m worker``."""
    settings = WorkerSettings()
    setup_logging(settings.log_level, settings.log_format, "worker")
    setup_tracing(settings.otel_exporter_otlp_endpoint, "parley-worker")
    tune_collector()  # last: what startup built is never walked again
    # uvloop (installed with uvicorn[standard]) when available, as the server's uvicorn
    # does: the worker spends much of its time in socket I/O, which uvloop does in C.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    finally:
        shutdown_tracing()  # the spans still batched
