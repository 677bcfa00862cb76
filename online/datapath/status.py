"""The status documents the data path's stages report (JSON-able, read by the pipeline's
status, the run summary, the control socket and the dashboard)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class WorkerStatus(TypedDict):
    """One connected worker, as ``Dispatcher.status`` reports it."""

    pid: int
    host: str
    in_flight: int
    batches_done: int
    configured: bool


class DispatcherStatus(TypedDict):
    """The broker's counters (part of the pipeline's status and of the run summary)."""

    workers: dict[str, WorkerStatus]
    workers_alive: int
    dead_workers: list[str]
    worker_setup_errors: dict[str, str]
    in_flight_batches: int
    max_in_flight_batches: int
    queued_batches: int
    batches_dispatched: int
    batches_redelivered: int
    unknown_worker_messages: int
    # worker -> model -> its register bank: registers_version, thresholds, seed_slots,
    # seed_mismatches (firmware bit != software menu, per seed), events_compared
    firmware: dict[str, dict[str, dict[str, Any]]]
    seed_mismatches: int  # summed over workers, models and seeds


class LatencyPercentiles(TypedDict):
    """Backend latency per batch over the recent window, in ms."""

    p50: float
    p99: float
    n: int


class CollectorStatus(TypedDict):
    """The collector's counters (part of the pipeline's status and of the run summary)."""

    events_processed: int
    events_accepted: int
    batches_collected: int
    duplicates_suppressed: int
    bad_results: int
    failed_batches: dict[str, int]  # batches no worker could process, by reason
    seed_counts: dict[str, int]
    seed_rates_hz: dict[str, float]
    files: int
    held_accepted_events: int
    tap_batches: int
    tap_events: int
    storage_error: str | None
    storage_full_waits: int  # times the disk was full and the collector waited for space
    storage_waiting_s: float  # how long the current wait has lasted (0: not waiting)
    latency_ms: NotRequired[LatencyPercentiles]  # once a batch was timed


class PipelineStatus(TypedDict):
    """``Pipeline.status``: its own keys, then the dispatcher's and the collector's counters
    (those only once the stage has started)."""

    state: str
    error: str | None
    run: int
    events_in: int
    source_done: bool
    source_blocked_s: float
    rejected: dict[str, int]  # source messages rejected, by reason
    source_refused: int  # failed CURVE handshakes on a zmq source's link
    seconds: float
    events_per_s: float
    monitor_endpoint: str
    worker_endpoint: str
    # DispatcherStatus
    workers: NotRequired[dict[str, WorkerStatus]]
    workers_alive: NotRequired[int]
    dead_workers: NotRequired[list[str]]
    worker_setup_errors: NotRequired[dict[str, str]]
    in_flight_batches: NotRequired[int]
    max_in_flight_batches: NotRequired[int]
    queued_batches: NotRequired[int]
    batches_dispatched: NotRequired[int]
    batches_redelivered: NotRequired[int]
    unknown_worker_messages: NotRequired[int]
    firmware: NotRequired[dict[str, dict[str, dict[str, Any]]]]
    seed_mismatches: NotRequired[int]
    # CollectorStatus
    events_processed: NotRequired[int]
    events_accepted: NotRequired[int]
    batches_collected: NotRequired[int]
    duplicates_suppressed: NotRequired[int]
    bad_results: NotRequired[int]
    failed_batches: NotRequired[dict[str, int]]
    seed_counts: NotRequired[dict[str, int]]
    seed_rates_hz: NotRequired[dict[str, float]]
    files: NotRequired[int]
    held_accepted_events: NotRequired[int]
    tap_batches: NotRequired[int]
    tap_events: NotRequired[int]
    storage_error: NotRequired[str | None]
    latency_ms: NotRequired[LatencyPercentiles]
