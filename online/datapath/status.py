"""The status documents the data path's stages report (JSON-able, read by the pipeline's
status, the run summary, the control socket and the dashboard)."""

from __future__ import annotations

from typing import TypedDict


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
