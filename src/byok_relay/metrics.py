"""Prometheus metrics for GET /metrics (per process: with --workers N, each worker
answers with its own counts; scrape each, or run one worker per container)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from byok_relay.cache import InvalidatingCache

if TYPE_CHECKING:
    from byok_relay.usage import UsageRecorder

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
        self._children: dict[tuple[str, str, int, str | None], tuple[Any, Any, Any]] = {}

    def observe(
        self, route: str, method: str, status: int, seconds: float, provider: str | None
    ) -> None:
        key = (route, method, status, provider)
        children = self._children.get(key)
        if children is None:  # labels() is a dict lookup plus locking: do it once per key
            status_label = str(status)
            children = self._children[key] = (
                self.requests.labels(route, method, status_label),
                self.duration.labels(route),
                self.upstream.labels(provider, status_label) if provider else None,
            )
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def watch_caches(self, caches: Sequence[InvalidatingCache[Any, Any]]) -> None:
        """Report the caches' read counts at scrape time (nothing is counted twice on the
        request path: the caches keep plain integers)."""
        self.registry.register(_CacheCollector(tuple(caches)))

    def watch_request_log(self, usage: UsageRecorder) -> None:
        """The request-log writer's backlog at scrape time: rows waiting in memory for
        the database, and rows dropped because more than MAX_PENDING waited."""
        self.registry.register(_RequestLogCollector(usage))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    def __init__(self, caches: tuple[InvalidatingCache[Any, Any], ...]) -> None:
        self._caches = caches

    def collect(self) -> Iterator[Metric]:
        reads = CounterMetricFamily(
            "byok_relay_cache_reads",
            "Cache misses that read the database (or unwrapped in the HSM), per cache",
            labels=("cache",),
        )
        shared = CounterMetricFamily(
            "byok_relay_cache_shared_misses",
            "Cache misses that waited for the same read already in flight instead of "
            "making their own",
            labels=("cache",),
        )
        for cache in self._caches:
            reads.add_metric((cache.name,), cache.reads)
            shared.add_metric((cache.name,), cache.shared)
        yield reads
        yield shared


class _RequestLogCollector:
    def __init__(self, usage: UsageRecorder) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "byok_relay_request_log_pending",
            "Request-log rows waiting in memory to be written (written every second; "
            "more while the database is slow or down)",
            value=self._usage.pending,
        )
        yield CounterMetricFamily(
            "byok_relay_request_log_dropped",
            "Request-log rows dropped, oldest first, because more than MAX_PENDING waited",
            value=self._usage.dropped,
        )
