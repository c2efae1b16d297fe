"""Prometheus metrics of a server process, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SOCKETS = Gauge("parley_sockets", "WebSockets connected to this process.")
MESSAGES_ACCEPTED = Counter("parley_messages_accepted", "User messages recorded and queued.")
EVENTS_RELAYED = Counter(
    "parley_events_relayed", "Reply events sent to sockets (live or replayed)."
)
RESUME_GAPS = Counter(
    "parley_resume_gaps",
    "Replays whose cursor was older than the oldest event kept (a gap event was sent): "
    "clients away for more than EVENTS_MAXLEN events.",
)
CLIENT_ERRORS = Counter(
    "parley_client_errors", "Error events sent by the server itself, by code.", ["code"]
)
SOCKETS_REFUSED = Counter(
    "parley_sockets_refused",
    "WebSocket handshakes refused because the session held MAX_SOCKETS_PER_SESSION sockets.",
)
SLOW_READERS_CLOSED = Counter(
    "parley_slow_readers_closed",
    "Sockets closed with 1013: the client read nothing for WS_SEND_TIMEOUT_S.",
)
MODEL_QUEUE_LAG = Gauge(
    "parley_model_queue_lag",
    "Messages of a model its workers have not finished: queued and not yet read, or read "
    "and not yet acknowledged, over every partition (scale each pool on it).",
    ["model"],
)
MODEL_WORKERS = Gauge(
    "parley_model_workers",
    "Workers of a model's pool alive within MODEL_WAIT_S (30 s when it is 0).",
    ["model"],
)
