"""The DQM subscriber: the collector's monitoring tap -> DQMMonitor, per lumisection.

It subscribes to topic b"mon" (sampled batches, every event with its objects), fills the
monitor from a thread of its own, ends a lumisection once the tap is ``lag_lumisections``
past it (results of several workers arrive slightly out of order), exposes ``view()`` for the
dashboard and writes the DQM ROOT file and alarm JSON when stopped, after the tap messages the
run published (when the caller knows their number) have arrived.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.online.datapath.tap import TapSubscriber
from l1forge.online.datapath.wire import TOPIC_MONITOR, ResultBatch, WireError, decode_results
from l1forge.online.dqm.config import DQMConfig, load_config
from l1forge.online.dqm.histograms import compared_values
from l1forge.online.dqm.monitor import DQMMonitor, DQMRunResult
from l1forge.sim.l1objects import LHC_INPUT_RATE_HZ, to_physical

log = logging.getLogger(__name__)

POLL_MS = 100
DRAIN_IDLE_S = 2.0  # stop waiting for the run's last tap messages after this long without one
MAX_ALARMS_IN_VIEW = 500


class DQMServiceError(L1ForgeError, RuntimeError):
    """The DQM service failed (its thread stopped on an error, named in the message)."""


@dataclass(frozen=True)
class ServiceCounts:
    """What the service saw: batches filled, rejected by reason, late, events filled."""

    batches: int
    events: int
    rejected: dict[str, int]
    late_batches: int
    lumisections_ended: int


def seed_matrix(seed_bits: np.ndarray, n_seeds: int) -> np.ndarray:
    """uint32 seed bits (N,) -> bool (N, n_seeds), column i = bit i."""
    bits = np.asarray(seed_bits, np.uint32)
    return ((bits[:, None] >> np.arange(n_seeds, dtype=np.uint32)) & 1).astype(bool)


class DQMService:
    """Subscribes to the monitoring tap at ``endpoint`` and runs a DQMMonitor for one run."""

    def __init__(
        self,
        endpoint: str,
        *,
        run: int,
        out_dir: str | Path,
        config: DQMConfig | None = None,
        seed_names: Sequence[str] = (),
        score_names: Sequence[str] = ("score",),
        lag_lumisections: int = 1,
        input_rate_hz: float = LHC_INPUT_RATE_HZ,
        curve_keys: str | Path | None = None,
        context: zmq.Context | None = None,
    ):
        if not isinstance(lag_lumisections, int) or lag_lumisections < 0:
            raise ConfigError(f"lag_lumisections: must be an integer >= 0, got {lag_lumisections}")
        if not (math.isfinite(input_rate_hz) and input_rate_hz > 0):
            raise ConfigError(f"input_rate_hz: must be a positive number, got {input_rate_hz}")
        self.endpoint = endpoint
        self.run = int(run)
        self.out_dir = Path(out_dir)
        self.lag = lag_lumisections
        self.input_rate_hz = float(input_rate_hz)
        self.monitor = DQMMonitor(
            config or load_config(), seed_names=seed_names, score_names=score_names, run=run
        )
        self._ctx = context or zmq.Context.instance()
        self._curve_keys = curve_keys
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: int | None = None  # highest lumisection seen on the tap
        self._received = 0  # b"mon" messages taken from the socket (filled, rejected or late)
        self._expected = 0  # messages the run published, known at stop
        self._batches = 0
        self._events = 0
        self._late = 0
        self._rejected: dict[str, int] = {}
        self.error: str | None = None
        self.result: DQMRunResult | None = None

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> DQMService:
        """Connect and start the subscriber thread (returns once subscribed)."""
        if self._thread is not None:
            raise DQMServiceError("DQM service already started")
        self._thread = threading.Thread(target=self._loop, name="dqm", daemon=True)
        self._thread.start()
        self._subscribed.wait(5.0)
        if self.error is not None:
            raise DQMServiceError(f"DQM cannot subscribe to {self.endpoint}: {self.error}")
        return self

    def stop(self, timeout_s: float = 10.0, expected_batches: int | None = None) -> DQMRunResult:
        """Drain the tap (until `expected_batches` messages have arrived, when given), end every
        lumisection and write the DQM file and the alarm JSON."""
        self._expected = expected_batches or 0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise DQMServiceError(f"DQM thread did not stop within {timeout_s} s")
        with self._lock:
            self.result = self.monitor.end_run(self.out_dir)
        if self.error is not None:
            raise DQMServiceError(f"DQM service stopped on an error: {self.error}")
        return self.result

    def _loop(self) -> None:
        try:
            with TapSubscriber(
                self.endpoint, TOPIC_MONITOR, context=self._ctx, keys=self._curve_keys, rcvhwm=256
            ) as tap:
                self._subscribed.set()
                # when stopping, take what is queued and what the run published still on its way
                for frames in tap.messages(
                    self._stop,
                    poll_ms=POLL_MS,
                    drain=True,
                    pending=lambda: self._received < self._expected,
                    idle_s=DRAIN_IDLE_S,
                ):
                    self._received += 1
                    self.handle(frames)
            if self._received < self._expected:
                log.warning(
                    "DQM: %d of the run's %d tap messages arrived (the tap drops a slow "
                    "subscriber's messages)",
                    self._received,
                    self._expected,
                )
        except (zmq.ZMQError, L1ForgeError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("DQM service: %s", self.error)
        finally:
            self._subscribed.set()

    # ---- one message -----------------------------------------------------------------------
    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def handle(self, frames: Sequence[Any]) -> None:
        """Decode one tap message (without its topic frame) and fill it; bad ones are counted."""
        try:
            r = decode_results(frames)
        except WireError as exc:
            log.warning("DQM: rejected a tap message (%s): %s", exc.reason, exc)
            self._reject(exc.reason)
            return
        self.fill(r)

    def fill(self, r: ResultBatch) -> None:
        """Fill one monitored batch; end the lumisections the tap has moved past."""
        if r.run != self.run:
            self._reject("run")
            return
        if len(r.objects_hw) != len(r):
            # the b"mon" topic carries every event's objects; a batch of accepted events only
            # would bias every input histogram
            self._reject("not_all_events")
            return
        ls = int(r.lumisection)
        n_models = len(self.monitor.score_names)
        if r.scores.shape[1] < n_models:
            self._reject("scores")
            return
        with self._lock:
            if ls in self.monitor.closed_lumisections:
                self._late += 1
                return
            try:
                self.monitor.fill(
                    ls,
                    to_physical(r.objects_hw),
                    r.scores[:, :n_models],
                    seed_matrix(r.seed_bits, len(self.monitor.seed_names)),
                    r.latency_s,
                )
            except DataFormatError as exc:
                log.warning("DQM: batch of lumisection %d not filled: %s", ls, exc)
                self._rejected["format"] = self._rejected.get("format", 0) + 1
                return
            self._batches += 1
            self._events += len(r)
            if self._latest is None or ls > self._latest:
                self._latest = ls
            for old in self.monitor.open_lumisections():
                if old < self._latest - self.lag:
                    self.monitor.end_lumisection(old)

    # ---- views -----------------------------------------------------------------------------
    def counts(self) -> ServiceCounts:
        """Counters of what the service received."""
        with self._lock:
            return ServiceCounts(
                self._batches,
                self._events,
                dict(self._rejected),
                self._late,
                len(self.monitor.closed_lumisections),
            )

    def view(self) -> dict[str, Any]:
        """The dashboard's DQM data: latest ended lumisection's histograms with the reference
        (scaled by the dashboard), alarms, per-seed accept fractions and rates per lumisection."""
        with self._lock:
            m = self.monitor
            closed = m.closed_lumisections
            ls = closed[-1] if closed else None
            histograms: dict[str, Any] = {}
            if ls is not None:
                ref = m.reference_counts()
                for name, h in m.lumisection_histograms(ls).items():
                    histograms[name] = _hist_view(h, ref.get(name))
            fractions = m.seed_rates()
            return {
                "run": self.run,
                "lumisection": ls,
                "open_lumisections": m.open_lumisections(),
                "n_events": None if ls is None else m.lumisection_events(ls),
                "histograms": histograms,
                "alarms": [a.to_dict() for a in m.alarms[-MAX_ALARMS_IN_VIEW:]],
                "n_alarms": len(m.alarms),
                "seed_names": list(m.seed_names),
                "seed_rates": {str(k): v for k, v in fractions.items()},
                "seed_rates_hz": {
                    str(k): {s: f * self.input_rate_hz for s, f in v.items()}
                    for k, v in fractions.items()
                },
                "counts": {
                    "batches": self._batches,
                    "events": self._events,
                    "rejected": dict(self._rejected),
                    "late_batches": self._late,
                },
            }


def _hist_view(h, ref: np.ndarray | None) -> dict[str, Any]:
    """One histogram as JSON-ready lists, flow bins dropped, the reference unscaled."""
    values = np.asarray(h.values(), np.float64)
    out: dict[str, Any] = {
        "entries": float(compared_values(h).sum()),
        "xlabel": h.axes[0].label,
    }
    if h.ndim == 1:
        out["edges"] = h.axes[0].edges.tolist()
        out["values"] = values.tolist()
        if ref is not None:
            r = ref[1:-1] if h.axes[0].traits.underflow else ref
            out["reference"] = r.tolist()
    else:
        out["edges"] = [a.edges.tolist() for a in h.axes]
        out["ylabel"] = h.axes[1].label
        out["values"] = values.tolist()
        if ref is not None:
            out["reference"] = ref.tolist()
    return out
