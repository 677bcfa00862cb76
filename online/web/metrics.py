"""Prometheus metrics of the online daemon, in their own registry (never the global default).

The pipeline increments them; `online.webserver.WebServer` serves the registry at /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

RUN_STATES = ("idle", "configured", "running", "stopped", "error")
# Batch latencies of the emulator (~ms) up to a slow RTL simulation (~minutes).
LATENCY_BUCKETS_S = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class PipelineMetrics:
    """Every metric the daemon exports; names start with ``l1forge_``."""

    registry: CollectorRegistry
    events_in: Counter  # events read by the source
    events_processed: Counter  # events whose results reached the collector
    events_accepted: Counter  # events with at least one seed fired
    seed_accepted: Counter  # label seed
    rejected_messages: Counter  # label reason (a WireError reason or "unknown_worker", ...)
    dropped_events: Counter  # label reason; should stay 0 (the pipeline is lossless)
    redelivered_batches: Counter  # batches requeued after a worker died
    in_flight_batches: Gauge
    queue_depth: Gauge  # batches waiting for a worker credit
    workers_alive: Gauge
    batch_latency_s: Histogram  # backend time per batch
    storage_bytes: Counter  # bytes written to ROOT files
    run_state: Enum
    run_number: Gauge


def make_metrics(registry: CollectorRegistry | None = None) -> PipelineMetrics:
    """Create the metrics in `registry` (a new one when None)."""
    reg = CollectorRegistry() if registry is None else registry
    return PipelineMetrics(
        registry=reg,
        events_in=Counter("l1forge_events_in", "Events read by the source", registry=reg),
        events_processed=Counter(
            "l1forge_events_processed", "Events whose trigger results were collected", registry=reg
        ),
        events_accepted=Counter(
            "l1forge_events_accepted", "Events accepted by at least one seed", registry=reg
        ),
        seed_accepted=Counter(
            "l1forge_seed_accepted", "Events accepted per seed", ["seed"], registry=reg
        ),
        rejected_messages=Counter(
            "l1forge_rejected_messages",
            "Messages rejected by validation, by reason",
            ["reason"],
            registry=reg,
        ),
        dropped_events=Counter(
            "l1forge_dropped_events",
            "Events lost, by reason (expected 0)",
            ["reason"],
            registry=reg,
        ),
        redelivered_batches=Counter(
            "l1forge_redelivered_batches", "Batches requeued after a worker died", registry=reg
        ),
        in_flight_batches=Gauge(
            "l1forge_in_flight_batches", "Batches sent to workers, not yet collected", registry=reg
        ),
        queue_depth=Gauge(
            "l1forge_queue_depth_batches", "Batches waiting for a worker credit", registry=reg
        ),
        workers_alive=Gauge(
            "l1forge_workers_alive", "Workers with a recent heartbeat", registry=reg
        ),
        batch_latency_s=Histogram(
            "l1forge_batch_latency_seconds",
            "Backend inference time per batch",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ),
        storage_bytes=Counter(
            "l1forge_storage_bytes", "Bytes of accepted events written", registry=reg
        ),
        run_state=Enum(
            "l1forge_run_state", "Run control state", states=list(RUN_STATES), registry=reg
        ),
        run_number=Gauge("l1forge_run_number", "Current or last run number", registry=reg),
    )


class AccessCollector:
    """The daemon's access counters, read at each scrape: control requests by outcome
    (``l1forge_control_requests_total``) and web connections by outcome
    (``l1forge_web_connections_total``: served, over_cap = answered 503, evicted, timed_out)
    with those open now (``l1forge_web_connections_open``: active, pending)."""

    WEB_OUTCOMES = ("served", "over_cap", "evicted", "timed_out")

    def __init__(
        self,
        control: Callable[[], Mapping[str, int]],
        web: Callable[[], Mapping[str, int]],
    ):
        self.control = control
        self.web = web

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "l1forge_control_requests",
            "Control socket requests by outcome (requests = all answered; unauthorized = no "
            "or wrong token; malformed; refused_handshakes = failed CURVE handshakes)",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.control().items()):
            requests.add_metric([outcome], n)
        yield requests
        stats = self.web()
        conns = CounterMetricFamily(
            "l1forge_web_connections",
            "Web endpoint connections by outcome (over_cap: answered 503)",
            labels=["outcome"],
        )
        for outcome in self.WEB_OUTCOMES:
            conns.add_metric([outcome], stats.get(outcome, 0))
        yield conns
        open_now = GaugeMetricFamily(
            "l1forge_web_connections_open",
            "Web connections open now: active (being answered), pending (still sending)",
            labels=["state"],
        )
        for state in ("active", "pending"):
            open_now.add_metric([state], stats.get(state, 0))
        yield open_now
