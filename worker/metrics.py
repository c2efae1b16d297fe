"""Prometheus metrics of a worker process, served on ``WORKER_METRICS_PORT`` if set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPLIES = Counter(
    "parley_replies", "Messages closed, by outcome (done, or the error code).", ["outcome"]
)
TAKEOVERS = Counter("parley_takeovers", "Entries taken over from another consumer.")
GENERATING = Gauge("parley_replies_generating", "Replies being generated now.")
TIME_TO_FIRST_TOKEN = Histogram(
    "parley_time_to_first_token_seconds",
    "From the start of generation to the first token published (s).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REPLY_SECONDS = Histogram(
    "parley_reply_seconds",
    "From the start of generation to the reply recorded (s).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOB_FAILURES = Counter(
    "parley_job_failures",
    "Tries at title and summary jobs that raised an error, by kind (titles, summaries).",
    ["kind"],
)
