"""GET /metrics in Prometheus text format: requests, latency, admission queue, batches, prefix cache, memory.

Counters owned by the app are prometheus-client instruments; the queue, the
batcher and the prefix cache keep their own counts, read at scrape time. Each
gunicorn worker answers with its own numbers (one worker by default).
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .admission import Admission

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateCollector(Collector):
    """Admission, batcher and prefix-cache counts, read when Prometheus scrapes."""

    def __init__(self, admission: Admission, router: Callable[[], object | None]):
        self.admission, self.router = admission, router

    def collect(self) -> Iterator[Metric]:
        adm = self.admission
        yield GaugeMetricFamily("taskrouter_queue_depth", "requests waiting for a model slot", value=adm.queued)
        yield GaugeMetricFamily("taskrouter_running", "requests holding a model slot", value=adm.running)
        outcomes = CounterMetricFamily("taskrouter_admission", "admission decisions", labels=["outcome"])
        for outcome in ("admitted", "rejected", "expired"):
            outcomes.add_metric([outcome], getattr(adm.stats, outcome))
        yield outcomes
        router = self.router()
        if router is None:
            return
        yield CounterMetricFamily("taskrouter_batches", "forward-pass batches run", value=router.batcher.batches)
        yield CounterMetricFamily("taskrouter_batched_requests", "requests run in those batches (their sum of "
                                  "sizes: divide by taskrouter_batches_total for the mean)", value=router.batcher.items)
        stats = router.cache.stats
        lookups = CounterMetricFamily("taskrouter_prefix_cache_lookups", "prefix-cache lookups", labels=["result"])
        lookups.add_metric(["hit"], stats.hits)
        lookups.add_metric(["miss"], stats.misses)
        yield lookups
        yield CounterMetricFamily("taskrouter_prefix_cache_evictions", "prefix-cache entries evicted",
                                  value=stats.evictions)
        yield GaugeMetricFamily("taskrouter_prefix_cache_entries", "prefix-cache entries", value=stats.entries)
        yield GaugeMetricFamily("taskrouter_prefix_cache_bytes", "bytes of KV tensors held", value=stats.bytes)
        yield GaugeMetricFamily("taskrouter_prefix_cache_max_bytes", "the cache's cap (TASKROUTER_CACHE_MB)",
                                value=router.cache.max_bytes)


class Metrics:
    """One registry per app (several apps in one process, as in tests, never clash)."""

    def __init__(self, admission: Admission, router: Callable[[], object | None]):
        self.registry = CollectorRegistry()
        self.requests = Counter("taskrouter_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("taskrouter_request_seconds", "POST /invocations time from arrival to answer",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.registry.register(_StateCollector(admission, router))

    def render(self) -> bytes:
        return generate_latest(self.registry)
