"""`GET /metrics`: the server's state in Prometheus' text format (prometheus-client).

Every figure is read from the job store and the hosted models when Prometheus scrapes, so
nothing is counted twice and a restarted server reports what its store holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST  # Prometheus' text format, version 0.0.4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerCollector(Collector):
    """Jobs by status, queue depth, worker restarts and state, job latency and merged
    batch sizes, per model."""

    def __init__(self, store: Store, models: dict[str, Any]) -> None:
        self.store, self.models = store, models

    def collect(self) -> Iterator[Any]:
        figures = self.store.metrics()
        jobs = CounterMetricFamily("nnsight_graph_jobs", "jobs by model and status",
                                   labels=["model", "status"])
        for model, status, count in figures["counts"]:
            jobs.add_metric([model, status], count)
        yield jobs
        depth = GaugeMetricFamily("nnsight_graph_queue_depth", "jobs queued or running",
                                  labels=["model"])
        restarts = CounterMetricFamily("nnsight_graph_worker_restarts",
                                       "times the model's worker process was restarted",
                                       labels=["model"])
        ready = GaugeMetricFamily("nnsight_graph_model_ready", "1 while the model takes jobs",
                                  labels=["model", "state"])
        for name, model in self.models.items():
            depth.add_metric([name], self.store.queue_depth(name))
            restarts.add_metric([name], model.restarts)
            ready.add_metric([name, model.state], 1.0 if model.state == "ready" else 0.0)
        yield depth
        yield restarts
        yield ready
        latency = HistogramMetricFamily(
            "nnsight_graph_job_latency_seconds",
            "seconds from submit to the end of completed jobs", labels=["model"])
        by_model: dict[str, list[float]] = {}
        for model, seconds in figures["latencies"]:
            by_model.setdefault(model, []).append(seconds)
        for model, values in by_model.items():
            buckets = [(str(edge), sum(v <= edge for v in values)) for edge in LATENCY_BUCKETS]
            buckets.append(("+Inf", len(values)))
            latency.add_metric([model], buckets, sum(values))
        yield latency
        batches = HistogramMetricFamily(
            "nnsight_graph_batch_jobs",
            "jobs per forward pass of the model's worker (1: a job that ran alone; more: "
            "co-batched)", labels=["model"])
        for name, model in self.models.items():
            sizes = dict(getattr(model, "batch_sizes", {}))  # a copy: the dispatcher adds
            buckets = [(str(edge), sum(n for size, n in sizes.items() if size <= edge))
                       for edge in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(sizes.values())))
            batches.add_metric([name], buckets, sum(size * n for size, n in sizes.items()))
        yield batches


def registry(store: Store, models: dict[str, Any]) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one): one per app."""
    found = CollectorRegistry(auto_describe=False)
    found.register(ServerCollector(store, models))
    return found


def render(found: CollectorRegistry) -> bytes:
    return generate_latest(found)


__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "ServerCollector", "registry",
           "render"]
