"""Prometheus metrics for GET /metrics (per process: with --workers N, each worker
answers with its own counts; scrape each, or run one worker per container)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RelayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "byok_relay_requests_total",
            "HTTP requests answered by the relay",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "byok_relay_request_duration_seconds",
            "Time from request to the end of the response (whole stream for SSE)",
            ("route",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream = Counter(
            "byok_relay_upstream_responses_total",
            "Relayed requests by provider and status (502/504 when the provider failed)",
            ("provider", "status"),
            registry=self.registry,
        )
        self.open_requests = Gauge(
            "byok_relay_open_requests",
            "Requests being handled now (open streams included)",
            registry=self.registry,
        )

    def observe(
        self, route: str, method: str, status: int, seconds: float, provider: str | None
    ) -> None:
        status_label = str(status)
        self.requests.labels(route, method, status_label).inc()
        self.duration.labels(route).observe(seconds)
        if provider is not None:
            self.upstream.labels(provider, status_label).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
