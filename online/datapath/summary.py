"""The summary of one run: what went in, what was processed, accepted, stored, and the proof.

``summarize`` builds it from the collector's completeness proof and the final status of the
collector and the dispatcher; ``RunSummary.to_dict`` is what run control stores as
``run_summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from l1forge.online.datapath.collector import Completeness
from l1forge.online.datapath.status import CollectorStatus, DispatcherStatus, LatencyPercentiles
from l1forge.online.datapath.storage import FileRecord


@dataclass(frozen=True)
class RunSummary:
    """What one run did, with its completeness proof."""

    run: int
    n_events_in: int
    n_processed: int
    n_accepted: int
    per_seed: dict[str, int]
    rates_hz: dict[str, float]  # at the menu's input rate (40 MHz)
    lost: int
    duplicated: int
    duplicates_suppressed: int
    redelivered_batches: int
    rejected: dict[str, int]  # source messages rejected, by reason
    failed_batches: dict[str, int]  # batches no worker could process, by reason
    n_failed_events: int  # events of those batches (accounted for, not lost)
    files: list[dict[str, Any]]
    held_accepted_events: int  # accepted events not in a finished file (storage failure)
    error: str | None
    seconds: float
    events_per_s: float
    latency_ms: LatencyPercentiles | dict[str, float] = field(default_factory=dict)  # {}: untimed
    dead_workers: list[str] = field(default_factory=list)
    max_in_flight_batches: int = 0
    source_blocked_s: float = 0.0
    missing_ranges: list[list[int]] = field(default_factory=list)
    dqm_summary: str | None = None
    n_batches: int = 0  # distinct batches collected
    tap_batches: int = 0  # of them, published on the b"mon" monitoring tap
    tap_events: int = 0
    seed_mismatches: int = 0  # firmware seed bits that differ from the software menu's decision

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def summarize(
    run: int,
    proof: Completeness,
    collector: CollectorStatus,
    dispatcher: DispatcherStatus,
    *,
    records: Iterable[FileRecord],
    rejected: dict[str, int],
    error: str | None,
    seconds: float,
    source_blocked_s: float,
) -> RunSummary:
    """The summary of a stopped run from its proof and the collector's and dispatcher's status."""
    c, d = collector, dispatcher
    return RunSummary(
        run=run,
        n_events_in=proof.n_expected,
        n_processed=c["events_processed"],
        n_accepted=c["events_accepted"],
        per_seed=c["seed_counts"],
        rates_hz=c["seed_rates_hz"],
        lost=proof.lost,
        duplicated=proof.duplicated,
        duplicates_suppressed=proof.duplicates_suppressed,
        redelivered_batches=d["batches_redelivered"],
        rejected=rejected,
        failed_batches=c["failed_batches"],
        n_failed_events=proof.n_failed,
        files=[asdict(r) for r in sorted(records, key=lambda r: r.lumisection)],
        held_accepted_events=c["held_accepted_events"],
        error=error,
        seconds=seconds,
        events_per_s=c["events_processed"] / seconds if seconds > 0 else 0.0,
        latency_ms=c["latency_ms"] if "latency_ms" in c else {},
        dead_workers=d["dead_workers"],
        max_in_flight_batches=d["max_in_flight_batches"],
        source_blocked_s=source_blocked_s,
        missing_ranges=[list(r) for r in proof.missing_ranges],
        n_batches=c["batches_collected"],
        tap_batches=c["tap_batches"],
        tap_events=c["tap_events"],
        seed_mismatches=d["seed_mismatches"],
    )
